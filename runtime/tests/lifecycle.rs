//! Root-only: real monitors and containers on a busybox root file system. Each test asserts
//! what a user of the pod would observe.

mod common;

use std::time::{Duration, Instant};

use berth_runtime::{Class, Classify};
use common::*;
use k8s_cri::v1::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_exit_codes() {
    let Some((env, pc, pod)) = Env::with_pod("logs").await else {
        return;
    };
    let script = "echo out; sleep 0.1; echo err >&2; sleep 0.1; printf partial; exit 3";
    let id = env.run_sh(&pod, &pc, "c", script).await;
    let s = env.wait_exit(&id).await;
    assert_eq!(s.exit_code, 3);
    assert_eq!(s.reason, "Error");
    assert!(s.started_at > 0 && s.finished_at >= s.started_at && s.created_at > 0);
    assert_eq!(
        env.log_lines(&pc, "c"),
        vec![
            "stdout F out".to_string(),
            "stderr F err".to_string(),
            "stdout P partial".to_string()
        ]
    );
    assert!(s.log_path.ends_with("logs/logs/c/0.log"), "{}", s.log_path);

    let ok = env.run_sh(&pod, &pc, "ok", "true").await;
    let s = env.wait_exit(&ok).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_sees_its_pod_user_env_cwd_and_mounts() {
    let Some(env) = Env::if_root() else { return };
    let mut pc = env.pod_config("web-0");
    pc.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let pod = env.run_pod(&pc).await;
    let ro = env.path().join("ro-vol");
    let rw = env.path().join("rw-vol");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("hello"), "from host\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rw, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cfg = env.container_config(
        "probe",
        &["hostname; cat /etc/hostname; echo \"$FOO $IMAGE_VAR $HOME\"; pwd; id -u; id -g; id -G; \
           cat /ro/hello; touch /ro/x 2>/dev/null && echo ro-writable || echo ro-denied; \
           echo written > /rw/out && echo rw-ok; grep nameserver /etc/resolv.conf; \
           grep -c localhost /etc/hosts; cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /dev/null /dev/pts/ptmx /dev/shm >/dev/null && echo dev-ok"],
    );
    cfg.working_dir = "/work/dir".into();
    cfg.envs = vec![KeyValue {
        key: "FOO".into(),
        value: "bar".into(),
    }];
    cfg.mounts = vec![bind("/ro", &ro, true), bind("/rw", &rw, false)];
    security_context(&mut cfg).run_as_user = Some(Int64Value { value: 1000 });
    let id = env.run(&pod, &pc, &cfg).await;
    let s = env.wait_exit(&id).await;
    let lines = env.log_lines(&pc, "probe");
    assert_eq!(s.exit_code, 0, "{lines:?}");
    let out: Vec<&str> = lines
        .iter()
        .map(|l| l.strip_prefix("stdout F ").unwrap_or(l))
        .collect();
    assert_eq!(
        out,
        vec![
            "web-0",
            "web-0",
            "bar from-image /home/alice",
            "/work/dir",
            "1000",
            "1000",
            "1000 10",
            "from host",
            "ro-denied",
            "rw-ok",
            "nameserver 10.96.0.10",
            "2",
            "/bin/sh -c hostname; cat /etc/hostname; echo \"$FOO $IMAGE_VAR $HOME\"; pwd; id -u; id -g; id -G; cat /ro/hello; touch /ro/x 2>/dev/null && echo ro-writable || echo ro-denied; echo written > /rw/out && echo rw-ok; grep nameserver /etc/resolv.conf; grep -c localhost /etc/hosts; cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /dev/null /dev/pts/ptmx /dev/shm >/dev/null && echo dev-ok ",
            "dev-ok",
        ]
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("out")).unwrap(),
        "written\n"
    );
    assert!(!ro.join("x").exists());
    let user = s.user.unwrap().linux.unwrap();
    assert_eq!(
        (user.uid, user.gid, user.supplemental_groups),
        (1000, 1000, vec![1000, 10])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_pid1_is_the_monitor_and_reaps_orphans() {
    let Some(env) = Env::if_root() else { return };
    let mut pc = env.pod_config("shared-pid");
    pod_namespace_options(&mut pc).pid = NamespaceMode::Pod as i32;
    let pod = env.run_pod(&pc).await;
    let mut cfg = env.container_config(
        "reap",
        &["cat /proc/1/comm; (sleep 0.2 &); sleep 1; \
           z=0; for f in /proc/[0-9]*/stat; do read -r line < $f 2>/dev/null; case \"$line\" in *') Z '*) z=$((z+1));; esac; done; echo zombies=$z"],
    );
    namespace_options(&mut cfg).pid = NamespaceMode::Pod as i32;
    let id = env.run(&pod, &pc, &cfg).await;
    let s = env.wait_exit(&id).await;
    assert_eq!(s.exit_code, 0);
    assert_eq!(
        env.log_lines(&pc, "reap"),
        vec!["stdout F berth-monitor", "stdout F zombies=0"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_a_sigterm_ignoring_container_at_the_deadline() {
    let Some((env, pc, pod)) = Env::with_pod("stubborn").await else {
        return;
    };
    let id = env
        .run_sh(
            &pod,
            &pc,
            "c",
            "trap '' TERM; echo ready; while true; do sleep 0.1; done",
        )
        .await;
    env.wait_log_lines(&pc, "c", 1).await;
    let t = Instant::now();
    env.rt.stop_container(&id, 2).await.unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "stop took {took:?}"
    );
    let s = env.status(&id);
    assert_eq!(
        (s.state, s.exit_code),
        (ContainerState::ContainerExited as i32, 137)
    );
    // A container that honours SIGTERM stops at once.
    let id = env
        .run_sh(
            &pod,
            &pc,
            "polite",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    env.rt.stop_container(&id, 10).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(env.status(&id).exit_code, 0);
    // Stop and remove are idempotent and fine for unknown ids.
    env.rt.stop_container(&id, 1).await.unwrap();
    env.rt.remove_container(&id).await.unwrap();
    env.rt.remove_container(&id).await.unwrap();
    env.rt.stop_container("no-such-container", 1).await.unwrap();
    env.rt.remove_container("no-such-container").await.unwrap();
    env.rt.stop_pod_sandbox("no-such-pod").await.unwrap();
    env.rt.remove_pod_sandbox("no-such-pod").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_output_exit_code_and_timeout() {
    let Some((env, pc, pod)) = Env::with_pod("exec").await else {
        return;
    };
    let mut cfg = env.container_config("c", &["while true; do sleep 1; done"]);
    cfg.working_dir = "/srv".into();
    cfg.envs = vec![KeyValue {
        key: "WHO".into(),
        value: "probe".into(),
    }];
    let id = env.run(&pod, &pc, &cfg).await;
    let script = "echo $WHO; pwd; echo oops >&2; exit 5";
    let r = env
        .exec_sh(&id, script, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"probe\n/srv\n"[..], &b"oops\n"[..], 5)
    );
    // Sees the container's processes and nothing else: its own PID namespace.
    let script = "cat /proc/1/cmdline | tr '\\0' ' '";
    let r = env.exec_sh(&id, script, Duration::ZERO).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "/bin/sh -c while true; do sleep 1; done "
    );
    // Big output arrives whole.
    let script = "head -c 3000000 /dev/zero";
    let r = env
        .exec_sh(&id, script, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.stdout.len(), 3_000_000);
    let t = Instant::now();
    let e = env.exec_sh(&id, "sleep 30", Duration::from_secs(1)).await;
    let e = e.unwrap_err();
    assert_eq!(e.class(), Class::DeadlineExceeded, "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let e = env
        .rt
        .exec_sync(&id, &["no-such-binary".to_string()], Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(e.class(), Class::InvalidArgument, "{e}");
    env.rt.stop_container(&id, 0).await.unwrap();
    let e = env.exec_sh(&id, "true", Duration::from_secs(5)).await;
    let e = e.unwrap_err();
    assert_eq!(e.class(), Class::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_pod_leaves_nothing_behind() {
    let Some((env, pc, pod)) = Env::with_pod("gone").await else {
        return;
    };
    let id = env.run_sh(&pod, &pc, "c", "sleep 60").await;
    let (cpid, mpid) = (env.container_pid(&id), env.monitor_pid(&pod));
    assert!(alive(cpid) && alive(mpid));
    assert!(
        !env.mounts_left().is_empty(),
        "namespaces and shm are mounted while the pod runs"
    );
    let stopped = env.rt.stop_pod_sandbox(&pod).await.unwrap().unwrap();
    assert!(stopped.netns.unwrap().ends_with("ns/net"));
    assert!(!alive(cpid) && !alive(mpid));
    let s = env.rt.pod_sandbox_status(&pod, false).unwrap();
    assert_eq!(
        s.status.unwrap().state,
        PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(
        s.containers_statuses[0].state,
        ContainerState::ContainerExited as i32
    );
    env.rt.stop_pod_sandbox(&pod).await.unwrap();
    env.rt.remove_pod_sandbox(&pod).await.unwrap();
    env.rt.remove_pod_sandbox(&pod).await.unwrap();
    assert_eq!(env.mounts_left(), Vec::<String>::new());
    // The directories are renamed aside at once and deleted on a blocking thread.
    let deadline = Instant::now() + Duration::from_secs(10);
    for d in ["state/pods", "state/containers", "root/containers"] {
        let mut left = env.entries(d);
        while !left.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = env.entries(d);
        }
        assert!(left.is_empty(), "{d} still holds {left:?}");
    }
    assert!(env.rt.list_pod_sandbox(None).is_empty());
    assert!(env.rt.list_containers(None).is_empty());
    assert_eq!(
        env.rt.pod_sandbox_status(&pod, false).unwrap_err().class(),
        Class::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_class_and_leave_nothing() {
    let Some(env) = Env::if_root() else { return };
    let pc = env.pod_config("bad");
    let e = env
        .rt
        .run_pod_sandbox(&RunPodSandboxRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.class(), Class::InvalidArgument);
    let pod = env.run_pod(&pc).await;
    let e = env
        .rt
        .run_pod_sandbox(&RunPodSandboxRequest {
            config: Some(pc.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.class(), Class::AlreadyExists, "{e}");
    let cfg = env.container_config("c", &["sleep 60"]);
    let e = env.create_err("nope", &pc, &cfg).await;
    assert_eq!(e.class(), Class::NotFound);
    let mut missing = cfg.clone();
    missing.mounts = vec![Mount {
        container_path: "/x".into(),
        host_path: "/no/such/path".into(),
        ..Default::default()
    }];
    let e = env.create_err(&pod, &pc, &missing).await;
    assert_eq!(e.class(), Class::InvalidArgument);
    assert!(e.to_string().contains("/no/such/path"), "{e}");
    let mut nometa = cfg.clone();
    nometa.metadata = None;
    let e = env.create_err(&pod, &pc, &nometa).await;
    assert_eq!(e.class(), Class::InvalidArgument);
    let mut nocmd = env.container_config("nocmd", &[]);
    nocmd.command = vec!["no-such-binary".into()];
    let e = env.create_err(&pod, &pc, &nocmd).await;
    assert_eq!(e.class(), Class::InvalidArgument, "{e}");
    assert!(
        env.rt.list_containers(None).is_empty(),
        "failed creates leave no container"
    );
    assert_eq!(env.entries("root/containers"), Vec::<String>::new());
    let id = env.run(&pod, &pc, &cfg).await;
    let e = env.create_err(&pod, &pc, &cfg).await;
    assert_eq!(e.class(), Class::AlreadyExists);
    let e = env.rt.start_container(&id).await.unwrap_err();
    assert_eq!(e.class(), Class::FailedPrecondition);
    assert_eq!(
        env.rt.start_container("nope").await.unwrap_err().class(),
        Class::NotFound
    );
    // Prefix lookup, labels and annotations round-trip, filters.
    assert_eq!(env.status(&id[..12]).id, id);
    let p = env
        .rt
        .pod_sandbox_status(&pod[..12], false)
        .unwrap()
        .status
        .unwrap();
    assert_eq!(p.annotations["note"], "kept");
    assert_eq!(p.labels["app"], "bad");
    let running = ContainerFilter {
        state: Some(ContainerStateValue {
            state: ContainerState::ContainerRunning as i32,
        }),
        pod_sandbox_id: pod.clone(),
        ..Default::default()
    };
    assert_eq!(env.rt.list_containers(Some(&running)).len(), 1);
    let by_label = PodSandboxFilter {
        label_selector: [("app".to_string(), "other".to_string())].into(),
        ..Default::default()
    };
    assert!(env.rt.list_pod_sandbox(Some(&by_label)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_the_lifecycle() {
    let Some((env, pc, pod)) = Env::with_pod("events").await else {
        return;
    };
    let mut rx = env.rt.subscribe_events();
    let id = env.run_sh(&pod, &pc, "c", "exit 4").await;
    env.wait_exit(&id).await;
    env.rt.remove_container(&id).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ev.container_id, id);
        assert_eq!(ev.pod_sandbox_status.as_ref().unwrap().id, pod);
        if ev.container_event_type == ContainerEventType::ContainerStoppedEvent as i32 {
            assert_eq!(ev.containers_statuses[0].exit_code, 4);
        }
        kinds.push(ev.container_event_type);
    }
    use ContainerEventType::*;
    assert_eq!(
        kinds,
        vec![
            ContainerCreatedEvent as i32,
            ContainerStartedEvent as i32,
            ContainerStoppedEvent as i32,
            ContainerDeletedEvent as i32
        ]
    );
}

/// Issue 20: a pod's own events carry its id as the container id and its status, and a
/// monitor that dies is told of as the pod stopping (the pod is NOTREADY in the event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_events_carry_the_pod_and_a_dead_monitor_stops_it() {
    let Some((env, pc, pod)) = Env::with_pod("pod-events").await else {
        return;
    };
    let id = env.run_sh(&pod, &pc, "c", "sleep 60").await;
    assert!(
        env.rt
            .pod_event(ContainerEventType::ContainerCreatedEvent, &pod)
            .is_none(),
        "no event is built while nobody listens"
    );
    let mut rx = env.rt.subscribe_events();
    let ev = env
        .rt
        .pod_event(ContainerEventType::ContainerStartedEvent, &pod[..12])
        .expect("an event of a known pod, found by prefix");
    assert_eq!(ev.container_id, pod);
    let status = ev.pod_sandbox_status.as_ref().unwrap();
    assert_eq!(
        (status.id.as_str(), status.state),
        (pod.as_str(), PodSandboxState::SandboxReady as i32)
    );
    assert_eq!(ev.containers_statuses.len(), 1);
    assert!(
        env.rt
            .pod_event(ContainerEventType::ContainerStartedEvent, "no-such-pod")
            .is_none()
    );

    let mpid = env.monitor_pid(&pod);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(mpid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut seen = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("events within 10 s")
            .unwrap();
        seen.push((ev.container_id.clone(), ev.container_event_type));
        if ev.container_id == pod {
            assert_eq!(
                ev.container_event_type,
                ContainerEventType::ContainerStoppedEvent as i32
            );
            assert_eq!(
                ev.pod_sandbox_status.map(|s| s.state),
                Some(PodSandboxState::SandboxNotready as i32)
            );
            break;
        }
    }
    // The container's exit is told first, then the pod's.
    assert_eq!(
        seen,
        vec![
            (id, ContainerEventType::ContainerStoppedEvent as i32),
            (
                pod.clone(),
                ContainerEventType::ContainerStoppedEvent as i32
            )
        ]
    );
    env.rt.remove_pod_sandbox(&pod).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_readopts_running_and_exited_containers() {
    let Some((mut env, pc, pod)) = Env::with_pod("restart").await else {
        return;
    };
    let ticker = env
        .run_sh(
            &pod,
            &pc,
            "ticker",
            "while true; do echo tick; sleep 0.2; done",
        )
        .await;
    let quitter = env
        .run_sh(&pod, &pc, "quitter", "sleep 1; echo bye; exit 7")
        .await;
    // The daemon goes away; the quitter exits while it is gone.
    env.reopen();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = env.rt.reconcile().await.unwrap();
    assert_eq!(report.adopted, 1, "{report:?}");
    let q = env.status(&quitter);
    assert_eq!(
        (q.state, q.exit_code, q.reason.as_str()),
        (ContainerState::ContainerExited as i32, 7, "Error")
    );
    assert_eq!(env.log_lines(&pc, "quitter"), vec!["stdout F bye"]);
    assert_eq!(
        env.status(&ticker).state,
        ContainerState::ContainerRunning as i32
    );
    let before = env.log_lines(&pc, "ticker").len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        env.log_lines(&pc, "ticker").len() > before,
        "logs continue after the restart"
    );
    let r = env
        .rt
        .exec_sync(
            &ticker,
            &["echo".to_string(), "still here".to_string()],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(r.stdout, b"still here\n");
    // Exits after re-adoption are seen too.
    env.rt.stop_container(&ticker, 1).await.unwrap();
    assert_eq!(
        env.status(&ticker).state,
        ContainerState::ContainerExited as i32
    );
}

/// The runtime's container table, as a crash leaves it (tests write it directly).
const CONTAINERS: redb::TableDefinition<&str, &[u8]> =
    redb::TableDefinition::new("runtime_containers");

fn record(env: &Env, id: &str) -> Option<berth_runtime::ContainerRecord> {
    use redb::ReadableDatabase;
    let tx = env.db.begin_read().unwrap();
    let t = tx.open_table(CONTAINERS).unwrap();
    let v = t.get(id).unwrap()?;
    Some(serde_json::from_slice(v.value()).unwrap())
}

fn put_record(env: &Env, rec: &berth_runtime::ContainerRecord) {
    let (id, bytes) = (rec.id.clone(), serde_json::to_vec(rec).unwrap());
    env.db
        .write(move |tx: &redb::WriteTransaction| {
            tx.open_table(CONTAINERS)
                .unwrap()
                .insert(id.as_str(), bytes.as_slice())
                .unwrap();
            Ok::<(), berth_db::Error>(())
        })
        .wait()
        .unwrap();
}

/// RemoveContainer answers once its removal intent is durable; the files and then the
/// record go after. A crash in between leaves the intent and some files: the next start
/// finishes that removal, and the container never shows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_cut_short_after_its_intent_is_finished_at_the_next_start() {
    let Some((mut env, pc, pod)) = Env::with_pod("cut").await else {
        return;
    };
    let kept = env.run_sh(&pod, &pc, "kept", "exit 3").await;
    let cut = env.run_sh(&pod, &pc, "cut", "exit 4").await;
    env.wait_exit(&kept).await;
    env.wait_exit(&cut).await;
    // What RemoveContainer did before the crash: the intent, and one of two directories.
    let mut rec = record(&env, &cut).expect("the record");
    assert!(!rec.removing);
    rec.removing = true;
    put_record(&env, &rec);
    std::fs::remove_dir_all(env.path().join("root/containers").join(&cut)).unwrap();
    let run_dir = env.path().join("state/containers").join(&cut);
    assert!(run_dir.exists());
    env.reopen();
    // Not listed even before reconciliation finishes it.
    assert!(env.rt.container_status(&cut, false).is_err());
    let report = env.rt.reconcile().await.unwrap();
    assert_eq!(
        (report.removals_finished, report.files_lost, report.undone),
        (1, 0, 0),
        "{report:?}"
    );
    assert!(!run_dir.exists(), "the removal's files are gone");
    assert!(record(&env, &cut).is_none(), "and then its record");
    assert_eq!(env.container_ids(), vec![kept.clone()]);
    assert_eq!(env.status(&kept).exit_code, 3);
    // The name is free again, as after a completed removal.
    let again = env.run_sh(&pod, &pc, "cut", "exit 5").await;
    assert_eq!(env.wait_exit(&again).await.exit_code, 5);
    // A removal that completes leaves neither files nor record.
    env.rt.remove_container(&again).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while record(&env, &again).is_some() {
        assert!(
            Instant::now() < deadline,
            "the record of a removed container stays"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!env.path().join("root/containers").join(&again).exists());
}

/// A record whose files are gone and that says no removal began (a power loss that lost
/// the directories its creation made, or someone deleting them) is a fault: the container
/// stays listed, exited with reason FilesLost, and counted, until kubelet removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_whose_files_vanished_is_reported_not_dropped() {
    let Some((mut env, pc, pod)) = Env::with_pod("lost").await else {
        return;
    };
    let lost = env.run_sh(&pod, &pc, "lost", "exit 0").await;
    env.wait_exit(&lost).await;
    std::fs::remove_dir_all(env.path().join("root/containers").join(&lost)).unwrap();
    env.reopen();
    let report = env.rt.reconcile().await.unwrap();
    assert_eq!(
        (report.files_lost, report.removals_finished, report.undone),
        (1, 0, 0),
        "{report:?}"
    );
    let s = env.status(&lost);
    assert_eq!(s.state, ContainerState::ContainerExited as i32);
    assert_eq!(s.reason, berth_runtime::FILES_LOST);
    assert!(
        s.message.contains("removal was never recorded"),
        "{}",
        s.message
    );
    assert_eq!(env.rt.census().containers_files_lost, 1);
    // Durable: another start still reports it.
    env.reopen();
    env.rt.reconcile().await.unwrap();
    assert_eq!(env.status(&lost).reason, berth_runtime::FILES_LOST);
    // kubelet removes it as any exited container.
    env.rt.remove_container(&lost).await.unwrap();
    assert!(env.rt.container_status(&lost, false).is_err());
    assert_eq!(env.rt.census().containers_files_lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_and_target_pid_namespace() {
    let Some((env, pc, pod)) = Env::with_pod("tty").await else {
        return;
    };
    let mut cfg = env.container_config(
        "t",
        &["tty; echo to-stderr >&2; while true; do sleep 1; done"],
    );
    cfg.tty = true;
    let target = env.run(&pod, &pc, &cfg).await;
    env.wait_log_lines(&pc, "t", 2).await;
    // A tty merges both streams into stdout, with the terminal's \r\n line ends.
    assert_eq!(
        env.log_lines(&pc, "t"),
        vec!["stdout F /dev/pts/0", "stdout F to-stderr"]
    );
    let raw =
        std::fs::read_to_string(std::path::Path::new(&pc.log_directory).join("t/0.log")).unwrap();
    assert!(raw.contains(" stdout F /dev/pts/0\r\n"), "{raw:?}");
    // A container in the first one's PID namespace sees its processes.
    let mut peek = env.container_config("peek", &["cat /proc/1/cmdline | tr '\\0' ' '; echo"]);
    let ns = namespace_options(&mut peek);
    ns.pid = NamespaceMode::Target as i32;
    ns.target_id = target.clone();
    let id = env.run(&pod, &pc, &peek).await;
    env.wait_exit(&id).await;
    assert_eq!(
        env.log_lines(&pc, "peek"),
        vec!["stdout F /bin/sh -c tty; echo to-stderr >&2; while true; do sleep 1; done "]
    );
}
