//! Exec and attach sessions: the stream layout of kubelet's remote command protocols over
//! SPDY (`v5`/`v4`/`v3`/`v2.channel.k8s.io`, `channel.k8s.io`) and WebSocket (`v5.`/`v4.`
//! `channel.k8s.io`, `channel.k8s.io`, and the `base64.` variants), and the pumps between those
//! streams and the backend's process.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use k8s_cri::v1::{AttachRequest, ExecRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::backend::{StreamBackend, StreamIo, TerminalSize};
use super::spdy::session::{StreamReader, StreamWriter};
use super::spdy::{self, Role, Session, SessionConfig};
use super::status::ApiStatus;
use super::websocket::{self, ChannelCodec, WsConfig, WsConn, WsRole, WsSender};

/// SPDY subprotocols for exec and attach, newest first. `v5` behaves as `v4` over SPDY (its
/// close signal is WebSocket-only), as in kubelet.
pub const SPDY_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// WebSocket subprotocols for exec and attach (`""`: the client asked for none).
pub const WS_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
    "",
];

/// Channel numbers of the WebSocket protocols.
pub mod channel {
    /// Client to server: the process's input.
    pub const STDIN: u8 = 0;
    /// Server to client: standard output.
    pub const STDOUT: u8 = 1;
    /// Server to client: standard error.
    pub const STDERR: u8 = 2;
    /// Server to client: the status.
    pub const ERROR: u8 = 3;
    /// Client to server: terminal sizes.
    pub const RESIZE: u8 = 4;
    /// v5, client to server: the payload's first byte names a channel the client closed.
    pub const CLOSE: u8 = 255;
}

/// How long the server waits for the client to open its SPDY streams, as kubelet's default.
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the backend may take to return after the client went away.
const BACKEND_GRACE: Duration = Duration::from_secs(10);
/// How long the last output may take to reach the client once the process is done.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for the client to close after the server said goodbye.
pub const LINGER: Duration = Duration::from_secs(2);
/// The biggest unparsed resize message kept.
const RESIZE_BUFFER: usize = 4096;

/// Which streams the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// The client sends input.
    pub stdin: bool,
    /// The client wants standard output.
    pub stdout: bool,
    /// The client wants standard error (never with a TTY).
    pub stderr: bool,
    /// The process gets a terminal.
    pub tty: bool,
}

/// `From<&ExecRequest>` and `From<&AttachRequest>`: both requests carry the same four
/// stream choices.
macro_rules! options_from {
    ($($request:ty),*) => {$(
        impl From<&$request> for Options {
            fn from(req: &$request) -> Options {
                Options {
                    stdin: req.stdin,
                    stdout: req.stdout,
                    stderr: req.stderr,
                    tty: req.tty,
                }
            }
        }
    )*};
}
options_from!(ExecRequest, AttachRequest);

/// What runs behind the streams.
#[derive(Debug, Clone)]
pub enum Target {
    /// A new process in a container.
    Exec {
        /// The container.
        container_id: String,
        /// The command line.
        cmd: Vec<String>,
    },
    /// The container's own stdio.
    Attach {
        /// The container.
        container_id: String,
    },
}

/// One exec or attach to serve: the negotiated protocol, the streams asked for, what runs
/// and the backend that runs it.
pub struct Command {
    /// The negotiated subprotocol.
    pub protocol: String,
    /// The streams the request asked for.
    pub opts: Options,
    /// What runs behind the streams.
    pub target: Target,
    /// The runtime's side.
    pub backend: Arc<dyn StreamBackend>,
}

impl Command {
    /// Runs the command between `streams` and reports its outcome on the error stream, in
    /// the protocol's format.
    async fn run(self, streams: &mut Streams, client_gone: CancellationToken) {
        let format = status_format(&self.protocol);
        let status = run(
            self.backend,
            self.target,
            self.opts.tty,
            streams,
            client_gone,
        )
        .await;
        if let Some(mut error) = streams.error.take() {
            let bytes = match format {
                StatusFormat::Json => status.to_json(),
                StatusFormat::Text => status.to_v1_text(),
            };
            if !bytes.is_empty() {
                let _ = error.send(Bytes::from(bytes)).await;
            }
            error.finish();
        }
    }
}

/// How the outcome is written on the error stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusFormat {
    /// v4 and later: `metav1.Status` JSON.
    Json,
    /// Earlier: the failure message, nothing on success.
    Text,
}

fn status_format(protocol: &str) -> StatusFormat {
    if protocol.starts_with("v4.") || protocol.starts_with("v5.") {
        StatusFormat::Json
    } else {
        StatusFormat::Text
    }
}

/// Where one output stream goes.
enum Sink {
    Spdy(StreamWriter),
    Ws {
        tx: WsSender,
        codec: ChannelCodec,
        channel: u8,
    },
}

impl Sink {
    async fn send(&mut self, data: Bytes) -> std::io::Result<()> {
        match self {
            Sink::Spdy(w) => w.send(data).await,
            Sink::Ws { tx, codec, channel } => tx.send(codec.encode(*channel, &data)).await,
        }
    }

    fn finish(&mut self) {
        if let Sink::Spdy(w) = self {
            w.finish();
        }
    }
}

/// Where one input stream comes from.
enum Source {
    Spdy(StreamReader),
    Channel(mpsc::Receiver<Bytes>),
}

impl Source {
    async fn recv(&mut self) -> Option<Bytes> {
        match self {
            Source::Spdy(r) => r.recv().await,
            Source::Channel(rx) => rx.recv().await,
        }
    }
}

/// The client's streams, whatever the transport.
#[derive(Default)]
struct Streams {
    stdin: Option<Source>,
    stdout: Option<Sink>,
    stderr: Option<Sink>,
    error: Option<Sink>,
    resize: Option<Source>,
}

/// Serves one exec or attach over an upgraded SPDY connection.
pub async fn serve_spdy<IO>(io: IO, command: Command)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (protocol, opts) = (command.protocol.as_str(), command.opts);
    let (session, mut incoming) = Session::start(
        io,
        Role::Server,
        SessionConfig {
            max_streams: 16,
            ..SessionConfig::default()
        },
    );
    let resizable = !matches!(protocol, "v2.channel.k8s.io" | "channel.k8s.io");
    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(opts.tty && resizable);
    let mut streams = Streams::default();
    let mut received = 0;
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while received < expected {
        let stream = tokio::select! {
            s = incoming.accept() => s,
            _ = &mut deadline => {
                tracing::warn!("streaming: timed out waiting for client to create streams");
                return;
            }
        };
        let Some(stream) = stream else {
            return;
        };
        stream.reply();
        let kind = spdy::header(&stream.headers, "streamtype").unwrap_or("");
        let spdy::Stream { reader, writer, .. } = stream;
        match kind {
            "error" => streams.error = Some(Sink::Spdy(writer)),
            "stdin" => streams.stdin = Some(Source::Spdy(reader)),
            "stdout" => streams.stdout = Some(Sink::Spdy(writer)),
            "stderr" => streams.stderr = Some(Sink::Spdy(writer)),
            "resize" if resizable => streams.resize = Some(Source::Spdy(reader)),
            other => {
                tracing::debug!(stream_type = other, "streaming: ignoring unexpected stream");
                continue;
            }
        }
        received += 1;
    }
    // Streams opened from now on are refused.
    drop(incoming);
    command.run(&mut streams, session.closed()).await;
    drop(streams);
    session.shutdown(LINGER).await;
}

/// Serves one exec or attach over an upgraded WebSocket connection.
pub async fn serve_ws<IO>(io: IO, command: Command)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (protocol, opts) = (command.protocol.as_str(), command.opts);
    let (conn, sender, mut receiver) = WsConn::start(io, WsRole::Server, WsConfig::default());
    let codec = ChannelCodec::for_protocol(protocol);
    let v5 = protocol.starts_with("v5.");
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<Bytes>(4);
    let mut stdin_tx = opts.stdin.then_some(stdin_tx);
    let mut resize_tx = opts.tty.then_some(resize_tx);
    let dispatcher = tokio::spawn(async move {
        while let Some((ch, data)) = receiver.recv_channel(codec).await {
            match ch {
                channel::STDIN => websocket::forward(&mut stdin_tx, data).await,
                channel::RESIZE => websocket::forward(&mut resize_tx, data).await,
                channel::CLOSE if v5 => match data.first() {
                    Some(&channel::STDIN) => stdin_tx = None,
                    Some(&channel::RESIZE) => resize_tx = None,
                    _ => {}
                },
                _ => {}
            }
        }
    });
    let sink = |channel| Sink::Ws {
        tx: sender.clone(),
        codec,
        channel,
    };
    let mut streams = Streams {
        stdin: opts.stdin.then(|| Source::Channel(stdin_rx)),
        stdout: opts.stdout.then(|| sink(channel::STDOUT)),
        stderr: opts.stderr.then(|| sink(channel::STDERR)),
        error: Some(sink(channel::ERROR)),
        resize: opts.tty.then(|| Source::Channel(resize_rx)),
    };
    // An empty message on the lowest writable channel tells the client the session is up.
    let first = if opts.stdout {
        channel::STDOUT
    } else if opts.stderr {
        channel::STDERR
    } else {
        channel::ERROR
    };
    let _ = sender.send(codec.encode(first, &[])).await;
    command.run(&mut streams, conn.closed()).await;
    drop(streams);
    dispatcher.abort();
    conn.shutdown(1000, LINGER).await;
}

/// Runs the backend between the streams and returns the outcome to report.
async fn run(
    backend: Arc<dyn StreamBackend>,
    target: Target,
    tty: bool,
    streams: &mut Streams,
    client_gone: CancellationToken,
) -> ApiStatus {
    let mut io = StreamIo {
        stdin: None,
        stdout: None,
        stderr: None,
        resize: None,
        client_gone: client_gone.clone(),
    };
    let mut helpers: Vec<JoinHandle<()>> = Vec::new();
    let mut drains: Vec<JoinHandle<()>> = Vec::new();
    if let Some(src) = streams.stdin.take() {
        let (reader, writer) = tokio::io::duplex(64 * 1024);
        helpers.push(tokio::spawn(pump_in(src, writer)));
        io.stdin = Some(Box::pin(reader));
    }
    if let Some(sink) = streams.stdout.take() {
        let (reader, writer) = tokio::io::duplex(64 * 1024);
        drains.push(tokio::spawn(pump_out(reader, sink)));
        io.stdout = Some(Box::pin(writer));
    }
    if let Some(sink) = streams.stderr.take()
        && !tty
    {
        let (reader, writer) = tokio::io::duplex(64 * 1024);
        drains.push(tokio::spawn(pump_out(reader, sink)));
        io.stderr = Some(Box::pin(writer));
    }
    if let Some(src) = streams.resize.take()
        && tty
    {
        let (tx, rx) = mpsc::channel(4);
        helpers.push(tokio::spawn(decode_resizes(src, tx)));
        io.resize = Some(rx);
    }

    let (work, what) = match target {
        Target::Exec { container_id, cmd } => {
            let cmd_for_status = cmd.clone();
            let b = backend.clone();
            let fut: std::pin::Pin<Box<dyn Future<Output = Result<i32, tonic::Status>> + Send>> =
                Box::pin(async move { b.exec(&container_id, cmd, tty, io).await });
            (fut, Some(cmd_for_status))
        }
        Target::Attach { container_id } => {
            let b = backend.clone();
            let fut: std::pin::Pin<Box<dyn Future<Output = Result<i32, tonic::Status>> + Send>> =
                Box::pin(async move { b.attach(&container_id, tty, io).await.map(|()| 0) });
            (fut, None)
        }
    };
    let mut work = work;
    let result = tokio::select! {
        r = &mut work => r,
        _ = client_gone.cancelled() => {
            match tokio::time::timeout(BACKEND_GRACE, &mut work).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("streaming: backend did not return after the client left");
                    Err(tonic::Status::deadline_exceeded("client went away"))
                }
            }
        }
    };
    // Drops whatever the backend still held of the streams.
    drop(work);
    let drained = async {
        for d in drains.iter_mut() {
            let _ = d.await;
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(DRAIN_TIMEOUT, drained) => {}
        _ = client_gone.cancelled() => {}
    }
    for h in drains.iter().chain(helpers.iter()) {
        h.abort();
    }
    match (result, what) {
        (Ok(0), _) => ApiStatus::success(),
        (Ok(code), Some(cmd)) => ApiStatus::exit_code(&cmd, code),
        (Ok(_), None) => ApiStatus::success(),
        (Err(e), Some(_)) => ApiStatus::internal_error(&format!(
            "error executing command in container: {}",
            e.message()
        )),
        (Err(e), None) => {
            ApiStatus::internal_error(&format!("error attaching to container: {}", e.message()))
        }
    }
}

/// Client input to the process: ends with EOF when the client closes stdin or leaves, or
/// when the process stops reading.
async fn pump_in(mut src: Source, mut to_process: tokio::io::DuplexStream) {
    while let Some(data) = src.recv().await {
        if to_process.write_all(&data).await.is_err() {
            return;
        }
    }
    let _ = to_process.shutdown().await;
}

/// Process output to the client, then the stream's end.
async fn pump_out(mut from_process: tokio::io::DuplexStream, mut sink: Sink) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from_process.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if sink.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
    sink.finish();
}

/// Turns the resize stream's JSON objects into sizes. A malformed stream stops resizing (as
/// in kubelet) but is still drained, so it never holds up the connection.
async fn decode_resizes(mut src: Source, tx: mpsc::Sender<TerminalSize>) {
    let mut buf = BytesMut::new();
    let mut broken = false;
    while let Some(data) = src.recv().await {
        if broken {
            continue;
        }
        buf.extend_from_slice(&data);
        loop {
            match next_size(&buf) {
                Parsed::Size(size, used) => {
                    let _ = buf.split_to(used);
                    if tx.send(size).await.is_err() {
                        broken = true;
                        break;
                    }
                }
                Parsed::Incomplete => break,
                Parsed::Invalid => {
                    broken = true;
                    break;
                }
            }
        }
        if buf.len() > RESIZE_BUFFER {
            broken = true;
        }
        if broken {
            buf.clear();
        }
    }
}

enum Parsed {
    Size(TerminalSize, usize),
    Incomplete,
    Invalid,
}

fn next_size(buf: &[u8]) -> Parsed {
    // Only JSON objects are sizes (serde would also take `[w, h]`; Go's decoder does not).
    match buf.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Parsed::Incomplete,
        Some(b'{') => {}
        Some(_) => return Parsed::Invalid,
    }
    let mut values = serde_json::Deserializer::from_slice(buf).into_iter::<TerminalSize>();
    match values.next() {
        Some(Ok(size)) => Parsed::Size(size, values.byte_offset()),
        Some(Err(e)) if e.is_eof() => Parsed::Incomplete,
        Some(Err(_)) => Parsed::Invalid,
        None => Parsed::Incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_objects_are_parsed_from_a_byte_stream() {
        let data = br#"{"Width":80,"Height":24}{"width":100, "height":40} {"Wid"#;
        let mut at = 0;
        let mut sizes = Vec::new();
        while let Parsed::Size(s, used) = next_size(&data[at..]) {
            sizes.push(s);
            at += used;
        }
        assert_eq!(
            sizes,
            vec![
                TerminalSize {
                    width: 80,
                    height: 24
                },
                TerminalSize {
                    width: 100,
                    height: 40
                }
            ]
        );
        assert!(matches!(next_size(&data[at..]), Parsed::Incomplete));
        assert!(matches!(next_size(b"[1,2]"), Parsed::Invalid));
        assert!(matches!(
            next_size(br#"{"Width":70000,"Height":1}"#),
            Parsed::Invalid
        ));
    }

    #[test]
    fn only_v4_and_v5_report_json() {
        assert_eq!(status_format("v4.channel.k8s.io"), StatusFormat::Json);
        assert_eq!(status_format("v5.channel.k8s.io"), StatusFormat::Json);
        assert_eq!(
            status_format("v4.base64.channel.k8s.io"),
            StatusFormat::Json
        );
        assert_eq!(status_format("v3.channel.k8s.io"), StatusFormat::Text);
        assert_eq!(status_format("channel.k8s.io"), StatusFormat::Text);
        assert_eq!(status_format(""), StatusFormat::Text);
    }

    #[tokio::test]
    async fn resizes_flow_through_a_channel_source() {
        let (tx, rx) = mpsc::channel(4);
        let (size_tx, mut size_rx) = mpsc::channel(4);
        let task = tokio::spawn(decode_resizes(Source::Channel(rx), size_tx));
        tx.send(Bytes::from_static(br#"{"Width":1"#)).await.unwrap();
        tx.send(Bytes::from_static(br#"0,"Height":5}"#))
            .await
            .unwrap();
        assert_eq!(
            size_rx.recv().await,
            Some(TerminalSize {
                width: 10,
                height: 5
            })
        );
        drop(tx);
        task.await.unwrap();
        assert_eq!(size_rx.recv().await, None);
    }
}
