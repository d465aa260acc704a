//! Pods and containers through CRI (issue 5), as kubelet drives them: a busybox pod gets an
//! address, its container writes the CRI log, ExecSync answers, stop and remove are
//! idempotent, and nothing of the pod is left afterwards (the harness checks mounts,
//! processes and links at the end of the run).
//!
//! Run through the harness: `scripts/test.sh` (as root).

use berth_e2e::fixtures::{container_config, pod_config, wait_exited};
use berth_e2e::{Daemon, images};
use k8s_cri::v1::*;
use tonic::Code;

#[tokio::test]
async fn a_pod_runs_logs_execs_and_goes_away() {
    let d = Daemon::start().await.expect("daemon");
    berth_e2e::fixtures::pull(&d, images::BUSYBOX).await;
    let log_dir = d.dir().path().join("pod-logs");
    let config = pod_config("lifecycle", &log_dir);

    let pod_id = d
        .runtime()
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            ..Default::default()
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let pod = d
        .runtime()
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .expect("a pod status");
    assert_eq!(pod.state, PodSandboxState::SandboxReady as i32);
    let ip = pod.network.expect("pod network").ip;
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "pod IP {ip:?}");

    // A second pod with the same metadata is refused, as containerd's name reservation does.
    let again = d
        .runtime()
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            ..Default::default()
        })
        .await
        .expect_err("same metadata twice");
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");

    // A short-lived container: its output lands in the CRI log, its exit code is kept.
    let script = "echo \"$GREETING\"; echo oops >&2; hostname; printf partial; exit 3";
    let short = d
        .runtime()
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config("short", &["sh", "-c", script])),
            sandbox_config: Some(config.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    assert_eq!(
        berth_e2e::fixtures::container_status(&d, &short)
            .await
            .state,
        ContainerState::ContainerCreated as i32
    );
    d.runtime()
        .start_container(StartContainerRequest {
            container_id: short.clone(),
        })
        .await
        .expect("StartContainer");
    let status = wait_exited(&d, &short).await;
    assert_eq!(status.exit_code, 3);
    assert_eq!(status.reason, "Error");

    let log = std::fs::read_to_string(log_dir.join("short.log")).expect("container log");
    let lines: Vec<(&str, &str, &str)> = log
        .lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let _time = parts.next().unwrap();
            (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap_or(""),
            )
        })
        .collect();
    assert!(
        lines.contains(&("stdout", "F", "hello from berth")),
        "{log}"
    );
    assert!(lines.contains(&("stderr", "F", "oops")), "{log}");
    assert!(lines.contains(&("stdout", "F", "lifecycle-host")), "{log}");
    assert!(lines.contains(&("stdout", "P", "partial")), "{log}");

    // A long-running container answers ExecSync in its own namespaces.
    let long = d
        .runtime()
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config("long", &["sleep", "3600"])),
            sandbox_config: Some(config.clone()),
        })
        .await
        .expect("CreateContainer long")
        .into_inner()
        .container_id;
    d.runtime()
        .start_container(StartContainerRequest {
            container_id: long.clone(),
        })
        .await
        .expect("StartContainer long");
    let exec = d
        .runtime()
        .exec_sync(ExecSyncRequest {
            container_id: long.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "cat /etc/hostname; echo err >&2; exit 4".into(),
            ],
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "lifecycle-host\n");
    assert_eq!(String::from_utf8_lossy(&exec.stderr), "err\n");
    assert_eq!(exec.exit_code, 4);

    let listed = d
        .runtime()
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        vec![long.as_str()]
    );

    // Stop with a deadline, then remove: both twice, and on unknown ids, succeed.
    d.runtime()
        .stop_container(StopContainerRequest {
            container_id: long.clone(),
            timeout: 2,
        })
        .await
        .expect("StopContainer");
    assert_eq!(
        berth_e2e::fixtures::container_status(&d, &long).await.state,
        ContainerState::ContainerExited as i32
    );
    for _ in 0..2 {
        d.runtime()
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            })
            .await
            .expect("StopPodSandbox");
        d.runtime()
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            })
            .await
            .expect("RemovePodSandbox");
    }
    d.runtime()
        .remove_container(RemoveContainerRequest {
            container_id: "no-such-container".into(),
        })
        .await
        .expect("RemoveContainer of an unknown id");
    let pods = d
        .runtime()
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(pods.is_empty(), "pods left: {pods:?}");
    let status = d
        .runtime()
        .container_status(ContainerStatusRequest {
            container_id: short.clone(),
            verbose: false,
        })
        .await
        .expect_err("a removed container");
    assert_eq!(status.code(), Code::NotFound);
    let pod_dir = d.dir().state().join("pods").join(&pod_id);
    assert!(!pod_dir.exists(), "{} is left", pod_dir.display());
}

#[tokio::test]
async fn bad_requests_get_the_right_codes() {
    let d = Daemon::start().await.expect("daemon");
    let err = d
        .runtime()
        .run_pod_sandbox(RunPodSandboxRequest::default())
        .await
        .expect_err("a pod without config");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let log_dir = d.dir().path().join("pod-logs");
    let config = pod_config("no-image", &log_dir);
    let err = d
        .runtime()
        .create_container(CreateContainerRequest {
            pod_sandbox_id: "no-such-pod".into(),
            config: Some(container_config("c", &["true"])),
            sandbox_config: Some(config),
        })
        .await
        .expect_err("a container for an unknown pod");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}
