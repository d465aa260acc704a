//! Berth's nftables table: masquerade for the pod network and hostPort DNAT rules, built as
//! nf_tables netlink messages (no `nft` binary): [`rules`] decides the rules as plain data,
//! [`wire`] turns them into messages, and this module sends them.
//!
//! The table `inet berth` holds:
//! - `prerouting` and `output` (nat hooks) jumping to `hostports` for packets addressed to
//!   a local address of the node, so a hostPort answers from other hosts, from the node's
//!   own addresses and from 127.0.0.1;
//! - `hostports`: one DNAT rule per published port and address family, each commented
//!   `berth-pod:<pod id>` so that a pod's rules can be found and removed without state;
//! - `postrouting`: masquerade for connections that were DNATed from the loopback range
//!   (localhost hostPorts) or from the pod network back into it (hairpin), and for traffic
//!   from the pod network leaving it.

use netlink_packet_core::NLM_F_DUMP;

use crate::cidr::Cidr;
use crate::netlink::{NetlinkError, Socket, c_string};

mod rules;
mod wire;

pub(crate) use rules::{Rule, comment_pod, hostport_rules};
pub(crate) use wire::TABLE;

use rules::HOSTPORTS;
use wire::{NFTA_RULE_CHAIN, NFTA_RULE_HANDLE, NFTA_RULE_TABLE, NFTA_RULE_USERDATA, NftMessage};

fn send_batch(sock: &mut Socket, msgs: Vec<(NftMessage, u16)>) -> Result<(), NetlinkError> {
    let (begin, msgs, end) = wire::batch(msgs);
    sock.batch(begin, msgs, end)
}

/// Creates or refreshes the table (see [`wire::setup_messages`]).
pub(crate) fn setup(
    sock: &mut Socket,
    pod_cidrs: &[Cidr],
    non_masquerade: &[Cidr],
) -> Result<(), NetlinkError> {
    send_batch(sock, wire::setup_messages(pod_cidrs, non_masquerade))
}

/// Removes the whole table; a table already gone is fine.
pub(crate) fn remove(sock: &mut Socket) -> Result<(), NetlinkError> {
    match send_batch(sock, vec![wire::delete_table_message()]) {
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// Appends `rules` in one atomic batch.
pub(crate) fn add_rules(sock: &mut Socket, rules: &[Rule]) -> Result<(), NetlinkError> {
    send_batch(sock, rules.iter().map(wire::rule_message).collect())
}

/// A rule found in `hostports`: its handle and comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListedRule {
    /// The kernel's handle of the rule.
    pub handle: u64,
    /// Its comment, if any.
    pub comment: Option<String>,
}

/// The `hostports` rule a listed message describes, if it is one.
fn listed_rule(m: &NftMessage) -> Option<ListedRule> {
    let table = m.attr(NFTA_RULE_TABLE).map(c_string);
    let chain = m.attr(NFTA_RULE_CHAIN).map(c_string);
    if table.as_deref() != Some(TABLE) || chain.as_deref() != Some(HOSTPORTS) {
        return None;
    }
    let handle = u64::from_be_bytes(m.attr(NFTA_RULE_HANDLE)?.try_into().ok()?);
    let comment = m
        .attr(NFTA_RULE_USERDATA)
        .and_then(wire::parse_comment_udata);
    Some(ListedRule { handle, comment })
}

/// The rules of `hostports`; none when the table does not exist.
pub(crate) fn list_hostport_rules(sock: &mut Socket) -> Result<Vec<ListedRule>, NetlinkError> {
    match sock.dump::<_, NftMessage>(wire::list_hostports_message(), NLM_F_DUMP) {
        Ok(msgs) => Ok(msgs.iter().filter_map(listed_rule).collect()),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Deletes the `hostports` rules with the given handles in one batch.
pub(crate) fn delete_hostport_rules(
    sock: &mut Socket,
    handles: &[u64],
) -> Result<(), NetlinkError> {
    let msgs = handles
        .iter()
        .map(|h| wire::delete_rule_message(HOSTPORTS, Some(*h)))
        .collect();
    send_batch(sock, msgs)
}

/// Asks the kernel for the ruleset generation: proves nf_tables is usable.
pub(crate) fn probe(sock: &mut Socket) -> Result<(), NetlinkError> {
    sock.dump::<_, NftMessage>(wire::generation_message(), 0)
        .map(|_| ())
}

#[cfg(test)]
mod tests;
