//! The node: everything the CRI handlers share, built once at start.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tonic::Status;

use berth_cni::Network;
use berth_imageservice::ImageStore;

use crate::config::Config;
use crate::metrics::{ErrorKind, Metrics};
use crate::store::Store;
use crate::streaming::Streaming;

/// Where start-up reconciliation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reconciled {
    Pending,
    Done,
    Failed(String),
}

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
    reconciled: watch::Sender<Reconciled>,
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
        let images = ImageStore::open(&config.root, store.db(), config.registry.clone())?;
        let (reconciled, _) = watch::channel(Reconciled::Pending);
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
        let runtime = berth_runtime::Runtime::open(options, store.db())?;
        let streaming = Streaming::new();
        streaming.set_backend(Arc::new(
            crate::streaming::runtime_backend::RuntimeBackend::new(runtime.clone()),
        ));
        Ok(Arc::new(Node {
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

    /// Brings records and the kernel into agreement after a start, then lets mutating RPCs
    /// run. Runs in the background while the socket already serves. On failure the
    /// runtime stays not ready, with the reason, and mutating RPCs fail with it.
    pub async fn reconcile(&self) {
        let started = Instant::now();
        let state = match self.reconcile_records().await {
            Ok(()) => {
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "reconciled"
                );
                Reconciled::Done
            }
            Err(e) => {
                let message = format!("start-up reconciliation failed: {e:#}");
                tracing::error!("{message}");
                self.metrics.error(ErrorKind::Reconcile);
                Reconciled::Failed(message)
            }
        };
        self.reconciled.send_replace(state);
        self.collect_garbage();
    }

    async fn reconcile_records(&self) -> anyhow::Result<()> {
        let restored = self.images.recover().await?;
        if restored > 0 {
            tracing::info!(restored, "snapshots unpacked again after a reboot");
        }
        let pods = self.runtime.reconcile().await?;
        tracing::info!(?pods, "pods reconciled");
        // Every pod with a record keeps its network until StopPodSandbox; the rest is freed.
        let pod_ids: Vec<String> = self
            .runtime
            .list_pod_sandbox(None)
            .into_iter()
            .map(|p| p.id)
            .collect();
        self.network.reconcile(&pod_ids).await?;
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
        Ok(())
    }

    /// Removes unreferenced blobs and snapshots in the background.
    fn collect_garbage(&self) {
        let images = self.images.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            match images.gc().await {
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

    /// Why the runtime is not ready yet, or `None` when reconciliation has finished.
    pub fn not_ready_reason(&self) -> Option<(&'static str, String)> {
        match &*self.reconciled.borrow() {
            Reconciled::Pending => Some((
                "Reconciling",
                "berth is reconciling its records with the kernel after start".into(),
            )),
            Reconciled::Failed(message) => Some(("ReconcileFailed", message.clone())),
            Reconciled::Done => None,
        }
    }

    /// Waits until reconciliation has finished; RPCs that change pods, containers or images
    /// call this first.
    pub async fn wait_reconciled(&self) -> Result<(), Status> {
        let mut rx = self.reconciled.subscribe();
        let state = rx
            .wait_for(|state| *state != Reconciled::Pending)
            .await
            .map_err(|_| Status::unavailable("berth is shutting down"))?;
        match &*state {
            Reconciled::Failed(message) => Err(Status::unavailable(message.clone())),
            _ => Ok(()),
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
