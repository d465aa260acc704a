//! The systemd driver, in the "delegated scope" model systemd documents for container
//! managers: each pod is a transient scope `berth-<pod id>.scope` that systemd starts in the
//! pod's slice with the monitor's pid and `Delegate=yes`; below the scope the tree is
//! Berth's, and Berth manages it through cgroupfs exactly as the cgroupfs driver does.
//!
//! Inside the scope the monitor has the leaf `monitor` and each container a leaf named after
//! its id, so that on v2 the scope itself holds no process and can pass controllers down.
//! systemd owns the slices and the scope's own attributes; Berth never writes them (except
//! `subtree_control` of ancestors, to enable controllers systemd does not manage, such as
//! hugetlb, as runc does).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_cri::v1::LinuxContainerResources;

use super::convert::{shares_to_weight, systemd_slice};
use super::dbus::{BusError, Connection, Value};
use super::fs::{CgroupFs, Hierarchy};
use super::parse::{CgroupMount, cgroup_mounts};
use super::{CgroupManager, ContainerLimits, PodCgroup};
use crate::error::{Error, Result};

/// systemd's own socket: a direct connection to the manager, root only, no bus needed.
pub const SYSTEMD_PRIVATE_SOCKET: &str = "/run/systemd/private";
/// The system bus, when systemd's own socket cannot be reached.
pub const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";

const SYSTEMD: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

/// How long a single D-Bus read or write may take.
const BUS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long systemd may take to move the monitor into its new scope: StartTransientUnit
/// answers once the start job is queued, not when it has run.
const SCOPE_WAIT: Duration = Duration::from_secs(2);

/// A socket where systemd's manager answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusAddress {
    /// The unix socket.
    pub path: PathBuf,
    /// A message bus (which wants `Hello` first), rather than systemd itself.
    pub bus: bool,
}

impl BusAddress {
    /// systemd's private socket, then the system bus.
    pub fn defaults() -> Vec<BusAddress> {
        vec![
            BusAddress {
                path: SYSTEMD_PRIVATE_SOCKET.into(),
                bus: false,
            },
            BusAddress {
                path: SYSTEM_BUS_SOCKET.into(),
                bus: true,
            },
        ]
    }
}

/// The systemd driver.
#[derive(Debug)]
pub struct Systemd {
    /// The tree below each scope, and the scope's usage.
    fs: CgroupFs,
    /// Where pods without a kubelet parent go.
    slice: String,
    /// Tried in order; the first that accepts a connection is used.
    buses: Vec<BusAddress>,
    /// How long to wait for the monitor to show in its scope.
    scope_wait: Duration,
    /// Scope properties from pod resources, by pod cgroup, between `create_pod` and
    /// `attach_monitor` (the scope cannot exist before its first process).
    pending: Mutex<HashMap<String, Vec<Value>>>,
}

impl Systemd {
    /// The driver for this host's mounts and systemd. `slice` holds pods kubelet gives no
    /// parent; `pids_limit` (0: none) bounds each container's processes unless kubelet says
    /// otherwise.
    pub fn detect(slice: &str, pids_limit: i64) -> Result<Self> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
        Self::new(
            &cgroup_mounts(&text),
            slice,
            pids_limit,
            BusAddress::defaults(),
        )
    }

    /// The driver over the given mounts and sockets (tests pass a fake tree and bus).
    pub fn new(
        mounts: &[CgroupMount],
        slice: &str,
        pids_limit: i64,
        buses: Vec<BusAddress>,
    ) -> Result<Self> {
        systemd_slice(slice)
            .map_err(|e| Error::InvalidArgument(format!("the default cgroup parent: {e}")))?;
        // The cgroupfs driver's own parent is never used: pods are placed here.
        let fs = CgroupFs::from_mounts(mounts, slice, pids_limit)?;
        Ok(Systemd {
            fs,
            slice: slice.to_owned(),
            buses,
            scope_wait: SCOPE_WAIT,
            pending: Mutex::default(),
        })
    }

    /// The hierarchies processes are placed in.
    pub fn hierarchies(&self) -> &[Hierarchy] {
        self.fs.hierarchies()
    }

    /// Whether any of the sockets exists (a node without systemd has none); only a hint for
    /// the operator at start, the calls themselves report what failed.
    pub fn bus_present(&self) -> bool {
        self.buses.iter().any(|b| b.path.exists())
    }

    /// The resource properties `create_pod` kept for a pod, forgotten here.
    fn take_pending(&self, pod: &str) -> Vec<Value> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.remove(pod).unwrap_or_default()
    }

    /// Calls a method of systemd's manager over the first socket that connects.
    fn manager_call(&self, member: &str, args: Vec<Value>) -> Result<Vec<Value>, BusError> {
        let mut unreachable = None;
        for b in &self.buses {
            match Connection::open(&b.path, b.bus, BUS_TIMEOUT) {
                Ok(mut conn) => return conn.call(SYSTEMD, MANAGER_PATH, MANAGER, member, args),
                Err(e @ BusError::Connect { .. }) => unreachable = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(unreachable.unwrap_or_else(|| BusError::Connect {
            path: PathBuf::new(),
            source: std::io::ErrorKind::NotFound.into(),
        }))
    }

    /// The hierarchy systemd tracks units in: the unified one (v2 or hybrid), else a v1
    /// hierarchy whose controller a delegated unit always gets.
    fn tracking_hierarchy(&self) -> Option<&Hierarchy> {
        let h = self.fs.hierarchies();
        h.iter().find(|h| h.v2).or_else(|| {
            ["memory", "pids", "cpu"].iter().find_map(|c| {
                h.iter()
                    .find(|h| h.controllers.iter().any(|have| have == c))
            })
        })
    }

    /// Waits until systemd has put `pid` in the scope's cgroup.
    fn wait_for_scope(&self, scope: &str, unit: &str, pid: i32) -> Result<()> {
        let Some(h) = self.tracking_hierarchy() else {
            return Ok(());
        };
        let procs = h
            .mount
            .join(scope.trim_start_matches('/'))
            .join("cgroup.procs");
        let deadline = Instant::now() + self.scope_wait;
        loop {
            let text = std::fs::read_to_string(&procs).unwrap_or_default();
            if text.lines().any(|l| l.trim().parse() == Ok(pid)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Internal(format!(
                    "systemd accepted {unit}, but the pod monitor (pid {pid}) was not in {} \
                     after {:?}",
                    procs.display(),
                    self.scope_wait
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The cgroups Berth made inside a scope (monitor and container leaves), in any
    /// hierarchy.
    fn leaves(&self, scope: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for h in self.fs.hierarchies() {
            let dir = h.mount.join(scope.trim_start_matches('/'));
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(format!("{scope}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The scope unit of a pod's cgroup and the slice it is in: `/a.slice/a-b.slice/x.scope`
/// is `x.scope` in `a-b.slice`; a scope at the root is in `-.slice`.
fn scope_unit(pod: &str) -> Option<(&str, &str)> {
    let (parent, unit) = pod.rsplit_once('/')?;
    if !unit.ends_with(".scope") {
        return None;
    }
    let slice = parent.rsplit('/').next().filter(|s| !s.is_empty());
    Some((unit, slice.unwrap_or("-.slice")))
}

/// One `(sv)` unit property.
fn prop(name: &str, v: Value) -> Value {
    Value::Struct(vec![Value::str(name), Value::variant(v)])
}

/// Unit properties for pod-level resources: memory and CPU, the limits systemd sets on a
/// scope itself (its own cgroup files are systemd's, not Berth's). `v1` says whether a
/// controller is on cgroup v1, where systemd takes the legacy properties.
fn resource_properties(
    r: &LinuxContainerResources,
    v1: impl Fn(&str) -> bool,
) -> Result<Vec<Value>> {
    if r.cpu_period < 0 || r.cpu_shares < 0 || r.memory_limit_in_bytes < 0 {
        return Err(Error::InvalidArgument(
            "pod resources: negative cpu_period, cpu_shares or memory_limit_in_bytes".into(),
        ));
    }
    let mut out = Vec::new();
    if r.memory_limit_in_bytes > 0 {
        let name = if v1("memory") {
            "MemoryLimit"
        } else {
            "MemoryMax"
        };
        out.push(prop(name, Value::U64(r.memory_limit_in_bytes as u64)));
    }
    if r.cpu_shares > 0 {
        let shares = r.cpu_shares as u64;
        out.push(if v1("cpu") {
            prop("CPUShares", Value::U64(shares))
        } else {
            prop("CPUWeight", Value::U64(shares_to_weight(shares)))
        });
    }
    if r.cpu_quota > 0 {
        let period = if r.cpu_period > 0 {
            r.cpu_period as u64
        } else {
            100_000
        };
        // systemd keeps the quota in 1% steps (10 ms per second): round up, as runc does,
        // so that the pod never gets less than it asked for.
        let per_sec = (r.cpu_quota as u64).saturating_mul(1_000_000) / period;
        let per_sec = per_sec.div_ceil(10_000).saturating_mul(10_000);
        out.push(prop("CPUQuotaPerSecUSec", Value::U64(per_sec)));
        // Only when it differs from systemd's default: older systemd (< 242) lacks it.
        if period != 100_000 {
            out.push(prop("CPUQuotaPeriodUSec", Value::U64(period)));
        }
    }
    Ok(out)
}

/// The slice path a pod's scope is in (`/a.slice/a-b.slice`; `/` at the root).
fn pod_slice(pod: &str) -> Option<&str> {
    let (parent, _) = pod.rsplit_once('/')?;
    Some(if parent.is_empty() { "/" } else { parent })
}

/// StartTransientUnit's properties (`a(sv)`) for a pod's scope holding `pid`, with `extra`
/// (resource properties) after the scope's own.
fn scope_properties(unit: &str, slice: &str, pid: u32, extra: Vec<Value>) -> Value {
    let pod_id = unit
        .strip_prefix("berth-")
        .and_then(|u| u.strip_suffix(".scope"))
        .unwrap_or(unit);
    Value::Array(
        "(sv)".into(),
        [
            prop("Description", Value::str(format!("Berth pod {pod_id}"))),
            prop("Slice", Value::str(slice)),
            prop("PIDs", Value::Array("u".into(), vec![Value::U32(pid)])),
            // The tree below the scope is Berth's: systemd neither moves its processes nor
            // resets its controllers.
            prop("Delegate", Value::Bool(true)),
            // No ordering on shutdown.target and friends: the pod lives as long as its
            // processes, whatever systemd is doing.
            prop("DefaultDependencies", Value::Bool(false)),
            // A scope that failed is collected too, so its name can never block a restart.
            prop("CollectMode", Value::str("inactive-or-failed")),
        ]
        .into_iter()
        .chain(extra)
        .collect(),
    )
}

impl CgroupManager for Systemd {
    fn place_pod(&self, pod_id: &str, parent: &str) -> Result<PodCgroup> {
        let slice = if parent.is_empty() {
            self.slice.as_str()
        } else {
            parent
        };
        if !slice.ends_with(".slice") {
            return Err(Error::InvalidArgument(format!(
                "cgroup parent {parent:?} is not a systemd slice, but Berth's cgroup driver is \
                 systemd: set [cgroup] driver = \"cgroupfs\" to match kubelet's cgroupDriver"
            )));
        }
        let path = systemd_slice(slice).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let pod = format!("/{}", path.join(format!("berth-{pod_id}.scope")).display());
        Ok(PodCgroup {
            monitor: format!("{pod}/monitor"),
            pod,
            owned: true,
        })
    }

    /// Nothing can be made yet: a scope needs a process. The monitor starts in the daemon's
    /// cgroup and [`CgroupManager::attach_monitor`] moves it. Pod resources apply, as with
    /// cgroupfs, only to pods in Berth's own slice: kubelet limits its pod slices itself.
    fn create_pod(
        &self,
        pod: &PodCgroup,
        resources: Option<&LinuxContainerResources>,
    ) -> Result<Vec<PathBuf>> {
        let own = systemd_slice(&self.slice)
            .is_ok_and(|p| Some(format!("/{}", p.display()).as_str()) == pod_slice(&pod.pod));
        let props = match resources {
            Some(r) if own => resource_properties(r, |c| {
                self.fs
                    .hierarchies()
                    .iter()
                    .any(|h| !h.v2 && h.controllers.iter().any(|have| have == c))
            })?,
            _ => Vec::new(),
        };
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if props.is_empty() {
            pending.remove(&pod.pod);
        } else {
            pending.insert(pod.pod.clone(), props);
        }
        Ok(Vec::new())
    }

    fn attach_monitor(&self, pod: &PodCgroup, pid: i32) -> Result<()> {
        if pod.pod.is_empty() {
            return Ok(());
        }
        let (unit, slice) = scope_unit(&pod.pod).ok_or_else(|| {
            Error::Internal(format!("pod cgroup {} is not a systemd scope", pod.pod))
        })?;
        let pid_u32 =
            u32::try_from(pid).map_err(|_| Error::Internal(format!("monitor pid {pid}")))?;
        let args = vec![
            Value::str(unit),
            Value::str("fail"),
            scope_properties(unit, slice, pid_u32, self.take_pending(&pod.pod)),
            Value::Array("(sa(sv))".into(), Vec::new()),
        ];
        self.manager_call("StartTransientUnit", args)
            .map_err(|e| Error::Systemd(format!("start {unit} in {slice}"), e))?;
        self.wait_for_scope(&pod.pod, unit, pid)?;
        // Out of the scope's root into its leaf; only then may the scope pass controllers
        // down (v2: no processes in a cgroup whose children use domain controllers).
        self.fs.make_levels(&pod.monitor, None)?;
        for file in self.fs.procs_files(&pod.monitor) {
            // Another process, moved whole: `cgroup.procs` on every version.
            let file = file.with_file_name("cgroup.procs");
            std::fs::write(&file, pid.to_string()).map_err(|e| Error::io("write", &file, e))?;
        }
        self.fs.make(&pod.monitor, &[])
    }

    fn container_cgroup(&self, pod: &PodCgroup, container_id: &str) -> String {
        if pod.pod.is_empty() {
            return String::new();
        }
        format!("{}/{container_id}", pod.pod)
    }

    fn create_container(&self, cgroup: &str, limits: &ContainerLimits<'_>) -> Result<Vec<PathBuf>> {
        self.fs.create_container(cgroup, limits)
    }

    fn update_container(&self, cgroup: &str, resources: &LinuxContainerResources) -> Result<()> {
        self.fs.update_container(cgroup, resources)
    }

    fn remove(&self, cgroup: &str) -> Result<()> {
        self.fs.remove(cgroup)
    }

    fn remove_pod(&self, pod: &PodCgroup) -> Result<()> {
        if pod.pod.is_empty() {
            return Ok(());
        }
        self.take_pending(&pod.pod);
        let Some((unit, _)) = scope_unit(&pod.pod) else {
            // A pod placed by the cgroupfs driver before the driver was changed.
            return self.fs.remove_pod(pod);
        };
        // The leaves first (killing what is left in them), so that stopping the scope finds
        // it empty.
        for leaf in self.leaves(&pod.pod) {
            self.fs.remove(&leaf)?;
        }
        match self.manager_call("StopUnit", vec![Value::str(unit), Value::str("replace")]) {
            Ok(_) => {}
            // Gone already: the scope emptied and was collected, or never started.
            Err(e) if e.is_remote(NO_SUCH_UNIT) => {}
            Err(e) => return Err(Error::Systemd(format!("stop {unit}"), e)),
        }
        // systemd removes the scope where it manages it; v1 hierarchies it does not manage
        // (hugetlb, net_cls, ...) keep the directories Berth made.
        self.fs.remove(&pod.pod)
    }

    fn usage_dirs(&self, cgroup: &str) -> super::read::CgroupDirs {
        self.fs.usage_dirs(cgroup)
    }
}

#[cfg(test)]
mod tests;
