//! CNI mode: pods are wired by the standard CNI plugins configured in `cni_conf_dir`.
//!
//! Each pod's attachment (the config list used, its namespace, arguments, capabilities
//! and the ADD result) is stored in the `cni_attachments` table before the first plugin
//! runs, so DEL runs with the same config and `prevResult` after a daemon crash or a
//! config change, as the CNI spec asks.

mod conf;
mod exec;
mod result;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::cidr::Cidr;
use crate::config::NetworkConfig;
use crate::error::Error;
use crate::ipam;
use crate::link;
use crate::netns;
use crate::types::{PodNetworkRequest, PodNetworkStatus};

use conf::{ConfList, V0_4_0, V1_1_0};
use exec::{ContainerEnv, Invocation};

const ATTACHMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("cni_attachments");
const IFNAME: &str = "eth0";

/// What DEL and CHECK need of one pod's ADD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Attachment {
    pod_id: String,
    conf: ConfList,
    netns: PathBuf,
    ifname: String,
    args: String,
    runtime_config: Map<String, Value>,
    result: Option<Value>,
}

impl Attachment {
    /// The invocation of `plugin` for `command` on this pod's attachment.
    fn invocation<'a>(
        &'a self,
        plugin: &'a str,
        command: &'a str,
        netns: &'a str,
        cni_path: &'a str,
        stdin: &'a Value,
    ) -> Invocation<'a> {
        Invocation {
            plugin,
            command,
            container: Some(ContainerEnv {
                container_id: &self.pod_id,
                netns,
                ifname: &self.ifname,
                args: &self.args,
            }),
            cni_path,
            stdin,
        }
    }
}

/// The CNI backend.
#[derive(Debug)]
pub(crate) struct Plugins {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
    timeout: Duration,
    db: Arc<Database>,
    node_ns: OwnedFd,
    ip_ranges: RwLock<Vec<Cidr>>,
}

fn cni_args(req: &PodNetworkRequest) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        req.namespace, req.name, req.pod_id, req.uid
    )
}

/// The values of the capabilities Berth supplies; each plugin gets those it declares.
fn runtime_config(req: &PodNetworkRequest, ip_ranges: &[Cidr]) -> Map<String, Value> {
    let mut rc = Map::new();
    let ports: Vec<Value> = req
        .port_mappings
        .iter()
        .map(|m| {
            json!({
                "hostPort": m.host_port,
                "containerPort": m.container_port,
                "protocol": m.protocol.as_str(),
                "hostIP": m.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            })
        })
        .collect();
    rc.insert("portMappings".into(), Value::Array(ports));
    if let Some(d) = &req.dns {
        rc.insert(
            "dns".into(),
            json!({"servers": d.servers, "searches": d.searches, "options": d.options}),
        );
    }
    if let Some(b) = &req.bandwidth {
        rc.insert(
            "bandwidth".into(),
            json!({
                "ingressRate": b.ingress_rate,
                "ingressBurst": b.ingress_burst,
                "egressRate": b.egress_rate,
                "egressBurst": b.egress_burst,
            }),
        );
    }
    if !ip_ranges.is_empty() {
        let ranges: Vec<Value> = ip_ranges
            .iter()
            .map(|c| json!([{ "subnet": c.to_string() }]))
            .collect();
        rc.insert("ipRanges".into(), Value::Array(ranges));
    }
    rc
}

impl Plugins {
    /// Prepares the backend in the calling thread's namespace (the node's), with the pod
    /// CIDRs kubelet last sent (kept in the database) as `ipRanges`. The config directory
    /// is read on every setup, as it may change at any time.
    pub(crate) fn open(config: &NetworkConfig, db: Arc<Database>) -> Result<Plugins, Error> {
        let node_ns = netns::current().map_err(Error::io("open the node network namespace"))?;
        let kubelet_cidrs = match ipam::get_meta(&db, ipam::META_PENDING_POD_CIDRS)? {
            Some(s) => Some(s),
            None => ipam::get_meta(&db, ipam::META_POD_CIDRS)?,
        };
        let ip_ranges = kubelet_cidrs
            .as_deref()
            .map(crate::builtin::parse_pod_cidrs)
            .transpose()?
            .unwrap_or_default();
        Ok(Plugins {
            conf_dir: config.cni_conf_dir.clone(),
            bin_dirs: config.cni_bin_dirs.clone(),
            timeout: Duration::from_secs(config.cni_plugin_timeout_seconds.max(1)),
            db,
            node_ns,
            ip_ranges: RwLock::new(ip_ranges),
        })
    }

    /// Sets the `ipRanges` capability value (from UpdateRuntimeConfig).
    pub(crate) fn set_ip_ranges(&self, cidrs: Vec<Cidr>) {
        *self.ip_ranges.write().unwrap_or_else(|p| p.into_inner()) = cidrs;
    }

    fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Loads the current config and checks that its plugins exist.
    fn load(&self) -> Result<(ConfList, Vec<PathBuf>), Error> {
        let conf = ConfList::load_dir(&self.conf_dir)?;
        let bins = (0..conf.plugins.len())
            .map(|i| exec::find_plugin(&self.bin_dirs, conf.plugin_type(i)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((conf, bins))
    }

    /// `Ok` when a valid config exists and all its plugins are installed.
    pub(crate) fn ready(&self) -> Result<(), String> {
        self.load()
            .map(|_| ())
            .map_err(|e| format!("cni plugin not initialized: {e}"))
    }

    /// Runs STATUS on each plugin of a 1.1.0+ config (others have no STATUS).
    pub(crate) async fn status_check(&self) -> Result<(), Error> {
        let (conf, bins) = self.load()?;
        if !conf.version().at_least(V1_1_0) {
            return Ok(());
        }
        let cni_path = self.cni_path();
        for (i, bin) in bins.iter().enumerate() {
            let stdin = conf.plugin_stdin(i, None, &Map::new());
            let inv = Invocation {
                plugin: conf.plugin_type(i),
                command: "STATUS",
                container: None,
                cni_path: &cni_path,
                stdin: &stdin,
            };
            exec::run(bin, &inv, self.timeout, self.node_ns.as_raw_fd()).await?;
        }
        Ok(())
    }

    fn get(&self, pod_id: &str) -> Result<Option<Attachment>, Error> {
        let txn = self.db.begin_read()?;
        let Some(t) = ipam::open_read(&txn, ATTACHMENTS)? else {
            return Ok(None);
        };
        match t.get(pod_id)? {
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(|source| Error::Corrupt {
                    key: format!("cni_attachments/{pod_id}"),
                    source,
                }),
            None => Ok(None),
        }
    }

    fn list(&self) -> Result<Vec<Attachment>, Error> {
        let txn = self.db.begin_read()?;
        let Some(t) = ipam::open_read(&txn, ATTACHMENTS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|source| Error::Corrupt {
                    key: format!("cni_attachments/{}", k.value()),
                    source,
                })?,
            );
        }
        Ok(out)
    }

    fn put(&self, a: &Attachment) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(ATTACHMENTS)?;
            let bytes = serde_json::to_vec(a).expect("attachments serialize");
            t.insert(a.pod_id.as_str(), bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    fn remove(&self, pod_id: &str) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(ATTACHMENTS)?;
            t.remove(pod_id)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Whether the pod was set up by CNI plugins.
    pub(crate) fn has(&self, pod_id: &str) -> Result<bool, Error> {
        Ok(self.get(pod_id)?.is_some())
    }

    /// The pod's addresses from its stored ADD result.
    pub(crate) fn status(&self, pod_id: &str) -> Result<Option<PodNetworkStatus>, Error> {
        let Some(a) = self.get(pod_id)? else {
            return Ok(None);
        };
        let Some(r) = &a.result else { return Ok(None) };
        let parsed = result::parse(r).unwrap_or_default();
        Ok(Some(PodNetworkStatus {
            ips: result::pod_ips(&parsed, &a.ifname),
            interface: a.ifname,
        }))
    }

    /// ADD: runs the config's plugins in order, chaining results. On failure the pod is
    /// deleted from the network again (DEL) and the first error returned.
    pub(crate) async fn setup(&self, req: &PodNetworkRequest) -> Result<PodNetworkStatus, Error> {
        req.validate()?;
        let pod_ns = netns::open_pod(req, &self.node_ns)?;
        let (conf, bins) = self.load()?;
        let ip_ranges = self
            .ip_ranges
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut att = Attachment {
            pod_id: req.pod_id.clone(),
            conf,
            netns: req.netns.clone(),
            ifname: IFNAME.to_string(),
            args: cni_args(req),
            runtime_config: runtime_config(req, &ip_ranges),
            result: None,
        };
        self.put(&att)?;
        let added = self.add(&att, &bins).await;
        let result = match added {
            Ok(r) => r,
            Err(e) => {
                if let Err(undo) = self.del(&att, None).await {
                    tracing::warn!(pod = %req.pod_id, error = %undo, "CNI DEL after a failed ADD");
                } else {
                    self.remove(&req.pod_id)?;
                }
                return Err(e);
            }
        };
        att.result = result.clone();
        self.put(&att)?;
        // Containers expect lo up; a config without the loopback plugin leaves it down.
        netns::run_in_pod(&req.pod_id, &req.netns, pod_ns.as_fd(), || {
            link::loopback_up(&mut link::pod_socket()?)
        })?;
        let parsed = match &result {
            Some(r) => result::parse(r).map_err(|reason| Error::CniResult {
                plugin: att.conf.plugin_type(att.conf.plugins.len() - 1).to_string(),
                command: "ADD".into(),
                reason,
            })?,
            None => Default::default(),
        };
        Ok(PodNetworkStatus {
            ips: result::pod_ips(&parsed, IFNAME),
            interface: IFNAME.to_string(),
        })
    }

    async fn add(&self, att: &Attachment, bins: &[PathBuf]) -> Result<Option<Value>, Error> {
        let cni_path = self.cni_path();
        let netns = att.netns.to_string_lossy();
        let mut prev: Option<Value> = None;
        for (i, bin) in bins.iter().enumerate() {
            let plugin = att.conf.plugin_type(i);
            let stdin = att.conf.plugin_stdin(i, prev.as_ref(), &att.runtime_config);
            let inv = att.invocation(plugin, "ADD", &netns, &cni_path, &stdin);
            let out = exec::run(bin, &inv, self.timeout, self.node_ns.as_raw_fd()).await?;
            let out = out.ok_or_else(|| Error::CniResult {
                plugin: plugin.into(),
                command: "ADD".into(),
                reason: "no output".into(),
            })?;
            result::parse(&out).map_err(|reason| Error::CniResult {
                plugin: plugin.into(),
                command: "ADD".into(),
                reason,
            })?;
            prev = Some(out);
        }
        Ok(prev)
    }

    /// DEL in reverse order with the stored config, result and arguments.
    async fn del(&self, att: &Attachment, netns: Option<&Path>) -> Result<(), Error> {
        let cni_path = self.cni_path();
        let path = netns.unwrap_or(&att.netns);
        // A namespace that is gone is passed as empty: plugins then only free what they hold.
        let netns = if path.exists() {
            path.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        let prev = if att.conf.version().at_least(V0_4_0) {
            att.result.as_ref()
        } else {
            None
        };
        let mut first_err = None;
        for i in (0..att.conf.plugins.len()).rev() {
            let plugin = att.conf.plugin_type(i);
            let bin = match exec::find_plugin(&self.bin_dirs, plugin) {
                Ok(b) => b,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            let stdin = att.conf.plugin_stdin(i, prev, &att.runtime_config);
            let inv = att.invocation(plugin, "DEL", &netns, &cni_path, &stdin);
            // Every plugin gets its DEL even if an earlier one failed: each frees its own.
            if let Err(e) = exec::run(&bin, &inv, self.timeout, self.node_ns.as_raw_fd()).await {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// DEL for the pod; its record goes only when every plugin succeeded, so a failed
    /// teardown is retried by the next StopPodSandbox or by reconcile.
    pub(crate) async fn teardown(&self, pod_id: &str, netns: Option<&Path>) -> Result<(), Error> {
        let Some(att) = self.get(pod_id)? else {
            return Ok(());
        };
        self.del(&att, netns).await?;
        self.remove(pod_id)
    }

    /// CHECK with the stored result (0.4.0 and later, unless `disableCheck`).
    pub(crate) async fn check(&self, pod_id: &str) -> Result<(), Error> {
        let Some(att) = self.get(pod_id)? else {
            return Err(Error::InvalidRequest(format!(
                "pod {pod_id} has no network"
            )));
        };
        if !att.conf.version().at_least(V0_4_0) || att.conf.disable_check {
            return Ok(());
        }
        let cni_path = self.cni_path();
        let netns = att.netns.to_string_lossy();
        for i in 0..att.conf.plugins.len() {
            let plugin = att.conf.plugin_type(i);
            let bin = exec::find_plugin(&self.bin_dirs, plugin)?;
            let stdin = att
                .conf
                .plugin_stdin(i, att.result.as_ref(), &att.runtime_config);
            let inv = att.invocation(plugin, "CHECK", &netns, &cni_path, &stdin);
            exec::run(&bin, &inv, self.timeout, self.node_ns.as_raw_fd()).await?;
        }
        Ok(())
    }

    /// DEL for attachments of pods not in `live`; then GC (1.1.0 and later, unless
    /// `disableGC`) with the remaining attachments as the valid ones.
    pub(crate) async fn reconcile(&self, live: &[String]) -> Result<(), Error> {
        let mut first_err = None;
        for att in self.list()? {
            if !live.contains(&att.pod_id) {
                tracing::info!(pod = %att.pod_id, "CNI DEL for a pod that no longer exists");
                if let Err(e) = self.teardown(&att.pod_id, None).await {
                    tracing::warn!(pod = %att.pod_id, error = %e, "CNI DEL during reconcile");
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Ok((conf, bins)) = self.load()
            && conf.version().at_least(V1_1_0)
            && !conf.disable_gc
        {
            let valid: Vec<Value> = self
                .list()?
                .iter()
                .filter(|a| a.conf.name == conf.name)
                .map(|a| json!({"containerID": a.pod_id, "ifname": a.ifname}))
                .collect();
            let cni_path = self.cni_path();
            for (i, bin) in bins.iter().enumerate() {
                let mut stdin = conf.plugin_stdin(i, None, &Map::new());
                stdin["cni.dev/valid-attachments"] = Value::Array(valid.clone());
                let inv = Invocation {
                    plugin: conf.plugin_type(i),
                    command: "GC",
                    container: None,
                    cni_path: &cni_path,
                    stdin: &stdin,
                };
                if let Err(e) = exec::run(bin, &inv, self.timeout, self.node_ns.as_raw_fd()).await {
                    tracing::warn!(error = %e, "CNI GC");
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
