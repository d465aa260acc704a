//! CDI devices, with specs each test writes into its own `[cdi] spec_dirs` (no hardware):
//! a fake vendor `example.com/gpu` whose devices `0`, `1` and `2` are the node's
//! `/dev/null`, `/dev/zero` and `/dev/full` as `/dev/egpu0..2`. A container asking for one
//! gets that node (and may use it, its device cgroup allowing it), its spec's environment and
//! mount, and nothing it did not ask for; an unknown device fails CreateContainer and leaves
//! nothing; a spec written while the daemon runs is used by the next container; the
//! `cdi.k8s.io/` annotation form works; a RuntimeClass handler (runc) gets the same edits in
//! `config.json`, hooks included; a network device moves into the pod renamed and back to
//! the node when the pod stops. The hooks of Berth's own executor are proved by
//! `cdi_hooks.rs` and the two hook tests here.
//!
//! Run through the harness: `scripts/test.sh` (as root).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_e2e::fixtures::{
    assert_refused, bind, container_config, create_container, create_refused, daemon_in, dir_names,
    exec_sync, host_dir, host_network_pod_config, list_containers, new_pod, pod_config, pull,
    remove_pod, run_pod_with, runtime_binary, start_container, start_created,
};
use berth_e2e::{Daemon, DaemonDir, images};
use k8s_cri::v1::{
    CdiDevice, ContainerConfig, ContainerStatusRequest, PodSandboxConfig, StatusRequest,
};
use serde_json::{Value, json};
use tonic::Code;

/// A daemon whose `[cdi] spec_dirs` is a fresh directory (returned), with `extra` TOML,
/// busybox pulled.
async fn cdi_daemon(extra: &str) -> (Daemon, PathBuf) {
    let dir = DaemonDir::new().expect("daemon dir");
    let specs = dir.path().join("cdi");
    std::fs::create_dir_all(&specs).unwrap();
    let config = format!(
        "[cdi]\nspec_dirs = [{:?}]\n{extra}",
        specs.display().to_string()
    );
    let d = daemon_in(dir, &config).await;
    pull(&d, images::BUSYBOX).await;
    (d, specs)
}

/// The fake vendor's spec: `0..2` are `/dev/null`, `/dev/zero`, `/dev/full` as
/// `/dev/egpu0..2` (device `0` also sets `EGPU=0` and mounts `lib` read-only at
/// `/usr/share/egpu`), `ctl` is `/dev/loop-control` as `/dev/egpu-ctl`; every device sets
/// `EGPU_VENDOR=example`. `hooks` are device `0`'s.
fn gpu_spec(lib: &Path, hooks: Vec<Value>) -> Value {
    let node = |i: usize, host: &str| {
        json!({
            "name": i.to_string(),
            "containerEdits": {"deviceNodes": [{"path": format!("/dev/egpu{i}"), "hostPath": host}]},
        })
    };
    let mut zero = node(0, "/dev/null");
    zero["containerEdits"]["env"] = json!(["EGPU=0"]);
    zero["containerEdits"]["mounts"] = json!([{
        "hostPath": lib.display().to_string(),
        "containerPath": "/usr/share/egpu",
        "options": ["ro", "nosuid", "nodev", "bind"],
    }]);
    zero["containerEdits"]["hooks"] = json!(hooks);
    json!({
        "cdiVersion": "0.6.0",
        "kind": "example.com/gpu",
        "containerEdits": {"env": ["EGPU_VENDOR=example"]},
        "devices": [
            zero,
            node(1, "/dev/zero"),
            node(2, "/dev/full"),
            {"name": "ctl", "containerEdits": {"deviceNodes": [
                {"path": "/dev/egpu-ctl", "hostPath": "/dev/loop-control"}]}},
        ],
    })
}

/// Writes the vendor spec into `specs` with a `lib` directory holding `lib.txt`.
fn write_gpu_spec(specs: &Path, hooks: Vec<Value>) {
    let lib = specs.parent().unwrap().join("egpu-lib");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(lib.join("lib.txt"), "egpu library\n").unwrap();
    let spec = gpu_spec(&lib, hooks);
    std::fs::write(specs.join("egpu.json"), spec.to_string()).unwrap();
}

/// A busybox container `name` sleeping, asking for `devices` (fully qualified).
fn with_devices(name: &str, devices: &[&str]) -> ContainerConfig {
    let mut c = container_config(name, &["sleep", "3600"]);
    c.cdi_devices = devices
        .iter()
        .map(|n| CdiDevice {
            name: n.to_string(),
        })
        .collect();
    c
}

/// `sh -c script` in the container: (stdout, exit code).
async fn sh(d: &Daemon, id: &str, script: &str) -> (String, i32) {
    let (out, err, code) = exec_sync(d, id, &["sh", "-c", script]).await;
    (format!("{}{}", out.trim(), err.trim()), code)
}

/// Makes a `/dev/loop-control` node (10:237, harmless to open, and no container may open it
/// by default) in the container's `/tmp` and opens it: only a container whose device cgroup
/// allows 10:237 can.
const OPEN_CTL: &str = "mknod /tmp/lc c 10 237 && exec 3</tmp/lc && echo opened";

#[tokio::test]
async fn a_device_is_its_node_its_env_and_its_mount_and_no_more() {
    let (d, specs) = cdi_daemon("").await;
    write_gpu_spec(&specs, vec![]);
    let (config, pod) = new_pod(&d, "cdi-node").await;
    let c = with_devices("gpu", &["example.com/gpu=0", "example.com/gpu=ctl"]);
    let id = start_container(&d, &pod, &config, c).await;

    assert_eq!(
        sh(&d, &id, "stat -c '%F %t:%T' /dev/egpu0").await,
        ("character special file 1:3".into(), 0)
    );
    assert_eq!(
        sh(&d, &id, "echo data > /dev/egpu0 && echo written").await,
        ("written".into(), 0)
    );
    let (out, code) = sh(&d, &id, "ls /dev/egpu1").await;
    assert_ne!(code, 0, "a device not asked for is there: {out}");
    assert_eq!(
        sh(&d, &id, "echo $EGPU $EGPU_VENDOR").await,
        ("0 example".into(), 0)
    );
    assert_eq!(
        sh(&d, &id, "cat /usr/share/egpu/lib.txt").await,
        ("egpu library".into(), 0)
    );
    let (out, code) = sh(&d, &id, "touch /usr/share/egpu/new").await;
    assert_ne!(code, 0, "the read-only mount took a write: {out}");
    // The device cgroup lets it open the node it was given, and not one it was not.
    assert_eq!(sh(&d, &id, OPEN_CTL).await, ("opened".into(), 0));
    let other = start_container(&d, &pod, &config, with_devices("plain", &[])).await;
    let (out, code) = sh(&d, &other, OPEN_CTL).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("not permitted"), "{out}");

    let status = d
        .runtime()
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: Value = serde_json::from_str(&status.info["info"]).unwrap();
    assert_eq!(
        info["cdiDevices"],
        json!(["example.com/gpu=0", "example.com/gpu=ctl"])
    );
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn an_unknown_device_fails_create_naming_it_and_leaves_nothing() {
    let (d, specs) = cdi_daemon("").await;
    write_gpu_spec(&specs, vec![]);
    let (config, pod) = new_pod(&d, "cdi-unknown").await;
    let containers = d.dir().root().join("containers");
    let before = dir_names(&containers);
    let e = create_refused(
        &d,
        &pod,
        &config,
        with_devices("c", &["example.com/gpu=0", "example.com/gpu=7"]),
    )
    .await;
    assert_refused(&e, Code::InvalidArgument, "example.com/gpu=7");
    let e = create_refused(&d, &pod, &config, with_devices("c", &["gpu0"])).await;
    assert_refused(&e, Code::InvalidArgument, "gpu0");
    let mut c = with_devices("c", &[]);
    c.annotations
        .insert("cdi.k8s.io/plugin".into(), "example.com/gpu=0,bogus".into());
    let e = create_refused(&d, &pod, &config, c).await;
    assert_refused(&e, Code::InvalidArgument, "bogus");
    assert!(list_containers(&d).await.is_empty());
    assert_eq!(dir_names(&containers), before);
    // The name is free: the same container with a known device is created.
    create_container(&d, &pod, &config, with_devices("c", &["example.com/gpu=1"])).await;
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn a_spec_written_while_the_daemon_runs_is_used_and_a_broken_one_is_reported() {
    let (d, specs) = cdi_daemon("").await;
    let (config, pod) = new_pod(&d, "cdi-late").await;
    let e = create_refused(
        &d,
        &pod,
        &config,
        with_devices("late", &["example.com/gpu=2"]),
    )
    .await;
    assert_refused(&e, Code::InvalidArgument, "unresolvable CDI device");
    write_gpu_spec(&specs, vec![]);
    std::fs::write(specs.join("broken.yaml"), "cdiVersion: [").unwrap();
    let id = start_container(
        &d,
        &pod,
        &config,
        with_devices("late", &["example.com/gpu=2"]),
    )
    .await;
    assert_eq!(
        sh(&d, &id, "stat -c '%t:%T' /dev/egpu2").await,
        ("1:7".into(), 0)
    );

    let status = d
        .runtime()
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let cdi: Value = serde_json::from_str(&status.info["cdi"]).unwrap();
    let devices = cdi["devices"].as_array().unwrap();
    assert!(devices.contains(&json!("example.com/gpu=2")), "{cdi}");
    let files = cdi["specFiles"].as_array().unwrap();
    let broken = files
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with("broken.yaml"))
        .unwrap_or_else(|| panic!("{cdi}"));
    assert!(
        broken["errors"][0]
            .as_str()
            .unwrap()
            .contains("cannot parse"),
        "{cdi}"
    );
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn the_annotation_form_asks_for_devices_too() {
    let (d, specs) = cdi_daemon("").await;
    write_gpu_spec(&specs, vec![]);
    let (config, pod) = new_pod(&d, "cdi-annotation").await;
    let mut c = with_devices("annotated", &[]);
    c.annotations = HashMap::from([(
        "cdi.k8s.io/example-plugin_gpu".to_owned(),
        "example.com/gpu=1,example.com/gpu=0".to_owned(),
    )]);
    let id = start_container(&d, &pod, &config, c).await;
    assert_eq!(
        sh(&d, &id, "stat -c '%t:%T' /dev/egpu1 /dev/egpu0").await,
        ("1:5\n1:3".into(), 0)
    );
    assert_eq!(sh(&d, &id, "echo $EGPU").await, ("0".into(), 0));
    remove_pod(&d, &pod).await;
}

/// A createContainer hook that writes a marker into the container's root: for Berth's own
/// executor the state's bundle holds the root at `rootfs`; for an OCI runtime, the root is
/// `config.json`'s `root.path`.
fn marker_hook() -> Value {
    let script = r#"state=$(cat)
bundle=$(printf %s "$state" | sed -n 's/.*"bundle":"\([^"]*\)".*/\1/p')
root="$bundle/rootfs"
if [ -f "$bundle/config.json" ]; then
  root=$(tr -d ' \n' < "$bundle/config.json" | sed -n 's/.*"root":{"path":"\([^"]*\)".*/\1/p')
fi
[ -n "$bundle" ] && [ -d "$root" ] || { echo "no container root in $state" >&2; exit 1; }
echo from-the-hook > "$root/cdi-marker""#;
    json!({
        "hookName": "createContainer",
        "path": "/bin/sh",
        "args": ["sh", "-c", script],
        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        "timeout": 10,
    })
}

fn failing_hook() -> Value {
    json!({
        "hookName": "createContainer",
        "path": "/bin/sh",
        "args": ["sh", "-c", "echo the egpu is on fire >&2; exit 3"],
        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
    })
}

/// A pod of `handler` ("" for Berth's own executor).
async fn pod_of(d: &Daemon, name: &str, handler: &str) -> (PodSandboxConfig, String) {
    if handler.is_empty() {
        return new_pod(d, name).await;
    }
    let config = pod_config(name, &d.dir().path().join("logs"));
    let id = run_pod_with(d, &config, handler).await;
    (config, id)
}

/// The device, env, mount and createContainer hook in a pod of `handler`.
async fn edits_and_hooks_apply(d: &Daemon, specs: &Path, handler: &str) {
    write_gpu_spec(specs, vec![marker_hook()]);
    let (config, pod) = pod_of(d, &format!("cdi-hook{handler}"), handler).await;
    let id = start_container(
        d,
        &pod,
        &config,
        with_devices("hooked", &["example.com/gpu=0"]),
    )
    .await;
    assert_eq!(
        sh(
            d,
            &id,
            "cat /cdi-marker; stat -c '%t:%T' /dev/egpu0; echo $EGPU; cat /usr/share/egpu/lib.txt"
        )
        .await,
        ("from-the-hook\n1:3\n0\negpu library".into(), 0),
        "{handler}"
    );
    // A failing hook fails CreateContainer with its message and leaves no container.
    write_gpu_spec(specs, vec![failing_hook()]);
    let before = list_containers(d).await.len();
    let e = create_refused(
        d,
        &pod,
        &config,
        with_devices("failing", &["example.com/gpu=0"]),
    )
    .await;
    assert!(
        e.message().contains("the egpu is on fire"),
        "{handler}: {e:?}"
    );
    assert_eq!(list_containers(d).await.len(), before, "{handler}");
    // The name is free again.
    let ok = create_container(
        d,
        &pod,
        &config,
        with_devices("failing", &["example.com/gpu=1"]),
    )
    .await;
    start_created(d, &ok).await;
    remove_pod(d, &pod).await;
}

#[tokio::test]
async fn hooks_and_edits_apply_in_berths_own_executor() {
    let (d, specs) = cdi_daemon("").await;
    edits_and_hooks_apply(&d, &specs, "").await;
}

#[tokio::test]
async fn a_runc_handler_gets_the_same_edits_and_hooks_in_config_json() {
    let runc = format!(
        "[runtimes.runc]\npath = {:?}\n",
        runtime_binary("runc").display().to_string()
    );
    let (d, specs) = cdi_daemon(&runc).await;
    edits_and_hooks_apply(&d, &specs, "runc").await;
}

/// A veth pair `name`/`name`p made in the node's network namespace for the test, deleted on
/// drop (from whichever side is still on the node), also when the test fails.
struct Veth(String);

impl Veth {
    fn new(name: &str) -> Veth {
        let peer = format!("{name}p");
        let ok = std::process::Command::new("ip")
            .args(["link", "add", name, "type", "veth", "peer", "name", &peer])
            .status()
            .expect("run ip");
        assert!(ok.success(), "ip link add {name}");
        Veth(name.to_owned())
    }

    /// Whether the node has a link called `name`.
    fn on_node(name: &str) -> bool {
        std::process::Command::new("ip")
            .args(["link", "show", name])
            .output()
            .expect("run ip")
            .status
            .success()
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        for name in [self.0.clone(), format!("{}p", self.0)] {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &name])
                .output();
        }
    }
}

#[tokio::test]
async fn a_net_device_moves_into_the_pod_renamed_and_back_when_it_stops() {
    let (mut d, specs) = cdi_daemon("").await;
    let veth = Veth::new("cdinic0");
    let spec = json!({
        "cdiVersion": "1.1.0",
        "kind": "example.com/nic",
        "devices": [{"name": "vf0", "containerEdits": {
            "netDevices": [{"hostInterfaceName": veth.0, "name": "net1"}]}}],
    });
    std::fs::write(specs.join("nic.json"), spec.to_string()).unwrap();

    // Not for a pod on the node's network.
    let host_cfg = host_network_pod_config("cdi-hostnet", &d.dir().path().join("logs"));
    let host_pod = run_pod_with(&d, &host_cfg, "").await;
    let e = create_refused(
        &d,
        &host_pod,
        &host_cfg,
        with_devices("nic", &["example.com/nic=vf0"]),
    )
    .await;
    assert_refused(&e, Code::InvalidArgument, "node's network");
    assert!(Veth::on_node("cdinic0"));
    remove_pod(&d, &host_pod).await;

    let (config, pod) = new_pod(&d, "cdi-nic").await;
    let id = start_container(
        &d,
        &pod,
        &config,
        with_devices("nic", &["example.com/nic=vf0"]),
    )
    .await;
    assert_eq!(
        sh(&d, &id, "ls /sys/class/net | grep -x net1").await,
        ("net1".into(), 0)
    );
    assert!(
        !Veth::on_node("cdinic0"),
        "the interface is still on the node"
    );
    // A second container asking for it finds it there.
    let again = start_container(
        &d,
        &pod,
        &config,
        with_devices("nic2", &["example.com/nic=vf0"]),
    )
    .await;
    assert_eq!(
        sh(&d, &again, "ls /sys/class/net | grep -x net1").await.1,
        0
    );
    // What goes back is on record: a daemon that crashed meanwhile still returns it.
    d.kill().await.expect("kill the daemon");
    d.start_again().await.expect("start the daemon again");
    remove_pod(&d, &pod).await;
    assert!(
        Veth::on_node("cdinic0"),
        "the interface did not come back under its name"
    );
    assert!(!Veth::on_node("net1"));
}

/// A pod chooses which devices it asks for and what its volumes hold; a spec is the node's.
/// Neither a name with a path in it, nor a spec path with `..`, nor a device path leading
/// through a symlink the pod planted in its volume makes anything outside the container:
/// each is refused before the container exists, and the node's directory stays empty.
#[tokio::test]
async fn hostile_names_and_paths_make_nothing_outside_the_container() {
    let (d, specs) = cdi_daemon("").await;
    let outside = host_dir(&d, "outside");
    let volume = host_dir(&d, "volume");
    std::os::unix::fs::symlink(&outside, volume.join("out")).unwrap();
    let spec = json!({
        "cdiVersion": "0.6.0",
        "kind": "example.com/evil",
        "devices": [
            {"name": "through-volume", "containerEdits": {"deviceNodes": [
                {"path": "/vol/out/egpu0", "hostPath": "/dev/null"}]}},
            {"name": "in-volume", "containerEdits": {"deviceNodes": [
                {"path": "/vol/egpu1", "hostPath": "/dev/null"}]}},
        ],
    });
    std::fs::write(specs.join("evil.json"), spec.to_string()).unwrap();
    let dotted = json!({
        "cdiVersion": "0.6.0",
        "kind": "example.com/dotted",
        "devices": [{"name": "up", "containerEdits": {"deviceNodes": [
            {"path": "/dev/../../egpu0", "hostPath": "/dev/null"}]}}],
    });
    std::fs::write(specs.join("dotted.json"), dotted.to_string()).unwrap();
    let (config, pod) = new_pod(&d, "cdi-hostile").await;

    for (name, needle) in [
        ("example.com/evil=../../x", "example.com/evil=../../x"),
        ("example.com/dotted=up", "unresolvable CDI device"),
    ] {
        let e = create_refused(&d, &pod, &config, with_devices("evil", &[name])).await;
        assert_refused(&e, Code::InvalidArgument, needle);
    }
    let mut c = with_devices("evil", &["example.com/evil=through-volume"]);
    c.mounts = vec![bind("/vol", &volume)];
    let e = create_refused(&d, &pod, &config, c).await;
    // Resolved inside the container's root, the link leads nowhere: refused by the monitor
    // (an I/O error of the build, as for a CRI device there).
    assert!(e.message().contains("/vol/out"), "{e:?}");
    // A node is never made in a volume: its files are the node's.
    let mut c = with_devices("evil", &["example.com/evil=in-volume"]);
    c.mounts = vec![bind("/vol", &volume)];
    let e = create_refused(&d, &pod, &config, c).await;
    assert!(e.message().contains("/vol/egpu1"), "{e:?}");
    assert_eq!(dir_names(&volume), ["out"]);
    assert!(list_containers(&d).await.is_empty());
    assert_eq!(dir_names(&outside), Vec::<String>::new());

    let status = d
        .runtime()
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    assert!(
        status.info["cdi"].contains("not a clean path"),
        "{}",
        status.info["cdi"]
    );
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn with_cdi_turned_off_a_device_request_fails_and_nothing_is_read() {
    let (d, specs) = cdi_daemon("enabled = false\n").await;
    write_gpu_spec(&specs, vec![]);
    let (config, pod) = new_pod(&d, "cdi-off").await;
    let e = create_refused(
        &d,
        &pod,
        &config,
        with_devices("off", &["example.com/gpu=0"]),
    )
    .await;
    assert_refused(&e, Code::FailedPrecondition, "CDI is turned off");
    let status = d
        .runtime()
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    assert!(!status.info.contains_key("cdi"), "{:?}", status.info);
    // A container without devices is unaffected.
    start_container(&d, &pod, &config, with_devices("plain", &[])).await;
    remove_pod(&d, &pod).await;
}
