//! The cgroupfs driver: cgroups are directories under each mounted hierarchy, on cgroup v1,
//! v2, or a hybrid of both. Where each controller lives is found per controller from
//! `/proc/self/mountinfo`, never assumed from one look at `/sys/fs/cgroup`.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1::LinuxContainerResources;

use super::convert::cgroupfs_parent;
use super::devices::{default_rules, v1_line};
use super::limits::{Version, Write, writes};
use super::parse::{CgroupMount, cgroup_mounts};
use super::read::{CgroupDirs, CpuSource, DirsBuilder};
use super::{CgroupManager, ContainerLimits, PodCgroup};
use crate::error::{Error, Result};

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Its mount point.
    pub mount: PathBuf,
    /// The unified (v2) hierarchy.
    pub v2: bool,
    /// Controllers it holds (v2: those in its root `cgroup.controllers`).
    pub controllers: Vec<String>,
}

/// Controllers enabled for every Berth cgroup on v2 when the hierarchy offers them; others
/// (cpuset, hugetlb, ...) only when a limit needs them.
const V2_BASELINE: [&str; 4] = ["cpu", "memory", "pids", "io"];

/// How many times a busy cgroup is emptied and retried before removal gives up.
const REMOVE_TRIES: u32 = 100;

/// The cgroupfs driver.
#[derive(Debug, Clone)]
pub struct CgroupFs {
    hierarchies: Vec<Hierarchy>,
    /// Where pods without a kubelet parent go (relative to each root).
    parent: PathBuf,
    /// The node's pids limit per container; 0: none.
    pids_limit: i64,
}

impl CgroupFs {
    /// The driver for this host's mounts. `parent` holds pods kubelet gives no parent;
    /// `pids_limit` (0: none) bounds each container's processes unless kubelet says otherwise.
    pub fn detect(parent: &str, pids_limit: i64) -> Result<Self> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
        Self::from_mounts(&cgroup_mounts(&text), parent, pids_limit)
    }

    /// The driver over the given mounts (tests pass a fake tree).
    pub fn from_mounts(mounts: &[CgroupMount], parent: &str, pids_limit: i64) -> Result<Self> {
        let parent = cgroupfs_parent(parent).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        if parent.as_os_str().is_empty() {
            return Err(Error::InvalidArgument(
                "the cgroup parent for pods must not be the root cgroup".into(),
            ));
        }
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        for m in mounts {
            let mount = PathBuf::from(&m.mount_point);
            if hierarchies.iter().any(|h| h.mount == mount) {
                continue;
            }
            let controllers: Vec<String> = if m.v2 {
                std::fs::read_to_string(mount.join("cgroup.controllers"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            } else {
                m.controllers
                    .iter()
                    .filter(|c| !c.starts_with("name="))
                    .cloned()
                    .collect()
            };
            // The same v1 hierarchy bind-mounted twice, or a named one (no controller).
            if !m.v2
                && (controllers.is_empty()
                    || hierarchies
                        .iter()
                        .any(|h| !h.v2 && h.controllers == controllers))
            {
                continue;
            }
            if m.v2 && hierarchies.iter().any(|h| h.v2) {
                continue;
            }
            hierarchies.push(Hierarchy {
                mount,
                v2: m.v2,
                controllers,
            });
        }
        Ok(CgroupFs {
            hierarchies,
            parent,
            pids_limit,
        })
    }

    /// The hierarchies processes are placed in.
    pub fn hierarchies(&self) -> &[Hierarchy] {
        &self.hierarchies
    }

    /// Where a controller lives: a v1 hierarchy of its own wins over the unified one.
    fn hierarchy_of(&self, controller: &str) -> Option<&Hierarchy> {
        let has = |h: &&Hierarchy| h.controllers.iter().any(|c| c == controller);
        self.hierarchies
            .iter()
            .filter(|h| !h.v2)
            .find(has)
            .or_else(|| self.hierarchies.iter().filter(|h| h.v2).find(has))
    }

    fn version_of(&self, controller: &str) -> Option<Version> {
        self.hierarchy_of(controller)
            .map(|h| if h.v2 { Version::V2 } else { Version::V1 })
    }

    fn dir(h: &Hierarchy, cgroup: &str) -> PathBuf {
        h.mount.join(cgroup.trim_start_matches('/'))
    }

    /// Makes `cgroup` in every hierarchy, readying each new level (cpuset values on v1,
    /// controllers delegated on v2). `extra_v2` are controllers needed beyond the baseline.
    pub(super) fn make(&self, cgroup: &str, extra_v2: &[&str]) -> Result<()> {
        self.make_levels(cgroup, Some(extra_v2))
    }

    /// [`CgroupFs::make`]; `None` delegates nothing on v2, for a parent that still holds a
    /// process (v2 refuses controllers in `subtree_control` of a cgroup with processes).
    pub(super) fn make_levels(&self, cgroup: &str, extra_v2: Option<&[&str]>) -> Result<()> {
        let rel = Path::new(cgroup.trim_start_matches('/'));
        for h in &self.hierarchies {
            let mut dir = h.mount.clone();
            let wanted: Vec<&str> = match extra_v2 {
                Some(extra) => V2_BASELINE
                    .iter()
                    .chain(extra)
                    .copied()
                    .filter(|c| h.controllers.iter().any(|have| have == c))
                    .collect(),
                None => Vec::new(),
            };
            for part in rel.components() {
                if h.v2 && !wanted.is_empty() {
                    delegate(&dir, &wanted)?;
                }
                let parent = dir.clone();
                dir.push(part);
                match std::fs::create_dir(&dir) {
                    // cgroupfs applies the umask: the daemon's 077 would hide a container's
                    // own cgroup (its limits) from its non-root users.
                    Ok(()) => {
                        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                            .map_err(|e| Error::io("chmod cgroup", &dir, e))?
                    }
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::io("create cgroup", &dir, e)),
                }
                // Also for a level that exists: another pod's call may have made it and not
                // filled it in yet (a child of an empty cpuset cannot hold processes).
                if !h.v2 && h.controllers.iter().any(|c| c == "cpuset") {
                    inherit_cpuset(&parent, &dir)?;
                }
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` file of `cgroup` in every hierarchy.
    /// The files a process writes `0` into to join `cgroup`. On v1 that is `tasks`, which
    /// moves the writing thread only: every joiner (the monitor at its start, a container
    /// or exec child before it runs its program) is single-threaded then, so the whole
    /// process moves, and the kernel skips the global lock `cgroup.procs` takes (its first
    /// taker waits for an RCU grace period: ~20 ms here, on every pod start).
    pub(super) fn procs_files(&self, cgroup: &str) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| {
                let file = if h.v2 { "cgroup.procs" } else { "tasks" };
                Self::dir(h, cgroup).join(file)
            })
            .collect()
    }

    fn apply(&self, cgroup: &str, mut list: Vec<Write>) -> Result<()> {
        order_memory_writes(&mut list, |file| {
            self.hierarchy_of("memory")
                .and_then(|h| std::fs::read_to_string(Self::dir(h, cgroup).join(file)).ok())
                .and_then(|v| v.trim().parse().ok())
        });
        for w in list {
            let Some(h) = self.hierarchy_of(&w.controller) else {
                continue;
            };
            let path = Self::dir(h, cgroup).join(&w.file);
            write_file(&path, &w.value)?;
        }
        Ok(())
    }

    fn limits(&self, r: &LinuxContainerResources, pids: i64) -> Result<Vec<Write>> {
        writes(r, pids, |c| self.version_of(c)).map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    fn v2_controllers(list: &[Write]) -> Vec<&str> {
        let mut out: Vec<&str> = list.iter().map(|w| w.controller.as_str()).collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl CgroupManager for CgroupFs {
    fn place_pod(&self, pod_id: &str, parent: &str) -> Result<PodCgroup> {
        if parent.ends_with(".slice") {
            return Err(Error::InvalidArgument(format!(
                "cgroup parent {parent:?} is a systemd slice, but Berth's cgroup driver is \
                 cgroupfs: set [cgroup] driver = \"systemd\" to match kubelet's cgroupDriver"
            )));
        }
        let kubelet = cgroupfs_parent(parent).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let (pod, owned) = if kubelet.as_os_str().is_empty() {
            (self.parent.join(pod_id), true)
        } else {
            (kubelet, false)
        };
        let pod = format!("/{}", pod.display());
        Ok(PodCgroup {
            monitor: format!("{pod}/{pod_id}"),
            pod,
            owned,
        })
    }

    fn create_pod(
        &self,
        pod: &PodCgroup,
        resources: Option<&LinuxContainerResources>,
    ) -> Result<Vec<PathBuf>> {
        let list = match resources {
            Some(r) if pod.owned => self.limits(r, 0)?,
            _ => Vec::new(),
        };
        let result = self
            .make(&pod.monitor, &Self::v2_controllers(&list))
            .and_then(|()| self.apply(&pod.pod, list));
        if let Err(e) = result {
            let _ = self.remove_pod(pod);
            return Err(e);
        }
        Ok(self.procs_files(&pod.monitor))
    }

    fn attach_monitor(&self, _pod: &PodCgroup, _pid: i32) -> Result<()> {
        // The monitor wrote itself into the files create_pod returned.
        Ok(())
    }

    fn container_cgroup(&self, pod: &PodCgroup, container_id: &str) -> String {
        format!("{}/{container_id}", pod.pod)
    }

    fn create_container(&self, cgroup: &str, limits: &ContainerLimits<'_>) -> Result<Vec<PathBuf>> {
        let default = LinuxContainerResources::default();
        let list = self.limits(limits.resources.unwrap_or(&default), self.pids_limit)?;
        let result = self
            .make(cgroup, &Self::v2_controllers(&list))
            .and_then(|()| self.apply(cgroup, list))
            .and_then(|()| self.restrict_devices(cgroup, limits));
        if let Err(e) = result {
            let _ = self.remove(cgroup);
            return Err(e);
        }
        Ok(self.procs_files(cgroup))
    }

    fn update_container(&self, cgroup: &str, r: &LinuxContainerResources) -> Result<()> {
        let list = self.limits(r, 0)?;
        for h in &self.hierarchies {
            if !Self::dir(h, cgroup).is_dir() {
                return Err(Error::FailedPrecondition(format!(
                    "cgroup {cgroup} is gone: the container is not running"
                )));
            }
        }
        self.make(cgroup, &Self::v2_controllers(&list))?;
        self.apply(cgroup, list)
    }

    fn remove(&self, cgroup: &str) -> Result<()> {
        if cgroup.is_empty() {
            return Ok(());
        }
        for h in &self.hierarchies {
            remove_tree(&Self::dir(h, cgroup))?;
        }
        Ok(())
    }

    fn remove_pod(&self, pod: &PodCgroup) -> Result<()> {
        self.remove(&pod.monitor)?;
        if pod.owned {
            self.remove(&pod.pod)?;
        }
        Ok(())
    }

    fn prune(&self, pods: &[(PodCgroup, Vec<String>)]) -> usize {
        let mut removed = 0;
        let mut remove = |dir: &Path| match remove_tree(dir) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(error = %e.full_message(), "cannot remove an orphaned cgroup"),
        };
        for h in &self.hierarchies {
            let own = h.mount.join(&self.parent);
            for pod in child_dirs(&own) {
                let known = pods.iter().any(|(p, _)| {
                    p.owned && Path::new(p.pod.trim_start_matches('/')) == self.parent.join(&pod)
                });
                if !known {
                    remove(&own.join(&pod));
                }
            }
            for (pod, keep) in pods {
                if pod.pod.is_empty() {
                    continue;
                }
                let dir = Self::dir(h, &pod.pod);
                for leaf in child_dirs(&dir) {
                    let name = format!("{}/{leaf}", pod.pod);
                    if name != pod.monitor && !keep.contains(&name) {
                        remove(&dir.join(&leaf));
                    }
                }
            }
        }
        removed
    }

    fn usage_dirs(&self, cgroup: &str) -> CgroupDirs {
        let mut b = DirsBuilder::new();
        match self.hierarchy_of("cpuacct") {
            Some(h) if !h.v2 => b.cpu(&Self::dir(h, cgroup), CpuSource::Cpuacct),
            _ => {
                if let Some(h) = self.hierarchies.iter().find(|h| h.v2) {
                    b.cpu(&Self::dir(h, cgroup), CpuSource::CpuStat);
                }
            }
        }
        if let Some(h) = self.hierarchy_of("pids") {
            b.pids(&Self::dir(h, cgroup));
        }
        if let Some(h) = self.hierarchy_of("memory") {
            let version = if h.v2 { Version::V2 } else { Version::V1 };
            b.memory(&Self::dir(h, cgroup), version);
        }
        b.build()
    }
}

impl CgroupFs {
    /// Deny every device, then allow the defaults and the container's own; privileged
    /// containers keep "allow all". v1: `devices.deny`/`devices.allow`. v2: an eBPF
    /// program on the container's cgroup. A hybrid host gets both; there the v2 program is
    /// a second guard, and failing to load it is only a warning.
    fn restrict_devices(&self, cgroup: &str, limits: &ContainerLimits<'_>) -> Result<()> {
        if limits.all_devices {
            if let Some(h) = self.hierarchy_of("devices").filter(|h| !h.v2) {
                write_file(&Self::dir(h, cgroup).join("devices.allow"), "a *:* rwm")?;
            }
            return Ok(());
        }
        let rules: Vec<_> = default_rules()
            .into_iter()
            .chain(limits.devices.iter().cloned())
            .collect();
        let v1 = self.hierarchy_of("devices").filter(|h| !h.v2);
        if let Some(h) = v1 {
            let dir = Self::dir(h, cgroup);
            write_file(&dir.join("devices.deny"), "a *:* rwm")?;
            for r in &rules {
                write_file(&dir.join("devices.allow"), &v1_line(r))?;
            }
        }
        if let Some(h) = self.hierarchies.iter().find(|h| h.v2) {
            let dir = Self::dir(h, cgroup);
            if let Err(e) = super::bpf_devices::attach(&dir, &rules) {
                if v1.is_none() {
                    return Err(Error::Sys(
                        format!("attach the device filter to {}", dir.display()),
                        e,
                    ));
                }
                tracing::warn!(cgroup, error = %e, "no v2 device filter; the v1 device cgroup applies");
            }
        }
        Ok(())
    }
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) | Some(libc::EINVAL) => Error::FailedPrecondition(format!(
            "cgroup refused {value:?} for {}: {e}",
            path.display()
        )),
        _ => Error::io("write", path, e),
    })
}

/// v1 keeps `memory.memsw.limit_in_bytes >= memory.limit_in_bytes` at every step: raising
/// the memory limit above the current memsw needs memsw written first.
fn order_memory_writes(list: &mut [Write], current: impl Fn(&str) -> Option<i64>) {
    let pos = |f: &str| list.iter().position(|w| w.file == f);
    if let (Some(mem), Some(sw)) = (
        pos("memory.limit_in_bytes"),
        pos("memory.memsw.limit_in_bytes"),
    ) {
        let new_mem: i64 = list[mem].value.parse().unwrap_or(0);
        let cur_sw = current("memory.memsw.limit_in_bytes").unwrap_or(i64::MAX);
        if (new_mem > cur_sw || new_mem == -1) != (sw < mem) {
            list.swap(mem, sw);
        }
    }
}

/// v2: lets `dir`'s children use `controllers` (those not yet enabled).
fn delegate(dir: &Path, controllers: &[&str]) -> Result<()> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&file).unwrap_or_default();
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| {
            !enabled
                .split_whitespace()
                .any(|e| e.trim_start_matches('+') == **c)
        })
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::write(&file, missing.join(" ")).map_err(|e| Error::io("write", &file, e))
}

/// v1 cpuset: a new cgroup starts with no CPUs and no memory nodes; copy the parent's.
fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<()> {
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let mine = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        if mine.trim().is_empty() {
            let theirs = std::fs::read_to_string(parent.join(f))
                .map_err(|e| Error::io("read", parent.join(f), e))?;
            write_file(&dir.join(f), theirs.trim())?;
        }
    }
    Ok(())
}

fn child_dirs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes a cgroup directory and its children, killing the processes left in them (they
/// are the container's: nothing else is placed there). Gone already is success.
fn remove_tree(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read", dir, e)),
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path())?;
        }
    }
    for attempt in 0..REMOVE_TRIES {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt + 1 < REMOVE_TRIES => {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill has no memory effects; the pid is a process in this cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(Error::io("remove cgroup", dir, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::{CgroupUsage, create_in_fake_tree};

    /// A fake host: a v2 root holding cpu memory pids cpuset hugetlb.
    fn fake_v2() -> (tempfile::TempDir, CgroupFs) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("unified");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma\n",
        )
        .unwrap();
        let mounts = vec![CgroupMount {
            mount_point: root.display().to_string(),
            v2: true,
            controllers: vec![],
        }];
        let fs = CgroupFs::from_mounts(&mounts, "/berth", 0).unwrap();
        (t, fs)
    }

    #[test]
    fn detects_hybrid_hosts_per_controller() {
        let t = tempfile::tempdir().unwrap();
        let unified = t.path().join("unified");
        std::fs::create_dir_all(&unified).unwrap();
        std::fs::write(unified.join("cgroup.controllers"), "hugetlb\n").unwrap();
        let v1 = |p: &str, c: &[&str]| CgroupMount {
            mount_point: t.path().join(p).display().to_string(),
            v2: false,
            controllers: c.iter().map(|s| s.to_string()).collect(),
        };
        let mounts = vec![
            v1("cpu", &["cpu"]),
            v1("cpuacct", &["cpuacct"]),
            v1("memory", &["memory"]),
            v1("memory2", &["memory"]),
            v1("systemd", &["name=systemd"]),
            CgroupMount {
                mount_point: unified.display().to_string(),
                v2: true,
                controllers: vec![],
            },
        ];
        let fs = CgroupFs::from_mounts(&mounts, "/berth", 0).unwrap();
        assert_eq!(fs.hierarchies().len(), 4, "{:?}", fs.hierarchies());
        assert_eq!(fs.version_of("memory"), Some(Version::V1));
        assert_eq!(fs.version_of("hugetlb"), Some(Version::V2));
        assert_eq!(fs.version_of("pids"), None);
        assert!(CgroupFs::from_mounts(&mounts, "/", 0).is_err());
    }

    #[test]
    fn pods_go_under_kubelets_parent_or_berths_own() {
        let (_t, fs) = fake_v2();
        let p = fs.place_pod("abc", "/kubepods/burstable/pod1").unwrap();
        assert_eq!(
            p,
            PodCgroup {
                pod: "/kubepods/burstable/pod1".into(),
                owned: false,
                monitor: "/kubepods/burstable/pod1/abc".into()
            }
        );
        assert_eq!(fs.container_cgroup(&p, "c1"), "/kubepods/burstable/pod1/c1");
        let own = fs.place_pod("abc", "").unwrap();
        assert_eq!(own.pod, "/berth/abc");
        assert!(own.owned);
        assert!(fs.place_pod("abc", "/a/../b").is_err());
        let e = fs.place_pod("abc", "kubepods-pod1.slice").unwrap_err();
        assert!(e.to_string().contains("systemd"), "{e}");
    }

    #[test]
    fn v2_delegates_controllers_and_writes_limits() {
        let (t, fs) = fake_v2();
        let pod = fs.place_pod("p1", "").unwrap();
        let procs = fs.create_pod(&pod, None).unwrap();
        let root = t.path().join("unified");
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(procs, vec![root.join("berth/p1/p1/cgroup.procs")]);
        // Baseline controllers are delegated at every level above a leaf.
        assert_eq!(read("cgroup.subtree_control"), "+cpu +memory +pids +io");
        assert_eq!(
            read("berth/p1/cgroup.subtree_control"),
            "+cpu +memory +pids +io"
        );
        let r = LinuxContainerResources {
            memory_limit_in_bytes: 1 << 20,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        let (c, _) = create_in_fake_tree(&fs, &pod, "c1", &r);
        assert_eq!(read("berth/p1/c1/memory.max"), "1048576");
        assert_eq!(read("berth/p1/c1/cpuset.cpus"), "0");
        // cpuset is delegated only once a limit needs it.
        assert_eq!(read("berth/p1/cgroup.subtree_control"), "+cpuset");
        fs.update_container(
            &c,
            &LinuxContainerResources {
                memory_limit_in_bytes: 2 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(read("berth/p1/c1/memory.max"), "2097152");
        std::fs::write(root.join("berth/p1/c1/memory.current"), "4096\n").unwrap();
        std::fs::write(
            root.join("berth/p1/c1/memory.stat"),
            "anon 3000\ninactive_file 1000\npgfault 7\npgmajfault 1\n",
        )
        .unwrap();
        std::fs::write(
            root.join("berth/p1/c1/memory.events"),
            "oom 1\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(root.join("berth/p1/c1/cpu.stat"), "usage_usec 25\n").unwrap();
        std::fs::write(root.join("berth/p1/c1/pids.current"), "3\n").unwrap();
        let u = fs.usage(&c);
        assert_eq!(
            u,
            CgroupUsage {
                cpu_ns: Some(25_000),
                memory_usage: Some(4096),
                working_set: Some(3096),
                rss: Some(3000),
                page_faults: Some(7),
                major_page_faults: Some(1),
                processes: Some(3),
                oom_kills: 1,
                memory_limit: Some(2 << 20),
                swap_usage: None,
            }
        );
        let mut unified = LinuxContainerResources::default();
        unified.unified.insert("memory.high".into(), "100".into());
        fs.update_container(&c, &unified).unwrap();
        assert_eq!(read("berth/p1/c1/memory.high"), "100");
    }

    #[test]
    fn prune_removes_what_no_record_names() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("memory");
        for d in [
            "berth/p1/p1",
            "berth/p1/c1",
            "berth/p1/lost",
            "berth/gone/gone",
            "kube/pod9/x",
            "kube/pod9/p9",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let mounts = vec![CgroupMount {
            mount_point: root.display().to_string(),
            v2: false,
            controllers: vec!["memory".into()],
        }];
        let fs = CgroupFs::from_mounts(&mounts, "/berth", 0).unwrap();
        let p1 = fs.place_pod("p1", "").unwrap();
        let p9 = fs.place_pod("p9", "/kube/pod9").unwrap();
        let c1 = fs.container_cgroup(&p1, "c1");
        let n = fs.prune(&[(p1, vec![c1]), (p9, vec![])]);
        assert_eq!(n, 3);
        assert!(root.join("berth/p1/p1").exists() && root.join("berth/p1/c1").exists());
        assert!(root.join("kube/pod9/p9").exists());
        for gone in ["berth/p1/lost", "berth/gone", "kube/pod9/x"] {
            assert!(!root.join(gone).exists(), "{gone}");
        }
    }

    #[test]
    fn updating_a_removed_container_is_a_precondition_failure() {
        let (_t, fs) = fake_v2();
        let e = fs
            .update_container("/berth/none/c", &LinuxContainerResources::default())
            .unwrap_err();
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
    }

    #[test]
    fn memsw_goes_first_when_the_limit_grows_past_it() {
        let w = |f: &str, v: &str| Write {
            controller: "memory".into(),
            file: f.into(),
            value: v.into(),
        };
        let mut list = vec![
            w("memory.limit_in_bytes", "200"),
            w("memory.memsw.limit_in_bytes", "300"),
        ];
        order_memory_writes(&mut list, |_| Some(100));
        assert_eq!(list[0].file, "memory.memsw.limit_in_bytes");
        let mut list = vec![
            w("memory.limit_in_bytes", "50"),
            w("memory.memsw.limit_in_bytes", "60"),
        ];
        order_memory_writes(&mut list, |_| Some(100));
        assert_eq!(list[0].file, "memory.limit_in_bytes");
    }
}
