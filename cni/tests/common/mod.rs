//! Harness of the root integration tests: private network namespaces (names prefixed
//! `berth-cni-test-`), a node with an "outside" host on a link and a database, networks
//! opened on the node, pod requests, and small TCP/UDP peers that run inside a namespace on
//! their own thread. Everything is removed on drop, also when a test fails.

// Each test binary (builtin, cni_plugins) uses its own part of this module.
#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use berth_cni::{Network, NetworkConfig, PodNetworkRequest, PortMapping, Protocol};

/// Address of the node on its link to the outside host.
pub const NODE_IP: &str = "198.51.100.1";
/// Address of the outside host.
pub const OUTSIDE_IP: &str = "198.51.100.2";
/// IPv6 address of the node on that link.
pub const NODE_IP6: &str = "2001:db8:5::1";
/// IPv6 address of the outside host.
pub const OUTSIDE_IP6: &str = "2001:db8:5::2";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Skips the test (returning early) unless running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// A fresh [`Node`], or skips the test (returning early) unless running as root.
#[macro_export]
macro_rules! root_node {
    () => {{
        require_root!();
        Node::new()
    }};
}

/// Runs a command (test tooling only), panicking with its output on failure.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("berth-cni-test-{}-{n}-{role}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// `nft args...` inside the namespace.
    pub fn nft(&self, args: &[&str]) -> String {
        let net = format!("--net={}", self.path().display());
        let mut v = vec!["nsenter", &net, "nft"];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Names of the namespace's links.
    pub fn links(&self) -> Vec<String> {
        let json = self.ip(&["-j", "link", "show"]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }

    /// The nft tables of the namespace.
    pub fn nft_tables(&self) -> String {
        self.nft(&["list", "tables"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A node namespace linked to an "outside" host namespace by a veth pair.
/// A node namespace with an outside host on a link, and the database its networks keep
/// their records in (one database for the node's life, as across daemon restarts).
pub struct Node {
    pub node: Netns,
    pub outside: Netns,
    db: Arc<redb::Database>,
    _db_dir: tempfile::TempDir,
}

impl Node {
    pub fn new() -> Node {
        let node = Netns::new("node");
        let outside = Netns::new("out");
        node.ip(&[
            "link",
            "add",
            "uplink",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &outside.name,
        ]);
        node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "uplink"]);
        node.ip(&[
            "addr",
            "add",
            &format!("{NODE_IP6}/64"),
            "dev",
            "uplink",
            "nodad",
        ]);
        node.ip(&["link", "set", "uplink", "up"]);
        outside.ip(&["addr", "add", &format!("{OUTSIDE_IP}/24"), "dev", "eth0"]);
        outside.ip(&[
            "addr",
            "add",
            &format!("{OUTSIDE_IP6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        outside.ip(&["link", "set", "eth0", "up"]);
        let db_dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(db_dir.path().join("meta.redb")).unwrap();
        Node {
            node,
            outside,
            db: Arc::new(db),
            _db_dir: db_dir,
        }
    }

    /// Runs an async body on a runtime whose threads live in the node namespace; returns
    /// what it returns.
    pub fn run<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        run_in(&self.node.path(), f)
    }

    /// Opens a network with `config` and the node's database in the node namespace (as
    /// the daemon starts) and runs `f` with it there; returns what `f` returns.
    pub fn with_network<T, F, Fut>(&self, config: NetworkConfig, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Arc<Network>) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let db = self.db.clone();
        self.run(move || async move { f(open(config, db)).await })
    }

    /// Asserts that nothing of the built-in network is left in the node.
    pub fn assert_clean(&self, bridge: &str) {
        let links = self.node.links();
        assert!(
            !links.iter().any(|l| l == bridge || l.starts_with("bth")),
            "links left: {links:?}"
        );
        let tables = self.node.nft_tables();
        assert!(!tables.contains("berth"), "nft tables left: {tables}");
    }
}

/// Runs `f` on a new thread inside the namespace at `path`.
pub fn in_ns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let file = std::fs::File::open(path).unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns on an open namespace descriptor; it affects only this new thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// Runs an async test body on a runtime whose threads live in the namespace at `path`;
/// returns what it returns.
pub fn run_in<T, F, Fut>(path: &Path, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let r = in_ns(path, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f())
    })
    .join();
    r.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// A TCP server in a namespace answering each connection with the peer address it saw.
pub struct TcpPeerServer {
    pub addr: SocketAddr,
    handle: Option<JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl TcpPeerServer {
    pub fn start(ns: &Path, bind: SocketAddr) -> TcpPeerServer {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stop2 = stop.clone();
        let handle = in_ns(ns, move || {
            let l = TcpListener::bind(bind).unwrap();
            l.set_nonblocking(true).unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            while !stop2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        s.set_nonblocking(false).unwrap();
                        let _ = s.write_all(format!("{}", peer.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server started");
        TcpPeerServer {
            addr,
            handle: Some(handle),
            stop,
        }
    }
}

impl Drop for TcpPeerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Connects from inside `ns` to `to` and returns what the server wrote (the peer address
/// it saw), or the error.
pub fn tcp_peer(ns: &Path, to: SocketAddr) -> Result<IpAddr, String> {
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf)
            .map_err(|e| format!("read from {to}: {e}"))?;
        buf.parse::<IpAddr>()
            .map_err(|_| format!("server sent {buf:?}"))
    })
    .join()
    .unwrap()
}

/// A UDP server in a namespace answering each datagram with the sender's address.
pub struct UdpPeerServer {
    handle: Option<JoinHandle<()>>,
}

impl UdpPeerServer {
    /// Serves `count` datagrams (or gives up after 10 s).
    pub fn start(ns: &Path, bind: SocketAddr, count: usize) -> UdpPeerServer {
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = in_ns(ns, move || {
            let s = UdpSocket::bind(bind).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 64];
            for _ in 0..count {
                let Ok((_, peer)) = s.recv_from(&mut buf) else {
                    return;
                };
                let _ = s.send_to(peer.ip().to_string().as_bytes(), peer);
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("server started");
        UdpPeerServer {
            handle: Some(handle),
        }
    }
}

impl Drop for UdpPeerServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sends one datagram from inside `ns` and returns the answer (peer address seen).
pub fn udp_peer(ns: &Path, to: SocketAddr) -> Result<IpAddr, String> {
    in_ns(ns, move || {
        let bind: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let s = UdpSocket::bind(bind).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 64];
        // UDP may lose the first datagram while neighbours resolve: retry a few times.
        for _ in 0..6 {
            s.send_to(b"hi", to)
                .map_err(|e| format!("send to {to}: {e}"))?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                let text = std::str::from_utf8(&buf[..n]).unwrap();
                return text
                    .parse::<IpAddr>()
                    .map_err(|_| format!("server sent {text:?}"));
            }
        }
        Err(format!("no UDP answer from {to}"))
    })
    .join()
    .unwrap()
}

/// A built-in network config with a per-test bridge name.
pub fn builtin_config() -> NetworkConfig {
    NetworkConfig {
        bridge: "berth0".into(),
        ..NetworkConfig::default()
    }
}

/// Opens a network (must run on a thread inside the node namespace).
pub fn open(config: NetworkConfig, db: Arc<redb::Database>) -> Arc<Network> {
    Network::open(config, db).expect("network opens")
}

pub fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// An address, parsed.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP port mapping.
pub fn tcp(host_port: u16, container_port: u16, host_ip: Option<&str>) -> PortMapping {
    PortMapping {
        protocol: Protocol::Tcp,
        host_port,
        container_port,
        host_ip: host_ip.map(ip),
    }
}

/// The request kubelet's RunPodSandbox makes for pod `pod_id` named `name` in `ns`.
pub fn pod_request(
    pod_id: &str,
    name: &str,
    ns: &Netns,
    ports: Vec<PortMapping>,
) -> PodNetworkRequest {
    PodNetworkRequest {
        pod_id: pod_id.to_string(),
        name: name.to_string(),
        namespace: "default".into(),
        uid: format!("uid-{pod_id}"),
        netns: ns.path(),
        port_mappings: ports,
        dns: None,
        bandwidth: None,
    }
}
