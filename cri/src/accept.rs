//! What the daemon's HTTP servers (metrics, streaming) share: accepting a bounded number of
//! TCP connections at a time, backing off when `accept(2)` fails, serving HTTP/1.1 on each
//! until the server shuts down, and the handle that shuts it down when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::HttpService;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How long to wait after a failed `accept(2)` before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A listener that hands out at most `limit` connections at once.
pub(crate) struct Acceptor {
    listener: TcpListener,
    connections: Arc<Semaphore>,
    /// The server's name in log lines.
    server: &'static str,
}

impl Acceptor {
    /// Accepts on `listener` for the server called `server`, `limit` connections at most.
    pub(crate) fn new(listener: TcpListener, limit: usize, server: &'static str) -> Self {
        Acceptor {
            listener,
            connections: Arc::new(Semaphore::new(limit)),
            server,
        }
    }

    /// The next connection with the permit that counts it (held until the connection ends),
    /// or `None` once `shutdown` is cancelled. A connection over the limit is closed at once.
    pub(crate) async fn next(
        &self,
        shutdown: &CancellationToken,
    ) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        let server = self.server;
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = shutdown.cancelled() => return None,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "{server}: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            match self.connections.clone().try_acquire_owned() {
                Ok(permit) => return Some((tcp, peer, permit)),
                Err(_) => tracing::warn!(%peer, "{server}: too many connections, closing one"),
            }
        }
    }
}

/// Serves HTTP/1.1 requests on `io` (from `peer`) with `service` until the client closes
/// the connection or `shutdown` is cancelled; then the request in flight is answered first.
/// A client must send its headers within `header_timeout`. A response may upgrade the
/// connection (the streaming protocols do; the metrics endpoint never answers 101).
pub(crate) async fn serve_http1<IO, S>(
    io: IO,
    peer: SocketAddr,
    service: S,
    header_timeout: Duration,
    shutdown: &CancellationToken,
    server: &'static str,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: HttpService<Incoming, ResBody = Full<Bytes>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = &mut conn => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "{server}: connection error");
            }
        }
        _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
}

/// A server accepting in the background; dropping this handle stops its listener and every
/// connection it serves.
pub struct Serving {
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Serving {
    /// The handle of a server listening on `addr` until `shutdown` is cancelled.
    pub(crate) fn new(addr: SocketAddr, shutdown: CancellationToken) -> Self {
        Serving { addr, shutdown }
    }

    /// The address the server listens on (the port chosen when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
