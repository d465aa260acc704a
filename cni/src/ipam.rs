//! Address management of the built-in network, persisted in the daemon's redb database.
//!
//! Tables (all prefixed `cni_`):
//! - `cni_pods`: pod id -> [`PodRecord`] (JSON): the pod's addresses and everything its
//!   teardown needs, written before any kernel object exists;
//! - `cni_addresses`: address -> pod id, the uniqueness index: an address is never handed
//!   out while a row holds it;
//! - `cni_meta`: the next offset to try per pod CIDR (addresses are handed out round-robin
//!   so a released address is not reused at once) and the pod CIDRs kubelet sent.

use std::net::IpAddr;
use std::path::PathBuf;

use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use crate::error::Error;
use crate::types::PortMapping;

const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("cni_pods");
const ADDRESSES: TableDefinition<&str, &str> = TableDefinition::new("cni_addresses");
const META: TableDefinition<&str, &str> = TableDefinition::new("cni_meta");

/// Meta key of the pod CIDRs in force (comma separated), when kubelet set them.
pub(crate) const META_POD_CIDRS: &str = "pod_cidrs";
/// Meta key of pod CIDRs kubelet sent while pods still used the old ones.
pub(crate) const META_PENDING_POD_CIDRS: &str = "pending_pod_cidrs";

/// One address of a pod with its network's prefix and gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PodAddr {
    /// The pod's address.
    pub ip: IpAddr,
    /// Prefix length of the pod network.
    pub prefix: u8,
    /// The bridge's address in that network.
    pub gateway: IpAddr,
}

/// What the built-in network knows about one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PodRecord {
    /// The sandbox id.
    pub pod_id: String,
    /// Its addresses, IPv4 first.
    pub addrs: Vec<PodAddr>,
    /// Name of the host end of its veth pair.
    pub host_veth: String,
    /// Its network namespace file.
    pub netns: PathBuf,
    /// Its published ports.
    pub port_mappings: Vec<PortMapping>,
}

/// The usable offsets of `cidr`: not the network address, not the gateway (offset 1), not
/// the IPv4 broadcast address. `None` when nothing is left for pods.
pub(crate) fn usable_range(cidr: &Cidr) -> Option<(u128, u128)> {
    let bits = cidr.host_bits();
    if bits >= 128 {
        return Some((2, u128::MAX));
    }
    let size = 1u128 << bits;
    let last = if cidr.is_ipv6() {
        size - 1
    } else {
        size.saturating_sub(2)
    };
    (size >= 4 && last >= 2).then_some((2, last))
}

/// Picks the first free address of `cidr` at or after offset `next` (wrapping), given
/// that `taken` addresses of it are in use; returns it with the offset to try next time.
pub(crate) fn pick(
    cidr: &Cidr,
    next: u128,
    taken: u64,
    mut is_free: impl FnMut(IpAddr) -> Result<bool, Error>,
) -> Result<Option<(IpAddr, u128)>, Error> {
    let Some((first, last)) = usable_range(cidr) else {
        return Ok(None);
    };
    let span = last - first; // number of usable offsets minus one
    let mut off = if (first..=last).contains(&next) {
        next
    } else {
        first
    };
    // Among taken + 1 consecutive candidates at least one is free, if the range is larger.
    let tries = u128::from(taken)
        .saturating_add(1)
        .min(span.saturating_add(1));
    for _ in 0..tries {
        let ip = cidr.nth(off).expect("offset inside the CIDR");
        if is_free(ip)? {
            let following = if off == last { first } else { off + 1 };
            return Ok(Some((ip, following)));
        }
        off = if off == last { first } else { off + 1 };
    }
    Ok(None)
}

fn decode(key: &str, bytes: &[u8]) -> Result<PodRecord, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Corrupt {
        key: key.to_string(),
        source,
    })
}

fn next_key(cidr: &Cidr) -> String {
    format!("next:{cidr}")
}

/// Returns the pod's record, creating it with fresh addresses from `pools` if it has none,
/// and whether it existed. An existing record keeps its addresses and takes the new
/// `netns` and `ports` (they are the intent of this setup attempt).
///
/// Committed without a sync of its own: the pod's confirmation, the next durable commit
/// to the same database, which RunPodSandbox awaits before it answers, carries it to
/// disk. A crash before that loses the allocation together with the pod, which the next
/// start undoes (its namespace, and the veth end in it, with it); the node's end and any
/// hostPort rules then belong to no record, and [`crate::builtin`]'s reconciliation
/// deletes what no record owns. No address is given out twice meanwhile: a later
/// transaction reads this one's writes.
pub(crate) fn allocate(
    db: &Database,
    pod_id: &str,
    pools: &[Cidr],
    host_veth: &str,
    netns: &std::path::Path,
    ports: &[PortMapping],
) -> Result<(PodRecord, bool), Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::None)?;
    let record = {
        let mut pods = txn.open_table(PODS)?;
        let mut addresses = txn.open_table(ADDRESSES)?;
        let mut meta = txn.open_table(META)?;
        let existing = match pods.get(pod_id)? {
            Some(v) => Some(decode(pod_id, v.value())?),
            None => None,
        };
        let existed = existing.is_some();
        let record = match existing {
            Some(mut r) => {
                r.netns = netns.to_path_buf();
                r.port_mappings = ports.to_vec();
                r
            }
            None => {
                let taken = addresses.len()?;
                let mut addrs = Vec::new();
                for cidr in pools {
                    let key = next_key(cidr);
                    let next = match meta.get(key.as_str())? {
                        Some(v) => v.value().parse::<u128>().unwrap_or(0),
                        None => 0,
                    };
                    let picked = pick(cidr, next, taken, |ip| {
                        Ok(addresses.get(ip.to_string().as_str())?.is_none())
                    })?;
                    let (ip, following) = picked.ok_or(Error::Exhausted(*cidr))?;
                    addresses.insert(ip.to_string().as_str(), pod_id)?;
                    meta.insert(key.as_str(), following.to_string().as_str())?;
                    let gateway = cidr.nth(1).expect("a usable CIDR has a gateway");
                    addrs.push(PodAddr {
                        ip,
                        prefix: cidr.prefix(),
                        gateway,
                    });
                }
                addrs.sort_by_key(|a| a.ip.is_ipv6());
                PodRecord {
                    pod_id: pod_id.to_string(),
                    addrs,
                    host_veth: host_veth.to_string(),
                    netns: netns.to_path_buf(),
                    port_mappings: ports.to_vec(),
                }
            }
        };
        let bytes = serde_json::to_vec(&record).expect("records serialize");
        pods.insert(pod_id, bytes.as_slice())?;
        (record, existed)
    };
    txn.commit()?;
    Ok(record)
}

/// Removes the pod's record and frees its addresses; returns the record it had.
pub(crate) fn release(db: &Database, pod_id: &str) -> Result<Option<PodRecord>, Error> {
    let txn = db.begin_write()?;
    let record = {
        let mut pods = txn.open_table(PODS)?;
        let mut addresses = txn.open_table(ADDRESSES)?;
        let record = match pods.remove(pod_id)? {
            Some(v) => Some(decode(pod_id, v.value())?),
            None => None,
        };
        if let Some(r) = &record {
            for a in &r.addrs {
                let key = a.ip.to_string();
                let owned = addresses
                    .get(key.as_str())?
                    .map(|v| v.value() == pod_id)
                    .unwrap_or(false);
                if owned {
                    addresses.remove(key.as_str())?;
                }
            }
        }
        record
    };
    txn.commit()?;
    Ok(record)
}

/// `table` as `txn` sees it, or `None` before anything was ever written to it.
pub(crate) fn open_read<K, V>(
    txn: &ReadTransaction,
    table: TableDefinition<'_, K, V>,
) -> Result<Option<ReadOnlyTable<K, V>>, Error>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    match txn.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The pod's record, if it has one.
pub(crate) fn get(db: &Database, pod_id: &str) -> Result<Option<PodRecord>, Error> {
    let txn = db.begin_read()?;
    let Some(pods) = open_read(&txn, PODS)? else {
        return Ok(None);
    };
    match pods.get(pod_id)? {
        Some(v) => Ok(Some(decode(pod_id, v.value())?)),
        None => Ok(None),
    }
}

/// Every pod record.
pub(crate) fn list(db: &Database) -> Result<Vec<PodRecord>, Error> {
    let txn = db.begin_read()?;
    let Some(pods) = open_read(&txn, PODS)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for row in pods.iter()? {
        let (k, v) = row?;
        out.push(decode(k.value(), v.value())?);
    }
    Ok(out)
}

/// How many pods hold addresses.
pub(crate) fn count(db: &Database) -> Result<u64, Error> {
    let txn = db.begin_read()?;
    match open_read(&txn, PODS)? {
        Some(t) => Ok(t.len()?),
        None => Ok(0),
    }
}

/// Which pod holds `ip`, if any.
#[cfg(test)]
pub(crate) fn holder(db: &Database, ip: IpAddr) -> Result<Option<String>, Error> {
    let txn = db.begin_read()?;
    let Some(t) = open_read(&txn, ADDRESSES)? else {
        return Ok(None);
    };
    Ok(t.get(ip.to_string().as_str())?
        .map(|v| v.value().to_string()))
}

/// A `cni_meta` value.
pub(crate) fn get_meta(db: &Database, key: &str) -> Result<Option<String>, Error> {
    let txn = db.begin_read()?;
    let Some(t) = open_read(&txn, META)? else {
        return Ok(None);
    };
    Ok(t.get(key)?.map(|v| v.value().to_string()))
}

/// Sets (or with `None` removes) `cni_meta` values in one transaction.
pub(crate) fn set_meta(db: &Database, values: &[(&str, Option<&str>)]) -> Result<(), Error> {
    let txn = db.begin_write()?;
    {
        let mut t = txn.open_table(META)?;
        for (k, v) in values {
            match v {
                Some(v) => {
                    t.insert(*k, *v)?;
                }
                None => {
                    t.remove(*k)?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::path::Path;

    fn db() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("meta.redb")).unwrap();
        (dir, db)
    }

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn usable_range_skips_network_gateway_and_broadcast() {
        assert_eq!(usable_range(&c("10.88.0.0/16")), Some((2, 65534)));
        assert_eq!(usable_range(&c("10.0.0.0/30")), Some((2, 2)));
        assert_eq!(usable_range(&c("10.0.0.0/31")), None);
        assert_eq!(usable_range(&c("fd00::/126")), Some((2, 3)));
        assert_eq!(usable_range(&c("fd00::/127")), None);
    }

    #[test]
    fn pick_wraps_and_reports_exhaustion() {
        let cidr = c("10.0.0.0/29"); // offsets 2..=6
        let taken: HashSet<IpAddr> = ["10.0.0.5", "10.0.0.6"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let r = pick(&cidr, 5, 2, |ip| Ok(!taken.contains(&ip))).unwrap();
        assert_eq!(r, Some(("10.0.0.2".parse().unwrap(), 3)));
        let all: HashSet<IpAddr> = (2..=6).map(|o| cidr.nth(o).unwrap()).collect();
        assert_eq!(
            pick(&cidr, 0, 5, |ip| Ok(!all.contains(&ip))).unwrap(),
            None
        );
    }

    #[test]
    fn allocations_are_unique_persisted_and_released() {
        let (_d, db) = db();
        let pools = [c("10.0.0.0/29"), c("fd00::/125")];
        let mut seen = HashSet::new();
        for i in 0..5 {
            let (r, existed) =
                allocate(&db, &format!("p{i}"), &pools, "v", Path::new("/ns"), &[]).unwrap();
            assert!(!existed);
            assert_eq!(r.addrs.len(), 2);
            assert!(r.addrs[0].ip.is_ipv4() && r.addrs[1].ip.is_ipv6());
            assert_eq!(r.addrs[0].gateway, "10.0.0.1".parse::<IpAddr>().unwrap());
            assert!(
                seen.insert(r.addrs[0].ip),
                "{:?} handed out twice",
                r.addrs[0].ip
            );
            assert!(seen.insert(r.addrs[1].ip));
        }
        // The v4 range (5 addresses) is full.
        assert!(matches!(
            allocate(&db, "p5", &pools, "v", Path::new("/ns"), &[]),
            Err(Error::Exhausted(_))
        ));
        // Asking again for an existing pod returns the same addresses.
        let (again, existed) = allocate(&db, "p2", &pools, "v", Path::new("/ns2"), &[]).unwrap();
        assert!(existed);
        assert_eq!(again.netns, Path::new("/ns2"));
        assert_eq!(get(&db, "p2").unwrap().unwrap().addrs, again.addrs);
        let freed = release(&db, "p2").unwrap().unwrap();
        assert_eq!(holder(&db, freed.addrs[0].ip).unwrap(), None);
        assert_eq!(release(&db, "p2").unwrap(), None);
        assert_eq!(count(&db).unwrap(), 4);
        // The freed address is the only one left, so it is handed out again.
        let (r, _) = allocate(&db, "p6", &pools, "v", Path::new("/ns"), &[]).unwrap();
        assert_eq!(r.addrs[0].ip, freed.addrs[0].ip);
        assert_eq!(list(&db).unwrap().len(), 5);
    }

    #[test]
    fn released_addresses_are_not_reused_at_once() {
        let (_d, db) = db();
        let pools = [c("10.88.0.0/16")];
        let (a, _) = allocate(&db, "a", &pools, "v", Path::new("/ns"), &[]).unwrap();
        release(&db, "a").unwrap();
        let (b, _) = allocate(&db, "b", &pools, "v", Path::new("/ns"), &[]).unwrap();
        assert_ne!(a.addrs[0].ip, b.addrs[0].ip);
        assert_eq!(b.addrs[0].ip, "10.88.0.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn meta_values_round_trip_and_empty_db_reads_nothing() {
        let (_d, db) = db();
        assert_eq!(count(&db).unwrap(), 0);
        assert_eq!(get(&db, "x").unwrap(), None);
        assert_eq!(get_meta(&db, "k").unwrap(), None);
        set_meta(&db, &[("k", Some("v"))]).unwrap();
        assert_eq!(get_meta(&db, "k").unwrap().as_deref(), Some("v"));
        set_meta(&db, &[("k", None)]).unwrap();
        assert_eq!(get_meta(&db, "k").unwrap(), None);
    }
}
