//! The client end of the streaming protocols, as kubectl and crictl speak them: exec and
//! attach over SPDY or WebSocket, port forwarding over SPDY or WebSocket. cri's streaming
//! tests and the e2e suite use it against the URLs the Exec, Attach and PortForward RPCs
//! return.

use std::io;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls;

use berth_cri::streaming::TerminalSize;
use berth_cri::streaming::http::HEADER_PROTOCOL_VERSION;
use berth_cri::streaming::remotecommand::channel;
use berth_cri::streaming::spdy::session::{StreamReader, StreamWriter};
use berth_cri::streaming::spdy::{self, OpenError, Role, Session, SessionConfig};
use berth_cri::streaming::status::ApiStatus;
use berth_cri::streaming::websocket::{self, ChannelCodec, WsConfig, WsConn, WsRole, WsSender};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http(s)://host:port/path`.
    #[error("invalid streaming url {0}")]
    Url(String),
    /// TCP connect failed.
    #[error("cannot connect to {addr}")]
    Connect {
        /// host:port.
        addr: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// TLS setup or handshake failed.
    #[error("tls: {0}")]
    Tls(String),
    /// The HTTP exchange failed.
    #[error("http: {0}")]
    Http(String),
    /// The server answered without upgrading.
    #[error("server refused the upgrade with {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The response body.
        body: String,
    },
    /// A stream could not be opened.
    #[error("cannot open stream")]
    Stream(#[from] OpenError),
    /// Reading or writing a stream failed.
    #[error("stream i/o")]
    Io(#[from] io::Error),
}

/// Trust for an `https` streaming server: the CA (or self-signed certificate) that signed it.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl ClientTls {
    /// Trusts the PEM certificates in `path`.
    pub fn from_ca_pem(path: &std::path::Path) -> Result<ClientTls, ClientError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            CertificateDer::pem_file_iter(path).map_err(|e| ClientError::Tls(e.to_string()))?
        {
            roots
                .add(cert.map_err(|e| ClientError::Tls(e.to_string()))?)
                .map_err(|e| ClientError::Tls(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// An upgraded connection and the response headers that came with it.
pub struct Upgraded {
    /// The 101 response's headers.
    pub headers: HeaderMap,
    /// The connection, now speaking the new protocol.
    pub io: TokioIo<hyper::upgrade::Upgraded>,
}

/// Sends an upgrade request for `url` and returns the upgraded connection.
pub async fn upgrade(
    url: &str,
    method: Method,
    headers: Vec<(header::HeaderName, String)>,
    tls: Option<&ClientTls>,
) -> Result<Upgraded, ClientError> {
    let uri: Uri = url.parse().map_err(|_| ClientError::Url(url.into()))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(ClientError::Url(url.into())),
    };
    let host = uri
        .host()
        .ok_or_else(|| ClientError::Url(url.into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addr = format!("{}:{port}", uri.host().unwrap_or_default());
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if https {
        let tls = tls.ok_or_else(|| ClientError::Tls("https needs a trusted CA".into()))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(conn.with_upgrades());
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr)
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::Http(e.to_string()))?;
    for (name, value) in headers {
        let value = HeaderValue::from_str(&value).map_err(|e| ClientError::Http(e.to_string()))?;
        req.headers_mut().append(name, value);
    }
    let mut resp = sender
        .send_request(req)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(ClientError::Refused { status, body });
    }
    let headers = resp.headers().clone();
    let upgraded = hyper::upgrade::on(&mut resp)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    Ok(Upgraded {
        headers,
        io: TokioIo::new(upgraded),
    })
}

/// Which protocol family to speak and the subprotocols to offer, preferred first.
#[derive(Debug, Clone)]
pub enum Transport {
    /// SPDY/3.1.
    Spdy(Vec<String>),
    /// WebSocket.
    WebSocket(Vec<String>),
}

impl Transport {
    /// SPDY offering the protocols kubectl offers for exec and attach.
    pub fn spdy() -> Transport {
        Transport::Spdy(
            [
                "v5.channel.k8s.io",
                "v4.channel.k8s.io",
                "v3.channel.k8s.io",
                "v2.channel.k8s.io",
            ]
            .map(String::from)
            .to_vec(),
        )
    }

    /// WebSocket offering `v5.channel.k8s.io`, as kubectl does.
    pub fn websocket() -> Transport {
        Transport::WebSocket(vec!["v5.channel.k8s.io".into()])
    }

    /// SPDY offering exactly `protocol`.
    pub fn spdy_only(protocol: &str) -> Transport {
        Transport::Spdy(vec![protocol.into()])
    }

    /// WebSocket offering exactly `protocol`.
    pub fn websocket_only(protocol: &str) -> Transport {
        Transport::WebSocket(vec![protocol.into()])
    }
}

/// Upgrades a POST to `url` to SPDY/3.1, offering `protocols` (remotecommand or
/// portforward versions); the connection is left to the caller, raw.
pub async fn spdy_upgrade(
    url: &str,
    protocols: &[&str],
    tls: Option<&ClientTls>,
) -> Result<Upgraded, ClientError> {
    let mut headers = vec![
        (header::CONNECTION, "Upgrade".to_string()),
        (header::UPGRADE, spdy::UPGRADE_TOKEN.to_string()),
    ];
    for p in protocols {
        headers.push((
            header::HeaderName::from_static("x-stream-protocol-version"),
            p.to_string(),
        ));
    }
    upgrade(url, Method::POST, headers, tls).await
}

async fn spdy_connect(
    url: &str,
    protocols: &[String],
    tls: Option<&ClientTls>,
) -> Result<(Session, String), ClientError> {
    let protocols: Vec<&str> = protocols.iter().map(String::as_str).collect();
    let up = spdy_upgrade(url, &protocols, tls).await?;
    let negotiated = up
        .headers
        .get(HEADER_PROTOCOL_VERSION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (session, _incoming) = Session::start(
        up.io,
        Role::Client,
        SessionConfig {
            announce_window: true,
            ..SessionConfig::default()
        },
    );
    Ok((session, negotiated))
}

async fn ws_connect(
    url: &str,
    protocols: &[String],
    tls: Option<&ClientTls>,
) -> Result<(WsConn, WsSender, websocket::WsReceiver, String), ClientError> {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let mut headers = vec![
        (header::CONNECTION, "Upgrade".to_string()),
        (header::UPGRADE, "websocket".to_string()),
        (header::SEC_WEBSOCKET_VERSION, "13".to_string()),
        (header::SEC_WEBSOCKET_KEY, key.clone()),
    ];
    if !protocols.is_empty() {
        headers.push((header::SEC_WEBSOCKET_PROTOCOL, protocols.join(", ")));
    }
    let up = upgrade(url, Method::GET, headers, tls).await?;
    let accept = up
        .headers
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept != websocket::accept_key(&key) {
        return Err(ClientError::Http("wrong Sec-WebSocket-Accept".into()));
    }
    let negotiated = up
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (conn, sender, receiver) = WsConn::start(up.io, WsRole::Client, WsConfig::default());
    Ok((conn, sender, receiver, negotiated))
}

/// Streams the client asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecOptions {
    /// Send input.
    pub stdin: bool,
    /// Receive standard output.
    pub stdout: bool,
    /// Receive standard error.
    pub stderr: bool,
    /// A terminal (no separate stderr).
    pub tty: bool,
}

/// Bytes arriving on one server-to-client stream.
pub enum Output {
    /// A SPDY stream.
    Spdy(StreamReader),
    /// A WebSocket channel.
    Channel(mpsc::UnboundedReceiver<Bytes>),
}

impl Output {
    /// The next non-empty chunk; `None` at the end of the stream.
    pub async fn recv(&mut self) -> Option<Bytes> {
        loop {
            let b = match self {
                Output::Spdy(r) => r.recv().await?,
                Output::Channel(rx) => rx.recv().await?,
            };
            if !b.is_empty() {
                return Some(b);
            }
        }
    }

    /// Everything up to the end of the stream.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(b) = self.recv().await {
            all.extend_from_slice(&b);
        }
        all
    }
}

enum Input {
    Spdy(StreamWriter),
    Ws {
        tx: WsSender,
        codec: ChannelCodec,
        channel: u8,
        v5: bool,
    },
}

impl Input {
    async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Input::Spdy(w) => w.send(Bytes::copy_from_slice(data)).await,
            Input::Ws {
                tx, codec, channel, ..
            } => tx.send(codec.encode(*channel, data)).await,
        }
    }

    async fn close(&mut self) -> io::Result<()> {
        match self {
            Input::Spdy(w) => {
                w.finish();
                Ok(())
            }
            Input::Ws {
                tx,
                codec,
                channel,
                v5: true,
            } => tx.send(codec.encode(channel::CLOSE, &[*channel])).await,
            Input::Ws { .. } => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this protocol cannot close a stream before the connection",
            )),
        }
    }
}

enum Conn {
    Spdy(Session),
    Ws(WsConn),
}

/// The error stream's content once the server is done.
#[derive(Debug, Clone)]
pub struct RemoteStatus {
    /// The bytes as received.
    pub raw: Vec<u8>,
    /// Parsed, for protocols v4 and later.
    pub api: Option<ApiStatus>,
}

impl RemoteStatus {
    /// The command's exit code: 0 for success, the code of a non-zero exit, `None` for other
    /// failures.
    pub fn exit_code(&self) -> Option<i32> {
        match &self.api {
            Some(s) if s.is_success() => Some(0),
            Some(s) => s.exit_code_value(),
            None if self.raw.is_empty() => Some(0),
            None => None,
        }
    }
}

/// What an exec or attach produced.
#[derive(Debug, Clone)]
pub struct ExecResult {
    /// Standard output (or the terminal's output).
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// The outcome.
    pub status: RemoteStatus,
}

/// A connected exec or attach session.
pub struct RemoteCommand {
    protocol: String,
    stdin: Option<Input>,
    resize: Option<Input>,
    stdout: Option<Output>,
    stderr: Option<Output>,
    error: Option<Output>,
    conn: Conn,
}

impl RemoteCommand {
    /// Connects to an exec or attach URL and opens the streams `opts` asks for.
    pub async fn connect(
        url: &str,
        opts: ExecOptions,
        transport: &Transport,
        tls: Option<&ClientTls>,
    ) -> Result<RemoteCommand, ClientError> {
        match transport {
            Transport::Spdy(protocols) => {
                let (session, protocol) = spdy_connect(url, protocols, tls).await?;
                let h = |t: &str| vec![("streamtype".to_string(), t.to_string())];
                // The order kubectl uses: error first, then stdin, stdout, stderr, resize.
                let error = session.open(h("error"), true).await?;
                let stdin = if opts.stdin {
                    Some(session.open(h("stdin"), false).await?)
                } else {
                    None
                };
                let stdout = if opts.stdout {
                    Some(session.open(h("stdout"), true).await?)
                } else {
                    None
                };
                let stderr = if opts.stderr && !opts.tty {
                    Some(session.open(h("stderr"), true).await?)
                } else {
                    None
                };
                let resizable = !matches!(
                    protocol.as_str(),
                    "v2.channel.k8s.io" | "channel.k8s.io" | ""
                );
                let resize = if opts.tty && resizable {
                    Some(session.open(h("resize"), false).await?)
                } else {
                    None
                };
                Ok(RemoteCommand {
                    protocol,
                    stdin: stdin.map(|s| Input::Spdy(s.writer)),
                    resize: resize.map(|s| Input::Spdy(s.writer)),
                    stdout: stdout.map(|s| Output::Spdy(s.reader)),
                    stderr: stderr.map(|s| Output::Spdy(s.reader)),
                    error: Some(Output::Spdy(error.reader)),
                    conn: Conn::Spdy(session),
                })
            }
            Transport::WebSocket(protocols) => {
                let (conn, sender, mut receiver, protocol) =
                    ws_connect(url, protocols, tls).await?;
                let codec = ChannelCodec::for_protocol(&protocol);
                let v5 = protocol.starts_with("v5.");
                let (out_tx, out_rx) = mpsc::unbounded_channel();
                let (err_tx, err_rx) = mpsc::unbounded_channel();
                let (error_tx, error_rx) = mpsc::unbounded_channel();
                tokio::spawn(async move {
                    while let Some((ch, data)) = receiver.recv_channel(codec).await {
                        let _ = match ch {
                            channel::STDOUT => out_tx.send(data),
                            channel::STDERR => err_tx.send(data),
                            channel::ERROR => error_tx.send(data),
                            _ => Ok(()),
                        };
                    }
                });
                let input = |channel| Input::Ws {
                    tx: sender.clone(),
                    codec,
                    channel,
                    v5,
                };
                Ok(RemoteCommand {
                    stdin: opts.stdin.then(|| input(channel::STDIN)),
                    resize: opts.tty.then(|| input(channel::RESIZE)),
                    stdout: opts.stdout.then_some(Output::Channel(out_rx)),
                    stderr: (opts.stderr && !opts.tty).then_some(Output::Channel(err_rx)),
                    error: Some(Output::Channel(error_rx)),
                    protocol,
                    conn: Conn::Ws(conn),
                })
            }
        }
    }

    /// The subprotocol the server chose.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Sends input.
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<(), ClientError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no stdin stream"))?;
        Ok(stdin.send(data).await?)
    }

    /// Closes input: the process reads EOF. Over WebSocket only `v5` can do this.
    pub async fn close_stdin(&mut self) -> Result<(), ClientError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no stdin stream"))?;
        Ok(stdin.close().await?)
    }

    /// Sends a terminal size.
    pub async fn resize(&mut self, size: TerminalSize) -> Result<(), ClientError> {
        let resize = self
            .resize
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no resize stream"))?;
        let json = serde_json::to_vec(&size).map_err(io::Error::other)?;
        Ok(resize.send(&json).await?)
    }

    /// Takes the stdout stream to read it while the command runs.
    pub fn take_stdout(&mut self) -> Option<Output> {
        self.stdout.take()
    }

    /// Takes the stderr stream.
    pub fn take_stderr(&mut self) -> Option<Output> {
        self.stderr.take()
    }

    /// Reads the remaining output and the status until the server ends the session.
    pub async fn wait(mut self) -> ExecResult {
        let mut stdout = self.stdout.take();
        let mut stderr = self.stderr.take();
        let mut error = self.error.take();
        let (stdout, stderr, raw) = tokio::join!(
            read_all(stdout.as_mut()),
            read_all(stderr.as_mut()),
            read_all(error.as_mut())
        );
        let api = if self.protocol.starts_with("v4.") || self.protocol.starts_with("v5.") {
            serde_json::from_slice(&raw).ok()
        } else {
            None
        };
        self.close().await;
        ExecResult {
            stdout,
            stderr,
            status: RemoteStatus { raw, api },
        }
    }

    async fn close(&mut self) {
        match &self.conn {
            Conn::Spdy(s) => s.shutdown(std::time::Duration::from_millis(500)).await,
            Conn::Ws(c) => {
                c.shutdown(1000, std::time::Duration::from_millis(500))
                    .await
            }
        }
    }
}

async fn read_all(output: Option<&mut Output>) -> Vec<u8> {
    match output {
        Some(o) => o.read_to_end().await,
        None => Vec::new(),
    }
}

/// Runs a whole exec or attach: connects, sends `stdin` (then closes it), and collects the
/// output and status.
pub async fn run(
    url: &str,
    opts: ExecOptions,
    transport: &Transport,
    stdin: Option<&[u8]>,
    tls: Option<&ClientTls>,
) -> Result<ExecResult, ClientError> {
    let mut rc = RemoteCommand::connect(url, opts, transport, tls).await?;
    if let Some(input) = stdin {
        rc.write_stdin(input).await?;
        rc.close_stdin().await?;
    }
    Ok(rc.wait().await)
}

/// A port-forwarding session over SPDY; each [`SpdyPortForward::open`] is one connection.
pub struct SpdyPortForward {
    session: Session,
    next_request: u32,
}

/// One forwarded connection: bytes both ways, and the error stream.
pub struct ForwardedConn {
    /// Bytes from the pod's port.
    pub reader: StreamReader,
    /// Bytes to the pod's port; `finish` half-closes.
    pub writer: StreamWriter,
    /// The server's report of a failure (JSON), empty when all went well.
    pub error: StreamReader,
}

impl SpdyPortForward {
    /// Connects to a port-forward URL.
    pub async fn connect(
        url: &str,
        tls: Option<&ClientTls>,
    ) -> Result<SpdyPortForward, ClientError> {
        let (session, protocol) = spdy_connect(url, &["portforward.k8s.io".into()], tls).await?;
        if protocol != "portforward.k8s.io" {
            return Err(ClientError::Http(format!(
                "server chose protocol {protocol:?}"
            )));
        }
        Ok(SpdyPortForward {
            session,
            next_request: 0,
        })
    }

    /// Opens a connection to `port` in the pod (error stream first, as kubectl does).
    pub async fn open(&mut self, port: u16) -> Result<ForwardedConn, ClientError> {
        let id = self.next_request;
        self.next_request += 1;
        let h = |t: &str| {
            vec![
                ("streamtype".to_string(), t.to_string()),
                ("port".to_string(), port.to_string()),
                ("requestid".to_string(), id.to_string()),
            ]
        };
        let error = self.session.open(h("error"), true).await?;
        let data = self.session.open(h("data"), false).await?;
        Ok(ForwardedConn {
            reader: data.reader,
            writer: data.writer,
            error: error.reader,
        })
    }

    /// Ends the session.
    pub async fn close(self) {
        self.session
            .shutdown(std::time::Duration::from_millis(500))
            .await;
    }
}

/// A port-forwarding session over WebSocket, for the ports of the request.
pub struct WsPortForward {
    _conn: WsConn,
    sender: WsSender,
    codec: ChannelCodec,
    data: Vec<mpsc::UnboundedReceiver<Bytes>>,
    errors: Vec<mpsc::UnboundedReceiver<Bytes>>,
}

impl WsPortForward {
    /// Connects to a port-forward URL whose request named `ports` (in order), offering
    /// `protocol` (`v4.channel.k8s.io` or `v4.base64.channel.k8s.io`).
    pub async fn connect(
        url: &str,
        ports: &[u16],
        protocol: &str,
        tls: Option<&ClientTls>,
    ) -> Result<WsPortForward, ClientError> {
        let (conn, sender, mut receiver, negotiated) =
            ws_connect(url, &[protocol.to_string()], tls).await?;
        let codec = ChannelCodec::for_protocol(&negotiated);
        let mut data_tx = Vec::new();
        let mut error_tx = Vec::new();
        let mut data = Vec::new();
        let mut errors = Vec::new();
        for _ in ports {
            let (tx, rx) = mpsc::unbounded_channel();
            data_tx.push(tx);
            data.push(rx);
            let (tx, rx) = mpsc::unbounded_channel();
            error_tx.push(tx);
            errors.push(rx);
        }
        let expected: Vec<u16> = ports.to_vec();
        tokio::spawn(async move {
            // Each channel starts with its port, little-endian.
            let mut prefix_left = vec![2usize; expected.len() * 2];
            while let Some((ch, mut bytes)) = receiver.recv_channel(codec).await {
                let ch = usize::from(ch);
                let Some(left) = prefix_left.get_mut(ch) else {
                    continue;
                };
                let skip = (*left).min(bytes.len());
                *left -= skip;
                let _ = bytes.split_to(skip);
                if bytes.is_empty() {
                    continue;
                }
                let _ = if ch % 2 == 0 {
                    data_tx[ch / 2].send(bytes)
                } else {
                    error_tx[ch / 2].send(bytes)
                };
            }
        });
        Ok(WsPortForward {
            _conn: conn,
            sender,
            codec,
            data,
            errors,
        })
    }

    /// Sends bytes to the `index`th port.
    pub async fn send(&self, index: usize, bytes: &[u8]) -> Result<(), ClientError> {
        Ok(self
            .sender
            .send(self.codec.encode((index * 2) as u8, bytes))
            .await?)
    }

    /// The next bytes from the `index`th port; `None` once the connection ended.
    pub async fn recv(&mut self, index: usize) -> Option<Bytes> {
        self.data.get_mut(index)?.recv().await
    }

    /// The next error message for the `index`th port.
    pub async fn error(&mut self, index: usize) -> Option<String> {
        let b = self.errors.get_mut(index)?.recv().await?;
        Some(String::from_utf8_lossy(&b).into_owned())
    }
}
