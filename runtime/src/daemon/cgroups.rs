//! The seam for cgroup placement, limits and usage: the runtime asks a [`CgroupManager`] where
//! a pod and its containers go, and the monitor writes each process into the files it returns
//! before the process runs any code of the container.
//!
//! Layout (cgroupfs driver, the containerd layout): the pod's cgroup is kubelet's
//! `cgroup_parent` (kubelet made it and sets the pod's limits on it), or, when kubelet sends
//! none, one Berth makes under its own parent and removes with the pod. Inside it the monitor
//! has a leaf named after the pod id and each container a leaf named after its id, so that on
//! cgroup v2 no cgroup holds processes and children at once.
//!
//! Layout (systemd driver, see [`systemd`]): the pod is a transient scope
//! `berth-<pod id>.scope` that systemd makes in kubelet's slice (or Berth's own) with
//! `Delegate=yes`; inside it the monitor's leaf is `monitor` and each container's its id.

pub mod bpf_devices;
pub mod convert;
pub mod dbus;
pub mod devices;
pub mod fs;
pub mod limits;
pub mod parse;
pub mod read;
pub mod systemd;

use std::path::PathBuf;

use k8s_cri::v1::LinuxContainerResources;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use read::{CgroupDirs, Wanted};

/// Where a pod's processes live, as the manager placed them; kept in the pod record so that
/// removal and stats never depend on the pod config being read the same way again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCgroup {
    /// The pod's cgroup: kubelet's parent or one Berth made. Driver-specific name; for
    /// cgroupfs a path relative to each hierarchy's root. Empty: no cgroups.
    pub pod: String,
    /// Berth made `pod` and removes it with the pod.
    pub owned: bool,
    /// The monitor's own cgroup inside `pod`.
    pub monitor: String,
}

/// A device rule of the container's device cgroup (v1 `devices.allow`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    /// `c`, `b` or `a`.
    pub kind: char,
    /// Major number; `None` is `*`.
    pub major: Option<u64>,
    /// Minor number; `None` is `*`.
    pub minor: Option<u64>,
    /// Any of `r`, `w`, `m`.
    pub access: String,
}

/// What a container's cgroup is created with.
#[derive(Debug, Clone, Default)]
pub struct ContainerLimits<'a> {
    /// kubelet's resources; `None` leaves the kernel defaults (and the node's pids limit).
    pub resources: Option<&'a LinuxContainerResources>,
    /// All devices allowed (privileged).
    pub all_devices: bool,
    /// Devices allowed besides the defaults every container gets.
    pub devices: Vec<DeviceRule>,
}

/// Usage figures of one cgroup (all its descendants included). `None`: not available on this
/// host (controller not mounted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// Cumulative CPU time, nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Memory charged, bytes (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub memory_usage: Option<u64>,
    /// Usage minus inactive file pages: what kubelet evicts on.
    pub working_set: Option<u64>,
    /// Anonymous memory (v1 `total_rss`, v2 `anon`).
    pub rss: Option<u64>,
    /// Page faults.
    pub page_faults: Option<u64>,
    /// Major page faults.
    pub major_page_faults: Option<u64>,
    /// The memory limit; `None` when unlimited.
    pub memory_limit: Option<u64>,
    /// Swap in use.
    pub swap_usage: Option<u64>,
    /// Processes (v1/v2 `pids.current`).
    pub processes: Option<u64>,
    /// Processes killed by the OOM killer in this cgroup.
    pub oom_kills: u64,
}

/// Places pods and containers in cgroups, applies their limits and reads their usage.
/// Names (`PodCgroup` fields, container cgroups) are the driver's own; the runtime keeps them
/// opaque.
pub trait CgroupManager: Send + Sync {
    /// Where a pod goes, from kubelet's `cgroup_parent` (may be empty); validates it.
    fn place_pod(&self, pod_id: &str, parent: &str) -> Result<PodCgroup>;
    /// Creates the pod's cgroups; `resources` (pod-level resources or overhead) apply to a
    /// pod cgroup Berth owns. Returns the files the monitor writes itself into.
    fn create_pod(
        &self,
        pod: &PodCgroup,
        resources: Option<&LinuxContainerResources>,
    ) -> Result<Vec<PathBuf>>;
    /// Called with the monitor's pid once it runs, before any container is made: drivers
    /// that cannot place a process before it exists (systemd scopes) place it now.
    fn attach_monitor(&self, pod: &PodCgroup, pid: i32) -> Result<()>;
    /// The cgroup of a container of `pod`.
    fn container_cgroup(&self, pod: &PodCgroup, container_id: &str) -> String;
    /// Creates a container's cgroup with its limits; returns the files its processes (and
    /// exec processes) join.
    fn create_container(&self, cgroup: &str, limits: &ContainerLimits<'_>) -> Result<Vec<PathBuf>>;
    /// Applies new limits to a live container.
    fn update_container(&self, cgroup: &str, resources: &LinuxContainerResources) -> Result<()>;
    /// Removes a container's (or the monitor's) cgroup, killing what is left in it;
    /// succeeds when it is already gone.
    fn remove(&self, cgroup: &str) -> Result<()>;
    /// Removes the pod's cgroups (the monitor's, and the pod's own when Berth made it).
    fn remove_pod(&self, pod: &PodCgroup) -> Result<()>;
    /// Opens the directories a cgroup's usage is read from; the caller keeps them as long
    /// as the cgroup's pod or container lives. Drivers without cgroups open none.
    fn usage_dirs(&self, _cgroup: &str) -> CgroupDirs {
        CgroupDirs::default()
    }
    /// Usage of a cgroup, every figure, read once (callers that read a cgroup again and
    /// again keep its [`CgroupManager::usage_dirs`] instead).
    fn usage(&self, cgroup: &str) -> CgroupUsage {
        self.usage_dirs(cgroup).usage(Wanted::ALL, &mut Vec::new())
    }
    /// At start-up, after the records are reconciled: removes the cgroups no record names
    /// (a crash between removing a cgroup and its record, or a removal that failed) among
    /// those Berth can enumerate: children of its own parent, and leaves inside each known
    /// pod's cgroup. `pods` pairs each pod with the cgroups its monitor and containers use.
    /// Returns how many were removed.
    fn prune(&self, _pods: &[(PodCgroup, Vec<String>)]) -> usize {
        0
    }
}

/// Leaves every process in the daemon's own cgroup.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCgroups;

impl CgroupManager for NoCgroups {
    fn place_pod(&self, _pod_id: &str, _parent: &str) -> Result<PodCgroup> {
        Ok(PodCgroup::default())
    }
    fn create_pod(
        &self,
        _pod: &PodCgroup,
        _r: Option<&LinuxContainerResources>,
    ) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
    fn attach_monitor(&self, _pod: &PodCgroup, _pid: i32) -> Result<()> {
        Ok(())
    }
    fn container_cgroup(&self, _pod: &PodCgroup, _container_id: &str) -> String {
        String::new()
    }
    fn create_container(&self, _c: &str, _l: &ContainerLimits<'_>) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
    fn update_container(&self, _c: &str, _r: &LinuxContainerResources) -> Result<()> {
        Ok(())
    }
    fn remove(&self, _cgroup: &str) -> Result<()> {
        Ok(())
    }
    fn remove_pod(&self, _pod: &PodCgroup) -> Result<()> {
        Ok(())
    }
}

/// Creates container `container_id`'s cgroup of `pod` in a fake cgroup tree with
/// `resources`; returns its cgroup and the files its processes join. A device filter cannot
/// be attached to a fake tree (the end-to-end tests cover it), so all devices are allowed.
#[cfg(test)]
pub(crate) fn create_in_fake_tree(
    m: &dyn CgroupManager,
    pod: &PodCgroup,
    container_id: &str,
    resources: &LinuxContainerResources,
) -> (String, Vec<PathBuf>) {
    let c = m.container_cgroup(pod, container_id);
    let limits = ContainerLimits {
        resources: Some(resources),
        all_devices: true,
        ..Default::default()
    };
    let procs = m.create_container(&c, &limits).unwrap();
    (c, procs)
}
