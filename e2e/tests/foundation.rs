//! Foundation: the daemon serves CRI v1 on its socket, reports its version,
//! status and runtime config, takes kubelet's pod CIDR, refuses bad configs and second
//! daemons, and shuts down cleanly.
//!
//! Run through the harness: `scripts/test.sh` (as root).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use berth_e2e::daemon::describe;
use berth_e2e::fixtures::{daemon_in, runtime_status};
use berth_e2e::{Daemon, DaemonDir, Env, run_berth};
use k8s_cri::v1::{
    CgroupDriver, NetworkConfig, RuntimeCondition, RuntimeConfigRequest,
    UpdateRuntimeConfigRequest, VersionRequest,
};
use nix::sys::signal::Signal;
use serde_json::Value;

/// How long a one-shot `berth` command or a shutdown may take.
const QUICK: Duration = Duration::from_secs(20);

async fn start() -> Daemon {
    Daemon::start().await.expect("start berth")
}

async fn conditions(d: &Daemon) -> Vec<RuntimeCondition> {
    runtime_status(&d)
        .await
        .status
        .expect("Status has a status")
        .conditions
}

fn condition<'a>(conds: &'a [RuntimeCondition], kind: &str) -> &'a RuntimeCondition {
    conds
        .iter()
        .find(|c| c.r#type == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {conds:?}"))
}

fn assert_explained(c: &RuntimeCondition) {
    if !c.status {
        assert!(
            !c.reason.is_empty(),
            "{} is false without a reason: {c:?}",
            c.r#type
        );
        assert!(
            !c.message.is_empty(),
            "{} is false without a message: {c:?}",
            c.r#type
        );
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[tokio::test]
async fn version_names_berth_and_cri_v1() {
    let d = start().await;
    let v = d
        .runtime()
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(v.runtime_name, "berth");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    assert!(!v.version.is_empty(), "VersionResponse.version is empty");
}

#[tokio::test]
async fn version_command_prints_the_crate_version() {
    let out = run_berth(["version"], QUICK).await.expect("berth version");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "berth version: {}",
        describe(&out.status)
    );
    assert!(
        stdout.contains(env!("CARGO_PKG_VERSION")),
        "berth version printed {stdout:?}"
    );
}

#[tokio::test]
async fn status_reports_runtime_and_network_ready() {
    let d = start().await;
    d.wait_runtime_ready(Duration::from_secs(30))
        .await
        .expect("RuntimeReady after reconciliation");
    let conds = conditions(&d).await;
    for c in &conds {
        assert_explained(c);
    }
    assert!(condition(&conds, "RuntimeReady").status);
    let net = condition(&conds, "NetworkReady");
    assert!(net.status, "built-in network mode is not ready: {net:?}");
}

#[tokio::test]
async fn status_explains_why_cni_network_is_not_ready() {
    let dir = DaemonDir::new().expect("daemon dir");
    let empty = dir.path().join("cni-empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let d = daemon_in(
        dir,
        &format!(
            "[network]\nmode = \"cni\"\ncni_conf_dir = {:?}\n",
            path_str(&empty)
        ),
    )
    .await;
    let conds = conditions(&d).await;
    let net = condition(&conds, "NetworkReady");
    assert!(
        !net.status,
        "NetworkReady with no CNI config in {}: {net:?}",
        empty.display()
    );
    assert_explained(net);
}

#[tokio::test]
async fn status_without_verbose_has_no_info() {
    let d = start().await;
    let resp = runtime_status(&d).await;
    assert!(
        resp.info.is_empty(),
        "non-verbose Status has info: {:?}",
        resp.info
    );
}

#[tokio::test]
async fn verbose_status_returns_the_effective_config() {
    let d = start().await;
    let c = d.effective_config().await.expect("effective config");
    let dir = d.dir();
    assert_eq!(c["root"], path_str(&dir.root()), "{c:#}");
    assert_eq!(c["state"], path_str(&dir.state()), "{c:#}");
    assert_eq!(c["grpc"]["socket"], path_str(&dir.socket()), "{c:#}");
    assert_eq!(c["log"]["level"], "debug", "{c:#}");
    assert_eq!(
        c["network"]["bridge"],
        format!("berth{}", dir.number()),
        "{c:#}"
    );
    let registry = Env::get().registry_url();
    for host in berth_e2e::images::MIRRORED_HOSTS {
        assert_eq!(
            c["registry"]["mirrors"][host]["endpoints"],
            serde_json::json!([registry]),
            "mirror of {host}: {c:#}"
        );
    }
}

#[tokio::test]
async fn runtime_config_reports_the_cgroupfs_driver() {
    let d = start().await;
    let resp = d
        .runtime()
        .runtime_config(RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig")
        .into_inner();
    let linux = resp.linux.expect("RuntimeConfig has a linux section");
    assert_eq!(linux.cgroup_driver, CgroupDriver::Cgroupfs as i32);
}

async fn update_cidr(d: &Daemon, cidr: &str) -> Result<(), tonic::Status> {
    d.runtime()
        .update_runtime_config(UpdateRuntimeConfigRequest {
            runtime_config: Some(k8s_cri::v1::RuntimeConfig {
                network_config: Some(NetworkConfig {
                    pod_cidr: cidr.into(),
                }),
            }),
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn update_runtime_config_stores_the_pod_cidr() {
    let d = start().await;
    let before = d.effective_config().await.expect("config")["network"]["pod_cidr"].clone();
    assert_ne!(before, "10.244.3.0/24");

    update_cidr(&d, "10.244.3.0/24")
        .await
        .expect("UpdateRuntimeConfig");
    let pod_cidr = |c: Value| c["network"]["pod_cidr"].clone();
    assert_eq!(
        pod_cidr(d.effective_config().await.expect("config")),
        "10.244.3.0/24"
    );

    // kubelet sends an empty CIDR before the node has one: nothing changes.
    update_cidr(&d, "")
        .await
        .expect("UpdateRuntimeConfig with no CIDR");
    assert_eq!(
        pod_cidr(d.effective_config().await.expect("config")),
        "10.244.3.0/24"
    );
}

#[tokio::test]
async fn update_runtime_config_rejects_a_malformed_cidr() {
    let d = start().await;
    let err = update_cidr(&d, "10.244.3.0/99")
        .await
        .expect_err("a /99 CIDR was accepted");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("10.244.3.0/99"),
        "message does not name the CIDR: {err:?}"
    );
    let c = d.effective_config().await.expect("config");
    assert_ne!(c["network"]["pod_cidr"], "10.244.3.0/99");
}

/// Runs `berth --config FILE` on a config holding private paths and `body` (where
/// `SOCKET` stands for a private socket path, so that a daemon that wrongly accepts the
/// file stays off the host's paths), expects it to refuse quickly, and returns its stderr
/// and the file's path.
async fn refused_config(body: &str) -> (String, String) {
    let dir = DaemonDir::new().expect("daemon dir");
    let text = format!(
        "root = {:?}\nstate = {:?}\n{}",
        path_str(&dir.root()),
        path_str(&dir.state()),
        body.replace("SOCKET", &format!("{:?}", path_str(&dir.socket())))
    );
    let file = dir.config_path();
    std::fs::write(&file, &text).expect("write config");
    let out = run_berth(["--config", &path_str(&file)], QUICK)
        .await
        .unwrap_or_else(|e| panic!("berth did not refuse config:\n{text}\n{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "berth accepted config:\n{text}\nstderr: {stderr}"
    );
    assert!(
        !dir.socket().exists(),
        "berth created its socket with a bad config"
    );
    (stderr, path_str(&file))
}

/// Starts berth with each config of `cases` (see [`refused_config`]) and checks that its
/// error names the case's key and the config file.
async fn refused_naming_key_and_file(cases: &[(&str, &str)]) {
    for &(config, key) in cases {
        let (stderr, file) = refused_config(config).await;
        assert!(
            stderr.contains(key),
            "stderr does not name the key {key}: {stderr}"
        );
        assert!(
            stderr.contains(&file),
            "stderr does not name the file: {stderr}"
        );
    }
}

#[tokio::test]
async fn unknown_config_keys_are_refused_naming_key_and_file() {
    refused_naming_key_and_file(&[
        ("colour = \"blue\"\n[grpc]\nsocket = SOCKET\n", "colour"),
        (
            "[grpc]\nsocket = SOCKET\nsockett = \"/tmp/x.sock\"\n",
            "sockett",
        ),
    ])
    .await;
}

#[tokio::test]
async fn wrongly_typed_config_values_are_refused_naming_key_and_file() {
    refused_naming_key_and_file(&[
        ("[grpc]\nsocket = 5\n", "socket"),
        (
            "[grpc]\nsocket = SOCKET\n[log]\nlevel = [\"debug\"]\n",
            "level",
        ),
    ])
    .await;
}

/// Asserts that `d` answers a CRI `Version` call; `what` names the step if it does not.
async fn answers_version(d: &Daemon, what: &str) {
    d.runtime()
        .version(VersionRequest::default())
        .await
        .expect(what);
}

/// Waits for the second daemon `b` to exit, failed, saying another daemon holds the state.
async fn refused_for_the_lock(b: &mut Daemon) {
    let status = b
        .wait_exit(QUICK)
        .await
        .expect("second berth keeps running");
    assert!(!status.success(), "second berth: {}", describe(&status));
    assert!(
        b.log().contains("another berth daemon"),
        "second berth's log does not say why:\n{}",
        b.log()
    );
}

#[tokio::test]
async fn a_second_daemon_on_the_same_state_is_refused() {
    let a = start().await;
    let mut b = Daemon::builder()
        .config_file(a.config_path())
        .spawn()
        .expect("spawn second berth");
    refused_for_the_lock(&mut b).await;
    // The first one still owns and serves its socket.
    assert!(a.socket().exists(), "the refused daemon removed the socket");
    answers_version(&a, "first berth stopped serving").await;
}

#[tokio::test]
async fn a_second_daemon_with_another_socket_on_the_same_state_is_refused() {
    let a = start().await;
    let other = DaemonDir::new().expect("daemon dir");
    let text = format!(
        "root = {:?}\nstate = {:?}\n[grpc]\nsocket = {:?}\n",
        path_str(&other.root()),
        path_str(&a.dir().state()),
        path_str(&other.socket()),
    );
    let mut b = Daemon::builder()
        .dir(other)
        .raw_config(text)
        .spawn()
        .expect("spawn second berth");
    refused_for_the_lock(&mut b).await;
    assert!(
        !b.dir().socket().exists(),
        "refused daemon created its socket"
    );
}

#[tokio::test]
async fn the_socket_is_mode_0660_and_its_parents_are_created() {
    let dir = DaemonDir::new().expect("daemon dir");
    let socket = dir.path().join("deep/er/cri.sock");
    let d = Daemon::builder()
        .dir(dir)
        .config(&format!("[grpc]\nsocket = {:?}\n", path_str(&socket)))
        .daemon_subcommand()
        .start()
        .await
        .expect("start berth daemon");
    assert_eq!(d.socket(), socket);
    let md = std::fs::symlink_metadata(&socket).expect("stat socket");
    assert!(
        md.file_type().is_socket(),
        "{} is not a socket",
        socket.display()
    );
    assert_eq!(md.permissions().mode() & 0o7777, 0o660, "socket mode");
    assert_eq!(md.uid(), 0, "socket owner");
}

async fn signal_stops_cleanly(signal: Signal) {
    let mut d = start().await;
    answers_version(&d, "Version").await;
    d.signal(signal).expect("signal");
    let status = d.wait_exit(QUICK).await.expect("berth exits");
    assert_eq!(
        status.code(),
        Some(0),
        "berth after {signal}: {}",
        describe(&status)
    );
    assert!(!d.socket().exists(), "socket left after {signal}");
    // The state lock is released: the same daemon starts again.
    d.start_again().await.expect("restart after clean stop");
    answers_version(&d, "Version after restart").await;
}

#[tokio::test]
async fn sigterm_exits_zero_and_removes_the_socket() {
    signal_stops_cleanly(Signal::SIGTERM).await;
}

#[tokio::test]
async fn sigint_exits_zero_and_removes_the_socket() {
    signal_stops_cleanly(Signal::SIGINT).await;
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let dir = DaemonDir::new().expect("daemon dir");
    std::fs::create_dir_all(dir.state()).expect("mkdir state");
    drop(UnixListener::bind(dir.socket()).expect("bind stale socket"));
    assert!(
        std::os::unix::net::UnixStream::connect(dir.socket()).is_err(),
        "stale socket still accepts"
    );
    let d = Daemon::builder()
        .dir(dir)
        .start()
        .await
        .expect("start over a stale socket");
    answers_version(&d, "Version").await;
    let md = std::fs::metadata(d.socket()).expect("stat socket");
    assert_eq!(md.permissions().mode() & 0o7777, 0o660);
}

/// Drops JSON nulls (TOML cannot express them) so the two forms compare.
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

#[tokio::test]
async fn the_printed_default_config_is_complete_and_round_trips() {
    let out = run_berth(["config", "default"], QUICK)
        .await
        .expect("berth config default");
    assert!(
        out.status.success(),
        "berth config default: {}",
        describe(&out.status)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut table: toml::Table = text.parse().expect("berth config default prints TOML");
    assert_eq!(table["root"].as_str(), Some("/var/lib/berth"), "{text}");
    assert_eq!(table["state"].as_str(), Some("/run/berth"), "{text}");
    assert_eq!(
        table["grpc"]["socket"].as_str(),
        Some("/run/berth/berth.sock"),
        "{text}"
    );
    assert_eq!(
        table["network"]["pod_cidr"].as_str(),
        Some("10.88.0.0/16"),
        "{text}"
    );
    assert_eq!(
        table["cgroup"]["driver"].as_str(),
        Some("cgroupfs"),
        "{text}"
    );

    // Private paths for both runs; everything else stays as printed.
    let paths = DaemonDir::new().expect("daemon dir");
    let (root, state, socket) = (
        path_str(&paths.root()),
        path_str(&paths.state()),
        path_str(&paths.socket()),
    );
    table.insert("root".into(), root.clone().into());
    table.insert("state".into(), state.clone().into());
    table["grpc"]
        .as_table_mut()
        .expect("[grpc] is a table")
        .insert("socket".into(), socket.clone().into());

    let mut full = Daemon::builder()
        .raw_config(toml::to_string(&table).expect("serialize"))
        .start()
        .await
        .expect("start with the printed default config");
    let from_full = full.effective_config().await.expect("config");
    let status = full.stop().await.expect("stop");
    assert!(status.success(), "{}", describe(&status));
    drop(full);

    let mut minimal = Daemon::builder()
        .raw_config(format!(
            "root = {root:?}\nstate = {state:?}\n[grpc]\nsocket = {socket:?}\n"
        ))
        .start()
        .await
        .expect("start with only private paths");
    let from_minimal = minimal.effective_config().await.expect("config");
    minimal.stop().await.expect("stop");

    assert_eq!(
        from_full, from_minimal,
        "printed defaults differ from built-in defaults"
    );
    let printed = serde_json::to_value(&table).expect("toml as json");
    assert_eq!(
        without_nulls(from_minimal),
        printed,
        "`berth config default` does not print every effective setting"
    );
}

#[tokio::test]
async fn log_flags_override_the_config_and_json_lines_are_json() {
    let mut d = Daemon::builder()
        .arg("--log-level")
        .arg("debug")
        .arg("--log-format")
        .arg("json")
        .config("[log]\nlevel = \"warn\"\nformat = \"text\"\n")
        .start()
        .await
        .expect("start berth");
    let c = d.effective_config().await.expect("config");
    assert_eq!(c["log"]["level"], "debug", "{c:#}");
    assert_eq!(c["log"]["format"], "json", "{c:#}");
    answers_version(&d, "Version").await;
    d.stop().await.expect("stop");
    let log = d.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("=== berth-e2e:"))
        .collect();
    assert!(!lines.is_empty(), "no log lines at debug level");
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.is_object(), "not a JSON object: {l}");
    }
    assert!(
        lines.iter().any(|l| l.contains("Version")),
        "the Version request is not logged at debug level:\n{log}"
    );
}
