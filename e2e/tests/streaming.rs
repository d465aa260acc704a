//! Exec, Attach and PortForward through the daemon's streaming server, spoken over
//! SPDY/3.1 and WebSocket by the streaming client (`berth_test_support::streaming_client`), the way
//! kubectl and crictl speak them: output, stderr, exit codes in the status, stdin, a
//! terminal that follows resizes, attach to a container's own stdio, forwarded ports,
//! single-use URLs, and no process left when a client vanishes.
//!
//! Run through the harness: `scripts/test.sh` (as root).

use std::time::Duration;

use berth_cri::streaming::TerminalSize;
use berth_e2e::fixtures::{
    attach_url, container_config, exec_sync, exec_url, pod_config, pull, remove_pod, run_pod,
    start_container,
};
use berth_e2e::{Daemon, images};
use berth_test_support::streaming_client::{
    self as client, ExecOptions, RemoteCommand, SpdyPortForward, Transport, WsPortForward,
};
use k8s_cri::v1::*;
use tonic::Code;

/// A daemon with a running busybox pod; `containers` are (name, command, stdin) triples.
struct Pod {
    d: Daemon,
    pod_id: String,
    ids: Vec<String>,
}

impl Pod {
    async fn start(name: &str, containers: &[(&str, &[&str], bool)]) -> Pod {
        let d = Daemon::start().await.expect("daemon");
        pull(&d, images::BUSYBOX).await;
        let config = pod_config(name, &d.dir().path().join("pod-logs"));
        let pod_id = run_pod(&d, &config).await;
        let mut ids = Vec::new();
        for (cname, cmd, stdin) in containers {
            let mut c = container_config(cname, cmd);
            c.stdin = *stdin;
            ids.push(start_container(&d, &pod_id, &config, c).await);
        }
        Pod { d, pod_id, ids }
    }

    async fn exec_url(&self, cmd: &[&str], opts: ExecOptions) -> String {
        exec_url(&self.d, &self.ids[0], cmd, opts).await
    }

    async fn remove(self) {
        remove_pod(&self.d, &self.pod_id).await;
    }
}

fn transports() -> [(&'static str, Transport); 2] {
    [
        ("spdy", Transport::spdy()),
        ("websocket", Transport::websocket()),
    ]
}

const OUT_ERR: ExecOptions = ExecOptions {
    stdin: false,
    stdout: true,
    stderr: true,
    tty: false,
};

#[tokio::test]
async fn exec_streams_output_exit_codes_and_stdin() {
    let pod = Pod::start("exec", &[("main", &["sleep", "3600"], false)]).await;
    for (name, transport) in transports() {
        let url = pod.exec_url(&["echo", "hello"], OUT_ERR).await;
        let r = client::run(&url, OUT_ERR, &transport, None, None)
            .await
            .unwrap_or_else(|e| panic!("{name}: exec echo: {e}"));
        assert_eq!(r.stdout, b"hello\n", "{name}");
        assert!(r.stderr.is_empty(), "{name}: {:?}", r.stderr);
        assert_eq!(r.status.exit_code(), Some(0), "{name}: {:?}", r.status);

        let url = pod
            .exec_url(&["sh", "-c", "echo to-stderr >&2; exit 3"], OUT_ERR)
            .await;
        let r = client::run(&url, OUT_ERR, &transport, None, None)
            .await
            .unwrap_or_else(|e| panic!("{name}: exec exit 3: {e}"));
        assert_eq!(r.stderr, b"to-stderr\n", "{name}");
        assert_eq!(r.status.exit_code(), Some(3), "{name}: {:?}", r.status);
        let api = r.status.api.expect("a v4+ status");
        assert_eq!(api.reason, "NonZeroExitCode", "{name}");

        // stdin reaches the process, and closing it is EOF: cat ends.
        let opts = ExecOptions {
            stdin: true,
            ..OUT_ERR
        };
        let url = pod.exec_url(&["cat"], opts).await;
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let r = client::run(&url, opts, &transport, Some(&payload), None)
            .await
            .unwrap_or_else(|e| panic!("{name}: exec cat: {e}"));
        assert_eq!(r.stdout.len(), payload.len(), "{name}");
        assert!(r.stdout == payload, "{name}: cat changed the bytes");
        assert_eq!(r.status.exit_code(), Some(0), "{name}");
    }

    // The RPC itself refuses what cannot work.
    let err = pod
        .d
        .runtime()
        .exec(ExecRequest {
            container_id: "no-such-container".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .expect_err("exec in an unknown container");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = pod
        .d
        .runtime()
        .attach(AttachRequest {
            container_id: pod.ids[0].clone(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .expect_err("attach stdin to a container without stdin");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    pod.remove().await;
}

#[tokio::test]
async fn a_terminal_follows_resizes() {
    let pod = Pod::start("tty", &[("main", &["sleep", "3600"], false)]).await;
    let opts = ExecOptions {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    for (name, transport) in transports() {
        // One `stty size` per line read, until "quit". The resize and stdin streams are not
        // ordered with each other (as in kubectl), so each size is asked for until it shows.
        let script = "while read l; do [ \"$l\" = quit ] && break; stty size; done; tty";
        let url = pod.exec_url(&["sh", "-c", script], opts).await;
        let mut rc = RemoteCommand::connect(&url, opts, &transport, None)
            .await
            .unwrap_or_else(|e| panic!("{name}: connect: {e}"));
        let mut out = rc.take_stdout().expect("stdout");
        let mut seen = Vec::new();
        for (width, height) in [(120u16, 40u16), (80, 25)] {
            rc.resize(TerminalSize { width, height })
                .await
                .expect("resize");
            let want = format!("{height} {width}\r\n");
            let mut shown = false;
            for _ in 0..50 {
                rc.write_stdin(b"size\n").await.expect("stdin");
                // Each line answers with one size: read up to the next answer.
                let before = seen.len();
                read_until_from(&mut out, &mut seen, before, b" ").await;
                read_until_from(&mut out, &mut seen, before, b"\r\n").await;
                if String::from_utf8_lossy(&seen[before..]).contains(&want) {
                    shown = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                shown,
                "{name}: the terminal never became {width}x{height}: {:?}",
                String::from_utf8_lossy(&seen)
            );
        }
        rc.write_stdin(b"quit\n").await.expect("stdin");
        read_until(&mut out, &mut seen, b"/dev/pts/").await;
        let r = rc.wait().await;
        assert_eq!(r.status.exit_code(), Some(0), "{name}: {:?}", r.status);
    }
    pod.remove().await;
}

/// Reads until `want` appears in `seen` after offset `from`.
async fn read_until_from(out: &mut client::Output, seen: &mut Vec<u8>, from: usize, want: &[u8]) {
    let found = |s: &[u8]| {
        s[from.min(s.len())..]
            .windows(want.len())
            .any(|w| w == want)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !found(seen) {
        match tokio::time::timeout_at(deadline, out.recv()).await {
            Ok(Some(b)) => seen.extend_from_slice(&b),
            _ => panic!(
                "no {:?} in the output: {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(seen)
            ),
        }
    }
}

/// Reads until `want` appears in `seen`.
async fn read_until(out: &mut client::Output, seen: &mut Vec<u8>, want: &[u8]) {
    read_until_from(out, seen, 0, want).await
}

#[tokio::test]
async fn attach_reaches_the_containers_own_stdio() {
    // The container echoes its stdin to stdout, and a marker to stderr per line.
    let script = "while read l; do echo \"got $l\"; echo \"err $l\" >&2; done";
    let pod = Pod::start("attach", &[("echo", &["sh", "-c", script], true)]).await;
    let opts = ExecOptions {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    for (i, (name, transport)) in transports().into_iter().enumerate() {
        let url = attach_url(&pod.d, &pod.ids[0], opts).await;
        let mut rc = RemoteCommand::connect(&url, opts, &transport, None)
            .await
            .unwrap_or_else(|e| panic!("{name}: connect: {e}"));
        let mut out = rc.take_stdout().expect("stdout");
        let mut err = rc.take_stderr().expect("stderr");
        let line = format!("line{i}\n");
        rc.write_stdin(line.as_bytes()).await.expect("stdin");
        let (mut o, mut e) = (Vec::new(), Vec::new());
        read_until(&mut out, &mut o, format!("got line{i}").as_bytes()).await;
        read_until(&mut err, &mut e, format!("err line{i}").as_bytes()).await;
        // Detaching leaves the container running.
        drop((out, err, rc));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = berth_e2e::fixtures::container_status(&pod.d, &pod.ids[0]).await;
    assert_eq!(status.state, ContainerState::ContainerRunning as i32);
    // What attachers saw is also in the container's log.
    let log =
        std::fs::read_to_string(pod.d.dir().path().join("pod-logs").join("echo.log")).expect("log");
    assert!(log.contains(" stdout F got line0"), "{log}");
    assert!(log.contains(" stderr F err line1"), "{log}");
    pod.remove().await;
}

#[tokio::test]
async fn port_forward_reaches_pod_ports_and_reports_refusals() {
    let script = "mkdir -p /www80 /www81 && echo page-80 > /www80/index.html && \
                  echo page-81 > /www81/index.html && httpd -p 81 -h /www81 && \
                  exec httpd -f -p 80 -h /www80";
    let pod = Pod::start("pf", &[("web", &["sh", "-c", script], false)]).await;
    // httpd listens once the container's shell got that far.
    for _ in 0..100 {
        let (out, _, _) = exec_sync(&pod.d, &pod.ids[0], &["netstat", "-ltn"]).await;
        if out.contains(":80 ") && out.contains(":81 ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = |ports: Vec<i32>| {
        let rt = pod.d.runtime();
        let pod_id = pod.pod_id.clone();
        async move {
            let mut rt = rt;
            rt.port_forward(PortForwardRequest {
                pod_sandbox_id: pod_id,
                port: ports,
            })
            .await
            .expect("PortForward")
            .into_inner()
            .url
        }
    };
    const GET: &[u8] = b"GET / HTTP/1.0\r\n\r\n";

    // SPDY: two ports at once in one session, then a closed port.
    let mut pf = SpdyPortForward::connect(&url(vec![80, 81]).await, None)
        .await
        .expect("spdy port-forward");
    let mut a = pf.open(80).await.expect("open 80");
    let mut b = pf.open(81).await.expect("open 81");
    for (conn, page) in [(&mut a, "page-80"), (&mut b, "page-81")] {
        conn.writer
            .send(bytes::Bytes::from_static(GET))
            .await
            .expect("send");
        let mut got = Vec::new();
        while let Some(chunk) = conn.reader.recv().await {
            got.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1."), "{text}");
        assert!(text.contains(page), "{text}");
    }
    let mut closed = pf.open(9).await.expect("open 9");
    let mut error = Vec::new();
    while let Some(chunk) = closed.error.recv().await {
        error.extend_from_slice(&chunk);
    }
    let error = String::from_utf8_lossy(&error);
    assert!(
        error.contains('9') && error.to_lowercase().contains("refused"),
        "error stream: {error:?}"
    );
    pf.close().await;

    // WebSocket: the ports of the request, data on even channels.
    let mut ws = WsPortForward::connect(&url(vec![81]).await, &[81], "v4.channel.k8s.io", None)
        .await
        .expect("websocket port-forward");
    ws.send(0, GET).await.expect("send");
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("page-81") {
        match tokio::time::timeout(Duration::from_secs(10), ws.recv(0)).await {
            Ok(Some(b)) => got.extend_from_slice(&b),
            other => panic!(
                "websocket port-forward ended early ({other:?}): {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    drop(ws);
    pod.remove().await;
}

#[tokio::test]
async fn urls_are_single_use_and_a_vanished_client_leaves_no_process() {
    let pod = Pod::start("vanish", &[("main", &["sleep", "3600"], false)]).await;
    let url = pod.exec_url(&["true"], OUT_ERR).await;
    client::run(&url, OUT_ERR, &Transport::spdy(), None, None)
        .await
        .expect("first use");
    let again = client::run(&url, OUT_ERR, &Transport::spdy(), None, None).await;
    let err = again.expect_err("a used URL is refused");
    assert!(err.to_string().contains("404"), "{err}");

    for (name, transport) in transports() {
        let url = pod.exec_url(&["sleep", "4242"], OUT_ERR).await;
        let rc = RemoteCommand::connect(&url, OUT_ERR, &transport, None)
            .await
            .unwrap_or_else(|e| panic!("{name}: connect: {e}"));
        let running = || async {
            let (ps, _, _) = exec_sync(&pod.d, &pod.ids[0], &["ps", "-o", "args"]).await;
            ps.lines().any(|l| l.trim() == "sleep 4242")
        };
        let mut started = false;
        for _ in 0..100 {
            if running().await {
                started = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(started, "{name}: the exec never ran");
        // The client goes away without a word.
        drop(rc);
        let mut gone = false;
        for _ in 0..200 {
            if !running().await {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone, "{name}: the exec outlived its client");
    }
    pod.remove().await;
}
