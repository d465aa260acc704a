//! The metrics endpoint: plain HTTP/1.1 on `[metrics] address`, answering `GET /metrics`
//! with the exposition and anything else with 404 (or 405 for another method on
//! `/metrics`). Small on purpose: a scraper every few seconds is its only client.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::accept::{Acceptor, Serving, serve_http1};

/// The content type of the OpenMetrics text format, which Prometheus scrapes natively.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The one path served.
pub const PATH: &str = "/metrics";

/// Connections served at once; more are closed on accept. Scrapers keep one each.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Produces the exposition text for one scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on metrics address {address}")]
pub struct BindError {
    /// The configured address.
    pub address: String,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// The running endpoint; dropping it stops it.
pub type MetricsServer = Serving;

/// Binds `address` ("host:port"; port 0 picks a free port), logs the bound address and
/// serves in the background.
pub async fn start(address: &str, render: Render) -> Result<MetricsServer, BindError> {
    let bind_error = |source| BindError {
        address: address.to_owned(),
        source,
    };
    let listener = TcpListener::bind(address).await.map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(accept_loop(listener, render, shutdown.clone()));
    tracing::info!(address = %addr, "metrics endpoint listening");
    Ok(Serving::new(addr, shutdown))
}

async fn accept_loop(listener: TcpListener, render: Render, shutdown: CancellationToken) {
    let acceptor = Acceptor::new(listener, MAX_CONNECTIONS, "metrics");
    while let Some((tcp, peer, permit)) = acceptor.next(&shutdown).await {
        let render = render.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let response = answer(&req, &render);
                async move { Ok::<_, Infallible>(response) }
            });
            serve_http1(tcp, peer, service, HEADER_TIMEOUT, &shutdown, "metrics").await;
        });
    }
}

/// The response to one request; the exposition is rendered only for `GET /metrics`.
fn answer(req: &Request<Incoming>, render: &Render) -> Response<Full<Bytes>> {
    let text = |status, body: &'static str| {
        let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    };
    if req.uri().path() != PATH {
        return text(StatusCode::NOT_FOUND, "404 page not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let mut resp = Response::new(Full::new(Bytes::from(render())));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    resp
}
