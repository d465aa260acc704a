//! Faults: a pod monitor that dies, a disk that fills during a pull, a container
//! that floods its log or forks thousands of processes, and clients that vanish mid-call.
//! Each asserts the clear error a user sees and that nothing was lost or left behind (the
//! harness checks processes, mounts, namespaces, links and cgroups at the end).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_e2e::fixtures::{
    Tmpfs, busybox_daemon, busybox_pod, container_config, container_status, daemon_in, exec_sync,
    image_spec, kill_monitor, list_pods, log_dir, pod_config, pod_status, pull, remove_pod,
    run_pod, run_pod_refused, start, start_container, wait_until,
};
use berth_e2e::{Daemon, images};
use k8s_cri::v1::*;
use tonic::Code;

#[tokio::test]
async fn a_dead_monitor_makes_its_pod_not_ready_and_removal_still_cleans_up() {
    let (d, config, pod_id) = busybox_pod("orphaned").await;
    let c = start(&d, &pod_id, &config, "c", &["sleep", "3600"]).await;
    kill_monitor(&d, &pod_id).await;

    let not_ready = PodSandboxState::SandboxNotready as i32;
    wait_until(
        "the pod still looks ready",
        Duration::from_secs(10),
        || async { pod_status(&d, &pod_id).await.state == not_ready },
    )
    .await;
    let s = container_status(&d, &c).await;
    assert_eq!(s.state, ContainerState::ContainerExited as i32);
    assert!(!s.reason.is_empty(), "an exit reason is given: {s:?}");
    remove_pod(&d, &pod_id).await;
    let pods = list_pods(&d).await;
    assert!(pods.is_empty(), "{pods:?}");
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn a_disk_that_fills_during_a_pull_gives_a_clear_error_and_no_partial_data() {
    let dir = berth_e2e::DaemonDir::new().expect("dir");
    let root = dir.root();
    // Room for the metadata database and a blob or two, not for the whole image unpacked.
    let disk = Tmpfs::mount(&root, "size=1200k,mode=0700");
    let mut d = Daemon::builder().dir(dir).start().await.expect("daemon");
    let err = d
        .images()
        .pull_image(PullImageRequest {
            image: image_spec(images::BUSYBOX),
            ..Default::default()
        })
        .await
        .expect_err("a pull onto a full disk");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("No space left on device"),
        "{}",
        err.message()
    );
    // No partial blob, ingest file or snapshot survives the failure.
    let blobs = files_under(&root.join("content"));
    let info = images::info(images::BUSYBOX).unwrap();
    for f in &blobs {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let known = info
            .layers
            .iter()
            .map(|l| l.digest.clone())
            .chain([info.config_digest.clone(), info.manifest_digest.clone()])
            .any(|dg| dg.ends_with(&name));
        assert!(known, "unexpected file {}", f.display());
        let data = std::fs::read(f).unwrap();
        assert!(
            berth_e2e::oci::digest(&data).ends_with(&name),
            "{} is a partial blob",
            f.display()
        );
    }
    let snapshots: Vec<_> = std::fs::read_dir(root.join("snapshots"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        snapshots
            .iter()
            .all(|n| n.to_string_lossy().starts_with('.')),
        "snapshots left: {snapshots:?}"
    );
    let listed = d
        .images()
        .list_images(ListImagesRequest::default())
        .await
        .expect("ListImages")
        .into_inner()
        .images;
    assert!(listed.is_empty(), "{listed:?}");
    d.stop().await.expect("stop");
    drop(disk);
}

#[tokio::test]
async fn a_log_flood_and_a_fork_storm_neither_stall_the_node_nor_leak() {
    let (d, config, pod_id) = busybox_pod("storm").await;
    let flood = start(&d, &pod_id, &config, "flood", &["yes", "y"]).await;
    let storm = "i=0; while [ $i -lt 2000 ]; do sleep 3600 & i=$((i+1)); done; wait";
    let forks = start(&d, &pod_id, &config, "forks", &["sh", "-c", storm]).await;
    // The node keeps answering while both run: at least ten execs, and on until the storm
    // has passed a thousand processes (how fast it forks depends on the machine's load).
    let mut worst = Duration::ZERO;
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 0.. {
        let t = Instant::now();
        let (out, _, code) = exec_sync(&d, &forks, &["echo", "still here"]).await;
        assert_eq!((out.as_str(), code), ("still here\n", 0));
        worst = worst.max(t.elapsed());
        let (ps, _, _) = exec_sync(&d, &forks, &["sh", "-c", "ls -d /proc/[0-9]* | wc -l"]).await;
        n = ps.trim().parse().unwrap_or(0);
        if (round >= 9 && n > 1000) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(worst < Duration::from_secs(5), "an exec took {worst:?}");
    assert!(n > 1000, "the storm ran: {n} processes");
    let log = d.dir().path().join("pod-logs/flood.log");
    let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    assert!(size > 1 << 20, "the flood reached the log: {size} bytes");
    assert_eq!(
        container_status(&d, &flood).await.state,
        ContainerState::ContainerRunning as i32
    );
    // Stopping the pod ends both, quickly, and removal leaves nothing.
    let t = Instant::now();
    remove_pod(&d, &pod_id).await;
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "teardown took {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn clients_that_vanish_mid_call_leave_consistent_state() {
    let d = Daemon::start().await.expect("daemon");
    // A pull abandoned after a few milliseconds, many times: each either finished or left
    // nothing, and a normal pull afterwards works.
    for delay_ms in [1u64, 5, 20, 50] {
        let mut images_client = d.images();
        let _ = tokio::time::timeout(
            Duration::from_millis(delay_ms),
            images_client.pull_image(PullImageRequest {
                image: image_spec(images::BUSYBOX),
                ..Default::default()
            }),
        )
        .await;
        let _ = d
            .images()
            .remove_image(RemoveImageRequest {
                image: image_spec(images::BUSYBOX),
            })
            .await;
    }
    pull(&d, images::BUSYBOX).await;
    // RunPodSandbox abandoned half-way: the pod is either listed whole or absent.
    for (i, delay_ms) in [2u64, 10, 30].into_iter().enumerate() {
        let config = pod_config(&format!("vanish{i}"), &log_dir(&d));
        let mut rt = d.runtime();
        let _ = tokio::time::timeout(
            Duration::from_millis(delay_ms),
            rt.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                ..Default::default()
            }),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for pod in &list_pods(&d).await {
        let s = pod_status(&d, &pod.id).await;
        assert_eq!(s.state, PodSandboxState::SandboxReady as i32);
        assert!(!s.network.map(|n| n.ip).unwrap_or_default().is_empty());
        remove_pod(&d, &pod.id).await;
    }
}

#[tokio::test]
async fn fifty_clients_at_once_all_finish() {
    let d = busybox_daemon().await;
    let log_dir = log_dir(&d);
    let started = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            // Each client its own connection, as separate kubelets' calls would be.
            let socket = d.socket().to_path_buf();
            let log_dir = log_dir.clone();
            tokio::spawn(async move {
                let client = berth_e2e::Client::connect(&socket).await.expect("connect");
                let config = pod_config(&format!("many{i}"), &log_dir);
                let pod_id = run_pod(&client, &config).await;
                let c = container_config("c", &["sleep", "3600"]);
                let cid = start_container(&client, &pod_id, &config, c).await;
                let (out, _, _) = exec_sync(&client, &cid, &["echo", &i.to_string()]).await;
                assert_eq!(out, format!("{i}\n"));
                remove_pod(&client, &pod_id).await;
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a client's lifecycle");
    }
    let took = started.elapsed();
    // Generous for a loaded 2-core machine: a deadlock or a starved client would hang.
    assert!(
        took < Duration::from_secs(180),
        "50 lifecycles took {took:?}"
    );
    eprintln!("50 concurrent pod lifecycles in {took:?}");
}

/// A CNI setup whose only plugin is `script` (a shell script run as the plugin binary).
async fn daemon_with_plugin(script: &str, timeout_seconds: u64) -> (Daemon, std::path::PathBuf) {
    let dir = berth_e2e::DaemonDir::new().expect("dir");
    let conf_dir = dir.path().join("net.d");
    let bin_dir = dir.path().join("cni-bin");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::create_dir_all(&bin_dir).unwrap();
    let plugin = bin_dir.join("faulty");
    std::fs::write(&plugin, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0", "name": "faulty",
        "plugins": [{"type": "faulty"}]
    });
    std::fs::write(conf_dir.join("10-faulty.conflist"), conflist.to_string()).unwrap();
    let config = format!(
        "[network]\nmode = \"cni\"\ncni_conf_dir = \"{}\"\ncni_bin_dirs = [\"{}\"]\ncni_plugin_timeout_seconds = {timeout_seconds}\n",
        conf_dir.display(),
        bin_dir.display()
    );
    let d = daemon_in(dir, &config).await;
    (d, plugin)
}

async fn no_pods_left(d: &Daemon) {
    let pods = list_pods(d).await;
    assert!(pods.is_empty(), "a failed RunPodSandbox left {pods:?}");
    let dirs: Vec<_> = std::fs::read_dir(d.dir().state().join("pods"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(dirs.is_empty(), "pod run dirs left: {dirs:?}");
}

#[tokio::test]
async fn a_failing_cni_plugin_surfaces_its_message_and_leaves_nothing() {
    // A CNI error on stdout, as the spec says, and exit 1 for ADD; DEL succeeds.
    let script = r#"if [ "$CNI_COMMAND" = ADD ]; then
  echo '{"cniVersion":"1.0.0","code":11,"msg":"no addresses left in the test pool","details":"pool exhausted"}'
  exit 1
fi
exit 0"#;
    let (d, _plugin) = daemon_with_plugin(script, 10).await;
    let config = pod_config("cnifail", &log_dir(&d));
    let err = run_pod_refused(&d, &config).await;
    assert!(
        err.message().contains("no addresses left in the test pool"),
        "{}",
        err.message()
    );
    no_pods_left(&d).await;
}

#[tokio::test]
async fn a_hanging_cni_plugin_is_cut_off_by_its_timeout() {
    let script = r#"if [ "$CNI_COMMAND" = ADD ]; then exec sleep 600; fi
exit 0"#;
    let (d, _plugin) = daemon_with_plugin(script, 2).await;
    let config = pod_config("cnihang", &log_dir(&d));
    let started = Instant::now();
    let err = run_pod_refused(&d, &config).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "RunPodSandbox took {took:?}"
    );
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    no_pods_left(&d).await;
}
