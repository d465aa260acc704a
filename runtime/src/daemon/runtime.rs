//! The [`Runtime`]: the daemon's handle on every pod and container, their records, their
//! monitors and the event stream.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use k8s_cri::v1::{ContainerEventResponse, ContainerEventType};
use tokio::sync::{broadcast, watch};

use crate::cgroups::read::{KeptFile, UsageDirs};
use crate::cgroups::{CgroupManager, NoCgroups};
use crate::daemon::client::MonitorClient;
use crate::daemon::store::{ContainerPhase, ContainerRecord, PodPhase, PodRecord, Store};
use crate::error::{Error, Result};
use crate::namespace::Namespace;
use crate::protocol::{ExitStatus, Request, Response};
use crate::sys;

mod reconcile;

pub use reconcile::{FILES_LOST, ReconcileReport};

/// How many events a slow subscriber may lag before it loses the oldest.
const EVENT_BUFFER: usize = 1024;

/// Where the runtime keeps its state and finds its monitor.
#[derive(Clone)]
pub struct RuntimeOptions {
    /// Persistent root (`/var/lib/berth`): writable layers under `containers/`.
    pub root: PathBuf,
    /// Volatile state (`/run/berth`): pod and container run dirs.
    pub state: PathBuf,
    /// The `berth-monitor` binary.
    pub monitor_path: PathBuf,
    /// Places pods and containers in cgroups.
    pub cgroups: Arc<dyn CgroupManager>,
    /// RuntimeClass handlers accepted besides the default `""`, each run by an external OCI
    /// runtime.
    pub runtime_handlers: Vec<crate::oci::Handler>,
    /// The handler (one of `runtime_handlers`) of pods that ask for none; empty: Berth's
    /// own executor.
    pub default_handler: String,
    /// Size of each pod's /dev/shm in bytes.
    pub shm_size: u64,
    /// The node's CDI devices; `None` when CDI is turned off.
    pub cdi: Option<Arc<crate::cdi::Registry>>,
}

impl RuntimeOptions {
    /// Options with the defaults: no cgroups, only the default handler, 64 MiB /dev/shm.
    pub fn new(
        root: impl Into<PathBuf>,
        state: impl Into<PathBuf>,
        monitor_path: impl Into<PathBuf>,
    ) -> Self {
        RuntimeOptions {
            root: root.into(),
            state: state.into(),
            monitor_path: monitor_path.into(),
            cgroups: Arc::new(NoCgroups),
            runtime_handlers: Vec::new(),
            default_handler: String::new(),
            shm_size: 64 << 20,
            cdi: None,
        }
    }
}

/// How many pods and containers are in each state, as the List RPCs would show them, and
/// how many pod monitors run: what a metrics scrape reports, counted without building
/// the items.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// Listed pods that are ready (their monitor runs).
    pub pods_ready: usize,
    /// Listed pods that are stopped or lost their monitor.
    pub pods_not_ready: usize,
    /// Listed containers created and not started.
    pub containers_created: usize,
    /// Listed containers running.
    pub containers_running: usize,
    /// Listed containers that have exited.
    pub containers_exited: usize,
    /// Pod monitors believed alive, including those of pods still being created.
    pub monitors: usize,
    /// Listed containers whose files were found gone without a recorded removal (reason
    /// [`FILES_LOST`]): a fault, shown until kubelet removes them.
    pub containers_files_lost: usize,
}

impl Census {
    /// Counts pods given as (phase, confirmed) and containers given as phases. Pods and
    /// containers still being created are not listed, as ListPodSandbox and ListContainers
    /// leave them out; a ready pod's monitor counts as soon as it runs.
    pub fn count(
        pods: impl IntoIterator<Item = (PodPhase, bool)>,
        containers: impl IntoIterator<Item = ContainerPhase>,
    ) -> Census {
        let mut c = Census::default();
        for (phase, confirmed) in pods {
            if phase == PodPhase::Ready {
                c.monitors += 1;
            }
            match phase {
                PodPhase::Creating => {}
                _ if !confirmed => {}
                PodPhase::Ready => c.pods_ready += 1,
                PodPhase::NotReady => c.pods_not_ready += 1,
            }
        }
        for phase in containers {
            match phase {
                ContainerPhase::Creating => {}
                ContainerPhase::Created => c.containers_created += 1,
                ContainerPhase::Running => c.containers_running += 1,
                ContainerPhase::Exited => c.containers_exited += 1,
            }
        }
        c
    }
}

pub(crate) struct PodEntry {
    pub id: String,
    pub rec: Mutex<PodRecord>,
    /// Serializes lifecycle calls on this pod.
    pub op: tokio::sync::Mutex<()>,
    pub client: MonitorClient,
    /// Set while the pod is being stopped: the monitor's exit is expected.
    pub stopping: AtomicBool,
    /// The pod cgroup's directories, opened by the first stats call, closed with the entry.
    pub usage_dirs: Arc<UsageDirs>,
    /// The pod's `/proc/<monitor>/net/dev`, opened by the first stats call, closed when the
    /// pod stops (it pins the network namespace).
    pub net_dev: Arc<KeptFile>,
}

pub(crate) struct ContainerEntry {
    pub id: String,
    pub pod_id: String,
    pub rec: Mutex<ContainerRecord>,
    /// Serializes lifecycle calls on this container.
    pub op: tokio::sync::Mutex<()>,
    /// Flips to true when the container has exited.
    pub exited: watch::Sender<bool>,
    /// A StartContainer is in flight and has not told of the start yet; an exit recorded
    /// meanwhile leaves its event to it (`stop_event_deferred`), so that the start comes
    /// first. Both are read and written under `rec`'s lock.
    pub starting: AtomicBool,
    pub stop_event_deferred: AtomicBool,
    /// The cgroup's directories, opened by the first stats call, closed with the entry.
    pub usage_dirs: Arc<UsageDirs>,
}

#[derive(Default)]
pub(crate) struct Index {
    pub pods: HashMap<String, Arc<PodEntry>>,
    pub containers: HashMap<String, Arc<ContainerEntry>>,
    /// Reserved names (from metadata) to the id holding them.
    pub names: HashMap<String, String>,
}

/// The daemon's pods and containers.
pub struct Runtime {
    pub(crate) opts: RuntimeOptions,
    pub(crate) store: Store,
    pub(crate) index: Mutex<Index>,
    pub(crate) events: broadcast::Sender<ContainerEventResponse>,
    pub(crate) all_caps: u64,
    pub(crate) lsm: crate::lsm::HostLsm,
    /// The sealed in-memory copy of the monitor binary monitors run from, made on the first
    /// pod (so that starting the daemon does not pay for it).
    pub(crate) monitor_exe: std::sync::OnceLock<Arc<std::os::fd::OwnedFd>>,
    pub(crate) oom_floor: i32,
    pub(crate) rebooted: bool,
    /// Records found at open with their removal under way (`removing`): never listed,
    /// finished by [`Runtime::reconcile`].
    pub(crate) removals: Mutex<Vec<ContainerRecord>>,
    pub(crate) me: Weak<Runtime>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The name reserved for a pod's metadata, as containerd builds it.
pub(crate) fn pod_name_key(m: &k8s_cri::v1::PodSandboxMetadata) -> String {
    format!("pod:{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

/// The name reserved for a container's metadata within its pod.
pub(crate) fn container_name_key(
    c: &k8s_cri::v1::ContainerMetadata,
    pod: &k8s_cri::v1::PodSandboxMetadata,
) -> String {
    format!(
        "ctr:{}_{}_{}_{}_{}",
        c.name, pod.name, pod.namespace, pod.uid, c.attempt
    )
}

fn read_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl Runtime {
    /// Opens the runtime: creates its tables and loads every record. Does no work per pod
    /// beyond reading records; call [`Runtime::reconcile`] next.
    pub fn open(opts: RuntimeOptions, db: berth_db::Db) -> Result<Arc<Runtime>> {
        // Directories are made on first use, and the boot id is recorded by reconcile: opening
        // writes nothing outside the database.
        let rebooted = match std::fs::read_to_string(opts.state.join("boot_id")) {
            Ok(old) => old.trim() != read_boot_id(),
            Err(_) => false,
        };
        let store = Store::open(db)?;
        let mut index = Index::default();
        let mut removals = Vec::new();
        for rec in store.pods()? {
            let entry = PodEntry::new(&opts, rec);
            if let Some(m) = &lock(&entry.rec).config.metadata {
                index.names.insert(pod_name_key(m), entry.id.clone());
            }
            index.pods.insert(entry.id.clone(), Arc::new(entry));
        }
        for rec in store.containers()? {
            if rec.removing {
                removals.push(rec);
                continue;
            }
            if let (Some(m), Some(pod)) = (&rec.config.metadata, index.pods.get(&rec.pod_id))
                && let Some(pm) = &lock(&pod.rec).config.metadata
            {
                index
                    .names
                    .insert(container_name_key(m, pm), rec.id.clone());
            }
            let entry = ContainerEntry::new(rec);
            index.containers.insert(entry.id.clone(), Arc::new(entry));
        }
        let own_oom = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Arc::new_cyclic(|me| Runtime {
            opts,
            store,
            index: Mutex::new(index),
            events,
            all_caps: crate::security::own_bounding_set(),
            lsm: crate::lsm::HostLsm::detect(),
            monitor_exe: std::sync::OnceLock::new(),
            oom_floor: own_oom,
            rebooted,
            removals: Mutex::new(removals),
            me: me.clone(),
        }))
    }

    /// Pods and containers by state, and live monitors, from the in-memory index: cheap
    /// enough to call on every metrics scrape.
    pub fn census(&self) -> Census {
        // As the List calls do, records are read after the index is released: code that
        // holds a record may take the index.
        let (pods, containers): (Vec<Arc<PodEntry>>, Vec<Arc<ContainerEntry>>) = {
            let idx = lock(&self.index);
            (
                idx.pods.values().cloned().collect(),
                idx.containers.values().cloned().collect(),
            )
        };
        let mut census = Census::count(
            pods.iter().map(|p| {
                let rec = lock(&p.rec);
                (rec.phase, rec.confirmed)
            }),
            containers.iter().map(|c| lock(&c.rec).phase),
        );
        census.containers_files_lost = containers
            .iter()
            .filter(|c| lock(&c.rec).reason == FILES_LOST)
            .count();
        census
    }

    /// The sealed copy of the monitor binary, made now if this is the first pod.
    pub(crate) fn monitor_exe(&self) -> Result<Arc<std::os::fd::OwnedFd>> {
        if let Some(exe) = self.monitor_exe.get() {
            return Ok(exe.clone());
        }
        let copy = crate::daemon::launch::sealed_copy(&self.opts.monitor_path).map_err(|e| {
            Error::MonitorStart {
                path: self.opts.monitor_path.clone(),
                message: format!("cannot make a sealed copy to run from: {e}"),
            }
        })?;
        // Two first pods at once: one copy wins, the other is dropped.
        Ok(self.monitor_exe.get_or_init(|| Arc::new(copy)).clone())
    }

    /// The options the runtime runs with.
    pub fn options(&self) -> &RuntimeOptions {
        &self.opts
    }

    /// Container and pod sandbox lifecycle events for kubelet's Evented PLEG. A subscriber
    /// that falls more than 1024 events behind loses the oldest (`RecvError::Lagged`, which
    /// it must report); the runtime never waits.
    pub fn subscribe_events(&self) -> broadcast::Receiver<ContainerEventResponse> {
        self.events.subscribe()
    }

    pub(crate) fn pod_dir(&self, id: &str) -> PathBuf {
        self.opts.state.join("pods").join(id)
    }

    /// The file of a pod's own network namespace, `None` when the pod uses the node's.
    pub(crate) fn own_netns(&self, rec: &PodRecord) -> Option<PathBuf> {
        rec.namespaces
            .contains(&Namespace::Net)
            .then(|| self.pod_dir(&rec.id).join("ns").join(Namespace::Net.name()))
    }

    pub(crate) fn container_state_dir(&self, id: &str) -> PathBuf {
        self.opts.state.join("containers").join(id)
    }

    pub(crate) fn container_root_dir(&self, id: &str) -> PathBuf {
        self.opts.root.join("containers").join(id)
    }

    fn find<T>(map: &HashMap<String, Arc<T>>, id: &str) -> Option<Arc<T>> {
        if let Some(e) = map.get(id) {
            return Some(e.clone());
        }
        if id.is_empty() {
            return None;
        }
        let mut found = map.iter().filter(|(k, _)| k.starts_with(id));
        match (found.next(), found.next()) {
            (Some((_, e)), None) => Some(e.clone()),
            _ => None,
        }
    }

    /// The pod with this id or unique id prefix.
    pub(crate) fn find_pod(&self, id: &str) -> Option<Arc<PodEntry>> {
        Self::find(&lock(&self.index).pods, id)
    }

    /// The container with this id or unique id prefix.
    pub(crate) fn find_container(&self, id: &str) -> Option<Arc<ContainerEntry>> {
        Self::find(&lock(&self.index).containers, id)
    }

    /// The pod `id`: `NotFound` for an unknown one.
    pub(crate) fn pod_entry(&self, id: &str) -> Result<Arc<PodEntry>> {
        self.find_pod(id).ok_or_else(|| Error::pod_not_found(id))
    }

    /// The container `id`: `NotFound` for an unknown one.
    pub(crate) fn container_entry(&self, id: &str) -> Result<Arc<ContainerEntry>> {
        self.find_container(id)
            .ok_or_else(|| Error::container_not_found(id))
    }

    /// The running container `id` and what `read` takes from its record under the same
    /// lock: `NotFound` for an unknown container, `FailedPrecondition` for one not running.
    pub(crate) fn running_container<T>(
        &self,
        id: &str,
        read: impl FnOnce(&ContainerRecord) -> T,
    ) -> Result<(Arc<ContainerEntry>, T)> {
        let c = self.container_entry(id)?;
        let rec = lock(&c.rec);
        if rec.phase != ContainerPhase::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        let out = read(&rec);
        drop(rec);
        Ok((c, out))
    }

    pub(crate) fn pod_containers(&self, pod_id: &str) -> Vec<Arc<ContainerEntry>> {
        let mut v: Vec<_> = lock(&self.index)
            .containers
            .values()
            .filter(|c| c.pod_id == pod_id)
            .cloned()
            .collect();
        v.sort_by_key(|c| lock(&c.rec).created_at);
        v
    }

    pub(crate) fn reserve_name(&self, key: String, id: &str, kind: &'static str) -> Result<()> {
        let mut idx = lock(&self.index);
        if let Some(holder) = idx.names.get(&key) {
            let name = key
                .split_once(':')
                .map(|(_, n)| n.to_owned())
                .unwrap_or(key.clone());
            return Err(Error::AlreadyExists {
                kind,
                name,
                holder: holder.clone(),
            });
        }
        idx.names.insert(key, id.to_owned());
        Ok(())
    }

    pub(crate) fn release_name(&self, id: &str) {
        lock(&self.index).names.retain(|_, v| v != id);
    }

    /// Publishes a container event with its pod's status; never blocks.
    pub(crate) fn emit(&self, kind: ContainerEventType, container_id: &str, pod_id: &str) {
        if let Some(event) = self.event(kind, container_id, pod_id) {
            self.publish(event);
        }
    }

    /// An event of `container_id` with the status of its pod and of the pod's containers
    /// as they are now; `None` when nobody listens.
    fn event(
        &self,
        kind: ContainerEventType,
        container_id: &str,
        pod_id: &str,
    ) -> Option<ContainerEventResponse> {
        if self.events.receiver_count() == 0 {
            return None;
        }
        let pod = self.find_pod(pod_id);
        let pod_status = pod.as_ref().map(|p| self.pod_status_of(p));
        let containers_statuses = self
            .pod_containers(pod_id)
            .iter()
            .map(|c| crate::status::container_status(&lock(&c.rec)))
            .collect();
        Some(ContainerEventResponse {
            container_id: container_id.to_owned(),
            container_event_type: kind as i32,
            created_at: sys::now_ns(),
            pod_sandbox_status: pod_status,
            containers_statuses,
        })
    }

    /// An event of the pod sandbox itself, as containerd sends them for kubelet's Evented
    /// PLEG: a container event whose `container_id` is the pod's id, with the pod's status
    /// now. `None` for an unknown pod or when nobody listens. Build a deletion's event
    /// before the removal (the status is gone after it) and [`Runtime::publish`] it after.
    pub fn pod_event(
        &self,
        kind: ContainerEventType,
        pod_id: &str,
    ) -> Option<ContainerEventResponse> {
        let id = self.find_pod(pod_id)?.id.clone();
        self.event(kind, &id, &id)
    }

    /// Publishes an event, stamped now; never blocks (a subscriber that falls behind
    /// loses the oldest, and is told so by its stream).
    pub fn publish(&self, mut event: ContainerEventResponse) {
        event.created_at = sys::now_ns();
        let _ = self.events.send(event);
    }

    /// Records an exit reported by a monitor (or read from an exit file).
    pub(crate) fn apply_exit(&self, c: &ContainerEntry, exit: ExitStatus) {
        {
            let mut rec = lock(&c.rec);
            if rec.phase == ContainerPhase::Exited {
                return;
            }
            rec.phase = ContainerPhase::Exited;
            rec.finished_at = exit.finished_at;
            rec.exit_code = exit.exit_code;
            rec.reason = if exit.exit_code == 0 {
                "Completed".into()
            } else if self.opts.cgroups.usage(&rec.cgroup).oom_kills > 0 {
                "OOMKilled".into()
            } else {
                "Error".into()
            };
            // Durable with the next group commit, not waited for here (this is the monitor's
            // event, not a call): a call that tells of it (StopContainer) flushes first, and
            // until then the monitor still holds the exit for a restarted daemon.
            drop(self.store.put_container(&rec));
            c.usage_dirs.clear();
            self.release_cgroup(&c.id, rec.cgroup.clone());
            if c.starting.load(Ordering::SeqCst) {
                // It exited before StartContainer told of its start: that call tells both.
                c.stop_event_deferred.store(true, Ordering::SeqCst);
                drop(rec);
                c.exited.send_replace(true);
                return;
            }
        }
        c.exited.send_replace(true);
        self.emit(ContainerEventType::ContainerStoppedEvent, &c.id, &c.pod_id);
    }

    /// Removes an exited container's cgroup (killing what is left in it, as containerd does
    /// when a container's init exits) off the caller's path; RemoveContainer then finds it
    /// gone. Its figures (the OOM kill) were read before.
    fn release_cgroup(&self, id: &str, cgroup: String) {
        let cgroups = self.opts.cgroups.clone();
        let id = id.to_owned();
        let remove = move || {
            if let Err(e) = cgroups.remove(&cgroup) {
                tracing::warn!(container = %id, error = %e.full_message(), "cannot remove cgroup");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }

    /// Marks a container exited without a known status (its monitor is gone).
    pub(crate) fn mark_unknown_exit(&self, c: &ContainerEntry) {
        let path = self.container_state_dir(&c.id).join("exit");
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(exit) = serde_json::from_slice::<ExitStatus>(&bytes)
        {
            self.apply_exit(c, exit);
            return;
        }
        {
            let mut rec = lock(&c.rec);
            if rec.phase == ContainerPhase::Exited {
                return;
            }
            rec.phase = ContainerPhase::Exited;
            rec.finished_at = sys::now_ns();
            rec.exit_code = 255;
            rec.reason = "Unknown".into();
            rec.message = "the pod's monitor ended before the container's exit was recorded".into();
            // As in apply_exit: the calls that tell of it flush first.
            drop(self.store.put_container(&rec));
        }
        c.exited.send_replace(true);
        self.emit(ContainerEventType::ContainerStoppedEvent, &c.id, &c.pod_id);
    }

    /// The monitor of `pod` went away: unless the pod is being stopped, it is NOTREADY now
    /// and its containers have exited.
    pub(crate) fn on_monitor_gone(&self, pod: &PodEntry) {
        for c in self.pod_containers(&pod.id) {
            let phase = lock(&c.rec).phase;
            if matches!(phase, ContainerPhase::Created | ContainerPhase::Running) {
                self.mark_unknown_exit(&c);
            }
        }
        if pod.stopping.load(Ordering::SeqCst) {
            return;
        }
        {
            let mut rec = lock(&pod.rec);
            if rec.phase != PodPhase::Ready {
                return;
            }
            tracing::warn!(pod = %pod.id, "pod monitor exited unexpectedly");
            rec.phase = PodPhase::NotReady;
            // Queued; a restart finds the monitor gone again if this is lost.
            drop(self.store.put_pod(&rec));
        }
        // The pod sandbox stopped, as containerd tells of a sandbox whose task exited.
        self.emit(ContainerEventType::ContainerStoppedEvent, &pod.id, &pod.id);
    }

    /// Subscribes to a pod's monitor and follows its events in a task until it exits.
    pub(crate) async fn watch_pod(&self, pod: &Arc<PodEntry>) -> Result<()> {
        let mut sub = pod.client.subscribe().await?;
        let me = self.me.clone();
        let pod = pod.clone();
        tokio::spawn(async move {
            while let Some(resp) = sub.next().await {
                let Some(rt) = me.upgrade() else { return };
                if let Response::Event { id, exit } = resp
                    && let Some(c) = rt.find_container(&id)
                {
                    rt.apply_exit(&c, exit);
                }
            }
            if let Some(rt) = me.upgrade() {
                rt.on_monitor_gone(&pod);
            }
        });
        Ok(())
    }

    /// The container's writable layer and run directory.
    fn container_dirs(&self, id: &str) -> [PathBuf; 2] {
        [self.container_root_dir(id), self.container_state_dir(id)]
    }

    /// Removes what a container holds besides its directories: its cgroup, and an OCI
    /// runtime's state (the monitor deletes what it ran; this is for a monitor that is gone).
    fn release_container_state(
        &self,
        id: &str,
        cgroup: &str,
        oci: Option<&crate::spec::OciRuntimeSpec>,
    ) {
        if let Some(rt) = oci {
            crate::oci::forget_state(rt, id);
        }
        if let Err(e) = self.opts.cgroups.remove(cgroup) {
            tracing::warn!(container = %id, error = %e.full_message(), "cannot remove cgroup");
        }
    }

    /// Drops a container that was never acknowledged as made (undone at start or on a failed
    /// create) or whose pod is gone: directories, then record, name and index entry. The
    /// record's deletion is queued, not waited for: a crash before it brings the same undo
    /// again.
    pub(crate) fn forget_container(&self, c: &ContainerEntry) {
        let (cgroup, oci) = {
            let rec = lock(&c.rec);
            (rec.cgroup.clone(), rec.spec.oci.clone())
        };
        self.release_container_state(&c.id, &cgroup, oci.as_ref());
        for dir in self.container_dirs(&c.id) {
            let _ = std::fs::remove_dir_all(dir);
        }
        drop(self.store.delete_container(&c.id));
        self.release_name(&c.id);
        lock(&self.index).containers.remove(&c.id);
    }

    /// RemoveContainer's part after the monitor dropped the container: records the removal
    /// intent durably, with `also` (the image lease's end) in the same transaction (the
    /// call's acknowledgement rests on it), then the container is gone
    /// from every list; its directories are deleted in the background, off kubelet's path,
    /// and only then its record. A crash anywhere after the intent is finished at the next
    /// start; before it, nothing was acknowledged.
    pub(crate) async fn forget_removed_container(
        &self,
        c: &ContainerEntry,
        also: Option<berth_db::Write>,
    ) -> Result<()> {
        let intent = {
            let mut rec = lock(&c.rec);
            rec.removing = true;
            match also {
                Some(w) => self.store.put_container_with(&rec, w),
                None => self.store.put_container(&rec),
            }
        };
        if let Err(e) = intent.await {
            lock(&c.rec).removing = false;
            return Err(e);
        }
        let (cgroup, oci) = {
            let rec = lock(&c.rec);
            (rec.cgroup.clone(), rec.spec.oci.clone())
        };
        self.release_container_state(&c.id, &cgroup, oci.as_ref());
        self.release_name(&c.id);
        lock(&self.index).containers.remove(&c.id);
        let (store, id) = (self.store.clone(), c.id.clone());
        remove_dirs_later(self.container_dirs(&c.id).into(), move || {
            // Queued behind the intent; durable with the next group commit.
            drop(store.delete_container(&id));
        });
        Ok(())
    }
}

/// Where [`remove_dirs_later`] moves `dir` before deleting it.
fn aside(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".removed-{name}"))
}

/// Removes directories off the caller's path (RemoveContainer is on kubelet's): each is
/// renamed aside to `.removed-<name>` at once, so its path is free, then deleted on a
/// blocking thread, after which `then` runs. No record owns such a name, so a start that
/// finds one left by a crash removes it with the other orphans.
fn remove_dirs_later(dirs: Vec<PathBuf>, then: impl FnOnce() + Send + 'static) {
    let mut moved = Vec::with_capacity(dirs.len());
    for dir in dirs {
        if dir.file_name().is_none() {
            continue;
        }
        let to = aside(&dir);
        match std::fs::rename(&dir, &to) {
            Ok(()) => moved.push(to),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    let remove = move || {
        for dir in moved {
            let _ = std::fs::remove_dir_all(&dir);
        }
        then();
    };
    // A runtime being dropped still finishes its blocking tasks.
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn_blocking(remove)),
        Err(_) => remove(),
    }
}

impl PodEntry {
    pub(crate) fn new(opts: &RuntimeOptions, rec: PodRecord) -> Self {
        let dir = opts.state.join("pods").join(&rec.id);
        PodEntry {
            id: rec.id.clone(),
            client: MonitorClient {
                pod_id: rec.id.clone(),
                socket: dir.join("monitor.sock"),
            },
            rec: Mutex::new(rec),
            op: tokio::sync::Mutex::new(()),
            stopping: AtomicBool::new(false),
            usage_dirs: Arc::default(),
            net_dev: Arc::default(),
        }
    }
}

impl ContainerEntry {
    pub(crate) fn new(rec: ContainerRecord) -> Self {
        let (exited, _) = watch::channel(rec.phase == ContainerPhase::Exited);
        ContainerEntry {
            id: rec.id.clone(),
            pod_id: rec.pod_id.clone(),
            rec: Mutex::new(rec),
            op: tokio::sync::Mutex::new(()),
            exited,
            starting: AtomicBool::new(false),
            stop_event_deferred: AtomicBool::new(false),
            usage_dirs: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests;
