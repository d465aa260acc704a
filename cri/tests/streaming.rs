//! In-process tests of the streaming server: the real RPC handlers and HTTP server with a
//! fake backend, driven by `berth-test-support`'s streaming client over SPDY and WebSocket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use k8s_cri::v1::{AttachRequest, ExecRequest, PortForwardRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Status};

use berth_cri::config::{Config, StreamingConfig};
use berth_cri::node::Node;
use berth_cri::store::Store;
use berth_cri::streaming::status::ApiStatus;
use berth_cri::streaming::*;
use berth_test_support::streaming_client::{
    self as client, ClientError, ClientTls, ExecOptions, ExecResult, RemoteCommand,
    SpdyPortForward, Transport, WsPortForward,
};

/// A backend whose "commands" are scripted behaviours.
#[derive(Default)]
struct Fake {
    netns: Option<PathBuf>,
    /// Execs that saw their client go away.
    gone: AtomicUsize,
    /// Execs running now.
    running: AtomicUsize,
}

#[async_trait::async_trait]
impl StreamBackend for Fake {
    async fn check_exec(&self, id: &str) -> Result<(), Status> {
        match id {
            "missing" => Err(Status::not_found("container \"missing\" not found")),
            "stopped" => Err(Status::failed_precondition(
                "container \"stopped\" is not running",
            )),
            _ => Ok(()),
        }
    }

    async fn check_attach(&self, id: &str, stdin: bool) -> Result<(), Status> {
        self.check_exec(id).await?;
        if stdin && id == "no-stdin" {
            return Err(Status::failed_precondition("container has no stdin"));
        }
        Ok(())
    }

    async fn exec(
        &self,
        _id: &str,
        cmd: Vec<String>,
        _tty: bool,
        mut io: StreamIo,
    ) -> Result<i32, Status> {
        match cmd[0].as_str() {
            "echo-stdin" => {
                let mut stdin = io.stdin.take().unwrap();
                let mut stdout = io.stdout.take().unwrap();
                tokio::io::copy(&mut stdin, &mut stdout).await.unwrap();
                stdout.shutdown().await.unwrap();
                let mut stderr = io.stderr.take().unwrap();
                stderr.write_all(b"to stderr\n").await.unwrap();
                Ok(3)
            }
            "print" => {
                io.stdout
                    .take()
                    .unwrap()
                    .write_all(cmd[1].as_bytes())
                    .await
                    .unwrap();
                Ok(0)
            }
            "big" => {
                let mut stdout = io.stdout.take().unwrap();
                for i in 0..256u32 {
                    stdout.write_all(&[(i % 251) as u8; 4096]).await.unwrap();
                }
                Ok(0)
            }
            "tty-size" => {
                let mut resize = io.resize.take().unwrap();
                let mut stdout = io.stdout.take().unwrap();
                for _ in 0..2 {
                    let size = resize.recv().await.unwrap();
                    let line = format!("{} {}\n", size.height, size.width);
                    stdout.write_all(line.as_bytes()).await.unwrap();
                }
                Ok(0)
            }
            "wait-gone" => {
                self.running.fetch_add(1, Ordering::SeqCst);
                io.client_gone.cancelled().await;
                self.gone.fetch_add(1, Ordering::SeqCst);
                self.running.fetch_sub(1, Ordering::SeqCst);
                Ok(137)
            }
            _ => Err(Status::internal(format!("no such command {:?}", cmd[0]))),
        }
    }

    async fn attach(&self, _id: &str, _tty: bool, mut io: StreamIo) -> Result<(), Status> {
        let mut stdin = io.stdin.take().unwrap();
        let mut stdout = io.stdout.take().unwrap();
        tokio::io::copy(&mut stdin, &mut stdout).await.unwrap();
        Ok(())
    }

    async fn pod_netns(&self, pod_id: &str) -> Result<Option<PathBuf>, Status> {
        match pod_id {
            "pod-1" => Ok(self.netns.clone()),
            "host-pod" => Ok(None),
            _ => Err(Status::not_found(format!(
                "pod sandbox {pod_id:?} not found"
            ))),
        }
    }
}

/// The defaults with root and state under `dir`: a test touches nothing of the host's.
fn config_in(dir: &Path) -> Config {
    Config {
        root: dir.join("root"),
        state: dir.join("state"),
        ..Config::default()
    }
}

struct TestNode {
    node: Arc<Node>,
    fake: Arc<Fake>,
    _server: StreamingServer,
    _dir: tempfile::TempDir,
}

async fn test_node(fake: Fake) -> TestNode {
    test_node_with(fake, StreamingConfig::default()).await
}

async fn test_node_with(fake: Fake, streaming: StreamingConfig) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        streaming,
        ..config_in(dir.path())
    };
    let node = Node::new(config.clone(), Store::open(dir.path()).unwrap()).unwrap();
    let fake = Arc::new(fake);
    node.streaming.set_backend(fake.clone());
    let server = node.streaming.start(&config.streaming).await.unwrap();
    TestNode {
        node,
        fake,
        _server: server,
        _dir: dir,
    }
}

fn exec_req(cmd: &[&str], stdin: bool, stdout: bool, stderr: bool, tty: bool) -> ExecRequest {
    ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        stdin,
        stdout,
        stderr,
        tty,
    }
}

async fn exec_url(t: &TestNode, req: ExecRequest) -> String {
    exec(&t.node, req).await.unwrap().url
}

fn opts(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> ExecOptions {
    ExecOptions {
        stdin,
        stdout,
        stderr,
        tty,
    }
}

/// Runs the exec at `url` asking for stdout alone, with no input and no terminal.
async fn run_stdout(url: &str, transport: &Transport) -> Result<ExecResult, ClientError> {
    client::run(url, opts(false, true, false, false), transport, None, None).await
}

/// Runs `echo-stdin` at a fresh exec URL of `t` with every stream and no terminal, over
/// `transport`, sending `stdin`.
async fn echo_stdin(t: &TestNode, transport: &Transport, stdin: &[u8]) -> ExecResult {
    let url = exec_url(t, exec_req(&["echo-stdin"], true, true, true, false)).await;
    let opts = opts(true, true, true, false);
    client::run(&url, opts, transport, Some(stdin), None)
        .await
        .unwrap()
}

/// SPDY (remotecommand v4) and WebSocket (the newest version): the tests that hold for
/// both run once over each.
fn both_transports() -> [Transport; 2] {
    [
        Transport::spdy_only("v4.channel.k8s.io"),
        Transport::websocket(),
    ]
}

fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
    r.unwrap_err().code()
}

const EXIT_3_JSON: &str = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [echo-stdin], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;

#[tokio::test]
async fn the_runtime_backend_answers_not_found_for_unknown_objects() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(config_in(dir.path()), Store::open(dir.path()).unwrap()).unwrap();
    assert_eq!(
        code(exec(&node, exec_req(&["ls"], false, true, false, false)).await),
        Code::NotFound
    );
    let attach_req = AttachRequest {
        container_id: "c1".into(),
        stdout: true,
        ..Default::default()
    };
    assert_eq!(code(attach(&node, attach_req).await), Code::NotFound);
    let pf = PortForwardRequest {
        pod_sandbox_id: "p".into(),
        port: vec![80],
    };
    assert_eq!(code(port_forward(&node, pf).await), Code::NotFound);
    // Bad requests are InvalidArgument before any lookup.
    assert_eq!(
        code(exec(&node, exec_req(&["ls"], false, true, true, true)).await),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn rpcs_validate_requests_and_ask_the_backend() {
    let t = test_node(Fake::default()).await;
    let n = &t.node;
    assert_eq!(
        code(exec(n, exec_req(&["ls"], false, false, false, false)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(exec(n, exec_req(&["ls"], false, true, true, true)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(exec(n, exec_req(&[], false, true, false, false)).await),
        Code::InvalidArgument
    );
    let mut missing = exec_req(&["ls"], false, true, false, false);
    missing.container_id = "missing".into();
    assert_eq!(code(exec(n, missing).await), Code::NotFound);
    let mut stopped = exec_req(&["ls"], false, true, false, false);
    stopped.container_id = "stopped".into();
    assert_eq!(code(exec(n, stopped).await), Code::FailedPrecondition);
    let attach_stdin = AttachRequest {
        container_id: "no-stdin".into(),
        stdin: true,
        stdout: true,
        ..Default::default()
    };
    assert_eq!(
        code(attach(n, attach_stdin).await),
        Code::FailedPrecondition
    );
    let pf = |pod: &str, port: Vec<i32>| PortForwardRequest {
        pod_sandbox_id: pod.into(),
        port,
    };
    assert_eq!(
        code(port_forward(n, pf("", vec![])).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(port_forward(n, pf("pod-1", vec![0])).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(port_forward(n, pf("pod-1", vec![70000])).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(port_forward(n, pf("nope", vec![80])).await),
        Code::NotFound
    );

    let url = exec_url(&t, exec_req(&["ls"], false, true, false, false)).await;
    let base = n.streaming.base_url().unwrap();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let token = url.strip_prefix(&format!("{base}/exec/")).unwrap();
    assert_eq!(token.len(), 32);
    let pf_url = port_forward(n, pf("pod-1", vec![8080])).await.unwrap().url;
    assert!(pf_url.starts_with(&format!("{base}/portforward/")));
}

#[tokio::test]
async fn spdy_v4_exec_carries_stdin_stdout_stderr_and_the_exit_code() {
    let t = test_node(Fake::default()).await;
    let result = echo_stdin(
        &t,
        &Transport::spdy_only("v4.channel.k8s.io"),
        b"hello\nworld\n",
    )
    .await;
    assert_eq!(result.stdout, b"hello\nworld\n");
    assert_eq!(result.stderr, b"to stderr\n");
    assert_eq!(
        String::from_utf8(result.status.raw.clone()).unwrap(),
        EXIT_3_JSON
    );
    assert_eq!(result.status.exit_code(), Some(3));
}

#[tokio::test]
async fn spdy_negotiates_the_clients_first_choice_and_v5_acts_as_v4() {
    let t = test_node(Fake::default()).await;
    let url = exec_url(&t, exec_req(&["print", "hi"], false, true, false, false)).await;
    let rc = RemoteCommand::connect(
        &url,
        opts(false, true, false, false),
        &Transport::spdy(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(rc.protocol(), "v5.channel.k8s.io");
    let result = rc.wait().await;
    assert_eq!(result.stdout, b"hi");
    assert_eq!(result.status.raw, br#"{"metadata":{},"status":"Success"}"#);
}

#[tokio::test]
async fn spdy_before_v4_reports_failures_as_text_and_success_as_nothing() {
    let t = test_node(Fake::default()).await;
    for protocol in ["v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"] {
        let url = exec_url(&t, exec_req(&["print", "ok"], false, true, false, false)).await;
        let ok = run_stdout(&url, &Transport::spdy_only(protocol))
            .await
            .unwrap();
        assert_eq!(ok.stdout, b"ok", "{protocol}");
        assert!(ok.status.raw.is_empty(), "{protocol}");

        let failed = echo_stdin(&t, &Transport::spdy_only(protocol), b"x").await;
        assert_eq!(failed.stdout, b"x");
        assert_eq!(
            String::from_utf8(failed.status.raw).unwrap(),
            "command terminated with non-zero exit code: error executing command [echo-stdin], exit code 3"
        );
    }
}

#[tokio::test]
async fn websocket_v5_exec_closes_stdin_and_reports_the_exit_code() {
    let t = test_node(Fake::default()).await;
    let result = echo_stdin(&t, &Transport::websocket(), b"over websocket\n").await;
    assert_eq!(result.stdout, b"over websocket\n");
    assert_eq!(result.stderr, b"to stderr\n");
    assert_eq!(String::from_utf8(result.status.raw).unwrap(), EXIT_3_JSON);
}

#[tokio::test]
async fn websocket_v4_binary_base64_and_legacy_protocols() {
    let t = test_node(Fake::default()).await;
    for (protocol, json) in [
        ("v4.channel.k8s.io", true),
        ("v4.base64.channel.k8s.io", true),
        ("channel.k8s.io", false),
        ("base64.channel.k8s.io", false),
    ] {
        let url = exec_url(
            &t,
            exec_req(&["print", "bytes\0\u{ff}"], false, true, false, false),
        )
        .await;
        let rc = RemoteCommand::connect(
            &url,
            opts(false, true, false, false),
            &Transport::websocket_only(protocol),
            None,
        )
        .await
        .unwrap();
        assert_eq!(rc.protocol(), protocol);
        let result = rc.wait().await;
        assert_eq!(result.stdout, "bytes\0\u{ff}".as_bytes(), "{protocol}");
        if json {
            assert_eq!(result.status.raw, br#"{"metadata":{},"status":"Success"}"#);
        } else {
            assert!(result.status.raw.is_empty(), "{protocol}");
        }
    }
    // v4 cannot close stdin early: the client says so instead of hanging.
    let url = exec_url(&t, exec_req(&["echo-stdin"], true, true, true, false)).await;
    let mut rc = RemoteCommand::connect(
        &url,
        opts(true, true, true, false),
        &Transport::websocket_only("v4.channel.k8s.io"),
        None,
    )
    .await
    .unwrap();
    assert!(rc.close_stdin().await.is_err());
}

#[tokio::test]
async fn a_token_works_once_and_only_for_its_own_kind() {
    let t = test_node(Fake::default()).await;
    let url = exec_url(&t, exec_req(&["print", "once"], false, true, false, false)).await;
    let spdy = Transport::spdy_only("v4.channel.k8s.io");
    let first = run_stdout(&url, &spdy).await.unwrap();
    assert_eq!(first.stdout, b"once");
    let second = run_stdout(&url, &spdy).await;
    assert_eq!(refused_status(&second), Some(404), "{second:?}");
    // An exec token on the attach path is spent and refused.
    let url = exec_url(&t, exec_req(&["print", "x"], false, true, false, false)).await;
    let wrong = url.replace("/exec/", "/attach/");
    let r = run_stdout(&wrong, &spdy).await;
    assert_eq!(refused_status(&r), Some(404), "{r:?}");
    let r = run_stdout(&url, &spdy).await;
    assert_eq!(refused_status(&r), Some(404), "{r:?}");
    let base = t.node.streaming.base_url().unwrap();
    for path in ["/exec/", "/nothing/abc", "/exec/a/b"] {
        let r = run_stdout(&format!("{base}{path}"), &spdy).await;
        assert_eq!(refused_status(&r), Some(404), "{path}: {r:?}");
    }
}

/// The HTTP status a refused request got; `None` if it was not refused.
fn refused_status<T>(r: &Result<T, ClientError>) -> Option<u16> {
    match r {
        Err(ClientError::Refused { status, .. }) => Some(*status),
        _ => None,
    }
}

#[tokio::test]
async fn an_unknown_protocol_is_forbidden_and_a_plain_request_is_bad() {
    let t = test_node(Fake::default()).await;
    let url = exec_url(&t, exec_req(&["print", "x"], false, true, false, false)).await;
    let r = run_stdout(&url, &Transport::spdy_only("v9.channel.k8s.io")).await;
    match r {
        Err(ClientError::Refused { status: 403, body }) => {
            assert!(body.contains("unable to negotiate protocol"), "{body}")
        }
        other => panic!("expected 403, got {other:?}"),
    }
    let url = exec_url(&t, exec_req(&["print", "x"], false, true, false, false)).await;
    let r = client::upgrade(&url, hyper::Method::GET, vec![], None).await;
    assert_eq!(refused_status(&r), Some(400), "{:?}", r.as_ref().err());
    let url = exec_url(&t, exec_req(&["print", "x"], false, true, false, false)).await;
    let r = run_stdout(&url, &Transport::websocket_only("v9.channel.k8s.io")).await;
    assert_eq!(refused_status(&r), Some(403), "{r:?}");
}

#[tokio::test]
async fn terminal_resizes_reach_the_process_over_both_transports() {
    let t = test_node(Fake::default()).await;
    for transport in both_transports() {
        let url = exec_url(&t, exec_req(&["tty-size"], false, true, false, true)).await;
        let mut rc = RemoteCommand::connect(&url, opts(false, true, false, true), &transport, None)
            .await
            .unwrap();
        rc.resize(TerminalSize {
            width: 100,
            height: 40,
        })
        .await
        .unwrap();
        let mut stdout = rc.take_stdout().unwrap();
        assert_eq!(&stdout.recv().await.unwrap()[..], b"40 100\n");
        rc.resize(TerminalSize {
            width: 120,
            height: 50,
        })
        .await
        .unwrap();
        assert_eq!(&stdout.recv().await.unwrap()[..], b"50 120\n");
        let result = rc.wait().await;
        assert_eq!(result.status.exit_code(), Some(0), "{transport:?}");
    }
}

#[tokio::test]
async fn large_output_arrives_whole_over_both_transports() {
    let t = test_node(Fake::default()).await;
    let expected: Vec<u8> = (0..256u32)
        .flat_map(|i| std::iter::repeat_n((i % 251) as u8, 4096))
        .collect();
    for transport in both_transports() {
        let url = exec_url(&t, exec_req(&["big"], false, true, false, false)).await;
        let result = run_stdout(&url, &transport).await.unwrap();
        assert_eq!(result.stdout.len(), expected.len(), "{transport:?}");
        assert!(result.stdout == expected, "{transport:?}: bytes differ");
        assert_eq!(result.status.exit_code(), Some(0));
    }
}

#[tokio::test]
async fn backend_errors_are_reported_as_internal_errors() {
    let t = test_node(Fake::default()).await;
    let url = exec_url(&t, exec_req(&["no-such"], false, true, false, false)).await;
    let result = run_stdout(&url, &Transport::spdy_only("v4.channel.k8s.io"))
        .await
        .unwrap();
    let status: ApiStatus = serde_json::from_slice(&result.status.raw).unwrap();
    assert_eq!(status.reason, "InternalError");
    assert_eq!(status.code, 500);
    assert!(
        status
            .message
            .contains("error executing command in container: no such command"),
        "{}",
        status.message
    );
    assert_eq!(result.status.exit_code(), None);
}

#[tokio::test]
async fn attach_echoes_stdin() {
    let t = test_node(Fake::default()).await;
    for transport in both_transports() {
        let req = AttachRequest {
            container_id: "c1".into(),
            stdin: true,
            stdout: true,
            ..Default::default()
        };
        let url = attach(&t.node, req).await.unwrap().url;
        assert!(url.contains("/attach/"));
        let result = client::run(
            &url,
            opts(true, true, false, false),
            &transport,
            Some(b"attached\n"),
            None,
        )
        .await
        .unwrap();
        assert_eq!(result.stdout, b"attached\n");
        assert_eq!(result.status.raw, br#"{"metadata":{},"status":"Success"}"#);
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_client_that_disconnects_mid_exec_cancels_it_and_frees_the_session() {
    let t = test_node(Fake::default()).await;
    for transport in both_transports() {
        let before = t.fake.gone.load(Ordering::SeqCst);
        let url = exec_url(&t, exec_req(&["wait-gone"], true, true, true, false)).await;
        let mut rc = RemoteCommand::connect(&url, opts(true, true, true, false), &transport, None)
            .await
            .unwrap();
        rc.write_stdin(b"partial input").await.unwrap();
        wait_for("the exec to start", || {
            t.fake.running.load(Ordering::SeqCst) == 1
        })
        .await;
        drop(rc);
        wait_for("the backend to see the client go", || {
            t.fake.gone.load(Ordering::SeqCst) == before + 1
        })
        .await;
        let streaming = &t.node.streaming;
        wait_for("the session to end", || streaming.sessions_in_use() == 0).await;
        assert_eq!(t.fake.running.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test]
async fn a_client_that_upgrades_and_leaves_frees_the_session() {
    let t = test_node(Fake::default()).await;
    let url = exec_url(&t, exec_req(&["print", "x"], false, true, false, false)).await;
    let up = client::spdy_upgrade(&url, &["v4.channel.k8s.io"], None)
        .await
        .unwrap();
    let streaming = &t.node.streaming;
    assert_eq!(streaming.sessions_in_use(), 1);
    drop(up);
    wait_for("the session to end", || streaming.sessions_in_use() == 0).await;
}

/// A network namespace made for one test, deleted on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn new(tag: &str) -> TestNetns {
        let name = format!("berth-stream-test-{}-{tag}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(status.success(), "ip netns add {name} failed (root needed)");
        let ns = TestNetns { name };
        let status = Command::new("ip")
            .args(["-n", &ns.name, "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(status.success());
        ns
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A TCP echo server inside a namespace; stops on drop.
struct Echo {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    async fn start(netns: &Path) -> Echo {
        let listener = netns::bind_in_netns(netns, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                conns.spawn(async move {
                    let (mut r, mut w) = sock.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Echo { port, task }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A node whose pods' network namespace is a fresh one named `name` with an echo listener
/// in it; the namespace lasts as long as the first value returned.
async fn echo_node(name: &str) -> (TestNetns, Echo, TestNode) {
    let ns = TestNetns::new(name);
    let echo = Echo::start(&ns.path()).await;
    let t = test_node(Fake {
        netns: Some(ns.path()),
        ..Fake::default()
    })
    .await;
    (ns, echo, t)
}

/// A port nothing listens on inside the namespace (it has no listener but the echo).
fn closed_port(echo: &Echo) -> u16 {
    if echo.port == 1 { 2 } else { 1 }
}

#[tokio::test]
async fn spdy_port_forward_reaches_a_listener_inside_the_pod_namespace() {
    let (_ns, echo, t) = echo_node("spdy").await;
    let req = PortForwardRequest {
        pod_sandbox_id: "pod-1".into(),
        port: vec![i32::from(echo.port)],
    };
    let url = port_forward(&t.node, req).await.unwrap().url;
    let mut pf = SpdyPortForward::connect(&url, None).await.unwrap();

    // Two connections at once, each echoing its own bytes.
    let mut a = pf.open(echo.port).await.unwrap();
    let mut b = pf.open(echo.port).await.unwrap();
    a.writer.send(Bytes::from_static(b"first ")).await.unwrap();
    b.writer
        .send(Bytes::from(vec![7u8; 200_000]))
        .await
        .unwrap();
    a.writer
        .send(Bytes::from_static(b"connection"))
        .await
        .unwrap();
    a.writer.finish();
    b.writer.finish();
    let (got_a, got_b) = tokio::join!(a.reader.read_to_end(1 << 20), b.reader.read_to_end(1 << 20));
    assert_eq!(got_a, b"first connection");
    assert_eq!(got_b, vec![7u8; 200_000]);
    assert!(a.error.read_to_end(4096).await.is_empty());
    assert!(b.error.read_to_end(4096).await.is_empty());

    // A closed port: the error stream says so, the data stream just ends.
    let port = closed_port(&echo);
    let mut c = pf.open(port).await.unwrap();
    let error = String::from_utf8(c.error.read_to_end(4096).await).unwrap();
    let v: serde_json::Value = serde_json::from_str(error.trim()).unwrap();
    assert_eq!(v["closeConnection"], true);
    let message = v["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "error forwarding port {port} to pod pod-1, uid : "
        )),
        "{message}"
    );
    assert!(message.contains("Connection refused"), "{message}");
    assert!(c.reader.read_to_end(4096).await.is_empty());

    // The session still works after a failed connection.
    let mut d = pf.open(echo.port).await.unwrap();
    d.writer.send(Bytes::from_static(b"again")).await.unwrap();
    d.writer.finish();
    assert_eq!(d.reader.read_to_end(4096).await, b"again");
    pf.close().await;
}

#[tokio::test]
async fn websocket_port_forward_serves_the_requested_ports() {
    let (_ns, echo, t) = echo_node("ws").await;
    let closed = closed_port(&echo);
    for protocol in ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"] {
        let req = PortForwardRequest {
            pod_sandbox_id: "pod-1".into(),
            port: vec![i32::from(echo.port), i32::from(closed)],
        };
        let url = port_forward(&t.node, req).await.unwrap().url;
        let mut pf = WsPortForward::connect(&url, &[echo.port, closed], protocol, None)
            .await
            .unwrap();
        pf.send(0, b"through websocket").await.unwrap();
        let mut got = Vec::new();
        while got.len() < 17 {
            got.extend_from_slice(&pf.recv(0).await.unwrap());
        }
        assert_eq!(got, b"through websocket", "{protocol}");
        let error = pf.error(1).await.unwrap();
        assert!(
            error.starts_with(&format!("error forwarding port {closed} to pod pod-1")),
            "{error}"
        );
        assert!(error.contains("Connection refused"), "{error}");
    }
}

#[tokio::test]
async fn port_forward_to_a_host_network_pod_dials_the_daemons_namespace() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"host says hi").await.unwrap();
    });
    let t = test_node(Fake::default()).await;
    let req = PortForwardRequest {
        pod_sandbox_id: "host-pod".into(),
        port: vec![],
    };
    let url = port_forward(&t.node, req).await.unwrap().url;
    let mut pf = SpdyPortForward::connect(&url, None).await.unwrap();
    let mut conn = pf.open(port).await.unwrap();
    conn.writer.finish();
    assert_eq!(conn.reader.read_to_end(4096).await, b"host says hi");
    server.await.unwrap();
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn tls_serves_https_urls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=berth-test-ca",
    ]);
    openssl(&args, d);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&args, d);
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
        d,
    );
    let config = StreamingConfig {
        address: "127.0.0.1:0".into(),
        tls_cert_file: d.join("cert.pem").display().to_string(),
        tls_key_file: d.join("key.pem").display().to_string(),
    };
    let t = test_node_with(Fake::default(), config).await;
    let url = exec_url(
        &t,
        exec_req(&["print", "secret"], false, true, false, false),
    )
    .await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let tls = ClientTls::from_ca_pem(&d.join("ca.pem")).unwrap();
    let result = client::run(
        &url,
        opts(false, true, false, false),
        &Transport::spdy_only("v4.channel.k8s.io"),
        None,
        Some(&tls),
    )
    .await
    .unwrap();
    assert_eq!(result.stdout, b"secret");

    // A certificate without its key is a configuration error.
    let half = StreamingConfig {
        address: "127.0.0.1:0".into(),
        tls_cert_file: d.join("cert.pem").display().to_string(),
        tls_key_file: String::new(),
    };
    let err = Streaming::new().start(&half).await.err().unwrap();
    assert!(matches!(err, ServeError::Tls(_)), "{err}");
    let missing = StreamingConfig {
        address: "127.0.0.1:0".into(),
        tls_cert_file: d.join("nope.pem").display().to_string(),
        tls_key_file: d.join("key.pem").display().to_string(),
    };
    let err = Streaming::new().start(&missing).await.err().unwrap();
    assert!(err.to_string().contains("nope.pem"), "{err}");
}

#[tokio::test]
async fn a_bad_address_fails_to_start_and_a_server_starts_once() {
    let bad = StreamingConfig {
        address: "not an address".into(),
        ..StreamingConfig::default()
    };
    let err = Streaming::new().start(&bad).await.err().unwrap();
    assert!(matches!(err, ServeError::Bind { .. }), "{err}");
    let s = Streaming::new();
    let _server = s.start(&StreamingConfig::default()).await.unwrap();
    assert!(matches!(
        s.start(&StreamingConfig::default()).await.err().unwrap(),
        ServeError::AlreadyStarted
    ));
}

#[tokio::test]
async fn a_raw_spdy_client_sees_replies_and_a_goaway() {
    // Drives the server with hand-made frames, as a peer with another implementation would.
    use berth_cri::streaming::spdy::frame::{self, Frame, FrameDecoder};
    use berth_cri::streaming::spdy::headers::{HeaderCompressor, HeaderDecompressor};
    let t = test_node(Fake::default()).await;
    let url = exec_url(&t, exec_req(&["print", "raw"], false, true, false, false)).await;
    let mut io = client::spdy_upgrade(&url, &["v4.channel.k8s.io"], None)
        .await
        .unwrap()
        .io;
    let mut comp = HeaderCompressor::new();
    let mut out = bytes::BytesMut::new();
    for (id, kind) in [(1u32, "error"), (3, "stdout")] {
        let block = comp
            .compress(&vec![("streamType".to_string(), kind.to_string())])
            .unwrap();
        frame::encode(
            &Frame::SynStream {
                stream_id: id,
                associated_id: 0,
                priority: 0,
                flags: frame::FLAG_FIN,
                header_block: Bytes::from(block),
            },
            &mut out,
        );
    }
    io.write_all(&out).await.unwrap();
    let mut dec = FrameDecoder::new(1 << 20, 1 << 20);
    let mut decomp = HeaderDecompressor::new(1 << 20);
    let mut buf = bytes::BytesMut::new();
    let mut replies = Vec::new();
    let mut stdout = Vec::new();
    let mut error = Vec::new();
    let mut goaway = false;
    while !goaway {
        let n = tokio::time::timeout(Duration::from_secs(5), io.read_buf(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed before GOAWAY");
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            match f {
                Frame::SynReply {
                    stream_id,
                    header_block,
                    ..
                } => {
                    assert!(decomp.decompress(&header_block).unwrap().is_empty());
                    replies.push(stream_id);
                }
                Frame::Data {
                    stream_id: 3, data, ..
                } => stdout.extend_from_slice(&data),
                Frame::Data {
                    stream_id: 1, data, ..
                } => error.extend_from_slice(&data),
                Frame::GoAway {
                    last_good_stream_id,
                    status,
                } => {
                    assert_eq!((last_good_stream_id, status), (3, frame::goaway::OK));
                    goaway = true;
                }
                _ => {}
            }
        }
    }
    assert_eq!(replies, vec![1, 3]);
    assert_eq!(stdout, b"raw");
    assert_eq!(error, br#"{"metadata":{},"status":"Success"}"#);
}

#[tokio::test]
async fn port_forward_streams_without_request_ids_pair_by_stream_id() {
    use berth_cri::streaming::spdy::{Role, Session, SessionConfig};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        buf.reverse();
        s.write_all(&buf).await.unwrap();
    });
    let t = test_node(Fake::default()).await;
    let req = PortForwardRequest {
        pod_sandbox_id: "host-pod".into(),
        port: vec![],
    };
    let url = port_forward(&t.node, req).await.unwrap().url;
    let up = client::spdy_upgrade(&url, &["portforward.k8s.io"], None)
        .await
        .unwrap();
    let (session, _incoming) = Session::start(up.io, Role::Client, SessionConfig::default());
    let h = |t: &str| {
        vec![
            ("streamtype".to_string(), t.to_string()),
            ("port".to_string(), port.to_string()),
        ]
    };
    // Old clients: error stream n, data stream n+2, no requestID.
    let mut error = session.open(h("error"), true).await.unwrap();
    let mut data = session.open(h("data"), false).await.unwrap();
    assert_eq!((error.id, data.id), (1, 3));
    data.writer.send(Bytes::from_static(b"abc")).await.unwrap();
    data.writer.finish();
    assert_eq!(data.reader.read_to_end(4096).await, b"cba");
    assert!(error.reader.read_to_end(4096).await.is_empty());
}
