//! Pods and containers through CRI, as kubelet drives them: a busybox pod gets an
//! address, its container writes the CRI log, ExecSync answers, stop and remove are
//! idempotent, and nothing of the pod is left afterwards (the harness checks mounts,
//! processes and links at the end of the run).
//!
//! Run through the harness: `scripts/test.sh` (as root).
use berth_e2e::client::connect_unix;
use berth_e2e::fixtures::{
    bind, busybox_daemon, busybox_pod, container_config, container_status,
    container_status_refused, create_container, exec_sync, host_dir, image_volume, kill_monitor,
    list_containers_where, list_pods, log_dir, monitor_pid, new_pod, pod_config, pod_ip,
    pod_status, pull, read_log, remove_container, remove_pod, run_pod_refused, start,
    start_container, start_created, stop_container, try_container_status, try_pod_status,
    wait_exited,
};
use berth_e2e::{Daemon, images};
use k8s_cri::v1::*;
use tonic::Code;

#[tokio::test]
async fn a_pod_runs_logs_execs_and_goes_away() {
    let (d, config, pod_id) = busybox_pod("lifecycle").await;
    let pod = pod_status(&d, &pod_id).await;
    assert_eq!(pod.state, PodSandboxState::SandboxReady as i32);
    let ip = pod.network.expect("pod network").ip;
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "pod IP {ip:?}");

    // A second pod with the same metadata is refused, as containerd's name reservation does.
    let again = run_pod_refused(&d, &config).await;
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");

    // A short-lived container: its output lands in the CRI log, its exit code is kept.
    let script = "echo \"$GREETING\"; echo oops >&2; hostname; printf partial; exit 3";
    let c = container_config("short", &["sh", "-c", script]);
    let short = create_container(&d, &pod_id, &config, c).await;
    assert_eq!(
        container_status(&d, &short).await.state,
        ContainerState::ContainerCreated as i32
    );
    start_created(&d, &short).await;
    let status = wait_exited(&d, &short).await;
    assert_eq!(status.exit_code, 3);
    assert_eq!(status.reason, "Error");

    let log = read_log(&d, "short");
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
    let long = start(&d, &pod_id, &config, "long", &["sleep", "3600"]).await;
    let script = "cat /etc/hostname; echo err >&2; exit 4";
    let exec = exec_sync(&d, &long, &["sh", "-c", script]).await;
    assert_eq!(exec, ("lifecycle-host\n".into(), "err\n".into(), 4));

    let running = ContainerStateValue {
        state: ContainerState::ContainerRunning as i32,
    };
    let filter = ContainerFilter {
        state: Some(running),
        ..Default::default()
    };
    let listed = list_containers_where(&d, Some(filter)).await;
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        vec![long.as_str()]
    );

    // Stop with a deadline, then remove: both twice, and on unknown ids, succeed.
    stop_container(&d, &long, 2).await;
    assert_eq!(
        container_status(&d, &long).await.state,
        ContainerState::ContainerExited as i32
    );
    for _ in 0..2 {
        remove_pod(&d, &pod_id).await;
    }
    remove_container(&d, "no-such-container").await;
    let pods = list_pods(&d).await;
    assert!(pods.is_empty(), "pods left: {pods:?}");
    let status = container_status_refused(&d, &short).await;
    assert_eq!(status.code(), Code::NotFound);
    let pod_dir = d.dir().state().join("pods").join(&pod_id);
    assert!(!pod_dir.exists(), "{} is left", pod_dir.display());
}

#[tokio::test]
async fn log_rotation_loses_no_line_and_later_lines_reach_the_new_file() {
    let (d, config, pod_id) = busybox_pod("rotate").await;
    // Numbered lines every 10 ms, so that some are written around the reopen.
    let script = "i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); sleep 0.01; done; \
                  exec sleep 3600";
    let c = start(&d, &pod_id, &config, "writer", &["sh", "-c", script]).await;
    let (log, rotated) = (
        log_dir(&d).join("writer.log"),
        log_dir(&d).join("writer.log.1"),
    );
    let lines_in =
        |p: &std::path::Path| stdout_lines(&std::fs::read_to_string(p).unwrap_or_default());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while lines_in(&log).len() < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never logged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // kubelet's rotation: move the file aside, then ask for a new one.
    std::fs::rename(&log, &rotated).expect("rotate");
    d.runtime()
        .reopen_container_log(ReopenContainerLogRequest {
            container_id: c.clone(),
        })
        .await
        .expect("ReopenContainerLog");
    assert!(log.is_file(), "no new log file once the call answered");
    while !lines_in(&log).contains(&"line 299".to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "later lines never reached the new file: {:?}",
            lines_in(&log)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (before, after) = (lines_in(&rotated), lines_in(&log));
    assert!(before.len() >= 20, "{before:?}");
    let all: Vec<String> = before.into_iter().chain(after).collect();
    let want: Vec<String> = (0..300).map(|i| format!("line {i}")).collect();
    assert_eq!(all, want, "every line once, in order, across the two files");

    // A link planted where the new log goes is refused, not followed.
    let target = log_dir(&d).join("elsewhere");
    std::fs::remove_file(&log).expect("remove the log");
    std::os::unix::fs::symlink(&target, &log).expect("plant a link");
    let refused = d
        .runtime()
        .reopen_container_log(ReopenContainerLogRequest {
            container_id: c.clone(),
        })
        .await
        .expect_err("a link at the log path is refused");
    assert!(refused.message().contains("log"), "{refused:?}");
    assert!(!target.exists(), "the link was followed");
    remove_pod(&d, &pod_id).await;
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

    let config = pod_config("no-image", &log_dir(&d));
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

/// Lines of a CRI log file that are complete stdout lines.
fn stdout_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(4, ' ');
            let _time = parts.next()?;
            (parts.next()? == "stdout" && parts.next()? == "F")
                .then(|| parts.next().unwrap_or("").to_string())
        })
        .collect()
}

#[tokio::test]
async fn pods_outlive_a_daemon_restart_and_exits_meanwhile_are_kept() {
    for crash in [false, true] {
        let (mut d, config, pod_id) = busybox_pod(if crash { "crash" } else { "restart" }).await;
        let ticks = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done";
        let ticker = start(&d, &pod_id, &config, "ticker", &["sh", "-c", ticks]).await;
        let quits = "sleep 1; echo bye; exit 7";
        let quitter = start(&d, &pod_id, &config, "quitter", &["sh", "-c", quits]).await;
        let ip_before = pod_ip(&d, &pod_id).await;

        // The daemon goes away (cleanly or by SIGKILL); the quitter exits while it is gone.
        let down_at = std::time::SystemTime::now();
        if crash {
            d.kill().await.expect("kill the daemon");
        } else {
            d.stop().await.expect("stop the daemon");
        }
        let ticks_down = stdout_lines(&read_log(&d, "ticker")).len();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        d.start_again().await.expect("start again");
        d.wait_runtime_ready(std::time::Duration::from_secs(30))
            .await
            .expect("runtime ready");

        let t = container_status(&d, &ticker).await;
        assert_eq!(
            t.state,
            ContainerState::ContainerRunning as i32,
            "crash={crash}"
        );
        let q = container_status(&d, &quitter).await;
        assert_eq!(
            q.state,
            ContainerState::ContainerExited as i32,
            "crash={crash}"
        );
        assert_eq!(q.exit_code, 7, "crash={crash}");
        assert_eq!(q.reason, "Error", "crash={crash}");
        let down_ns = down_at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert!(
            q.finished_at > down_ns,
            "the exit time is the real one, not the restart's"
        );
        assert_eq!(
            stdout_lines(&read_log(&d, "quitter")),
            vec!["bye".to_string()]
        );
        assert_eq!(pod_ip(&d, &pod_id).await, ip_before, "crash={crash}");

        // The running container still answers and still logs.
        let (out, _, code) = exec_sync(&d, &ticker, &["sh", "-c", "echo alive; exit 2"]).await;
        assert_eq!((out.as_str(), code), ("alive\n", 2));
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let ticks = stdout_lines(&read_log(&d, "ticker"));
        assert!(
            ticks.len() > ticks_down + 5,
            "the log goes on: {} then {}",
            ticks_down,
            ticks.len()
        );
        for (i, line) in ticks.iter().enumerate() {
            assert_eq!(line, &format!("tick {i}"), "no line lost or doubled");
        }
        remove_pod(&d, &pod_id).await;
    }
}

#[tokio::test]
async fn stop_kills_at_the_deadline_and_exec_sync_times_out() {
    let (d, config, pod_id) = busybox_pod("deadline").await;
    let script = "trap 'echo ignored TERM' TERM; while true; do sleep 0.1; done";
    let stubborn = start(&d, &pod_id, &config, "stubborn", &["sh", "-c", script]).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let err = d
        .runtime()
        .exec_sync(ExecSyncRequest {
            container_id: stubborn.clone(),
            cmd: vec!["sleep".into(), "30".into()],
            timeout: 1,
        })
        .await
        .expect_err("an exec past its timeout");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");

    let started = std::time::Instant::now();
    stop_container(&d, &stubborn, 2).await;
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(1900),
        "killed before the deadline: {took:?}"
    );
    assert!(
        took < std::time::Duration::from_secs(10),
        "stop took {took:?}"
    );
    let s = container_status(&d, &stubborn).await;
    assert_eq!(s.state, ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 137, "SIGKILL");
    let log = read_log(&d, "stubborn");
    assert!(log.contains("ignored TERM"), "SIGTERM came first: {log}");
    remove_pod(&d, &pod_id).await;
}

#[tokio::test]
async fn a_container_sees_its_config_mounts_and_image_volumes() {
    let d = busybox_daemon().await;
    pull(&d, images::CONFIGURED).await;
    let (host_ro, host_rw) = (host_dir(&d, "host-ro"), host_dir(&d, "host-rw"));
    std::fs::write(host_ro.join("data"), "from the host\n").unwrap();
    let (config, pod_id) = new_pod(&d, "sees").await;
    let mut c = container_config("main", &["sleep", "3600"]);
    c.working_dir = "/tmp/work".into();
    let read_only = Mount {
        readonly: true,
        ..bind("/ro", &host_ro)
    };
    let image_volume = image_volume("/imgvol", images::CONFIGURED);
    c.mounts = vec![read_only, bind("/rw", &host_rw), image_volume];
    let id = start_container(&d, &pod_id, &config, c).await;

    let script = "hostname; echo $GREETING; pwd; id -u";
    let (out, _, _) = exec_sync(&d, &id, &["sh", "-c", script]).await;
    assert_eq!(out, "sees-host\nhello from berth\n/tmp/work\n0\n");
    let (hosts, _, _) = exec_sync(&d, &id, &["cat", "/etc/hosts"]).await;
    assert!(hosts.contains("localhost"), "{hosts}");

    let (out, _, code) = exec_sync(&d, &id, &["cat", "/ro/data"]).await;
    assert_eq!((out.as_str(), code), ("from the host\n", 0));
    let (_, err, code) = exec_sync(&d, &id, &["touch", "/ro/new"]).await;
    assert_ne!(code, 0, "a read-only mount took a write");
    assert!(err.contains("Read-only file system"), "{err}");
    let (_, _, code) = exec_sync(&d, &id, &["sh", "-c", "echo hi > /rw/new"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_to_string(host_rw.join("new")).unwrap(),
        "hi\n"
    );

    // The image volume is the other image's rootfs, read-only.
    let (path, content) = images::configured::WORKDIR_FILE;
    let (out, _, code) = exec_sync(&d, &id, &["cat", &format!("/imgvol{path}")]).await;
    assert_eq!((out.as_str(), code), (content, 0));
    let (_, _, code) = exec_sync(&d, &id, &["touch", "/imgvol/new"]).await;
    assert_ne!(code, 0, "an image volume took a write");
    remove_pod(&d, &pod_id).await;
}

/// What one read right after a restart showed that was not true.
fn untrue_answers(
    pods: &[PodSandbox],
    containers: &[Container],
    dead_pods: &[String],
    dead_containers: &[String],
    removed_pods: &[String],
    removed_containers: &[String],
) -> Vec<String> {
    let mut wrong = untrue_in(
        ("ListPodSandbox", "pod", "READY"),
        pods.iter()
            .map(|p| (&p.id, p.state == PodSandboxState::SandboxReady as i32)),
        dead_pods,
        removed_pods,
    );
    wrong.extend(untrue_in(
        ("ListContainers", "container", "RUNNING"),
        containers
            .iter()
            .map(|c| (&c.id, c.state == ContainerState::ContainerRunning as i32)),
        dead_containers,
        removed_containers,
    ));
    wrong
}

/// The untrue entries of one list call `(call, kind, live)`: a `kind` whose monitor was
/// killed shown `live`, or one removed shown at all. `items` are (id, shown live).
fn untrue_in<'a>(
    (call, kind, live): (&str, &str, &str),
    items: impl Iterator<Item = (&'a String, bool)>,
    dead: &[String],
    removed: &[String],
) -> Vec<String> {
    let mut wrong = Vec::new();
    for (id, shown_live) in items {
        if dead.contains(id) && shown_live {
            wrong.push(format!("{call} shows {kind} {id} (monitor killed) {live}"));
        }
        if removed.contains(id) {
            wrong.push(format!("{call} shows removed {kind} {id}"));
        }
    }
    wrong
}

/// Issue 20: reads that come the moment the socket accepts, after a SIGKILL of the daemon
/// and of some pods' monitors, wait for reconciliation instead of answering from the
/// records of before the crash: no pod whose monitor died is READY, no container of such a
/// pod RUNNING, and no container or pod removed before the crash is there.
#[tokio::test]
async fn reads_right_after_a_crash_never_show_dead_pods_ready_or_removed_objects() {
    use std::time::{Duration, Instant};

    let mut d = busybox_daemon().await;
    let (mut live_pods, mut dead_pods, mut removed_pods) = (Vec::new(), Vec::new(), Vec::new());
    let (mut live_containers, mut dead_containers, mut removed_containers) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut monitors = Vec::new();
    for i in 0..6 {
        let (config, pod) = new_pod(&d, &format!("reads-{i}")).await;
        let sleeper = start(&d, &pod, &config, "sleeper", &["sleep", "3600"]).await;
        if i % 2 == 0 {
            // A container that kubelet removed before the crash.
            let gone = start(&d, &pod, &config, "gone", &["sleep", "3600"]).await;
            stop_container(&d, &gone, 0).await;
            remove_container(&d, &gone).await;
            removed_containers.push(gone);
        }
        if i < 3 {
            monitors.push(monitor_pid(&d, &pod).await);
            dead_pods.push(pod);
            dead_containers.push(sleeper);
        } else {
            live_pods.push(pod);
            live_containers.push(sleeper);
        }
    }
    let (_, pod) = new_pod(&d, "reads-removed").await;
    remove_pod(&d, &pod).await;
    removed_pods.push(pod);

    d.kill().await.expect("kill the daemon");
    for pid in &monitors {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill a monitor");
    }
    // Gone, or a zombie whose sockets are closed.
    for pid in &monitors {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if berth_e2e::process::parse_stat(&stat).is_some_and(|(state, _)| state == 'Z') {
                break;
            }
            assert!(Instant::now() < deadline, "monitor {pid} outlived SIGKILL");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // Reads in a tight loop from the moment the new daemon's socket accepts.
    let socket = d.socket().to_path_buf();
    let (dp, dc, rp, rc) = (
        dead_pods.clone(),
        dead_containers.clone(),
        removed_pods.clone(),
        removed_containers.clone(),
    );
    let reader = tokio::spawn(async move {
        let started = Instant::now();
        let client = loop {
            if let Ok(c) = berth_e2e::Client::connect(&socket).await
                && c.runtime().version(VersionRequest::default()).await.is_ok()
            {
                break c;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "berth never served again"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let mut rt = client.runtime();
        let (mut wrong, mut answered, mut rounds_after_ready) = (Vec::new(), 0, 0);
        while rounds_after_ready < 20 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "reads never settled"
            );
            let ready = rt
                .status(StatusRequest { verbose: false })
                .await
                .expect("Status answers at once")
                .into_inner()
                .status
                .is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.r#type == "RuntimeReady" && c.status)
                });
            let pods = rt.list_pod_sandbox(ListPodSandboxRequest::default()).await;
            let containers = rt.list_containers(ListContainersRequest::default()).await;
            if let (Ok(pods), Ok(containers)) = (&pods, &containers) {
                answered += 1;
                wrong.extend(untrue_answers(
                    &pods.get_ref().items,
                    &containers.get_ref().containers,
                    &dp,
                    &dc,
                    &rp,
                    &rc,
                ));
            }
            for id in &dp {
                let r = try_pod_status(&client, id, false).await;
                if let Ok(r) = r
                    && r.status.as_ref().map(|s| s.state)
                        == Some(PodSandboxState::SandboxReady as i32)
                {
                    wrong.push(format!(
                        "PodSandboxStatus shows pod {id} (monitor killed) READY"
                    ));
                }
            }
            for id in &dc {
                let r = try_container_status(&client, id, false).await;
                if let Ok(r) = r
                    && r.status.as_ref().map(|s| s.state)
                        == Some(ContainerState::ContainerRunning as i32)
                {
                    wrong.push(format!("ContainerStatus shows container {id} RUNNING"));
                }
            }
            for id in &rc {
                let r = try_container_status(&client, id, false).await;
                match r {
                    Err(s) if s.code() == Code::NotFound => {}
                    Err(s) => panic!("ContainerStatus of a removed container: {s:?}"),
                    Ok(_) => wrong.push(format!("ContainerStatus shows removed container {id}")),
                }
            }
            for id in &rp {
                match try_pod_status(&client, id, false).await {
                    Err(s) if s.code() == Code::NotFound => {}
                    Err(s) => panic!("PodSandboxStatus of a removed pod: {s:?}"),
                    Ok(_) => wrong.push(format!("PodSandboxStatus shows removed pod {id}")),
                }
            }
            if ready {
                rounds_after_ready += 1;
            }
        }
        (wrong, answered)
    });
    d.start_again().await.expect("start again");
    let (wrong, answered) = reader.await.expect("reader");
    assert!(answered >= 20, "the reads were answered: {answered}");
    assert!(
        wrong.is_empty(),
        "{} untrue answers, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );

    // What is alive is shown alive, and what died is shown dead (the test can tell).
    d.wait_runtime_ready(Duration::from_secs(30))
        .await
        .expect("runtime ready");
    let pods = list_pods(&d).await;
    for p in &pods {
        let ready = p.state == PodSandboxState::SandboxReady as i32;
        assert_eq!(ready, live_pods.contains(&p.id), "{p:?}");
    }
    assert_eq!(pods.len(), live_pods.len() + dead_pods.len());
    for (ids, state) in [
        (&live_containers, ContainerState::ContainerRunning),
        (&dead_containers, ContainerState::ContainerExited),
    ] {
        for id in ids {
            assert_eq!(container_status(&d, id).await.state, state as i32, "{id}");
        }
    }
    for p in pods {
        remove_pod(&d, &p.id).await;
    }
}

/// The next event of `stream` within 10 s.
async fn next_event(
    stream: &mut tonic::Streaming<ContainerEventResponse>,
) -> ContainerEventResponse {
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .expect("the event stream goes on")
        .expect("the event stream is open")
}

/// The next event, which must be of `kind` for `id`.
async fn next_event_is(
    stream: &mut tonic::Streaming<ContainerEventResponse>,
    id: &str,
    kind: ContainerEventType,
) -> ContainerEventResponse {
    let ev = next_event(stream).await;
    assert_eq!(
        (ev.container_id.as_str(), ev.container_event_type),
        (id, kind as i32),
        "{ev:?}"
    );
    ev
}

/// Issue 20: GetContainerEvents tells of the pod sandbox itself as containerd does for
/// kubelet's Evented PLEG (container id = pod id, with the pod's status): created and
/// started by RunPodSandbox, stopped by StopPodSandbox after its containers, deleted by
/// RemovePodSandbox after them, and stopped when its monitor dies.
#[tokio::test]
async fn events_tell_of_the_pod_sandbox_in_order_with_its_status() {
    use ContainerEventType::*;
    let d = busybox_daemon().await;
    let mut events = events_of(d.runtime()).await;
    let (config, pod) = new_pod(&d, "evented").await;
    let c = start(&d, &pod, &config, "c", &["sleep", "3600"]).await;
    remove_pod(&d, &pod).await;

    let expected = [
        (&pod, ContainerCreatedEvent, PodSandboxState::SandboxReady),
        (&pod, ContainerStartedEvent, PodSandboxState::SandboxReady),
        (&c, ContainerCreatedEvent, PodSandboxState::SandboxReady),
        (&c, ContainerStartedEvent, PodSandboxState::SandboxReady),
        (&c, ContainerStoppedEvent, PodSandboxState::SandboxReady),
        (
            &pod,
            ContainerStoppedEvent,
            PodSandboxState::SandboxNotready,
        ),
        (&c, ContainerDeletedEvent, PodSandboxState::SandboxNotready),
        (
            &pod,
            ContainerDeletedEvent,
            PodSandboxState::SandboxNotready,
        ),
    ];
    for (i, (id, kind, pod_state)) in expected.into_iter().enumerate() {
        let ev = next_event(&mut events).await;
        let what = format!("event {i}: {ev:?}");
        assert_eq!(
            (ev.container_id.as_str(), ev.container_event_type),
            (id.as_str(), kind as i32),
            "{what}"
        );
        let status = ev.pod_sandbox_status.as_ref().expect(&what);
        assert_eq!(status.id, pod, "{what}");
        assert_eq!(
            status.metadata.as_ref().map(|m| m.name.as_str()),
            Some("evented"),
            "{what}"
        );
        // A container's stop happens while the pod is still being stopped: only the
        // pod's own events are pinned to a state.
        if *id == pod {
            assert_eq!(status.state, pod_state as i32, "{what}");
        }
        if *id == pod && kind == ContainerDeletedEvent {
            assert!(ev.containers_statuses.is_empty(), "{what}");
        }
    }

    // A pod whose monitor dies is told of as stopped, NOTREADY.
    let (_, pod) = new_pod(&d, "evented-orphan").await;
    assert_eq!(
        next_event(&mut events).await.container_event_type,
        ContainerCreatedEvent as i32
    );
    assert_eq!(
        next_event(&mut events).await.container_event_type,
        ContainerStartedEvent as i32
    );
    kill_monitor(&d, &pod).await;
    let ev = next_event_is(&mut events, &pod, ContainerStoppedEvent).await;
    assert_eq!(
        ev.pod_sandbox_status.map(|s| s.state),
        Some(PodSandboxState::SandboxNotready as i32)
    );
    remove_pod(&d, &pod).await;
    // Stopping a pod already stopped tells of no second stop.
    next_event_is(&mut events, &pod, ContainerDeletedEvent).await;
}

/// A CRI client whose HTTP/2 windows are the protocol's default 64 KiB, so that a stream
/// it does not read stops the server from sending (tonic's client otherwise accepts
/// megabytes unread).
/// The GetContainerEvents stream, over `client`.
async fn events_of(
    mut client: runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
) -> tonic::Streaming<ContainerEventResponse> {
    client
        .get_container_events(GetEventsRequest::default())
        .await
        .expect("GetContainerEvents")
        .into_inner()
}

async fn small_window_client(
    socket: &std::path::Path,
) -> runtime_service_client::RuntimeServiceClient<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_static("http://[::]:50051")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535);
    let channel = connect_unix(endpoint, socket).await.expect("connect");
    runtime_service_client::RuntimeServiceClient::new(channel)
}

/// Issue 20: a GetContainerEvents subscriber that does not keep up is told that it lost
/// events (its stream ends with Aborted, so kubelet relists) instead of reading on past a
/// silent gap, while a subscriber that keeps up gets every event.
#[tokio::test]
async fn a_subscriber_that_falls_behind_gets_an_error_not_a_gap() {
    let (d, config, pod) = busybox_pod("flood").await;
    // Containers that stay created, each with a large annotation: every event of this pod
    // carries their statuses, so few events fill the slow subscriber's window.
    for i in 0..4 {
        let mut c = container_config(&format!("fat-{i}"), &["sleep", "3600"]);
        c.annotations.insert("padding".into(), "x".repeat(8 << 10));
        create_container(&d, &pod, &config, c).await;
    }
    let mut slow = events_of(small_window_client(d.socket()).await).await;
    let mut fast = events_of(d.runtime()).await;
    let reader = tokio::spawn(async move {
        let (mut created, mut deleted) = (0usize, 0usize);
        loop {
            match tokio::time::timeout(std::time::Duration::from_secs(5), fast.message()).await {
                Ok(Ok(Some(ev))) => {
                    let kind = ev.container_event_type;
                    if kind == ContainerEventType::ContainerCreatedEvent as i32 {
                        created += 1;
                    }
                    if kind == ContainerEventType::ContainerDeletedEvent as i32 {
                        deleted += 1;
                    }
                }
                Ok(other) => panic!("the subscriber that keeps up was cut off: {other:?}"),
                Err(_) => return (created, deleted),
            }
        }
    });

    // More events than the runtime keeps for a subscriber (1024): at least two per round.
    const ROUNDS: usize = 500;
    let mut workers = Vec::new();
    for w in 0..4 {
        let (client, pod, config) = (d.client().clone(), pod.clone(), config.clone());
        workers.push(tokio::spawn(async move {
            for i in (w..ROUNDS).step_by(4) {
                let mut c = container_config("brief", &["true"]);
                c.metadata.as_mut().unwrap().attempt = i as u32;
                let id = create_container(&client, &pod, &config, c).await;
                remove_container(&client, &id).await;
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }

    let (mut read, mut ended) = (0usize, None);
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), slow.message()).await {
            Ok(Ok(Some(_))) => read += 1,
            Ok(Ok(None)) => panic!("the stream ended without an error after {read} events"),
            Ok(Err(status)) => {
                ended = Some(status);
                break;
            }
            Err(_) => break,
        }
    }
    let status = ended.unwrap_or_else(|| {
        panic!("the slow subscriber read {read} events, fewer than were sent, and was never told")
    });
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("events lost"), "{status:?}");
    assert!(read < 2 * ROUNDS, "it was cut off early: {read}");
    let fast_read = reader.await.expect("fast reader");
    assert_eq!(
        fast_read,
        (ROUNDS, ROUNDS),
        "the subscriber that keeps up misses no creation and no deletion"
    );
    remove_pod(&d, &pod).await;
}

/// StopPodSandbox tears the pod's network down while its monitor ends the pod: a crash
/// between the two leaves a monitor running and no network. Made here by deleting the veth
/// while the daemon is down: the next start stops the pod before kubelet reads it, rather
/// than showing it READY without a network.
#[tokio::test]
async fn a_ready_pod_whose_network_went_while_the_daemon_was_down_is_stopped() {
    let (mut d, config, pod_id) = busybox_pod("netgone").await;
    let sleeper = start(&d, &pod_id, &config, "sleeper", &["sleep", "3600"]).await;
    d.kill().await.expect("kill the daemon");
    let veth = berth_cni::veth_name(&pod_id);
    let out = std::process::Command::new("ip")
        .args(["link", "del", &veth])
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip link del {veth}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.start_again().await.expect("start again");
    d.wait_runtime_ready(std::time::Duration::from_secs(30))
        .await
        .expect("runtime ready");
    assert_eq!(
        pod_status(&d, &pod_id).await.state,
        PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(
        container_status(&d, &sleeper).await.state,
        ContainerState::ContainerExited as i32
    );
    remove_pod(&d, &pod_id).await;
}
