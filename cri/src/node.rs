//! The node: everything the CRI handlers share, built once at start.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::watch;
use tonic::Status;

use berth_cni::Cidr;

use crate::config::Config;
use crate::store::Store;

/// Settings key under which the pod CIDR from kubelet's `UpdateRuntimeConfig` is kept.
pub const POD_CIDR_SETTING: &str = "pod_cidr";

/// Shared state of the daemon, handed to every handler.
pub struct Node {
    /// The configuration the daemon started with.
    pub config: Config,
    /// The metadata database.
    pub store: Store,
    /// The pod CIDR in force: kubelet's if it sent one, else the configured one.
    pod_cidr: RwLock<String>,
    /// False until start-up reconciliation has finished.
    reconciled: watch::Sender<bool>,
    /// When the daemon started, for uptime in verbose status.
    pub started: Instant,
}

impl Node {
    /// Builds the node from its configuration and opened store. Does no work that grows
    /// with the number of pods or images: that is [`Node::reconcile`]'s, after serving.
    pub fn new(config: Config, store: Store) -> anyhow::Result<Arc<Node>> {
        let pod_cidr = match store.setting(POD_CIDR_SETTING)? {
            Some(cidrs) => cidrs,
            None => configured_cidrs(&config),
        };
        let (reconciled, _) = watch::channel(false);
        Ok(Arc::new(Node {
            config,
            store,
            pod_cidr: RwLock::new(pod_cidr),
            reconciled,
            started: Instant::now(),
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

    /// The pod CIDRs in force, comma-separated as kubelet sends them.
    pub fn pod_cidr(&self) -> String {
        self.pod_cidr
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the pod CIDRs kubelet sent (already validated), durably, so they survive a
    /// restart.
    pub fn set_pod_cidr(&self, cidr: &str) -> anyhow::Result<()> {
        self.store.set_setting(POD_CIDR_SETTING, cidr)?;
        *self.pod_cidr.write().unwrap_or_else(|e| e.into_inner()) = cidr.to_owned();
        Ok(())
    }

    /// The configuration in force, as `Status(verbose)` reports it.
    pub fn effective_config(&self) -> Config {
        let mut config = self.config.clone();
        if let Ok(cidrs) = parse_cidrs(&self.pod_cidr()) {
            config.network.pod_cidr_v6 = None;
            for cidr in cidrs {
                if cidr.is_ipv6() {
                    config.network.pod_cidr_v6 = Some(cidr);
                } else {
                    config.network.pod_cidr = cidr;
                }
            }
        }
        config
    }
}

/// The configured pod CIDRs in kubelet's comma-separated form.
fn configured_cidrs(config: &Config) -> String {
    match &config.network.pod_cidr_v6 {
        Some(v6) => format!("{},{v6}", config.network.pod_cidr),
        None => config.network.pod_cidr.to_string(),
    }
}

/// Parses kubelet's pod CIDR list: one or two CIDRs, at most one per IP family.
pub fn parse_cidrs(list: &str) -> Result<Vec<Cidr>, String> {
    let cidrs = list
        .split(',')
        .map(|c| c.trim().parse::<Cidr>().map_err(|e| format!("{c:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let v6 = cidrs.iter().filter(|c| c.is_ipv6()).count();
    if v6 > 1 || cidrs.len() - v6 > 1 {
        return Err("at most one IPv4 and one IPv6 CIDR".into());
    }
    Ok(cidrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_lists_are_validated() {
        assert_eq!(parse_cidrs("10.244.1.0/24").unwrap().len(), 1);
        assert_eq!(parse_cidrs("10.244.1.0/24, fd00:10::/64").unwrap().len(), 2);
        assert!(parse_cidrs("10.244.1.0").is_err());
        assert!(parse_cidrs("10.244.1.0/33").is_err());
        assert!(parse_cidrs("nonsense/8").is_err());
        assert!(
            parse_cidrs("10.1.0.0/16,10.2.0.0/16")
                .unwrap_err()
                .contains("at most one")
        );
    }

    #[test]
    fn kubelet_cidrs_show_in_the_effective_config() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::new(Config::default(), Store::open(dir.path()).unwrap()).unwrap();
        assert_eq!(node.pod_cidr(), "10.88.0.0/16");
        node.set_pod_cidr("10.244.3.0/24,fd00:3::/64").unwrap();
        let config = node.effective_config();
        assert_eq!(config.network.pod_cidr.to_string(), "10.244.3.0/24");
        assert_eq!(
            config.network.pod_cidr_v6.unwrap().to_string(),
            "fd00:3::/64"
        );
    }
}
