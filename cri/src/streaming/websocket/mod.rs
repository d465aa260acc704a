//! WebSocket connections and the Kubernetes channel protocols on top of them
//! (`channel.k8s.io`, `base64.channel.k8s.io` and their `v4.`/`v5.` variants): every message
//! starts with the number of the channel it belongs to.

pub mod frame;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::conn::{self, Activity, Encoded, Read, WriterEnd};
use frame::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, WsDecoder};

/// The GUID RFC 6455 appends to the client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Bytes of messages queued for the writer before senders wait.
const QUEUE_BYTES: usize = 256 * 1024;

/// The `Sec-WebSocket-Accept` value answering a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Which end this is: clients mask what they send, servers require masking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsRole {
    /// Masks outgoing frames.
    Client,
    /// Requires masked incoming frames.
    Server,
}

/// A complete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (the base64 channel protocols).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// The message's bytes.
    pub fn data(&self) -> &Bytes {
        match self {
            Message::Text(b) | Message::Binary(b) => b,
        }
    }
}

/// Limits of one connection.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// The largest message accepted, fragments included.
    pub max_message: usize,
    /// The connection closes after this long without a frame in either direction.
    pub idle_timeout: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_message: 4 << 20,
            idle_timeout: Duration::from_secs(4 * 3600),
        }
    }
}

/// The owner's handle on a connection; dropping it closes the connection at once.
pub struct WsConn {
    shared: Arc<Shared>,
}

/// Sends messages; cheap to clone.
#[derive(Clone)]
pub struct WsSender {
    shared: Arc<Shared>,
}

/// Receives messages in order; `None` after the peer closed or the connection ended.
pub struct WsReceiver {
    rx: mpsc::Receiver<Message>,
}

struct Shared {
    role: WsRole,
    out: mpsc::UnboundedSender<Out>,
    queue_budget: Arc<Semaphore>,
    closed: CancellationToken,
    close_sent: AtomicBool,
    activity: Activity,
}

enum Out {
    Frame {
        opcode: u8,
        payload: Bytes,
        _permit: Option<OwnedSemaphorePermit>,
    },
    Shutdown(oneshot::Sender<()>),
}

impl WsConn {
    /// Starts reading and writing frames on an upgraded connection.
    pub fn start<IO>(io: IO, role: WsRole, config: WsConfig) -> (WsConn, WsSender, WsReceiver)
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read_half, write_half) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (msg_tx, msg_rx) = mpsc::channel(16);
        let shared = Arc::new(Shared {
            role,
            out: out_tx,
            queue_budget: Arc::new(Semaphore::new(QUEUE_BYTES)),
            closed: CancellationToken::new(),
            close_sent: AtomicBool::new(false),
            activity: Activity::new(),
        });
        tokio::spawn(write_loop(shared.clone(), write_half, out_rx));
        tokio::spawn(read_loop(shared.clone(), read_half, msg_tx, config.clone()));
        tokio::spawn(idle_watch(shared.clone(), config.idle_timeout));
        (
            WsConn {
                shared: shared.clone(),
            },
            WsSender { shared },
            WsReceiver { rx: msg_rx },
        )
    }

    /// A token cancelled when the connection ends.
    pub fn closed(&self) -> CancellationToken {
        self.shared.closed.clone()
    }

    /// Ends the connection gracefully: sends a close frame with `code`, flushes and
    /// half-closes, then waits up to `linger` for the peer to finish.
    pub async fn shutdown(&self, code: u16, linger: Duration) {
        if self.shared.closed.is_cancelled() {
            return;
        }
        self.shared.send_close(code);
        let (tx, rx) = oneshot::channel();
        let _ = self.shared.out.send(Out::Shutdown(tx));
        let closed = self.shared.closed.clone();
        let _ = tokio::time::timeout(linger, async move {
            let _ = rx.await;
            closed.cancelled().await;
        })
        .await;
        self.shared.closed.cancel();
    }
}

impl Drop for WsConn {
    fn drop(&mut self) {
        self.shared.closed.cancel();
    }
}

impl WsSender {
    /// Queues a message, waiting while too many bytes are queued; fails once the connection
    /// is closing.
    pub async fn send(&self, msg: Message) -> io::Result<()> {
        if self.shared.close_sent.load(Ordering::Acquire) || self.shared.closed.is_cancelled() {
            return Err(closed_error());
        }
        let (opcode, payload) = match msg {
            Message::Text(b) => (OP_TEXT, b),
            Message::Binary(b) => (OP_BINARY, b),
        };
        let n = payload.len().clamp(1, QUEUE_BYTES) as u32;
        let permit = tokio::select! {
            p = self.shared.queue_budget.clone().acquire_many_owned(n) => p.map_err(|_| closed_error())?,
            _ = self.shared.closed.cancelled() => return Err(closed_error()),
        };
        self.shared
            .out
            .send(Out::Frame {
                opcode,
                payload,
                _permit: Some(permit),
            })
            .map_err(|_| closed_error())
    }

    /// A token cancelled when the connection ends.
    pub fn closed(&self) -> CancellationToken {
        self.shared.closed.clone()
    }
}

impl WsReceiver {
    /// The next message.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// The next message `codec` can split into its channel and data; the others (empty, bad
    /// base64) are skipped, as kubelet skips them.
    pub async fn recv_channel(&mut self, codec: ChannelCodec) -> Option<(u8, Bytes)> {
        loop {
            if let Some(split) = codec.decode(&self.recv().await?) {
                return Some(split);
            }
        }
    }
}

/// Passes `data` on to the receiver in `slot`; once that receiver is gone the slot is
/// emptied and later data for it is dropped.
pub(crate) async fn forward(slot: &mut Option<mpsc::Sender<Bytes>>, data: Bytes) {
    if let Some(tx) = slot
        && tx.send(data).await.is_err()
    {
        *slot = None;
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "websocket closed")
}

impl Shared {
    fn touch(&self) {
        self.activity.touch();
    }

    fn send_close(&self, code: u16) {
        if !self.close_sent.swap(true, Ordering::AcqRel) {
            let _ = self.out.send(Out::Frame {
                opcode: OP_CLOSE,
                payload: frame::close_payload(code, ""),
                _permit: None,
            });
        }
    }
}

/// WebSocket's side of the shared writer: every message is one final frame, masked when
/// this end is the client.
struct WsEncoder {
    shared: Arc<Shared>,
}

impl conn::Encoder for WsEncoder {
    type Item = Out;

    fn encode(&mut self, item: Out, buf: &mut BytesMut) -> Encoded {
        match item {
            Out::Frame {
                opcode, payload, ..
            } => {
                let mask = match self.shared.role {
                    WsRole::Client => Some(rand::random::<[u8; 4]>()),
                    WsRole::Server => None,
                };
                frame::encode(true, opcode, &payload, mask, buf);
                Encoded::Bytes
            }
            Out::Shutdown(ack) => Encoded::Shutdown(ack),
        }
    }

    fn written(&mut self) {
        self.shared.touch();
    }
}

async fn write_loop<W: AsyncWrite + Send + Unpin + 'static>(
    shared: Arc<Shared>,
    io: W,
    rx: mpsc::UnboundedReceiver<Out>,
) {
    let encoder = WsEncoder {
        shared: shared.clone(),
    };
    if conn::write_loop(io, rx, shared.closed.clone(), encoder).await == WriterEnd::Failed {
        shared.closed.cancel();
    }
}

async fn read_loop<R: AsyncRead + Send + 'static>(
    shared: Arc<Shared>,
    io: R,
    messages: mpsc::Sender<Message>,
    config: WsConfig,
) {
    let mut io = std::pin::pin!(io);
    let mut decoder = WsDecoder::new(config.max_message, shared.role == WsRole::Server);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut partial: Option<(u8, BytesMut)> = None;
    let mut answered = false;
    'outer: loop {
        loop {
            let f = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket: invalid frame, closing");
                    shared.send_close(e.close_code());
                    break 'outer;
                }
            };
            match f.opcode {
                OP_PING => {
                    let _ = shared.out.send(Out::Frame {
                        opcode: OP_PONG,
                        payload: f.payload,
                        _permit: None,
                    });
                }
                OP_PONG => {}
                OP_CLOSE => {
                    let code = if f.payload.len() >= 2 {
                        u16::from_be_bytes([f.payload[0], f.payload[1]])
                    } else {
                        1000
                    };
                    // When this side closed first, the peer's close answers ours, which has
                    // therefore been written: nothing is left to flush.
                    answered = shared.close_sent.load(Ordering::Acquire);
                    shared.send_close(code);
                    break 'outer;
                }
                opcode => {
                    let (kind, mut data) = match (opcode, partial.take()) {
                        (OP_CONTINUATION, Some((kind, mut data))) => {
                            data.extend_from_slice(&f.payload);
                            (kind, data)
                        }
                        (OP_CONTINUATION, None) | (OP_TEXT | OP_BINARY, Some(_)) => {
                            shared.send_close(1002);
                            break 'outer;
                        }
                        (kind, None) => (kind, BytesMut::from(&f.payload[..])),
                        _ => unreachable!("control opcodes are handled above"),
                    };
                    if data.len() > config.max_message {
                        shared.send_close(1009);
                        break 'outer;
                    }
                    if !f.fin {
                        partial = Some((kind, data));
                        continue;
                    }
                    let data = std::mem::take(&mut data).freeze();
                    let msg = if kind == OP_TEXT {
                        Message::Text(data)
                    } else {
                        Message::Binary(data)
                    };
                    let sent = tokio::select! {
                        r = messages.send(msg) => r,
                        _ = shared.closed.cancelled() => return,
                    };
                    if sent.is_err() {
                        // Nobody reads messages any more; keep answering pings and closes.
                    }
                }
            }
        }
        match conn::read_more(&mut io, &mut buf, &shared.closed).await {
            Read::More => shared.touch(),
            Read::Ended => break,
            Read::Closed => return,
        }
    }
    drop(messages);
    if !answered && shared.close_sent.load(Ordering::Acquire) {
        // Let the writer flush the close frame (our reply, or our complaint) first.
        let (tx, rx) = oneshot::channel();
        let _ = shared.out.send(Out::Shutdown(tx));
        let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
    }
    shared.closed.cancel();
}

async fn idle_watch(shared: Arc<Shared>, idle: Duration) {
    if shared.activity.idle(idle, &shared.closed).await {
        tracing::debug!("websocket: connection idle, closing");
        shared.closed.cancel();
    }
}

/// How channel messages are encoded: raw bytes after a channel byte, or (the `base64.`
/// protocols) a channel digit followed by base64 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelCodec {
    /// `[channel, data...]` in binary messages.
    Binary,
    /// `'0'+channel` then base64 of the data, in text messages.
    Base64,
}

impl ChannelCodec {
    /// The codec of a negotiated channel protocol: base64 for the `base64.` ones.
    pub fn for_protocol(protocol: &str) -> ChannelCodec {
        if protocol.contains("base64") {
            ChannelCodec::Base64
        } else {
            ChannelCodec::Binary
        }
    }

    /// Wraps `data` for `channel`.
    pub fn encode(self, channel: u8, data: &[u8]) -> Message {
        match self {
            ChannelCodec::Binary => {
                let mut b = BytesMut::with_capacity(1 + data.len());
                b.extend_from_slice(&[channel]);
                b.extend_from_slice(data);
                Message::Binary(b.freeze())
            }
            ChannelCodec::Base64 => {
                let mut s = String::with_capacity(1 + data.len().div_ceil(3) * 4);
                s.push(char::from(b'0'.wrapping_add(channel)));
                base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
                Message::Text(Bytes::from(s))
            }
        }
    }

    /// Splits a message into its channel and data; `None` for an empty message or bad
    /// base64, which kubelet skips as well.
    pub fn decode(self, msg: &Message) -> Option<(u8, Bytes)> {
        let b = msg.data();
        let (&first, rest) = b.split_first()?;
        match self {
            ChannelCodec::Binary => Some((first, b.slice(1..))),
            ChannelCodec::Base64 => {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .ok()?;
                Some((first.wrapping_sub(b'0'), Bytes::from(data)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn channel_codecs_round_trip() {
        let bin = ChannelCodec::Binary.encode(1, b"foo\n");
        assert_eq!(bin, Message::Binary(Bytes::from_static(b"\x01foo\n")));
        assert_eq!(
            ChannelCodec::Binary.decode(&bin),
            Some((1, Bytes::from_static(b"foo\n")))
        );
        // kubelet's own example: "foo\n" on stdin in base64.
        let text = ChannelCodec::Base64.encode(0, b"foo\n");
        assert_eq!(text, Message::Text(Bytes::from_static(b"0Zm9vCg==")));
        assert_eq!(
            ChannelCodec::Base64.decode(&text),
            Some((0, Bytes::from_static(b"foo\n")))
        );
        assert_eq!(
            ChannelCodec::Base64.decode(&Message::Text("1!!".into())),
            None
        );
        assert_eq!(
            ChannelCodec::Binary.decode(&Message::Binary(Bytes::new())),
            None
        );
        assert_eq!(
            ChannelCodec::Binary.decode(&Message::Binary(Bytes::from_static(&[255, 0]))),
            Some((255, Bytes::from_static(&[0])))
        );
    }

    #[tokio::test]
    async fn messages_pings_fragments_and_close_between_client_and_server() {
        let (a, b) = tokio::io::duplex(4096);
        let (client, csend, mut crecv) = WsConn::start(a, WsRole::Client, WsConfig::default());
        let (server, ssend, mut srecv) = WsConn::start(b, WsRole::Server, WsConfig::default());
        let big = Bytes::from(vec![3u8; 100_000]);
        csend.send(Message::Binary(big.clone())).await.unwrap();
        csend.send(Message::Text("hi".into())).await.unwrap();
        assert_eq!(srecv.recv().await, Some(Message::Binary(big)));
        assert_eq!(srecv.recv().await, Some(Message::Text("hi".into())));
        ssend.send(Message::Binary("back".into())).await.unwrap();
        assert_eq!(crecv.recv().await, Some(Message::Binary("back".into())));

        // A fragmented message with a ping in the middle, written by hand.
        let (raw, b2) = tokio::io::duplex(4096);
        let (_s2, s2send, mut s2recv) = WsConn::start(b2, WsRole::Server, WsConfig::default());
        let mut wire = BytesMut::new();
        frame::encode(false, OP_TEXT, b"he", Some([1, 2, 3, 4]), &mut wire);
        frame::encode(true, OP_PING, b"p", Some([4, 3, 2, 1]), &mut wire);
        frame::encode(true, OP_CONTINUATION, b"llo", Some([7, 7, 7, 7]), &mut wire);
        let (mut raw_r, mut raw_w) = tokio::io::split(raw);
        raw_w.write_all(&wire).await.unwrap();
        assert_eq!(s2recv.recv().await, Some(Message::Text("hello".into())));
        let mut pong = [0u8; 3];
        raw_r.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0x8a, 1, b'p']);
        drop(s2send);

        // Closing: the server's close reaches the client, which answers, and both end.
        let closed = client.closed();
        server.shutdown(1000, Duration::from_secs(5)).await;
        assert_eq!(crecv.recv().await, None);
        tokio::time::timeout(Duration::from_secs(5), closed.cancelled())
            .await
            .unwrap();
        assert!(ssend.send(Message::Text("late".into())).await.is_err());
    }

    #[tokio::test]
    async fn unmasked_client_frames_close_the_connection() {
        let (raw, b) = tokio::io::duplex(4096);
        let (server, _ssend, mut srecv) = WsConn::start(b, WsRole::Server, WsConfig::default());
        let mut wire = BytesMut::new();
        frame::encode(true, OP_BINARY, b"x", None, &mut wire);
        let (mut raw_r, mut raw_w) = tokio::io::split(raw);
        raw_w.write_all(&wire).await.unwrap();
        assert_eq!(srecv.recv().await, None);
        let mut close = [0u8; 4];
        raw_r.read_exact(&mut close).await.unwrap();
        assert_eq!(close, [0x88, 2, 0x03, 0xea]);
        tokio::time::timeout(Duration::from_secs(5), server.closed().cancelled())
            .await
            .unwrap();
    }
}
