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
use super::{CgroupManager, CgroupUsage, ContainerLimits, PodCgroup};
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

    fn usage(&self, cgroup: &str) -> CgroupUsage {
        self.fs.usage(cgroup)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use super::super::dbus::{Message, fake};
    use super::*;

    /// A fake host: a v2 root holding cpu memory pids io cpuset hugetlb.
    fn fake_v2(dir: &Path) -> Vec<CgroupMount> {
        let root = dir.join("unified");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma\n",
        )
        .unwrap();
        vec![CgroupMount {
            mount_point: root.display().to_string(),
            v2: true,
            controllers: vec![],
        }]
    }

    /// The value of property `name` in a StartTransientUnit call.
    fn property<'a>(call: &'a Message, name: &str) -> Option<&'a Value> {
        let Some(Value::Array(_, props)) = call.body.get(2) else {
            return None;
        };
        props.iter().find_map(|p| match p {
            Value::Struct(f) if f[0] == Value::str(name) => match &f[1] {
                Value::Variant(v) => Some(&**v),
                _ => None,
            },
            _ => None,
        })
    }

    /// A fake systemd over the fake tree at `root`: StartTransientUnit makes the scope in
    /// its slice with the pids, as systemd does; StopUnit of a unit it never started is
    /// NoSuchUnit; units named `denied-*` are refused.
    fn fake_systemd(socket: &Path, root: &Path, place: bool) -> Arc<Mutex<Vec<Message>>> {
        fake_systemd_over(socket, &[root.to_owned()], place)
    }

    /// [`fake_systemd`] over several hierarchies (systemd realizes a delegated unit in the
    /// unified one and in each v1 hierarchy of a controller it manages).
    fn fake_systemd_over(
        socket: &Path,
        roots: &[PathBuf],
        place: bool,
    ) -> Arc<Mutex<Vec<Message>>> {
        let roots = roots.to_vec();
        let started = Mutex::new(Vec::<String>::new());
        fake::serve(socket, move |call| {
            let unit = call.body.first().and_then(Value::as_str).unwrap_or("");
            match call.member.as_deref() {
                Some("StartTransientUnit") => {
                    if unit.contains("denied") {
                        return Err((
                            "org.freedesktop.DBus.Error.AccessDenied".into(),
                            "Access denied".into(),
                        ));
                    }
                    let slice = property(call, "Slice").and_then(Value::as_str).unwrap();
                    for root in roots.iter().filter(|_| place) {
                        let dir = root.join(systemd_slice(slice).unwrap()).join(unit);
                        std::fs::create_dir_all(&dir).unwrap();
                        let Some(Value::Array(_, pids)) = property(call, "PIDs") else {
                            panic!("no PIDs")
                        };
                        let Value::U32(pid) = pids[0] else { panic!() };
                        std::fs::write(dir.join("cgroup.procs"), format!("{pid}\n")).unwrap();
                    }
                    started.lock().unwrap().push(unit.to_owned());
                    Ok(vec![Value::ObjectPath(
                        "/org/freedesktop/systemd1/job/7".into(),
                    )])
                }
                Some("StopUnit") if started.lock().unwrap().iter().any(|u| u == unit) => {
                    Ok(vec![Value::ObjectPath(
                        "/org/freedesktop/systemd1/job/8".into(),
                    )])
                }
                Some("StopUnit") => Err((NO_SUCH_UNIT.into(), format!("Unit {unit} not loaded."))),
                _ => Err((
                    "org.freedesktop.DBus.Error.UnknownMethod".into(),
                    "no".into(),
                )),
            }
        })
    }

    fn private(path: PathBuf) -> Vec<BusAddress> {
        vec![BusAddress { path, bus: false }]
    }

    /// Removes the regular files of a fake tree: on cgroupfs they vanish with their
    /// directory, on a tmpfs they would keep rmdir from succeeding.
    fn strip_files(dir: &Path) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                strip_files(&e.path());
            } else {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    }

    #[test]
    fn pods_are_scopes_in_kubelets_slice_or_berths_own() {
        let t = tempfile::tempdir().unwrap();
        let sd = Systemd::new(&fake_v2(t.path()), "berth.slice", 0, Vec::new()).unwrap();
        let p = sd
            .place_pod("abc", "kubepods-burstable-pod12.slice")
            .unwrap();
        let scope = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice/\
                     berth-abc.scope";
        assert_eq!(
            p,
            PodCgroup {
                pod: scope.into(),
                owned: true,
                monitor: format!("{scope}/monitor"),
            }
        );
        assert_eq!(sd.container_cgroup(&p, "c1"), format!("{scope}/c1"));
        assert_eq!(
            scope_unit(&p.pod),
            Some(("berth-abc.scope", "kubepods-burstable-pod12.slice"))
        );
        let own = sd.place_pod("abc", "").unwrap();
        assert_eq!(own.pod, "/berth.slice/berth-abc.scope");
        assert_eq!(
            scope_unit("/berth-x.scope"),
            Some(("berth-x.scope", "-.slice"))
        );
        let e = sd.place_pod("abc", "/kubepods/burstable/pod1").unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        assert!(e.to_string().contains("driver = \"cgroupfs\""), "{e}");
        assert!(matches!(
            sd.place_pod("abc", "a--b.slice"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(Systemd::new(&fake_v2(t.path()), "/berth", 0, Vec::new()).is_err());
    }

    #[test]
    fn a_pod_is_a_delegated_scope_with_its_monitor_in_a_leaf() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("unified");
        let mounts = fake_v2(t.path());
        let calls = fake_systemd(&t.path().join("private"), &root, true);
        let sd =
            Systemd::new(&mounts, "berth.slice", 0, private(t.path().join("private"))).unwrap();
        let pod = sd.place_pod("p1", "kubepods-pod12.slice").unwrap();
        assert!(sd.create_pod(&pod, None).unwrap().is_empty());
        sd.attach_monitor(&pod, 4242).unwrap();

        let call = calls.lock().unwrap()[0].clone();
        assert_eq!(call.member.as_deref(), Some("StartTransientUnit"));
        assert_eq!(call.interface.as_deref(), Some(MANAGER));
        assert_eq!(call.destination.as_deref(), Some(SYSTEMD));
        assert_eq!(call.signature(), "ssa(sv)a(sa(sv))");
        assert_eq!(call.body[0], Value::str("berth-p1.scope"));
        assert_eq!(call.body[1], Value::str("fail"));
        assert_eq!(
            property(&call, "Slice"),
            Some(&Value::str("kubepods-pod12.slice"))
        );
        assert_eq!(
            property(&call, "PIDs"),
            Some(&Value::Array("u".into(), vec![Value::U32(4242)]))
        );
        assert_eq!(property(&call, "Delegate"), Some(&Value::Bool(true)));
        assert_eq!(
            property(&call, "DefaultDependencies"),
            Some(&Value::Bool(false))
        );
        assert_eq!(
            property(&call, "Description"),
            Some(&Value::str("Berth pod p1"))
        );
        assert_eq!(
            property(&call, "CollectMode"),
            Some(&Value::str("inactive-or-failed"))
        );

        let scope = root.join("kubepods.slice/kubepods-pod12.slice/berth-p1.scope");
        let read = |p: &str| std::fs::read_to_string(scope.join(p)).unwrap();
        assert_eq!(read("monitor/cgroup.procs"), "4242");
        // Controllers pass down from the scope only once the monitor left its root.
        assert_eq!(read("cgroup.subtree_control"), "+cpu +memory +pids +io");

        let r = LinuxContainerResources {
            memory_limit_in_bytes: 1 << 20,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        };
        let c = sd.container_cgroup(&pod, "c1");
        let procs = sd
            .create_container(
                &c,
                &ContainerLimits {
                    resources: Some(&r),
                    // A device filter cannot be attached to a fake tree (e2e covers it).
                    all_devices: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(procs, vec![scope.join("c1/cgroup.procs")]);
        assert_eq!(read("c1/memory.max"), "1048576");
        assert_eq!(read("c1/cpu.max"), "50000 100000");
        sd.update_container(
            &c,
            &LinuxContainerResources {
                memory_limit_in_bytes: 2 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(read("c1/memory.max"), "2097152");
        std::fs::write(scope.join("memory.current"), "8192\n").unwrap();
        assert_eq!(sd.usage(&pod.pod).memory_usage, Some(8192));

        strip_files(&scope);
        sd.remove_pod(&pod).unwrap();
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].member.as_deref(), Some("StopUnit"));
        assert_eq!(
            calls[1].body,
            vec![Value::str("berth-p1.scope"), Value::str("replace")]
        );
        assert!(!scope.exists(), "the scope and its leaves are gone");
        assert!(root.join("kubepods.slice/kubepods-pod12.slice").exists());
    }

    #[test]
    fn hybrid_hosts_get_the_monitor_and_limits_in_every_hierarchy() {
        let t = tempfile::tempdir().unwrap();
        let dir = |p: &str| t.path().join(p);
        for h in ["unified", "memory", "cpuset"] {
            std::fs::create_dir_all(dir(h)).unwrap();
        }
        std::fs::write(dir("unified/cgroup.controllers"), "").unwrap();
        std::fs::write(dir("cpuset/cpuset.cpus"), "0-3\n").unwrap();
        std::fs::write(dir("cpuset/cpuset.mems"), "0\n").unwrap();
        let v1 = |h: &str| CgroupMount {
            mount_point: dir(h).display().to_string(),
            v2: false,
            controllers: vec![h.to_owned()],
        };
        let mounts = vec![
            CgroupMount {
                mount_point: dir("unified").display().to_string(),
                v2: true,
                controllers: vec![],
            },
            v1("memory"),
            v1("cpuset"),
        ];
        // systemd manages memory on v1 but not cpuset: the scope appears in two of three.
        let calls = fake_systemd_over(&dir("private"), &[dir("unified"), dir("memory")], true);
        let sd = Systemd::new(&mounts, "berth.slice", 0, private(dir("private"))).unwrap();
        let pod = sd.place_pod("p1", "kubepods-pod1.slice").unwrap();
        sd.attach_monitor(&pod, 99).unwrap();
        assert_eq!(calls.lock().unwrap().len(), 1);
        let scope = "kubepods.slice/kubepods-pod1.slice/berth-p1.scope";
        let read = |p: String| std::fs::read_to_string(dir(&p)).unwrap();
        for h in ["unified", "memory", "cpuset"] {
            assert_eq!(
                read(format!("{h}/{scope}/monitor/cgroup.procs")),
                "99",
                "{h}"
            );
        }
        // Berth made the levels systemd did not, with the parent's CPUs and memory nodes.
        assert_eq!(read(format!("cpuset/{scope}/monitor/cpuset.cpus")), "0-3");
        assert_eq!(read(format!("cpuset/{scope}/cpuset.mems")), "0");
        // No controller on the unified hierarchy: nothing to pass down.
        assert!(!dir(&format!("unified/{scope}/cgroup.subtree_control")).exists());
        let r = LinuxContainerResources {
            memory_limit_in_bytes: 1 << 20,
            ..Default::default()
        };
        let c = sd.container_cgroup(&pod, "c1");
        let procs = sd
            .create_container(
                &c,
                &ContainerLimits {
                    resources: Some(&r),
                    // A device filter cannot be attached to a fake tree (e2e covers it).
                    all_devices: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(procs.len(), 3);
        assert_eq!(
            read(format!("memory/{scope}/c1/memory.limit_in_bytes")),
            "1048576"
        );
    }

    #[test]
    fn pod_resources_become_properties_of_scopes_in_berths_own_slice() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("unified");
        let mounts = fake_v2(t.path());
        let calls = fake_systemd(&t.path().join("private"), &root, true);
        let sd =
            Systemd::new(&mounts, "berth.slice", 0, private(t.path().join("private"))).unwrap();
        let r = LinuxContainerResources {
            memory_limit_in_bytes: 1 << 30,
            cpu_shares: 1024,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        };
        let own = sd.place_pod("p1", "").unwrap();
        sd.create_pod(&own, Some(&r)).unwrap();
        sd.attach_monitor(&own, 5).unwrap();
        let kubelets = sd.place_pod("p2", "kubepods-pod2.slice").unwrap();
        sd.create_pod(&kubelets, Some(&r)).unwrap();
        sd.attach_monitor(&kubelets, 6).unwrap();
        let calls = calls.lock().unwrap();
        assert_eq!(property(&calls[0], "MemoryMax"), Some(&Value::U64(1 << 30)));
        assert_eq!(property(&calls[0], "CPUWeight"), Some(&Value::U64(39)));
        assert_eq!(
            property(&calls[0], "CPUQuotaPerSecUSec"),
            Some(&Value::U64(500_000))
        );
        assert_eq!(property(&calls[0], "CPUQuotaPeriodUSec"), None);
        // kubelet limits its own pod slice: the scope in it gets nothing of its own.
        assert!(property(&calls[1], "PIDs").is_some());
        assert_eq!(property(&calls[1], "MemoryMax"), None);
        assert_eq!(property(&calls[1], "CPUWeight"), None);
        assert!(sd.pending.lock().unwrap().is_empty());
    }

    #[test]
    fn resource_properties_follow_the_controllers_version() {
        let r = LinuxContainerResources {
            memory_limit_in_bytes: 4096,
            cpu_shares: 512,
            cpu_quota: 33_333,
            cpu_period: 50_000,
            ..Default::default()
        };
        let names = |v1: bool| -> Vec<(String, Value)> {
            resource_properties(&r, |_| v1)
                .unwrap()
                .into_iter()
                .map(|p| match p {
                    Value::Struct(f) => match (&f[0], &f[1]) {
                        (Value::Str(n), Value::Variant(v)) => (n.clone(), (**v).clone()),
                        _ => panic!(),
                    },
                    _ => panic!(),
                })
                .collect()
        };
        let v1 = names(true);
        assert_eq!(v1[0], ("MemoryLimit".into(), Value::U64(4096)));
        assert_eq!(v1[1], ("CPUShares".into(), Value::U64(512)));
        // 33333 / 50000 of a CPU is 666660 us a second, rounded up to a whole percent.
        assert_eq!(v1[2], ("CPUQuotaPerSecUSec".into(), Value::U64(670_000)));
        assert_eq!(v1[3], ("CPUQuotaPeriodUSec".into(), Value::U64(50_000)));
        let v2 = names(false);
        assert_eq!(v2[0].0, "MemoryMax");
        assert_eq!(
            v2[1],
            ("CPUWeight".into(), Value::U64(shares_to_weight(512)))
        );
        let huge = LinuxContainerResources {
            cpu_quota: i64::MAX,
            cpu_period: 1,
            ..Default::default()
        };
        assert!(!resource_properties(&huge, |_| false).unwrap().is_empty());
        let bad = LinuxContainerResources {
            cpu_shares: -1,
            ..Default::default()
        };
        assert!(matches!(
            resource_properties(&bad, |_| false),
            Err(Error::InvalidArgument(_))
        ));
        assert!(
            resource_properties(&LinuxContainerResources::default(), |_| false)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_unit_systemd_no_longer_has_is_removed() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("unified");
        let mounts = fake_v2(t.path());
        let calls = fake_systemd(&t.path().join("private"), &root, true);
        let sd =
            Systemd::new(&mounts, "berth.slice", 0, private(t.path().join("private"))).unwrap();
        let pod = sd.place_pod("never", "").unwrap();
        sd.remove_pod(&pod).unwrap();
        assert_eq!(calls.lock().unwrap()[0].member.as_deref(), Some("StopUnit"));
        // A record of the cgroupfs driver is removed through cgroupfs, without systemd.
        std::fs::create_dir_all(root.join("berth/p2/p2")).unwrap();
        sd.remove_pod(&PodCgroup {
            pod: "/berth/p2".into(),
            owned: true,
            monitor: "/berth/p2/p2".into(),
        })
        .unwrap();
        assert!(!root.join("berth/p2").exists());
        assert_eq!(calls.lock().unwrap().len(), 1);
    }

    #[test]
    fn the_system_bus_is_the_fallback_and_gets_hello_first() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("unified");
        let mounts = fake_v2(t.path());
        let calls = fake_systemd(&t.path().join("bus"), &root, true);
        let buses = vec![
            BusAddress {
                path: t.path().join("missing"),
                bus: false,
            },
            BusAddress {
                path: t.path().join("bus"),
                bus: true,
            },
        ];
        let sd = Systemd::new(&mounts, "berth.slice", 0, buses).unwrap();
        let pod = sd.place_pod("p1", "").unwrap();
        sd.attach_monitor(&pod, 7).unwrap();
        let calls = calls.lock().unwrap();
        let members: Vec<_> = calls.iter().map(|c| c.member.clone().unwrap()).collect();
        assert_eq!(members, ["Hello", "StartTransientUnit"]);
        assert_eq!(
            calls[0].destination.as_deref(),
            Some("org.freedesktop.DBus")
        );
        assert_eq!(
            std::fs::read_to_string(root.join("berth.slice/berth-p1.scope/monitor/cgroup.procs"))
                .unwrap(),
            "7"
        );
    }

    #[test]
    fn failures_are_clear_errors() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("unified");
        let mounts = fake_v2(t.path());
        // No systemd at all.
        let sd = Systemd::new(&mounts, "berth.slice", 0, private(t.path().join("none"))).unwrap();
        let pod = sd.place_pod("p1", "").unwrap();
        let e = sd.attach_monitor(&pod, 7).unwrap_err();
        let m = e.full_message();
        assert!(
            m.starts_with("systemd: start berth-p1.scope in berth.slice: connect to d-bus socket"),
            "{m}"
        );
        assert!(m.contains("none"), "{m}");
        assert!(sd.remove_pod(&pod).is_err());

        // systemd refuses.
        fake_systemd(&t.path().join("private"), &root, true);
        let sd =
            Systemd::new(&mounts, "berth.slice", 0, private(t.path().join("private"))).unwrap();
        let pod = sd.place_pod("denied", "").unwrap();
        let m = sd.attach_monitor(&pod, 7).unwrap_err().full_message();
        assert_eq!(
            m,
            "systemd: start berth-denied.scope in berth.slice: \
             org.freedesktop.DBus.Error.AccessDenied: Access denied"
        );

        // systemd accepts, but the monitor never shows in the scope.
        fake_systemd(&t.path().join("lazy"), &root, false);
        let mut sd =
            Systemd::new(&mounts, "berth.slice", 0, private(t.path().join("lazy"))).unwrap();
        sd.scope_wait = Duration::from_millis(50);
        let pod = sd.place_pod("p3", "").unwrap();
        let m = sd.attach_monitor(&pod, 7).unwrap_err().to_string();
        assert!(m.contains("berth-p3.scope") && m.contains("pid 7"), "{m}");
    }
}
