//! Berth's nftables table: masquerade for the pod network and hostPort DNAT rules, built as
//! nf_tables netlink messages (no `nft` binary).
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

use std::net::IpAddr;

use crate::cidr::Cidr;
use crate::netlink::{
    Message, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NetlinkError, Socket, attr_string, find_attr,
};
use crate::types::{PortMapping, Protocol};

/// The table Berth owns.
pub(crate) const TABLE: &str = "berth";
/// The regular chain holding hostPort DNAT rules.
pub(crate) const HOSTPORTS: &str = "hostports";
const PREROUTING: &str = "prerouting";
const OUTPUT: &str = "output";
const POSTROUTING: &str = "postrouting";
/// Prefix of the comment that names the pod owning a rule.
pub(crate) const POD_COMMENT_PREFIX: &str = "berth-pod:";

const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_GETGEN: u16 = 16;
const NFNL_SUBSYS_NFTABLES: u16 = 10;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_JUMP: i32 = -3;
const NF_ACCEPT: u32 = 1;
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_INET_POST_ROUTING: u32 = 4;
const PRIO_DSTNAT: i32 = -100;
const PRIO_SRCNAT: i32 = 100;

const RTN_LOCAL: u32 = 2;
const IPS_DST_NAT: u32 = 0x20;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;

/// One nf_tables expression, in the vocabulary `nft --debug=netlink` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    /// `meta load <key> => reg`.
    Meta { key: u32, dreg: u32 },
    /// `payload load <len>b @ <base> header + <offset> => reg`.
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `bitwise reg = (reg & mask) ^ 0`.
    Mask { reg: u32, mask: Vec<u8> },
    /// `cmp <op> reg <data>`.
    Cmp { op: CmpOp, sreg: u32, data: Vec<u8> },
    /// `fib daddr type => reg`.
    FibDaddrType { dreg: u32 },
    /// `ct load status => reg`.
    CtStatus { dreg: u32 },
    /// `immediate reg <data>`.
    Immediate { dreg: u32, data: Vec<u8> },
    /// `immediate reg 0 jump -> <chain>`.
    Jump { chain: String },
    /// `nat dnat <family> addr_min reg proto_min reg`.
    Dnat {
        family: u8,
        addr_reg: u32,
        port_reg: u32,
    },
    /// `masq`.
    Masquerade,
}

/// A comparison operator of `cmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    /// Equal.
    Eq = 0,
    /// Not equal.
    Neq = 1,
}

const REG_1: u32 = 1;
const REG_2: u32 = 2;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const BASE_NETWORK: u32 = 1;
const BASE_TRANSPORT: u32 = 2;

/// A rule to append to a chain of Berth's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    /// Chain the rule goes in.
    pub chain: &'static str,
    /// Its expressions, in order.
    pub exprs: Vec<Expr>,
    /// Its comment (shown by `nft list`), naming its owner.
    pub comment: Option<String>,
}

fn nfproto(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        NFPROTO_IPV4
    } else {
        NFPROTO_IPV6
    }
}

fn octets(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn match_family(family: u8) -> [Expr; 2] {
    [
        Expr::Meta {
            key: META_NFPROTO,
            dreg: REG_1,
        },
        Expr::Cmp {
            op: CmpOp::Eq,
            sreg: REG_1,
            data: vec![family],
        },
    ]
}

/// `ip saddr|daddr [!=] cidr` as expressions.
fn match_addr(source: bool, cidr: &Cidr, op: CmpOp) -> Vec<Expr> {
    let (offset, len) = match (cidr.is_ipv6(), source) {
        (false, true) => (12, 4),
        (false, false) => (16, 4),
        (true, true) => (8, 16),
        (true, false) => (24, 16),
    };
    let mut v = vec![Expr::Payload {
        base: BASE_NETWORK,
        offset,
        len,
        dreg: REG_1,
    }];
    let full = cidr.prefix() as u32 == len * 8;
    if !full {
        let mut mask = vec![0u8; len as usize];
        for (i, b) in mask.iter_mut().enumerate() {
            let bits = (cidr.prefix() as usize).saturating_sub(i * 8).min(8);
            *b = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
        }
        v.push(Expr::Mask { reg: REG_1, mask });
    }
    v.push(Expr::Cmp {
        op,
        sreg: REG_1,
        data: octets(cidr.network()),
    });
    v
}

fn host_cidr(addr: IpAddr) -> Cidr {
    let prefix = if addr.is_ipv4() { 32 } else { 128 };
    Cidr::new(addr, prefix).expect("a host prefix has no host bits")
}

fn ct_dnat() -> [Expr; 3] {
    [
        Expr::CtStatus { dreg: REG_1 },
        Expr::Mask {
            reg: REG_1,
            mask: IPS_DST_NAT.to_ne_bytes().to_vec(),
        },
        Expr::Cmp {
            op: CmpOp::Neq,
            sreg: REG_1,
            data: vec![0; 4],
        },
    ]
}

/// The fixed rules of the table for the given pod networks.
pub(crate) fn base_rules(pod_cidrs: &[Cidr]) -> Vec<Rule> {
    let local_jump = || {
        vec![
            Expr::FibDaddrType { dreg: REG_1 },
            Expr::Cmp {
                op: CmpOp::Eq,
                sreg: REG_1,
                data: RTN_LOCAL.to_ne_bytes().to_vec(),
            },
            Expr::Jump {
                chain: HOSTPORTS.to_string(),
            },
        ]
    };
    let mut rules = vec![
        Rule {
            chain: PREROUTING,
            exprs: local_jump(),
            comment: None,
        },
        Rule {
            chain: OUTPUT,
            exprs: local_jump(),
            comment: None,
        },
    ];
    // Localhost hostPorts: 127.0.0.1 cannot leave the node, so the connection takes the
    // bridge's address.
    let loopback: Cidr = "127.0.0.0/8".parse().expect("static CIDR");
    let mut e = ct_dnat().to_vec();
    e.extend(match_family(NFPROTO_IPV4));
    e.extend(match_addr(true, &loopback, CmpOp::Eq));
    e.push(Expr::Masquerade);
    rules.push(Rule {
        chain: POSTROUTING,
        exprs: e,
        comment: Some("localhost hostports".into()),
    });
    for cidr in pod_cidrs {
        let fam = if cidr.is_ipv6() {
            NFPROTO_IPV6
        } else {
            NFPROTO_IPV4
        };
        // Hairpin: a pod reaching a hostPort served by a pod of the same bridge must see
        // the answer come back through the node, so the node's address is the source.
        let mut e = ct_dnat().to_vec();
        e.extend(match_family(fam));
        e.extend(match_addr(true, cidr, CmpOp::Eq));
        e.extend(match_addr(false, cidr, CmpOp::Eq));
        e.push(Expr::Masquerade);
        rules.push(Rule {
            chain: POSTROUTING,
            exprs: e,
            comment: Some("hairpin hostports".into()),
        });
        let mut e = match_family(fam).to_vec();
        e.extend(match_addr(true, cidr, CmpOp::Eq));
        e.extend(match_addr(false, cidr, CmpOp::Neq));
        e.push(Expr::Masquerade);
        rules.push(Rule {
            chain: POSTROUTING,
            exprs: e,
            comment: Some("pod network leaving it".into()),
        });
    }
    rules
}

/// The comment that marks a pod's rules.
pub(crate) fn pod_comment(pod_id: &str) -> String {
    format!("{POD_COMMENT_PREFIX}{pod_id}")
}

/// The DNAT rules publishing `mappings` of a pod with addresses `pod_ips`: one per mapping
/// and address family the pod has (restricted to the family of `host_ip` when set).
pub(crate) fn hostport_rules(
    pod_id: &str,
    pod_ips: &[IpAddr],
    mappings: &[PortMapping],
) -> Vec<Rule> {
    let mut rules = Vec::new();
    for m in mappings {
        for &ip in pod_ips {
            if let Some(h) = m.host_ip
                && h.is_ipv4() != ip.is_ipv4()
            {
                continue;
            }
            let mut e = match_family(nfproto(ip)).to_vec();
            e.push(Expr::Meta {
                key: META_L4PROTO,
                dreg: REG_1,
            });
            e.push(Expr::Cmp {
                op: CmpOp::Eq,
                sreg: REG_1,
                data: vec![m.protocol.ip_number()],
            });
            if let Some(h) = m.host_ip {
                e.extend(match_addr(false, &host_cidr(h), CmpOp::Eq));
            }
            // Destination port: bytes 2..4 of the TCP, UDP and SCTP headers alike.
            e.push(Expr::Payload {
                base: BASE_TRANSPORT,
                offset: 2,
                len: 2,
                dreg: REG_1,
            });
            e.push(Expr::Cmp {
                op: CmpOp::Eq,
                sreg: REG_1,
                data: m.host_port.to_be_bytes().to_vec(),
            });
            e.push(Expr::Immediate {
                dreg: REG_1,
                data: octets(ip),
            });
            e.push(Expr::Immediate {
                dreg: REG_2,
                data: m.container_port.to_be_bytes().to_vec(),
            });
            e.push(Expr::Dnat {
                family: nfproto(ip),
                addr_reg: REG_1,
                port_reg: REG_2,
            });
            rules.push(Rule {
                chain: HOSTPORTS,
                exprs: e,
                comment: Some(pod_comment(pod_id)),
            });
        }
    }
    rules
}

impl Protocol {
    /// The IP protocol number `meta l4proto` compares with.
    pub(crate) fn ip_number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

fn nft_message(cmd: u16, flags: u16, family: u8) -> Message {
    let mut m = Message::new((NFNL_SUBSYS_NFTABLES << 8) | cmd, flags);
    m.push_header(&[family, 0, 0, 0]);
    m
}

fn encode_expr(m: &mut Message, e: &Expr) {
    let name = match e {
        Expr::Meta { .. } => "meta",
        Expr::Payload { .. } => "payload",
        Expr::Mask { .. } => "bitwise",
        Expr::Cmp { .. } => "cmp",
        Expr::FibDaddrType { .. } => "fib",
        Expr::CtStatus { .. } => "ct",
        Expr::Immediate { .. } | Expr::Jump { .. } => "immediate",
        Expr::Dnat { .. } => "nat",
        Expr::Masquerade => "masq",
    };
    m.nested(NFTA_LIST_ELEM, |m| {
        m.attr_str(NFTA_EXPR_NAME, name);
        if matches!(e, Expr::Masquerade) {
            return;
        }
        m.nested(NFTA_EXPR_DATA, |m| match e {
            Expr::Meta { key, dreg } => {
                m.attr_be32(1, *dreg).attr_be32(2, *key);
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                m.attr_be32(1, *dreg)
                    .attr_be32(2, *base)
                    .attr_be32(3, *offset)
                    .attr_be32(4, *len);
            }
            Expr::Mask { reg, mask } => {
                m.attr_be32(1, *reg)
                    .attr_be32(2, *reg)
                    .attr_be32(3, mask.len() as u32);
                m.nested(4, |m| {
                    m.attr(NFTA_DATA_VALUE, mask);
                });
                m.nested(5, |m| {
                    m.attr(NFTA_DATA_VALUE, &vec![0; mask.len()]);
                });
            }
            Expr::Cmp { op, sreg, data } => {
                m.attr_be32(1, *sreg)
                    .attr_be32(2, *op as u32)
                    .nested(3, |m| {
                        m.attr(NFTA_DATA_VALUE, data);
                    });
            }
            Expr::FibDaddrType { dreg } => {
                // NFTA_FIB_DREG, NFTA_FIB_RESULT = ADDRTYPE, NFTA_FIB_FLAGS = DADDR.
                m.attr_be32(1, *dreg).attr_be32(2, 3).attr_be32(3, 2);
            }
            Expr::CtStatus { dreg } => {
                // NFTA_CT_DREG, NFTA_CT_KEY = NFT_CT_STATUS.
                m.attr_be32(1, *dreg).attr_be32(2, 2);
            }
            Expr::Immediate { dreg, data } => {
                m.attr_be32(1, *dreg).nested(2, |m| {
                    m.attr(NFTA_DATA_VALUE, data);
                });
            }
            Expr::Jump { chain } => {
                m.attr_be32(1, 0).nested(2, |m| {
                    m.nested(NFTA_DATA_VERDICT, |m| {
                        m.attr_be32(NFTA_VERDICT_CODE, NFT_JUMP as u32)
                            .attr_str(NFTA_VERDICT_CHAIN, chain);
                    });
                });
            }
            Expr::Dnat {
                family,
                addr_reg,
                port_reg,
            } => {
                // NFTA_NAT_TYPE = DNAT, FAMILY, REG_ADDR_MIN, REG_PROTO_MIN, FLAGS.
                m.attr_be32(1, 1)
                    .attr_be32(2, u32::from(*family))
                    .attr_be32(3, *addr_reg)
                    .attr_be32(5, *port_reg)
                    .attr_be32(7, NF_NAT_RANGE_PROTO_SPECIFIED);
            }
            Expr::Masquerade => {}
        });
    });
}

/// The comment in libnftnl's user-data format, so `nft list` shows it.
fn comment_udata(comment: &str) -> Vec<u8> {
    let text: Vec<u8> = comment
        .bytes()
        .take(250)
        .chain(std::iter::once(0))
        .collect();
    let mut v = vec![NFTNL_UDATA_RULE_COMMENT, text.len() as u8];
    v.extend(text);
    v
}

fn parse_comment_udata(data: &[u8]) -> Option<String> {
    let mut rest = data;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], rest[1] as usize);
        let value = rest.get(2..2 + len)?;
        if ty == NFTNL_UDATA_RULE_COMMENT {
            return Some(attr_string(value));
        }
        rest = &rest[2 + len..];
    }
    None
}

/// The NEWRULE message appending `rule`.
pub(crate) fn rule_message(rule: &Rule) -> Message {
    let mut m = nft_message(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, NFPROTO_INET);
    m.attr_str(NFTA_RULE_TABLE, TABLE)
        .attr_str(NFTA_RULE_CHAIN, rule.chain);
    m.nested(NFTA_RULE_EXPRESSIONS, |m| {
        for e in &rule.exprs {
            encode_expr(m, e);
        }
    });
    if let Some(c) = &rule.comment {
        m.attr(NFTA_RULE_USERDATA, &comment_udata(c));
    }
    m
}

fn chain_message(name: &str, hook: Option<(u32, i32)>) -> Message {
    let mut m = nft_message(NFT_MSG_NEWCHAIN, NLM_F_CREATE, NFPROTO_INET);
    m.attr_str(NFTA_CHAIN_TABLE, TABLE)
        .attr_str(NFTA_CHAIN_NAME, name);
    if let Some((hooknum, prio)) = hook {
        m.nested(NFTA_CHAIN_HOOK, |m| {
            m.attr_be32(NFTA_HOOK_HOOKNUM, hooknum)
                .attr_be32(NFTA_HOOK_PRIORITY, prio as u32);
        });
        m.attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
            .attr_str(NFTA_CHAIN_TYPE, "nat");
    }
    m
}

fn flush_chain_message(chain: &str) -> Message {
    let mut m = nft_message(NFT_MSG_DELRULE, 0, NFPROTO_INET);
    m.attr_str(NFTA_RULE_TABLE, TABLE)
        .attr_str(NFTA_RULE_CHAIN, chain);
    m
}

/// The batch that creates the table and its chains if missing and (re)writes the fixed
/// rules for `pod_cidrs`, leaving `hostports` as it is: safe to repeat at any time.
pub(crate) fn setup_messages(pod_cidrs: &[Cidr]) -> Vec<Message> {
    let mut msgs = Vec::new();
    let mut t = nft_message(NFT_MSG_NEWTABLE, NLM_F_CREATE, NFPROTO_INET);
    t.attr_str(NFTA_TABLE_NAME, TABLE);
    msgs.push(t);
    msgs.push(chain_message(HOSTPORTS, None));
    msgs.push(chain_message(
        PREROUTING,
        Some((NF_INET_PRE_ROUTING, PRIO_DSTNAT)),
    ));
    msgs.push(chain_message(
        OUTPUT,
        Some((NF_INET_LOCAL_OUT, PRIO_DSTNAT)),
    ));
    msgs.push(chain_message(
        POSTROUTING,
        Some((NF_INET_POST_ROUTING, PRIO_SRCNAT)),
    ));
    for chain in [PREROUTING, OUTPUT, POSTROUTING] {
        msgs.push(flush_chain_message(chain));
    }
    msgs.extend(base_rules(pod_cidrs).iter().map(rule_message));
    msgs
}

/// Creates or refreshes the table (see [`setup_messages`]).
pub(crate) fn setup(sock: &mut Socket, pod_cidrs: &[Cidr]) -> Result<(), NetlinkError> {
    sock.batch(setup_messages(pod_cidrs))
}

/// Removes the whole table; a table already gone is fine.
pub(crate) fn remove(sock: &mut Socket) -> Result<(), NetlinkError> {
    let mut m = nft_message(NFT_MSG_DELTABLE, 0, NFPROTO_INET);
    m.attr_str(NFTA_TABLE_NAME, TABLE);
    match sock.batch(vec![m]) {
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// Appends `rules` in one atomic batch.
pub(crate) fn add_rules(sock: &mut Socket, rules: &[Rule]) -> Result<(), NetlinkError> {
    sock.batch(rules.iter().map(rule_message).collect())
}

/// A rule found in `hostports`: its handle and comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListedRule {
    /// The kernel's handle of the rule.
    pub handle: u64,
    /// Its comment, if any.
    pub comment: Option<String>,
}

/// The rules of `hostports`; none when the table does not exist.
pub(crate) fn list_hostport_rules(sock: &mut Socket) -> Result<Vec<ListedRule>, NetlinkError> {
    let mut m = nft_message(NFT_MSG_GETRULE, NLM_F_DUMP, NFPROTO_INET);
    m.attr_str(NFTA_RULE_TABLE, TABLE)
        .attr_str(NFTA_RULE_CHAIN, HOSTPORTS);
    let msgs = match sock.dump(m) {
        Ok(m) => m,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for r in msgs {
        let Some(body) = r.payload.get(4..) else {
            continue;
        };
        let table = find_attr(body, NFTA_RULE_TABLE).map(attr_string);
        let chain = find_attr(body, NFTA_RULE_CHAIN).map(attr_string);
        if table.as_deref() != Some(TABLE) || chain.as_deref() != Some(HOSTPORTS) {
            continue;
        }
        let Some(handle) = find_attr(body, NFTA_RULE_HANDLE)
            .and_then(|d| d.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            continue;
        };
        let comment = find_attr(body, NFTA_RULE_USERDATA).and_then(parse_comment_udata);
        out.push(ListedRule { handle, comment });
    }
    Ok(out)
}

/// Deletes the `hostports` rules with the given handles in one batch.
pub(crate) fn delete_hostport_rules(
    sock: &mut Socket,
    handles: &[u64],
) -> Result<(), NetlinkError> {
    let msgs = handles
        .iter()
        .map(|h| {
            let mut m = nft_message(NFT_MSG_DELRULE, 0, NFPROTO_INET);
            m.attr_str(NFTA_RULE_TABLE, TABLE)
                .attr_str(NFTA_RULE_CHAIN, HOSTPORTS)
                .attr_be64(NFTA_RULE_HANDLE, *h);
            m
        })
        .collect();
    sock.batch(msgs)
}

/// The pod id named by a rule comment, if it is one of Berth's.
pub(crate) fn comment_pod(comment: &str) -> Option<&str> {
    comment.strip_prefix(POD_COMMENT_PREFIX)
}

/// Asks the kernel for the ruleset generation: proves nf_tables is usable.
pub(crate) fn probe(sock: &mut Socket) -> Result<(), NetlinkError> {
    sock.dump(nft_message(NFT_MSG_GETGEN, 0, 0)).map(|_| ())
}

/// Attribute walk kept for tests that inspect encoded rules.
#[cfg(test)]
fn expr_names(m: &Message) -> Vec<String> {
    use crate::netlink::attrs;
    let body = &m.payload()[4..];
    let exprs = find_attr(body, NFTA_RULE_EXPRESSIONS).unwrap();
    attrs(exprs)
        .map(|(_, e)| find_attr(e, NFTA_EXPR_NAME).map(attr_string).unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(
        protocol: Protocol,
        host_port: u16,
        container_port: u16,
        host_ip: Option<&str>,
    ) -> PortMapping {
        PortMapping {
            protocol,
            host_port,
            container_port,
            host_ip: host_ip.map(|h| h.parse().unwrap()),
        }
    }

    #[test]
    fn hostport_rule_matches_family_protocol_port_and_host_ip() {
        let ips = ["10.88.0.5".parse().unwrap()];
        let rules = hostport_rules("p1", &ips, &[pm(Protocol::Tcp, 8080, 80, Some("1.2.3.4"))]);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].comment.as_deref(), Some("berth-pod:p1"));
        assert_eq!(
            rules[0].exprs,
            vec![
                Expr::Meta {
                    key: META_NFPROTO,
                    dreg: 1
                },
                Expr::Cmp {
                    op: CmpOp::Eq,
                    sreg: 1,
                    data: vec![2]
                },
                Expr::Meta {
                    key: META_L4PROTO,
                    dreg: 1
                },
                Expr::Cmp {
                    op: CmpOp::Eq,
                    sreg: 1,
                    data: vec![6]
                },
                Expr::Payload {
                    base: BASE_NETWORK,
                    offset: 16,
                    len: 4,
                    dreg: 1
                },
                Expr::Cmp {
                    op: CmpOp::Eq,
                    sreg: 1,
                    data: vec![1, 2, 3, 4]
                },
                Expr::Payload {
                    base: BASE_TRANSPORT,
                    offset: 2,
                    len: 2,
                    dreg: 1
                },
                Expr::Cmp {
                    op: CmpOp::Eq,
                    sreg: 1,
                    data: vec![0x1f, 0x90]
                },
                Expr::Immediate {
                    dreg: 1,
                    data: vec![10, 88, 0, 5]
                },
                Expr::Immediate {
                    dreg: 2,
                    data: vec![0, 80]
                },
                Expr::Dnat {
                    family: NFPROTO_IPV4,
                    addr_reg: 1,
                    port_reg: 2
                },
            ]
        );
    }

    #[test]
    fn dual_stack_pod_gets_one_rule_per_family_unless_host_ip_restricts() {
        let ips = ["10.88.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let all = hostport_rules(
            "p",
            &ips,
            &[
                pm(Protocol::Udp, 53, 5353, None),
                pm(Protocol::Sctp, 9, 9, None),
            ],
        );
        assert_eq!(all.len(), 4);
        assert!(all.iter().any(|r| r.exprs.contains(&Expr::Cmp {
            op: CmpOp::Eq,
            sreg: 1,
            data: vec![132]
        })));
        let v6 = hostport_rules("p", &ips, &[pm(Protocol::Tcp, 80, 80, Some("fd00::1"))]);
        assert_eq!(v6.len(), 1);
        assert!(v6[0].exprs.contains(&Expr::Dnat {
            family: NFPROTO_IPV6,
            addr_reg: 1,
            port_reg: 2
        }));
        assert!(v6[0].exprs.contains(&Expr::Payload {
            base: BASE_NETWORK,
            offset: 24,
            len: 16,
            dreg: 1
        }));
        let none = hostport_rules(
            "p",
            &ips[..1],
            &[pm(Protocol::Tcp, 80, 80, Some("fd00::1"))],
        );
        assert!(none.is_empty());
    }

    #[test]
    fn masquerade_rules_mask_the_prefix() {
        let cidr: Cidr = "10.88.0.0/14".parse().unwrap();
        let rules = base_rules(&[cidr]);
        let leaving = rules
            .iter()
            .find(|r| r.comment.as_deref() == Some("pod network leaving it"))
            .unwrap();
        assert_eq!(
            leaving.exprs,
            vec![
                Expr::Meta {
                    key: META_NFPROTO,
                    dreg: 1
                },
                Expr::Cmp {
                    op: CmpOp::Eq,
                    sreg: 1,
                    data: vec![2]
                },
                Expr::Payload {
                    base: BASE_NETWORK,
                    offset: 12,
                    len: 4,
                    dreg: 1
                },
                Expr::Mask {
                    reg: 1,
                    mask: vec![255, 252, 0, 0]
                },
                Expr::Cmp {
                    op: CmpOp::Eq,
                    sreg: 1,
                    data: vec![10, 88, 0, 0]
                },
                Expr::Payload {
                    base: BASE_NETWORK,
                    offset: 16,
                    len: 4,
                    dreg: 1
                },
                Expr::Mask {
                    reg: 1,
                    mask: vec![255, 252, 0, 0]
                },
                Expr::Cmp {
                    op: CmpOp::Neq,
                    sreg: 1,
                    data: vec![10, 88, 0, 0]
                },
                Expr::Masquerade,
            ]
        );
        // prerouting + output jumps, localhost, and hairpin + leaving per CIDR.
        assert_eq!(rules.len(), 5);
        let v6: Cidr = "fd00:88::/64".parse().unwrap();
        assert_eq!(base_rules(&[cidr, v6]).len(), 7);
    }

    #[test]
    fn encoded_rule_carries_table_chain_expressions_and_comment() {
        let ips = ["10.88.0.5".parse().unwrap()];
        let rule = &hostport_rules("pod-a", &ips, &[pm(Protocol::Tcp, 8080, 80, None)])[0];
        let m = rule_message(rule);
        assert_eq!(m.msg_type(), (10 << 8) | 6);
        assert_eq!(m.payload()[0], NFPROTO_INET);
        let body = &m.payload()[4..];
        assert_eq!(
            find_attr(body, NFTA_RULE_TABLE).map(attr_string).as_deref(),
            Some("berth")
        );
        assert_eq!(
            find_attr(body, NFTA_RULE_CHAIN).map(attr_string).as_deref(),
            Some("hostports")
        );
        assert_eq!(
            expr_names(&m),
            [
                "meta",
                "cmp",
                "meta",
                "cmp",
                "payload",
                "cmp",
                "immediate",
                "immediate",
                "nat"
            ]
        );
        let udata = find_attr(body, NFTA_RULE_USERDATA).unwrap();
        assert_eq!(
            parse_comment_udata(udata).as_deref(),
            Some("berth-pod:pod-a")
        );
        assert_eq!(comment_pod("berth-pod:pod-a"), Some("pod-a"));
        assert_eq!(comment_pod("other"), None);
    }

    #[test]
    fn setup_batch_is_table_chains_flushes_then_rules() {
        let msgs = setup_messages(&["10.88.0.0/16".parse().unwrap()]);
        let kinds: Vec<u16> = msgs.iter().map(|m| m.msg_type() & 0xff).collect();
        assert_eq!(&kinds[..8], &[0, 3, 3, 3, 3, 8, 8, 8]);
        assert!(kinds[8..].iter().all(|k| *k == 6));
    }
}
