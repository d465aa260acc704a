//! Resources: kubelet's limits as the kernel enforces them, live updates, OOM
//! kills, and the stats kubelet reads, each observed where a user would see it: in the
//! cgroup files, in what the container experiences, and in the CRI answers.
//!
//! The cgroup files are read from whichever hierarchy holds each controller (this machine:
//! cgroup v1 controllers; field nodes: v2). Run through the harness: `scripts/test.sh`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_e2e::Env;
use berth_e2e::fixtures::{
    busybox_daemon, container_config, container_stats, container_status, daemon_with, exec_sync,
    pod_config, pod_ip, pull, remove_pod, run_pod, start, start_container, wait_exited,
    with_resources,
};
use berth_e2e::{Daemon, images};
use k8s_cri::v1::*;
use tonic::Code;

const MIB: i64 = 1 << 20;

/// The unified hierarchy when the host is cgroup v2 only.
fn pure_v2() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// `file` of cgroup `rel` in the hierarchy of `controller`.
fn cgroup_file(controller: &str, rel: &str, file: &str) -> PathBuf {
    let root = if pure_v2() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup").join(controller)
    };
    root.join(rel.trim_start_matches('/')).join(file)
}

fn read(controller: &str, rel: &str, v1: &str, v2: &str) -> String {
    let file = cgroup_file(controller, rel, if pure_v2() { v2 } else { v1 });
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
        .trim()
        .to_owned()
}

fn memory_limit(rel: &str) -> i64 {
    read("memory", rel, "memory.limit_in_bytes", "memory.max")
        .parse()
        .unwrap()
}

fn exists_anywhere(rel: &str) -> Vec<PathBuf> {
    berth_e2e::leaks::cgroup_roots()
        .into_iter()
        .map(|r| r.join(rel.trim_start_matches('/')))
        .filter(|p| p.exists())
        .collect()
}

/// A running pod placed under a kubelet-style parent unique to `tag`: (config, pod id,
/// parent).
async fn limited_pod(d: &Daemon, tag: &str) -> (PodSandboxConfig, String, String) {
    let mut config = pod_config(tag, &d.dir().path().join("logs"));
    let parent = Env::get().cgroup_parent(tag);
    config.linux = Some(LinuxPodSandboxConfig {
        cgroup_parent: parent.clone(),
        ..Default::default()
    });
    let pod_id = run_pod(d, &config).await;
    (config, pod_id, parent)
}

fn v(x: &Option<UInt64Value>) -> u64 {
    x.as_ref().expect("a value").value
}

/// The container's writable layer as its stats report it, polled (as kubelet polls) until
/// `done` holds, within 25 s: a layer is measured in the background, first soon after a
/// stats call sees the container, then once its last measure is 10 s old (README).
async fn layer_until(
    d: &Daemon,
    id: &str,
    done: impl Fn(&FilesystemUsage) -> bool,
) -> FilesystemUsage {
    let started = Instant::now();
    loop {
        let layer = container_stats(d, id).await.writable_layer;
        match layer {
            Some(l) if done(&l) => return l,
            l if started.elapsed() > Duration::from_secs(25) => {
                panic!("container {id}: writable layer still {l:?} after 25 s")
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[tokio::test]
async fn a_memory_limit_ends_in_oomkilled_and_nothing_is_left() {
    let d = busybox_daemon().await;
    let (pod, pod_id, parent) = limited_pod(&d, "oom").await;
    let limits = LinuxContainerResources {
        memory_limit_in_bytes: 32 * MIB,
        memory_swap_limit_in_bytes: 32 * MIB,
        ..Default::default()
    };
    // dd fills a 64 MiB buffer: twice the limit.
    let hog = with_resources(
        container_config(
            "hog",
            &[
                "sh",
                "-c",
                "sleep 1; dd if=/dev/zero of=/dev/null bs=64M count=1",
            ],
        ),
        limits,
    );
    let id = start_container(&d, &pod_id, &pod, hog).await;
    let rel = format!("{parent}/{id}");
    assert_eq!(memory_limit(&rel), 32 * MIB);
    let status = wait_exited(&d, &id).await;
    assert_eq!(status.reason, "OOMKilled", "{status:?}");
    assert_eq!(status.exit_code, 137, "{status:?}");
    // An exited container's cgroup goes with its exit, before RemoveContainer.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !exists_anywhere(&rel).is_empty() {
        assert!(
            Instant::now() < deadline,
            "cgroup {rel} outlived the container"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The monitor's cgroup is the pod's sibling of its containers.
    assert!(!exists_anywhere(&format!("{parent}/{pod_id}")).is_empty());

    // A container that exits on its own with an error is not called OOMKilled.
    let failing = start(&d, &pod_id, &pod, "fail", &["false"]).await;
    let status = wait_exited(&d, &failing).await;
    assert_eq!(status.reason, "Error");

    remove_pod(&d, &pod_id).await;
    assert_eq!(exists_anywhere(&rel), Vec::<PathBuf>::new());
    assert_eq!(
        exists_anywhere(&format!("{parent}/{pod_id}")),
        Vec::<PathBuf>::new()
    );
}

#[tokio::test]
async fn cpu_quota_and_cpuset_are_enforced_and_updates_apply_live() {
    let d = busybox_daemon().await;
    let (pod, pod_id, parent) = limited_pod(&d, "cpu").await;
    let limits = LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 20_000,
        cpu_shares: 256,
        cpuset_cpus: "0".into(),
        memory_limit_in_bytes: 64 * MIB,
        ..Default::default()
    };
    let busy = with_resources(
        container_config("busy", &["sh", "-c", "while :; do :; done"]),
        limits,
    );
    let id = start_container(&d, &pod_id, &pod, busy).await;
    let rel = format!("{parent}/{id}");
    if pure_v2() {
        assert_eq!(read("cpu", &rel, "", "cpu.max"), "20000 100000");
    } else {
        assert_eq!(read("cpu", &rel, "cpu.cfs_quota_us", ""), "20000");
        assert_eq!(read("cpu", &rel, "cpu.cfs_period_us", ""), "100000");
        assert_eq!(read("cpu", &rel, "cpu.shares", ""), "256");
    }
    assert_eq!(read("cpuset", &rel, "cpuset.cpus", "cpuset.cpus"), "0");
    let (out, _, code) =
        exec_sync(&d, &id, &["grep", "Cpus_allowed_list", "/proc/self/status"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.split_whitespace().last(), Some("0"), "{out}");

    // The busy loop gets 20% of a CPU: measured through CRI stats over two seconds.
    let first = container_stats(&d, &id).await;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = container_stats(&d, &id).await;
    let used = v(&second.cpu.as_ref().unwrap().usage_core_nano_seconds)
        - v(&first.cpu.as_ref().unwrap().usage_core_nano_seconds);
    let share = used as f64 / t0.elapsed().as_nanos() as f64;
    assert!(
        (0.05..0.35).contains(&share),
        "the loop used {share:.2} of a CPU"
    );
    let nano = v(&second.cpu.as_ref().unwrap().usage_nano_cores);
    assert!(
        (50_000_000..350_000_000).contains(&nano),
        "usage_nano_cores {nano}"
    );
    if !pure_v2() {
        let stat = read("cpu", &rel, "cpu.stat", "");
        let throttled: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(throttled > 0, "{stat}");
    }

    // UpdateContainerResources: the kernel and ContainerStatus both show the new values.
    d.runtime()
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(LinuxContainerResources {
                cpu_quota: 50_000,
                memory_limit_in_bytes: 128 * MIB,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources");
    assert_eq!(memory_limit(&rel), 128 * MIB);
    if !pure_v2() {
        assert_eq!(read("cpu", &rel, "cpu.cfs_quota_us", ""), "50000");
    }
    let status = container_status(&d, &id).await;
    let r = status.resources.unwrap().linux.unwrap();
    assert_eq!(r.memory_limit_in_bytes, 128 * MIB);
    assert_eq!(r.cpu_quota, 50_000);
    assert_eq!(r.cpu_period, 100_000, "fields not updated are kept");

    // A limit below what is in use, and keys of the other cgroup version, are refused.
    let mut unified = LinuxContainerResources::default();
    unified
        .unified
        .insert("memory.high".into(), "100000000".into());
    let e = d
        .runtime()
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(unified),
            ..Default::default()
        })
        .await;
    if pure_v2() {
        e.expect("memory.high on v2");
    } else {
        let e = e.expect_err("memory.high on v1");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("v2"), "{e:?}");
    }
    let e = d
        .runtime()
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: "no-such-container".into(),
            linux: Some(LinuxContainerResources::default()),
            ..Default::default()
        })
        .await
        .expect_err("unknown container");
    assert_eq!(e.code(), Code::NotFound);
    remove_pod(&d, &pod_id).await;
    assert_eq!(exists_anywhere(&rel), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn the_node_pids_limit_stops_a_fork_loop() {
    let d = daemon_with("[cgroup]\npids_limit = 16\n").await;
    pull(&d, images::BUSYBOX).await;
    let (pod, pod_id, parent) = limited_pod(&d, "pids").await;
    // The inner shell gives up at the first failed fork; the outer one reports and waits.
    let script = "sh -c 'n=0; while [ $n -lt 40 ]; do sleep 30 & n=$((n+1)); done'; \
                  echo started; sleep 30";
    let id = start(&d, &pod_id, &pod, "forks", &["sh", "-c", script]).await;
    let rel = format!("{parent}/{id}");
    assert_eq!(read("pids", &rel, "pids.max", "pids.max"), "16");
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = d.dir().path().join("logs").join("forks.log");
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("started") {
            assert!(
                text.contains("fork"),
                "the shell reports failed forks: {text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the loop did not finish: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let current: u64 = read("pids", &rel, "pids.current", "pids.current")
        .parse()
        .unwrap();
    assert!(current <= 16, "{current} processes");
    assert!(
        current >= 10,
        "{current} processes: the loop should have filled the limit"
    );
    remove_pod(&d, &pod_id).await;
    assert_eq!(exists_anywhere(&rel), Vec::<PathBuf>::new());
}

/// PodSandboxStats of `pod_id`.
async fn pod_sandbox_stats(d: &Daemon, pod_id: &str) -> PodSandboxStats {
    d.runtime()
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.to_owned(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .expect("stats")
}

#[tokio::test]
async fn stats_report_what_the_container_uses() {
    let d = busybox_daemon().await;
    // No cgroup_parent: Berth makes the pod's cgroup, applies the pod-level resources to
    // it, and removes it with the pod.
    let mut pod = pod_config("stats", &d.dir().path().join("logs"));
    pod.linux = Some(LinuxPodSandboxConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 256 * MIB,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod_id = run_pod(&d, &pod).await;
    let cgroup = format!(
        "{}/{pod_id}",
        Env::get().cgroup_parent(&format!("d{}", d.dir().number()))
    );
    assert_eq!(memory_limit(&cgroup), 256 * MIB);
    let id = start(&d, &pod_id, &pod, "idle", &["sleep", "3600"]).await;
    let before = container_stats(&d, &id).await;
    let attrs = before.attributes.as_ref().unwrap();
    assert_eq!(attrs.id, id);
    assert_eq!(attrs.metadata.as_ref().unwrap().name, "idle");
    let ws0 = v(&before.memory.as_ref().unwrap().working_set_bytes);
    let layer0 = layer_until(&d, &id, |_| true).await;
    let (bytes0, inodes0) = (v(&layer0.used_bytes), v(&layer0.inodes_used));

    // 24 MiB of shared memory (charged to the container) and a 6 MiB file in its layer.
    let (_, err, code) = exec_sync(
        &d,
        &id,
        &[
            "sh",
            "-c",
            "dd if=/dev/urandom of=/dev/shm/fill bs=1M count=24 2>/dev/null && \
             dd if=/dev/urandom of=/data.bin bs=1M count=6 2>/dev/null && sync",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let after = container_stats(&d, &id).await;
    let mem = after.memory.as_ref().unwrap();
    let grown = v(&mem.working_set_bytes) as i64 - ws0 as i64;
    // Within 2 MiB below (pages the idle baseline held and gave back) and 16 MiB above
    // (the exec processes' own pages, page tables, the file's cache).
    assert!(
        (22 * MIB..40 * MIB).contains(&grown),
        "working set grew by {grown} bytes for 24 MiB of shm"
    );
    assert!(v(&mem.usage_bytes) >= v(&mem.working_set_bytes));
    let layer = layer_until(&d, &id, |l| v(&l.used_bytes) >= bytes0 + 6 * MIB as u64).await;
    let layer_grown = v(&layer.used_bytes) as i64 - bytes0 as i64;
    assert!(
        (6 * MIB..7 * MIB).contains(&layer_grown),
        "writable layer grew by {layer_grown} bytes for a 6 MiB file"
    );
    assert_eq!(v(&layer.inodes_used), inodes0 + 1);

    // Pod stats: the pod's cgroup holds the container's usage; network counters grow.
    let pod_stats = || pod_sandbox_stats(&d, &pod_id);
    let s0 = pod_stats().await;
    let linux = s0.linux.as_ref().unwrap();
    assert_eq!(linux.containers.len(), 1);
    assert!(v(&linux.memory.as_ref().unwrap().working_set_bytes) >= 24 * MIB as u64);
    let procs = v(&linux.process.as_ref().unwrap().process_count);
    assert!(procs >= 2, "monitor and sleep: {procs}");
    let net0 = linux
        .network
        .as_ref()
        .unwrap()
        .default_interface
        .clone()
        .unwrap();
    assert_eq!(net0.name, "eth0");
    let ip: std::net::Ipv4Addr = pod_ip(&d, &pod_id).await.parse().unwrap();
    let gw = std::net::Ipv4Addr::from(u32::from(ip) & 0xffff_0000 | 1);
    let (out, _, code) =
        exec_sync(&d, &id, &["ping", "-c", "3", "-s", "1000", &gw.to_string()]).await;
    assert_eq!(code, 0, "{out}");
    let s1 = pod_stats().await;
    let net1 = s1
        .linux
        .unwrap()
        .network
        .unwrap()
        .default_interface
        .unwrap();
    assert!(
        v(&net1.tx_bytes) >= v(&net0.tx_bytes) + 3000,
        "{net0:?} -> {net1:?}"
    );
    assert!(
        v(&net1.rx_bytes) >= v(&net0.rx_bytes) + 3000,
        "{net0:?} -> {net1:?}"
    );

    // Lists and filters.
    let list = d
        .runtime()
        .list_container_stats(ListContainerStatsRequest {
            filter: Some(ContainerStatsFilter {
                pod_sandbox_id: pod_id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(list.len(), 1);
    let none = d
        .runtime()
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter {
                label_selector: [("app".to_string(), "nope".to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert!(none.is_empty());
    let e = d
        .runtime()
        .container_stats(ContainerStatsRequest {
            container_id: "missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // cAdvisor-style metrics: every metric has a descriptor with matching labels.
    let mut rt = d.runtime();
    let descriptors = rt.list_metric_descriptors(ListMetricDescriptorsRequest {});
    let descriptors = descriptors.await.unwrap().into_inner().descriptors;
    let metrics = rt.list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {});
    let metrics = metrics.await.unwrap().into_inner().pod_metrics;
    let mine = metrics.iter().find(|m| m.pod_sandbox_id == pod_id).unwrap();
    let cm = &mine.container_metrics[0];
    assert_eq!(cm.container_id, id);
    let ws = cm
        .metrics
        .iter()
        .find(|m| m.name == "container_memory_working_set_bytes")
        .unwrap();
    assert!(v(&ws.value) >= 24 * MIB as u64);
    for m in mine.metrics.iter().chain(&cm.metrics) {
        let d = descriptors.iter().find(|d| d.name == m.name).unwrap();
        assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
    }
    assert!(
        mine.metrics
            .iter()
            .any(|m| m.name == "container_network_receive_bytes_total")
    );

    assert!(!exists_anywhere(&cgroup).is_empty());
    remove_pod(&d, &pod_id).await;
    assert_eq!(exists_anywhere(&cgroup), Vec::<PathBuf>::new());
}

/// How many device programs are attached to the cgroup v2 directory `dir` (BPF_PROG_QUERY).
fn device_programs(dir: &std::path::Path) -> u32 {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    #[derive(Default)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
    }
    let f = std::fs::File::open(dir).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    let mut q = Query {
        target_fd: f.as_raw_fd() as u32,
        attach_type: 6, // BPF_CGROUP_DEVICE
        ..Default::default()
    };
    // SAFETY: q is a live bpf_attr prefix of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            16, // BPF_PROG_QUERY
            &mut q as *mut Query,
            std::mem::size_of::<Query>() as u32,
        )
    };
    assert_eq!(r, 0, "BPF_PROG_QUERY: {}", std::io::Error::last_os_error());
    q.prog_cnt
}

#[tokio::test]
async fn containers_cannot_open_devices_they_were_not_given() {
    let d = busybox_daemon().await;
    let (pod, pod_id, parent) = limited_pod(&d, "dev").await;
    let id = start(&d, &pod_id, &pod, "dev", &["sleep", "3600"]).await;
    // CAP_MKNOD is in the default set: making the node works, opening it does not.
    let (out, err, code) = exec_sync(
        &d,
        &id,
        &[
            "sh",
            "-c",
            "mknod /tmp/disk b 8 0 && echo made; head -c 1 /tmp/disk",
        ],
    )
    .await;
    assert!(out.contains("made"), "{out} {err}");
    assert_ne!(code, 0);
    assert!(err.contains("Operation not permitted"), "{err}");
    let (out, _, code) =
        exec_sync(&d, &id, &["sh", "-c", "echo ok > /dev/null && echo fine"]).await;
    assert_eq!((out.trim(), code), ("fine", 0));
    // The container's processes are in its cgroup in every hierarchy Berth uses (born
    // there on v2, moved there on v1).
    let (out, _, _) = exec_sync(&d, &id, &["cat", "/proc/self/cgroup"]).await;
    let prefixes: &[&str] = if pure_v2() {
        &["0::"]
    } else {
        &["0::", "memory:", "pids:"]
    };
    for prefix in prefixes {
        let line = out
            .lines()
            .find(|l| {
                l.split_once(':')
                    .map(|(_, r)| r)
                    .is_some_and(|r| r.starts_with(prefix))
                    || l.starts_with(prefix)
            })
            .unwrap_or_else(|| panic!("no {prefix} line in {out}"));
        assert!(line.ends_with(&format!("{parent}/{id}")), "{line}");
    }
    // The cgroup v2 filter is attached to the container's cgroup (on a hybrid host, too).
    let unified = if pure_v2() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/unified")
    };
    if unified.exists() {
        let dir = unified.join(format!("{parent}/{id}").trim_start_matches('/'));
        assert_eq!(device_programs(&dir), 1);
    }
    remove_pod(&d, &pod_id).await;
}

#[tokio::test]
async fn cgroups_left_by_a_crash_are_removed_at_the_next_start() {
    let mut d = busybox_daemon().await;
    let (pod, pod_id, parent) = limited_pod(&d, "crash").await;
    let id = start(&d, &pod_id, &pod, "keep", &["sleep", "3600"]).await;
    d.kill().await.expect("SIGKILL");
    // What a crash between removing a cgroup and its record would leave: a container leaf
    // in a live pod's cgroup, and a pod cgroup under Berth's own parent.
    let own = Env::get().cgroup_parent(&format!("d{}", d.dir().number()));
    let strays = [
        format!("{parent}/0123456789abcdef"),
        format!("{own}/fedcba9876543210"),
    ];
    // Only in the hierarchies Berth manages (those holding the container's cgroup).
    let managed = berth_e2e::leaks::cgroup_roots().into_iter().filter(|r| {
        r.join(format!("{parent}/{id}").trim_start_matches('/'))
            .exists()
    });
    for root in managed {
        for s in &strays {
            std::fs::create_dir_all(root.join(s.trim_start_matches('/'))).unwrap();
        }
    }
    d.start_again().await.expect("restart");
    d.wait_runtime_ready(Duration::from_secs(30))
        .await
        .expect("reconciled");
    for s in &strays {
        assert_eq!(exists_anywhere(s), Vec::<PathBuf>::new(), "{s}");
    }
    // What records name is kept: the container still runs in its cgroup.
    assert!(!exists_anywhere(&format!("{parent}/{id}")).is_empty());
    let status = container_status(&d, &id).await;
    assert_eq!(status.state, ContainerState::ContainerRunning as i32);
    remove_pod(&d, &pod_id).await;
}

/// How many fds the daemon holds open now.
fn open_fds(d: &Daemon) -> usize {
    let pid = d.pid().expect("daemon pid");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Stats keep each pod's and container's cgroup files open between calls, and close them
/// when the pod goes: after pods came, were polled and went, the daemon holds as many fds
/// as before.
#[tokio::test]
async fn stats_close_the_cgroup_files_they_keep_when_pods_go() {
    let d = busybox_daemon().await;
    let logs = d.dir().path().join("logs");
    let poll = || async {
        let mut rt = d.runtime();
        let c = rt.list_container_stats(ListContainerStatsRequest { filter: None });
        let c = c.await.expect("ListContainerStats").into_inner().stats;
        let p = rt.list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: None });
        let p = p.await.expect("ListPodSandboxStats").into_inner().stats;
        (c.len(), p.len())
    };
    let round = |tag: &'static str, n: usize| {
        let (d, logs) = (&d, &logs);
        async move {
            let mut pods = Vec::new();
            for i in 0..n {
                let pod = pod_config(&format!("{tag}{i}"), logs);
                let pod_id = run_pod(d, &pod).await;
                start(d, &pod_id, &pod, "idle", &["sleep", "3600"]).await;
                pods.push(pod_id);
            }
            pods
        }
    };
    // A first round warms up what the daemon opens once (its database, threads, the
    // client's connection).
    for pod_id in round("warm", 1).await {
        poll().await;
        remove_pod(&d, &pod_id).await;
    }
    let baseline = open_fds(&d);
    for r in ["a", "b", "c"] {
        let pods = round(r, 6).await;
        assert_eq!(poll().await, (6, 6));
        assert_eq!(poll().await, (6, 6));
        // Six pods and six containers, each with its directories and at least four stat
        // files kept (cgroup v2: one directory; v1: three, and five or six files).
        let polled = open_fds(&d);
        assert!(
            polled >= baseline + 12 * 5,
            "{polled} fds with 12 cgroups polled, {baseline} before"
        );
        for pod_id in pods {
            remove_pod(&d, &pod_id).await;
        }
    }
    assert_eq!(poll().await, (0, 0));
    // A removed pod's files close with its record; a few fds of other work may come and go.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = open_fds(&d);
        if now <= baseline + 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{now} fds after three rounds of 6 pods came and went, {baseline} before"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The daemon's fds open on a `/proc/<pid>/net/dev`.
fn net_dev_fds(d: &Daemon) -> usize {
    let pid = d.pid().expect("daemon pid");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.starts_with("/proc") && t.ends_with("net/dev"))
        .count()
}

/// A pod's `net/dev` stays open between stats calls and is closed when the pod stops (it
/// pins the pod's network namespace); one cgroup reading serves ListContainerStats and the
/// ListPodSandboxStats sent right after it, stamped with its own time, while a call about
/// one container reads afresh.
#[tokio::test]
async fn list_stats_share_a_reading_and_a_pods_net_dev_closes_when_it_stops() {
    let d = busybox_daemon().await;
    let pod = pod_config("netdev", &d.dir().path().join("logs"));
    let pod_id = run_pod(&d, &pod).await;
    let id = start(&d, &pod_id, &pod, "idle", &["sleep", "3600"]).await;
    let mut rt = d.runtime();
    let cpu_at = |s: &ContainerStats| s.cpu.as_ref().expect("cpu").timestamp;
    for _ in 0..3 {
        let t = Instant::now();
        let list = rt.list_container_stats(ListContainerStatsRequest { filter: None });
        let list = list.await.expect("ListContainerStats").into_inner().stats;
        let pods = rt.list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: None });
        let pods = pods.await.expect("ListPodSandboxStats").into_inner().stats;
        let elapsed = t.elapsed();
        let linux = pods[0].linux.as_ref().unwrap();
        let net = linux.network.as_ref().expect("network");
        assert_eq!(net.default_interface.as_ref().unwrap().name, "eth0");
        // Within the window (with room for a loaded machine's scheduling), the pod's
        // container was served the reading ListContainerStats took.
        if elapsed < Duration::from_millis(300) {
            assert_eq!(cpu_at(&linux.containers[0]), cpu_at(&list[0]));
        }
        // A call about the container reads afresh.
        let one = container_stats(&d, &id).await;
        assert!(cpu_at(&one) > cpu_at(&list[0]));
        // Past the window, the List call reads again.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let again = rt.list_container_stats(ListContainerStatsRequest { filter: None });
        let again = again.await.unwrap().into_inner().stats;
        assert!(cpu_at(&again[0]) > cpu_at(&one));
    }
    // Kept: one fd for the pod however many calls read it.
    assert_eq!(net_dev_fds(&d), 1);
    d.runtime()
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("StopPodSandbox");
    assert_eq!(net_dev_fds(&d), 0);
    // A stopped pod's stats never reopen it.
    let s = pod_sandbox_stats(&d, &pod_id).await;
    assert!(s.linux.unwrap().network.is_none());
    assert_eq!(net_dev_fds(&d), 0);
    remove_pod(&d, &pod_id).await;
}
