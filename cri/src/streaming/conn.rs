//! What the two transports' connections share: a writer task that owns the connection's
//! write half and gathers queued frames into large writes, the reader's step that reads
//! more, and the activity clock that closes a connection left idle. [`spdy::session`](super::spdy::session) and
//! [`websocket`](super::websocket) each say how their frames are encoded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Bytes gathered before they are written; fewer when the queue runs dry first.
const BATCH: usize = 64 * 1024;

/// What an encoder made of one queued item.
pub(crate) enum Encoded {
    /// The item's bytes are in the buffer.
    Bytes,
    /// The owner asks for a graceful end: write what is gathered, flush, half-close, then
    /// acknowledge on this sender.
    Shutdown(oneshot::Sender<()>),
    /// The item cannot be encoded; the connection is broken.
    Failed,
}

/// A transport's side of the writer: how its queued items become bytes.
pub(crate) trait Encoder {
    /// What the transport queues.
    type Item;

    /// Appends `item`'s bytes to `buf`, or says it asks for a shutdown or cannot be encoded.
    fn encode(&mut self, item: Self::Item, buf: &mut BytesMut) -> Encoded;

    /// A gathered batch has been written to the connection.
    fn written(&mut self);
}

/// Why [`write_loop`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterEnd {
    /// The connection was closed, or every sender is gone.
    Ended,
    /// Writing (or encoding) failed.
    Failed,
    /// A shutdown was acknowledged and the connection has since closed.
    ShutDown,
}

/// Writes what `rx` delivers to `io` until `closed` is cancelled, the senders are gone,
/// a write fails or a shutdown is asked for. Items that are already queued go out in one
/// write, up to [`BATCH`] bytes: a stream of small frames costs few system calls.
pub(crate) async fn write_loop<W, E>(
    mut io: W,
    mut rx: mpsc::UnboundedReceiver<E::Item>,
    closed: CancellationToken,
    mut encoder: E,
) -> WriterEnd
where
    W: AsyncWrite + Unpin,
    E: Encoder,
{
    let mut buf = BytesMut::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            biased;
            _ = closed.cancelled() => return WriterEnd::Ended,
            m = rx.recv() => m,
        };
        let Some(mut next) = first else {
            return WriterEnd::Ended;
        };
        let mut shutdown = None;
        loop {
            match encoder.encode(next, &mut buf) {
                Encoded::Bytes => {}
                Encoded::Shutdown(ack) => {
                    shutdown = Some(ack);
                    break;
                }
                Encoded::Failed => return WriterEnd::Failed,
            }
            if buf.len() >= BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(m) => next = m,
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            let written = tokio::select! {
                r = io.write_all(&buf) => r,
                _ = closed.cancelled() => return WriterEnd::Ended,
            };
            if written.is_err() {
                return WriterEnd::Failed;
            }
            buf.clear();
            encoder.written();
        }
        if let Some(ack) = shutdown {
            let _ = io.flush().await;
            let _ = io.shutdown().await;
            let _ = ack.send(());
            // Nothing more can be written; keep this half alive until the connection closes
            // so the read side can still drain.
            closed.cancelled().await;
            return WriterEnd::ShutDown;
        }
    }
}

/// What [`read_more`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// More bytes are in the buffer.
    More,
    /// The peer closed its side, or reading failed.
    Ended,
    /// The connection was closed from this side.
    Closed,
}

/// Reads what the peer sent next into `buf`, with room for at least 16 KiB.
pub(crate) async fn read_more<R>(io: &mut R, buf: &mut BytesMut, closed: &CancellationToken) -> Read
where
    R: AsyncRead + Unpin,
{
    buf.reserve(16 * 1024);
    let n = tokio::select! {
        r = io.read_buf(buf) => r,
        _ = closed.cancelled() => return Read::Closed,
    };
    match n {
        Ok(0) | Err(_) => Read::Ended,
        Ok(_) => Read::More,
    }
}

/// When a connection last read or wrote a frame.
pub(crate) struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    /// A clock whose last activity is now.
    pub(crate) fn new() -> Activity {
        Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Records activity now.
    pub(crate) fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Waits until there has been no activity for `idle` (true), or until `closed` is
    /// cancelled (false).
    pub(crate) async fn idle(&self, idle: Duration, closed: &CancellationToken) -> bool {
        let idle_ms = idle.as_millis() as u64;
        loop {
            let since = self
                .now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Relaxed));
            if since >= idle_ms {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(idle_ms - since)) => {}
                _ = closed.cancelled() => return false,
            }
        }
    }
}
