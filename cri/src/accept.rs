//! What the daemon's HTTP servers (metrics, streaming) share: accepting a bounded number of
//! TCP connections at a time, backing off when `accept(2)` fails, until the server shuts
//! down, and the handle that shuts it down when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
