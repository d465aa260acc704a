//! Streaming: the Exec, Attach and PortForward RPCs hand out single-use URLs of the streaming
//! HTTP server, which speaks kubelet's streaming protocols (SPDY/3.1 and WebSocket) and runs
//! the work through a [`StreamBackend`] the runtime provides.
//!
//! Layout: [`tokens`] parks requests under tokens, [`http`] serves and upgrades connections,
//! [`spdy`] and [`websocket`] are the transports (their writer task, read step and idle
//! clock are one shared `conn` module), [`remotecommand`] and [`portforward`] the stream
//! layouts on top of them, and [`netns`] dials into a pod's network namespace. The
//! other end, for tests, is `berth-test-support`'s `streaming_client` (under `e2e/support`);
//! the tests that drive this server with it are `cri/tests/streaming.rs`.

pub mod backend;
mod conn;
pub mod http;
pub mod netns;
pub mod portforward;
pub mod remotecommand;
pub mod runtime_backend;
pub mod spdy;
pub mod status;
pub mod tokens;
pub mod websocket;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};

use k8s_cri::v1::*;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::Status;

pub use backend::{OutputWriter, StdinReader, StreamBackend, StreamIo, TerminalSize};
pub use http::ServeError;
pub use tokens::StreamRequest;

use crate::config::StreamingConfig;
use crate::node::Node;
use crate::not_implemented;
use remotecommand::Options;
use tokens::TokenCache;

/// Upgraded streaming sessions served at once.
pub const MAX_SESSIONS: usize = 256;

/// The streaming server's shared state: parked requests, the backend, and the URL base once
/// the server listens. Cheap to clone.
#[derive(Clone)]
pub struct Streaming {
    inner: Arc<Inner>,
}

struct Inner {
    tokens: Arc<TokenCache>,
    backend: Arc<RwLock<Option<Arc<dyn StreamBackend>>>>,
    sessions: Arc<Semaphore>,
    base_url: OnceLock<String>,
}

/// A running streaming server; dropping it stops the listener and ends open sessions.
pub type StreamingServer = crate::accept::Serving;

impl Default for Streaming {
    fn default() -> Self {
        Streaming::new()
    }
}

impl Streaming {
    /// State with no backend and no server yet.
    pub fn new() -> Streaming {
        Streaming {
            inner: Arc::new(Inner {
                tokens: Arc::new(TokenCache::default()),
                backend: Arc::new(RwLock::new(None)),
                sessions: Arc::new(Semaphore::new(MAX_SESSIONS)),
                base_url: OnceLock::new(),
            }),
        }
    }

    /// Registers the runtime's side; until then Exec, Attach and PortForward answer
    /// `Unimplemented`.
    pub fn set_backend(&self, backend: Arc<dyn StreamBackend>) {
        *self
            .inner
            .backend
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(backend);
    }

    /// The registered backend.
    pub fn backend(&self) -> Option<Arc<dyn StreamBackend>> {
        self.inner
            .backend
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Upgraded streaming sessions open now (at most [`MAX_SESSIONS`]).
    pub fn sessions_in_use(&self) -> usize {
        MAX_SESSIONS - self.inner.sessions.available_permits()
    }

    /// The registered backend, or `Unimplemented` for `rpc` while there is none.
    fn backend_for(&self, rpc: &str) -> Result<Arc<dyn StreamBackend>, Status> {
        self.backend().ok_or_else(|| not_implemented(rpc))
    }

    /// `http(s)://host:port` of the running server.
    pub fn base_url(&self) -> Option<&str> {
        self.inner.base_url.get().map(String::as_str)
    }

    /// Binds `[streaming] address` (with TLS when a certificate is configured) and serves in
    /// the background. Call once.
    pub async fn start(&self, config: &StreamingConfig) -> Result<StreamingServer, ServeError> {
        let tls = match (
            config.tls_cert_file.is_empty(),
            config.tls_key_file.is_empty(),
        ) {
            (true, true) => None,
            (false, false) => Some(http::tls_acceptor(
                Path::new(&config.tls_cert_file),
                Path::new(&config.tls_key_file),
            )?),
            _ => {
                return Err(ServeError::Tls(
                    "tls_cert_file and tls_key_file must be set together".into(),
                ));
            }
        };
        let listener = http::bind(&config.address).await?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            address: config.address.clone(),
            source,
        })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", url_host(addr));
        if self.inner.base_url.set(url.clone()).is_err() {
            return Err(ServeError::AlreadyStarted);
        }
        let shutdown = CancellationToken::new();
        let router = http::Router {
            tokens: self.inner.tokens.clone(),
            backend: self.inner.backend.clone(),
            sessions: self.inner.sessions.clone(),
            shutdown: shutdown.clone(),
        };
        tokio::spawn(http::accept_loop(listener, tls, router));
        tracing::info!(url = %url, "streaming server listening");
        Ok(StreamingServer::new(addr, shutdown))
    }

    /// Parks `req` and returns its URL.
    fn issue(&self, path: &str, req: StreamRequest) -> Result<String, Status> {
        let base = self
            .base_url()
            .ok_or_else(|| Status::unavailable("the streaming server is not running"))?;
        let token = self
            .inner
            .tokens
            .insert(req)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        Ok(format!("{base}/{path}/{token}"))
    }
}

/// The host part of a URL for a listening address. An unspecified address (all interfaces)
/// is reached through loopback: kubelet, on the same node, is the client.
fn url_host(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port()).to_string()
}

/// Checks the streams an exec or attach asks for, as kubelet's streaming server does.
fn validate_stdio(container_id: &str, opts: Options) -> Result<(), Status> {
    if container_id.is_empty() {
        return Err(Status::invalid_argument("missing required container_id"));
    }
    if opts.tty && opts.stderr {
        return Err(Status::invalid_argument(
            "tty and stderr cannot both be true",
        ));
    }
    if !opts.stdin && !opts.stdout && !opts.stderr {
        return Err(Status::invalid_argument(
            "one of stdin, stdout, or stderr must be set",
        ));
    }
    Ok(())
}

/// Handles `Exec`.
pub async fn exec(node: &Node, req: ExecRequest) -> Result<ExecResponse, Status> {
    validate_stdio(&req.container_id, Options::from(&req))?;
    if req.cmd.is_empty() || req.cmd[0].is_empty() {
        return Err(Status::invalid_argument(format!(
            "exec in container {}: cmd must not be empty",
            req.container_id
        )));
    }
    let backend = node.streaming.backend_for("Exec")?;
    backend.check_exec(&req.container_id).await?;
    let url = node.streaming.issue("exec", StreamRequest::Exec(req))?;
    Ok(ExecResponse { url })
}

/// Handles `Attach`.
pub async fn attach(node: &Node, req: AttachRequest) -> Result<AttachResponse, Status> {
    validate_stdio(&req.container_id, Options::from(&req))?;
    let backend = node.streaming.backend_for("Attach")?;
    backend.check_attach(&req.container_id, req.stdin).await?;
    let url = node.streaming.issue("attach", StreamRequest::Attach(req))?;
    Ok(AttachResponse { url })
}

/// Handles `PortForward`.
pub async fn port_forward(
    node: &Node,
    req: PortForwardRequest,
) -> Result<PortForwardResponse, Status> {
    if req.pod_sandbox_id.is_empty() {
        return Err(Status::invalid_argument("missing required pod_sandbox_id"));
    }
    if let Some(bad) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
        return Err(Status::invalid_argument(format!(
            "port forward to pod {}: invalid port {bad}",
            req.pod_sandbox_id
        )));
    }
    let backend = node.streaming.backend_for("PortForward")?;
    backend.pod_netns(&req.pod_sandbox_id).await?;
    let url = node
        .streaming
        .issue("portforward", StreamRequest::PortForward(req))?;
    Ok(PortForwardResponse { url })
}
