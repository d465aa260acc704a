//! The streaming HTTP server: accepts connections (optionally TLS), routes
//! `/exec|attach|portforward/<token>`, consumes the token, negotiates the subprotocol and
//! upgrades to SPDY or WebSocket.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use super::backend::StreamBackend;
use super::remotecommand::{self, Command, Options, Target};
use super::tokens::{StreamRequest, TokenCache};
use super::{portforward, spdy, websocket};
use crate::accept::{Acceptor, serve_http1};

/// Request header carrying the client's SPDY subprotocols, and the server's choice.
pub const HEADER_PROTOCOL_VERSION: &str = "X-Stream-Protocol-Version";
/// Response header listing what the server accepts, when negotiation fails.
pub const HEADER_ACCEPTED_PROTOCOLS: &str = "X-Accepted-Stream-Protocol-Versions";

/// TCP connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 512;
/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the streaming server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on streaming address {address}")]
    Bind {
        /// The configured address.
        address: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key could not be read or used.
    #[error("invalid streaming TLS configuration: {0}")]
    Tls(String),
    /// `start` was called twice.
    #[error("the streaming server is already running")]
    AlreadyStarted,
}

/// What every request handler shares.
#[derive(Clone)]
pub struct Router {
    /// Parked requests.
    pub tokens: Arc<TokenCache>,
    /// The runtime side, once registered.
    pub backend: Arc<std::sync::RwLock<Option<Arc<dyn StreamBackend>>>>,
    /// Upgraded sessions allowed at once.
    pub sessions: Arc<Semaphore>,
    /// Cancelled when the server stops: ends every session.
    pub shutdown: CancellationToken,
}

/// Loads a PEM certificate chain and private key into a TLS acceptor.
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServeError::Tls(format!("{}: {e}", cert_file.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "{}: no certificate found",
            cert_file.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| ServeError::Tls(format!("{}: {e}", key_file.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Binds `address` ("host:port"; port 0 picks one).
pub async fn bind(address: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind {
            address: address.to_string(),
            source,
        })
}

/// Accepts connections until `router.shutdown` is cancelled.
pub async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, router: Router) {
    let acceptor = Acceptor::new(listener, MAX_CONNECTIONS, "streaming");
    while let Some((tcp, peer, permit)) = acceptor.next(&router.shutdown).await {
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                Some(tls) => match tokio::time::timeout(TLS_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_connection(stream, peer, router).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "streaming: TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "streaming: TLS handshake timed out"),
                },
                None => serve_connection(tcp, peer, router).await,
            }
        });
    }
}

async fn serve_connection<IO>(io: IO, peer: SocketAddr, router: Router)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let shutdown = router.shutdown.clone();
    let service = hyper::service::service_fn(move |req| {
        let router = router.clone();
        async move { Ok::<_, Infallible>(route(router, req)) }
    });
    serve_http1(io, peer, service, HEADER_TIMEOUT, &shutdown, "streaming").await;
}

/// A response with a complete body.
type HttpResponse = Response<Full<Bytes>>;

/// An accepted upgrade: the 101 response and the negotiated subprotocol.
#[derive(Debug)]
struct Upgrade {
    response: HttpResponse,
    protocol: String,
}

fn plain(status: StatusCode, body: impl Into<String>) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn not_found() -> HttpResponse {
    plain(StatusCode::NOT_FOUND, "404 page not found\n")
}

/// Handles one HTTP request.
fn route(router: Router, mut req: Request<Incoming>) -> HttpResponse {
    if req.method() != Method::GET && req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = match (parts.next(), parts.next()) {
        (Some(kind @ ("exec" | "attach" | "portforward")), Some(token))
            if !token.is_empty() && !token.contains('/') =>
        {
            (kind, token)
        }
        _ => return not_found(),
    };
    // Check capacity before the token is spent, so a busy server does not burn it.
    let Ok(permit) = router.sessions.clone().try_acquire_owned() else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many streaming sessions\n",
        );
    };
    let Some(request) = router.tokens.consume(token) else {
        return not_found();
    };
    let matches = matches!(
        (kind, &request),
        ("exec", StreamRequest::Exec(_))
            | ("attach", StreamRequest::Attach(_))
            | ("portforward", StreamRequest::PortForward(_))
    );
    if !matches {
        return not_found();
    }
    let backend = router
        .backend
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let Some(backend) = backend else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no streaming backend registered\n",
        );
    };
    let websocket = is_websocket(req.headers());
    let (spdy_protocols, ws_protocols) = match &request {
        StreamRequest::PortForward(_) => (portforward::SPDY_PROTOCOLS, portforward::WS_PROTOCOLS),
        _ => (remotecommand::SPDY_PROTOCOLS, remotecommand::WS_PROTOCOLS),
    };
    let handshake = if websocket {
        ws_handshake(req.headers(), ws_protocols)
    } else {
        spdy_handshake(req.headers(), spdy_protocols)
    };
    let Upgrade { response, protocol } = match handshake {
        Ok(upgrade) => upgrade,
        Err(refusal) => return *refusal,
    };
    if let StreamRequest::PortForward(pf) = &request
        && websocket
        && pf.port.is_empty()
    {
        return plain(
            StatusCode::BAD_REQUEST,
            "port forwarding over websocket needs the ports in the request\n",
        );
    }
    tracing::debug!(kind, protocol = %protocol, websocket, "streaming: upgrading");
    let on_upgrade = hyper::upgrade::on(&mut req);
    let shutdown = router.shutdown.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let upgraded = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "streaming: upgrade failed");
                return;
            }
        };
        let session = serve_upgraded(upgraded, websocket, protocol, request, backend);
        tokio::select! {
            _ = session => {}
            _ = shutdown.cancelled() => {}
        }
    });
    response
}

async fn serve_upgraded<IO>(
    io: IO,
    websocket: bool,
    protocol: String,
    request: StreamRequest,
    backend: Arc<dyn StreamBackend>,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (opts, target) = match request {
        StreamRequest::PortForward(pf) => {
            if websocket {
                let ports = pf
                    .port
                    .iter()
                    .filter_map(|p| u16::try_from(*p).ok())
                    .collect();
                portforward::serve_ws(io, protocol, pf.pod_sandbox_id, ports, backend).await;
            } else {
                portforward::serve_spdy(io, pf.pod_sandbox_id, backend).await;
            }
            return;
        }
        StreamRequest::Exec(e) => (
            Options::from(&e),
            Target::Exec {
                container_id: e.container_id,
                cmd: e.cmd,
            },
        ),
        StreamRequest::Attach(a) => (
            Options::from(&a),
            Target::Attach {
                container_id: a.container_id,
            },
        ),
    };
    let command = Command {
        protocol,
        opts,
        target,
        backend,
    };
    if websocket {
        remotecommand::serve_ws(io, command).await;
    } else {
        remotecommand::serve_spdy(io, command).await;
    }
}

/// Values of a comma-separated, possibly repeated header, trimmed, empties dropped.
fn header_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    header_list(headers, name.as_str())
        .iter()
        .any(|v| v.eq_ignore_ascii_case(token))
}

/// Whether the request asks for a WebSocket upgrade.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
        && header_has_token(headers, header::CONNECTION, "upgrade")
}

/// The client's first protocol that the server supports, as kubelet's negotiation picks.
pub fn negotiate(client: &[String], server: &[&str]) -> Option<String> {
    client
        .iter()
        .find(|c| server.contains(&c.as_str()))
        .cloned()
}

fn spdy_handshake(headers: &HeaderMap, supported: &[&str]) -> Result<Upgrade, Box<HttpResponse>> {
    let client = header_list(headers, HEADER_PROTOCOL_VERSION);
    if client.is_empty() {
        return Err(Box::new(plain(
            StatusCode::BAD_REQUEST,
            format!("unable to upgrade: {HEADER_PROTOCOL_VERSION} is required\n"),
        )));
    }
    let Some(protocol) = negotiate(&client, supported) else {
        let mut resp = plain(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {client:?}, server accepts {supported:?}\n"
            ),
        );
        for p in supported {
            resp.headers_mut().append(
                HEADER_ACCEPTED_PROTOCOLS,
                HeaderValue::from_str(p).unwrap_or(HeaderValue::from_static("")),
            );
        }
        return Err(Box::new(resp));
    };
    let upgrade_ok = header_has_token(headers, header::CONNECTION, "upgrade")
        && headers
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("spdy/3.1"));
    if !upgrade_ok {
        return Err(Box::new(plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request\n",
        )));
    }
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::UPGRADE,
        HeaderValue::from_static(spdy::UPGRADE_TOKEN),
    );
    if let Ok(v) = HeaderValue::from_str(&protocol) {
        h.insert(HEADER_PROTOCOL_VERSION, v);
    }
    Ok(Upgrade {
        response: resp,
        protocol,
    })
}

fn ws_handshake(headers: &HeaderMap, supported: &[&str]) -> Result<Upgrade, Box<HttpResponse>> {
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "13");
    if !version_ok {
        let mut resp = plain(StatusCode::BAD_REQUEST, "unsupported websocket version\n");
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(Box::new(resp));
    }
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.trim().is_empty())
    else {
        return Err(Box::new(plain(
            StatusCode::BAD_REQUEST,
            "missing Sec-WebSocket-Key\n",
        )));
    };
    let mut client = header_list(headers, header::SEC_WEBSOCKET_PROTOCOL.as_str());
    if client.is_empty() {
        client.push(String::new());
    }
    let Some(protocol) = negotiate(&client, supported) else {
        return Err(Box::new(plain(
            StatusCode::FORBIDDEN,
            format!(
                "requested protocol(s) are not supported: {client:?}; supports {supported:?}\n"
            ),
        )));
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&websocket::accept_key(key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if !protocol.is_empty()
        && let Ok(v) = HeaderValue::from_str(&protocol)
    {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    Ok(Upgrade {
        response: resp,
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn negotiation_follows_the_clients_preference() {
        let client = vec!["v3.channel.k8s.io".to_string(), "v4.channel.k8s.io".into()];
        assert_eq!(
            negotiate(&client, remotecommand::SPDY_PROTOCOLS).as_deref(),
            Some("v3.channel.k8s.io")
        );
        assert_eq!(
            negotiate(&["x".into()], remotecommand::SPDY_PROTOCOLS),
            None
        );
    }

    #[test]
    fn spdy_handshake_answers_like_kubelet() {
        let ok = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            (
                "x-stream-protocol-version",
                "v4.channel.k8s.io, v3.channel.k8s.io",
            ),
        ]);
        let Upgrade {
            response: resp,
            protocol,
        } = spdy_handshake(&ok, remotecommand::SPDY_PROTOCOLS).unwrap();
        assert_eq!(protocol, "v4.channel.k8s.io");
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(resp.headers()["upgrade"], "SPDY/3.1");
        assert_eq!(
            resp.headers()["x-stream-protocol-version"],
            "v4.channel.k8s.io"
        );

        let wrong = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v9.channel.k8s.io"),
        ]);
        let resp = spdy_handshake(&wrong, remotecommand::SPDY_PROTOCOLS).unwrap_err();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let accepted: Vec<_> = resp
            .headers()
            .get_all(HEADER_ACCEPTED_PROTOCOLS)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(accepted, remotecommand::SPDY_PROTOCOLS);

        let missing = headers(&[("connection", "Upgrade"), ("upgrade", "SPDY/3.1")]);
        assert_eq!(
            spdy_handshake(&missing, remotecommand::SPDY_PROTOCOLS)
                .unwrap_err()
                .status(),
            StatusCode::BAD_REQUEST
        );
        let no_upgrade = headers(&[("x-stream-protocol-version", "portforward.k8s.io")]);
        assert_eq!(
            spdy_handshake(&no_upgrade, portforward::SPDY_PROTOCOLS)
                .unwrap_err()
                .status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn websocket_handshake_picks_a_subprotocol_and_signs_the_key() {
        let req = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            (
                "sec-websocket-protocol",
                "v6.channel.k8s.io, v5.channel.k8s.io",
            ),
        ]);
        assert!(is_websocket(&req));
        let Upgrade {
            response: resp,
            protocol,
        } = ws_handshake(&req, remotecommand::WS_PROTOCOLS).unwrap();
        assert_eq!(protocol, "v5.channel.k8s.io");
        assert_eq!(
            resp.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(
            resp.headers()["sec-websocket-protocol"],
            "v5.channel.k8s.io"
        );

        let none = headers(&[
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "a2V5"),
        ]);
        let Upgrade {
            response: resp,
            protocol,
        } = ws_handshake(&none, remotecommand::WS_PROTOCOLS).unwrap();
        assert_eq!(protocol, "");
        assert!(resp.headers().get("sec-websocket-protocol").is_none());

        let pf_v5 = headers(&[
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "a2V5"),
            ("sec-websocket-protocol", "v5.channel.k8s.io"),
        ]);
        assert_eq!(
            ws_handshake(&pf_v5, portforward::WS_PROTOCOLS)
                .unwrap_err()
                .status(),
            StatusCode::FORBIDDEN
        );
        let old = headers(&[
            ("sec-websocket-version", "8"),
            ("sec-websocket-key", "a2V5"),
        ]);
        assert_eq!(
            ws_handshake(&old, remotecommand::WS_PROTOCOLS)
                .unwrap_err()
                .status(),
            StatusCode::BAD_REQUEST
        );
        assert!(!is_websocket(&headers(&[("upgrade", "websocket")])));
    }
}
