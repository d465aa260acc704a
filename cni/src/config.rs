//! The `[network]` section of the daemon's configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;

/// How pods get their network.
///
/// The mode is chosen by the operator only: `builtin` is the default and needs nothing on
/// the node; `cni` must be set explicitly. Unlike containerd, Berth does not switch to CNI
/// because a file appeared in `cni_conf_dir`: configs left there by another runtime would
/// otherwise silently change how every new pod is wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Berth's own bridge, veth pairs, IPAM and nftables rules, all over netlink.
    #[default]
    Builtin,
    /// The standard CNI plugins, configured by the first config in `cni_conf_dir`.
    Cni,
}

/// `[network]`: pod networking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// `builtin` (default) or `cni`; see [`NetworkMode`].
    pub mode: NetworkMode,
    /// IPv4 pod network of the built-in mode; the bridge takes its first address.
    /// Replaced at run time by the CIDR kubelet sends with UpdateRuntimeConfig.
    pub pod_cidr: Cidr,
    /// Optional IPv6 pod network; when set, pods are dual-stack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_cidr_v6: Option<Cidr>,
    /// Destinations the built-in mode's pods reach with their own address rather than
    /// masqueraded behind the node's: the cluster's pod network (every node's pod CIDR),
    /// so that pods on different nodes see each other's addresses, as Kubernetes' network
    /// model asks. Empty (the default): all traffic leaving this node's pod CIDR is
    /// masqueraded.
    pub non_masquerade_cidrs: Vec<Cidr>,
    /// Report the network not ready, and network no pod, until kubelet has sent this
    /// node's pod CIDR with UpdateRuntimeConfig (once is enough: it is kept across
    /// restarts). For clusters whose controller manager allocates node CIDRs: otherwise a
    /// node is Ready, and its first pods take addresses from `pod_cidr`, in the seconds
    /// before kubelet passes the CIDR on. Off (the default) for kubelet-less use and for
    /// clusters that allocate no node CIDRs, where kubelet never sends one.
    pub await_kubelet_pod_cidr: bool,
    /// Name of the built-in bridge.
    pub bridge: String,
    /// MTU of the bridge and of every pod's `eth0`.
    pub mtu: u32,
    /// Where CNI configs are read from in `cni` mode.
    pub cni_conf_dir: PathBuf,
    /// Where CNI plugin binaries are searched, in order, in `cni` mode.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// How long one CNI plugin invocation may take before it is killed.
    pub cni_plugin_timeout_seconds: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            mode: NetworkMode::Builtin,
            pod_cidr: Cidr::new([10, 88, 0, 0].into(), 16).expect("static CIDR is valid"),
            pod_cidr_v6: None,
            non_masquerade_cidrs: Vec::new(),
            await_kubelet_pod_cidr: false,
            bridge: "berth0".to_string(),
            mtu: 1500,
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            cni_plugin_timeout_seconds: 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct File {
        network: NetworkConfig,
    }

    #[test]
    fn defaults_fill_missing_keys() {
        let f: File = toml::from_str("[network]\nmode = \"cni\"\n").unwrap();
        assert_eq!(f.network.mode, NetworkMode::Cni);
        assert_eq!(f.network.pod_cidr.to_string(), "10.88.0.0/16");
        assert_eq!(f.network.bridge, "berth0");
        assert_eq!(f.network.mtu, 1500);
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<File>("[network]\nbrige = \"x\"\n").is_err());
        assert!(toml::from_str::<File>("[network]\nmode = \"plugins\"\n").is_err());
        let e = toml::from_str::<File>("[network]\npod_cidr = \"10.88.0.1/16\"\n").unwrap_err();
        assert!(e.to_string().contains("host bits"), "{e}");
    }

    #[test]
    fn round_trips_through_toml() {
        let c = NetworkConfig {
            pod_cidr_v6: Some("fd00:88::/64".parse().unwrap()),
            ..Default::default()
        };
        let text = toml::to_string(&c).unwrap();
        let back: NetworkConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }
}
