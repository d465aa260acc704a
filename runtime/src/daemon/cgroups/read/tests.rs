//! Unit tests of reading a cgroup's usage through kept files.

use super::*;

/// A fake v1 cgroup: cpuacct, memory and pids each in a hierarchy of its own.
fn fake_v1() -> (tempfile::TempDir, CgroupDirs) {
    let root = tempfile::tempdir().unwrap();
    let write = |p: &str, v: &str| {
        let p = root.path().join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    };
    write("cpuacct/c1/cpuacct.usage", "5000\n");
    write("memory/c1/memory.usage_in_bytes", "8192\n");
    write(
        "memory/c1/memory.stat",
        "cache 1\nrss 2\ninactive_file 3\ntotal_rss 4096\ntotal_inactive_file 1024\n\
         total_pgfault 7\ntotal_pgmajfault 1\n",
    );
    write("memory/c1/memory.limit_in_bytes", "9223372036854771712\n");
    write("memory/c1/memory.oom_control", "under_oom 0\noom_kill 2\n");
    write("pids/c1/pids.current", "3\n");
    let mut b = DirsBuilder::new();
    b.cpu(&root.path().join("cpuacct/c1"), CpuSource::Cpuacct);
    b.memory(&root.path().join("memory/c1"), Version::V1);
    b.pids(&root.path().join("pids/c1"));
    (root, b.build())
}

#[test]
fn reads_v1_figures_fresh_on_every_call() {
    let (root, dirs) = fake_v1();
    assert!(dirs.complete());
    let mut buf = Vec::new();
    let u = dirs.usage(Wanted::ALL, &mut buf);
    assert_eq!(
        u,
        CgroupUsage {
            cpu_ns: Some(5000),
            memory_usage: Some(8192),
            working_set: Some(8192 - 1024),
            rss: Some(4096),
            page_faults: Some(7),
            major_page_faults: Some(1),
            // v1's "unlimited".
            memory_limit: None,
            // No memsw file: swap accounting off.
            swap_usage: None,
            processes: Some(3),
            oom_kills: 2,
        }
    );
    // The kept directories hold no value: a new counter is seen on the next call.
    std::fs::write(root.path().join("cpuacct/c1/cpuacct.usage"), "9000\n").unwrap();
    std::fs::write(
        root.path().join("memory/c1/memory.limit_in_bytes"),
        "65536\n",
    )
    .unwrap();
    let u = dirs.usage(Wanted::ALL, &mut buf);
    assert_eq!(u.cpu_ns, Some(9000));
    assert_eq!(u.memory_limit, Some(65536));
}

#[test]
fn skips_figures_the_caller_does_not_want() {
    let (_root, dirs) = fake_v1();
    let u = dirs.usage(
        Wanted {
            processes: false,
            oom_kills: false,
        },
        &mut Vec::new(),
    );
    assert_eq!((u.processes, u.oom_kills), (None, 0));
    assert_eq!(u.cpu_ns, Some(5000));
}

#[test]
fn a_missing_cgroup_is_incomplete_and_not_kept() {
    let root = tempfile::tempdir().unwrap();
    let mut b = DirsBuilder::new();
    b.memory(&root.path().join("memory/gone"), Version::V2);
    let dirs = b.build();
    assert!(!dirs.complete());
    assert_eq!(
        dirs.usage(Wanted::ALL, &mut Vec::new()),
        CgroupUsage::default()
    );
    let kept = UsageDirs::default();
    let mut opened = 0;
    for _ in 0..2 {
        kept.get_or_open(|| {
            opened += 1;
            CgroupDirs::default()
        });
    }
    // An empty set (no cgroups) is complete: opened once, then kept until cleared.
    assert_eq!(opened, 1);
    kept.clear();
    kept.get_or_open(|| {
        opened += 1;
        DirsBuilder::new().build()
    });
    assert_eq!(opened, 2);
}

#[test]
fn kept_fds_are_counted_until_cleared() {
    let kept = UsageDirs::default();
    let before = kept_count().load(Ordering::SeqCst);
    let (_root, dirs) = fake_v1();
    kept.get_or_open(|| dirs);
    // Three hierarchies, three fds, counted against the budget.
    assert_eq!(kept_count().load(Ordering::SeqCst), before + 3);
    drop(kept);
    assert_eq!(kept_count().load(Ordering::SeqCst), before);
    // Nothing is kept past the budget.
    assert!(!reserve(keep_budget() + 1));
}

#[test]
fn stat_files_stay_open_counted_and_are_read_afresh() {
    let before = kept_count().load(Ordering::SeqCst);
    let (root, dirs) = fake_v1();
    let mut buf = Vec::new();
    let first = dirs.usage(Wanted::ALL, &mut buf);
    // cpuacct.usage, pids.current, memory.usage_in_bytes, memory.stat,
    // memory.oom_control, memory.limit_in_bytes: six files kept; memsw is missing.
    assert_eq!(dirs.kept_files.load(Ordering::SeqCst), 6);
    assert!(matches!(
        dirs.files[StatFile::Swap as usize].get(),
        Some(Kept::Missing)
    ));
    // The same inodes rewritten: the kept files see the new content, shorter or longer.
    let stat = root.path().join("memory/c1/memory.stat");
    std::fs::write(&stat, "total_inactive_file 0\ntotal_rss 1\n").unwrap();
    std::fs::write(root.path().join("pids/c1/pids.current"), "12345\n").unwrap();
    let u = dirs.usage(Wanted::ALL, &mut buf);
    assert_eq!(
        (u.working_set, u.rss, u.page_faults),
        (Some(8192), Some(1), None)
    );
    assert_eq!(u.processes, Some(12345));
    assert_eq!(u.cpu_ns, first.cpu_ns);
    // A file larger than the buffer is read whole.
    let big = format!("{}total_rss 77\n", "pad 0\n".repeat(4000));
    std::fs::write(&stat, big).unwrap();
    assert_eq!(dirs.usage(Wanted::ALL, &mut buf).rss, Some(77));
    assert_eq!(kept_count().load(Ordering::SeqCst), before + 6);
    drop(dirs);
    assert_eq!(kept_count().load(Ordering::SeqCst), before);
}

#[test]
fn reads_v2_figures_from_one_directory_and_skips_a_missing_swap_file() {
    let root = tempfile::tempdir().unwrap();
    let c = root.path().join("pod/c1");
    std::fs::create_dir_all(&c).unwrap();
    let write = |f: &str, v: &str| std::fs::write(c.join(f), v).unwrap();
    write("cpu.stat", "usage_usec 7\nuser_usec 5\nsystem_usec 2\n");
    write("memory.current", "4096\n");
    write(
        "memory.stat",
        "anon 1024\nfile 2048\ninactive_file 512\npgfault 9\npgmajfault 0\n",
    );
    write("memory.max", "max\n");
    write("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
    write("pids.current", "2\n");
    let mut b = DirsBuilder::new();
    b.cpu(&c, CpuSource::CpuStat);
    b.pids(&c);
    b.memory(&c, Version::V2);
    let dirs = b.build();
    // One hierarchy: its directory is opened once for the three controllers.
    assert_eq!(dirs.dirs.len(), 1);
    let mut buf = Vec::new();
    let want = CgroupUsage {
        cpu_ns: Some(7000),
        memory_usage: Some(4096),
        working_set: Some(4096 - 512),
        rss: Some(1024),
        page_faults: Some(9),
        major_page_faults: Some(0),
        memory_limit: None,
        swap_usage: None,
        processes: Some(2),
        oom_kills: 1,
    };
    assert_eq!(dirs.usage(Wanted::ALL, &mut buf), want);
    assert!(matches!(
        dirs.files[StatFile::Swap as usize].get(),
        Some(Kept::Missing)
    ));
    assert_eq!(dirs.kept_files.load(Ordering::SeqCst), 6);
    // A limit set later is read through the kept file.
    write("memory.max", "1048576\n");
    let u = dirs.usage(Wanted::ALL, &mut buf);
    assert_eq!(u.memory_limit, Some(1 << 20));
}

#[test]
fn unwanted_files_are_never_opened() {
    let (_root, dirs) = fake_v1();
    dirs.usage(
        Wanted {
            processes: false,
            oom_kills: false,
        },
        &mut Vec::new(),
    );
    assert!(dirs.files[StatFile::Pids as usize].get().is_none());
    assert!(dirs.files[StatFile::Oom as usize].get().is_none());
}

/// On a host with the v1 cpuacct hierarchy, a kept `cpuacct.usage` (kernfs, not a
/// regular file) counts on between two reads at offset 0 while this process spins.
#[test]
fn a_kept_cgroupfs_file_is_regenerated_on_each_read() {
    let dir = Path::new("/sys/fs/cgroup/cpuacct");
    if !dir.join("cpuacct.usage").exists() {
        return;
    }
    let mut b = DirsBuilder::new();
    b.cpu(dir, CpuSource::Cpuacct);
    let dirs = b.build();
    let mut buf = Vec::new();
    let first = dirs.usage(Wanted::ALL, &mut buf).cpu_ns.unwrap();
    assert_eq!(dirs.kept_files.load(Ordering::SeqCst), 1);
    let spin = std::time::Instant::now();
    while spin.elapsed() < std::time::Duration::from_millis(50) {
        std::hint::black_box(0u64);
    }
    let second = dirs.usage(Wanted::ALL, &mut buf).cpu_ns.unwrap();
    assert!(second > first, "{first} then {second}");
}

#[test]
fn a_file_name_is_never_followed_as_a_link() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("c1");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(root.path().join("secret"), "42\n").unwrap();
    std::os::unix::fs::symlink(root.path().join("secret"), dir.join("pids.current")).unwrap();
    let mut b = DirsBuilder::new();
    b.pids(&dir);
    let u = b.build().usage(Wanted::ALL, &mut Vec::new());
    assert_eq!(u.processes, None);
}

#[test]
fn a_reading_is_shared_for_a_short_time_then_taken_afresh() {
    let (root, dirs) = fake_v1();
    let kept = UsageDirs::default();
    let mut buf = Vec::new();
    let mut opened = Some(dirs);
    let mut open = || opened.take().unwrap_or_default();
    let want = Wanted {
        processes: false,
        oom_kills: false,
    };
    let t0 = Instant::now();
    let first = kept.reading(&mut open, want, Some(t0), &mut buf);
    assert_eq!(first.usage.cpu_ns, Some(5000));
    assert!(first.at >= t0 && first.timestamp > 0);
    std::fs::write(root.path().join("cpuacct/c1/cpuacct.usage"), "9000\n").unwrap();
    // A call accepting readings since then is served the same one, stamped with its time.
    let shared = kept.reading(&mut open, want, Some(first.at), &mut buf);
    assert_eq!(shared, first);
    // A call wanting a figure the reading lacks reads again, and sees the new counter.
    let more = kept.reading(&mut open, Wanted::ALL, Some(first.at), &mut buf);
    assert_eq!(
        (more.usage.cpu_ns, more.usage.processes),
        (Some(9000), Some(3))
    );
    // That fuller reading now serves the narrower call too.
    assert_eq!(kept.reading(&mut open, want, Some(more.at), &mut buf), more);
    // A call wanting a reading newer than the last reads again, and so does one that
    // shares none.
    std::fs::write(root.path().join("cpuacct/c1/cpuacct.usage"), "12000\n").unwrap();
    let later = kept.reading(&mut open, want, Some(Instant::now()), &mut buf);
    assert_eq!(later.usage.cpu_ns, Some(12000));
    assert!(later.at > more.at);
    std::fs::write(root.path().join("cpuacct/c1/cpuacct.usage"), "15000\n").unwrap();
    let fresh = kept.reading(&mut open, want, None, &mut buf);
    assert_eq!(fresh.usage.cpu_ns, Some(15000));
}

#[test]
fn a_cleared_cgroup_shares_no_reading() {
    let (root, dirs) = fake_v1();
    let kept = UsageDirs::default();
    let mut buf = Vec::new();
    let first = kept.reading(|| dirs, Wanted::ALL, None, &mut buf);
    assert_eq!(first.usage.memory_usage, Some(8192));
    kept.clear();
    // Opened again (the cgroup may be gone): nothing of before is served.
    let mut b = DirsBuilder::new();
    b.memory(&root.path().join("memory/gone"), Version::V1);
    let after = kept.reading(|| b.build(), Wanted::ALL, Some(first.at), &mut buf);
    assert_eq!(after.usage, CgroupUsage::default());
}

#[test]
fn a_kept_file_is_read_afresh_counted_and_closed_for_good() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("dev");
    std::fs::write(&path, "eth0: 1\n").unwrap();
    let before = kept_count().load(Ordering::SeqCst);
    let kept = KeptFile::default();
    let mut buf = Vec::new();
    assert_eq!(kept.read(&path, &mut buf), Some("eth0: 1\n"));
    assert!(kept.is_open());
    assert_eq!(kept_count().load(Ordering::SeqCst), before + 1);
    // The same inode rewritten, shorter: the kept file is read whole from offset 0.
    std::fs::write(&path, "e: 2\n").unwrap();
    assert_eq!(kept.read(&path, &mut buf), Some("e: 2\n"));
    // Read through the kept fd, not the path: a new file at the path is not seen.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(kept.read(&path, &mut buf), Some("e: 2\n"));
    kept.close();
    assert!(!kept.is_open());
    assert_eq!(kept_count().load(Ordering::SeqCst), before);
    // Closed for good: the path is not opened again, even when it exists.
    std::fs::write(&path, "eth0: 3\n").unwrap();
    assert_eq!(kept.read(&path, &mut buf), None);
    assert_eq!(kept_count().load(Ordering::SeqCst), before);
}

#[test]
fn a_kept_file_that_cannot_be_opened_is_tried_again_and_dropping_releases_it() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("dev");
    let before = kept_count().load(Ordering::SeqCst);
    let kept = KeptFile::default();
    let mut buf = Vec::new();
    assert_eq!(kept.read(&path, &mut buf), None);
    assert!(!kept.is_open());
    std::fs::write(&path, "x\n").unwrap();
    assert_eq!(kept.read(&path, &mut buf), Some("x\n"));
    assert_eq!(kept_count().load(Ordering::SeqCst), before + 1);
    drop(kept);
    assert_eq!(kept_count().load(Ordering::SeqCst), before);
}

/// A kept `/proc/self/net/dev` (a procfs seq file) is generated afresh by each read at
/// offset 0: the loopback's counters move after traffic over it.
#[test]
fn a_kept_proc_net_dev_is_regenerated_on_each_read() {
    let path = Path::new("/proc/self/net/dev");
    let kept = KeptFile::default();
    let mut buf = Vec::new();
    let rx = |t: &str| {
        super::super::parse::net_dev(t)
            .into_iter()
            .find(|d| d.name == "lo")
            .map(|d| d.rx_bytes)
    };
    let Some(first) = kept.read(path, &mut buf).and_then(rx) else {
        return;
    };
    let l = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(&[0u8; 1000], l.local_addr().unwrap()).unwrap();
    let second = kept.read(path, &mut buf).and_then(rx).unwrap();
    assert!(second >= first + 1000, "{first} then {second}");
}

/// A pod controls the size of its `net/dev` (a line per interface it makes): a kept file
/// is read whole however it grew, up to [`MAX_STAT_FILE`], and refused past it rather than
/// read into an ever larger buffer.
#[test]
fn a_kept_file_is_read_whole_up_to_the_bound_and_refused_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net_dev");
    let line = "  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n";
    let big = line.repeat(MAX_STAT_FILE / line.len() - 1);
    std::fs::write(&path, &big).unwrap();
    let kept = KeptFile::default();
    let mut buf = Vec::new();
    assert_eq!(kept.read(&path, &mut buf), Some(big.as_str()));
    std::fs::write(&path, line.repeat(MAX_STAT_FILE / line.len() + 1)).unwrap();
    assert_eq!(kept.read(&path, &mut buf), None);
    assert!(buf.len() <= MAX_STAT_FILE, "buffer grew to {}", buf.len());
}
