//! Tests of the rules Berth's table holds and of their nf_tables encoding.

use super::rules::*;
use super::wire::*;
use super::*;
use crate::netlink::round_trip as on_the_wire;
use crate::types::{PortMapping, Protocol};
use netlink_packet_utils::nla::NlasIterator;

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

fn meta(key: u32) -> Expr {
    Expr::Meta { key, dreg: REG_1 }
}

fn cmp(op: CmpOp, data: &[u8]) -> Expr {
    Expr::Cmp {
        op,
        sreg: REG_1,
        data: data.to_vec(),
    }
}

fn payload(base: u32, offset: u32, len: u32) -> Expr {
    Expr::Payload {
        base,
        offset,
        len,
        dreg: REG_1,
    }
}

fn mask(mask: &[u8]) -> Expr {
    Expr::Mask {
        reg: REG_1,
        mask: mask.to_vec(),
    }
}

fn immediate(dreg: u32, data: &[u8]) -> Expr {
    Expr::Immediate {
        dreg,
        data: data.to_vec(),
    }
}

fn dnat(family: u8) -> Expr {
    Expr::Dnat {
        family,
        addr_reg: REG_1,
        port_reg: REG_2,
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
            meta(META_NFPROTO),
            cmp(CmpOp::Eq, &[2]),
            meta(META_L4PROTO),
            cmp(CmpOp::Eq, &[6]),
            payload(BASE_NETWORK, 16, 4),
            cmp(CmpOp::Eq, &[1, 2, 3, 4]),
            payload(BASE_TRANSPORT, 2, 2),
            cmp(CmpOp::Eq, &[0x1f, 0x90]),
            immediate(REG_1, &[10, 88, 0, 5]),
            immediate(REG_2, &[0, 80]),
            dnat(NFPROTO_IPV4),
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
    assert!(
        all.iter()
            .any(|r| r.exprs.contains(&cmp(CmpOp::Eq, &[132])))
    );
    let v6 = hostport_rules("p", &ips, &[pm(Protocol::Tcp, 80, 80, Some("fd00::1"))]);
    assert_eq!(v6.len(), 1);
    assert!(v6[0].exprs.contains(&dnat(NFPROTO_IPV6)));
    assert!(v6[0].exprs.contains(&payload(BASE_NETWORK, 24, 16)));
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
    let rules = base_rules(&[cidr], &[]);
    let leaving = rules
        .iter()
        .find(|r| r.comment.as_deref() == Some("pod network leaving it"))
        .unwrap();
    assert_eq!(
        leaving.exprs,
        vec![
            meta(META_NFPROTO),
            cmp(CmpOp::Eq, &[2]),
            payload(BASE_NETWORK, 12, 4),
            mask(&[255, 252, 0, 0]),
            cmp(CmpOp::Eq, &[10, 88, 0, 0]),
            payload(BASE_NETWORK, 16, 4),
            mask(&[255, 252, 0, 0]),
            cmp(CmpOp::Neq, &[10, 88, 0, 0]),
            Expr::Masquerade,
        ]
    );
    // prerouting + output jumps, localhost, and hairpin + leaving per CIDR.
    assert_eq!(rules.len(), 5);
    let v6: Cidr = "fd00:88::/64".parse().unwrap();
    assert_eq!(base_rules(&[cidr, v6], &[]).len(), 7);
}

#[test]
fn non_masquerade_destinations_are_excluded_per_family() {
    let v4: Cidr = "10.244.1.0/24".parse().unwrap();
    let v6: Cidr = "fd00:1::/64".parse().unwrap();
    let keep: Vec<Cidr> = ["10.244.0.0/16", "fd00::/48", "192.168.0.0/16"]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    let rules = base_rules(&[v4, v6], &keep);
    let leaving: Vec<&Rule> = rules
        .iter()
        .filter(|r| r.comment.as_deref() == Some("pod network leaving it"))
        .collect();
    assert_eq!(leaving.len(), 2);
    // IPv4: not the node's pod CIDR, nor either IPv4 destination kept as is.
    assert_eq!(
        leaving[0].exprs[5..],
        [
            payload(BASE_NETWORK, 16, 4),
            mask(&[255, 255, 255, 0]),
            cmp(CmpOp::Neq, &[10, 244, 1, 0]),
            payload(BASE_NETWORK, 16, 4),
            mask(&[255, 255, 0, 0]),
            cmp(CmpOp::Neq, &[10, 244, 0, 0]),
            payload(BASE_NETWORK, 16, 4),
            mask(&[255, 255, 0, 0]),
            cmp(CmpOp::Neq, &[192, 168, 0, 0]),
            Expr::Masquerade,
        ]
    );
    // IPv6: only the IPv6 destination joins (three "daddr !=" in all would be 9 + 1).
    let v6_neq = leaving[1]
        .exprs
        .iter()
        .filter(|e| matches!(e, Expr::Cmp { op: CmpOp::Neq, .. }))
        .count();
    assert_eq!(v6_neq, 2, "{:?}", leaving[1].exprs);
    // The other rules do not change.
    assert_eq!(rules.len(), base_rules(&[v4, v6], &[]).len());
}

/// The names of the expressions of an encoded rule, in order.
fn expr_names(m: &NftMessage) -> Vec<String> {
    let exprs = m.attr(NFTA_RULE_EXPRESSIONS).unwrap();
    NlasIterator::new(exprs)
        .map(|e| {
            let e = e.unwrap();
            let name = NlasIterator::new(e.value())
                .map(Result::unwrap)
                .find(|a| a.kind() == NFTA_EXPR_NAME)
                .unwrap();
            c_string(name.value())
        })
        .collect()
}

#[test]
fn encoded_rule_carries_table_chain_expressions_and_comment() {
    let ips = ["10.88.0.5".parse().unwrap()];
    let rule = &hostport_rules("pod-a", &ips, &[pm(Protocol::Tcp, 8080, 80, None)])[0];
    let (m, _) = rule_message(rule);
    let m = on_the_wire(m);
    assert_eq!(m.ty, (10 << 8) | Cmd::NewRule as u16);
    assert_eq!(m.family, NFPROTO_INET);
    assert_eq!(m.attr(NFTA_RULE_TABLE), Some(&b"berth\0"[..]));
    assert_eq!(m.attr(NFTA_RULE_CHAIN), Some(&b"hostports\0"[..]));
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
    let udata = m.attr(NFTA_RULE_USERDATA).unwrap();
    assert_eq!(
        parse_comment_udata(udata).as_deref(),
        Some("berth-pod:pod-a")
    );
    assert_eq!(comment_pod("berth-pod:pod-a"), Some("pod-a"));
    assert_eq!(comment_pod("other"), None);
}

#[test]
fn numbers_go_in_network_byte_order_and_nests_are_flagged() {
    let (m, _) = rule_message(&Rule {
        chain: HOSTPORTS,
        exprs: vec![Expr::Meta {
            key: META_L4PROTO,
            dreg: REG_1,
        }],
        comment: None,
    });
    let m = on_the_wire(m);
    let elem = NlasIterator::new(m.attr(NFTA_RULE_EXPRESSIONS).unwrap())
        .next()
        .unwrap()
        .unwrap();
    assert!(elem.nested_flag());
    let data = NlasIterator::new(elem.value())
        .map(Result::unwrap)
        .find(|a| a.kind() == 2)
        .unwrap();
    assert!(data.nested_flag());
    let values: Vec<Vec<u8>> = NlasIterator::new(data.value())
        .map(|a| a.unwrap().value().to_vec())
        .collect();
    assert_eq!(values, vec![vec![0, 0, 0, 1], vec![0, 0, 0, 16]]);
}

#[test]
fn listed_rules_are_read_back_by_handle_and_comment() {
    let (m, _) = rule_message(&Rule {
        chain: HOSTPORTS,
        exprs: Vec::new(),
        comment: Some(pod_comment("p")),
    });
    let mut m = on_the_wire(m);
    assert_eq!(listed_rule(&m), None, "a rule without a handle is skipped");
    m.attrs
        .push(Attr::Bytes(NFTA_RULE_HANDLE, 42u64.to_be_bytes().to_vec()));
    assert_eq!(
        listed_rule(&m),
        Some(ListedRule {
            handle: 42,
            comment: Some("berth-pod:p".into())
        })
    );
    m.attrs[1] = Attr::Bytes(NFTA_RULE_CHAIN, b"postrouting\0".to_vec());
    assert_eq!(listed_rule(&m), None, "only hostports rules are listed");
}

#[test]
fn setup_batch_is_table_chains_flushes_then_rules() {
    let msgs = setup_messages(&["10.88.0.0/16".parse().unwrap()], &[]);
    let kinds: Vec<u16> = msgs.iter().map(|(m, _)| m.ty & 0xff).collect();
    let [table, chain, rule, flush] =
        [Cmd::NewTable, Cmd::NewChain, Cmd::NewRule, Cmd::DelRule].map(|c| c as u16);
    assert_eq!(
        &kinds[..8],
        &[table, chain, chain, chain, chain, flush, flush, flush]
    );
    assert!(kinds[8..].iter().all(|k| *k == rule));
    let (begin, _, end) = batch(msgs);
    assert_eq!((begin.ty, begin.res_id), (0x10, 10));
    assert_eq!((end.ty, end.res_id), (0x11, 10));
}
