//! Links, addresses and routes over rtnetlink: the one place Berth changes interfaces.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NetlinkDeserializable, NetlinkHeader};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkExtentMask, LinkFlags, LinkHeader, LinkInfo, LinkMessage, LinkMessageBuffer,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use netlink_packet_utils::nla::NlasIterator;
use netlink_packet_utils::{DecodeError, Parseable, ParseableParametrized};

use crate::error::Error;
use crate::netlink::{NETLINK_ROUTE, NLM_F_CREATE, NLM_F_EXCL, NetlinkError, Socket};

/// Errno of "already exists" answers.
pub(crate) const EEXIST: i32 = libc::EEXIST;
/// Errno of "no such device" answers.
pub(crate) const ENODEV: i32 = libc::ENODEV;

/// Flags of a request that creates an object and fails if it exists.
const CREATE: u16 = NLM_F_CREATE | NLM_F_EXCL;
/// `NLM_F_DUMP` (root | match).
const DUMP: u16 = netlink_packet_core::NLM_F_DUMP;

/// What Berth needs to know about an existing link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Index of the bridge it is enslaved to.
    pub master: Option<u32>,
    /// Link kind (`bridge`, `veth`), when it has one.
    pub kind: Option<String>,
}

fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// A link message with `index`, and `flags` both set and in the change mask.
pub(crate) fn link_message(
    index: u32,
    flags: LinkFlags,
    attributes: Vec<LinkAttribute>,
) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = flags;
    m.header.change_mask = flags;
    m.attributes = attributes;
    m
}

/// Asks the kernel to leave the counters out of link answers: Berth never reads them.
fn skip_stats() -> LinkAttribute {
    LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])
}

/// Attribute numbers of the answers' parts Berth reads (`if_link.h`); the rest of a link
/// answer (per-family settings, counters) is skipped undecoded.
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const RTM_NEWLINK: u16 = 16;

impl NetlinkDeserializable for Link {
    type Error = DecodeError;

    /// Reads a link answer's index, name, master and kind with `netlink-packet-route`'s
    /// parsers. Decoding the whole [`LinkMessage`] would also decode every per-family
    /// setting the kernel sends with it, which costs more than the exchange itself.
    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Link, DecodeError> {
        if header.message_type != RTM_NEWLINK {
            return Err(format!("message type {} is not a link", header.message_type).into());
        }
        let buf = LinkMessageBuffer::new_checked(payload)?;
        let link_header = LinkHeader::parse(&buf)?;
        let mut link = Link {
            index: link_header.index,
            name: String::new(),
            master: None,
            kind: None,
        };
        for nla in buf.attributes() {
            let nla = nla?;
            match nla.kind() {
                IFLA_IFNAME | IFLA_MASTER => {
                    match LinkAttribute::parse_with_param(&nla, link_header.interface_family)? {
                        LinkAttribute::IfName(n) => link.name = n,
                        LinkAttribute::Controller(i) => link.master = Some(i),
                        _ => {}
                    }
                }
                IFLA_LINKINFO => {
                    for info in NlasIterator::new(nla.value()) {
                        let info = info?;
                        if info.kind() == IFLA_INFO_KIND {
                            link.kind = Some(InfoKind::parse(&info)?.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(link)
    }
}

/// The link called `name`, if it exists.
pub(crate) fn get(sock: &mut Socket, name: &str) -> Result<Option<Link>, NetlinkError> {
    let m = link_message(
        0,
        LinkFlags::empty(),
        vec![LinkAttribute::IfName(name.to_string()), skip_stats()],
    );
    match sock.dump(RouteNetlinkMessage::GetLink(m), 0) {
        Ok(links) => Ok(links.into_iter().next()),
        Err(e) if e.errno() == Some(ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every link of the namespace.
pub(crate) fn list(sock: &mut Socket) -> Result<Vec<Link>, NetlinkError> {
    let m = link_message(0, LinkFlags::empty(), vec![skip_stats()]);
    sock.dump(RouteNetlinkMessage::GetLink(m), DUMP)
}

/// The message creating a bridge that is up, with a fixed MAC (so that it never changes
/// as ports come and go, which would stale every pod's neighbour entry for the gateway).
pub(crate) fn bridge_message(name: &str, mtu: u32, mac: [u8; 6]) -> RouteNetlinkMessage {
    RouteNetlinkMessage::NewLink(link_message(
        0,
        LinkFlags::Up,
        vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::Address(mac.to_vec()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
        ],
    ))
}

/// Creates the bridge of [`bridge_message`].
pub(crate) fn create_bridge(
    sock: &mut Socket,
    name: &str,
    mtu: u32,
    mac: [u8; 6],
) -> Result<(), NetlinkError> {
    sock.request(bridge_message(name, mtu, mac), CREATE)
}

/// A veth pair to create: one end in the calling socket's namespace, the other directly in
/// another namespace under its final name.
#[derive(Debug)]
pub(crate) struct VethSpec<'a> {
    /// Name of the end that stays in this namespace.
    pub host_name: &'a str,
    /// Bridge the host end is enslaved to.
    pub master: u32,
    /// Name of the other end inside `peer_netns`.
    pub peer_name: &'a str,
    /// Namespace the other end is created in.
    pub peer_netns: BorrowedFd<'a>,
    /// MTU of both ends.
    pub mtu: u32,
}

/// Builds the one message that creates both ends, the host end up and on its bridge.
pub(crate) fn veth_message(spec: &VethSpec<'_>) -> RouteNetlinkMessage {
    // Not IFF_UP: the kernel opens the peer before pairing it, and an unpaired veth
    // refuses to go up (ENOTCONN).
    let peer = link_message(
        0,
        LinkFlags::empty(),
        vec![
            LinkAttribute::IfName(spec.peer_name.to_string()),
            LinkAttribute::Mtu(spec.mtu),
            LinkAttribute::NetNsFd(spec.peer_netns.as_raw_fd()),
        ],
    );
    RouteNetlinkMessage::NewLink(link_message(
        0,
        LinkFlags::Up,
        vec![
            LinkAttribute::IfName(spec.host_name.to_string()),
            LinkAttribute::Mtu(spec.mtu),
            LinkAttribute::Controller(spec.master),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
            ]),
        ],
    ))
}

/// Creates the veth pair described by `spec`.
pub(crate) fn create_veth(sock: &mut Socket, spec: &VethSpec<'_>) -> Result<(), NetlinkError> {
    sock.request(veth_message(spec), CREATE)
}

/// Deletes the link called `name`; returns whether it existed.
pub(crate) fn delete(sock: &mut Socket, name: &str) -> Result<bool, NetlinkError> {
    let m = link_message(
        0,
        LinkFlags::empty(),
        vec![LinkAttribute::IfName(name.to_string())],
    );
    match sock.request(RouteNetlinkMessage::DelLink(m), 0) {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// An rtnetlink socket in the calling thread's namespace, a pod's.
pub(crate) fn pod_socket() -> Result<Socket, Error> {
    Socket::open(NETLINK_ROUTE).map_err(Error::io("open rtnetlink in the pod"))
}

/// Brings the pod's loopback device up: containers expect it.
pub(crate) fn loopback_up(sock: &mut Socket) -> Result<(), Error> {
    // The loopback device is always index 1 in a network namespace.
    set_up(sock, 1).map_err(Error::netlink("bring lo up in the pod"))
}

/// Brings the link with `index` up.
pub(crate) fn set_up(sock: &mut Socket, index: u32) -> Result<(), NetlinkError> {
    let m = link_message(index, LinkFlags::Up, Vec::new());
    sock.request(RouteNetlinkMessage::NewLink(m), 0)
}

/// The message turning hairpin mode on for bridge port `index`, as the port's bridge
/// settings (`ip link set X type bridge_slave hairpin on`).
pub(crate) fn hairpin_message(index: u32) -> RouteNetlinkMessage {
    RouteNetlinkMessage::NewLink(link_message(
        index,
        LinkFlags::empty(),
        vec![LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                true,
            )])),
        ])],
    ))
}

/// Turns hairpin mode on for a bridge port, so that a packet a pod sends to its own
/// hostPort can be bridged back to it when br_netfilter is in use.
pub(crate) fn set_hairpin(sock: &mut Socket, index: u32) -> Result<(), NetlinkError> {
    sock.request(hairpin_message(index), 0)
}

/// Builds the message adding `addr/prefix` to link `index` (IPv6 without duplicate
/// address detection, so the address is usable at once).
pub(crate) fn address_message(index: u32, addr: IpAddr, prefix: u8) -> RouteNetlinkMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(addr);
    m.header.prefix_len = prefix;
    m.header.index = index;
    m.attributes = if addr.is_ipv4() {
        vec![
            AddressAttribute::Local(addr),
            AddressAttribute::Address(addr),
        ]
    } else {
        vec![
            AddressAttribute::Address(addr),
            AddressAttribute::Flags(AddressFlags::Nodad),
        ]
    };
    RouteNetlinkMessage::NewAddress(m)
}

/// Adds `addr/prefix` to link `index`; an address already there is fine.
pub(crate) fn add_address(
    sock: &mut Socket,
    index: u32,
    addr: IpAddr,
    prefix: u8,
) -> Result<(), NetlinkError> {
    match sock.request(address_message(index, addr, prefix), CREATE) {
        Err(e) if e.errno() == Some(EEXIST) => Ok(()),
        r => r,
    }
}

/// Builds the message adding the default route via `gateway` out of link `index`.
pub(crate) fn default_route_message(gateway: IpAddr, index: u32) -> RouteNetlinkMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(gateway);
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Static;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    let gateway = match gateway {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    };
    m.attributes = vec![RouteAttribute::Gateway(gateway), RouteAttribute::Oif(index)];
    RouteNetlinkMessage::NewRoute(m)
}

/// Adds the default route via `gateway` out of link `index`; one already there is fine.
pub(crate) fn add_default_route(
    sock: &mut Socket,
    gateway: IpAddr,
    index: u32,
) -> Result<(), NetlinkError> {
    match sock.request(default_route_message(gateway, index), CREATE) {
        Err(e) if e.errno() == Some(EEXIST) => Ok(()),
        r => r,
    }
}

/// The names of the interfaces in the calling thread's network namespace, as the kernel
/// lists them in `/proc/thread-self/net/dev`: a cheap look before a netlink dump, whose
/// every answer must be decoded attribute by attribute.
pub(crate) fn names_in_this_namespace() -> std::io::Result<Vec<String>> {
    Ok(net_dev_names(&std::fs::read_to_string(
        "/proc/thread-self/net/dev",
    )?))
}

/// The interface names of a `/proc/net/dev` text (two header lines, then `name: counters`).
fn net_dev_names(text: &str) -> Vec<String> {
    text.lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_owned()))
        .filter(|name| !name.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{round_trip as on_the_wire, wire_bytes};
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    use std::os::fd::AsFd;

    #[test]
    fn net_dev_lists_every_interface_name() {
        let text = "Inter-|   Receive                            |  Transmit\n \
                    face |bytes    packets errs drop fifo frame compressed multicast|bytes\n    \
                    lo:  1234 10 0 0 0 0 0 0 1234\n  berth0: 0 0 0 0 0 0 0 0 0\n\
                    bth0123456789ab: 5 1 0 0 0 0 0 0 5\n";
        assert_eq!(
            net_dev_names(text),
            ["lo", "berth0", "bth0123456789ab"].map(String::from)
        );
        assert!(net_dev_names("").is_empty());
    }

    fn new_link(m: RouteNetlinkMessage) -> LinkMessage {
        match on_the_wire(m) {
            RouteNetlinkMessage::NewLink(l) => l,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn veth_message_puts_peer_name_and_namespace_inside_peer_info() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let spec = VethSpec {
            host_name: "bthabc",
            master: 7,
            peer_name: "eth0",
            peer_netns: f.as_fd(),
            mtu: 1400,
        };
        let host = new_link(veth_message(&spec));
        assert_eq!(host.header.flags, LinkFlags::Up);
        assert_eq!(host.header.change_mask, LinkFlags::Up);
        let attrs = &host.attributes;
        assert!(attrs.contains(&LinkAttribute::IfName("bthabc".into())));
        assert!(attrs.contains(&LinkAttribute::Controller(7)));
        assert!(attrs.contains(&LinkAttribute::Mtu(1400)));
        let Some(LinkAttribute::LinkInfo(info)) = attrs
            .iter()
            .find(|a| matches!(a, LinkAttribute::LinkInfo(_)))
        else {
            panic!("no link info in {attrs:?}");
        };
        assert_eq!(info[0], LinkInfo::Kind(InfoKind::Veth));
        let Some(LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer)))) = info.get(1) else {
            panic!("no veth peer in {info:?}");
        };
        // The peer has its own header, not asking for IFF_UP.
        assert_eq!(peer.header.flags, LinkFlags::empty());
        assert_eq!(
            peer.attributes,
            vec![
                LinkAttribute::IfName("eth0".into()),
                LinkAttribute::Mtu(1400),
                LinkAttribute::NetNsFd(f.as_raw_fd()),
            ]
        );
    }

    #[test]
    fn bridge_has_its_fixed_mac_and_hairpin_is_a_port_setting() {
        let bridge = new_link(bridge_message("berth0", 1500, [2, 0x62, 10, 88, 0, 1]));
        assert!(
            bridge
                .attributes
                .contains(&LinkAttribute::Address(vec![2, 0x62, 10, 88, 0, 1]))
        );
        assert!(
            bridge
                .attributes
                .contains(&LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                    InfoKind::Bridge
                )]))
        );
        let port = new_link(hairpin_message(9));
        assert_eq!(port.header.index, 9);
        assert_eq!(port.header.change_mask, LinkFlags::empty());
        assert_eq!(
            port.attributes,
            vec![LinkAttribute::LinkInfo(vec![
                LinkInfo::PortKind(InfoPortKind::Bridge),
                LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                    true
                )])),
            ])]
        );
    }

    #[test]
    fn v6_addresses_skip_duplicate_detection() {
        let RouteNetlinkMessage::NewAddress(m) =
            on_the_wire(address_message(3, "fd00::2".parse().unwrap(), 64))
        else {
            panic!("not an address message");
        };
        assert_eq!(
            (m.header.family, m.header.prefix_len, m.header.index),
            (AddressFamily::Inet6, 64, 3)
        );
        assert!(
            m.attributes
                .contains(&AddressAttribute::Flags(AddressFlags::Nodad))
        );
        let RouteNetlinkMessage::NewAddress(m) =
            on_the_wire(address_message(3, "10.88.0.2".parse().unwrap(), 16))
        else {
            panic!("not an address message");
        };
        let ip: IpAddr = "10.88.0.2".parse().unwrap();
        assert_eq!(
            m.attributes,
            vec![AddressAttribute::Local(ip), AddressAttribute::Address(ip)]
        );
    }

    #[test]
    fn default_route_is_static_unicast_in_the_main_table() {
        let RouteNetlinkMessage::NewRoute(m) =
            on_the_wire(default_route_message("10.88.0.1".parse().unwrap(), 4))
        else {
            panic!("not a route message");
        };
        assert_eq!(m.header.address_family, AddressFamily::Inet);
        assert_eq!(m.header.destination_prefix_length, 0);
        assert_eq!(m.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(m.header.protocol, RouteProtocol::Static);
        assert_eq!(m.header.kind, RouteType::Unicast);
        assert_eq!(
            m.attributes,
            vec![
                RouteAttribute::Gateway(RouteAddress::Inet("10.88.0.1".parse().unwrap())),
                RouteAttribute::Oif(4)
            ]
        );
    }

    #[test]
    fn link_answers_yield_index_name_master_and_kind() {
        let mut answer = link_message(
            12,
            LinkFlags::Up,
            vec![
                LinkAttribute::IfName("bth0123".into()),
                LinkAttribute::Mtu(1500),
                LinkAttribute::Controller(4),
                LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
            ],
        );
        answer.header.interface_family = AddressFamily::Unspec;
        let buf = wire_bytes(RouteNetlinkMessage::NewLink(answer));
        let parsed = NetlinkMessage::<Link>::deserialize(&buf).unwrap();
        let NetlinkPayload::InnerMessage(link) = parsed.payload else {
            panic!("not a link: {:?}", parsed.payload);
        };
        assert_eq!(
            link,
            Link {
                index: 12,
                name: "bth0123".into(),
                master: Some(4),
                kind: Some("veth".into()),
            }
        );
        // Another message type is refused rather than misread.
        let del = wire_bytes(RouteNetlinkMessage::DelLink(LinkMessage::default()));
        assert!(NetlinkMessage::<Link>::deserialize(&del).is_err());
    }
}
