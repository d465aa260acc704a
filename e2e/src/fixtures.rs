//! The pods and containers tests make over and over: a daemon with busybox pulled, a running
//! pod, configs as kubelet sends them, and the calls that pull, run, start, exec, list and
//! wait, each panicking with the call's error (these are test steps, not the thing under
//! test), plus the calls that must fail, returning their status for the test to judge.
//!
//! A new test is a few lines:
//!
//! ```no_run
//! # async fn t() {
//! use berth_e2e::fixtures::{busybox_pod, exec_ok, start};
//! let (d, config, pod) = busybox_pod("web").await;
//! let c = start(&d, &pod, &config, "c", &["sleep", "3600"]).await;
//! assert_eq!(exec_ok(&d, &c, &["cat", "/etc/hostname"]).await, "web-host\n");
//! # }
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_test_support::streaming_client::ExecOptions;
use k8s_cri::v1::*;
use tonic::{Code, Status};

use crate::{Client, Daemon, DaemonDir, images};

/// A fresh daemon with busybox pulled.
pub async fn busybox_daemon() -> Daemon {
    let d = Daemon::start().await.expect("daemon");
    pull(&d, images::BUSYBOX).await;
    d
}

/// A fresh daemon with the TOML `config` merged over the harness's.
pub async fn daemon_with(config: &str) -> Daemon {
    Daemon::builder()
        .config(config)
        .start()
        .await
        .expect("daemon")
}

/// A daemon in `dir` with the TOML `config` merged over the harness's.
pub async fn daemon_in(dir: DaemonDir, config: &str) -> Daemon {
    let d = Daemon::builder().dir(dir).config(config).start().await;
    d.expect("daemon")
}

/// Debian's path of a runtime binary (`runc`, `crun`).
pub fn runtime_binary(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is not installed (scripts/test.sh installs it)"))
}

/// A fresh daemon with `runc` and `crun` as RuntimeClass handlers.
pub async fn runc_crun_daemon() -> Daemon {
    let config = format!(
        "[runtimes.runc]\npath = {:?}\n[runtimes.crun]\npath = {:?}\n",
        runtime_binary("runc").display().to_string(),
        runtime_binary("crun").display().to_string()
    );
    daemon_with(&config).await
}

/// A tmpfs mounted at `path` with `options` (`size=1m`), detached on drop, also when the
/// test fails.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts it, making `path` first.
    pub fn mount(path: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let flags = nix::mount::MsFlags::empty();
        nix::mount::mount(Some("tmpfs"), path, Some("tmpfs"), flags, Some(options))
            .expect("mount a tmpfs");
        Tmpfs(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A fresh daemon with busybox pulled and a running pod `name`: (daemon, pod config, pod id).
pub async fn busybox_pod(name: &str) -> (Daemon, PodSandboxConfig, String) {
    let d = busybox_daemon().await;
    let (config, pod) = new_pod(&d, name).await;
    (d, config, pod)
}

/// Where the pods of [`new_pod`] log: `pod-logs` in the daemon's test directory.
pub fn log_dir(d: &Daemon) -> PathBuf {
    d.dir().path().join("pod-logs")
}

/// A fresh directory `name` under the daemon's test directory.
pub fn host_dir(d: &Daemon, name: &str) -> PathBuf {
    let dir = d.dir().path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs pod `name` (its config from [`pod_config`], logging under [`log_dir`]); returns
/// (config, id).
pub async fn new_pod(d: &Daemon, name: &str) -> (PodSandboxConfig, String) {
    let config = pod_config(name, &log_dir(d));
    let id = run_pod(d, &config).await;
    (config, id)
}

/// A pod config with unique metadata for `name`, logging under `log_dir`.
pub fn pod_config(name: &str, log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        log_directory: log_dir.display().to_string(),
        ..Default::default()
    }
}

/// [`pod_config`] for a pod on the node's network namespace (hostNetwork).
pub fn host_network_pod_config(name: &str, log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..pod_config(name, log_dir)
    }
}

/// A busybox container `name` running `command`, logging to `<name>.log`, with
/// `GREETING=hello from berth` in its environment.
pub fn container_config(name: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: images::BUSYBOX.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        envs: vec![KeyValue {
            key: "GREETING".into(),
            value: "hello from berth".into(),
        }],
        ..Default::default()
    }
}

/// `c` with these resources (its other Linux settings dropped).
pub fn with_resources(mut c: ContainerConfig, r: LinuxContainerResources) -> ContainerConfig {
    c.linux = Some(LinuxContainerConfig {
        resources: Some(r),
        ..Default::default()
    });
    c
}

/// The container's ContainerStats.
pub async fn container_stats(d: &impl AsRef<Client>, id: &str) -> ContainerStats {
    d.as_ref()
        .runtime()
        .container_stats(ContainerStatsRequest {
            container_id: id.into(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats")
}

/// The spec naming `image`.
pub fn image_spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

/// Pulls `image`.
pub async fn pull(d: &impl AsRef<Client>, image: &str) {
    d.as_ref()
        .images()
        .pull_image(PullImageRequest {
            image: image_spec(image),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("pull {image}: {e:?}"));
}

/// The Linux part of a container config with just the security context `sc`.
pub fn linux_security(sc: LinuxContainerSecurityContext) -> LinuxContainerConfig {
    LinuxContainerConfig {
        security_context: Some(sc),
        ..Default::default()
    }
}

/// The container config's security context, made if it has none.
pub fn security_context(c: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    let linux = c.linux.get_or_insert_with(Default::default);
    linux.security_context.get_or_insert_with(Default::default)
}

/// A read-only image volume: `image`'s root file system at `path`.
pub fn image_volume(path: &str, image: &str) -> Mount {
    Mount {
        container_path: path.into(),
        image: image_spec(image),
        readonly: true,
        ..Default::default()
    }
}

/// A bind of the host directory `host` at `path`.
pub fn bind(path: &str, host: &Path) -> Mount {
    Mount {
        container_path: path.into(),
        host_path: host.display().to_string(),
        ..Default::default()
    }
}

/// RunPodSandbox of `config` with the runtime `handler` (empty: the default runtime).
pub async fn try_run_pod(
    d: &impl AsRef<Client>,
    config: &PodSandboxConfig,
    handler: &str,
) -> Result<String, Status> {
    let request = RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: handler.into(),
    };
    let response = d.as_ref().runtime().run_pod_sandbox(request).await?;
    Ok(response.into_inner().pod_sandbox_id)
}

/// Runs a pod; returns its id.
pub async fn run_pod(d: &impl AsRef<Client>, config: &PodSandboxConfig) -> String {
    run_pod_with(d, config, "").await
}

/// Runs a pod with the runtime `handler`; returns its id.
pub async fn run_pod_with(
    d: &impl AsRef<Client>,
    config: &PodSandboxConfig,
    handler: &str,
) -> String {
    try_run_pod(d, config, handler)
        .await
        .expect("RunPodSandbox")
}

/// RunPodSandbox that must fail: returns the error.
pub async fn run_pod_refused(d: &impl AsRef<Client>, config: &PodSandboxConfig) -> Status {
    let result = try_run_pod(d, config, "").await;
    result.expect_err("RunPodSandbox must fail")
}

/// CreateContainer of `config` in the pod.
pub async fn try_create(
    d: &impl AsRef<Client>,
    pod_id: &str,
    pod: &PodSandboxConfig,
    config: ContainerConfig,
) -> Result<String, Status> {
    let request = CreateContainerRequest {
        pod_sandbox_id: pod_id.into(),
        config: Some(config),
        sandbox_config: Some(pod.clone()),
    };
    let response = d.as_ref().runtime().create_container(request).await?;
    Ok(response.into_inner().container_id)
}

/// CreateContainer that must fail: returns the error.
pub async fn create_refused(
    d: &impl AsRef<Client>,
    pod_id: &str,
    pod: &PodSandboxConfig,
    config: ContainerConfig,
) -> Status {
    let what = format!("CreateContainer {:?} must fail", config.metadata);
    try_create(d, pod_id, pod, config).await.expect_err(&what)
}

/// Asserts that `err` has `code` and a message naming `needle`.
pub fn assert_refused(err: &Status, code: Code, needle: &str) {
    assert_eq!(err.code(), code, "{err:?}");
    assert!(err.message().contains(needle), "{}", err.message());
}

/// Creates and starts the busybox container `name` running `command` in the pod (see
/// [`container_config`]); returns its id.
pub async fn start(
    d: &impl AsRef<Client>,
    pod_id: &str,
    pod: &PodSandboxConfig,
    name: &str,
    command: &[&str],
) -> String {
    start_container(d, pod_id, pod, container_config(name, command)).await
}

/// Creates a container in the pod (not started); returns its id.
pub async fn create_container(
    d: &impl AsRef<Client>,
    pod_id: &str,
    pod: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    try_create(d, pod_id, pod, config)
        .await
        .expect("CreateContainer")
}

/// Starts a created container.
pub async fn start_created(d: &impl AsRef<Client>, id: &str) {
    d.as_ref()
        .runtime()
        .start_container(StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .expect("StartContainer");
}

/// Creates and starts a container in the pod; returns its id.
pub async fn start_container(
    d: &impl AsRef<Client>,
    pod_id: &str,
    pod: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    let id = create_container(d, pod_id, pod, config).await;
    start_created(d, &id).await;
    id
}

/// Stops the container, giving it `timeout` seconds after SIGTERM.
pub async fn stop_container(d: &impl AsRef<Client>, id: &str, timeout: i64) {
    d.as_ref()
        .runtime()
        .stop_container(StopContainerRequest {
            container_id: id.into(),
            timeout,
        })
        .await
        .expect("StopContainer");
}

/// Removes the container.
pub async fn remove_container(d: &impl AsRef<Client>, id: &str) {
    d.as_ref()
        .runtime()
        .remove_container(RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .expect("RemoveContainer");
}

/// The CRI log of container `name` of a pod logging under [`log_dir`].
pub fn read_log(d: &Daemon, name: &str) -> String {
    let path = log_dir(d).join(format!("{name}.log"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// ContainerStatus of the container.
pub async fn try_container_status(
    d: &impl AsRef<Client>,
    id: &str,
    verbose: bool,
) -> Result<ContainerStatusResponse, Status> {
    let request = ContainerStatusRequest {
        container_id: id.into(),
        verbose,
    };
    let response = d.as_ref().runtime().container_status(request).await?;
    Ok(response.into_inner())
}

/// The container's status.
pub async fn container_status(d: &impl AsRef<Client>, id: &str) -> ContainerStatus {
    let response = try_container_status(d, id, false).await;
    response.expect("ContainerStatus").status.expect("a status")
}

/// ContainerStatus that must fail (an unknown or removed container): returns the error.
pub async fn container_status_refused(d: &impl AsRef<Client>, id: &str) -> Status {
    let result = try_container_status(d, id, false).await;
    result.expect_err("ContainerStatus must fail")
}

/// The host PID of the container's process, as ContainerStatus (verbose) reports it.
pub async fn container_pid(d: &impl AsRef<Client>, id: &str) -> i64 {
    let response = try_container_status(d, id, true).await;
    info_pid(&response.expect("ContainerStatus").info)
}

/// PodSandboxStatus of the pod.
pub async fn try_pod_status(
    d: &impl AsRef<Client>,
    pod_id: &str,
    verbose: bool,
) -> Result<PodSandboxStatusResponse, Status> {
    let request = PodSandboxStatusRequest {
        pod_sandbox_id: pod_id.into(),
        verbose,
    };
    let response = d.as_ref().runtime().pod_sandbox_status(request).await?;
    Ok(response.into_inner())
}

/// The pod's status.
pub async fn pod_status(d: &impl AsRef<Client>, pod_id: &str) -> PodSandboxStatus {
    let response = try_pod_status(d, pod_id, false).await;
    response
        .expect("PodSandboxStatus")
        .status
        .expect("a status")
}

/// The pod's IP address (empty for a pod on the node's network).
pub async fn pod_ip(d: &impl AsRef<Client>, pod_id: &str) -> String {
    let network = pod_status(d, pod_id).await.network;
    network.map(|n| n.ip).unwrap_or_default()
}

/// The `pid` of a verbose status's `info` JSON.
fn info_pid(info: &std::collections::HashMap<String, String>) -> i64 {
    let v: serde_json::Value = serde_json::from_str(&info["info"]).expect("info JSON");
    v["pid"].as_i64().expect("a pid")
}

/// The pods ListPodSandbox shows.
pub async fn list_pods(d: &impl AsRef<Client>) -> Vec<PodSandbox> {
    d.as_ref()
        .runtime()
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
}

/// The containers ListContainers shows.
pub async fn list_containers(d: &impl AsRef<Client>) -> Vec<Container> {
    list_containers_where(d, None).await
}

/// The containers ListContainers shows for `filter`.
pub async fn list_containers_where(
    d: &impl AsRef<Client>,
    filter: Option<ContainerFilter>,
) -> Vec<Container> {
    let request = ListContainersRequest { filter };
    let response = d.as_ref().runtime().list_containers(request).await;
    response.expect("ListContainers").into_inner().containers
}

/// The runtime's Status (not verbose).
pub async fn runtime_status(d: &impl AsRef<Client>) -> StatusResponse {
    d.as_ref()
        .runtime()
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner()
}

/// The default runtime handler, as Status reports it.
pub async fn default_handler(d: &impl AsRef<Client>) -> RuntimeHandler {
    let handlers = runtime_status(d).await.runtime_handlers;
    let default = handlers.into_iter().find(|h| h.name.is_empty());
    default.expect("the default handler")
}

/// Polls `done` every 50 ms until it holds; panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 10 s) for the container to exit; returns its status.
pub async fn wait_exited(d: &impl AsRef<Client>, id: &str) -> ContainerStatus {
    for _ in 0..200 {
        let status = container_status(d, id).await;
        if status.state == ContainerState::ContainerExited as i32 {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("container {id} did not exit within 10 s");
}

/// Stops and removes the pod (and so its containers).
pub async fn remove_pod(d: &impl AsRef<Client>, pod_id: &str) {
    d.as_ref()
        .runtime()
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .expect("StopPodSandbox");
    d.as_ref()
        .runtime()
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .expect("RemovePodSandbox");
}

/// The PID of `pod_id`'s monitor, as PodSandboxStatus (verbose) reports it.
pub async fn monitor_pid(d: &impl AsRef<Client>, pod_id: &str) -> i32 {
    let response = try_pod_status(d, pod_id, true).await;
    let pid = info_pid(&response.expect("PodSandboxStatus").info) as i32;
    assert!(pid > 1, "the monitor's pid: {pid}");
    pid
}

/// SIGKILLs `pod_id`'s monitor, by the PID the daemon reports for it; returns that PID.
pub async fn kill_monitor(d: &impl AsRef<Client>, pod_id: &str) -> i32 {
    let pid = monitor_pid(d, pod_id).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the monitor");
    pid
}

/// Runs `cmd` in the container with ExecSync; returns its stdout. The command must succeed.
pub async fn exec_ok(d: &impl AsRef<Client>, id: &str, cmd: &[&str]) -> String {
    let (stdout, stderr, code) = exec_sync(d, id, cmd).await;
    assert_eq!(code, 0, "{cmd:?}: {stdout} {stderr}");
    stdout
}

/// Runs `cmd` in the container with ExecSync; returns (stdout, stderr, exit code).
pub async fn exec_sync(d: &impl AsRef<Client>, id: &str, cmd: &[&str]) -> (String, String, i32) {
    let r = d
        .as_ref()
        .runtime()
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e:?}"))
        .into_inner();
    (
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
        r.exit_code,
    )
}

/// The streaming URL of an `Attach` to container `id` that asks for the streams of `opts`.
pub async fn attach_url(d: &impl AsRef<Client>, id: &str, opts: ExecOptions) -> String {
    d.as_ref()
        .runtime()
        .attach(AttachRequest {
            container_id: id.into(),
            stdin: opts.stdin,
            stdout: opts.stdout,
            stderr: opts.stderr,
            tty: opts.tty,
        })
        .await
        .expect("Attach")
        .into_inner()
        .url
}

/// The streaming URL of an `Exec` of `cmd` in container `id` that asks for the streams of
/// `opts`.
pub async fn exec_url(d: &impl AsRef<Client>, id: &str, cmd: &[&str], opts: ExecOptions) -> String {
    d.as_ref()
        .runtime()
        .exec(ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: opts.tty,
            stdin: opts.stdin,
            stdout: opts.stdout,
            stderr: opts.stderr,
        })
        .await
        .expect("Exec")
        .into_inner()
        .url
}

/// The names in `dir`, sorted; none if it does not exist.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// What the daemon's image store holds: blobs (complete and in progress) and snapshots
/// (complete, in progress, in the trash).
pub fn stored(d: &Daemon) -> (Vec<String>, Vec<String>) {
    let root = d.dir().root();
    let mut blobs = dir_names(&root.join("content/blobs/sha256"));
    blobs.extend(dir_names(&root.join("content/ingest")));
    let mut snaps: Vec<String> = dir_names(&root.join("snapshots"))
        .into_iter()
        .filter(|n| n != ".trash")
        .collect();
    snaps.extend(dir_names(&root.join("snapshots/.trash")));
    (blobs, snaps)
}
