//! nf_tables messages: the table, chains and rules of [`super::rules`] as nfnetlink
//! messages, and the rules the kernel lists read back.
//!
//! No crate models nf_tables, so its messages are this module's own `netlink-packet-core`
//! message type; the attributes are a typed tree emitted and parsed by
//! `netlink-packet-utils`, with nf_tables' numbers in network byte order.

use netlink_packet_core::{NetlinkDeserializable, NetlinkHeader, NetlinkSerializable};
use netlink_packet_utils::nla::{Nla, NlasIterator};
use netlink_packet_utils::{DecodeError, Emitable};

use super::rules::{Expr, HOSTPORTS, OUTPUT, POSTROUTING, PREROUTING, Rule};
use crate::cidr::Cidr;
use crate::netlink::{NLM_F_APPEND, NLM_F_CREATE, c_string};

/// The table Berth owns.
pub(crate) const TABLE: &str = "berth";

/// nf_tables' family of tables that see IPv4 and IPv6 alike.
pub(crate) const NFPROTO_INET: u8 = 1;

/// The nf_tables commands Berth sends (`NFT_MSG_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmd {
    NewTable = 0,
    DelTable = 2,
    NewChain = 3,
    NewRule = 6,
    GetRule = 7,
    DelRule = 8,
    GetGen = 16,
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
pub(crate) const NFTA_RULE_TABLE: u16 = 1;
pub(crate) const NFTA_RULE_CHAIN: u16 = 2;
pub(crate) const NFTA_RULE_HANDLE: u16 = 3;
pub(crate) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(crate) const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
pub(crate) const NFTA_EXPR_NAME: u16 = 1;
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

const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;

/// One nf_tables attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attr {
    /// A NUL-terminated string.
    Str(u16, String),
    /// A u32 in network byte order.
    U32(u16, u32),
    /// A u64 in network byte order.
    U64(u16, u64),
    /// Raw bytes (data values, user data, and every attribute read back).
    Bytes(u16, Vec<u8>),
    /// Attributes nested in this one.
    Nested(u16, Vec<Attr>),
}

impl Attr {
    /// The attribute's payload when it holds bytes.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Attr::Bytes(_, b) => Some(b),
            _ => None,
        }
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::Str(_, s) => s.len() + 1,
            Attr::U32(..) => 4,
            Attr::U64(..) => 8,
            Attr::Bytes(_, b) => b.len(),
            Attr::Nested(_, v) => v.as_slice().buffer_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attr::Str(k, _)
            | Attr::U32(k, _)
            | Attr::U64(k, _)
            | Attr::Bytes(k, _)
            | Attr::Nested(k, _) => *k,
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            Attr::Str(_, s) => {
                buf[..s.len()].copy_from_slice(s.as_bytes());
                buf[s.len()] = 0;
            }
            Attr::U32(_, v) => buf.copy_from_slice(&v.to_be_bytes()),
            Attr::U64(_, v) => buf.copy_from_slice(&v.to_be_bytes()),
            Attr::Bytes(_, b) => buf.copy_from_slice(b),
            Attr::Nested(_, v) => v.as_slice().emit(buf),
        }
    }

    fn is_nested(&self) -> bool {
        matches!(self, Attr::Nested(..))
    }
}

/// One nfnetlink message of the nf_tables subsystem: `nfgenmsg` and attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NftMessage {
    /// The netlink message type: subsystem and command.
    pub ty: u16,
    /// The table family (`nfgenmsg.nfgen_family`).
    pub family: u8,
    /// The resource id (`nfgenmsg.res_id`): the subsystem, in batch markers.
    pub res_id: u16,
    /// The top-level attributes (read back as [`Attr::Bytes`]).
    pub attrs: Vec<Attr>,
}

impl NftMessage {
    /// A command of the nf_tables subsystem for tables of `family`.
    pub fn new(cmd: Cmd, family: u8, attrs: Vec<Attr>) -> NftMessage {
        NftMessage {
            ty: (NFNL_SUBSYS_NFTABLES << 8) | cmd as u16,
            family,
            res_id: 0,
            attrs,
        }
    }

    /// The begin or end marker of a batch.
    fn batch_marker(ty: u16) -> NftMessage {
        NftMessage {
            ty,
            family: 0,
            res_id: NFNL_SUBSYS_NFTABLES,
            attrs: Vec::new(),
        }
    }

    /// The first top-level attribute of `kind`, as bytes.
    pub fn attr(&self, kind: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|a| a.kind() == kind)
            .and_then(Attr::bytes)
    }
}

impl NetlinkSerializable for NftMessage {
    fn message_type(&self) -> u16 {
        self.ty
    }

    fn buffer_len(&self) -> usize {
        4 + self.attrs.as_slice().buffer_len()
    }

    fn serialize(&self, buf: &mut [u8]) {
        // nfgenmsg: family, version 0, res_id in network byte order.
        buf[0] = self.family;
        buf[1] = 0;
        buf[2..4].copy_from_slice(&self.res_id.to_be_bytes());
        self.attrs.as_slice().emit(&mut buf[4..]);
    }
}

impl NetlinkDeserializable for NftMessage {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        let (Some(&family), Some(res)) = (payload.first(), payload.get(2..4)) else {
            return Err(DecodeError::from("nf_tables message shorter than nfgenmsg"));
        };
        let attrs = NlasIterator::new(&payload[4..])
            .map(|nla| nla.map(|n| Attr::Bytes(n.kind(), n.value().to_vec())))
            .collect::<Result<_, _>>()?;
        Ok(NftMessage {
            ty: header.message_type,
            family,
            res_id: u16::from_be_bytes([res[0], res[1]]),
            attrs,
        })
    }
}

/// A batch's begin and end markers around `msgs` (with their header flags).
pub(crate) fn batch(
    msgs: Vec<(NftMessage, u16)>,
) -> (NftMessage, Vec<(NftMessage, u16)>, NftMessage) {
    (
        NftMessage::batch_marker(NFNL_MSG_BATCH_BEGIN),
        msgs,
        NftMessage::batch_marker(NFNL_MSG_BATCH_END),
    )
}

fn data_value(kind: u16, data: &[u8]) -> Attr {
    Attr::Nested(kind, vec![Attr::Bytes(NFTA_DATA_VALUE, data.to_vec())])
}

/// The expression's name and data attributes (`NFTA_EXPR_*`).
fn expr_attr(e: &Expr) -> Attr {
    let (name, data) = match e {
        Expr::Meta { key, dreg } => ("meta", vec![Attr::U32(1, *dreg), Attr::U32(2, *key)]),
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => (
            "payload",
            vec![
                Attr::U32(1, *dreg),
                Attr::U32(2, *base),
                Attr::U32(3, *offset),
                Attr::U32(4, *len),
            ],
        ),
        Expr::Mask { reg, mask } => (
            "bitwise",
            vec![
                Attr::U32(1, *reg),
                Attr::U32(2, *reg),
                Attr::U32(3, mask.len() as u32),
                data_value(4, mask),
                data_value(5, &vec![0; mask.len()]),
            ],
        ),
        Expr::Cmp { op, sreg, data } => (
            "cmp",
            vec![
                Attr::U32(1, *sreg),
                Attr::U32(2, *op as u32),
                data_value(3, data),
            ],
        ),
        // NFTA_FIB_DREG, NFTA_FIB_RESULT = ADDRTYPE, NFTA_FIB_FLAGS = DADDR.
        Expr::FibDaddrType { dreg } => (
            "fib",
            vec![Attr::U32(1, *dreg), Attr::U32(2, 3), Attr::U32(3, 2)],
        ),
        // NFTA_CT_DREG, NFTA_CT_KEY = NFT_CT_STATUS.
        Expr::CtStatus { dreg } => ("ct", vec![Attr::U32(1, *dreg), Attr::U32(2, 2)]),
        Expr::Immediate { dreg, data } => {
            ("immediate", vec![Attr::U32(1, *dreg), data_value(2, data)])
        }
        Expr::Jump { chain } => (
            "immediate",
            vec![
                Attr::U32(1, 0),
                Attr::Nested(
                    2,
                    vec![Attr::Nested(
                        NFTA_DATA_VERDICT,
                        vec![
                            Attr::U32(NFTA_VERDICT_CODE, NFT_JUMP as u32),
                            Attr::Str(NFTA_VERDICT_CHAIN, chain.clone()),
                        ],
                    )],
                ),
            ],
        ),
        // NFTA_NAT_TYPE = DNAT, FAMILY, REG_ADDR_MIN, REG_PROTO_MIN, FLAGS.
        Expr::Dnat {
            family,
            addr_reg,
            port_reg,
        } => (
            "nat",
            vec![
                Attr::U32(1, 1),
                Attr::U32(2, u32::from(*family)),
                Attr::U32(3, *addr_reg),
                Attr::U32(5, *port_reg),
                Attr::U32(7, NF_NAT_RANGE_PROTO_SPECIFIED),
            ],
        ),
        Expr::Masquerade => ("masq", Vec::new()),
    };
    let mut attrs = vec![Attr::Str(NFTA_EXPR_NAME, name.into())];
    if !data.is_empty() {
        attrs.push(Attr::Nested(NFTA_EXPR_DATA, data));
    }
    Attr::Nested(NFTA_LIST_ELEM, attrs)
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

/// The comment in a rule's user data, if it has one.
pub(crate) fn parse_comment_udata(data: &[u8]) -> Option<String> {
    let mut rest = data;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], rest[1] as usize);
        let value = rest.get(2..2 + len)?;
        if ty == NFTNL_UDATA_RULE_COMMENT {
            return Some(c_string(value));
        }
        rest = &rest[2 + len..];
    }
    None
}

/// The table and chain attributes naming `chain` of Berth's table.
fn in_chain(chain: &str) -> Vec<Attr> {
    vec![
        Attr::Str(NFTA_RULE_TABLE, TABLE.into()),
        Attr::Str(NFTA_RULE_CHAIN, chain.into()),
    ]
}

/// The NEWRULE message appending `rule` (with its header flags).
pub(crate) fn rule_message(rule: &Rule) -> (NftMessage, u16) {
    let mut attrs = in_chain(rule.chain);
    attrs.push(Attr::Nested(
        NFTA_RULE_EXPRESSIONS,
        rule.exprs.iter().map(expr_attr).collect(),
    ));
    if let Some(c) = &rule.comment {
        attrs.push(Attr::Bytes(NFTA_RULE_USERDATA, comment_udata(c)));
    }
    (
        NftMessage::new(Cmd::NewRule, NFPROTO_INET, attrs),
        NLM_F_CREATE | NLM_F_APPEND,
    )
}

fn chain_message(name: &str, hook: Option<(u32, i32)>) -> (NftMessage, u16) {
    let mut attrs = vec![
        Attr::Str(NFTA_CHAIN_TABLE, TABLE.into()),
        Attr::Str(NFTA_CHAIN_NAME, name.into()),
    ];
    if let Some((hooknum, prio)) = hook {
        attrs.push(Attr::Nested(
            NFTA_CHAIN_HOOK,
            vec![
                Attr::U32(NFTA_HOOK_HOOKNUM, hooknum),
                Attr::U32(NFTA_HOOK_PRIORITY, prio as u32),
            ],
        ));
        attrs.push(Attr::U32(NFTA_CHAIN_POLICY, NF_ACCEPT));
        attrs.push(Attr::Str(NFTA_CHAIN_TYPE, "nat".into()));
    }
    (
        NftMessage::new(Cmd::NewChain, NFPROTO_INET, attrs),
        NLM_F_CREATE,
    )
}

/// The message deleting the whole table.
pub(crate) fn delete_table_message() -> (NftMessage, u16) {
    let attrs = vec![Attr::Str(NFTA_TABLE_NAME, TABLE.into())];
    (NftMessage::new(Cmd::DelTable, NFPROTO_INET, attrs), 0)
}

/// The DELRULE message removing the rule with `handle` from `chain`, or every rule of
/// `chain` without one.
pub(crate) fn delete_rule_message(chain: &str, handle: Option<u64>) -> (NftMessage, u16) {
    let mut attrs = in_chain(chain);
    attrs.extend(handle.map(|h| Attr::U64(NFTA_RULE_HANDLE, h)));
    (NftMessage::new(Cmd::DelRule, NFPROTO_INET, attrs), 0)
}

/// The GETRULE dump request for the rules of `hostports`.
pub(crate) fn list_hostports_message() -> NftMessage {
    NftMessage::new(Cmd::GetRule, NFPROTO_INET, in_chain(HOSTPORTS))
}

/// The GETGEN request for the ruleset generation.
pub(crate) fn generation_message() -> NftMessage {
    NftMessage::new(Cmd::GetGen, 0, Vec::new())
}

/// The batch that creates the table and its chains if missing and (re)writes the fixed
/// rules for `pod_cidrs` (masquerading traffic leaving them except towards
/// `non_masquerade`), leaving `hostports` as it is: safe to repeat at any time.
pub(crate) fn setup_messages(
    pod_cidrs: &[Cidr],
    non_masquerade: &[Cidr],
) -> Vec<(NftMessage, u16)> {
    let table = vec![Attr::Str(NFTA_TABLE_NAME, TABLE.into())];
    let mut msgs = vec![
        (
            NftMessage::new(Cmd::NewTable, NFPROTO_INET, table),
            NLM_F_CREATE,
        ),
        chain_message(HOSTPORTS, None),
        chain_message(PREROUTING, Some((NF_INET_PRE_ROUTING, PRIO_DSTNAT))),
        chain_message(OUTPUT, Some((NF_INET_LOCAL_OUT, PRIO_DSTNAT))),
        chain_message(POSTROUTING, Some((NF_INET_POST_ROUTING, PRIO_SRCNAT))),
    ];
    for chain in [PREROUTING, OUTPUT, POSTROUTING] {
        msgs.push(delete_rule_message(chain, None));
    }
    msgs.extend(
        super::rules::base_rules(pod_cidrs, non_masquerade)
            .iter()
            .map(rule_message),
    );
    msgs
}
