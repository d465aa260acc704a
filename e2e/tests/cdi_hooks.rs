//! OCI hooks from CDI device specs, run by Berth's own executor where the runtime spec puts
//! them: `createRuntime` in the node's mount namespace, `createContainer` in the
//! container's before its root is pivoted into (a file it writes under the root is in the
//! container), `startContainer` in the container (its path resolved there), `poststart`
//! and `poststop` on the node (the latter also after a daemon restart and once the pod's
//! monitor is gone); a failing or slow creation hook fails CreateContainer with its
//! message and leaves nothing behind, a failing `startContainer` hook fails the start.
//!
//! Run through the harness: `scripts/test.sh` (as root).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_e2e::fixtures::{
    assert_refused, container_config, container_pid, create_container, create_refused, daemon_in,
    dir_names, exec_ok, list_containers, new_pod, pull, remove_container, remove_pod,
    start_created, stop_container, wait_exited,
};
use berth_e2e::leaks::berth_cgroups;
use berth_e2e::{Daemon, DaemonDir, images};
use k8s_cri::v1::{CdiDevice, ContainerConfig, StartContainerRequest};
use serde_json::{Value, json};
use tonic::Code;

/// The PATH every test hook gets (a hook's environment is exactly its spec's).
const PATH: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// Shell lines that read the state on stdin into `$state` and its bundle and id into
/// `$bundle` and `$id`.
const READ_STATE: &str = r#"state=$(cat)
bundle=$(printf %s "$state" | sed -n 's/.*"bundle":"\([^"]*\)".*/\1/p')
id=$(printf %s "$state" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
"#;

/// A CDI hook at `point` running `sh -c script` on the node's shell.
fn hook(point: &str, script: &str, timeout: Option<u32>) -> Value {
    let mut h = json!({
        "hookName": point,
        "path": "/bin/sh",
        "args": ["sh", "-c", script],
        "env": [PATH],
    });
    if let Some(t) = timeout {
        h["timeout"] = json!(t);
    }
    h
}

/// A daemon whose `[cdi] spec_dirs` is a fresh directory (returned), busybox pulled.
async fn cdi_daemon() -> (Daemon, PathBuf) {
    let dir = DaemonDir::new().expect("daemon dir");
    let specs = dir.path().join("cdi");
    std::fs::create_dir_all(&specs).unwrap();
    let config = format!("[cdi]\nspec_dirs = [{:?}]\n", specs.display().to_string());
    let d = daemon_in(dir, &config).await;
    pull(&d, images::BUSYBOX).await;
    (d, specs)
}

/// Writes the spec of vendor `example.com/gpu` into `specs`: each device `(name, hooks)`
/// sets `EGPU=<name>` and has those hooks.
fn write_spec(specs: &Path, devices: &[(&str, Vec<Value>)]) {
    let devices: Vec<Value> = devices
        .iter()
        .map(|(name, hooks)| {
            json!({
                "name": name,
                "containerEdits": {"env": [format!("EGPU={name}")], "hooks": hooks},
            })
        })
        .collect();
    let spec = json!({"cdiVersion": "0.6.0", "kind": "example.com/gpu", "devices": devices});
    std::fs::write(specs.join("egpu.json"), spec.to_string()).unwrap();
}

/// A busybox container `name` sleeping, asking for `example.com/gpu=<device>`.
fn with_device(name: &str, device: &str) -> ContainerConfig {
    let mut c = container_config(name, &["sleep", "3600"]);
    c.cdi_devices = vec![CdiDevice {
        name: format!("example.com/gpu={device}"),
    }];
    c
}

/// The JSON a hook saved.
fn saved(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// The mount namespace of `/proc/<pid>` (`self` for this test).
fn mnt_ns(pid: &str) -> String {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    link.display().to_string()
}

fn read_trimmed(path: &Path) -> String {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.trim().to_owned()
}

#[tokio::test]
async fn each_hook_runs_at_its_point_in_its_namespaces() {
    let (d, specs) = cdi_daemon().await;
    let marks = d.dir().path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let m = marks.display();
    let hooks = vec![
        hook(
            "createRuntime",
            &format!(
                "cat > {m}/create-runtime.json; readlink /proc/self/ns/mnt > {m}/create-runtime.ns"
            ),
            Some(10),
        ),
        hook(
            "createContainer",
            &format!(
                "{READ_STATE}echo from-the-hook > \"$bundle/rootfs/cdi-marker\"
printf '#!/bin/sh\\ncat > /start-state.json\\n' > \"$bundle/rootfs/start-hook\"
chmod 755 \"$bundle/rootfs/start-hook\"
readlink /proc/self/ns/mnt > {m}/create-container.ns"
            ),
            Some(10),
        ),
        // Only the container has this program: its path is resolved there.
        json!({"hookName": "startContainer", "path": "/start-hook", "timeout": 10}),
        // A failing poststart hook is logged; the start stands and the next one runs.
        hook("poststart", "echo refused >&2; exit 1", Some(10)),
        hook("poststart", &format!("cat > {m}/poststart.json"), Some(10)),
        hook(
            "poststop",
            &format!("{READ_STATE}printf %s \"$state\" > {m}/poststop-$id.json"),
            Some(10),
        ),
    ];
    write_spec(&specs, &[("hooked", hooks)]);
    let (config, pod) = new_pod(&d, "cdi-hooks").await;
    let id = create_container(&d, &pod, &config, with_device("hooked", "hooked")).await;

    let created = saved(&marks.join("create-runtime.json"));
    assert_eq!(created["id"], id.as_str());
    assert_eq!(created["status"], "creating");
    let pid = created["pid"].as_i64().expect("a pid");
    assert!(
        created["bundle"].as_str().unwrap().ends_with(&id),
        "{created}"
    );
    assert_eq!(
        read_trimmed(&marks.join("create-runtime.ns")),
        mnt_ns("self"),
        "createRuntime runs in the node's mount namespace"
    );
    let in_container = read_trimmed(&marks.join("create-container.ns"));
    assert_ne!(in_container, mnt_ns("self"));
    assert!(!marks.join("poststart.json").exists(), "not started yet");

    start_created(&d, &id).await;
    assert_eq!(container_pid(&d, &id).await, pid);
    assert_eq!(
        in_container,
        mnt_ns(&pid.to_string()),
        "createContainer runs in the container's mount namespace"
    );
    assert_eq!(
        exec_ok(&d, &id, &["cat", "/cdi-marker"]).await,
        "from-the-hook\n"
    );
    assert_eq!(
        exec_ok(&d, &id, &["sh", "-c", "echo $EGPU"]).await,
        "hooked\n"
    );
    assert!(!Path::new("/start-hook").exists());
    let started: Value =
        serde_json::from_str(&exec_ok(&d, &id, &["cat", "/start-state.json"]).await).unwrap();
    assert_eq!(started["status"], "created");
    assert_eq!(started["pid"], pid);
    let running = saved(&marks.join("poststart.json"));
    assert_eq!(running["status"], "running");
    assert_eq!(running["pid"], pid);

    let poststop = marks.join(format!("poststop-{id}.json"));
    stop_container(&d, &id, 0).await;
    assert!(!poststop.exists(), "poststop runs at removal, not at stop");
    remove_container(&d, &id).await;
    let stopped = saved(&poststop);
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(stopped["id"], id.as_str());
    assert!(stopped.get("pid").is_none(), "{stopped}");
    remove_pod(&d, &pod).await;
}

/// What a failed creation could leave: the pod's containers, container directories, the
/// pod's cgroups, mounts under the daemon's root.
fn traces(d: &Daemon, pod: &str) -> (Vec<String>, Vec<String>, BTreeSet<PathBuf>, Vec<String>) {
    let root = d.dir().root();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&*root.to_string_lossy()) && l.contains("/containers/"))
        .map(String::from)
        .collect();
    let cgroups = berth_cgroups()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(pod))
        .collect();
    (
        dir_names(&root.join("containers")),
        dir_names(&d.dir().state().join("containers")),
        cgroups,
        mounts,
    )
}

/// Processes whose command line is `sleep 7919` (what the slow hook runs).
fn slow_hooks() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x007919\x00")
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn a_failing_or_slow_hook_fails_its_call_and_leaves_nothing() {
    let (d, specs) = cdi_daemon().await;
    let fails = "echo 'no device for you' >&2; exit 7";
    write_spec(
        &specs,
        &[
            (
                "runtime-fails",
                vec![hook("createRuntime", fails, Some(10))],
            ),
            (
                "container-fails",
                vec![hook("createContainer", fails, Some(10))],
            ),
            (
                "slow",
                vec![hook(
                    "createContainer",
                    "echo waiting >&2; exec sleep 7919",
                    Some(1),
                )],
            ),
            (
                "start-fails",
                vec![hook(
                    "startContainer",
                    "echo 'not in this one' >&2; exit 4",
                    Some(10),
                )],
            ),
        ],
    );
    let (config, pod) = new_pod(&d, "cdi-hook-fails").await;
    let before = traces(&d, &pod);
    for (device, needle) in [
        (
            "runtime-fails",
            "createRuntime hook /bin/sh exited with code 7: no device for you",
        ),
        (
            "container-fails",
            "createContainer hook /bin/sh exited with code 7: no device for you",
        ),
        (
            "slow",
            "createContainer hook /bin/sh timed out after 1s and was killed: waiting",
        ),
    ] {
        let started = Instant::now();
        let err = create_refused(&d, &pod, &config, with_device(device, device)).await;
        assert_refused(&err, Code::Internal, needle);
        assert!(started.elapsed() < Duration::from_secs(30), "{device}");
        assert!(list_containers(&d).await.is_empty(), "{device}");
        assert_eq!(traces(&d, &pod), before, "{device}");
        assert!(slow_hooks().is_empty(), "{device}: {:?}", slow_hooks());
    }
    // A failing startContainer hook fails the start; the container's process is gone.
    let id = create_container(&d, &pod, &config, with_device("late", "start-fails")).await;
    let err = d
        .client()
        .runtime()
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect_err("StartContainer must fail");
    let needle = "startContainer hook /bin/sh exited with code 4: not in this one";
    assert_refused(&err, Code::Internal, needle);
    assert_ne!(wait_exited(&d, &id).await.exit_code, 0);
    remove_container(&d, &id).await;
    // A removed container's directories are deleted in the background (renamed to
    // `.removed-*` first): wait for that, as a user listing them would.
    let deadline = Instant::now() + Duration::from_secs(10);
    while traces(&d, &pod) != before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(traces(&d, &pod), before);
    // The pod still takes containers.
    let id = create_container(&d, &pod, &config, container_config("after", &["true"])).await;
    start_created(&d, &id).await;
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn poststop_runs_after_a_restart_and_once_the_monitor_is_gone() {
    let (mut d, specs) = cdi_daemon().await;
    let marks = d.dir().path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let poststop = format!(
        "{READ_STATE}printf %s \"$state\" > {}/poststop-$id.json",
        marks.display()
    );
    write_spec(
        &specs,
        &[("stops", vec![hook("poststop", &poststop, Some(10))])],
    );
    let (config, pod) = new_pod(&d, "cdi-poststop").await;
    let mut ids = Vec::new();
    for name in ["after-restart", "after-pod-stop"] {
        let id = create_container(&d, &pod, &config, with_device(name, "stops")).await;
        start_created(&d, &id).await;
        ids.push(id);
    }
    let marker = |id: &str| marks.join(format!("poststop-{id}.json"));

    d.kill().await.expect("kill the daemon");
    d.start_again().await.expect("start again");
    d.wait_runtime_ready(Duration::from_secs(30))
        .await
        .expect("runtime ready");
    // Its monitor outlived the restart.
    stop_container(&d, &ids[0], 0).await;
    remove_container(&d, &ids[0]).await;
    assert_eq!(saved(&marker(&ids[0]))["status"], "stopped");

    // The pod stopped first: its monitor is gone when the container is removed.
    d.client()
        .runtime()
        .stop_pod_sandbox(k8s_cri::v1::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("StopPodSandbox");
    assert!(
        !marker(&ids[1]).exists(),
        "poststop runs at removal, not at stop"
    );
    remove_container(&d, &ids[1]).await;
    assert_eq!(saved(&marker(&ids[1]))["id"], ids[1].as_str());
    remove_pod(&d, &pod).await;
}

/// The `createContainer` hook of a vendor that reads the container's `config.json` from
/// the bundle its state names, as `nvidia-cdi-hook` does: it saves the state on the node
/// and writes the `config.json`'s `root.path` and annotation `example.com/note` into
/// `/hook-read` in the container.
const READS_CONFIG: &str = r#"printf %s "$state" > MARKS/state.json
config="$bundle/config.json"
root=$(sed -n '/"root": {/,/}/s/.*"path": "\([^"]*\)".*/\1/p' "$config")
note=$(sed -n 's/.*"example.com\/note": "\([^"]*\)".*/\1/p' "$config")
printf '%s\n%s\n' "$root" "$note" > "$bundle/rootfs/hook-read"
"#;

#[tokio::test]
async fn hooks_read_config_json_in_the_bundle_their_state_names() {
    let (d, specs) = cdi_daemon().await;
    let marks = d.dir().path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let script = READS_CONFIG.replace("MARKS", &marks.display().to_string());
    let hooks = vec![hook(
        "createContainer",
        &format!("{READ_STATE}{script}"),
        Some(10),
    )];
    write_spec(&specs, &[("reader", hooks)]);
    let (config, pod) = new_pod(&d, "cdi-bundle").await;
    let mut asked = with_device("reader", "reader");
    asked
        .annotations
        .insert("example.com/note".into(), "gpu-0-for-training".into());
    let id = create_container(&d, &pod, &config, asked).await;
    let bundle = d.dir().root().join("containers").join(&id);

    // The state names the container's directory and carries its annotations.
    let state = saved(&marks.join("state.json"));
    assert_eq!(state["bundle"], bundle.display().to_string());
    assert_eq!(
        state["annotations"]["example.com/note"],
        "gpu-0-for-training"
    );
    // The hook found root.path and the annotation in that directory's config.json.
    start_created(&d, &id).await;
    let rootfs = bundle.join("rootfs").display().to_string();
    assert_eq!(
        exec_ok(&d, &id, &["cat", "/hook-read"]).await,
        format!("{rootfs}\ngpu-0-for-training\n")
    );
    // It is the container's OCI runtime spec (the CDI edits too), and only root reads it.
    let path = bundle.join("config.json");
    let spec = saved(&path);
    assert_eq!(spec["root"]["path"], rootfs.as_str());
    let env = spec["process"]["env"].as_array().unwrap();
    assert!(env.contains(&json!("EGPU=reader")), "{env:?}");
    assert_eq!(spec["process"]["args"], json!(["sleep", "3600"]));
    assert!(
        spec["hooks"]["createContainer"].is_array(),
        "{}",
        spec["hooks"]
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // A container without hooks gets no config.json.
    let plain = create_container(&d, &pod, &config, container_config("plain", &["true"])).await;
    let plain_dir = d.dir().root().join("containers").join(&plain);
    assert!(plain_dir.join("rootfs").is_dir(), "{}", plain_dir.display());
    assert!(!plain_dir.join("config.json").exists());

    // The config.json goes with the container (its directory is moved aside at once,
    // deleted off the call's path).
    remove_container(&d, &id).await;
    assert!(!path.exists(), "{} outlived its container", path.display());
    let containers = d.dir().root().join("containers");
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir_names(&containers).iter().any(|n| n.contains(&id)) {
        assert!(Instant::now() < deadline, "{:?}", dir_names(&containers));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    remove_pod(&d, &pod).await;
}
