//! The pods and containers tests make over and over: configs as kubelet sends them, and the
//! calls that pull, run, start and wait, each panicking with the call's error (these are
//! test steps, not the thing under test).

use std::path::Path;
use std::time::Duration;

use k8s_cri::v1::*;

use crate::{Daemon, images};

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

/// Pulls `image`.
pub async fn pull(d: &Daemon, image: &str) {
    d.images()
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("pull {image}: {e:?}"));
}

/// Runs a pod; returns its id.
pub async fn run_pod(d: &Daemon, config: &PodSandboxConfig) -> String {
    d.runtime()
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            ..Default::default()
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id
}

/// Creates and starts a container in the pod; returns its id.
pub async fn start_container(
    d: &Daemon,
    pod_id: &str,
    pod: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    let id = d
        .runtime()
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    d.runtime()
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("StartContainer");
    id
}

/// The container's status.
pub async fn container_status(d: &Daemon, id: &str) -> ContainerStatus {
    d.runtime()
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("a status")
}

/// Waits (up to 10 s) for the container to exit; returns its status.
pub async fn wait_exited(d: &Daemon, id: &str) -> ContainerStatus {
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
pub async fn remove_pod(d: &Daemon, pod_id: &str) {
    d.runtime()
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .expect("StopPodSandbox");
    d.runtime()
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .expect("RemovePodSandbox");
}

/// The PID of `pod_id`'s monitor, as PodSandboxStatus (verbose) reports it.
pub async fn monitor_pid(d: &Daemon, pod_id: &str) -> i32 {
    let info = d
        .runtime()
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .info;
    let v: serde_json::Value = serde_json::from_str(&info["info"]).expect("info JSON");
    let pid = v["pid"].as_i64().expect("the monitor's pid") as i32;
    assert!(pid > 1, "{v}");
    pid
}

/// SIGKILLs `pod_id`'s monitor, by the PID the daemon reports for it; returns that PID.
pub async fn kill_monitor(d: &Daemon, pod_id: &str) -> i32 {
    let pid = monitor_pid(d, pod_id).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the monitor");
    pid
}

/// Runs `cmd` in the container with ExecSync; returns (stdout, stderr, exit code).
pub async fn exec_sync(d: &Daemon, id: &str, cmd: &[&str]) -> (String, String, i32) {
    let r = d
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
