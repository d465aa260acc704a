//! CNI mode end to end with Debian's containernetworking-plugins (bridge, host-local,
//! portmap, firewall, tuning, loopback) inside private namespaces.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use berth_cni::{NetworkConfig, NetworkMode, PodNetworkRequest, PortMapping};
use common::*;

const PLUGIN_DIR: &str = "/usr/lib/cni";

/// A fresh [`Node`], or skips the test (returning early) unless running as root with
/// the plugins installed.
macro_rules! plugins_node {
    () => {{
        require_root!();
        if !Path::new(PLUGIN_DIR).join("bridge").exists() {
            eprintln!("skipped: containernetworking-plugins is not installed");
            return;
        }
        Node::new()
    }};
}

struct CniDirs {
    dir: tempfile::TempDir,
}

impl CniDirs {
    /// A config dir holding the test's network with host-local `ranges` (JSON).
    fn new(ranges: &str) -> CniDirs {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net.d")).unwrap();
        let dirs = CniDirs { dir };
        dirs.write_conf(ranges);
        dirs
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    fn write_conf(&self, ranges: &str) {
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"berth-cni-test","plugins":[
                {{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"hairpinMode":true,
                  "ipam":{{"type":"host-local","dataDir":"{}","ranges":{ranges},"routes":[{{"dst":"0.0.0.0/0"}}]}}}},
                {{"type":"portmap","capabilities":{{"portMappings":true}},"snat":true}},
                {{"type":"firewall","backend":"iptables"}},
                {{"type":"tuning","mtu":1400,"sysctl":{{"net.core.somaxconn":"512"}}}},
                {{"type":"loopback"}}
            ]}}"#,
            self.ipam_dir().display()
        );
        std::fs::write(self.dir.path().join("net.d/10-test.conflist"), conf).unwrap();
    }

    fn config(&self) -> NetworkConfig {
        NetworkConfig {
            mode: NetworkMode::Cni,
            cni_conf_dir: self.dir.path().join("net.d"),
            cni_bin_dirs: vec![PathBuf::from(PLUGIN_DIR)],
            cni_plugin_timeout_seconds: 30,
            ..NetworkConfig::default()
        }
    }

    /// Addresses host-local holds (one file per address in its data dir).
    fn ipam_holds(&self) -> Vec<String> {
        let d = self.ipam_dir().join("berth-cni-test");
        let Ok(entries) = std::fs::read_dir(d) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<IpAddr>().is_ok())
            .collect()
    }
}

fn req(pod_id: &str, ns: &Netns, ports: Vec<PortMapping>) -> PodNetworkRequest {
    pod_request(pod_id, pod_id, ns, ports)
}

fn iptables_save(node: &Netns) -> String {
    let net = format!("--net={}", node.path().display());
    sh(&["nsenter", &net, "iptables-save"])
}

fn sysctl_in(ns: &Path, key: &str) -> String {
    let key = key.to_string();
    in_ns(ns, move || {
        std::fs::read_to_string(Path::new("/proc/sys").join(key))
            .unwrap()
            .trim()
            .to_string()
    })
    .join()
    .unwrap()
}

#[test]
fn plugins_wire_pods_publish_ports_masquerade_and_clean_up() {
    let node = plugins_node!();
    let (a_ns, b_ns) = (Netns::new("a"), Netns::new("b"));
    let dirs = CniDirs::new(r#"[[{"subnet":"10.22.0.0/16","gateway":"10.22.0.1"}]]"#);
    let port = tcp(8080, 80, None);
    let (ra, rb) = (req("pod-a", &a_ns, vec![port]), req("pod-b", &b_ns, vec![]));
    let (a_ip, b_ip, net) = node.with_network(dirs.config(), move |net| async move {
        assert_eq!(net.ready(), Ok(()));
        let a = net.setup(&ra).await.unwrap();
        let b = net.setup(&rb).await.unwrap();
        assert_eq!(a.interface, "eth0");
        // (portmap 1.1.1's CHECK fails for IPv4-only pods with port mappings, a plugin bug,
        // so CHECK is exercised on the pod without.)
        net.check("pod-b").await.unwrap();
        (a.ips[0], b.ips[0], net)
    });
    assert!(a_ip.to_string().starts_with("10.22."), "{a_ip}");
    let (a_path, b_path) = (a_ns.path(), b_ns.path());
    // tuning: MTU and a namespaced sysctl inside the pod.
    let link: serde_json::Value =
        serde_json::from_str(&a_ns.ip(&["-j", "link", "show", "eth0"])).unwrap();
    assert_eq!(link[0]["mtu"], 1400);
    assert_eq!(sysctl_in(&a_path, "net/core/somaxconn"), "512");
    // firewall: the pod's address is admitted in the node's forward chain.
    assert!(iptables_save(&node.node).contains(&format!("{a_ip}/32")));
    // Pod to pod through cni0.
    let _sb = TcpPeerServer::start(&b_path, sa(ip("0.0.0.0"), 80));
    assert_eq!(tcp_peer(&a_path, sa(b_ip, 80)), Ok(a_ip));
    // portmap: hostPort from the outside host and from the node's address.
    let _sa = TcpPeerServer::start(&a_path, sa(ip("0.0.0.0"), 80));
    assert_eq!(
        tcp_peer(&node.outside.path(), sa(ip(NODE_IP), 8080)),
        Ok(ip(OUTSIDE_IP))
    );
    assert!(tcp_peer(&node.node.path(), sa(ip(NODE_IP), 8080)).is_ok());
    // ipMasq: the outside host sees the node.
    let out = TcpPeerServer::start(&node.outside.path(), sa(ip("0.0.0.0"), 7000));
    assert_eq!(tcp_peer(&b_path, sa(ip(OUTSIDE_IP), 7000)), Ok(ip(NODE_IP)));
    drop(out);
    assert_eq!(dirs.ipam_holds().len(), 2);
    node.run(move || async move {
        assert!(net.pod_status("pod-a").unwrap().is_some());
        net.teardown("pod-a", None).await.unwrap();
        net.teardown("pod-b", None).await.unwrap();
        net.teardown("pod-b", None).await.unwrap();
        assert_eq!(net.pod_status("pod-a").unwrap(), None);
    });
    // Nothing of the pods is left: no veth, no address held, no rule naming them.
    let links = node.node.links();
    assert!(!links.iter().any(|l| l.starts_with("veth")), "{links:?}");
    assert!(dirs.ipam_holds().is_empty(), "{:?}", dirs.ipam_holds());
    let rules = iptables_save(&node.node);
    assert!(
        !rules.contains(&a_ip.to_string()) && !rules.contains(&b_ip.to_string()),
        "{rules}"
    );
    assert!(tcp_peer(&node.outside.path(), sa(ip(NODE_IP), 8080)).is_err());
}

#[test]
fn del_runs_after_a_daemon_crash_with_the_config_gone() {
    let node = plugins_node!();
    let a_ns = Netns::new("a");
    let dirs = CniDirs::new(r#"[[{"subnet":"10.23.0.0/16"}]]"#);
    let ra = req("pod-a", &a_ns, vec![]);
    node.with_network(dirs.config(), move |net| async move {
        net.setup(&ra).await.unwrap();
        // Dropped without teardown: the daemon died.
    });
    assert_eq!(dirs.ipam_holds().len(), 1);
    std::fs::remove_file(dirs.dir.path().join("net.d/10-test.conflist")).unwrap();
    node.with_network(dirs.config(), move |net| async move {
        assert!(net.ready().unwrap_err().contains("no network config found"));
        net.reconcile(&[]).await.unwrap();
        assert_eq!(net.pod_status("pod-a").unwrap(), None);
    });
    assert!(dirs.ipam_holds().is_empty());
    assert!(!node.node.links().iter().any(|l| l.starts_with("veth")));
    assert!(!a_ns.links().contains(&"eth0".to_string()));
}

#[test]
fn a_plugin_error_reaches_the_caller_and_leaves_nothing() {
    let node = plugins_node!();
    let a_ns = Netns::new("a");
    // A /30 has no address left for a pod once the gateway took the only one.
    let dirs = CniDirs::new(
        r#"[[{"subnet":"10.24.0.0/30","rangeStart":"10.24.0.1","rangeEnd":"10.24.0.1","gateway":"10.24.0.1"}]]"#,
    );
    let ra = req("pod-a", &a_ns, vec![]);
    node.with_network(dirs.config(), move |net| async move {
        let e = net.setup(&ra).await.unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("CNI plugin bridge ADD failed"), "{text}");
        assert!(
            text.contains("10.24.0"),
            "the plugin's own message is kept: {text}"
        );
        assert_eq!(net.pod_status("pod-a").unwrap(), None);
    });
    assert!(!node.node.links().iter().any(|l| l.starts_with("veth")));
    assert!(dirs.ipam_holds().is_empty());
}
