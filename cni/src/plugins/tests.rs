//! The executor against fake plugins (shell scripts that log what they were given): the
//! protocol is checked byte for byte without touching any network.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::Classify;
use crate::types::{PortMapping, Protocol};

/// A network namespace held by a parked thread, so tests get a real nsfs path.
struct PrivateNetns {
    path: PathBuf,
    stop: Option<std::sync::mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl PrivateNetns {
    fn new() -> PrivateNetns {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            // SAFETY: unshare only changes this thread, which parks until the test ends.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            let _ = stop_rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        let path = PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id()));
        PrivateNetns {
            path,
            stop: Some(stop),
            handle: Some(handle),
        }
    }
}

impl Drop for PrivateNetns {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    db: Arc<Database>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for d in ["conf", "bin"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let db = Arc::new(Database::create(dir.path().join("meta.redb")).unwrap());
        Fixture { dir, db }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// A fake plugin: logs "<name> <command> <containerid> <netns> <ifname> <args>" and its
    /// stdin, then runs `body` (shell) for its answer.
    fn plugin(&self, name: &str, body: &str) {
        let script = format!(
            "#!/bin/sh\ninput=$(cat)\nprintf '%s\\n' \"{name} $CNI_COMMAND $CNI_CONTAINERID $CNI_NETNS $CNI_IFNAME $CNI_ARGS\" >> {log}\nprintf '%s\\n' \"$input\" >> {log}\n{body}\n",
            log = self.log().display()
        );
        let p = self.dir.path().join("bin").join(name);
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn conf(&self, file: &str, json: &str) {
        std::fs::write(self.dir.path().join("conf").join(file), json).unwrap();
    }

    fn plugins(&self, timeout: u64) -> Plugins {
        let config = NetworkConfig {
            cni_conf_dir: self.dir.path().join("conf"),
            cni_bin_dirs: vec![PathBuf::from("/nonexistent"), self.dir.path().join("bin")],
            cni_plugin_timeout_seconds: timeout,
            ..NetworkConfig::default()
        };
        Plugins::open(&config, self.db.clone()).unwrap()
    }
}

const ADD_RESULT: &str = r#"if [ "$CNI_COMMAND" = ADD ]; then printf '{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"%s"}],"ips":[{"address":"10.9.0.7/24","interface":0}]}' "$CNI_NETNS"; fi"#;
const PASS_PREV: &str = r#"if [ "$CNI_COMMAND" = ADD ]; then printf '%s' "$input" | sed -e 's/.*"prevResult"://' -e 's/,"runtimeConfig".*//' ; fi"#;

fn request(ns: &Path) -> PodNetworkRequest {
    PodNetworkRequest {
        pod_id: "pod1".into(),
        name: "web".into(),
        namespace: "prod".into(),
        uid: "u-1".into(),
        netns: ns.to_path_buf(),
        port_mappings: vec![PortMapping {
            protocol: Protocol::Tcp,
            container_port: 80,
            host_port: 8080,
            host_ip: None,
        }],
        dns: None,
        bandwidth: None,
    }
}

#[tokio::test]
async fn add_chains_results_and_del_runs_in_reverse_with_the_stored_result() {
    let f = Fixture::new();
    f.plugin("first", ADD_RESULT);
    f.plugin("second", PASS_PREV);
    f.conf(
        "10-net.conflist",
        r#"{"cniVersion":"1.0.0","name":"testnet","plugins":[{"type":"first"},{"type":"second","capabilities":{"portMappings":true}}]}"#,
    );
    let ns = PrivateNetns::new();
    let p = f.plugins(10);
    assert_eq!(p.ready(), Ok(()));
    let status = p.setup(&request(&ns.path)).await.unwrap();
    assert_eq!(
        status.ips,
        vec!["10.9.0.7".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(p.status("pod1").unwrap(), Some(status));
    let log = f.log_lines();
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=pod1;K8S_POD_UID=u-1";
    assert_eq!(
        log[0],
        format!("first ADD pod1 {} eth0 {args}", ns.path.display())
    );
    let first_in: Value = serde_json::from_str(&log[1]).unwrap();
    assert_eq!(
        first_in,
        json!({"type":"first","cniVersion":"1.0.0","name":"testnet"})
    );
    assert!(log[2].starts_with("second ADD pod1"));
    let second_in: Value = serde_json::from_str(&log[3]).unwrap();
    assert_eq!(second_in["prevResult"]["ips"][0]["address"], "10.9.0.7/24");
    assert_eq!(
        second_in["runtimeConfig"],
        json!({"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""}]})
    );
    // A later config change does not affect DEL: it uses what ADD used.
    f.conf(
        "00-other.conflist",
        r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"missing"}]}"#,
    );
    // A new executor (daemon restart) still knows the pod.
    let p = f.plugins(10);
    p.teardown("pod1", None).await.unwrap();
    let log = f.log_lines();
    assert!(log[4].starts_with("second DEL pod1"), "{log:?}");
    assert!(log[6].starts_with("first DEL pod1"), "{log:?}");
    let del_in: Value = serde_json::from_str(&log[7]).unwrap();
    assert_eq!(del_in["prevResult"]["ips"][0]["address"], "10.9.0.7/24");
    assert_eq!(del_in["name"], "testnet");
    assert_eq!(p.status("pod1").unwrap(), None);
    // Idempotent.
    p.teardown("pod1", None).await.unwrap();
    assert_eq!(f.log_lines().len(), 8);
}

#[tokio::test]
async fn a_failed_add_surfaces_the_plugin_message_and_is_deleted() {
    let f = Fixture::new();
    f.plugin("good", ADD_RESULT);
    f.plugin(
        "bad",
        r#"if [ "$CNI_COMMAND" = ADD ]; then echo '{"cniVersion":"1.0.0","code":11,"msg":"no addresses left","details":"range full"}'; exit 1; fi"#,
    );
    f.conf(
        "net.conflist",
        r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"good"},{"type":"bad"}]}"#,
    );
    let ns = PrivateNetns::new();
    let p = f.plugins(10);
    let e = p.setup(&request(&ns.path)).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "CNI plugin bad ADD failed (code 11): no addresses left: range full"
    );
    let cmds: Vec<String> = f
        .log_lines()
        .iter()
        .step_by(2)
        .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(cmds, ["good ADD", "bad ADD", "bad DEL", "good DEL"]);
    assert!(!p.has("pod1").unwrap());
}

#[tokio::test]
async fn a_hanging_plugin_times_out() {
    let f = Fixture::new();
    f.plugin("slow", "sleep 30");
    f.conf(
        "net.conf",
        r#"{"cniVersion":"1.0.0","name":"n","type":"slow"}"#,
    );
    let ns = PrivateNetns::new();
    let p = f.plugins(1);
    let t = std::time::Instant::now();
    let e = p.setup(&request(&ns.path)).await.unwrap_err();
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
    assert!(matches!(e, Error::CniTimeout { .. }), "{e}");
    assert_eq!(e.class(), crate::Class::DeadlineExceeded);
}

#[tokio::test]
async fn missing_config_or_plugin_is_not_ready() {
    let f = Fixture::new();
    let p = f.plugins(10);
    let e = p.ready().unwrap_err();
    assert!(e.contains("no network config found"), "{e}");
    f.conf(
        "net.conf",
        r#"{"cniVersion":"1.0.0","name":"n","type":"absent"}"#,
    );
    let e = p.ready().unwrap_err();
    assert!(e.contains("\"absent\" not found"), "{e}");
    let ns = PrivateNetns::new();
    let e = p.setup(&request(&ns.path)).await.unwrap_err();
    assert_eq!(e.class(), crate::Class::FailedPrecondition);
}

#[tokio::test]
async fn check_status_and_gc_follow_the_version() {
    let f = Fixture::new();
    f.plugin("p", ADD_RESULT);
    f.conf(
        "net.conflist",
        r#"{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"p"}]}"#,
    );
    let ns = PrivateNetns::new();
    let p = f.plugins(10);
    p.setup(&request(&ns.path)).await.unwrap();
    let other = PodNetworkRequest {
        pod_id: "pod2".into(),
        ..request(&ns.path)
    };
    p.setup(&other).await.unwrap();
    p.check("pod1").await.unwrap();
    p.status_check().await.unwrap();
    p.reconcile(&["pod1".to_string()]).await.unwrap();
    let log = f.log_lines();
    let cmds: Vec<String> = log
        .iter()
        .step_by(2)
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        cmds,
        [
            "p ADD pod1",
            "p ADD pod2",
            "p CHECK pod1",
            "p STATUS ",
            "p DEL pod2",
            "p GC "
        ]
    );
    let check_in: Value = serde_json::from_str(&log[5]).unwrap();
    assert_eq!(check_in["prevResult"]["ips"][0]["address"], "10.9.0.7/24");
    let gc_in: Value = serde_json::from_str(&log[11]).unwrap();
    assert_eq!(
        gc_in["cni.dev/valid-attachments"],
        json!([{"containerID":"pod1","ifname":"eth0"}])
    );
    // A STATUS failure is reported with the plugin's message.
    f.plugin("p", r#"echo '{"code":50,"msg":"not available"}'; exit 1"#);
    let e = p.status_check().await.unwrap_err();
    assert!(e.to_string().contains("not available"), "{e}");
    // 1.0.0 has no STATUS and no GC.
    f.conf(
        "net.conflist",
        r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"p"}]}"#,
    );
    p.status_check().await.unwrap();
}

#[test]
fn runtime_config_carries_every_capability_given() {
    let mut r = request(Path::new("/x"));
    r.dns = Some(crate::types::DnsConfig {
        servers: vec!["10.0.0.10".into()],
        searches: vec!["svc".into()],
        options: vec!["ndots:5".into()],
    });
    r.bandwidth = Some(crate::types::Bandwidth {
        ingress_rate: 1000,
        ingress_burst: 10,
        egress_rate: 2000,
        egress_burst: 20,
    });
    r.port_mappings[0].host_ip = Some("10.1.1.1".parse().unwrap());
    let rc = runtime_config(
        &r,
        &[
            "10.244.0.0/24".parse().unwrap(),
            "fd00::/64".parse().unwrap(),
        ],
    );
    assert_eq!(rc["portMappings"][0]["hostIP"], "10.1.1.1");
    assert_eq!(
        rc["dns"],
        json!({"servers":["10.0.0.10"],"searches":["svc"],"options":["ndots:5"]})
    );
    assert_eq!(rc["bandwidth"]["egressRate"], 2000);
    assert_eq!(
        rc["ipRanges"],
        json!([[{"subnet":"10.244.0.0/24"}],[{"subnet":"fd00::/64"}]])
    );
}

#[test]
fn ip_ranges_come_back_from_the_kubelet_cidr_kept_in_the_database() {
    let f = Fixture::new();
    assert!(f.plugins(10).ip_ranges.read().unwrap().is_empty());
    ipam::set_meta(&f.db, &[(ipam::META_POD_CIDRS, Some("10.244.1.0/24"))]).unwrap();
    let expected: Vec<Cidr> = vec!["10.244.1.0/24".parse().unwrap()];
    assert_eq!(*f.plugins(10).ip_ranges.read().unwrap(), expected);
}
