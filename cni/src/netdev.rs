//! Host network interfaces given to a pod (CDI `netDevices`): moved from the node's network
//! namespace into the pod's under the name the spec gives, and back under their own name
//! before the pod's namespace goes (a physical interface whose namespace is destroyed
//! falls back to the node under the pod's name, a virtual one is destroyed).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};

use crate::error::Error;
use crate::link::{self, link_message};
use crate::netlink::{NETLINK_ROUTE, Socket};
use crate::netns;

/// Interfaces that are the node's network itself (and Berth's bridge): never given away.
fn refused_name(name: &str, bridge: &str) -> bool {
    name == "lo" || name == bridge
}

/// The message moving link `index` into the namespace `ns` under `name`.
fn move_message(index: u32, ns: BorrowedFd<'_>, name: &str) -> RouteNetlinkMessage {
    RouteNetlinkMessage::NewLink(link_message(
        index,
        LinkFlags::empty(),
        vec![
            LinkAttribute::NetNsFd(ns.as_raw_fd()),
            LinkAttribute::IfName(name.to_owned()),
        ],
    ))
}

/// Moves `from` of the namespace `sock` talks to into `to` as `name`; `Ok(false)` when no
/// link is called `from` there.
fn move_link(sock: &mut Socket, from: &str, to: BorrowedFd<'_>, name: &str) -> Result<bool, Error> {
    let Some(l) = link::get(sock, from).map_err(Error::netlink(format!("find link {from}")))?
    else {
        return Ok(false);
    };
    sock.request(move_message(l.index, to, name), 0)
        .map_err(Error::netlink(format!("move link {from} as {name}")))?;
    Ok(true)
}

/// Moves the node's interface `host_name` into the pod namespace at `pod_netns` as
/// `pod_name`. Already there (a second container of the pod asked for it) is fine.
pub(crate) fn move_in(
    pod_netns: &Path,
    host_name: &str,
    pod_name: &str,
    bridge: &str,
) -> Result<(), Error> {
    if refused_name(host_name, bridge) {
        return Err(Error::InvalidRequest(format!(
            "network device {host_name} is the node's own and cannot be given to a pod"
        )));
    }
    let pod = netns::open(pod_netns).map_err(Error::io(format!(
        "open network namespace {}",
        pod_netns.display()
    )))?;
    let node = netns::current().map_err(Error::io("open the node's network namespace"))?;
    if netns::same(&pod, &node).map_err(Error::io("compare network namespaces"))? {
        return Err(Error::InvalidRequest(
            "network devices cannot be given to a pod on the host network".into(),
        ));
    }
    let mut sock = Socket::open(NETLINK_ROUTE).map_err(Error::io("open rtnetlink"))?;
    if move_link(&mut sock, host_name, pod.as_fd(), pod_name)? {
        return Ok(());
    }
    let present = netns::run_in(pod.as_fd(), || -> Result<bool, Error> {
        let mut s = link::pod_socket()?;
        Ok(link::get(&mut s, pod_name)
            .map_err(Error::netlink(format!("find link {pod_name} in the pod")))?
            .is_some())
    })
    .map_err(Error::io("enter the pod's network namespace"))??;
    if present {
        return Ok(());
    }
    Err(Error::InvalidRequest(format!(
        "network device {host_name} does not exist on the node"
    )))
}

/// Moves the pod's interface `pod_name` back to the node as `host_name`; a pod namespace
/// or an interface that is gone is fine.
pub(crate) fn move_out(pod_netns: &Path, pod_name: &str, host_name: &str) -> Result<(), Error> {
    let Ok(pod) = netns::open(pod_netns) else {
        return Ok(());
    };
    let node = netns::current().map_err(Error::io("open the node's network namespace"))?;
    netns::run_in(pod.as_fd(), || -> Result<(), Error> {
        let mut s = link::pod_socket()?;
        move_link(&mut s, pod_name, node.as_fd(), host_name).map(|_| ())
    })
    .map_err(Error::io("enter the pod's network namespace"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_loopback_and_bridge_are_never_given_away() {
        assert!(refused_name("lo", "berth0"));
        assert!(refused_name("berth0", "berth0"));
        assert!(!refused_name("eth1", "berth0"));
    }

    #[test]
    fn a_move_names_the_namespace_and_the_new_name() {
        let f = std::fs::File::open("/proc/self/ns/net").unwrap();
        let m = move_message(7, f.as_fd(), "net1");
        let RouteNetlinkMessage::NewLink(l) = m else {
            panic!("not a NewLink")
        };
        assert_eq!(l.header.index, 7);
        assert!(l.attributes.contains(&LinkAttribute::IfName("net1".into())));
        assert!(
            l.attributes
                .contains(&LinkAttribute::NetNsFd(f.as_raw_fd()))
        );
    }
}
