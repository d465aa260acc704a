//! The node: everything the CRI handlers share, built once at start.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::Status;

use berth_cni::Network;
use berth_imageservice::ImageStore;

use crate::config::Config;
use crate::metrics::{ErrorKind, Metrics};
use crate::store::Store;
use crate::streaming::Streaming;

/// Where one part of start-up reconciliation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    Pending,
    Done,
    Failed(String),
}

/// Where start-up reconciliation stands, part by part: the runtime's part (pods and
/// containers checked against the kernel) runs first; then, side by side, the pod
/// networks' (kept for pods with a record, freed otherwise) and the images' (snapshots a
/// reboot lost unpacked again, leases of containers that are gone dropped). Reads of pods
/// and containers need only the first.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reconciliation {
    runtime: Stage,
    network: Stage,
    images: Stage,
}

/// What a CRI call must wait for before it answers: after a start, the state is reconciled
/// in parts, and a call answers only once the part it shows or touches is true again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Nothing: Version and Status answer at once, Status saying why it is not ready.
    Nothing,
    /// The runtime's part: every call that shows or touches pods, containers, their
    /// stats or their streams, so that none shows a dead pod ready or a removed object.
    Runtime,
    /// The images' part: image calls (a pull or removal does not touch pods, nor their
    /// networks or leases).
    Images,
    /// Every part: calls that change pods, containers or their networks (an address must
    /// not race the sweep of addresses, nor a container's image lease the sweep of leases).
    Everything,
}

impl Needs {
    /// `None` while the call must wait; then whether it may run, or why not.
    fn verdict(self, r: &Reconciliation) -> Option<Result<(), String>> {
        let parts: &[&Stage] = match self {
            Needs::Nothing => &[],
            Needs::Runtime => &[&r.runtime],
            Needs::Images => &[&r.images],
            Needs::Everything => &[&r.runtime, &r.network, &r.images],
        };
        // A failure is final even while another part is still pending.
        if let Some(Stage::Failed(message)) = parts.iter().find(|s| matches!(s, Stage::Failed(_))) {
            return Some(Err(message.clone()));
        }
        parts.iter().all(|s| **s == Stage::Done).then_some(Ok(()))
    }

    /// What the call waits for, as its deadline's message names it.
    fn what(self) -> &'static str {
        match self {
            Needs::Nothing => "nothing",
            Needs::Runtime => "pods and containers",
            Needs::Images => "images",
            Needs::Everything => "pods, containers, networks and images",
        }
    }
}

/// How much earlier than the client's deadline a waiting call gives up, so that its own
/// answer (naming the reason) comes before the deadline layer's and the client's timers.
const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// Shared state of the daemon, handed to every handler.
pub struct Node {
    /// The configuration the daemon started with.
    pub config: Config,
    /// The metadata database.
    pub store: Store,
    /// Pod networking, built-in or CNI.
    pub network: Arc<Network>,
    /// Images: registry client, content store, snapshots.
    pub images: Arc<ImageStore>,
    /// Where start-up reconciliation stands.
    reconciled: watch::Sender<Reconciliation>,
    /// When the daemon started, for uptime in verbose status.
    pub started: Instant,
    /// The exec/attach/port-forward streaming server's tokens, backend and URL.
    pub streaming: Streaming,
    /// Pods and containers.
    pub runtime: Arc<berth_runtime::Runtime>,
    /// Samples kept between stats calls.
    pub stats: Arc<crate::stats::StatsCache>,
    /// The daemon's own metrics, served when `[metrics] address` is set.
    pub metrics: Arc<Metrics>,
    /// The containers' writable layers' usage, for `ImageFsInfo` and container stats.
    pub writable: Arc<crate::images::writable::WritableUsage>,
}

/// The cgroup driver the config asks for, over this host's hierarchies.
fn cgroup_manager(
    config: &crate::config::CgroupConfig,
) -> anyhow::Result<Arc<dyn berth_runtime::CgroupManager>> {
    use crate::config::CgroupDriver;
    let parent = config.parent_or_default();
    Ok(match config.driver {
        CgroupDriver::Cgroupfs => {
            let fs = berth_runtime::cgroups::fs::CgroupFs::detect(parent, config.pids_limit)?;
            tracing::debug!(hierarchies = ?fs.hierarchies(), "cgroupfs driver");
            Arc::new(fs)
        }
        CgroupDriver::Systemd => {
            let sd = berth_runtime::cgroups::systemd::Systemd::detect(parent, config.pids_limit)?;
            tracing::debug!(hierarchies = ?sd.hierarchies(), "systemd driver");
            if !sd.bus_present() {
                tracing::warn!(
                    "cgroup driver is systemd, but neither {} nor {} exists: pods will not start",
                    berth_runtime::cgroups::systemd::SYSTEMD_PRIVATE_SOCKET,
                    berth_runtime::cgroups::systemd::SYSTEM_BUS_SOCKET
                );
            }
            Arc::new(sd)
        }
    })
}

/// Checks that every configured RuntimeClass handler names an executable file, so that a
/// typo stops the start instead of being found pod by pod.
pub fn check_runtime_handlers(config: &Config) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (name, h) in &config.runtimes {
        let meta = std::fs::metadata(&h.path)
            .map_err(|e| anyhow::anyhow!("runtime handler {name:?}: {}: {e}", h.path.display()))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            anyhow::bail!(
                "runtime handler {name:?}: {} is not an executable file",
                h.path.display()
            );
        }
    }
    Ok(())
}

impl Node {
    /// Builds the node from its configuration and opened store. Does no work that grows
    /// with the number of pods or images: that is [`Node::reconcile`]'s, after serving.
    pub fn new(config: Config, store: Store) -> anyhow::Result<Arc<Node>> {
        let network = Network::open(config.network.clone(), store.database())?;
        let images = ImageStore::open_with(
            &config.root,
            store.db(),
            config.registry.clone(),
            berth_imageservice::StoreOptions {
                layer_limits: config.image.layer_limits(),
                ..Default::default()
            },
        )?;
        let (reconciled, _) = watch::channel(Reconciliation {
            runtime: Stage::Pending,
            network: Stage::Pending,
            images: Stage::Pending,
        });
        // The monitor is installed beside the daemon's binary.
        let monitor = std::env::current_exe()?.with_file_name("berth-monitor");
        let mut options = berth_runtime::RuntimeOptions::new(&config.root, &config.state, monitor);
        options.cgroups = cgroup_manager(&config.cgroup)?;
        options.runtime_handlers = config
            .runtimes
            .iter()
            .map(|(name, h)| berth_runtime::oci::Handler {
                name: name.clone(),
                path: h.path.clone(),
                args: h.args.clone(),
            })
            .collect();
        options.default_handler = config.default_runtime.clone();
        options.cdi = config.cdi.enabled.then(|| {
            Arc::new(berth_runtime::cdi::Registry::new(
                config.cdi.spec_dirs.clone(),
            ))
        });
        let runtime = berth_runtime::Runtime::open(options, store.db())?;
        let streaming = Streaming::new();
        streaming.set_backend(Arc::new(
            crate::streaming::runtime_backend::RuntimeBackend::new(runtime.clone()),
        ));
        let writable = Arc::new(crate::images::writable::WritableUsage::new(
            crate::images::writable::FRESHNESS,
        ));
        Ok(Arc::new(Node {
            writable,
            config,
            store,
            network,
            images,
            reconciled,
            started: Instant::now(),
            streaming,
            runtime,
            stats: Arc::default(),
            metrics: Arc::new(Metrics::new()),
        }))
    }

    /// Brings records and the kernel into agreement after a start, in parts that each let
    /// the calls waiting for them run as soon as they are done: pods and containers first,
    /// then pod networks and images side by side (the images' part sweeps what no image
    /// references); emptying the trash follows in the background. Runs while the socket
    /// already serves. A part that fails stays failed, with the reason, and the calls that
    /// need it fail with it.
    pub async fn reconcile(&self) {
        let started = Instant::now();
        let runtime = self.reconcile_runtime().await;
        let runtime_ok = runtime.is_ok();
        let stage = self.stage("pods and containers", runtime, started);
        self.reconciled.send_modify(|r| r.runtime = stage);
        // The networks' part can cost more than the runtime's (deleting an nft table
        // commits a netfilter transaction): it must not delay reads, nor images wait for it.
        let network = async {
            let stage = self.stage("pod networks", self.reconcile_network().await, started);
            self.reconciled.send_modify(|r| r.network = stage);
        };
        let images = async {
            let result = self.reconcile_images(runtime_ok).await;
            let stage = self.stage("images", result, started);
            let swept = stage == Stage::Done;
            self.reconciled.send_modify(|r| r.images = stage);
            swept
        };
        let ((), swept) = tokio::join!(network, images);
        self.collect_garbage(swept);
    }

    /// Logs and counts how a part of reconciliation ended.
    fn stage(&self, part: &str, result: anyhow::Result<()>, started: Instant) -> Stage {
        match result {
            Ok(()) => {
                tracing::info!(
                    part,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "reconciled"
                );
                Stage::Done
            }
            Err(e) => {
                let message = format!("start-up reconciliation of {part} failed: {e:#}");
                tracing::error!("{message}");
                self.metrics.error(ErrorKind::Reconcile);
                Stage::Failed(message)
            }
        }
    }

    /// The runtime's part: every pod's monitor and container checked, half-done work undone.
    async fn reconcile_runtime(&self) -> anyhow::Result<()> {
        let pods = self.runtime.reconcile().await?;
        tracing::info!(?pods, "pods reconciled");
        self.stop_pods_without_network().await
    }

    /// Part of the runtime's reconciliation, before kubelet reads any pod.
    async fn stop_pods_without_network(&self) -> anyhow::Result<()> {
        let pods = self.runtime.list_pod_sandbox(None);
        // StopPodSandbox tears the network down while the monitor ends its processes: a
        // crash between the two leaves a pod whose monitor runs, read READY at start-up,
        // without its network. It is stopped, the state that unanswered StopPodSandbox (which
        // kubelet repeats) was to reach, rather than shown to kubelet as a ready pod.
        for pod in pods
            .iter()
            .filter(|p| p.state == k8s_cri::v1::PodSandboxState::SandboxReady as i32)
        {
            let own_netns = self
                .runtime
                .pod_network_target(&pod.id)
                .is_some_and(|(_, netns)| netns.is_some());
            if !own_netns {
                continue;
            }
            // The record says whether the network was torn down; with the built-in
            // network the veth is looked at too (cheap: no plugin runs at start-up).
            let missing = match self.network.pod_status(&pod.id) {
                Ok(None) => true,
                Ok(Some(_)) => {
                    self.network.config().mode == berth_cni::NetworkMode::Builtin
                        && self.network.check(&pod.id).await.is_err()
                }
                Err(_) => false,
            };
            if !missing {
                continue;
            }
            tracing::warn!(pod = %pod.id, "a ready pod without its network: a StopPodSandbox was cut short; stopping it");
            crate::pods::stop(self, &pod.id)
                .await
                .map_err(|e| anyhow::anyhow!("stop pod sandbox {}: {}", pod.id, e.message()))?;
        }
        Ok(())
    }

    /// The networks' part: every pod with a record keeps its network until
    /// StopPodSandbox; the rest is freed.
    async fn reconcile_network(&self) -> anyhow::Result<()> {
        let pod_ids: Vec<String> = self
            .runtime
            .list_pod_sandbox(None)
            .into_iter()
            .map(|p| p.id)
            .collect();
        self.network.reconcile(&pod_ids).await?;
        Ok(())
    }

    /// The images' part: snapshots a reboot lost are unpacked again, leases of containers
    /// that no longer exist are dropped (only when the runtime's part succeeded: otherwise
    /// the container list is not known to be true), and what no image or lease references
    /// (a pull or removal a crash cut short) leaves the store before image calls answer.
    async fn reconcile_images(&self, containers_known: bool) -> anyhow::Result<()> {
        let restored = self.images.recover().await?;
        if restored > 0 {
            tracing::info!(restored, "snapshots unpacked again after a reboot");
        }
        if containers_known {
            // Leases of containers that no longer exist would pin their snapshots forever.
            let containers: HashSet<String> = self
                .runtime
                .list_containers(None)
                .into_iter()
                .map(|c| c.id)
                .collect();
            for (holder, _) in self.images.leases()? {
                if !containers.contains(&holder) {
                    self.images.remove_lease(&holder)?;
                }
            }
        }
        let swept = self.images.sweep().await?;
        if swept != berth_imageservice::GcReport::default() {
            tracing::info!(?swept, "left-overs of interrupted pulls and removals swept");
        }
        Ok(())
    }

    /// In the background: empties the snapshot trash the images' part swept into, or, when
    /// that part failed before its sweep, collects the garbage whole.
    fn collect_garbage(&self, swept: bool) {
        let images = self.images.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let done = if swept {
                images.empty_trash().await.map(|()| None)
            } else {
                images.gc().await.map(Some)
            };
            match done {
                Ok(report) => tracing::info!(?report, "image garbage collected"),
                Err(e) => {
                    tracing::warn!(error = %e, "image garbage collection failed");
                    metrics.error(ErrorKind::ImageGc);
                }
            }
        });
    }

    /// The metrics exposition, with pods, containers and monitors counted now.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(&self.runtime.census())
    }

    /// Why the runtime is not ready yet, or `None` once the runtime's part of
    /// reconciliation is done and no part failed.
    pub fn not_ready_reason(&self) -> Option<(&'static str, String)> {
        let r = self.reconciled.borrow();
        let failed = [&r.runtime, &r.network, &r.images]
            .into_iter()
            .find_map(|s| match s {
                Stage::Failed(message) => Some(message.clone()),
                _ => None,
            });
        match (failed, &r.runtime) {
            (Some(message), _) => Some(("ReconcileFailed", message)),
            (None, Stage::Pending) => Some((
                "Reconciling",
                "berth is reconciling its records with the kernel after start".into(),
            )),
            (None, _) => None,
        }
    }

    /// Waits until the call may run: until the parts of reconciliation it `needs` are
    /// done, bounded by the client's `timeout` (its `grpc-timeout`). A deadline that passes
    /// meanwhile is `DeadlineExceeded` naming what was awaited (the client's own timer
    /// would say DeadlineExceeded a moment later anyway, without the reason); a part that
    /// failed is `Unavailable` with its reason, since waiting longer would not help.
    pub async fn ready_for(
        &self,
        needs: Needs,
        method: &str,
        timeout: Option<Duration>,
    ) -> Result<(), Status> {
        if needs == Needs::Nothing {
            return Ok(());
        }
        let mut rx = self.reconciled.subscribe();
        let wait = rx.wait_for(|r| needs.verdict(r).is_some());
        let verdict = match timeout {
            None => wait.await.map(|r| needs.verdict(&r)),
            Some(t) => match tokio::time::timeout(t.saturating_sub(DEADLINE_MARGIN), wait).await {
                Ok(r) => r.map(|r| needs.verdict(&r)),
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "{method}: the client's deadline of {t:?} passed while berth was still \
                         reconciling {} with the kernel after start",
                        needs.what()
                    )));
                }
            },
        };
        match verdict {
            Ok(Some(Ok(()))) => Ok(()),
            Ok(Some(Err(message))) => Err(Status::unavailable(format!("{method}: {message}"))),
            Ok(None) | Err(_) => Err(Status::unavailable(format!(
                "{method}: berth is shutting down"
            ))),
        }
    }

    /// The configuration in force, as `Status(verbose)` reports it.
    pub fn effective_config(&self) -> Config {
        let mut config = self.config.clone();
        config.network.pod_cidr_v6 = None;
        for cidr in self.network.pod_cidrs() {
            if cidr.is_ipv6() {
                config.network.pod_cidr_v6 = Some(cidr);
            } else {
                config.network.pod_cidr = cidr;
            }
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(runtime: Stage, images: Stage) -> Reconciliation {
        Reconciliation {
            runtime,
            network: Stage::Done,
            images,
        }
    }

    #[test]
    fn each_call_waits_for_the_parts_it_needs() {
        use Stage::*;
        let failed = || Failed("start-up reconciliation of images failed: disk".into());
        // Nothing pending blocks Version and Status.
        assert_eq!(
            Needs::Nothing.verdict(&parts(Pending, Pending)),
            Some(Ok(()))
        );
        // Reads wait for pods and containers only.
        assert_eq!(Needs::Runtime.verdict(&parts(Pending, Pending)), None);
        assert_eq!(Needs::Runtime.verdict(&parts(Done, Pending)), Some(Ok(())));
        assert_eq!(Needs::Runtime.verdict(&parts(Done, failed())), Some(Ok(())));
        // Image reads wait for the images' part.
        assert_eq!(Needs::Images.verdict(&parts(Done, Pending)), None);
        assert_eq!(Needs::Images.verdict(&parts(Done, Done)), Some(Ok(())));
        // Changes wait for both, and a failure of either is final at once.
        assert_eq!(Needs::Everything.verdict(&parts(Done, Pending)), None);
        assert_eq!(Needs::Everything.verdict(&parts(Done, Done)), Some(Ok(())));
        // Changes wait for the networks too; reads and image reads do not.
        let networks_pending = Reconciliation {
            runtime: Done,
            network: Pending,
            images: Done,
        };
        assert_eq!(Needs::Everything.verdict(&networks_pending), None);
        assert_eq!(Needs::Runtime.verdict(&networks_pending), Some(Ok(())));
        assert_eq!(Needs::Images.verdict(&networks_pending), Some(Ok(())));
        assert!(matches!(
            Needs::Everything.verdict(&parts(Failed("x".into()), Pending)),
            Some(Err(m)) if m == "x"
        ));
        assert!(matches!(
            Needs::Images.verdict(&parts(Done, failed())),
            Some(Err(m)) if m.contains("disk")
        ));
    }

    #[tokio::test]
    async fn reads_wait_for_the_runtime_part_within_the_deadline_and_status_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::new(Config::in_dir(dir.path()), Store::open(dir.path()).unwrap()).unwrap();
        assert_eq!(node.not_ready_reason().unwrap().0, "Reconciling");
        node.ready_for(Needs::Nothing, "Version", None)
            .await
            .unwrap();
        let started = Instant::now();
        let err = node
            .ready_for(
                Needs::Runtime,
                "ListPodSandbox",
                Some(Duration::from_millis(60)),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
        assert!(
            err.message().contains("ListPodSandbox") && err.message().contains("reconciling"),
            "{err:?}"
        );
        // It gave up only near the deadline (its answer comes 5 ms before it, ahead of the
        // deadline layer's, which cannot say why).
        assert!(started.elapsed() >= Duration::from_millis(50));

        // A read waiting without a deadline runs once the runtime's part is done, while
        // an image read still waits for the images' part.
        let waiting = tokio::spawn({
            let node = node.clone();
            async move { node.ready_for(Needs::Runtime, "ListContainers", None).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        node.reconciled.send_modify(|r| r.runtime = Stage::Done);
        waiting.await.unwrap().unwrap();
        assert_eq!(node.not_ready_reason(), None);
        let err = node
            .ready_for(Needs::Images, "ListImages", Some(Duration::from_millis(30)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);

        // A part that failed fails the calls that need it, and Status says so.
        node.reconciled
            .send_modify(|r| r.images = Stage::Failed("images broke".into()));
        let err = node
            .ready_for(Needs::Everything, "CreateContainer", None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert_eq!(err.message(), "CreateContainer: images broke");
        assert_eq!(node.not_ready_reason().unwrap().0, "ReconcileFailed");
    }

    #[tokio::test]
    async fn the_systemd_driver_is_built_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::in_dir(dir.path());
        config.cgroup.driver = crate::config::CgroupDriver::Systemd;
        let node = Node::new(config, Store::open(dir.path()).unwrap()).unwrap();
        let reply = crate::runtime_info::runtime_config(&node, Default::default())
            .await
            .unwrap();
        assert_eq!(
            reply.linux.unwrap().cgroup_driver,
            k8s_cri::v1::CgroupDriver::Systemd as i32
        );
    }

    #[test]
    fn kubelet_cidrs_show_in_the_effective_config() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::new(Config::in_dir(dir.path()), Store::open(dir.path()).unwrap()).unwrap();
        assert_eq!(
            node.effective_config().network.pod_cidr.to_string(),
            "10.88.0.0/16"
        );
        node.network
            .set_pod_cidr("10.244.3.0/24,fd00:3::/64")
            .unwrap();
        let config = node.effective_config();
        assert_eq!(config.network.pod_cidr.to_string(), "10.244.3.0/24");
        assert_eq!(
            config.network.pod_cidr_v6.unwrap().to_string(),
            "fd00:3::/64"
        );
    }
}
