//! The node: everything the CRI handlers share, built once at start.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tonic::Status;

use berth_cni::Network;
use berth_imageservice::ImageStore;

use crate::config::Config;
use crate::store::Store;
use crate::streaming::Streaming;

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
    /// False until start-up reconciliation has finished.
    reconciled: watch::Sender<bool>,
    /// When the daemon started, for uptime in verbose status.
    pub started: Instant,
    /// The exec/attach/port-forward streaming server's tokens, backend and URL.
    pub streaming: Streaming,
}

impl Node {
    /// Builds the node from its configuration and opened store. Does no work that grows
    /// with the number of pods or images: that is [`Node::reconcile`]'s, after serving.
    pub fn new(config: Config, store: Store) -> anyhow::Result<Arc<Node>> {
        let network = Network::open(config.network.clone(), store.db())?;
        let images = ImageStore::open(&config.root, store.db(), config.registry.clone())?;
        let (reconciled, _) = watch::channel(false);
        Ok(Arc::new(Node {
            config,
            store,
            network,
            images,
            reconciled,
            started: Instant::now(),
            streaming: Streaming::new(),
        }))
    }

    /// Brings records and the kernel into agreement after a start, then lets mutating RPCs
    /// run. Runs in the background while the socket already serves.
    pub async fn reconcile(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "reconciled"
        );
        self.reconciled.send_replace(true);
        Ok(())
    }

    /// Whether start-up reconciliation has finished.
    pub fn is_reconciled(&self) -> bool {
        *self.reconciled.borrow()
    }

    /// Waits until reconciliation has finished; RPCs that change pods, containers or images
    /// call this first.
    pub async fn wait_reconciled(&self) -> Result<(), Status> {
        let mut rx = self.reconciled.subscribe();
        rx.wait_for(|done| *done)
            .await
            .map(|_| ())
            .map_err(|_| Status::unavailable("berth is shutting down"))
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

    #[test]
    fn kubelet_cidrs_show_in_the_effective_config() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::new(Config::default(), Store::open(dir.path()).unwrap()).unwrap();
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
