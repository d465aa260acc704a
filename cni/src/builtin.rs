//! The built-in network: a bridge with the gateway addresses, one veth pair per pod, IPAM,
//! and Berth's nftables table, all over netlink from this process (nothing is forked).
//!
//! Nothing exists on the node until the first pod is set up (the bridge, its addresses,
//! the table), and all of it goes when the last pod is torn down. A pod's record is
//! written before its kernel objects, so a crash at any point leaves a record that
//! teardown or reconcile finishes.

use std::collections::HashSet;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use redb::Database;

use crate::cidr::Cidr;
use crate::config::NetworkConfig;
use crate::error::Error;
use crate::ipam::{self, PodRecord};
use crate::link::{self, VethSpec};
use crate::netlink::{NETLINK_NETFILTER, NETLINK_ROUTE, Socket};
use crate::netns;
use crate::nft;
use crate::types::{PodNetworkRequest, PodNetworkStatus};

/// Name of the pod's interface.
pub(crate) const POD_IFNAME: &str = "eth0";
/// Prefix of the host ends of pod veth pairs.
/// The prefix of every host-side pod veth the built-in network makes.
pub const VETH_PREFIX: &str = "bth";

/// The pod CIDRs in force, and those waiting for the last pod of the current ones to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pools {
    /// The networks new pods get addresses from (IPv4 first).
    pub active: Vec<Cidr>,
    /// Networks kubelet sent while pods still used `active`.
    pub pending: Option<Vec<Cidr>>,
}

/// Parses a comma-separated list of at most one IPv4 and one IPv6 pod CIDR, each large
/// enough for a gateway and pods.
pub(crate) fn parse_pod_cidrs(s: &str) -> Result<Vec<Cidr>, Error> {
    let mut out: Vec<Cidr> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let cidr: Cidr = part.parse()?;
        if ipam::usable_range(&cidr).is_none() {
            return Err(Error::CidrTooSmall(cidr));
        }
        if out.iter().any(|c| c.is_ipv6() == cidr.is_ipv6()) {
            return Err(Error::InvalidRequest(format!(
                "pod CIDRs {s:?} name two networks of one family"
            )));
        }
        out.push(cidr);
    }
    if out.is_empty() {
        return Err(Error::InvalidRequest("no pod CIDR given".into()));
    }
    out.sort_by_key(|c| c.is_ipv6());
    Ok(out)
}

fn join(cidrs: &[Cidr]) -> String {
    cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Records `cidrs` as the pod CIDRs in force, with none pending.
fn record_active(db: &Database, cidrs: &[Cidr]) -> Result<(), Error> {
    ipam::set_meta(
        db,
        &[
            (ipam::META_POD_CIDRS, Some(&join(cidrs))),
            (ipam::META_PENDING_POD_CIDRS, None),
        ],
    )
}

/// The host-side veth name of a pod: stable for a pod id, 15 bytes at most.
pub fn veth_name(pod_id: &str) -> String {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pod_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{VETH_PREFIX}{:012x}", h >> 16)
}

/// A locally administered MAC derived from the gateway address, fixed for the bridge.
pub(crate) fn bridge_mac(pools: &[Cidr]) -> [u8; 6] {
    let mut mac = [0x02, 0x62, 0, 0, 0, 0];
    if let Some(IpAddr::V4(g)) = pools.iter().find(|c| !c.is_ipv6()).and_then(|c| c.nth(1)) {
        mac[2..].copy_from_slice(&g.octets());
    } else if let Some(IpAddr::V6(g)) = pools.first().and_then(|c| c.nth(1)) {
        mac[2..].copy_from_slice(&g.octets()[12..]);
    }
    mac
}

/// Checks the settings the kernel would refuse later, with the key's name.
pub(crate) fn validate_config(config: &NetworkConfig) -> Result<(), Error> {
    let b = &config.bridge;
    if b.is_empty()
        || b.len() > 15
        || b.contains(['/', ':'])
        || b.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::InvalidRequest(format!(
            "network.bridge {b:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"
        )));
    }
    if b.starts_with(VETH_PREFIX) || b == "eth0" || b == "lo" {
        return Err(Error::InvalidRequest(format!(
            "network.bridge {b:?} collides with Berth's other interface names"
        )));
    }
    if !(576..=65535).contains(&config.mtu) {
        return Err(Error::InvalidRequest(format!(
            "network.mtu {} is outside 576..=65535",
            config.mtu
        )));
    }
    Ok(())
}

/// The built-in backend.
#[derive(Debug)]
pub(crate) struct Builtin {
    config: NetworkConfig,
    db: Arc<Database>,
    node_ns: OwnedFd,
    route: Mutex<Socket>,
    nft: Mutex<Socket>,
    /// Serializes creating and removing the bridge and table with allocating and releasing
    /// addresses, so the last pod's teardown cannot remove the bridge under a new pod.
    infra: Mutex<bool>,
    pools: RwLock<Pools>,
    /// Whether kubelet has ever sent a pod CIDR (kept in the database as the CIDRs in force
    /// or pending); see `NetworkConfig::await_kubelet_pod_cidr`.
    kubelet_cidr: AtomicBool,
    /// Why the kernel cannot serve the built-in network, found at start.
    unusable: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a socket leaves it usable: the next exchange filters by sequence.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Builtin {
    /// Opens the netlink sockets in the calling thread's network namespace (the node's).
    pub(crate) fn open(config: NetworkConfig, db: Arc<Database>) -> Result<Builtin, Error> {
        validate_config(&config)?;
        let node_ns = netns::current().map_err(Error::io("open the node network namespace"))?;
        let route = Socket::open(NETLINK_ROUTE).map_err(Error::io("open an rtnetlink socket"))?;
        let mut nft_sock =
            Socket::open(NETLINK_NETFILTER).map_err(Error::io("open an nfnetlink socket"))?;
        let unusable = nft::probe(&mut nft_sock)
            .err()
            .map(|e| format!("nf_tables is not usable: {e}"));
        let recorded = ipam::get_meta(&db, ipam::META_POD_CIDRS)?;
        // Only CIDRs from kubelet are ever recorded (the configured ones never are).
        let mut kubelet_cidr = recorded.is_some();
        let mut active = match recorded {
            Some(s) => parse_pod_cidrs(&s)?,
            None => {
                let mut v = vec![config.pod_cidr];
                v.extend(config.pod_cidr_v6);
                v.iter().try_for_each(|c| match ipam::usable_range(c) {
                    Some(_) => Ok(()),
                    None => Err(Error::CidrTooSmall(*c)),
                })?;
                v
            }
        };
        let mut pending = match ipam::get_meta(&db, ipam::META_PENDING_POD_CIDRS)? {
            Some(s) => Some(parse_pod_cidrs(&s)?),
            None => None,
        };
        kubelet_cidr |= pending.is_some();
        if pending.is_some() && ipam::count(&db)? == 0 {
            active = pending.take().expect("checked");
            record_active(&db, &active)?;
        }
        Ok(Builtin {
            config,
            db,
            node_ns,
            route: Mutex::new(route),
            nft: Mutex::new(nft_sock),
            infra: Mutex::new(false),
            pools: RwLock::new(Pools { active, pending }),
            kubelet_cidr: AtomicBool::new(kubelet_cidr),
            unusable,
        })
    }

    /// `Err` with the reason when pods cannot be networked.
    pub(crate) fn ready(&self) -> Result<(), String> {
        if let Some(r) = &self.unusable {
            return Err(r.clone());
        }
        if self.config.await_kubelet_pod_cidr && !self.kubelet_cidr.load(Ordering::SeqCst) {
            return Err(
                "waiting for kubelet to send this node's pod CIDR (network.await_kubelet_pod_cidr)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The pod CIDRs in force and pending.
    pub(crate) fn pools(&self) -> Pools {
        self.pools.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes the pod CIDRs kubelet sent: at once when no pod holds an address, else
    /// when the last pod of the current networks is gone (the bridge is rebuilt then).
    pub(crate) fn set_pod_cidrs(&self, cidrs: Vec<Cidr>) -> Result<(), Error> {
        let _infra = lock(&self.infra);
        let mut pools = self.pools.write().unwrap_or_else(|p| p.into_inner());
        if pools.active == cidrs {
            pools.pending = None;
            // Recorded even when it is the configured CIDR: kubelet sends it once, not
            // again after a restart of the daemon, and the record says it came.
            record_active(&self.db, &cidrs)?;
            self.kubelet_cidr.store(true, Ordering::SeqCst);
            return Ok(());
        }
        self.kubelet_cidr.store(true, Ordering::SeqCst);
        if ipam::count(&self.db)? == 0 {
            record_active(&self.db, &cidrs)?;
            pools.active = cidrs;
            pools.pending = None;
        } else {
            ipam::set_meta(
                &self.db,
                &[(ipam::META_PENDING_POD_CIDRS, Some(&join(&cidrs)))],
            )?;
            tracing::info!(new = %join(&cidrs), "pod CIDR change waits for the last pod of the current one");
            pools.pending = Some(cidrs);
        }
        Ok(())
    }

    /// Wires a pod: address, veth pair, `eth0` with address and default route, `lo` up,
    /// hostPort rules. Undone entirely if any step fails.
    pub(crate) fn setup(&self, req: &PodNetworkRequest) -> Result<PodNetworkStatus, Error> {
        req.validate()?;
        self.ready().map_err(Error::NotReady)?;
        let pod_ns = netns::open_pod(req, &self.node_ns)?;
        let host_veth = veth_name(&req.pod_id);
        let (record, bridge_index) = {
            let mut infra = lock(&self.infra);
            let pools = self.pools().active;
            let bridge_index = self.ensure_infra(&mut infra, &pools)?;
            let (record, existed) = ipam::allocate(
                &self.db,
                &req.pod_id,
                &pools,
                &host_veth,
                &req.netns,
                &req.port_mappings,
            )?;
            if existed {
                // A repeated setup replaces what the earlier one published.
                self.delete_rules(|owner| owner == req.pod_id)?;
            }
            (record, bridge_index)
        };
        match self.wire(&record, bridge_index, &pod_ns) {
            Ok(()) => Ok(status_of(&record)),
            Err(e) => {
                if let Err(undo) = self.teardown(&req.pod_id) {
                    tracing::warn!(pod = %req.pod_id, error = %undo, "undoing a failed pod network setup");
                }
                Err(e)
            }
        }
    }

    /// Creates the bridge (with its addresses) and the table if needed; returns the
    /// bridge's index.
    fn ensure_infra(&self, up: &mut bool, pools: &[Cidr]) -> Result<u32, Error> {
        let bridge = &self.config.bridge;
        let mut route = lock(&self.route);
        let existing = link::get(&mut route, bridge)
            .map_err(Error::netlink(format!("look up bridge {bridge}")))?;
        if *up && let Some(l) = &existing {
            return Ok(l.index);
        }
        if existing.is_none() {
            match link::create_bridge(&mut route, bridge, self.config.mtu, bridge_mac(pools)) {
                Err(e) if e.errno() != Some(link::EEXIST) => {
                    return Err(Error::netlink(format!("create bridge {bridge}"))(e));
                }
                _ => {}
            }
        }
        let index = link::get(&mut route, bridge)
            .map_err(Error::netlink(format!("look up bridge {bridge}")))?
            .ok_or_else(|| Error::Netlink {
                op: format!("create bridge {bridge}"),
                source: crate::netlink::NetlinkError::Kernel {
                    errno: link::ENODEV,
                    message: None,
                },
            })?
            .index;
        link::set_up(&mut route, index)
            .map_err(Error::netlink(format!("bring bridge {bridge} up")))?;
        for cidr in pools {
            let gw = cidr.nth(1).expect("a usable CIDR has a gateway");
            link::add_address(&mut route, index, gw, cidr.prefix()).map_err(Error::netlink(
                format!("add {gw}/{} to bridge {bridge}", cidr.prefix()),
            ))?;
        }
        drop(route);
        let has_v6 = pools.iter().any(Cidr::is_ipv6);
        let bridge_name = bridge.clone();
        netns::run_in(self.node_ns.as_fd(), move || -> std::io::Result<()> {
            // Pods reach beyond the node only if it forwards, as the CNI bridge plugin
            // also ensures; it stays on when the bridge goes (other users may rely on it).
            netns::write_sysctl("net/ipv4/ip_forward", "1")?;
            // Lets a hostPort DNATed from 127.0.0.1 leave through the bridge.
            netns::write_sysctl(&format!("net/ipv4/conf/{bridge_name}/route_localnet"), "1")?;
            if has_v6 {
                netns::write_sysctl("net/ipv6/conf/all/forwarding", "1")?;
            }
            Ok(())
        })
        .and_then(|r| r)
        .map_err(Error::io("set forwarding sysctls of the node"))?;
        nft::setup(
            &mut lock(&self.nft),
            pools,
            &self.config.non_masquerade_cidrs,
        )
        .map_err(Error::netlink(format!(
            "set up nftables table {}",
            nft::TABLE
        )))?;
        *up = true;
        Ok(index)
    }

    fn wire(&self, record: &PodRecord, bridge_index: u32, pod_ns: &OwnedFd) -> Result<(), Error> {
        let spec = VethSpec {
            host_name: &record.host_veth,
            master: bridge_index,
            peer_name: POD_IFNAME,
            peer_netns: pod_ns.as_fd(),
            mtu: self.config.mtu,
        };
        let op = || format!("create veth {} for pod {}", record.host_veth, record.pod_id);
        {
            let mut route = lock(&self.route);
            match link::create_veth(&mut route, &spec) {
                // Left by an earlier attempt for this pod: replace it.
                Err(e) if e.errno() == Some(link::EEXIST) => {
                    link::delete(&mut route, &record.host_veth).map_err(Error::netlink(op()))?;
                    link::create_veth(&mut route, &spec).map_err(Error::netlink(op()))?;
                }
                r => r.map_err(Error::netlink(op()))?,
            }
            let host = link::get(&mut route, &record.host_veth)
                .map_err(Error::netlink(op()))?
                .ok_or_else(|| {
                    Error::InvalidRequest(format!("veth {} vanished", record.host_veth))
                })?;
            link::set_hairpin(&mut route, host.index).map_err(Error::netlink(format!(
                "set hairpin mode on {}",
                record.host_veth
            )))?;
        }
        let addrs = record.addrs.clone();
        netns::run_in_pod(&record.pod_id, &record.netns, pod_ns.as_fd(), move || {
            let mut sock = link::pod_socket()?;
            link::loopback_up(&mut sock)?;
            let eth = link::get(&mut sock, POD_IFNAME)
                .map_err(Error::netlink("look up eth0 in the pod"))?
                .ok_or_else(|| {
                    Error::InvalidRequest("eth0 missing in the pod after creation".into())
                })?;
            link::set_up(&mut sock, eth.index)
                .map_err(Error::netlink("bring eth0 up in the pod"))?;
            for a in &addrs {
                link::add_address(&mut sock, eth.index, a.ip, a.prefix).map_err(Error::netlink(
                    format!("add {}/{} to eth0 in the pod", a.ip, a.prefix),
                ))?;
            }
            for a in &addrs {
                link::add_default_route(&mut sock, a.gateway, eth.index).map_err(
                    Error::netlink(format!("add default route via {} in the pod", a.gateway)),
                )?;
            }
            Ok(())
        })?;
        if !record.port_mappings.is_empty() {
            let ips: Vec<IpAddr> = record.addrs.iter().map(|a| a.ip).collect();
            let rules = nft::hostport_rules(&record.pod_id, &ips, &record.port_mappings);
            nft::add_rules(&mut lock(&self.nft), &rules).map_err(Error::netlink(format!(
                "add hostport rules of pod {}",
                record.pod_id
            )))?;
        }
        Ok(())
    }

    /// Removes everything of a pod; a pod already gone (or never set up) is fine.
    pub(crate) fn teardown(&self, pod_id: &str) -> Result<(), Error> {
        let record = ipam::get(&self.db, pod_id)?;
        let host_veth = record
            .as_ref()
            .map(|r| r.host_veth.clone())
            .unwrap_or_else(|| veth_name(pod_id));
        if record.is_some() {
            let mut infra = lock(&self.infra);
            // Under this lock no pod takes an address: when this pod holds the last one, the
            // bridge and the table go with it.
            if ipam::count(&self.db)? == 1 && ipam::get(&self.db, pod_id)?.is_some() {
                return self.teardown_last(pod_id, &host_veth, &mut infra);
            }
        }
        self.delete_veth(pod_id, &host_veth)?;
        if record.as_ref().is_some_and(|r| !r.port_mappings.is_empty()) {
            self.delete_rules(|owner| owner == pod_id)?;
        }
        if record.is_some() {
            let mut infra = lock(&self.infra);
            ipam::release(&self.db, pod_id)?;
            if ipam::count(&self.db)? == 0 {
                self.remove_infra(&mut infra)?;
            }
        }
        Ok(())
    }

    fn delete_rules(&self, doomed: impl Fn(&str) -> bool) -> Result<(), Error> {
        let mut sock = lock(&self.nft);
        let rules =
            nft::list_hostport_rules(&mut sock).map_err(Error::netlink("list hostport rules"))?;
        let handles: Vec<u64> = rules
            .iter()
            .filter(|r| {
                r.comment
                    .as_deref()
                    .and_then(nft::comment_pod)
                    .is_some_and(&doomed)
            })
            .map(|r| r.handle)
            .collect();
        nft::delete_hostport_rules(&mut sock, &handles)
            .map_err(Error::netlink("delete hostport rules"))
    }

    /// Deletes a pod's host veth (its peer in the pod goes with it); absent is fine.
    fn delete_veth(&self, pod_id: &str, host_veth: &str) -> Result<(), Error> {
        link::delete(&mut lock(&self.route), host_veth)
            .map(drop)
            .map_err(Error::netlink(format!(
                "delete veth {host_veth} of pod {pod_id}"
            )))
    }

    /// The last pod's teardown: its veth and address, the table and the bridge. The three
    /// deletions run side by side: each link deletion waits in the kernel for RCU grace
    /// periods (most of a pod stop's time), and side by side they wait once.
    fn teardown_last(&self, pod_id: &str, host_veth: &str, up: &mut bool) -> Result<(), Error> {
        let (veth, table, bridge) = std::thread::scope(|s| {
            let table = s.spawn(|| self.remove_table());
            // Its own socket: the veth's deletion holds the shared one meanwhile. Threads
            // start in their creator's network namespace, the node's, as this one is.
            let bridge = s.spawn(|| {
                let mut sock =
                    Socket::open(NETLINK_ROUTE).map_err(Error::io("open an rtnetlink socket"))?;
                self.remove_bridge(&mut sock)
            });
            let veth = self
                .delete_veth(pod_id, host_veth)
                .and_then(|()| ipam::release(&self.db, pod_id).map(drop));
            let joined = |h: std::thread::ScopedJoinHandle<'_, Result<(), Error>>| {
                h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
            };
            (veth, joined(table), joined(bridge))
        });
        veth.and(table).and(bridge)?;
        self.infra_removed(up)
    }

    /// Removes the bridge and the table (no pod needs them), then applies pending CIDRs.
    fn remove_infra(&self, up: &mut bool) -> Result<(), Error> {
        self.remove_table()?;
        self.remove_bridge(&mut lock(&self.route))?;
        self.infra_removed(up)
    }

    /// Deletes the `inet berth` table, the hostPort rules with it; absent is fine.
    fn remove_table(&self) -> Result<(), Error> {
        nft::remove(&mut lock(&self.nft)).map_err(Error::netlink(format!(
            "remove nftables table {}",
            nft::TABLE
        )))
    }

    /// Deletes the bridge on `route`; absent is fine.
    fn remove_bridge(&self, route: &mut Socket) -> Result<(), Error> {
        let bridge = &self.config.bridge;
        // As in `reconcile`: no netlink request for a bridge the kernel does not list.
        let present = link::names_in_this_namespace().map_or(true, |names| names.contains(bridge));
        if present {
            link::delete(route, bridge)
                .map_err(Error::netlink(format!("delete bridge {bridge}")))?;
        }
        Ok(())
    }

    /// Notes the bridge and table gone and applies pending pod CIDRs.
    fn infra_removed(&self, up: &mut bool) -> Result<(), Error> {
        *up = false;
        let mut pools = self.pools.write().unwrap_or_else(|p| p.into_inner());
        if let Some(next) = pools.pending.take() {
            record_active(&self.db, &next)?;
            pools.active = next;
        }
        Ok(())
    }

    /// The pod's network as recorded.
    pub(crate) fn status(&self, pod_id: &str) -> Result<Option<PodNetworkStatus>, Error> {
        Ok(ipam::get(&self.db, pod_id)?.map(|r| status_of(&r)))
    }

    /// Whether the pod's host veth still exists.
    pub(crate) fn check(&self, pod_id: &str) -> Result<(), Error> {
        let record = ipam::get(&self.db, pod_id)?
            .ok_or_else(|| Error::InvalidRequest(format!("pod {pod_id} has no network")))?;
        match link::get(&mut lock(&self.route), &record.host_veth)
            .map_err(Error::netlink(format!("look up veth {}", record.host_veth)))?
        {
            Some(_) => Ok(()),
            None => Err(Error::NotReady(format!(
                "veth {} of pod {pod_id} is gone",
                record.host_veth
            ))),
        }
    }

    /// Tears down pods not in `live`, and removes veths and rules no record owns; removes
    /// the bridge and table when no pod is left.
    pub(crate) fn reconcile(&self, live: &HashSet<&str>) -> Result<(), Error> {
        for r in ipam::list(&self.db)? {
            if !live.contains(r.pod_id.as_str()) {
                tracing::info!(pod = %r.pod_id, "releasing the network of a pod that no longer exists");
                self.teardown(&r.pod_id)?;
            }
        }
        let owned: HashSet<String> = ipam::list(&self.db)?
            .into_iter()
            .map(|r| r.pod_id)
            .collect();
        let veths: HashSet<String> = ipam::list(&self.db)?
            .into_iter()
            .map(|r| r.host_veth)
            .collect();
        // Dumping the links decodes every link's attributes. Where the kernel's own list of
        // interfaces shows no pod veth (every start of a node without pods), there is
        // nothing to compare: skip the dump. If that list cannot be read, dump anyway.
        let may_have_veths = link::names_in_this_namespace().map_or(true, |names| {
            names.iter().any(|n| n.starts_with(VETH_PREFIX))
        });
        let links = if may_have_veths {
            link::list(&mut lock(&self.route)).map_err(Error::netlink("list links"))?
        } else {
            Vec::new()
        };
        let bridge = links
            .iter()
            .find(|l| l.name == self.config.bridge)
            .map(|l| l.index);
        for l in links {
            // A pod veth is on the bridge, or on none once the bridge was deleted.
            let ours = l.name.starts_with(VETH_PREFIX)
                && l.kind.as_deref() == Some("veth")
                && (l.master == bridge || l.master.is_none());
            if ours && !veths.contains(&l.name) {
                tracing::info!(link = %l.name, "deleting a pod veth no record owns");
                link::delete(&mut lock(&self.route), &l.name)
                    .map_err(Error::netlink(format!("delete {}", l.name)))?;
            }
        }
        self.delete_rules(|owner| !owned.contains(owner))?;
        let mut infra = lock(&self.infra);
        if owned.is_empty() {
            return self.remove_infra(&mut infra);
        }
        // Pods survive a daemon restart: make sure what they use is there, also after a
        // firewall reload flushed the ruleset.
        *infra = false;
        let pools = self.pools().active;
        self.ensure_infra(&mut infra, &pools)?;
        let mut sock = lock(&self.nft);
        let present: HashSet<String> = nft::list_hostport_rules(&mut sock)
            .map_err(Error::netlink("list hostport rules"))?
            .into_iter()
            .filter_map(|r| {
                r.comment
                    .as_deref()
                    .and_then(nft::comment_pod)
                    .map(str::to_string)
            })
            .collect();
        for r in ipam::list(&self.db)? {
            if !r.port_mappings.is_empty() && !present.contains(&r.pod_id) {
                tracing::info!(pod = %r.pod_id, "restoring lost hostport rules");
                let ips: Vec<IpAddr> = r.addrs.iter().map(|a| a.ip).collect();
                nft::add_rules(
                    &mut sock,
                    &nft::hostport_rules(&r.pod_id, &ips, &r.port_mappings),
                )
                .map_err(Error::netlink(format!(
                    "add hostport rules of pod {}",
                    r.pod_id
                )))?;
            }
        }
        Ok(())
    }
}

fn status_of(r: &PodRecord) -> PodNetworkStatus {
    PodNetworkStatus {
        ips: r.addrs.iter().map(|a| a.ip).collect(),
        interface: POD_IFNAME.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidr_lists_parse_one_per_family() {
        let v = parse_pod_cidrs("fd00::/64, 10.244.1.0/24").unwrap();
        assert_eq!(join(&v), "10.244.1.0/24,fd00::/64");
        assert!(matches!(
            parse_pod_cidrs("10.0.0.0/24,10.1.0.0/24"),
            Err(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            parse_pod_cidrs("10.0.0.0/31"),
            Err(Error::CidrTooSmall(_))
        ));
        assert!(matches!(parse_pod_cidrs(""), Err(Error::InvalidRequest(_))));
        assert!(matches!(
            parse_pod_cidrs("10.0.0.1/24"),
            Err(Error::InvalidCidr(_))
        ));
    }

    #[test]
    fn config_names_and_mtu_are_checked() {
        validate_config(&NetworkConfig::default()).unwrap();
        for bridge in [
            "",
            "a-very-long-bridge-name",
            "br/0",
            "br 0",
            "bth1",
            "eth0",
        ] {
            let c = NetworkConfig {
                bridge: bridge.into(),
                ..NetworkConfig::default()
            };
            assert!(validate_config(&c).is_err(), "{bridge:?}");
        }
        let c = NetworkConfig {
            mtu: 100,
            ..NetworkConfig::default()
        };
        assert!(
            validate_config(&c)
                .unwrap_err()
                .to_string()
                .contains("network.mtu")
        );
    }

    #[test]
    fn veth_names_are_stable_short_and_distinct() {
        let a = veth_name("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with(VETH_PREFIX));
        assert_eq!(
            a,
            veth_name("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        assert_ne!(
            a,
            veth_name("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdee")
        );
    }

    #[test]
    fn bridge_mac_is_local_unicast_and_follows_the_gateway() {
        let mac = bridge_mac(&["10.88.0.0/16".parse().unwrap()]);
        assert_eq!(mac, [0x02, 0x62, 10, 88, 0, 1]);
        assert_eq!(mac[0] & 0x03, 0x02);
    }
}
