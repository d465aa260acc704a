//! RuntimeClass handlers run by an external OCI runtime: with Debian's `runc` and
//! `crun` configured under `[runtimes.*]`, a pod of each handler runs, logs, execs, reports
//! exit codes and stops like a default one, its containers are the runtime's (its `state`
//! shows them running with the pid Berth reports), and nothing of the runtime is left once
//! the pod is gone.
//!
//! Run through the harness: `scripts/test.sh` (as root).

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_e2e::fixtures::{
    Tmpfs, assert_refused, attach_url, container_config, container_pid, container_status,
    create_refused, exec_sync, exec_url, kill_monitor, linux_security, pod_config, pod_status,
    pull, remove_pod, run_pod_with, runc_crun_daemon, runtime_binary, runtime_status, start,
    start_container, try_run_pod, wait_exited,
};
use berth_e2e::{Daemon, DaemonDir, images, run_berth};
use berth_runtime::oci::nspids;
use k8s_cri::v1::*;
use tonic::Code;

/// `<runtime> --root <state>/runtimes/<handler> <args>` as the monitor runs it: in the pod's
/// PID namespace with that namespace's /proc (the pids in the runtime's state are the pod's).
fn runtime_cmd(d: &Daemon, handler: &str, pod: &str, args: &[&str]) -> std::process::Output {
    let pidns = d
        .dir()
        .state()
        .join("pods")
        .join(pod)
        .join("ns")
        .join("pid");
    std::process::Command::new("nsenter")
        .arg(format!("--pid={}", pidns.display()))
        .args([
            "--",
            "unshare",
            "--mount",
            "--propagation",
            "slave",
            "--mount-proc",
        ])
        .arg(runtime_binary(handler))
        .arg("--root")
        .arg(d.dir().state().join("runtimes").join(handler))
        .args(args)
        .output()
        .expect("run the runtime")
}

/// A pod `<name>-<handler>` of the runtime `handler`, logging under `logs-<handler>`:
/// (log directory, config, id).
async fn handler_pod(d: &Daemon, name: &str, handler: &str) -> (PathBuf, PodSandboxConfig, String) {
    let log_dir = d.dir().path().join(format!("logs-{handler}"));
    let config = pod_config(&format!("{name}-{handler}"), &log_dir);
    let pod = run_pod_with(d, &config, handler).await;
    (log_dir, config, pod)
}

/// Starts `c` in the pod and waits for it to exit 0.
async fn run_to_exit(
    d: &Daemon,
    pod: &str,
    config: &PodSandboxConfig,
    c: ContainerConfig,
    handler: &str,
) {
    let id = start_container(d, pod, config, c).await;
    assert_eq!(wait_exited(d, &id).await.exit_code, 0, "{handler}");
}

fn log_lines(path: &Path) -> Vec<(String, String, String)> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            let _time = p.next();
            (
                p.next().unwrap_or("").to_owned(),
                p.next().unwrap_or("").to_owned(),
                p.next().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn line(stream: &str, tag: &str, text: &str) -> (String, String, String) {
    (stream.into(), tag.into(), text.into())
}

/// The whole life of a pod of `handler`.
async fn a_pod_of(d: &Daemon, handler: &str) {
    let (log_dir, config, pod) = handler_pod(d, "rc", handler).await;
    let status = pod_status(&d, &pod).await;
    assert_eq!(status.runtime_handler, handler);

    // Output reaches the CRI log; the exit code is the process's.
    let script = "echo \"$GREETING\"; echo oops >&2; hostname; exit 7";
    let short = start_container(
        d,
        &pod,
        &config,
        container_config("short", &["sh", "-c", script]),
    )
    .await;
    let st = wait_exited(d, &short).await;
    assert_eq!(st.exit_code, 7, "{handler}: {st:?}");
    assert_eq!(st.reason, "Error");
    let lines = log_lines(&log_dir.join("short.log"));
    for want in [
        line("stdout", "F", "hello from berth"),
        line("stderr", "F", "oops"),
        line("stdout", "F", &format!("rc-{handler}-host")),
    ] {
        assert!(
            lines.contains(&want),
            "{handler}: {want:?} not in {lines:?}"
        );
    }

    // A long-running container in its own PID namespace (kubelet's default) is the
    // runtime's: its state shows it running, with the pid Berth reports, and ExecSync runs
    // in it. Its recursive read-only bind keeps a submount read-only.
    let src = d.dir().path().join(format!("tree-{handler}"));
    let _sub = Tmpfs::mount(&src.join("sub"), "size=1m");
    let mut long = container_config("long", &["sleep", "3600"]);
    long.linux = Some(linux_security(LinuxContainerSecurityContext {
        namespace_options: Some(NamespaceOption {
            pid: NamespaceMode::Container as i32,
            ..Default::default()
        }),
        ..Default::default()
    }));
    long.mounts = vec![Mount {
        container_path: "/rro".into(),
        host_path: src.display().to_string(),
        readonly: true,
        recursive_read_only: true,
        propagation: MountPropagation::PropagationPrivate as i32,
        ..Default::default()
    }];
    let long = start_container(d, &pod, &config, long).await;
    let out = runtime_cmd(d, handler, &pod, &["state", &long]);
    assert!(
        out.status.success(),
        "{handler} state: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).expect("state JSON");
    assert_eq!(state["status"], "running", "{handler}: {state}");
    let host_pid = container_pid(d, &long).await;
    // The container's pid in each PID namespace it is in, outermost first.
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap_or_default();
    let pids: Vec<i64> = nspids(&status).into_iter().map(i64::from).collect();
    assert_eq!(
        pids.get(1).copied(),
        state["pid"].as_i64(),
        "{handler}: the runtime's pid is not the one Berth reports ({pids:?}): {state}"
    );
    let cmdline = std::fs::read(format!("/proc/{host_pid}/cmdline")).unwrap_or_default();
    assert!(
        cmdline.starts_with(b"sleep\0"),
        "{handler}: {:?}",
        String::from_utf8_lossy(&cmdline)
    );
    let (stdout, _, code) = exec_sync(
        d,
        &long,
        &[
            "sh",
            "-c",
            "echo \"$GREETING\" in $(cat /etc/hostname); exit 3",
        ],
    )
    .await;
    assert_eq!(code, 3, "{handler}");
    assert_eq!(
        stdout.trim(),
        format!("hello from berth in rc-{handler}-host"),
        "{handler}"
    );

    let (pid1, _, _) = exec_sync(d, &long, &["cat", "/proc/1/cmdline"]).await;
    assert_eq!(
        pid1, "sleep\u{0}3600\u{0}",
        "{handler}: pid 1 of its own namespace"
    );
    for path in ["/rro/x", "/rro/sub/x"] {
        let (_, err, code) = exec_sync(d, &long, &["touch", path]).await;
        assert_ne!(code, 0, "{handler}: {path} took a write");
        assert!(
            err.contains("Read-only file system"),
            "{handler}: {path}: {err}"
        );
    }

    // A container in the PID namespace of another one sees it.
    let mut peer = container_config("peer", &["cat", "/proc/1/cmdline"]);
    peer.linux = Some(linux_security(LinuxContainerSecurityContext {
        namespace_options: Some(NamespaceOption {
            pid: NamespaceMode::Target as i32,
            target_id: long.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }));
    run_to_exit(d, &pod, &config, peer, handler).await;
    let peer_log = log_lines(&log_dir.join("peer.log"));
    assert!(
        peer_log.iter().any(|(_, _, t)| t.starts_with("sleep")),
        "{handler}: {peer_log:?}"
    );

    // Its cgroup is Berth's: stats read it.
    let stats = d
        .runtime()
        .container_stats(ContainerStatsRequest {
            container_id: long.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    let memory = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value);
    assert!(memory.is_some_and(|m| m > 0), "{handler}: {memory:?}");

    // The runtime default seccomp profile, in OCI form, is loaded by the runtime.
    let mut confined = container_config("confined", &["grep", "^Seccomp:", "/proc/self/status"]);
    confined.linux = Some(linux_security(LinuxContainerSecurityContext {
        seccomp: Some(SecurityProfile {
            profile_type: security_profile::ProfileType::RuntimeDefault as i32,
            ..Default::default()
        }),
        ..Default::default()
    }));
    run_to_exit(d, &pod, &config, confined, handler).await;
    let seccomp = log_lines(&log_dir.join("confined.log"));
    assert!(
        seccomp
            .iter()
            .any(|(_, _, t)| t.split_whitespace().eq(["Seccomp:", "2"])),
        "{handler}: {seccomp:?}"
    );

    // A tty container gets its pty from the runtime's console socket.
    let mut tty = container_config("tty", &["sh", "-c", "tty; echo on-tty"]);
    tty.tty = true;
    run_to_exit(d, &pod, &config, tty, handler).await;
    let text: Vec<String> = log_lines(&log_dir.join("tty.log"))
        .into_iter()
        .map(|(_, _, t)| t)
        .collect();
    assert!(
        text.iter().any(|t| t.starts_with("/dev/pts/"))
            && text.iter().any(|t| t == "on-tty\r" || t == "on-tty"),
        "{handler}: {text:?}"
    );

    // Stop kills it (`sleep` as PID 1 ignores SIGTERM: SIGKILL after the timeout, as for
    // the default handler), remove deletes the runtime's state.
    d.runtime()
        .stop_container(StopContainerRequest {
            container_id: long.clone(),
            timeout: 1,
        })
        .await
        .expect("StopContainer");
    let st = container_status(d, &long).await;
    assert_eq!(
        st.state,
        ContainerState::ContainerExited as i32,
        "{handler}"
    );
    assert_eq!(st.exit_code, 128 + libc::SIGKILL, "{handler}: {st:?}");
    d.runtime()
        .remove_container(RemoveContainerRequest {
            container_id: long.clone(),
        })
        .await
        .expect("RemoveContainer");
    assert!(
        !runtime_cmd(d, handler, &pod, &["state", &long])
            .status
            .success(),
        "{handler} still knows {long}"
    );

    // A container the runtime cannot create is an error naming the cause, and is undone.
    let err = create_refused(
        &d,
        &pod,
        &config,
        container_config("missing", &["/no/such/binary"]),
    )
    .await;
    assert!(
        err.message().contains("/no/such/binary") && err.message().contains(handler),
        "{handler}: {err:?}"
    );

    // A created container that never starts goes away with the pod, as the others do.
    let _created = d
        .runtime()
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("never", &["true"])),
            sandbox_config: Some(config.clone()),
        })
        .await
        .expect("CreateContainer never");
    remove_pod(d, &pod).await;
    let root = d.dir().state().join("runtimes").join(handler);
    let left: Vec<_> = std::fs::read_dir(&root)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{handler} state left: {left:?}");
    let list = std::process::Command::new(runtime_binary(handler))
        .arg("--root")
        .arg(&root)
        .args(["list", "-q"])
        .output()
        .expect("run the runtime");
    assert!(
        String::from_utf8_lossy(&list.stdout).trim().is_empty(),
        "{handler} list: {}",
        String::from_utf8_lossy(&list.stdout)
    );
}

#[tokio::test]
async fn runc_and_crun_pods_run_log_exec_and_stop_like_default_ones() {
    let d = runc_crun_daemon().await;
    pull(&d, images::BUSYBOX).await;
    let status = runtime_status(&d).await;
    let names: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["", "crun", "runc"]);
    for handler in ["runc", "crun"] {
        a_pod_of(&d, handler).await;
    }
    assert!(
        berth_e2e::leaks::mounts_under(d.dir().path()).is_empty(),
        "mounts left: {:?}",
        berth_e2e::leaks::mounts_under(d.dir().path())
    );
}

#[tokio::test]
async fn handler_pods_survive_a_daemon_restart_and_the_loss_of_their_monitor() {
    let mut d = runc_crun_daemon().await;
    pull(&d, images::BUSYBOX).await;
    for handler in ["runc", "crun"] {
        let (log_dir, config, pod) = handler_pod(&d, "restart", handler).await;
        let c = start(
            &d,
            &pod,
            &config,
            "c",
            &["sh", "-c", "echo up; exec sleep 3600"],
        )
        .await;

        // The next daemon adopts the pod: exec, log reopening and stop still work.
        d.stop().await.expect("stop the daemon");
        d.start_again().await.expect("restart");
        d.wait_runtime_ready(Duration::from_secs(60))
            .await
            .expect("runtime ready");
        let (out, _, code) = exec_sync(&d, &c, &["cat", "/etc/hostname"]).await;
        assert_eq!(
            (out.trim(), code),
            (format!("restart-{handler}-host").as_str(), 0)
        );
        std::fs::rename(log_dir.join("c.log"), log_dir.join("c.log.1")).expect("rotate");
        d.runtime()
            .reopen_container_log(ReopenContainerLogRequest {
                container_id: c.clone(),
            })
            .await
            .expect("ReopenContainerLog");
        assert!(log_dir.join("c.log").exists(), "{handler}: no new log file");

        // A monitor killed outright takes its containers with it; removing the pod then
        // leaves no runtime state (and the harness finds no cgroup or mount).
        kill_monitor(&d, &pod).await;
        let st = wait_exited(&d, &c).await;
        assert_eq!(st.state, ContainerState::ContainerExited as i32);
        remove_pod(&d, &pod).await;
        let root = d.dir().state().join("runtimes").join(handler);
        let left: Vec<_> = std::fs::read_dir(&root)
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{handler} state left: {left:?}");
    }
}

#[tokio::test]
async fn handler_containers_take_attach_stdin_and_terminal_execs() {
    use berth_test_support::streaming_client::{
        self as client, ExecOptions, RemoteCommand, Transport,
    };
    let d = runc_crun_daemon().await;
    pull(&d, images::BUSYBOX).await;
    let all = ExecOptions {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    for handler in ["runc", "crun"] {
        let (_, config, pod) = handler_pod(&d, "stream", handler).await;
        // The runtime hands the container the stdin pipe the monitor made.
        let script = "while read l; do echo \"got $l\"; echo \"err $l\" >&2; done";
        let mut echo = container_config("echo", &["sh", "-c", script]);
        echo.stdin = true;
        let echo = start_container(&d, &pod, &config, echo).await;
        let url = attach_url(&d, &echo, all).await;
        let mut rc = RemoteCommand::connect(&url, all, &Transport::spdy(), None)
            .await
            .unwrap_or_else(|e| panic!("{handler}: attach: {e}"));
        let mut out = rc.take_stdout().expect("stdout");
        let mut err = rc.take_stderr().expect("stderr");
        rc.write_stdin(b"ping\n").await.expect("stdin");
        read_until(&mut out, b"got ping").await;
        read_until(&mut err, b"err ping").await;
        drop((out, err, rc));

        // An exec on a terminal gets a pty of the container's devpts.
        let tty = ExecOptions {
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        };
        let url = exec_url(&d, &echo, &["sh", "-c", "read l; tty; echo \"$l\""], tty).await;
        let mut rc = RemoteCommand::connect(&url, tty, &Transport::websocket(), None)
            .await
            .unwrap_or_else(|e| panic!("{handler}: exec: {e}"));
        let mut out = rc.take_stdout().expect("stdout");
        rc.write_stdin(b"typed\n").await.expect("stdin");
        // The terminal echoes the line, then `tty` answers, then the line comes back.
        let seen = read_until(&mut out, b"/dev/pts/").await;
        let after = seen.windows(9).position(|w| w == b"/dev/pts/").unwrap_or(0);
        let mut rest = seen[after..].to_vec();
        while !rest.windows(7).any(|w| w == b"typed\r\n") {
            rest.extend(read_until(&mut out, b"\n").await);
        }
        let r = rc.wait().await;
        assert_eq!(
            r.status.exit_code(),
            Some(0),
            "{handler}: {:?} {}",
            r.status,
            String::from_utf8_lossy(&rest)
        );
        remove_pod(&d, &pod).await;
    }

    /// Reads until `want` shows; returns what was read.
    async fn read_until(out: &mut client::Output, want: &[u8]) -> Vec<u8> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !seen.windows(want.len()).any(|w| w == want) {
            match tokio::time::timeout_at(deadline, out.recv()).await {
                Ok(Some(b)) => seen.extend_from_slice(&b),
                _ => panic!(
                    "no {:?} in the output: {:?}",
                    String::from_utf8_lossy(want),
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
        seen
    }
}

#[tokio::test]
async fn an_unknown_handler_is_an_invalid_argument() {
    let d = runc_crun_daemon().await;
    let config = pod_config("rc-unknown", &d.dir().path().join("logs"));
    let err = try_run_pod(&d, &config, "kata").await;
    let err = err.expect_err("an unknown handler");
    assert_refused(&err, Code::InvalidArgument, "kata");
}

#[tokio::test]
async fn a_handler_whose_binary_is_missing_stops_the_start() {
    let dir = DaemonDir::new().expect("daemon dir");
    let text = format!(
        "root = {:?}\nstate = {:?}\n[grpc]\nsocket = {:?}\n[runtimes.ghost]\npath = \"/nonexistent/runc\"\n",
        dir.root().display().to_string(),
        dir.state().display().to_string(),
        dir.socket().display().to_string(),
    );
    std::fs::write(dir.config_path(), &text).expect("write config");
    let out = run_berth(
        [
            "--config".to_string(),
            dir.config_path().display().to_string(),
        ],
        Duration::from_secs(20),
    )
    .await
    .expect("berth ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "berth started: {stderr}");
    assert!(
        stderr.contains("ghost") && stderr.contains("/nonexistent/runc"),
        "{stderr}"
    );
    assert!(!dir.socket().exists(), "berth created its socket");
}

/// `default_runtime = "runc"` (containerd's `default_runtime_name`): a pod asking for no
/// handler, as kubelet asks for a pod without a RuntimeClass, is runc's. Its status names
/// runc, runc's own state shows its container running, and Status no longer offers user
/// namespaces for the default handler (runc pods do not get them).
#[tokio::test]
async fn default_runtime_hands_pods_without_a_handler_to_that_runtime() {
    let d = berth_e2e::fixtures::daemon_with(&format!(
        "default_runtime = \"runc\"\n[runtimes.runc]\npath = {:?}\n",
        runtime_binary("runc").display().to_string()
    ))
    .await;
    pull(&d, images::BUSYBOX).await;
    let default = berth_e2e::fixtures::default_handler(&d).await;
    assert!(
        !default.features.expect("features").user_namespaces,
        "the default handler still offers user namespaces"
    );
    let config = pod_config("by-default", &d.dir().path().join("logs-default"));
    let pod = run_pod_with(&d, &config, "").await;
    assert_eq!(pod_status(&d, &pod).await.runtime_handler, "runc");
    let c = start(&d, &pod, &config, "c", &["sleep", "3600"]).await;
    let out = runtime_cmd(&d, "runc", &pod, &["state", &c]);
    assert!(
        out.status.success(),
        "runc state: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).expect("state JSON");
    assert_eq!(state["status"], "running", "{state}");
    remove_pod(&d, &pod).await;
    let root = d.dir().state().join("runtimes").join("runc");
    let left: Vec<_> = std::fs::read_dir(&root)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "runc state left: {left:?}");
}
