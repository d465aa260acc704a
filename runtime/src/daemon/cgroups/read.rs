//! Reading one cgroup's usage through files opened once: each stat file is opened (an
//! `openat` of a bare file name relative to the cgroup's directory in its hierarchy) the
//! first time a figure needs it, kept open, and read again with `pread` at offset 0, into
//! one buffer the caller reuses across cgroups.
//!
//! A node with hundreds of pods reads a thousand cgroups per stats call, every second when
//! kubelet polls. Opening a cgroupfs file costs a name lookup and dentry revalidation in
//! kernfs; first the path walk through `/sys/fs/cgroup/<controller>/kubepods/...`, then
//! the `openat` per file per read were most of what such a call cost. cgroupfs (kernfs)
//! regenerates a file's content on every read at offset 0, so a kept file never returns a
//! stale value; the directories are `O_PATH` fds that pin no cgroup state either.

use std::ffi::CStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat};
use nix::sys::resource::{Resource, getrlimit};
use nix::sys::stat::Mode;

use super::CgroupUsage;
use super::limits::Version;
use super::parse::{keyed_values, limit, oom_kills};

/// Which of the figures that cost a read of their own a caller reports; CPU and memory
/// are always read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// `pids.current` (pod stats, metrics).
    pub processes: bool,
    /// The OOM kill count (metrics).
    pub oom_kills: bool,
}

impl Wanted {
    /// Every figure [`CgroupUsage`] holds.
    pub const ALL: Wanted = Wanted {
        processes: true,
        oom_kills: true,
    };
}

/// Where the CPU counter of a cgroup is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CpuSource {
    /// v1 `cpuacct.usage`, nanoseconds.
    Cpuacct,
    /// v2 `cpu.stat` `usage_usec`.
    CpuStat,
}

/// The stat files a cgroup's figures are read from, each a slot of [`CgroupDirs::files`].
#[derive(Debug, Clone, Copy)]
enum StatFile {
    Cpu,
    Pids,
    MemoryUsage,
    MemoryStat,
    Oom,
    MemoryLimit,
    Swap,
}

/// How many [`StatFile`]s there are.
const STAT_FILES: usize = 7;

/// A stat file after its first open.
#[derive(Debug)]
enum Kept {
    /// Open, read again at offset 0.
    Open(File),
    /// Absent from the cgroup (v1 `memory.memsw.*` without swap accounting, v2
    /// `memory.swap.current` without swap): never looked up again, each lookup of a
    /// missing name being as dear as an open.
    Missing,
}

/// Open directories of one cgroup, one per hierarchy stats read from (v1: the cpuacct,
/// memory and pids hierarchies; v2: the unified one, opened once), and the stat files read
/// so far. The default holds none (no cgroups) and is complete.
#[derive(Debug)]
pub struct CgroupDirs {
    dirs: Vec<OwnedFd>,
    cpu: Option<(usize, CpuSource)>,
    memory: Option<(usize, Version)>,
    pids: Option<usize>,
    /// Every hierarchy that holds a controller stats read was opened: worth keeping.
    complete: bool,
    /// Each stat file, opened by the first read that needs its figure.
    files: [OnceLock<Kept>; STAT_FILES],
    /// Files kept open, counted against the node's budget until this set is dropped.
    kept_files: AtomicUsize,
}

impl Default for CgroupDirs {
    fn default() -> Self {
        CgroupDirs {
            dirs: Vec::new(),
            cpu: None,
            memory: None,
            pids: None,
            complete: true,
            files: Default::default(),
            kept_files: AtomicUsize::new(0),
        }
    }
}

impl Drop for CgroupDirs {
    fn drop(&mut self) {
        release(*self.kept_files.get_mut());
    }
}

/// Builds a [`CgroupDirs`], opening each hierarchy's directory once.
pub(super) struct DirsBuilder {
    dirs: CgroupDirs,
    opened: Vec<std::path::PathBuf>,
}

impl DirsBuilder {
    pub(super) fn new() -> Self {
        DirsBuilder {
            dirs: CgroupDirs::default(),
            opened: Vec::new(),
        }
    }

    /// Opens `dir` (or finds it opened already); `None` when it cannot be opened.
    fn index(&mut self, dir: &Path) -> Option<usize> {
        if let Some(i) = self.opened.iter().position(|d| d == dir) {
            return Some(i);
        }
        // O_PATH: no read access is needed on the directory, only a base for openat.
        match open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => {
                self.dirs.dirs.push(fd);
                self.opened.push(dir.to_owned());
                Some(self.dirs.dirs.len() - 1)
            }
            Err(_) => {
                self.dirs.complete = false;
                None
            }
        }
    }

    pub(super) fn cpu(&mut self, dir: &Path, source: CpuSource) {
        self.dirs.cpu = self.index(dir).map(|i| (i, source));
    }

    pub(super) fn memory(&mut self, dir: &Path, version: Version) {
        self.dirs.memory = self.index(dir).map(|i| (i, version));
    }

    pub(super) fn pids(&mut self, dir: &Path) {
        self.dirs.pids = self.index(dir);
    }

    pub(super) fn build(self) -> CgroupDirs {
        self.dirs
    }
}

/// Where each cgroup version keeps the memory figures the two read alike.
struct MemoryNames {
    usage: &'static CStr,
    oom: &'static CStr,
    /// `memory.stat` keys: inactive file pages, anonymous memory, page faults, major ones.
    stat: [&'static str; 4],
}

impl MemoryNames {
    fn of(version: Version) -> Self {
        match version {
            Version::V1 => MemoryNames {
                usage: c"memory.usage_in_bytes",
                oom: c"memory.oom_control",
                stat: [
                    "total_inactive_file",
                    "total_rss",
                    "total_pgfault",
                    "total_pgmajfault",
                ],
            },
            Version::V2 => MemoryNames {
                usage: c"memory.current",
                oom: c"memory.events",
                stat: ["inactive_file", "anon", "pgfault", "pgmajfault"],
            },
        }
    }
}

/// Reads a kernel file at `path` (such as `/proc/<pid>/net/dev`) into `buf` (cleared
/// first); `None` when it cannot be read or is not text.
pub fn read_text<'b>(path: &Path, buf: &'b mut Vec<u8>) -> Option<&'b str> {
    read_all(File::open(path).ok()?, buf)
}

/// Reads `file` to its end into `buf`: the kernel may hand a stat file over in pieces.
fn read_all(mut file: File, buf: &mut Vec<u8>) -> Option<&str> {
    buf.clear();
    // A plain read loop: std's read_to_end on a File first asks the size of the file,
    // which costs a statx per read and is always 4096 (or 0) on cgroupfs and procfs.
    let mut chunk = [0u8; 4096];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    std::str::from_utf8(buf).ok()
}

/// The largest stat file read; v1 `memory.stat`, the largest, is about 2 KiB.
const MAX_STAT_FILE: usize = 1 << 20;

/// Reads all of `file` from offset 0 into `buf` in one `pread`: a cgroupfs file is
/// generated afresh by a read at offset 0 and handed over whole when the buffer holds it
/// (a short read is its end), so one call gives one consistent snapshot even when two
/// stats calls read the same kept file at once. A full buffer is grown and read again.
fn pread_all<'b>(file: &File, buf: &'b mut Vec<u8>) -> Option<&'b str> {
    if buf.len() < 8192 {
        buf.resize(8192, 0);
    }
    loop {
        let n = loop {
            match file.read_at(buf, 0) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        };
        if n < buf.len() {
            return std::str::from_utf8(&buf[..n]).ok();
        }
        if buf.len() >= MAX_STAT_FILE {
            return None;
        }
        let grown = buf.len() * 2;
        buf.resize(grown, 0);
    }
}

impl CgroupDirs {
    /// Whether every hierarchy was opened; an incomplete set is not worth keeping (it is
    /// opened again on the next call, when the cause may be gone).
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Reads stat file `which`, named `name` in directory `dir`, into `buf`: through the
    /// kept file, or opened now and kept when the node's budget of fds allows (else read
    /// and closed, as before files were kept). `None` when it cannot be read.
    fn read<'b>(
        &self,
        dir: usize,
        which: StatFile,
        name: &CStr,
        buf: &'b mut Vec<u8>,
    ) -> Option<&'b str> {
        let slot = &self.files[which as usize];
        if let Some(kept) = slot.get() {
            return match kept {
                Kept::Open(file) => pread_all(file, buf),
                Kept::Missing => None,
            };
        }
        let file = match openat(
            &self.dirs[dir],
            name,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => {
                // The kernel's set of files of a cgroup is fixed when the cgroup is made.
                let _ = slot.set(Kept::Missing);
                return None;
            }
            // Another failure (out of fds, a signal) may pass: tried again next call.
            Err(_) => return None,
        };
        if !reserve(1) {
            return pread_all(&file, buf);
        }
        match slot.set(Kept::Open(file)) {
            Ok(()) => {
                self.kept_files.fetch_add(1, Ordering::SeqCst);
                match slot.get() {
                    Some(Kept::Open(file)) => pread_all(file, buf),
                    _ => None,
                }
            }
            // A concurrent read kept its own meanwhile: this one is read and closed.
            Err(Kept::Open(file)) => {
                release(1);
                pread_all(&file, buf)
            }
            Err(Kept::Missing) => {
                release(1);
                None
            }
        }
    }

    fn read_u64(&self, dir: usize, which: StatFile, name: &CStr, buf: &mut Vec<u8>) -> Option<u64> {
        self.read(dir, which, name, buf)?.trim().parse().ok()
    }

    /// The cgroup's usage now (all its descendants included), read fresh from the kernel.
    /// `buf` is scratch space the caller may reuse across cgroups.
    pub fn usage(&self, want: Wanted, buf: &mut Vec<u8>) -> CgroupUsage {
        use StatFile as F;
        let mut u = CgroupUsage::default();
        if let Some((i, source)) = self.cpu {
            u.cpu_ns = match source {
                CpuSource::Cpuacct => self.read_u64(i, F::Cpu, c"cpuacct.usage", buf),
                CpuSource::CpuStat => self
                    .read(i, F::Cpu, c"cpu.stat", buf)
                    .and_then(|t| keyed_values(t, ["usage_usec"])[0])
                    .map(|us| us.saturating_mul(1000)),
            };
        }
        if want.processes {
            u.processes = self
                .pids
                .and_then(|i| self.read_u64(i, F::Pids, c"pids.current", buf));
        }
        let Some((i, version)) = self.memory else {
            return u;
        };
        let names = MemoryNames::of(version);
        u.memory_usage = self.read_u64(i, F::MemoryUsage, names.usage, buf);
        let [inactive, rss, pgfault, pgmajfault] = self
            .read(i, F::MemoryStat, c"memory.stat", buf)
            .map_or([None; 4], |t| keyed_values(t, names.stat));
        u.working_set = u
            .memory_usage
            .map(|m| m.saturating_sub(inactive.unwrap_or(0)));
        u.rss = rss;
        u.page_faults = pgfault;
        u.major_page_faults = pgmajfault;
        if want.oom_kills {
            u.oom_kills = self.read(i, F::Oom, names.oom, buf).map_or(0, oom_kills);
        }
        match version {
            Version::V1 => {
                // v1 reports "unlimited" as the largest page-aligned i64.
                u.memory_limit = self
                    .read_u64(i, F::MemoryLimit, c"memory.limit_in_bytes", buf)
                    .filter(|l| *l < 1 << 62);
                u.swap_usage = self
                    .read_u64(i, F::Swap, c"memory.memsw.usage_in_bytes", buf)
                    .zip(u.memory_usage)
                    .map(|(sw, m)| sw.saturating_sub(m));
            }
            Version::V2 => {
                u.memory_limit = self
                    .read(i, F::MemoryLimit, c"memory.max", buf)
                    .and_then(limit);
                u.swap_usage = self.read_u64(i, F::Swap, c"memory.swap.current", buf);
            }
        }
        u
    }
}

/// Directory and stat file fds kept by every [`CgroupDirs`] together.
#[cfg(not(test))]
fn kept_count() -> &'static AtomicUsize {
    static KEPT: AtomicUsize = AtomicUsize::new(0);
    &KEPT
}

/// Unit tests run on parallel threads and assert exact counts: each thread counts its own.
#[cfg(test)]
fn kept_count() -> &'static AtomicUsize {
    thread_local!(static KEPT: &'static AtomicUsize = Box::leak(Box::default()));
    KEPT.with(|k| *k)
}

/// How many directory and stat file fds may be kept: half the daemon's soft
/// `RLIMIT_NOFILE`, so that a node past it (or a daemon started with a low limit) never
/// runs out of fds for its other work; its other cgroups' files are opened on each call.
fn keep_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        getrlimit(Resource::RLIMIT_NOFILE).map_or(512, |(soft, _)| (soft / 2) as usize)
    })
}

fn reserve(n: usize) -> bool {
    kept_count()
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| {
            (k + n <= keep_budget()).then_some(k + n)
        })
        .is_ok()
}

fn release(n: usize) {
    kept_count().fetch_sub(n, Ordering::SeqCst);
}

/// The directories of one pod's or container's cgroup, kept in its entry between stats
/// calls: opened by the first read, closed when the cgroup is released or the entry goes.
#[derive(Debug, Default)]
pub struct UsageDirs(Mutex<Option<Arc<CgroupDirs>>>);

impl UsageDirs {
    /// The kept directories, or those `open` makes now, kept when all opened and within
    /// the node's budget of kept fds. The lock is not held while opening.
    pub fn get_or_open(&self, open: impl FnOnce() -> CgroupDirs) -> Arc<CgroupDirs> {
        if let Some(d) = self.lock().as_ref() {
            return Arc::clone(d);
        }
        let d = Arc::new(open());
        let n = d.dirs.len();
        if d.complete() && reserve(n) {
            let mut kept = self.lock();
            if kept.is_none() {
                *kept = Some(Arc::clone(&d));
            } else {
                // A concurrent call kept its own meanwhile.
                release(n);
            }
        }
        d
    }

    /// Closes the kept directories (the cgroup is being removed).
    pub fn clear(&self) {
        if let Some(d) = self.lock().take() {
            release(d.dirs.len());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<CgroupDirs>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for UsageDirs {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
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
}
