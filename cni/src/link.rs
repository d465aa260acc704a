//! Links, addresses and routes over rtnetlink: the one place Berth changes interfaces.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::netlink::{
    Message, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NetlinkError, Socket, attr_string, attrs,
    find_attr,
};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFLA_PROTINFO: u16 = 12;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_BRPORT_MODE: u16 = 4;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;

const RTA_GATEWAY: u16 = 5;
const RTA_OIF: u16 = 4;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RTN_UNICAST: u8 = 1;

const IFF_UP: u32 = libc::IFF_UP as u32;
const AF_BRIDGE: u8 = libc::AF_BRIDGE as u8;

/// Errno of "already exists" answers.
pub(crate) const EEXIST: i32 = libc::EEXIST;
/// Errno of "no such device" answers.
pub(crate) const ENODEV: i32 = libc::ENODEV;

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

/// The 16-byte `ifinfomsg` header.
fn ifinfomsg(family: u8, index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0] = family;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

fn family(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn parse_link(payload: &[u8]) -> Option<Link> {
    if payload.len() < 16 {
        return None;
    }
    let index = u32::from_ne_bytes(payload[4..8].try_into().ok()?);
    let mut link = Link {
        index,
        name: String::new(),
        master: None,
        kind: None,
    };
    for (ty, data) in attrs(&payload[16..]) {
        match ty {
            IFLA_IFNAME => link.name = attr_string(data),
            IFLA_MASTER if data.len() >= 4 => {
                link.master = Some(u32::from_ne_bytes(data[..4].try_into().ok()?))
            }
            IFLA_LINKINFO => link.kind = find_attr(data, IFLA_INFO_KIND).map(attr_string),
            _ => {}
        }
    }
    Some(link)
}

/// The link called `name`, if it exists.
pub(crate) fn get(sock: &mut Socket, name: &str) -> Result<Option<Link>, NetlinkError> {
    let mut m = Message::new(RTM_GETLINK, 0);
    m.push_header(&ifinfomsg(0, 0, 0, 0))
        .attr_str(IFLA_IFNAME, name);
    match sock.dump(m) {
        Ok(msgs) => Ok(msgs.iter().find_map(|r| parse_link(&r.payload))),
        Err(e) if e.errno() == Some(ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every link of the namespace.
pub(crate) fn list(sock: &mut Socket) -> Result<Vec<Link>, NetlinkError> {
    let mut m = Message::new(RTM_GETLINK, NLM_F_DUMP);
    m.push_header(&ifinfomsg(0, 0, 0, 0));
    Ok(sock
        .dump(m)?
        .iter()
        .filter_map(|r| parse_link(&r.payload))
        .collect())
}

/// Creates a bridge that is up, with a fixed MAC (so that it never changes as ports come
/// and go, which would stale every pod's neighbour entry for the gateway).
pub(crate) fn create_bridge(
    sock: &mut Socket,
    name: &str,
    mtu: u32,
    mac: [u8; 6],
) -> Result<(), NetlinkError> {
    let mut m = Message::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
    m.push_header(&ifinfomsg(0, 0, IFF_UP, IFF_UP))
        .attr_str(IFLA_IFNAME, name)
        .attr_u32(IFLA_MTU, mtu)
        .attr(IFLA_ADDRESS, &mac)
        .nested(IFLA_LINKINFO, |m| {
            m.attr_str(IFLA_INFO_KIND, "bridge");
        });
    sock.request(m)
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
pub(crate) fn veth_message(spec: &VethSpec<'_>) -> Message {
    let mut m = Message::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
    m.push_header(&ifinfomsg(0, 0, IFF_UP, IFF_UP))
        .attr_str(IFLA_IFNAME, spec.host_name)
        .attr_u32(IFLA_MTU, spec.mtu)
        .attr_u32(IFLA_MASTER, spec.master)
        .nested(IFLA_LINKINFO, |m| {
            m.attr_str(IFLA_INFO_KIND, "veth")
                .nested(IFLA_INFO_DATA, |m| {
                    m.nested(VETH_INFO_PEER, |m| {
                        // Not IFF_UP: the kernel opens the peer before pairing it, and an
                        // unpaired veth refuses to go up (ENOTCONN).
                        m.push_header(&ifinfomsg(0, 0, 0, 0))
                            .attr_str(IFLA_IFNAME, spec.peer_name)
                            .attr_u32(IFLA_MTU, spec.mtu)
                            .attr_u32(IFLA_NET_NS_FD, spec.peer_netns.as_raw_fd() as u32);
                    });
                });
        });
    m
}

/// Creates the veth pair described by `spec`.
pub(crate) fn create_veth(sock: &mut Socket, spec: &VethSpec<'_>) -> Result<(), NetlinkError> {
    sock.request(veth_message(spec))
}

/// Deletes the link called `name`; returns whether it existed.
pub(crate) fn delete(sock: &mut Socket, name: &str) -> Result<bool, NetlinkError> {
    let mut m = Message::new(RTM_DELLINK, 0);
    m.push_header(&ifinfomsg(0, 0, 0, 0))
        .attr_str(IFLA_IFNAME, name);
    match sock.request(m) {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Brings the link with `index` up.
pub(crate) fn set_up(sock: &mut Socket, index: u32) -> Result<(), NetlinkError> {
    let mut m = Message::new(RTM_NEWLINK, 0);
    m.push_header(&ifinfomsg(0, index, IFF_UP, IFF_UP));
    sock.request(m)
}

/// Turns hairpin mode on for a bridge port, so that a packet a pod sends to its own
/// hostPort can be bridged back to it when br_netfilter is in use.
pub(crate) fn set_hairpin(sock: &mut Socket, index: u32) -> Result<(), NetlinkError> {
    let mut m = Message::new(RTM_SETLINK, 0);
    m.push_header(&ifinfomsg(AF_BRIDGE, index, 0, 0))
        .nested(IFLA_PROTINFO, |m| {
            m.attr_u8(IFLA_BRPORT_MODE, 1);
        });
    sock.request(m)
}

/// Builds the message adding `addr/prefix` to link `index` (IPv6 without duplicate
/// address detection, so the address is usable at once).
pub(crate) fn address_message(index: u32, addr: IpAddr, prefix: u8) -> Message {
    let mut m = Message::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
    let mut h = [0u8; 8];
    h[0] = family(addr);
    h[1] = prefix;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    m.push_header(&h);
    let bytes = addr_bytes(addr);
    if addr.is_ipv4() {
        m.attr(IFA_LOCAL, &bytes).attr(IFA_ADDRESS, &bytes);
    } else {
        m.attr(IFA_ADDRESS, &bytes).attr_u32(IFA_FLAGS, IFA_F_NODAD);
    }
    m
}

/// Adds `addr/prefix` to link `index`; an address already there is fine.
pub(crate) fn add_address(
    sock: &mut Socket,
    index: u32,
    addr: IpAddr,
    prefix: u8,
) -> Result<(), NetlinkError> {
    match sock.request(address_message(index, addr, prefix)) {
        Err(e) if e.errno() == Some(EEXIST) => Ok(()),
        r => r,
    }
}

/// Adds the default route via `gateway` out of link `index`; one already there is fine.
pub(crate) fn add_default_route(
    sock: &mut Socket,
    gateway: IpAddr,
    index: u32,
) -> Result<(), NetlinkError> {
    let mut m = Message::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope (universe), type, flags.
    let h = [
        family(gateway),
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_STATIC,
        0,
        RTN_UNICAST,
        0,
        0,
        0,
        0,
    ];
    m.push_header(&h)
        .attr(RTA_GATEWAY, &addr_bytes(gateway))
        .attr_u32(RTA_OIF, index);
    match sock.request(m) {
        Err(e) if e.errno() == Some(EEXIST) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

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
        let m = veth_message(&spec);
        let attrs_part = &m.payload()[16..];
        assert_eq!(
            find_attr(attrs_part, IFLA_IFNAME)
                .map(attr_string)
                .as_deref(),
            Some("bthabc")
        );
        assert_eq!(
            find_attr(attrs_part, IFLA_MASTER),
            Some(&7u32.to_ne_bytes()[..])
        );
        let info = find_attr(attrs_part, IFLA_LINKINFO).unwrap();
        assert_eq!(
            find_attr(info, IFLA_INFO_KIND).map(attr_string).as_deref(),
            Some("veth")
        );
        let peer = find_attr(find_attr(info, IFLA_INFO_DATA).unwrap(), VETH_INFO_PEER).unwrap();
        // The peer starts with its own ifinfomsg, not asking for IFF_UP.
        assert_eq!(u32::from_ne_bytes(peer[8..12].try_into().unwrap()), 0);
        let peer_attrs = &peer[16..];
        assert_eq!(
            find_attr(peer_attrs, IFLA_IFNAME)
                .map(attr_string)
                .as_deref(),
            Some("eth0")
        );
        assert_eq!(
            find_attr(peer_attrs, IFLA_MTU),
            Some(&1400u32.to_ne_bytes()[..])
        );
        assert_eq!(
            find_attr(peer_attrs, IFLA_NET_NS_FD),
            Some(&(f.as_raw_fd() as u32).to_ne_bytes()[..])
        );
    }

    #[test]
    fn v6_addresses_skip_duplicate_detection() {
        let m = address_message(3, "fd00::2".parse().unwrap(), 64);
        let p = m.payload();
        assert_eq!((p[0], p[1]), (libc::AF_INET6 as u8, 64));
        assert_eq!(
            find_attr(&p[8..], IFA_FLAGS),
            Some(&IFA_F_NODAD.to_ne_bytes()[..])
        );
        let m = address_message(3, "10.88.0.2".parse().unwrap(), 16);
        let p = m.payload();
        assert_eq!(find_attr(&p[8..], IFA_LOCAL), Some(&[10, 88, 0, 2][..]));
        assert!(find_attr(&p[8..], IFA_FLAGS).is_none());
    }
}
