//! A SPDY/3.1 session over one upgraded connection: a reader task that decodes frames and
//! routes them to streams, a writer task that owns the socket's write half and the header
//! compressor, and handles for the streams in between. This file holds the handles and the
//! state they share; the reader task is `session/inbound.rs`, the writer's frame encoding
//! `session/outbound.rs` (the writer loop itself is the streaming module's `conn`, shared
//! with WebSocket).
//!
//! Flow control: the session always counts both windows (per stream and, as SPDY/3.1 adds, per
//! session), but only holds data back once the peer shows it speaks flow control, by sending
//! SETTINGS_INITIAL_WINDOW_SIZE or a WINDOW_UPDATE. Go's spdystream, which kubectl, crictl and
//! kubelet use, does neither and relies on TCP backpressure; holding back after 64 KiB would
//! stall every one of them. On the receiving side each stream buffers at most one window of
//! bytes: a peer that sends more waits (TCP backpressure), and consumed bytes are granted back
//! with WINDOW_UPDATE.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::frame::{self, FLAG_FIN, Frame, Setting, rst};
use super::headers::Headers;
use crate::streaming::conn::Activity;

mod inbound;
mod outbound;

/// The window both sides start with, per stream and per session.
pub const INITIAL_WINDOW: i64 = 64 * 1024;
/// The largest DATA frame this side sends, and the largest chunk it hands to a reader.
const DATA_CHUNK: usize = 16 * 1024;
/// Bytes of DATA queued for the writer before senders wait.
const QUEUE_BYTES: usize = 256 * 1024;
/// How long a client waits for the SYN_REPLY of a stream it opened.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which end of the connection this session is; it decides stream and ping id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens odd-numbered streams.
    Client,
    /// Opens even-numbered streams and accepts odd ones.
    Server,
}

/// Limits of one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Streams the peer may have open at once; more are refused.
    pub max_streams: usize,
    /// The session closes after this long without a frame in either direction.
    pub idle_timeout: Duration,
    /// The largest control frame accepted.
    pub max_control_len: usize,
    /// The largest decompressed header block accepted.
    pub max_header_bytes: usize,
    /// Whether to announce our receive window with SETTINGS first thing, telling the peer
    /// that this side speaks flow control.
    pub announce_window: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_streams: 256,
            idle_timeout: Duration::from_secs(4 * 3600),
            max_control_len: 1 << 20,
            max_header_bytes: 256 * 1024,
            announce_window: false,
        }
    }
}

/// A stream was reset or the session ended before the stream was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The peer answered with RST_STREAM.
    #[error("peer reset the stream with status {0}")]
    Reset(u32),
    /// No SYN_REPLY in time.
    #[error("no reply to the stream in time")]
    Timeout,
    /// The session is closed or going away.
    #[error("session is closed")]
    Closed,
}

/// The owner's handle on a session. Dropping it closes the session at once; call
/// [`Session::shutdown`] first for a graceful end.
pub struct Session {
    shared: Arc<Shared>,
}

/// Streams the peer opens, in order.
pub struct Incoming {
    rx: mpsc::Receiver<Stream>,
}

/// One stream: its id, the headers it was opened with, and its two halves.
pub struct Stream {
    /// The stream id.
    pub id: u32,
    /// Headers of the SYN_STREAM (or, for streams this side opened, of the SYN_REPLY).
    pub headers: Headers,
    /// What the peer sends.
    pub reader: StreamReader,
    /// What this side sends.
    pub writer: StreamWriter,
}

/// The receiving half of a stream.
pub struct StreamReader {
    id: u32,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Bytes>,
    budget: Arc<Semaphore>,
    unacked: usize,
}

/// The sending half of a stream. Dropping it without [`StreamWriter::finish`] still sends FIN.
pub struct StreamWriter {
    id: u32,
    shared: Arc<Shared>,
    finished: bool,
}

struct Shared {
    role: Role,
    out: mpsc::UnboundedSender<Out>,
    queue_budget: Arc<Semaphore>,
    state: Mutex<State>,
    window_changed: Notify,
    closed: CancellationToken,
    activity: Activity,
    max_streams: usize,
}

struct State {
    streams: HashMap<u32, StreamState>,
    last_remote_id: u32,
    next_local_id: u32,
    next_ping_id: u32,
    pings: HashMap<u32, oneshot::Sender<()>>,
    flow_control: bool,
    initial_send_window: i64,
    session_send_window: i64,
    goaway_received: bool,
    goaway_sent: bool,
    incoming: Option<mpsc::Sender<Stream>>,
}

struct StreamState {
    inbound: Option<mpsc::UnboundedSender<Bytes>>,
    budget: Arc<Semaphore>,
    send_window: i64,
    local_closed: bool,
    remote_closed: bool,
    reply: Option<oneshot::Sender<Result<Headers, OpenError>>>,
}

enum HeaderKind {
    SynStream,
    SynReply,
}

enum Out {
    Frame(Frame, Option<OwnedSemaphorePermit>),
    Headers {
        kind: HeaderKind,
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    Shutdown(oneshot::Sender<()>),
}

impl Session {
    /// Starts a session on `io` and returns its handle and the streams the peer opens.
    pub fn start<IO>(io: IO, role: Role, config: SessionConfig) -> (Session, Incoming)
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read_half, write_half) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (in_tx, in_rx) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            role,
            out: out_tx,
            queue_budget: Arc::new(Semaphore::new(QUEUE_BYTES)),
            state: Mutex::new(State {
                streams: HashMap::new(),
                last_remote_id: 0,
                next_local_id: if role == Role::Client { 1 } else { 2 },
                next_ping_id: if role == Role::Client { 1 } else { 2 },
                pings: HashMap::new(),
                flow_control: false,
                initial_send_window: INITIAL_WINDOW,
                session_send_window: INITIAL_WINDOW,
                goaway_received: false,
                goaway_sent: false,
                incoming: Some(in_tx),
            }),
            window_changed: Notify::new(),
            closed: CancellationToken::new(),
            activity: Activity::new(),
            max_streams: config.max_streams,
        });
        if config.announce_window {
            shared.queue_frame(Frame::Settings {
                flags: 0,
                entries: vec![Setting {
                    flags: 0,
                    id: frame::SETTINGS_INITIAL_WINDOW_SIZE,
                    value: INITIAL_WINDOW as u32,
                }],
            });
        }
        tokio::spawn(outbound::write_loop(shared.clone(), write_half, out_rx));
        tokio::spawn(inbound::read_loop(
            shared.clone(),
            read_half,
            config.clone(),
        ));
        tokio::spawn(idle_watch(shared.clone(), config.idle_timeout));
        (Session { shared }, Incoming { rx: in_rx })
    }

    /// Opens a stream with `headers` and waits for the peer's SYN_REPLY. With `fin`, this side
    /// sends nothing on it.
    pub async fn open(&self, headers: Headers, fin: bool) -> Result<Stream, OpenError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let (id, reader, writer) = {
            let mut st = self.shared.lock();
            if self.shared.closed.is_cancelled() || st.goaway_received || st.goaway_sent {
                return Err(OpenError::Closed);
            }
            let id = st.next_local_id;
            st.next_local_id += 2;
            let (reader, writer) = self
                .shared
                .add_stream(&mut st, id, fin, false, Some(reply_tx));
            // Queued under the lock, so stream ids reach the wire in increasing order.
            self.shared.queue(Out::Headers {
                kind: HeaderKind::SynStream,
                stream_id: id,
                flags: if fin { FLAG_FIN } else { 0 },
                headers: headers.clone(),
            });
            (id, reader, writer)
        };
        let reply = tokio::select! {
            r = reply_rx => r.unwrap_or(Err(OpenError::Closed)),
            _ = tokio::time::sleep(REPLY_TIMEOUT) => Err(OpenError::Timeout),
            _ = self.shared.closed.cancelled() => Err(OpenError::Closed),
        };
        match reply {
            Ok(reply_headers) => Ok(Stream {
                id,
                headers: reply_headers,
                reader,
                writer,
            }),
            Err(e) => {
                let mut writer = writer;
                writer.finished = true;
                self.shared.remove_stream(id);
                Err(e)
            }
        }
    }

    /// Sends a PING and waits for its echo.
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, OpenError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.shared.lock();
            let id = st.next_ping_id;
            st.next_ping_id = st.next_ping_id.wrapping_add(2) & 0x7fff_ffff;
            st.pings.insert(id, tx);
            id
        };
        let sent = Instant::now();
        self.shared.queue_frame(Frame::Ping { id });
        tokio::select! {
            r = rx => r.map(|_| sent.elapsed()).map_err(|_| OpenError::Closed),
            _ = tokio::time::sleep(timeout) => Err(OpenError::Timeout),
            _ = self.shared.closed.cancelled() => Err(OpenError::Closed),
        }
    }

    /// A token cancelled when the session ends, by either side, an error or idleness.
    pub fn closed(&self) -> CancellationToken {
        self.shared.closed.clone()
    }

    /// Ends the session gracefully: resets the streams the peer has not finished, sends
    /// GOAWAY, flushes and half-closes the connection, then waits up to `linger` for the peer
    /// to close its side (closing at once could turn unread bytes into a TCP reset that makes
    /// the peer lose the last frames).
    pub async fn shutdown(&self, linger: Duration) {
        if self.shared.closed.is_cancelled() {
            return;
        }
        let last = {
            let mut st = self.shared.lock();
            st.goaway_sent = true;
            st.incoming = None;
            let open: Vec<u32> = st
                .streams
                .iter()
                .filter(|(_, s)| !s.remote_closed)
                .map(|(id, _)| *id)
                .collect();
            for id in open {
                if let Some(mut s) = st.streams.remove(&id) {
                    s.inbound = None;
                    if let Some(reply) = s.reply.take() {
                        let _ = reply.send(Err(OpenError::Closed));
                    }
                }
                self.shared.queue_frame(Frame::RstStream {
                    stream_id: id,
                    status: rst::CANCEL,
                });
            }
            st.last_remote_id
        };
        self.shared.window_changed.notify_waiters();
        self.shared.queue_frame(Frame::GoAway {
            last_good_stream_id: last,
            status: frame::goaway::OK,
        });
        let (tx, rx) = oneshot::channel();
        self.shared.queue(Out::Shutdown(tx));
        let closed = self.shared.closed.clone();
        let _ = tokio::time::timeout(linger, async move {
            let _ = rx.await;
            closed.cancelled().await;
        })
        .await;
        self.shared.close();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl Incoming {
    /// The next stream the peer opened, not yet replied to; `None` once the session ends.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.rx.recv().await
    }
}

impl Stream {
    /// Accepts a stream the peer opened (SYN_REPLY with no headers, as kubelet sends).
    pub fn reply(&self) {
        self.writer.shared.queue(Out::Headers {
            kind: HeaderKind::SynReply,
            stream_id: self.id,
            flags: 0,
            headers: Vec::new(),
        });
    }

    /// Refuses a stream the peer opened.
    pub fn refuse(mut self, status: u32) {
        self.writer.reset(status);
    }
}

impl StreamReader {
    /// The next bytes the peer sent; `None` after its FIN, a reset or the end of the session.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let data = self.rx.recv().await?;
        let len = data.len();
        self.budget.add_permits(len);
        self.unacked += len;
        if self.unacked as i64 >= INITIAL_WINDOW / 2 {
            let delta = std::mem::take(&mut self.unacked) as u32;
            let open = self
                .shared
                .lock()
                .streams
                .get(&self.id)
                .is_some_and(|s| !s.remote_closed);
            if open {
                self.shared.queue_frame(Frame::WindowUpdate {
                    stream_id: self.id,
                    delta,
                });
            }
            self.shared.queue_frame(Frame::WindowUpdate {
                stream_id: 0,
                delta,
            });
        }
        Some(data)
    }

    /// Reads everything up to the peer's FIN, at most `limit` bytes (the rest is dropped).
    pub async fn read_to_end(&mut self, limit: usize) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(b) = self.recv().await {
            let room = limit.saturating_sub(all.len());
            all.extend_from_slice(&b[..b.len().min(room)]);
        }
        all
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        // Wakes a read loop waiting for room in this stream's buffer: nobody will read it.
        self.budget.close();
    }
}

impl StreamWriter {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends `data`, waiting for window and queue room; fails once the stream is reset or
    /// finished, or the session ends.
    pub async fn send(&mut self, mut data: Bytes) -> io::Result<()> {
        if self.finished {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream finished"));
        }
        while !data.is_empty() {
            let n = self.reserve(data.len().min(DATA_CHUNK)).await?;
            let chunk = data.split_to(n);
            let permit = tokio::select! {
                p = self.shared.queue_budget.clone().acquire_many_owned(n as u32) => {
                    p.map_err(|_| closed_error())?
                }
                _ = self.shared.closed.cancelled() => return Err(closed_error()),
            };
            if self
                .shared
                .out
                .send(Out::Frame(
                    Frame::Data {
                        stream_id: self.id,
                        flags: 0,
                        data: chunk,
                    },
                    Some(permit),
                ))
                .is_err()
            {
                return Err(closed_error());
            }
        }
        Ok(())
    }

    /// Sends FIN: this side will send nothing more. Idempotent.
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let send_fin = {
            let mut st = self.shared.lock();
            match st.streams.get_mut(&self.id) {
                Some(s) if !s.local_closed => {
                    s.local_closed = true;
                    true
                }
                _ => false,
            }
        };
        if send_fin {
            self.shared.queue_frame(Frame::Data {
                stream_id: self.id,
                flags: FLAG_FIN,
                data: Bytes::new(),
            });
            self.shared.remove_if_done(self.id);
        }
    }

    /// Aborts the stream in both directions.
    pub fn reset(&mut self, status: u32) {
        self.finished = true;
        // The removed state (and with it the reader's sender) is dropped under the lock.
        let existed = self.shared.lock().streams.remove(&self.id).is_some();
        if existed {
            self.shared.queue_frame(Frame::RstStream {
                stream_id: self.id,
                status,
            });
            self.shared.window_changed.notify_waiters();
        }
    }

    async fn reserve(&self, want: usize) -> io::Result<usize> {
        loop {
            let notified = self.shared.window_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut guard = self.shared.lock();
                if self.shared.closed.is_cancelled() {
                    return Err(closed_error());
                }
                let st = &mut *guard;
                let Some(s) = st.streams.get_mut(&self.id) else {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "stream was reset",
                    ));
                };
                if s.local_closed {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream finished"));
                }
                let avail = s.send_window.min(st.session_send_window);
                let n = if !st.flow_control {
                    want
                } else if avail > 0 {
                    want.min(avail as usize)
                } else {
                    0
                };
                if n > 0 {
                    s.send_window -= n as i64;
                    st.session_send_window -= n as i64;
                    return Ok(n);
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = self.shared.closed.cancelled() => return Err(closed_error()),
            }
        }
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "spdy session closed")
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queue(&self, out: Out) {
        // A closed writer means a closed session: the frame has nowhere to go.
        let _ = self.out.send(out);
    }

    /// Queues a frame that holds none of the send budget (all but a DATA frame with a
    /// payload).
    fn queue_frame(&self, frame: Frame) {
        self.queue(Out::Frame(frame, None));
    }

    fn touch(&self) {
        self.activity.touch();
    }

    fn close(&self) {
        if self.closed.is_cancelled() {
            return;
        }
        self.closed.cancel();
        let mut st = self.lock();
        // Dropping the stream states ends every reader; dropping the incoming sender breaks the
        // cycle between this state and streams still waiting to be accepted.
        st.streams.clear();
        st.pings.clear();
        st.incoming = None;
        drop(st);
        self.window_changed.notify_waiters();
    }

    /// Records stream `id` in `st` and returns its two halves. `local_closed`: this side
    /// sends nothing (it opened with FIN, or the peer opened a unidirectional stream);
    /// `remote_closed`: the peer sends nothing (it opened with FIN).
    fn add_stream(
        self: &Arc<Self>,
        st: &mut State,
        id: u32,
        local_closed: bool,
        remote_closed: bool,
        reply: Option<oneshot::Sender<Result<Headers, OpenError>>>,
    ) -> (StreamReader, StreamWriter) {
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(INITIAL_WINDOW as usize));
        st.streams.insert(
            id,
            StreamState {
                inbound: (!remote_closed).then_some(tx),
                budget: budget.clone(),
                send_window: st.initial_send_window,
                local_closed,
                remote_closed,
                reply,
            },
        );
        let reader = StreamReader {
            id,
            shared: self.clone(),
            rx,
            budget,
            unacked: 0,
        };
        let writer = StreamWriter {
            id,
            shared: self.clone(),
            finished: local_closed,
        };
        (reader, writer)
    }

    fn remove_stream(&self, id: u32) {
        self.lock().streams.remove(&id);
    }

    fn remove_if_done(&self, id: u32) {
        let mut st = self.lock();
        if st
            .streams
            .get(&id)
            .is_some_and(|s| s.local_closed && s.remote_closed)
        {
            st.streams.remove(&id);
        }
    }

    fn is_peer_id(&self, id: u32) -> bool {
        match self.role {
            Role::Server => id % 2 == 1,
            Role::Client => id.is_multiple_of(2),
        }
    }
}

async fn idle_watch(shared: Arc<Shared>, idle: Duration) {
    if shared.activity.idle(idle, &shared.closed).await {
        tracing::debug!("spdy: session idle, closing");
        shared.close();
    }
}

#[cfg(test)]
mod tests;
