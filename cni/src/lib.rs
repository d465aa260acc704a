//! Pod networking: Berth's built-in bridge network and the CNI plugin executor.
//!
//! [`Network`] is the one entry point the daemon uses: [`Network::setup`] when a pod
//! sandbox starts, [`Network::teardown`] when it stops, [`Network::reconcile`] at daemon
//! start, [`Network::ready`] for the `NetworkReady` condition. Which backend wires pods
//! is [`NetworkConfig::mode`]; teardown finds a pod's backend from its record, so pods
//! set up before a mode change are still cleaned.

pub mod cidr;
pub mod config;
pub mod error;
pub mod types;

mod builtin;
mod ipam;
mod link;
mod netdev;
mod netlink;
mod netns;
mod nft;
mod plugins;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

pub use builtin::{VETH_PREFIX, veth_name};
pub use cidr::{Cidr, CidrError};
pub use config::{NetworkConfig, NetworkMode};
pub use error::{Class, Classify, Error};
pub use netlink::NetlinkError;
pub use types::{Bandwidth, DnsConfig, PodNetworkRequest, PodNetworkStatus, PortMapping, Protocol};

/// The node's pod network.
#[derive(Debug)]
pub struct Network {
    config: NetworkConfig,
    builtin: builtin::Builtin,
    plugins: plugins::Plugins,
}

fn join_err(e: tokio::task::JoinError) -> Error {
    Error::Io {
        what: "network worker thread".into(),
        source: std::io::Error::other(e.to_string()),
    }
}

impl Network {
    /// Opens the network of the calling thread's network namespace (the node's) with the
    /// daemon's database. Changes nothing on the node.
    pub fn open(config: NetworkConfig, db: Arc<redb::Database>) -> Result<Arc<Network>, Error> {
        let builtin = builtin::Builtin::open(config.clone(), db.clone())?;
        let plugins = plugins::Plugins::open(&config, db)?;
        Ok(Arc::new(Network {
            config,
            builtin,
            plugins,
        }))
    }

    /// The configuration in force.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Gives the pod its network (RunPodSandbox); on error nothing of it is left.
    pub async fn setup(
        self: &Arc<Self>,
        req: &PodNetworkRequest,
    ) -> Result<PodNetworkStatus, Error> {
        match self.config.mode {
            NetworkMode::Builtin => {
                let this = Arc::clone(self);
                let req = req.clone();
                tokio::task::spawn_blocking(move || this.builtin.setup(&req))
                    .await
                    .map_err(join_err)?
            }
            NetworkMode::Cni => self.plugins.setup(req).await,
        }
    }

    /// Removes the pod's network (StopPodSandbox). Idempotent: a pod without network, or
    /// whose namespace is already gone, is fine. `netns` overrides the recorded path.
    pub async fn teardown(
        self: &Arc<Self>,
        pod_id: &str,
        netns: Option<&Path>,
    ) -> Result<(), Error> {
        if self.plugins.has(pod_id)? {
            self.plugins.teardown(pod_id, netns).await?;
        }
        let this = Arc::clone(self);
        let pod_id = pod_id.to_string();
        tokio::task::spawn_blocking(move || this.builtin.teardown(&pod_id))
            .await
            .map_err(join_err)?
    }

    /// Moves the node's interface `host_name` into the pod's network namespace `netns` as
    /// `pod_name` (a CDI network device); already there is fine. Refused for `lo`, the
    /// built-in bridge and a pod on the host network.
    pub async fn give_net_device(
        &self,
        netns: &Path,
        host_name: &str,
        pod_name: &str,
    ) -> Result<(), Error> {
        let (netns, host, name) = (netns.to_owned(), host_name.to_owned(), pod_name.to_owned());
        let bridge = self.config.bridge.clone();
        tokio::task::spawn_blocking(move || netdev::move_in(&netns, &host, &name, &bridge))
            .await
            .map_err(join_err)?
    }

    /// Moves the pod's interface `pod_name` back to the node as `host_name`, before the
    /// pod's namespace goes; a namespace or interface already gone is fine.
    pub async fn return_net_device(
        &self,
        netns: &Path,
        pod_name: &str,
        host_name: &str,
    ) -> Result<(), Error> {
        let (netns, host, name) = (netns.to_owned(), host_name.to_owned(), pod_name.to_owned());
        tokio::task::spawn_blocking(move || netdev::move_out(&netns, &name, &host))
            .await
            .map_err(join_err)?
    }

    /// The pod's network as set up (for PodSandboxStatus, also after a daemon restart).
    pub fn pod_status(&self, pod_id: &str) -> Result<Option<PodNetworkStatus>, Error> {
        if let Some(s) = self.plugins.status(pod_id)? {
            return Ok(Some(s));
        }
        self.builtin.status(pod_id)
    }

    /// Verifies the pod's network is still in place (CNI CHECK in `cni` mode).
    pub async fn check(self: &Arc<Self>, pod_id: &str) -> Result<(), Error> {
        if self.plugins.has(pod_id)? {
            return self.plugins.check(pod_id).await;
        }
        let this = Arc::clone(self);
        let pod_id = pod_id.to_string();
        tokio::task::spawn_blocking(move || this.builtin.check(&pod_id))
            .await
            .map_err(join_err)?
    }

    /// `Ok` when pods can be networked; else the message for `NetworkReady=false`.
    pub fn ready(&self) -> Result<(), String> {
        match self.config.mode {
            NetworkMode::Builtin => self.builtin.ready(),
            NetworkMode::Cni => self.plugins.ready(),
        }
    }

    /// Like [`Network::ready`], and in `cni` mode also runs the plugins' STATUS where the
    /// config's version (1.1.0 and later) has it: for the Status RPC, which may fork.
    pub async fn ready_check(self: &Arc<Self>) -> Result<(), String> {
        self.ready()?;
        if self.config.mode == NetworkMode::Cni {
            self.plugins
                .status_check()
                .await
                .map_err(|e| format!("cni plugin not ready: {e}"))?;
        }
        Ok(())
    }

    /// Releases the network of every pod not in `live_pod_ids` and cleans kernel objects
    /// no pod owns (daemon start). In `cni` mode also runs the plugins' GC where the
    /// config's version has it.
    pub async fn reconcile(self: &Arc<Self>, live_pod_ids: &[String]) -> Result<(), Error> {
        self.plugins.reconcile(live_pod_ids).await?;
        let this = Arc::clone(self);
        let live: Vec<String> = live_pod_ids.to_vec();
        tokio::task::spawn_blocking(move || {
            let live: HashSet<&str> = live.iter().map(String::as_str).collect();
            this.builtin.reconcile(&live)
        })
        .await
        .map_err(join_err)?
    }

    /// Takes the pod CIDR(s) from UpdateRuntimeConfig (`"10.244.1.0/24"` or a dual-stack
    /// `"10.244.1.0/24,fd00:1::/64"`). The built-in network switches at once when no pod
    /// holds an address, else when the last pod of the current CIDR is gone; in `cni` mode
    /// the CIDRs are handed to plugins as the `ipRanges` capability.
    pub fn set_pod_cidr(&self, cidrs: &str) -> Result<(), Error> {
        let parsed = builtin::parse_pod_cidrs(cidrs)?;
        self.plugins.set_ip_ranges(parsed.clone());
        self.builtin.set_pod_cidrs(parsed)
    }

    /// The pod CIDRs last asked for (IPv4 first): kubelet's if it sent any, else the
    /// configured ones. A change still waiting for the pods of the old CIDR counts.
    pub fn pod_cidrs(&self) -> Vec<Cidr> {
        let pools = self.builtin.pools();
        pools.pending.unwrap_or(pools.active)
    }
}
