//! Pod networking through the daemon, in the harness's node namespace: pods reach
//! each other and the node, hostPorts answer on the node's addresses and from an "outside
//! host" (a namespace this test makes and wires to the node by a veth), masquerade shows the
//! node's address to that host, DNS settings land in resolv.conf, a hostNetwork pod sees
//! the node's interfaces, and the same in CNI mode with Debian's plugins. The harness fails
//! the run if a veth, bridge, namespace or process is left.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use berth_e2e::fixtures::{
    busybox_daemon, daemon_in, exec_sync, host_network_pod_config, log_dir, pod_config, pod_ip,
    pull, remove_pod, run_pod, start,
};
use berth_e2e::{Daemon, images};
use k8s_cri::v1::*;

/// Runs `ip` (a test step: the daemon itself never forks it) and panics on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Another host on the node's network: a namespace joined to the node namespace by a veth,
/// `node_addr` on the node side and `addr` on its side, routing through the node.
struct Outside {
    name: String,
    node_link: String,
    node_addr: &'static str,
    addr: &'static str,
}

impl Outside {
    fn create(tag: &str, subnet: u8) -> Outside {
        let name = format!("berth-e2e-out-{tag}-{}", std::process::id());
        let node_link = format!("bexo{tag}{subnet}");
        let peer = format!("bexi{tag}{subnet}");
        let node_addr: &'static str = Box::leak(format!("192.168.{subnet}.1").into_boxed_str());
        let addr: &'static str = Box::leak(format!("192.168.{subnet}.2").into_boxed_str());
        ip(&["netns", "add", &name]);
        let out = Outside {
            name,
            node_link,
            node_addr,
            addr,
        };
        ip(&[
            "link",
            "add",
            &out.node_link,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &out.name]);
        ip(&[
            "addr",
            "add",
            &format!("{node_addr}/24"),
            "dev",
            &out.node_link,
        ]);
        ip(&["link", "set", &out.node_link, "up"]);
        let inside = |args: &[&str]| {
            let mut v = vec!["-n", out.name.as_str()];
            v.extend_from_slice(args);
            ip(&v);
        };
        inside(&["addr", "add", &format!("{addr}/24"), "dev", &peer]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        inside(&["route", "add", "default", "via", node_addr]);
        out
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `f` on a thread inside this namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open the outside netns");
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("enter the outside netns");
            f()
        })
        .join()
        .expect("outside thread")
    }

    /// A one-shot TCP server on `port` here that answers with the peer address it saw.
    fn peer_server(&self, port: u16) -> std::thread::JoinHandle<()> {
        let path = self.path();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open the outside netns");
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("enter the outside netns");
            let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
            tx.send(()).unwrap();
            if let Ok((mut s, peer)) = l.accept() {
                let _ = s.write_all(peer.ip().to_string().as_bytes());
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("server up");
        h
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.node_link])
            .status();
    }
}

/// An HTTP GET of `/` at `to`; the whole answer.
fn http_get(to: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
        .map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| format!("send to {to}: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read from {to}: {e}"))?;
    Ok(out)
}

async fn http_get_async(to: SocketAddr) -> Result<String, String> {
    tokio::task::spawn_blocking(move || http_get(to))
        .await
        .unwrap()
}

fn web_script(page: &str) -> String {
    format!("mkdir -p /www && echo {page} > /www/index.html && exec httpd -f -p 80 -h /www")
}

/// GET / from the outside host to the node's `port`.
fn get_from_outside(outside: &Outside, port: i32) -> Result<String, String> {
    let to: SocketAddr = format!("{}:{port}", outside.node_addr).parse().unwrap();
    outside.run(move || http_get(to))
}

/// A pod `name` publishing its port 80 on the node's `host_port`, with httpd serving
/// `page`: (pod id, httpd container id).
async fn web_pod(d: &Daemon, name: &str, host_port: i32, page: &str) -> (String, String) {
    let mut config = pod_config(name, &log_dir(d));
    config.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 80,
        host_port,
        host_ip: String::new(),
    }];
    let pod = run_pod(d, &config).await;
    let httpd = start(d, &pod, &config, "httpd", &["sh", "-c", &web_script(page)]).await;
    (pod, httpd)
}

/// Waits until `httpd` in the container listens on port 80.
async fn wait_listening(d: &Daemon, container: &str) {
    for _ in 0..100 {
        let (out, _, _) = exec_sync(d, container, &["netstat", "-ltn"]).await;
        if out.contains(":80 ") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("httpd in {container} never listened");
}

fn links() -> String {
    std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default()
}

#[tokio::test]
async fn builtin_network_pods_hostports_masquerade_dns_and_host_network() {
    const HOST_PORT: i32 = 18080;
    let outside = Outside::create("b", 77);
    let d = busybox_daemon().await;
    let logs = log_dir(&d);

    let (web, httpd) = web_pod(&d, "web", HOST_PORT, "hello-from-web").await;
    let mut client_cfg = pod_config("client", &logs);
    client_cfg.dns_config = Some(DnsConfig {
        servers: vec!["10.0.0.10".into()],
        searches: vec!["ns1.svc.cluster.local".into(), "svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let client = run_pod(&d, &client_cfg).await;
    let curl = start(&d, &client, &client_cfg, "curl", &["sleep", "3600"]).await;
    wait_listening(&d, &httpd).await;

    // The address in the status is the one the pod has.
    let web_ip = pod_ip(&d, &web).await;
    let (addrs, _, _) = exec_sync(&d, &httpd, &["ip", "-4", "addr", "show", "eth0"]).await;
    assert!(addrs.contains(&format!("inet {web_ip}/")), "{addrs}");
    // Pod to pod, node to pod.
    let (page, err, code) =
        exec_sync(&d, &curl, &["wget", "-qO-", &format!("http://{web_ip}/")]).await;
    assert_eq!((page.as_str(), code), ("hello-from-web\n", 0), "{err}");
    let web_addr: SocketAddr = format!("{web_ip}:80").parse().unwrap();
    let answer = http_get_async(web_addr).await.expect("node to pod");
    assert!(answer.contains("hello-from-web"), "{answer}");

    // hostPort: the node's own addresses, localhost, and another host.
    for host in ["127.0.0.1", outside.node_addr] {
        let to: SocketAddr = format!("{host}:{HOST_PORT}").parse().unwrap();
        let answer = http_get_async(to)
            .await
            .unwrap_or_else(|e| panic!("hostPort via {host}: {e}"));
        assert!(answer.contains("hello-from-web"), "{host}: {answer}");
    }
    let answer = get_from_outside(&outside, HOST_PORT).expect("hostPort from outside");
    assert!(answer.contains("hello-from-web"), "{answer}");

    // Masquerade: the outside host sees the node's address, not the pod's.
    let server = outside.peer_server(9000);
    let (seen, err, code) = exec_sync(
        &d,
        &curl,
        &["sh", "-c", &format!("nc {} 9000 </dev/null", outside.addr)],
    )
    .await;
    server.join().unwrap();
    assert_eq!((seen.trim(), code), (outside.node_addr, 0), "{err}");

    // DNS settings from the pod config.
    let (resolv, _, _) = exec_sync(&d, &curl, &["cat", "/etc/resolv.conf"]).await;
    assert!(resolv.contains("nameserver 10.0.0.10"), "{resolv}");
    assert!(
        resolv.contains("search ns1.svc.cluster.local svc.cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");

    // A hostNetwork pod sees the node's interfaces and gets no veth.
    let host_cfg = host_network_pod_config("hostnet", &logs);
    // Only pod veths count: the CNI test may add its own links meanwhile.
    let pod_links = || {
        links()
            .lines()
            .filter(|l| l.trim_start().starts_with("bth"))
            .count()
    };
    let links_before = pod_links();
    let hostnet = run_pod(&d, &host_cfg).await;
    assert_eq!(pod_links(), links_before, "a hostNetwork pod got a veth");
    assert!(pod_ip(&d, &hostnet).await.is_empty());
    let sees = start(&d, &hostnet, &host_cfg, "sees", &["sleep", "3600"]).await;
    let (dev, _, _) = exec_sync(&d, &sees, &["cat", "/proc/net/dev"]).await;
    assert!(dev.contains(&outside.node_link), "{dev}");

    // StopPodSandbox takes the pod's veth before it answers; the bridge stays for the others.
    let bridge = format!("berth{}", d.dir().number());
    let stop = |pod: &str| {
        let mut c = d.client().runtime();
        let pod = pod.to_owned();
        async move {
            c.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await
            .expect("StopPodSandbox");
        }
    };
    let veths = pod_links();
    stop(&web).await;
    assert_eq!(pod_links(), veths - 1, "{}", links());
    assert!(links().contains(&format!("{bridge}:")), "{}", links());
    // The last pod on the bridge, its container still running: its veth and the bridge are
    // gone, and its container has exited, when the stop answers.
    stop(&client).await;
    let left = links();
    assert!(!left.contains("bth"), "{left}");
    assert!(!left.contains(&format!("{bridge}:")), "{left}");
    let curl_state = d
        .client()
        .runtime()
        .container_status(ContainerStatusRequest {
            container_id: curl.clone(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .map(|s| s.state);
    assert_eq!(curl_state, Some(ContainerState::ContainerExited as i32));

    for pod in [&web, &client, &hostnet] {
        remove_pod(&d, pod).await;
    }
    // The bridge and every veth go with the last pod.
    let left = links();
    assert!(!left.contains("bth"), "{left}");
    assert!(!left.contains(&format!("{bridge}:")), "{left}");
}

#[tokio::test]
async fn cni_mode_runs_debian_plugins_for_pods_and_hostports() {
    const HOST_PORT: i32 = 18081;
    let outside = Outside::create("c", 78);
    let dir = berth_e2e::DaemonDir::new().expect("dir");
    let conf_dir = dir.path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let bridge = format!("bcni{}", dir.number());
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "berth-e2e",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.77.0.0/24"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": dir.path().join("ipam").display().to_string()
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"}
        ]
    });
    std::fs::write(conf_dir.join("10-e2e.conflist"), conflist.to_string()).unwrap();
    let config = format!(
        "[network]\nmode = \"cni\"\ncni_conf_dir = \"{}\"\ncni_bin_dirs = [\"/usr/lib/cni\"]\n",
        conf_dir.display()
    );
    let d = daemon_in(dir, &config).await;
    pull(&d, images::BUSYBOX).await;
    let logs = log_dir(&d);
    let (web, httpd) = web_pod(&d, "cniweb", HOST_PORT, "hello-from-cni").await;
    let client_cfg = pod_config("cniclient", &logs);
    let client = run_pod(&d, &client_cfg).await;
    let curl = start(&d, &client, &client_cfg, "curl", &["sleep", "3600"]).await;
    wait_listening(&d, &httpd).await;
    let web_ip = pod_ip(&d, &web).await;
    assert!(
        web_ip.starts_with("10.77.0."),
        "the plugin's address: {web_ip}"
    );
    let (page, err, code) =
        exec_sync(&d, &curl, &["wget", "-qO-", &format!("http://{web_ip}/")]).await;
    assert_eq!((page.as_str(), code), ("hello-from-cni\n", 0), "{err}");
    let answer =
        get_from_outside(&outside, HOST_PORT).expect("hostPort from outside through portmap");
    assert!(answer.contains("hello-from-cni"), "{answer}");

    for pod in [&web, &client] {
        remove_pod(&d, pod).await;
    }
    let left = links();
    assert!(
        !left.contains("veth"),
        "the plugin's veths are gone: {left}"
    );
    // The bridge plugin never deletes its bridge (as with containerd): the test made it.
    let _ = Command::new("ip").args(["link", "del", &bridge]).status();
}
