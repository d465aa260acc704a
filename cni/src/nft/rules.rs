//! The rules of Berth's table as plain data: which expressions match a pod network, a
//! hostPort or a DNATed connection, decided without the kernel so they can be unit-tested.

use std::net::IpAddr;

use crate::cidr::Cidr;
use crate::types::{PortMapping, Protocol};

/// The regular chain holding hostPort DNAT rules.
pub(crate) const HOSTPORTS: &str = "hostports";
/// The nat chain of the prerouting hook.
pub(crate) const PREROUTING: &str = "prerouting";
/// The nat chain of the local output hook.
pub(crate) const OUTPUT: &str = "output";
/// The nat chain of the postrouting hook.
pub(crate) const POSTROUTING: &str = "postrouting";
/// Prefix of the comment that names the pod owning a rule.
pub(crate) const POD_COMMENT_PREFIX: &str = "berth-pod:";

/// `meta nfproto` value of IPv4.
pub(crate) const NFPROTO_IPV4: u8 = 2;
/// `meta nfproto` value of IPv6.
pub(crate) const NFPROTO_IPV6: u8 = 10;

const RTN_LOCAL: u32 = 2;
const IPS_DST_NAT: u32 = 0x20;

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

/// The first data register.
pub(crate) const REG_1: u32 = 1;
/// The second data register.
pub(crate) const REG_2: u32 = 2;
/// `meta` key of the packet's protocol family.
pub(crate) const META_NFPROTO: u32 = 15;
/// `meta` key of the transport protocol.
pub(crate) const META_L4PROTO: u32 = 16;
/// `payload` base of the network header.
pub(crate) const BASE_NETWORK: u32 = 1;
/// `payload` base of the transport header.
pub(crate) const BASE_TRANSPORT: u32 = 2;

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

/// The fixed rules of the table for the given pod networks, masquerading what leaves them
/// except towards `non_masquerade`.
pub(crate) fn base_rules(pod_cidrs: &[Cidr], non_masquerade: &[Cidr]) -> Vec<Rule> {
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
    rules.push(masquerade(
        "localhost hostports",
        [
            &ct_dnat()[..],
            &match_family(NFPROTO_IPV4),
            &match_addr(true, &loopback, CmpOp::Eq),
        ],
    ));
    for cidr in pod_cidrs {
        let fam = match_family(if cidr.is_ipv6() {
            NFPROTO_IPV6
        } else {
            NFPROTO_IPV4
        });
        let from_pods = match_addr(true, cidr, CmpOp::Eq);
        // Hairpin: a pod reaching a hostPort served by a pod of the same bridge must see
        // the answer come back through the node, so the node's address is the source.
        rules.push(masquerade(
            "hairpin hostports",
            [
                &ct_dnat()[..],
                &fam,
                &from_pods,
                &match_addr(false, cidr, CmpOp::Eq),
            ],
        ));
        // Leaving the pod network, except towards the destinations the operator keeps
        // unmasqueraded (the other nodes' pods): each one more "daddr !=" of the family.
        let mut to_elsewhere = match_addr(false, cidr, CmpOp::Neq);
        for keep in non_masquerade {
            if keep.is_ipv6() == cidr.is_ipv6() {
                to_elsewhere.extend(match_addr(false, keep, CmpOp::Neq));
            }
        }
        rules.push(masquerade(
            "pod network leaving it",
            [&fam[..], &from_pods, &to_elsewhere],
        ));
    }
    rules
}

/// A postrouting rule masquerading what `matches` all match.
fn masquerade<const N: usize>(comment: &str, matches: [&[Expr]; N]) -> Rule {
    let mut exprs = matches.concat();
    exprs.push(Expr::Masquerade);
    Rule {
        chain: POSTROUTING,
        exprs,
        comment: Some(comment.into()),
    }
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

/// The pod id named by a rule comment, if it is one of Berth's.
pub(crate) fn comment_pod(comment: &str) -> Option<&str> {
    comment.strip_prefix(POD_COMMENT_PREFIX)
}
