//! Pod sandbox lifecycle: run (start a monitor in new namespaces), stop, remove, status, list.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_cri::v1::{
    NamespaceMode, NamespaceOption, PodSandbox, PodSandboxConfig, PodSandboxFilter,
    PodSandboxStatusResponse, RunPodSandboxRequest,
};

use crate::daemon::runtime::{PodEntry, Runtime, lock, pod_name_key};
use crate::daemon::store::{ContainerPhase, PodPhase, PodRecord};
use crate::error::{Error, Result};
use crate::namespace::Namespace;
use crate::podfiles;
use crate::protocol::{MonitorConfig, PROTOCOL_VERSION, Request, Response};
use crate::sys;

/// A pod that now runs: the daemon sets up its network in `netns` next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCreated {
    /// Pod id.
    pub id: String,
    /// Path of the pod's network namespace; `None` for a host-network pod.
    pub netns: Option<PathBuf>,
}

/// A pod just stopped: the daemon tears down its network, then calls
/// [`Runtime::release_pod_namespaces`].
#[derive(Debug, Clone)]
pub struct PodStopped {
    /// Pod id.
    pub id: String,
    /// Path of the pod's network namespace (still mounted); `None` for a host-network pod.
    pub netns: Option<PathBuf>,
    /// The IPs the network gave it.
    pub ips: Vec<String>,
    /// The pod's config (port mappings, labels).
    pub config: PodSandboxConfig,
    /// Host network interfaces to move back to the node before the namespace goes.
    pub net_devices: Vec<crate::cdi::NetDevice>,
}

/// Which namespaces of its own a pod gets; `own_userns`: it has its own user namespace
/// ([`pod_userns`]).
pub(crate) fn pod_namespaces(
    config: &PodSandboxConfig,
    own_userns: bool,
) -> Result<Vec<Namespace>> {
    let opts = namespace_options(config);
    let node = |mode: i32| mode == NamespaceMode::Node as i32;
    let (net, ipc, pid) = opts
        .map(|o| (node(o.network), node(o.ipc), node(o.pid)))
        .unwrap_or((false, false, false));
    if own_userns && (net || ipc || pid) {
        // kubelet never asks for it: the node's namespaces belong to the node's user
        // namespace, where the pod's root has no say.
        return Err(Error::InvalidArgument(
            "a pod with its own user namespace cannot share the node's network, IPC or PID \
             namespace"
                .into(),
        ));
    }
    let mut ns = Vec::new();
    if !net {
        ns.push(Namespace::Net);
        ns.push(Namespace::Uts);
    }
    if !ipc {
        ns.push(Namespace::Ipc);
    }
    if !pid {
        ns.push(Namespace::Pid);
    }
    Ok(ns)
}

/// The namespaces a pod's config asks for, if it says.
pub(crate) fn namespace_options(config: &PodSandboxConfig) -> Option<&NamespaceOption> {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
}

/// The pod's own user namespace (mode POD), validated; `None` for the node's.
pub(crate) fn pod_userns(config: &PodSandboxConfig) -> Result<Option<crate::userns::UsernsSpec>> {
    let opts = namespace_options(config).and_then(|o| o.userns_options.as_ref());
    let spec = crate::userns::from_cri(opts)?;
    if spec.is_some() && !crate::userns::supported() {
        return Err(Error::InvalidArgument(
            "user namespaces are not supported on this node (user.max_user_namespaces is 0 \
             or the kernel is older than 5.19)"
                .into(),
        ));
    }
    Ok(spec)
}

/// The pod's sysctls, sorted by name.
fn pod_sysctls(config: &PodSandboxConfig) -> Vec<(String, String)> {
    let mut sysctls: Vec<(String, String)> = config
        .linux
        .as_ref()
        .map(|l| {
            l.sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    sysctls.sort();
    sysctls
}

/// Unmounts a pod's namespace bind mounts and shm (idempotent).
pub(crate) fn release_pod_mounts(dir: &Path) {
    for ns in Namespace::ALL {
        let _ = sys::umount_quiet(&dir.join("ns").join(ns.name()));
    }
    let _ = sys::umount_quiet(&dir.join("shm"));
}

fn host_file(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

/// Mode of the files bound into every container (`/etc/hosts`, `/etc/hostname`,
/// `/etc/resolv.conf`): any user of the container reads them, also through an idmapped
/// bind. Set explicitly: the daemon's umask (077) would make them the node root's only.
const POD_FILE_MODE: u32 = 0o644;

/// Mode of the pod's files only the runtime reads.
const PRIVATE_FILE_MODE: u32 = 0o600;

/// Writes one of the pod's files with `mode`, whatever the umask.
fn write(path: PathBuf, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut f = std::fs::File::create(&path).map_err(|e| Error::io("write", &path, e))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| f.write_all(data))
        .map_err(|e| Error::io("write", path, e))
}

impl Runtime {
    /// Starts a pod: records it, writes its hostname/hosts/resolv.conf, starts its monitor in
    /// new namespaces and follows the monitor's events. The caller sets up the network in
    /// the returned netns and reports the IPs with [`Runtime::set_pod_network`], which
    /// confirms the pod (a pod never confirmed is undone at the next start).
    pub async fn run_pod_sandbox(&self, req: &RunPodSandboxRequest) -> Result<PodCreated> {
        let config = req
            .config
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("pod sandbox config is missing".into()))?;
        let meta = config
            .metadata
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("pod sandbox metadata is missing".into()))?;
        if meta.name.is_empty() || meta.namespace.is_empty() || meta.uid.is_empty() {
            return Err(Error::InvalidArgument(
                "pod sandbox metadata needs name, namespace and uid".into(),
            ));
        }
        crate::crilog::check_log_directory(&config.log_directory)
            .map_err(|e| Error::InvalidArgument(format!("pod sandbox {:?}: {e}", meta.name)))?;
        // A pod asking for no handler gets the configured default (`default_runtime`).
        let handler = if req.runtime_handler.is_empty() {
            self.opts.default_handler.as_str()
        } else {
            req.runtime_handler.as_str()
        };
        if !handler.is_empty() && !self.opts.runtime_handlers.iter().any(|h| h.name == handler) {
            return Err(Error::InvalidArgument(format!(
                "unknown runtime handler {handler:?}"
            )));
        }
        let userns = pod_userns(config)?;
        let namespaces = pod_namespaces(config, userns.is_some())?;
        if !handler.is_empty() && userns.is_some() {
            // As Status tells kubelet: only Berth's own executor runs them.
            return Err(Error::InvalidArgument(format!(
                "runtime handler {handler:?} does not support user namespaces"
            )));
        }
        crate::lsm::check_pod(
            config
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref()),
            self.lsm,
        )?;
        crate::sysctl::validate(
            &pod_sysctls(config),
            crate::sysctl::PodIsolation {
                own_net: namespaces.contains(&Namespace::Net),
                own_ipc: namespaces.contains(&Namespace::Ipc),
            },
        )?;
        let id = sys::random_id();
        let parent = config
            .linux
            .as_ref()
            .map_or("", |l| l.cgroup_parent.as_str());
        let cgroup = self.opts.cgroups.place_pod(&id, parent)?;
        self.reserve_name(pod_name_key(meta), &id, "pod sandbox")?;
        let host_net = !namespaces.contains(&Namespace::Net);
        let hostname = if host_net {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            config.hostname.clone()
        };
        let rec = PodRecord {
            id: id.clone(),
            config: config.clone(),
            runtime_handler: handler.to_owned(),
            created_at: sys::now_ns(),
            phase: PodPhase::Creating,
            monitor_pid: 0,
            namespaces: namespaces.clone(),
            ips: Vec::new(),
            hostname: hostname.clone(),
            confirmed: false,
            cgroup,
            net_devices: Vec::new(),
        };
        // The intent is durable before anything the record alone leads to (the pod's cgroup,
        // its monitor). Its commit runs while the daemon writes the pod's files, which a
        // crash leaves in a directory no record owns, swept at start-up: the fsync overlaps
        // that work instead of preceding it.
        let intent = self.store.put_pod(&rec);
        let files = self.write_pod_files(&id, config, host_net, &hostname);
        if let Err(e) = intent.await.and(files) {
            let _ = std::fs::remove_dir_all(self.pod_dir(&id));
            drop(self.store.delete_pod(&id));
            self.release_name(&id);
            return Err(e);
        }
        let entry = Arc::new(PodEntry::new(&self.opts, rec));
        lock(&self.index).pods.insert(id.clone(), entry.clone());
        match self
            .start_pod(&entry, config, &namespaces, userns, &hostname)
            .await
        {
            Ok(pid) => {
                // Not committed on its own: the confirmation ([`Runtime::set_pod_network`]),
                // which RunPodSandbox awaits before it answers, carries the phase and the
                // monitor's pid to disk in the same commit. A crash before it leaves the
                // intent, whose undo asks the monitor for its pid.
                {
                    let mut rec = lock(&entry.rec);
                    rec.phase = PodPhase::Ready;
                    rec.monitor_pid = pid;
                }
                if let Err(e) = self.watch_pod(&entry).await {
                    self.undo_pod(&entry).await;
                    return Err(e);
                }
                let netns = self.own_netns(&lock(&entry.rec));
                Ok(PodCreated { id, netns })
            }
            Err(e) => {
                self.undo_pod(&entry).await;
                Err(e)
            }
        }
    }

    /// Writes the files bound into the pod's containers (hostname, hosts, resolv.conf) in
    /// its directory, which it creates.
    fn write_pod_files(
        &self,
        id: &str,
        config: &PodSandboxConfig,
        host_net: bool,
        hostname: &str,
    ) -> Result<()> {
        let dir = self.pod_dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        write(
            dir.join("hostname"),
            format!("{hostname}\n").as_bytes(),
            POD_FILE_MODE,
        )?;
        let hosts = if host_net {
            host_file("/etc/hosts")
        } else {
            podfiles::hosts_file().into_bytes()
        };
        write(dir.join("hosts"), &hosts, POD_FILE_MODE)?;
        let resolv = podfiles::resolv_conf(config.dns_config.as_ref())
            .map(String::into_bytes)
            .unwrap_or_else(|| host_file("/etc/resolv.conf"));
        write(dir.join("resolv.conf"), &resolv, POD_FILE_MODE)
    }

    async fn start_pod(
        &self,
        pod: &PodEntry,
        config: &PodSandboxConfig,
        namespaces: &[Namespace],
        userns: Option<crate::userns::UsernsSpec>,
        hostname: &str,
    ) -> Result<i32> {
        let dir = self.pod_dir(&pod.id);
        let host_net = !namespaces.contains(&Namespace::Net);
        let pod_cgroup = lock(&pod.rec).cgroup.clone();
        let pod_resources = config.linux.as_ref().and_then(|l| l.resources.as_ref());
        let cgroup_procs = self.opts.cgroups.create_pod(&pod_cgroup, pod_resources)?;
        let own_ipc = namespaces.contains(&Namespace::Ipc);
        let sysctls = pod_sysctls(config);
        let mcfg = MonitorConfig {
            version: PROTOCOL_VERSION,
            pod_id: pod.id.clone(),
            run_dir: dir.clone(),
            containers_dir: self.opts.state.join("containers"),
            hostname: (!host_net && !hostname.is_empty()).then(|| hostname.to_owned()),
            namespaces: namespaces.to_vec(),
            shm_size: own_ipc.then_some(self.opts.shm_size),
            sysctls,
            cgroup_procs,
            userns,
        };
        let cfg_path = dir.join("monitor.json");
        let json = serde_json::to_vec_pretty(&mcfg)
            .map_err(|e| Error::Internal(format!("encode monitor config: {e}")))?;
        write(cfg_path.clone(), &json, PRIVATE_FILE_MODE)?;
        let exe = self.monitor_exe()?;
        // A user-namespaced pod's monitor creates its namespaces itself (see
        // `monitor::launch`).
        let unshared: &[Namespace] = if mcfg.userns.is_some() {
            &[]
        } else {
            namespaces
        };
        let pid = crate::daemon::launch::spawn_monitor(
            &self.opts.monitor_path,
            &exe,
            &cfg_path,
            unshared,
            &dir.join("monitor.log"),
        )
        .await?;
        if let Err(e) = self.opts.cgroups.attach_monitor(&pod_cgroup, pid) {
            // undo_pod waits for this pid to be gone.
            lock(&pod.rec).monitor_pid = pid;
            return Err(e);
        }
        Ok(pid)
    }

    /// Undoes a pod that failed half-way (or was found half-created at reconcile).
    pub(crate) async fn undo_pod(&self, pod: &PodEntry) {
        pod.stopping.store(true, Ordering::SeqCst);
        let mut pid = lock(&pod.rec).monitor_pid;
        if pid <= 0 {
            // Found at start-up as an intent: the pid was to be recorded with the
            // confirmation. A monitor that started answers with its own.
            let hello = Request::Hello {
                version: PROTOCOL_VERSION,
            };
            if let Ok(Response::Hello {
                pod_id, pid: own, ..
            }) = pod.client.call(&hello).await
                && pod_id == pod.id
            {
                pid = own;
            }
        }
        let _ = pod.client.call_ok(&Request::Shutdown).await;
        wait_gone(pid).await;
        for c in self.pod_containers(&pod.id) {
            self.forget_container(&c);
        }
        let dir = self.pod_dir(&pod.id);
        release_pod_mounts(&dir);
        let (cgroup, handler) = {
            let rec = lock(&pod.rec);
            (rec.cgroup.clone(), !rec.runtime_handler.is_empty())
        };
        let _ = self.opts.cgroups.remove_pod(&cgroup);
        if handler && cgroup.owned {
            crate::oci::remove_runtime_cgroups(&cgroup.pod);
        }
        let _ = std::fs::remove_dir_all(&dir);
        // Queued, not waited for: this undoes a pod never acknowledged, and a crash before
        // the deletion is durable brings the same undo again.
        drop(self.store.delete_pod(&pod.id));
        self.release_name(&pod.id);
        lock(&self.index).pods.remove(&pod.id);
    }

    /// Records the IPs the network gave a pod (none on the node's network), reported in its
    /// status, and confirms the pod: RunPodSandbox is done. Until then a restart undoes it.
    /// The same commit makes durable the pod's phase and monitor pid (not committed on their
    /// own) and what the built-in network recorded without a sync of its own.
    pub fn set_pod_network(&self, id: &str, ips: Vec<String>) -> Result<()> {
        let pod = self.pod_entry(id)?;
        let mut rec = lock(&pod.rec);
        rec.ips = ips;
        rec.confirmed = true;
        let commit = self.store.put_pod(&rec);
        drop(rec);
        // Durable before RunPodSandbox answers (the caller is on a runtime thread that may
        // block: the commit loop runs on its own thread).
        commit.wait()
    }

    /// Stops a pod: kills its containers, ends its monitor, marks it NOTREADY. Its network
    /// namespace stays mounted so the caller can tear down the network; then call
    /// [`Runtime::release_pod_namespaces`]. `None` for an unknown id (stop is idempotent).
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<Option<PodStopped>> {
        let Some(pod) = self.find_pod(id) else {
            return Ok(None);
        };
        let _op = pod.op.lock().await;
        pod.stopping.store(true, Ordering::SeqCst);
        // A kept net/dev pins the network namespace, which the caller tears down next.
        pod.net_dev.close();
        let was_ready = lock(&pod.rec).phase == PodPhase::Ready;
        if was_ready {
            match pod.client.call_ok(&Request::Shutdown).await {
                Ok(()) | Err(Error::MonitorGone { .. }) => {}
                Err(e) => return Err(e),
            }
            let pid = lock(&pod.rec).monitor_pid;
            wait_gone(pid).await;
        }
        for c in self.pod_containers(&pod.id) {
            let phase = lock(&c.rec).phase;
            if matches!(phase, ContainerPhase::Created | ContainerPhase::Running) {
                self.mark_unknown_exit(&c);
            }
        }
        let _ = sys::umount_quiet(&self.pod_dir(&pod.id).join("shm"));
        let commit = {
            let mut rec = lock(&pod.rec);
            if rec.phase != PodPhase::NotReady {
                rec.phase = PodPhase::NotReady;
                self.store.put_pod(&rec)
            } else {
                self.store.flush()
            }
        };
        // Also makes the containers' exits recorded above durable.
        commit.await?;
        let rec = lock(&pod.rec);
        let netns = self.own_netns(&rec);
        Ok(Some(PodStopped {
            id: pod.id.clone(),
            netns,
            ips: rec.ips.clone(),
            config: rec.config.clone(),
            net_devices: rec.net_devices.clone(),
        }))
    }

    /// Whether the node has any pod (ready or not).
    pub fn has_pods(&self) -> bool {
        !lock(&self.index).pods.is_empty()
    }

    /// The full id and network namespace path (`None`: the node's) of pod `id`, an id or
    /// unique prefix; `None` for an unknown pod. For tearing the network down while the
    /// pod stops.
    pub fn pod_network_target(&self, id: &str) -> Option<(String, Option<PathBuf>)> {
        let pod = self.find_pod(id)?;
        let netns = self.own_netns(&lock(&pod.rec));
        Some((pod.id.clone(), netns))
    }

    /// Unmounts a stopped pod's namespace files (after its network was torn down).
    pub fn release_pod_namespaces(&self, id: &str) -> Result<()> {
        if let Some(pod) = self.find_pod(id) {
            release_pod_mounts(&self.pod_dir(&pod.id));
        }
        Ok(())
    }

    /// Removes a pod: stops it if needed, removes its containers, namespaces, run dir and
    /// record. Succeeds for an unknown id.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let Some(pod) = self.find_pod(id) else {
            return Ok(());
        };
        if lock(&pod.rec).phase != PodPhase::NotReady {
            self.stop_pod_sandbox(&pod.id).await?;
        }
        let _op = pod.op.lock().await;
        for c in self.pod_containers(&pod.id) {
            self.remove_container(&c.id).await?;
        }
        let dir = self.pod_dir(&pod.id);
        release_pod_mounts(&dir);
        let (cgroup, handler) = {
            let rec = lock(&pod.rec);
            (rec.cgroup.clone(), !rec.runtime_handler.is_empty())
        };
        self.opts.cgroups.remove_pod(&cgroup)?;
        if handler && cgroup.owned {
            crate::oci::remove_runtime_cgroups(&cgroup.pod);
        }
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(Error::io("remove", dir, e));
        }
        self.store.delete_pod(&pod.id).await?;
        self.release_name(&pod.id);
        let mut index = lock(&self.index);
        index.pods.remove(&pod.id);
        if index.pods.is_empty() {
            // The node is idle: the capacity its busiest moment grew stays otherwise.
            index.pods.shrink_to_fit();
            index.containers.shrink_to_fit();
            index.names.shrink_to_fit();
        }
        Ok(())
    }

    pub(crate) fn pod_status_of(&self, pod: &PodEntry) -> k8s_cri::v1::PodSandboxStatus {
        crate::status::pod_status(&lock(&pod.rec))
    }

    /// `PodSandboxStatus`, with the pod's container statuses; `verbose` adds an `info` JSON.
    pub fn pod_sandbox_status(&self, id: &str, verbose: bool) -> Result<PodSandboxStatusResponse> {
        let pod = self.pod_entry(id)?;
        let status = self.pod_status_of(&pod);
        let containers_statuses = self
            .pod_containers(&pod.id)
            .iter()
            .map(|c| crate::status::container_status(&lock(&c.rec)))
            .collect();
        let mut info = std::collections::HashMap::new();
        if verbose {
            let rec = lock(&pod.rec);
            let dir = self.pod_dir(&pod.id);
            let ns: serde_json::Map<String, serde_json::Value> = rec
                .namespaces
                .iter()
                .map(|n| {
                    (
                        n.name().to_owned(),
                        serde_json::Value::String(
                            dir.join("ns").join(n.name()).display().to_string(),
                        ),
                    )
                })
                .collect();
            let v = serde_json::json!({
                "pid": rec.monitor_pid,
                "runDir": dir,
                "namespaces": ns,
                "hostname": rec.hostname,
                "runtimeHandler": rec.runtime_handler,
                "config": rec.config,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok(PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses,
            timestamp: sys::now_ns(),
        })
    }

    /// `ListPodSandbox` with kubelet's filter (id or id prefix, state, labels).
    pub fn list_pod_sandbox(&self, filter: Option<&PodSandboxFilter>) -> Vec<PodSandbox> {
        let pods: Vec<Arc<PodEntry>> = lock(&self.index).pods.values().cloned().collect();
        let mut out: Vec<PodSandbox> = pods
            .iter()
            .filter_map(|p| {
                let rec = lock(&p.rec);
                if rec.phase == PodPhase::Creating || !rec.confirmed {
                    return None;
                }
                crate::status::pod_matches(crate::status::pod_listed(&rec), filter)
                    .then(|| crate::status::pod_item(&rec))
            })
            .collect();
        out.sort_by_key(|p| p.created_at);
        out
    }
}

/// Waits (up to 10 s) until a process is gone.
pub(crate) async fn wait_gone(pid: i32) {
    if pid <= 0 {
        return;
    }
    // A pidfd becomes readable when its process exits: no polling interval to wait out.
    match sys::pidfd_open(pid) {
        Err(_) => return,
        Ok(fd) => {
            // SAFETY: the pidfd moves into the AsyncFd, which keeps it open for its life.
            if let Ok(afd) = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            } {
                let _ = tokio::time::timeout(Duration::from_secs(10), afd.readable()).await;
                return;
            }
        }
    }
    for _ in 0..200 {
        // SAFETY: signal 0 only checks existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        // A zombie (not our child) still answers kill(0); its state says it is dead.
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .map(|r| r.trim_start().starts_with('Z'))
                    .unwrap_or(false)
            })
            .unwrap_or(true);
        if !alive || zombie {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption};

    fn cfg(net: i32, ipc: i32, pid: i32) -> PodSandboxConfig {
        PodSandboxConfig {
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: net,
                        ipc,
                        pid,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn namespaces_per_mode() {
        assert_eq!(
            pod_namespaces(&PodSandboxConfig::default(), false).unwrap(),
            vec![
                Namespace::Net,
                Namespace::Uts,
                Namespace::Ipc,
                Namespace::Pid
            ]
        );
        assert_eq!(
            pod_namespaces(&cfg(2, 0, 1), false).unwrap(),
            vec![Namespace::Ipc, Namespace::Pid]
        );
        assert_eq!(
            pod_namespaces(&cfg(0, 2, 2), false).unwrap(),
            vec![Namespace::Net, Namespace::Uts]
        );
    }

    #[test]
    fn a_user_namespaced_pod_owns_all_its_namespaces() {
        use k8s_cri::v1::{IdMapping, UserNamespace};
        let with_userns = |net: i32, ipc: i32, pid: i32| {
            let mut c = cfg(net, ipc, pid);
            let ns = c
                .linux
                .as_mut()
                .and_then(|l| l.security_context.as_mut())
                .and_then(|s| s.namespace_options.as_mut())
                .unwrap();
            let m = vec![IdMapping {
                host_id: 100000,
                container_id: 0,
                length: 65536,
            }];
            ns.userns_options = Some(UserNamespace {
                mode: NamespaceMode::Pod as i32,
                uids: m.clone(),
                gids: m,
            });
            c
        };
        assert_eq!(
            pod_namespaces(&with_userns(0, 0, 0), true).unwrap(),
            vec![
                Namespace::Net,
                Namespace::Uts,
                Namespace::Ipc,
                Namespace::Pid
            ]
        );
        assert!(pod_userns(&with_userns(0, 0, 0)).unwrap().is_some());
        for (net, ipc, pid) in [(2, 0, 0), (0, 2, 0), (0, 0, 2)] {
            assert!(matches!(
                pod_namespaces(&with_userns(net, ipc, pid), true),
                Err(Error::InvalidArgument(_))
            ));
        }
        assert_eq!(pod_userns(&cfg(0, 0, 0)).unwrap(), None);
    }
}
