//! Container lifecycle: create (plan, then the monitor builds it), start, stop, remove,
//! status, list and log reopening.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_cri::v1::{
    Container, ContainerConfig, ContainerEventType, ContainerFilter, ContainerStatusResponse,
    LinuxContainerResources, PodSandboxConfig,
};

use crate::cgroups::devices::{rule_for_kind, rule_for_node};
use crate::cgroups::{ContainerLimits, DeviceRule};
use crate::daemon::runtime::{ContainerEntry, Runtime, container_name_key, lock};
use crate::daemon::store::{ContainerPhase, ContainerRecord, ImageRecord, PodPhase};
use crate::error::{Class, Classify, Error, Result};
use crate::image::{ImageInfo, parse_signal};
use crate::namespace::Namespace;
use crate::plan::{PlanInput, PodContext, missing_bind_sources, plan_container};
use crate::protocol::{Request, Response};
use crate::sys;

/// The `poststop` hooks of a removed container, with what their state needs.
pub(crate) struct Poststop {
    id: String,
    rootfs: PathBuf,
    annotations: std::collections::BTreeMap<String, String>,
    hooks: Vec<crate::spec::HookSpec>,
}

impl Poststop {
    /// The hooks the daemon runs for `spec`: `None` (nothing copied) without any, or for a
    /// handler's container (its runtime runs the hooks of its bundle).
    pub(crate) fn of(spec: &crate::spec::ContainerSpec) -> Option<Poststop> {
        if spec.hooks.poststop.is_empty() || spec.oci.is_some() {
            return None;
        }
        Some(Poststop {
            id: spec.id.clone(),
            rootfs: spec.rootfs.mount_point.clone(),
            annotations: spec.annotations.clone(),
            hooks: spec.hooks.poststop.clone(),
        })
    }
}

/// Runs the `poststop` hooks of a container Berth's own executor ran, once it is removed:
/// here, in the daemon, so that they run though the pod's monitor is gone (the pod was
/// stopped first, or the node restarted). A failing hook is logged; the removal stands.
pub(crate) async fn run_poststop(poststop: Option<Poststop>) {
    let Some(p) = poststop else {
        return;
    };
    let ran = tokio::task::spawn_blocking(move || {
        let state = crate::hooks::State::new(
            &p.id,
            &p.rootfs,
            &p.annotations,
            crate::hooks::Status::Stopped,
            None,
        );
        crate::hooks::run_each(&p.hooks, &state, |e| {
            let error = crate::hooks::message("poststop", &e);
            tracing::warn!(container = %p.id, %error, "poststop hook failed");
        });
    })
    .await;
    if let Err(e) = ran {
        tracing::warn!(error = %e, "poststop hooks did not finish");
    }
}

/// How long to wait for a process to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// Mode of a container's writable layer, which is its `/` (containerd's snapshots have it).
const UPPER_MODE: u32 = 0o755;

fn is_set<T: Default + PartialEq>(v: &T) -> bool {
    *v != T::default()
}

/// `current` with the fields `update` sets.
fn merge_resources(
    mut current: LinuxContainerResources,
    update: &LinuxContainerResources,
) -> LinuxContainerResources {
    macro_rules! take_nonzero {
        ($($f:ident),*) => {$(
            if is_set(&update.$f) {
                current.$f = update.$f.clone();
            }
        )*};
    }
    take_nonzero!(
        cpu_period,
        cpu_quota,
        cpu_shares,
        memory_limit_in_bytes,
        oom_score_adj,
        cpuset_cpus,
        cpuset_mems,
        hugepage_limits,
        memory_swap_limit_in_bytes
    );
    current
        .unified
        .extend(update.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
    current
}

/// Device cgroup rules for the host devices a container asked for.
fn device_rules(devices: &[crate::spec::DeviceSpec]) -> Vec<DeviceRule> {
    use std::os::unix::fs::MetadataExt;
    devices
        .iter()
        .filter_map(|d| match &d.node {
            Some(n) => rule_for_kind(n.kind, n.major, n.minor, &d.permissions),
            None => {
                let m = std::fs::metadata(&d.host_path).ok()?;
                rule_for_node(m.mode(), m.rdev(), &d.permissions)
            }
        })
        .collect()
}

async fn wait_exited(rx: &mut tokio::sync::watch::Receiver<bool>, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, rx.wait_for(|e| *e))
        .await
        .is_ok_and(|r| r.is_ok())
}

impl Runtime {
    /// Creates a container in a ready pod: plans it from kubelet's config and the image,
    /// records it, and has the pod's monitor build it (it waits for
    /// [`Runtime::start_container`]). `mount_images` maps each `Mount.image` reference to
    /// that image's layers, topmost first. kubelet's copy of the pod config is accepted as
    /// CRI sends it; the config recorded at RunPodSandbox is the one used. Returns the new
    /// container's id.
    pub async fn create_container(
        &self,
        pod_id: &str,
        config: &ContainerConfig,
        _pod_config: &PodSandboxConfig,
        image: ImageInfo,
        mount_images: &HashMap<String, Vec<PathBuf>>,
    ) -> Result<String> {
        let meta = config
            .metadata
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("container metadata is missing".into()))?;
        if meta.name.is_empty() {
            return Err(Error::InvalidArgument(
                "container metadata has no name".into(),
            ));
        }
        crate::crilog::check_log_path(&config.log_path)
            .map_err(|e| Error::InvalidArgument(format!("container {:?}: {e}", meta.name)))?;
        let pod = self.pod_entry(pod_id)?;
        let (pod_meta, pod_ctx) = {
            let rec = lock(&pod.rec);
            if rec.phase != PodPhase::Ready {
                return Err(Error::FailedPrecondition(format!(
                    "pod sandbox {} is not ready",
                    rec.id
                )));
            }
            let privileged = config
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref())
                .is_some_and(|s| s.privileged);
            let pod_privileged = rec
                .config
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref())
                .is_some_and(|s| s.privileged);
            if privileged && !pod_privileged {
                // As containerd: the pod's own flag is what allows privileged containers.
                return Err(Error::InvalidArgument(format!(
                    "no privileged container allowed in pod sandbox {}: the pod is not privileged",
                    rec.id
                )));
            }
            let ctx = PodContext {
                run_dir: self.pod_dir(&rec.id),
                hostname: rec.hostname.clone(),
                host_ipc: !rec.namespaces.contains(&Namespace::Ipc),
                host_pid: !rec.namespaces.contains(&Namespace::Pid),
                log_directory: rec.config.log_directory.clone(),
                userns: crate::daemon::pod::pod_userns(&rec.config)?,
            };
            (rec.config.metadata.clone().unwrap_or_default(), ctx)
        };
        let id = sys::random_id();
        self.reserve_name(container_name_key(meta, &pod_meta), &id, "container")?;
        let result = self
            .create_reserved(&pod.id, &id, config, &pod_ctx, image, mount_images)
            .await;
        if result.is_err() {
            self.release_name(&id);
        }
        result.map(|_| id)
    }

    async fn create_reserved(
        &self,
        pod_id: &str,
        id: &str,
        config: &ContainerConfig,
        pod_ctx: &PodContext,
        image: ImageInfo,
        mount_images: &HashMap<String, Vec<PathBuf>>,
    ) -> Result<()> {
        let apparmor = crate::lsm::check_container(
            config
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref()),
            self.lsm,
        )?;
        let (passwd, groups) = crate::user::image_accounts(&image.lower_dirs)?;
        let resources = config.linux.as_ref().and_then(|l| l.resources.as_ref());
        let input = PlanInput {
            id,
            config,
            pod: pod_ctx,
            image: &image,
            mount_images,
            container_dir: self.container_root_dir(id),
            passwd: &passwd,
            groups: &groups,
            all_caps: self.all_caps,
            oom_score_adj_floor: self.oom_floor,
            cgroup_procs: Vec::new(),
        };
        let mut spec = plan_container(&input)?;
        spec.process.security.apparmor_profile = apparmor;
        let (cdi_devices, net_devices) = self.apply_cdi(config, &mut spec)?;
        if !spec.hooks.is_empty() {
            // The OCI state its hooks read carries them (nothing is copied without hooks).
            spec.annotations = config
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        if !net_devices.is_empty() {
            self.record_net_devices(pod_id, net_devices).await?;
        }
        let missing = missing_bind_sources(&spec);
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
            return Err(Error::InvalidArgument(format!(
                "host path {} does not exist",
                list.join(", ")
            )));
        }
        let mut rec = ContainerRecord {
            id: id.to_owned(),
            pod_id: pod_id.to_owned(),
            config: config.clone(),
            image: ImageRecord {
                id: image.id.clone(),
                name: image.name.clone(),
                image_ref: image.image_ref().to_owned(),
            },
            spec: spec.clone(),
            stop_signal: parse_signal(&image.config.stop_signal).unwrap_or(libc::SIGTERM),
            phase: ContainerPhase::Creating,
            created_at: sys::now_ns(),
            log_path: spec.log_path.clone().unwrap_or_default(),
            cdi_devices,
            ..Default::default()
        };
        let pod = self.pod_entry(pod_id)?;
        rec.cgroup = {
            let pod_cgroup = &lock(&pod.rec).cgroup;
            self.opts.cgroups.container_cgroup(pod_cgroup, id)
        };
        // The intent is durable before the monitor hears of the container, and before any
        // caller can list it. Its commit runs while the daemon makes what goes without a
        // record should a crash come first (the container's directories and bundle, swept
        // at start-up; its cgroup inside the pod's, pruned at start-up or removed with the
        // pod): the fsync overlaps that work instead of preceding it.
        let intent = self.store.put_container(&rec);
        let entry = Arc::new(ContainerEntry::new(rec.clone()));
        let undo = |e: Error| {
            self.forget_container(&entry);
            e
        };
        let root_dir = self.container_root_dir(id);
        for d in [
            root_dir.join("upper"),
            root_dir.join("work"),
            root_dir.join("rootfs"),
            self.container_state_dir(id),
        ] {
            std::fs::create_dir_all(&d).map_err(|e| undo(Error::io("create", &d, e)))?;
        }
        // The upper dir's mode is the mode of the container's `/`: open to its users, set
        // explicitly since the daemon's umask (077) keeps the rest of `root_dir` private.
        let upper = root_dir.join("upper");
        std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(UPPER_MODE))
            .map_err(|e| undo(Error::io("chmod", &upper, e)))?;
        let limits = ContainerLimits {
            resources,
            all_devices: spec.process.security.privileged,
            devices: device_rules(&spec.devices),
        };
        spec.cgroup_procs = self
            .opts
            .cgroups
            .create_container(&rec.cgroup, &limits)
            .map_err(undo)?;
        if let Some(input) = self.bundle_input(&pod, id, config, &spec, &rec.cgroup, &limits) {
            let oci = input.and_then(|i| crate::oci::prepare(&spec, i));
            spec.oci = Some(oci.map_err(undo)?);
        } else if !spec.hooks.is_empty() {
            self.write_hooks_config(&pod, config, &spec, &rec.cgroup, &limits)
                .map_err(undo)?;
        }
        intent.await.map_err(undo)?;
        lock(&self.index)
            .containers
            .insert(id.to_owned(), entry.clone());
        let pid = match pod
            .client
            .call(&Request::Create {
                spec: Box::new(spec.clone()),
            })
            .await
        {
            Ok(Response::Created { pid }) => pid,
            Ok(other) => {
                return Err(undo(Error::Internal(format!(
                    "unexpected answer to create: {other:?}"
                ))));
            }
            Err(e) => return Err(undo(e)),
        };
        {
            let mut r = lock(&entry.rec);
            r.phase = ContainerPhase::Created;
            r.pid = pid;
            r.spec = spec;
            rec = r.clone();
        }
        if let Err(e) = self.store.put_container(&rec).await {
            let _ = pod
                .client
                .call_ok(&Request::Remove { id: id.to_owned() })
                .await;
            return Err(undo(e));
        }
        self.emit(ContainerEventType::ContainerCreatedEvent, id, pod_id);
        Ok(())
    }

    /// The node's CDI devices and spec files, re-read now; `None` when CDI is turned off.
    pub fn cdi_report(&self) -> Option<crate::cdi::Report> {
        self.opts.cdi.as_ref().map(|r| r.report())
    }

    /// Applies the CDI devices the container asks for (its `CDI_devices` and `cdi.k8s.io/`
    /// annotations) to its plan; returns their names. Nothing is read when it asks for none.
    fn apply_cdi(
        &self,
        config: &ContainerConfig,
        spec: &mut crate::spec::ContainerSpec,
    ) -> Result<(Vec<String>, Vec<crate::cdi::NetDevice>)> {
        let names = crate::cdi::requested(config)?;
        if names.is_empty() {
            return Ok((names, Vec::new()));
        }
        let Some(registry) = &self.opts.cdi else {
            return Err(Error::FailedPrecondition(format!(
                "CDI devices {} were asked for, but CDI is turned off on this node \
                 ([cdi] enabled = false)",
                names.join(", ")
            )));
        };
        let devices = registry.resolve(&names)?;
        let privileged = spec.process.security.privileged;
        let net = crate::cdi::edits::apply(spec, &devices, privileged)?;
        Ok((names, net))
    }

    /// Records, durably, the host network interfaces the pod is about to get, before the
    /// daemon moves them (see [`Runtime::pod_net_devices`]); refused for a pod on the
    /// node's network.
    async fn record_net_devices(
        &self,
        pod_id: &str,
        devices: Vec<crate::cdi::NetDevice>,
    ) -> Result<()> {
        let pod = self.pod_entry(pod_id)?;
        let commit = {
            let mut rec = lock(&pod.rec);
            if !rec.namespaces.contains(&Namespace::Net) {
                let names: Vec<&str> = devices.iter().map(|d| d.host_name.as_str()).collect();
                return Err(Error::InvalidArgument(format!(
                    "CDI network devices {} cannot be given to pod {}: it uses the node's \
                     network",
                    names.join(", "),
                    rec.id
                )));
            }
            for d in devices {
                if let Some(other) = rec
                    .net_devices
                    .iter()
                    .find(|o| (o.host_name == d.host_name) != (o.name == d.name))
                {
                    return Err(Error::InvalidArgument(format!(
                        "CDI network device {} as {} conflicts with {} as {} in pod {}",
                        d.host_name, d.name, other.host_name, other.name, rec.id
                    )));
                }
                if !rec.net_devices.contains(&d) {
                    rec.net_devices.push(d);
                }
            }
            self.store.put_pod(&rec)
        };
        commit.await
    }

    /// The pod's network namespace and the host network interfaces recorded for it, which
    /// the caller moves in (CreateContainer) or back (StopPodSandbox).
    pub fn pod_net_devices(
        &self,
        pod_id: &str,
    ) -> Result<(Option<PathBuf>, Vec<crate::cdi::NetDevice>)> {
        let pod = self.pod_entry(pod_id)?;
        let rec = lock(&pod.rec);
        Ok((self.own_netns(&rec), rec.net_devices.clone()))
    }

    /// Starts a created container; it runs once this returns.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let c = self.container_entry(id)?;
        let _op = c.op.lock().await;
        let phase = lock(&c.rec).phase;
        if phase != ContainerPhase::Created {
            let what = match phase {
                ContainerPhase::Running => "running",
                ContainerPhase::Exited => "exited",
                _ => "being created",
            };
            return Err(Error::FailedPrecondition(format!(
                "container {} is {what}, not created",
                c.id
            )));
        }
        let pod = self.pod_entry(&c.pod_id)?;
        c.starting.store(true, Ordering::SeqCst);
        let answer = pod.client.call(&Request::Start { id: c.id.clone() }).await;
        // Whatever the answer, an exit recorded while it was awaited now tells of itself,
        // after what this call tells.
        let finish_start = || {
            let deferred = {
                let _rec = lock(&c.rec);
                c.starting.store(false, Ordering::SeqCst);
                c.stop_event_deferred.swap(false, Ordering::SeqCst)
            };
            if deferred {
                self.emit(ContainerEventType::ContainerStoppedEvent, &c.id, &c.pod_id);
            }
        };
        match answer {
            Ok(Response::Started { started_at }) => {
                let recorded = {
                    let mut rec = lock(&c.rec);
                    rec.started_at = started_at;
                    if rec.phase == ContainerPhase::Created {
                        rec.phase = ContainerPhase::Running;
                    }
                    self.store.put_container(&rec)
                }
                .await;
                if recorded.is_ok() {
                    self.emit(ContainerEventType::ContainerStartedEvent, &c.id, &c.pod_id);
                }
                finish_start();
                recorded
            }
            Ok(other) => {
                finish_start();
                Err(Error::Internal(format!(
                    "unexpected answer to start: {other:?}"
                )))
            }
            Err(e) => {
                {
                    let mut rec = lock(&c.rec);
                    rec.phase = ContainerPhase::Exited;
                    rec.finished_at = sys::now_ns();
                    rec.exit_code = 128;
                    rec.reason = "StartError".into();
                    rec.message = e.full_message();
                    // Queued; the call fails whatever becomes of it.
                    drop(self.store.put_container(&rec));
                    // This stop is told here, once, whether or not an exit came meanwhile.
                    c.starting.store(false, Ordering::SeqCst);
                    c.stop_event_deferred.store(false, Ordering::SeqCst);
                }
                c.exited.send_replace(true);
                self.emit(ContainerEventType::ContainerStoppedEvent, &c.id, &c.pod_id);
                Err(e)
            }
        }
    }

    /// Stops a container: its stop signal, then SIGKILL once `timeout` seconds have passed
    /// (at once for 0). Succeeds for an unknown or already exited container, once its exit
    /// is durable.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        self.stop(id, timeout).await?;
        // The exit was recorded by the monitor's event or here, queued: the answer waits
        // for it to be on disk.
        self.store.flush().await
    }

    /// [`Runtime::stop_container`] without the flush: RemoveContainer's removal intent is
    /// queued after the exit and makes both durable at once.
    async fn stop(&self, id: &str, timeout: i64) -> Result<()> {
        let Some(c) = self.find_container(id) else {
            return Ok(());
        };
        let _op = c.op.lock().await;
        let (phase, signal) = {
            let rec = lock(&c.rec);
            (rec.phase, rec.stop_signal)
        };
        if !matches!(phase, ContainerPhase::Created | ContainerPhase::Running) {
            return Ok(());
        }
        let Some(pod) = self.find_pod(&c.pod_id) else {
            return Ok(());
        };
        let mut rx = c.exited.subscribe();
        let kill = |signal: i32| {
            let client = pod.client.clone();
            let id = c.id.clone();
            async move { client.call_ok(&Request::Kill { id, signal }).await }
        };
        if timeout > 0 && phase == ContainerPhase::Running {
            match kill(signal).await {
                Ok(()) => {}
                Err(Error::MonitorGone { .. }) => {
                    self.mark_unknown_exit(&c);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            if wait_exited(&mut rx, Duration::from_secs(timeout as u64)).await {
                return Ok(());
            }
        }
        match kill(libc::SIGKILL).await {
            Ok(()) => {}
            Err(Error::MonitorGone { .. }) => {
                self.mark_unknown_exit(&c);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        if wait_exited(&mut rx, KILL_WAIT).await {
            Ok(())
        } else {
            Err(Error::DeadlineExceeded(format!(
                "container {} did not exit after SIGKILL",
                c.id
            )))
        }
    }

    /// Removes a container, killing it first if it runs. Succeeds for an unknown id.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        self.remove_container_with(id, None).await
    }

    /// [`Runtime::remove_container`] with another crate's write (the end of the container's
    /// image lease) committed in the same transaction as the removal intent; it is not run
    /// for an unknown id.
    pub async fn remove_container_with(
        &self,
        id: &str,
        also: Option<berth_db::Write>,
    ) -> Result<()> {
        let Some(c) = self.find_container(id) else {
            return Ok(());
        };
        self.stop(&c.id, 0).await?;
        let _op = c.op.lock().await;
        if let Some(pod) = self.find_pod(&c.pod_id) {
            match pod
                .client
                .call_ok(&Request::Remove { id: c.id.clone() })
                .await
            {
                Ok(()) | Err(Error::MonitorGone { .. }) => {}
                Err(e) if e.class() == Class::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.forget_removed_container(&c, also).await?;
        let poststop = Poststop::of(&lock(&c.rec).spec);
        run_poststop(poststop).await;
        self.emit(ContainerEventType::ContainerDeletedEvent, &c.id, &c.pod_id);
        Ok(())
    }

    /// `UpdateContainerResources`: applies the fields kubelet set (non-zero ones; `unified`
    /// keys are merged) to a created or running container's cgroup, and records the result,
    /// which `ContainerStatus.resources` reports.
    pub async fn update_container_resources(
        &self,
        id: &str,
        update: &LinuxContainerResources,
    ) -> Result<()> {
        let c = self.container_entry(id)?;
        let _op = c.op.lock().await;
        let (cgroup, mut config) = {
            let rec = lock(&c.rec);
            if !matches!(rec.phase, ContainerPhase::Created | ContainerPhase::Running) {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} is not running: its resources cannot be updated"
                )));
            }
            (rec.cgroup.clone(), rec.config.clone())
        };
        self.opts.cgroups.update_container(&cgroup, update)?;
        let linux = config.linux.get_or_insert_with(Default::default);
        let merged = merge_resources(linux.resources.take().unwrap_or_default(), update);
        linux.resources = Some(merged);
        let commit = {
            let mut rec = lock(&c.rec);
            rec.config = config;
            self.store.put_container(&rec)
        };
        commit.await
    }

    /// `ContainerStatus`; `verbose` adds an `info` JSON with the pid and the executed plan.
    pub fn container_status(&self, id: &str, verbose: bool) -> Result<ContainerStatusResponse> {
        let c = self.container_entry(id)?;
        let rec = lock(&c.rec);
        let mut info = HashMap::new();
        if verbose {
            let v = serde_json::json!({
                "sandboxID": rec.pod_id,
                "pid": rec.pid,
                "privileged": rec.spec.process.security.privileged,
                "config": rec.config,
                "runtimeSpec": rec.spec,
                "cdiDevices": rec.cdi_devices,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok(ContainerStatusResponse {
            status: Some(crate::status::container_status(&rec)),
            info,
        })
    }

    /// `ListContainers` with kubelet's filter.
    pub fn list_containers(&self, filter: Option<&ContainerFilter>) -> Vec<Container> {
        let all: Vec<Arc<ContainerEntry>> =
            lock(&self.index).containers.values().cloned().collect();
        let mut out: Vec<Container> = all
            .iter()
            .filter_map(|c| {
                let rec = lock(&c.rec);
                if rec.phase == ContainerPhase::Creating {
                    return None;
                }
                crate::status::container_matches(crate::status::container_listed(&rec), filter)
                    .then(|| crate::status::container_item(&rec))
            })
            .collect();
        out.sort_by_key(|c| c.created_at);
        out
    }

    /// Reopens a running container's log file (kubelet rotated it). The daemon creates the
    /// new file, with the monitor's own checks (no symlink, a regular file), and hands it
    /// to the pod's monitor without waiting for the switch: the answer does not wait on the
    /// per-pod process being scheduled and faulting back the pages it trimmed while idle.
    /// What the monitor writes before it switches lands in the rotated file, as output
    /// written before the call always did, so no line is lost.
    pub async fn reopen_container_log(&self, id: &str) -> Result<()> {
        let (c, path) = self.running_container(id, |rec| rec.log_path.clone())?;
        let pod = self.pod_entry(&c.pod_id)?;
        if path.as_os_str().is_empty() {
            return Ok(());
        }
        let file = crate::monitor::open_log(&path).map_err(|source| Error::Io {
            op: "reopen the log file",
            path: path.clone(),
            source,
        })?;
        pod.client
            .send_only(
                &Request::ReopenLog { id: c.id.clone() },
                &[std::os::fd::AsRawFd::as_raw_fd(&file)],
            )
            .await
    }
}
