//! The systemd cgroup driver against a real systemd (252, Debian 12) booted with
//! systemd-nspawn ([`berth_e2e::nspawn`]): kubelet-style pods, whose `cgroup_parent` is a
//! slice, become scopes systemd reports in that slice; container limits are written below
//! them; OOM kills and stats are seen; removal removes the units; a daemon killed and
//! started again finds its pods' scopes.
//!
//! What is asserted is what the node's systemd reports (`systemctl show`, `list-units`) and
//! what the cgroup files inside the container hold.

use std::time::{Duration, Instant};

use berth_e2e::fixtures::{
    container_config, container_stats, container_status, host_network_pod_config, pull,
    remove_container, remove_pod, run_pod, start, start_container, stop_container, wait_exited,
    with_resources,
};
use berth_e2e::images;
use berth_e2e::nspawn::{Node, NodeDaemon};
use k8s_cri::v1::*;

const MIB: i64 = 1 << 20;

/// Berth inside a fresh node with the systemd driver.
async fn node_daemon() -> NodeDaemon {
    let d = NodeDaemon::start("[cgroup]\ndriver = \"systemd\"\nparent = \"\"\n")
        .await
        .unwrap_or_else(|e| panic!("berth in a systemd-nspawn node: {e}"));
    pull(&d, images::BUSYBOX).await;
    d
}

/// The slice kubelet's systemd driver names for a burstable pod (dashes in the uid become
/// underscores, since a dash separates slice levels).
fn pod_slice(uid: &str) -> String {
    format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_"))
}

/// A host-network pod in kubelet's burstable slice for its uid; returns (config, id,
/// slice).
async fn kubelet_pod(d: &NodeDaemon, name: &str) -> (PodSandboxConfig, String, String) {
    let mut config = host_network_pod_config(name, &d.dir().path().join("logs"));
    let slice = pod_slice(&config.metadata.as_ref().unwrap().uid);
    config.linux.as_mut().unwrap().cgroup_parent = slice.clone();
    let id = run_pod(d, &config).await;
    (config, id, slice)
}

fn scope(pod_id: &str) -> String {
    format!("berth-{pod_id}.scope")
}

/// Whether the node's cgroups are v2 only (else v1 or hybrid, with one mount per
/// controller).
fn node_v2(node: &Node) -> bool {
    node.run_status(&["test", "-e", "/sys/fs/cgroup/cgroup.controllers"])
        .expect("nsenter")
        .1
        .is_ok()
}

/// A cgroup file inside the node: `rel` below the controller's mount (v1) or the one
/// mount (v2).
fn cgroup_file(node: &Node, controller: &str, rel: &str, v1: &str, v2: &str) -> String {
    let path = if node_v2(node) {
        format!("/sys/fs/cgroup{rel}/{v2}")
    } else {
        format!("/sys/fs/cgroup/{controller}{rel}/{v1}")
    };
    node.run(&["cat", &path])
        .unwrap_or_else(|e| panic!("read {path} in the node: {e}"))
        .trim()
        .to_string()
}

/// Whether `rel` exists in any hierarchy inside the node.
fn cgroup_exists(node: &Node, rel: &str) -> bool {
    let script = format!("ls -d /sys/fs/cgroup/*{rel} /sys/fs/cgroup{rel} 2>/dev/null");
    !node
        .run_status(&["sh", "-c", &script])
        .expect("nsenter")
        .0
        .trim()
        .is_empty()
}

/// `systemctl show` of one property.
fn property(node: &Node, unit: &str, name: &str) -> String {
    node.unit_properties(unit, &[name])
        .unwrap_or_else(|e| panic!("systemctl show {unit}: {e}"))
        .remove(0)
}

/// Waits until `unit` is gone (not loaded) or inactive.
async fn wait_unit_gone(node: &Node, unit: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let load = property(node, unit, "LoadState");
        let active = property(node, unit, "ActiveState");
        if load == "not-found" || active == "inactive" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{unit} is still {load}/{active} after removal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn value(x: &Option<UInt64Value>) -> u64 {
    x.as_ref().map_or(0, |v| v.value)
}

#[tokio::test]
async fn kubelet_pods_are_scopes_in_their_slice_with_limits_oom_stats_and_removal() {
    let d = node_daemon().await;
    let node = d.node();
    let (pod, pod_id, slice) = kubelet_pod(&d, "sd-limits").await;
    let unit = scope(&pod_id);

    // systemd started the pod's scope in kubelet's slice, delegated to Berth, and made
    // the slice's parents.
    assert_eq!(property(node, &unit, "ActiveState"), "active");
    assert_eq!(property(node, &unit, "Slice"), slice);
    assert_eq!(property(node, &unit, "Delegate"), "yes");
    assert_eq!(property(node, &slice, "ActiveState"), "active");
    assert_eq!(
        property(node, "kubepods-burstable.slice", "ActiveState"),
        "active"
    );
    let cgroup = property(node, &unit, "ControlGroup");
    assert_eq!(
        cgroup,
        format!("/kubepods.slice/kubepods-burstable.slice/{slice}/{unit}")
    );
    let units = node
        .run(&[
            "systemctl",
            "list-units",
            "--no-legend",
            "--plain",
            "berth-*.scope",
        ])
        .unwrap();
    assert!(units.contains(&unit), "{units}");

    // Container limits, written below the scope where systemd reports it.
    let limits = LinuxContainerResources {
        memory_limit_in_bytes: 96 * MIB,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        cpu_shares: 512,
        ..Default::default()
    };
    let busy = start_container(
        &d,
        &pod_id,
        &pod,
        with_resources(
            container_config("busy", &["sh", "-c", "while :; do :; done"]),
            limits,
        ),
    )
    .await;
    let rel = format!("{cgroup}/{busy}");
    let memory = cgroup_file(node, "memory", &rel, "memory.limit_in_bytes", "memory.max");
    assert_eq!(memory, (96 * MIB).to_string());
    let quota = cgroup_file(node, "cpu", &rel, "cpu.cfs_quota_us", "cpu.max");
    assert!(quota == "50000" || quota == "50000 100000", "{quota}");
    let shares = cgroup_file(node, "cpu", &rel, "cpu.shares", "cpu.weight");
    assert_eq!(shares, if node_v2(node) { "20" } else { "512" });
    // The container's processes are where systemd says the pod is.
    let procs = cgroup_file(node, "memory", &rel, "cgroup.procs", "cgroup.procs");
    assert!(!procs.is_empty(), "no process in {rel}");

    // Stats: a busy loop uses CPU, and memory is charged.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = container_stats(&d, &busy).await;
    assert!(
        value(&s.cpu.as_ref().unwrap().usage_core_nano_seconds) > 0,
        "{s:?}"
    );
    assert!(
        value(&s.memory.as_ref().unwrap().working_set_bytes) > 0,
        "{s:?}"
    );
    let pod_stats = d
        .client()
        .runtime()
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter {
                id: pod_id.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("ListPodSandboxStats")
        .into_inner()
        .stats;
    assert_eq!(pod_stats.len(), 1, "{pod_stats:?}");
    let linux = pod_stats[0].linux.as_ref().expect("linux pod stats");
    assert!(
        value(&linux.cpu.as_ref().unwrap().usage_core_nano_seconds) > 0,
        "{linux:?}"
    );
    assert!(
        value(&linux.memory.as_ref().unwrap().working_set_bytes) > 0,
        "{linux:?}"
    );

    // A container over its memory limit is OOM-killed, and reported so.
    let hog = start_container(
        &d,
        &pod_id,
        &pod,
        with_resources(
            container_config(
                "hog",
                &[
                    "sh",
                    "-c",
                    "sleep 1; dd if=/dev/zero of=/dev/null bs=64M count=1",
                ],
            ),
            LinuxContainerResources {
                memory_limit_in_bytes: 32 * MIB,
                memory_swap_limit_in_bytes: 32 * MIB,
                ..Default::default()
            },
        ),
    )
    .await;
    let status = wait_exited(&d, &hog).await;
    assert_eq!(status.reason, "OOMKilled", "{status:?}");
    assert_eq!(status.exit_code, 137, "{status:?}");

    // RemoveContainer removes the container's cgroup; RemovePodSandbox the scope.
    stop_container(&d, &busy, 0).await;
    remove_container(&d, &busy).await;
    assert!(!cgroup_exists(node, &rel), "{rel} outlived its container");
    remove_pod(&d, &pod_id).await;
    wait_unit_gone(node, &unit).await;
    assert!(!cgroup_exists(node, &cgroup), "{cgroup} outlived its pod");
    let units = node
        .run(&[
            "systemctl",
            "list-units",
            "--all",
            "--no-legend",
            "--plain",
            "berth-*.scope",
        ])
        .unwrap();
    assert!(!units.contains(&unit), "{units}");
}

#[tokio::test]
async fn a_restarted_daemon_finds_its_pods_scopes() {
    let mut d = node_daemon().await;
    let (pod, pod_id, _) = kubelet_pod(&d, "sd-restart").await;
    let unit = scope(&pod_id);
    let sleeper = start(&d, &pod_id, &pod, "sleeper", &["sleep", "3600"]).await;
    let cgroup = property(d.node(), &unit, "ControlGroup");

    // kill -9, as a crash would, then a new start: the pod's scope is systemd's, so it
    // lives on with the container in it.
    d.kill().await.expect("kill berth");
    assert_eq!(property(d.node(), &unit, "ActiveState"), "active");
    d.start_again().await.expect("start berth again");
    let status = container_status(&d, &sleeper).await;
    assert_eq!(
        status.state,
        ContainerState::ContainerRunning as i32,
        "{status:?}"
    );
    assert!(cgroup_exists(d.node(), &format!("{cgroup}/{sleeper}")));

    // The adopted pod stops and goes as one started by this daemon would, even after
    // systemd re-executed itself (each call opens a fresh connection).
    d.node()
        .run(&["systemctl", "daemon-reexec"])
        .expect("systemctl daemon-reexec");
    stop_container(&d, &sleeper, 0).await;
    let status = container_status(&d, &sleeper).await;
    assert_eq!(status.state, ContainerState::ContainerExited as i32);
    remove_pod(&d, &pod_id).await;
    wait_unit_gone(d.node(), &unit).await;
    assert!(
        !cgroup_exists(d.node(), &cgroup),
        "{cgroup} outlived its pod"
    );
}

#[tokio::test]
async fn pod_resources_in_berths_own_slice_are_scope_properties_systemd_applies() {
    let d = node_daemon().await;
    let node = d.node();
    // No cgroup_parent (crictl's case): the pod goes to Berth's slice, and its resources
    // are properties of its scope, which systemd writes to the scope's cgroup.
    let mut pod = host_network_pod_config("sd-own", &d.dir().path().join("logs"));
    pod.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 256 * MIB,
        cpu_quota: 150_000,
        cpu_period: 100_000,
        cpu_shares: 512,
        ..Default::default()
    });
    let pod_id = run_pod(&d, &pod).await;
    let unit = scope(&pod_id);
    assert_eq!(property(node, &unit, "Slice"), "berth.slice");
    let cgroup = property(node, &unit, "ControlGroup");
    assert_eq!(cgroup, format!("/berth.slice/{unit}"));
    let v2 = node_v2(node);
    let (memory_property, cpu_property) = if v2 {
        ("MemoryMax", "CPUWeight")
    } else {
        ("MemoryLimit", "CPUShares")
    };
    assert_eq!(
        property(node, &unit, memory_property),
        (256 * MIB).to_string()
    );
    // 150 ms of CPU per 100 ms period: 1.5 CPUs.
    assert_eq!(property(node, &unit, "CPUQuotaPerSecUSec"), "1.500000s");
    // kubelet's shares 512 is weight 20 on v2 (its conversion, as runc's).
    let cpu = property(node, &unit, cpu_property);
    assert_eq!(cpu, if v2 { "20" } else { "512" });
    // And systemd wrote them to the scope's own cgroup.
    let memory = cgroup_file(
        node,
        "memory",
        &cgroup,
        "memory.limit_in_bytes",
        "memory.max",
    );
    assert_eq!(memory, (256 * MIB).to_string());
    let quota = cgroup_file(node, "cpu", &cgroup, "cpu.cfs_quota_us", "cpu.max");
    assert!(quota == "150000" || quota == "150000 100000", "{quota}");
    let weight = cgroup_file(node, "cpu", &cgroup, "cpu.shares", "cpu.weight");
    assert_eq!(weight, if v2 { "20" } else { "512" });

    remove_pod(&d, &pod_id).await;
    wait_unit_gone(node, &unit).await;
    assert!(!cgroup_exists(node, &cgroup), "{cgroup} outlived its pod");
}

#[tokio::test]
async fn a_dropped_node_leaves_no_process_or_cgroup() {
    let d = node_daemon().await;
    // A pod with a running container, so that there is something to tear down.
    let (pod, pod_id, _) = kubelet_pod(&d, "sd-drop").await;
    start(&d, &pod_id, &pod, "sleeper", &["sleep", "3600"]).await;
    let name = d.node().name().to_owned();
    let nspawn = d.node().nspawn_pid();
    let init = std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children"))
        .expect("nspawn's children");
    drop(d);
    let left: Vec<_> = berth_e2e::leaks::cgroup_roots()
        .into_iter()
        .map(|r| r.join(&name))
        .filter(|c| c.exists())
        .collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
    for pid in std::iter::once(nspawn.to_string()).chain(init.split_whitespace().map(String::from))
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "pid {pid} of the node still runs: {stat}"
        );
    }
}
