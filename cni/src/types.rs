//! The plain types of the network API: what a pod asks for and what it gets.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The protocol of a CRI `Protocol` enum value (0 TCP, 1 UDP, 2 SCTP).
    pub fn from_cri(value: i32) -> Result<Protocol, Error> {
        match value {
            0 => Ok(Protocol::Tcp),
            1 => Ok(Protocol::Udp),
            2 => Ok(Protocol::Sctp),
            v => Err(Error::InvalidRequest(format!("unknown port protocol {v}"))),
        }
    }

    /// The name CNI's `portMappings` capability uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A pod port published on the node (a CRI `PortMapping` with a host port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// Transport protocol.
    pub protocol: Protocol,
    /// Port inside the pod.
    pub container_port: u16,
    /// Port on the node.
    pub host_port: u16,
    /// Only packets to this node address match; any local address when `None`.
    pub host_ip: Option<IpAddr>,
}

fn port(what: &str, v: i32) -> Result<u16, Error> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Error::InvalidRequest(format!("{what} {v} is not a port number")))
}

impl PortMapping {
    /// Validates a CRI port mapping; `None` when it publishes nothing (host port 0, which
    /// CRI uses for ports that are only declared).
    pub fn from_cri(
        protocol: i32,
        container_port: i32,
        host_port: i32,
        host_ip: &str,
    ) -> Result<Option<PortMapping>, Error> {
        if host_port == 0 {
            return Ok(None);
        }
        let protocol = Protocol::from_cri(protocol)?;
        let host_port = port("host port", host_port)?;
        let container_port = port("container port", container_port)?;
        let host_ip = match host_ip.trim() {
            "" => None,
            s => {
                let ip: IpAddr = s.parse().map_err(|_| {
                    Error::InvalidRequest(format!("host IP {s:?} is not an IP address"))
                })?;
                // 0.0.0.0 and :: mean "any address", as in kubelet.
                if ip.is_unspecified() { None } else { Some(ip) }
            }
        };
        Ok(Some(PortMapping {
            protocol,
            container_port,
            host_port,
            host_ip,
        }))
    }
}

/// DNS settings handed to CNI plugins that declare the `dns` capability.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// resolv.conf options.
    pub options: Vec<String>,
}

/// Traffic shaping handed to CNI plugins that declare the `bandwidth` capability (bits per
/// second and bits), from the pod's `kubernetes.io/{ingress,egress}-bandwidth` annotations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bandwidth {
    /// Ingress rate limit.
    pub ingress_rate: u64,
    /// Ingress burst.
    pub ingress_burst: u64,
    /// Egress rate limit.
    pub egress_rate: u64,
    /// Egress burst.
    pub egress_burst: u64,
}

/// What a pod's network setup needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNetworkRequest {
    /// The sandbox id (CNI's container id).
    pub pod_id: String,
    /// Pod name (for CNI's `K8S_POD_NAME`).
    pub name: String,
    /// Pod namespace (for CNI's `K8S_POD_NAMESPACE`).
    pub namespace: String,
    /// Pod UID (for CNI's `K8S_POD_UID`).
    pub uid: String,
    /// The pod's network namespace file, e.g. `/run/berth/pods/<id>/ns/net`.
    pub netns: PathBuf,
    /// Ports published on the node.
    pub port_mappings: Vec<PortMapping>,
    /// DNS settings for CNI plugins.
    pub dns: Option<DnsConfig>,
    /// Traffic shaping for CNI plugins.
    pub bandwidth: Option<Bandwidth>,
}

/// Characters kubelet's names never contain but that would break CNI_ARGS.
fn check_arg(what: &str, v: &str) -> Result<(), Error> {
    if v.contains([';', '=']) || v.chars().any(char::is_control) {
        return Err(Error::InvalidRequest(format!(
            "{what} {v:?} contains ';', '=' or control characters"
        )));
    }
    Ok(())
}

impl PodNetworkRequest {
    /// Checks the request before anything is changed.
    pub fn validate(&self) -> Result<(), Error> {
        if self.pod_id.is_empty()
            || self.pod_id.len() > 128
            || !self.pod_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Error::InvalidRequest(format!(
                "pod id {:?} must be 1 to 128 printable ASCII characters",
                self.pod_id
            )));
        }
        check_arg("pod id", &self.pod_id)?;
        check_arg("pod name", &self.name)?;
        check_arg("pod namespace", &self.namespace)?;
        check_arg("pod uid", &self.uid)?;
        if !self.netns.is_absolute() {
            return Err(Error::InvalidRequest(format!(
                "network namespace path {:?} is not absolute",
                self.netns
            )));
        }
        let mut seen = HashSet::new();
        for m in &self.port_mappings {
            if m.host_port == 0 || m.container_port == 0 {
                return Err(Error::InvalidRequest(format!(
                    "port mapping {m:?} has a zero port"
                )));
            }
            if !seen.insert((m.protocol, m.host_port, m.host_ip)) {
                return Err(Error::InvalidRequest(format!(
                    "host port {}/{} is published twice",
                    m.host_port,
                    m.protocol.as_str()
                )));
            }
        }
        Ok(())
    }
}

/// A pod's network as kubelet sees it in PodSandboxStatus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetworkStatus {
    /// The pod's addresses, IPv4 first; the first is `PodSandboxNetworkStatus.ip`.
    pub ips: Vec<IpAddr>,
    /// The pod's interface.
    pub interface: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_port_mappings_are_validated() {
        assert_eq!(PortMapping::from_cri(0, 80, 0, "").unwrap(), None);
        let m = PortMapping::from_cri(1, 53, 5353, "0.0.0.0")
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.protocol, m.container_port, m.host_port, m.host_ip),
            (Protocol::Udp, 53, 5353, None)
        );
        let m = PortMapping::from_cri(2, 9, 9, "10.0.0.1").unwrap().unwrap();
        assert_eq!(m.host_ip, Some("10.0.0.1".parse().unwrap()));
        for (p, c, h, ip) in [
            (3, 80, 80, ""),
            (0, 0, 80, ""),
            (0, 80, 70000, ""),
            (0, 80, -1, ""),
            (0, 80, 80, "nope"),
        ] {
            let e = PortMapping::from_cri(p, c, h, ip).unwrap_err();
            assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
        }
    }

    #[test]
    fn requests_are_validated() {
        let ok = PodNetworkRequest {
            pod_id: "abc".into(),
            netns: "/run/x".into(),
            ..Default::default()
        };
        ok.validate().unwrap();
        let bad = |f: fn(&mut PodNetworkRequest)| {
            let mut r = ok.clone();
            f(&mut r);
            assert!(
                matches!(r.validate(), Err(Error::InvalidRequest(_))),
                "{r:?}"
            );
        };
        bad(|r| r.pod_id.clear());
        bad(|r| r.pod_id = "a b".into());
        bad(|r| r.name = "x;y".into());
        bad(|r| r.netns = "relative".into());
        bad(|r| {
            let m = PortMapping {
                protocol: Protocol::Tcp,
                container_port: 1,
                host_port: 2,
                host_ip: None,
            };
            r.port_mappings = vec![m, m];
        });
    }
}
