//! The built-in network end to end, inside private namespaces: pods reach each other and
//! the node, hostPorts answer from the node's addresses, localhost, the outside and the pods
//! themselves, masquerade hides pod addresses, and teardown leaves nothing.

mod common;

use std::time::Instant;

use berth_cni::{Class, Classify, Error, NetworkConfig, PodNetworkRequest, PortMapping, Protocol};
use common::*;

fn req(pod_id: &str, ns: &Netns, ports: Vec<PortMapping>) -> PodNetworkRequest {
    pod_request(pod_id, &format!("name-{pod_id}"), ns, ports)
}

/// `n` pods in namespaces `<prefix><i>`, pod `pod-<i>` publishing `first_port + i` to 80.
fn pods_with_ports(prefix: &str, n: u16, first_port: u16) -> (Vec<Netns>, Vec<PodNetworkRequest>) {
    (0..n)
        .map(|i| {
            let ns = Netns::new(&format!("{prefix}{i}"));
            let r = req(
                &format!("pod-{i}"),
                &ns,
                vec![tcp(first_port + i, 80, None)],
            );
            (ns, r)
        })
        .unzip()
}

#[test]
fn pods_reach_each_other_and_the_node_and_teardown_leaves_nothing() {
    let node = root_node!();
    let (a_ns, b_ns) = (Netns::new("a"), Netns::new("b"));
    let (a_path, b_path, node_path) = (a_ns.path(), b_ns.path(), node.node.path());
    let (ra, rb) = (req("pod-a", &a_ns, vec![]), req("pod-b", &b_ns, vec![]));
    let (ra2, rb2) = (ra.clone(), rb.clone());
    // Nothing on the node before the first pod.
    assert!(!node.node.links().contains(&"berth0".to_string()));
    let (a_ip, b_ip, net) = node.with_network(builtin_config(), move |net| async move {
        assert_eq!(net.ready(), Ok(()));
        let a = net.setup(&ra2).await.unwrap();
        let b = net.setup(&rb2).await.unwrap();
        (a.ips[0], b.ips[0], net)
    });
    assert_eq!(a_ip, ip("10.88.0.2"));
    assert_eq!(b_ip, ip("10.88.0.3"));
    // eth0 in the pod: address, MTU, up; default route via the bridge; lo up.
    let eth0: serde_json::Value =
        serde_json::from_str(&a_ns.ip(&["-j", "addr", "show", "eth0"])).unwrap();
    assert_eq!(eth0[0]["mtu"], 1500);
    assert_eq!(eth0[0]["operstate"], "UP");
    let addrs: Vec<String> = eth0[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert!(addrs.contains(&"10.88.0.2/16".to_string()), "{addrs:?}");
    assert!(
        a_ns.ip(&["route", "show", "default"])
            .contains("default via 10.88.0.1 dev eth0")
    );
    assert!(a_ns.ip(&["link", "show", "lo"]).contains("UP"));
    let br = node.node.ip(&["-d", "addr", "show", "berth0"]);
    assert!(br.contains("10.88.0.1/16"), "{br}");
    // A pod reaches the other by its address and sees its real source; so does the node.
    let server_b = TcpPeerServer::start(&b_path, sa(ip("0.0.0.0"), 80));
    assert_eq!(tcp_peer(&a_path, sa(b_ip, 80)), Ok(a_ip));
    assert_eq!(tcp_peer(&node_path, sa(b_ip, 80)), Ok(ip("10.88.0.1")));
    drop(server_b);
    // Teardown, twice, then of a pod never set up: all fine; nothing left.
    node.run(move || async move {
        net.teardown("pod-a", Some(&a_path)).await.unwrap();
        assert_eq!(net.pod_status("pod-a").unwrap(), None);
        assert!(net.pod_status("pod-b").unwrap().is_some());
        net.teardown("pod-a", None).await.unwrap();
        net.teardown("pod-b", None).await.unwrap();
        net.teardown("never-set-up", None).await.unwrap();
    });
    node.assert_clean("berth0");
    assert!(!a_ns.links().contains(&"eth0".to_string()));
    drop((ra, rb));
}

#[test]
fn hostports_answer_from_node_address_localhost_outside_and_hairpin() {
    let node = root_node!();
    let (a_ns, b_ns) = (Netns::new("a"), Netns::new("b"));
    let ports = vec![
        tcp(8080, 80, None),
        PortMapping {
            protocol: Protocol::Udp,
            host_port: 5353,
            container_port: 53,
            host_ip: None,
        },
        tcp(9090, 90, Some(NODE_IP)),
    ];
    let ra = req("pod-a", &a_ns, ports);
    let rb = req("pod-b", &b_ns, vec![]);
    let (a_ip, b_ip, net) = node.with_network(builtin_config(), move |net| async move {
        let a = net.setup(&ra).await.unwrap();
        // A repeated setup keeps the address and replaces, not duplicates, the rules.
        assert_eq!(net.setup(&ra).await.unwrap(), a);
        let b = net.setup(&rb).await.unwrap();
        (a.ips[0], b.ips[0], net)
    });
    let (a_path, b_path, node_path, out_path) = (
        a_ns.path(),
        b_ns.path(),
        node.node.path(),
        node.outside.path(),
    );
    let rules = node
        .node
        .nft(&["list", "chain", "inet", "berth", "hostports"]);
    assert_eq!(rules.matches("berth-pod:pod-a").count(), 3, "{rules}");
    let _s80 = TcpPeerServer::start(&a_path, sa(ip("0.0.0.0"), 80));
    let _s90 = TcpPeerServer::start(&a_path, sa(ip("0.0.0.0"), 90));
    // From the outside host: the pod sees the real client.
    assert_eq!(
        tcp_peer(&out_path, sa(ip(NODE_IP), 8080)),
        Ok(ip(OUTSIDE_IP))
    );
    // From the node itself, to its own address and to localhost.
    assert!(tcp_peer(&node_path, sa(ip(NODE_IP), 8080)).is_ok());
    assert_eq!(
        tcp_peer(&node_path, sa(ip("127.0.0.1"), 8080)),
        Ok(ip("10.88.0.1"))
    );
    // Hairpin: another pod, and the pod itself, through the node's hostPort; the answer
    // comes back through the node, whose bridge address is the source the server sees.
    assert_eq!(
        tcp_peer(&b_path, sa(ip(NODE_IP), 8080)),
        Ok(ip("10.88.0.1"))
    );
    assert_eq!(
        tcp_peer(&a_path, sa(ip(NODE_IP), 8080)),
        Ok(ip("10.88.0.1"))
    );
    // host_ip restricts the mapping to that address.
    assert_eq!(
        tcp_peer(&out_path, sa(ip(NODE_IP), 9090)),
        Ok(ip(OUTSIDE_IP))
    );
    assert!(tcp_peer(&node_path, sa(ip("127.0.0.1"), 9090)).is_err());
    // UDP hostPort from the outside.
    let udp = UdpPeerServer::start(&a_path, sa(ip("0.0.0.0"), 53), 1);
    assert_eq!(
        udp_peer(&out_path, sa(ip(NODE_IP), 5353)),
        Ok(ip(OUTSIDE_IP))
    );
    drop(udp);
    assert_ne!(a_ip, b_ip);
    node.run(move || async move {
        net.teardown("pod-a", None).await.unwrap();
    });
    // pod-a's rules are gone while pod-b keeps the table.
    let rules = node
        .node
        .nft(&["list", "chain", "inet", "berth", "hostports"]);
    assert!(!rules.contains("berth-pod:pod-a"), "{rules}");
    assert!(tcp_peer(&out_path, sa(ip(NODE_IP), 8080)).is_err());
}

#[test]
fn masquerade_shows_the_node_address_to_the_outside() {
    let node = root_node!();
    let a_ns = Netns::new("a");
    let ra = req("pod-a", &a_ns, vec![]);
    let net = node.with_network(builtin_config(), move |net| async move {
        net.setup(&ra).await.unwrap();
        net
    });
    let server = TcpPeerServer::start(&node.outside.path(), sa(ip("0.0.0.0"), 7000));
    assert_eq!(
        tcp_peer(&a_ns.path(), sa(ip(OUTSIDE_IP), 7000)),
        Ok(ip(NODE_IP))
    );
    drop(server);
    node.run(move || async move { net.teardown("pod-a", None).await.unwrap() });
    node.assert_clean("berth0");
}

/// A cluster's other nodes: with their network in `non_masquerade_cidrs`, a pod's traffic
/// to them keeps the pod's address (the outside host stands for another node, routing the
/// pod CIDR back through this one); anything else is still masqueraded.
#[test]
fn non_masquerade_cidrs_keep_the_pod_address() {
    let node = root_node!();
    let a_ns = Netns::new("a");
    let ra = req("pod-a", &a_ns, vec![]);
    node.outside
        .ip(&["route", "add", "10.88.0.0/16", "via", NODE_IP]);
    node.node
        .ip(&["addr", "add", "203.0.113.1/24", "dev", "uplink"]);
    node.outside
        .ip(&["addr", "add", "203.0.113.2/24", "dev", "eth0"]);
    let config = NetworkConfig {
        non_masquerade_cidrs: vec!["198.51.100.0/24".parse().unwrap()],
        ..builtin_config()
    };
    let (a_ip, net) = node.with_network(config, move |net| async move {
        (net.setup(&ra).await.unwrap().ips[0], net)
    });
    let kept = TcpPeerServer::start(&node.outside.path(), sa(ip("0.0.0.0"), 7000));
    assert_eq!(
        tcp_peer(&a_ns.path(), sa(ip(OUTSIDE_IP), 7000)),
        Ok(a_ip),
        "towards a non-masquerade CIDR the pod's own address arrives"
    );
    assert_eq!(
        tcp_peer(&a_ns.path(), sa(ip("203.0.113.2"), 7000)),
        Ok(ip("203.0.113.1")),
        "elsewhere the node's address still hides the pod's"
    );
    drop(kept);
    node.run(move || async move { net.teardown("pod-a", None).await.unwrap() });
    node.assert_clean("berth0");
}

#[test]
fn dual_stack_pods_get_both_families() {
    let node = root_node!();
    let (a_ns, b_ns) = (Netns::new("a"), Netns::new("b"));
    let ra = req("pod-a", &a_ns, vec![tcp(8080, 80, None)]);
    let rb = req("pod-b", &b_ns, vec![]);
    let config = NetworkConfig {
        pod_cidr_v6: Some("fd00:88::/64".parse().unwrap()),
        ..builtin_config()
    };
    let (a_ips, b_ips, net) = node.with_network(config, move |net| async move {
        let a = net.setup(&ra).await.unwrap();
        let b = net.setup(&rb).await.unwrap();
        (a.ips.clone(), b.ips.clone(), net)
    });
    assert_eq!(a_ips, vec![ip("10.88.0.2"), ip("fd00:88::2")]);
    assert_eq!(b_ips[1], ip("fd00:88::3"));
    assert!(
        a_ns.ip(&["-6", "route", "show", "default"])
            .contains("via fd00:88::1 dev eth0")
    );
    let _s = TcpPeerServer::start(&a_ns.path(), sa(ip("::"), 80));
    assert_eq!(tcp_peer(&b_ns.path(), sa(a_ips[1], 80)), Ok(b_ips[1]));
    // v6 hostPort from the outside, and v6 masquerade towards it.
    assert_eq!(
        tcp_peer(&node.outside.path(), sa(ip(NODE_IP6), 8080)),
        Ok(ip(OUTSIDE_IP6))
    );
    let out = TcpPeerServer::start(&node.outside.path(), sa(ip("::"), 7000));
    assert_eq!(
        tcp_peer(&b_ns.path(), sa(ip(OUTSIDE_IP6), 7000)),
        Ok(ip(NODE_IP6))
    );
    drop(out);
    node.run(move || async move {
        net.teardown("pod-a", None).await.unwrap();
        net.teardown("pod-b", None).await.unwrap();
    });
    node.assert_clean("berth0");
}

#[test]
fn failed_setup_leaves_nothing_and_reports_the_class() {
    let node = root_node!();
    let a_ns = Netns::new("a");
    // Something else already owns eth0 in the pod: the veth cannot take the name.
    a_ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other",
    ]);
    let ra = req("pod-a", &a_ns, vec![]);
    let missing = PodNetworkRequest {
        netns: "/run/netns/berth-cni-test-does-not-exist".into(),
        ..req("pod-x", &a_ns, vec![])
    };
    let own = PodNetworkRequest {
        netns: node.node.path(),
        ..req("pod-own", &a_ns, vec![])
    };
    node.with_network(builtin_config(), move |net| async move {
        let e = net.setup(&missing).await.unwrap_err();
        assert_eq!(e.class(), Class::NotFound, "{e}");
        let e = net.setup(&ra).await.unwrap_err();
        assert!(matches!(e, Error::Netlink { .. }), "{e:?}");
        assert_eq!(net.pod_status("pod-a").unwrap(), None);
        let bad = PodNetworkRequest {
            pod_id: String::new(),
            ..ra.clone()
        };
        assert_eq!(
            net.setup(&bad).await.unwrap_err().class(),
            Class::InvalidArgument
        );
        // The node's own namespace is refused.
        assert_eq!(
            net.setup(&own).await.unwrap_err().class(),
            Class::InvalidArgument
        );
    });
    node.assert_clean("berth0");
}

#[test]
fn reconcile_releases_dead_pods_and_stray_objects_and_restart_keeps_addresses() {
    let node = root_node!();
    let (a_ns, b_ns, c_ns) = (Netns::new("a"), Netns::new("b"), Netns::new("c"));
    let (ra, rb, rc) = (
        req("pod-a", &a_ns, vec![tcp(8080, 80, None)]),
        req("pod-b", &b_ns, vec![tcp(8081, 80, None)]),
        req("pod-c", &c_ns, vec![]),
    );
    let a_ip = node.with_network(builtin_config(), move |net| async move {
        let a = net.setup(&ra).await.unwrap();
        net.setup(&rb).await.unwrap();
        // The daemon stops: `net` is dropped, the pods stay.
        a.ips[0]
    });
    // Strays: a veth on the bridge and a rule naming a pod without a record.
    node.node.ip(&[
        "link",
        "add",
        "bth0123456789ab",
        "master",
        "berth0",
        "type",
        "veth",
        "peer",
        "name",
        "strayp",
    ]);
    node.node.nft(&[
        "add",
        "rule",
        "inet",
        "berth",
        "hostports",
        "tcp",
        "dport",
        "1",
        "accept",
        "comment",
        "\"berth-pod:ghost\"",
    ]);
    let (c_ip, net) = node.with_network(builtin_config(), move |net| async move {
        // Restart: the record survives, pod-b is gone from the runtime's view.
        assert_eq!(net.pod_status("pod-a").unwrap().unwrap().ips, vec![a_ip]);
        net.reconcile(&["pod-a".to_string()]).await.unwrap();
        assert_eq!(net.pod_status("pod-b").unwrap(), None);
        let c = net.setup(&rc).await.unwrap();
        (c.ips[0], net)
    });
    // A fresh address, not pod-a's, and not pod-b's just released one (round-robin).
    assert_eq!(c_ip, ip("10.88.0.4"));
    let links = node.node.links();
    assert!(
        !links
            .iter()
            .any(|l| l == "bth0123456789ab" || l == "strayp"),
        "{links:?}"
    );
    let rules = node
        .node
        .nft(&["list", "chain", "inet", "berth", "hostports"]);
    assert!(
        !rules.contains("ghost") && !rules.contains("pod-b") && rules.contains("pod-a"),
        "{rules}"
    );
    // pod-a still works through its hostPort after the restart.
    let _s = TcpPeerServer::start(&a_ns.path(), sa(ip("0.0.0.0"), 80));
    assert_eq!(
        tcp_peer(&node.outside.path(), sa(ip(NODE_IP), 8080)),
        Ok(ip(OUTSIDE_IP))
    );
    assert!(tcp_peer(&node.outside.path(), sa(ip(NODE_IP), 8081)).is_err());
    // A firewall reload wipes the table: the next start's reconcile restores the rules.
    node.node.nft(&["delete", "table", "inet", "berth"]);
    assert!(tcp_peer(&node.outside.path(), sa(ip(NODE_IP), 8080)).is_err());
    let net = node.run(move || async move {
        net.reconcile(&["pod-a".to_string(), "pod-c".to_string()])
            .await
            .unwrap();
        net
    });
    assert_eq!(
        tcp_peer(&node.outside.path(), sa(ip(NODE_IP), 8080)),
        Ok(ip(OUTSIDE_IP))
    );
    // The pod is gone from the runtime's view: everything goes.
    node.run(move || async move {
        net.reconcile(&[]).await.unwrap();
    });
    node.assert_clean("berth0");
}

#[test]
fn pod_cidr_from_kubelet_applies_when_no_pod_uses_the_old_one() {
    let node = root_node!();
    let (a_ns, b_ns) = (Netns::new("a"), Netns::new("b"));
    let (ra, rb) = (req("pod-a", &a_ns, vec![]), req("pod-b", &b_ns, vec![]));
    node.with_network(builtin_config(), move |net| async move {
        net.set_pod_cidr("10.244.1.0/24").unwrap();
        assert_eq!(net.setup(&ra).await.unwrap().ips, vec![ip("10.244.1.2")]);
        // With a pod on 10.244.1.0/24 the change waits...
        net.set_pod_cidr("10.245.0.0/24").unwrap();
        assert_eq!(net.setup(&rb).await.unwrap().ips, vec![ip("10.244.1.3")]);
        assert_eq!(
            net.set_pod_cidr("10.0.0.1/24").unwrap_err().class(),
            Class::InvalidArgument
        );
        net.teardown("pod-a", None).await.unwrap();
        net.teardown("pod-b", None).await.unwrap();
        // ...until the last pod is gone.
        assert_eq!(net.setup(&ra).await.unwrap().ips, vec![ip("10.245.0.2")]);
        net.teardown("pod-a", None).await.unwrap();
    });
    node.assert_clean("berth0");
}

/// With `await_kubelet_pod_cidr`, nothing is networked from the configured CIDR before
/// kubelet's arrives (the node stays NotReady), and once it came, a restart of the daemon
/// (a new network over the same database) is ready at once: kubelet does not send it again.
#[test]
fn awaiting_kubelet_pod_cidr_networks_no_pod_before_it() {
    let node = root_node!();
    let a_ns = Netns::new("a");
    let ra = req("pod-a", &a_ns, vec![]);
    let ra2 = ra.clone();
    let config = NetworkConfig {
        await_kubelet_pod_cidr: true,
        ..builtin_config()
    };
    let config2 = config.clone();
    node.with_network(config, move |net| async move {
        let why = net.ready().unwrap_err();
        assert!(why.contains("network.await_kubelet_pod_cidr"), "{why}");
        let e = net.setup(&ra).await.unwrap_err();
        assert_eq!(e.class(), Class::FailedPrecondition, "{e}");
        // The configured CIDR itself, sent by kubelet, counts as kubelet's.
        net.set_pod_cidr("10.88.0.0/16").unwrap();
        assert_eq!(net.ready(), Ok(()));
        net.set_pod_cidr("10.244.1.0/24").unwrap();
        assert_eq!(net.setup(&ra).await.unwrap().ips, vec![ip("10.244.1.2")]);
        net.teardown("pod-a", None).await.unwrap();
    });
    node.with_network(config2, move |net| async move {
        assert_eq!(net.ready(), Ok(()));
        let got = net.setup(&ra2).await.unwrap().ips[0];
        assert!(got.to_string().starts_with("10.244.1."), "{got}");
        net.teardown("pod-a", None).await.unwrap();
    });
    node.assert_clean("berth0");
}

#[test]
fn concurrent_setups_get_distinct_addresses_and_concurrent_teardowns_clean_up() {
    let node = root_node!();
    let (pods, reqs) = pods_with_ports("c", 8, 30000);
    let (ips, net) = node.with_network(builtin_config(), move |net| async move {
        let tasks: Vec<_> = reqs
            .into_iter()
            .map(|r| {
                let net = net.clone();
                tokio::spawn(async move { net.setup(&r).await.unwrap().ips[0] })
            })
            .collect();
        let mut ips = Vec::new();
        for t in tasks {
            ips.push(t.await.unwrap());
        }
        (ips, net)
    });
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 8, "{ips:?}");
    // Every pod is reachable through its own hostPort.
    for (i, (ns, ip_addr)) in pods.iter().zip(&ips).enumerate() {
        let _s = TcpPeerServer::start(&ns.path(), sa(ip("0.0.0.0"), 80));
        assert_eq!(
            tcp_peer(&node.outside.path(), sa(ip(NODE_IP), 30000 + i as u16)),
            Ok(ip(OUTSIDE_IP)),
            "pod {i} at {ip_addr}"
        );
    }
    node.run(move || async move {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let net = net.clone();
                tokio::spawn(async move { net.teardown(&format!("pod-{i}"), None).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    node.assert_clean("berth0");
}

#[test]
fn setup_time_per_pod() {
    let node = root_node!();
    let (_pods, reqs) = pods_with_ports("p", 10, 20000);
    node.with_network(builtin_config(), move |net| async move {
        // One pod stays so the bridge and table exist: the steady state of a node.
        let keep = PodNetworkRequest {
            pod_id: "keep".into(),
            ..reqs[0].clone()
        };
        net.setup(&keep).await.unwrap();
        net.teardown("keep", None).await.unwrap();
        net.setup(&keep).await.unwrap();
        let mut setup = Vec::new();
        let mut teardown = Vec::new();
        for round in 0..6 {
            for r in &reqs[1..] {
                let r = PodNetworkRequest {
                    pod_id: format!("{}-{round}", r.pod_id),
                    ..r.clone()
                };
                let t = Instant::now();
                net.setup(&r).await.unwrap();
                setup.push(t.elapsed());
                let t = Instant::now();
                net.teardown(&r.pod_id, None).await.unwrap();
                teardown.push(t.elapsed());
            }
        }
        setup.sort();
        teardown.sort();
        let med = |v: &Vec<std::time::Duration>| v[v.len() / 2];
        eprintln!(
            "builtin setup over {} pods: median {:?}, p90 {:?}; teardown median {:?}",
            setup.len(),
            med(&setup),
            setup[setup.len() * 9 / 10],
            med(&teardown)
        );
        assert!(
            med(&setup).as_millis() < 50,
            "setup median {:?}",
            med(&setup)
        );
        net.teardown("keep", None).await.unwrap();
    });
    node.assert_clean("berth0");
}
