//! The reader side of a session: decodes the peer's frames and routes them to streams, pings
//! and settings, answering protocol errors with GOAWAY.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use super::{DATA_CHUNK, OpenError, Role, SessionConfig, Shared, Stream};
use crate::streaming::conn::{self, Read};
use crate::streaming::spdy::frame::{
    self, FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, FrameDecoder, rst,
};
use crate::streaming::spdy::headers::{HeaderDecompressor, HeaderError, Headers};

pub(super) async fn read_loop<R: AsyncRead + Send + 'static>(
    shared: Arc<Shared>,
    io: R,
    config: SessionConfig,
) {
    let mut io = std::pin::pin!(io);
    let mut decoder = FrameDecoder::new(config.max_control_len, DATA_CHUNK);
    let mut headers = HeaderDecompressor::new(config.max_header_bytes);
    let mut buf = BytesMut::with_capacity(32 * 1024);
    loop {
        let failed = loop {
            match decoder.decode(&mut buf) {
                Ok(Some(f)) => {
                    if let Err(e) = handle_frame(&shared, &mut headers, f).await {
                        tracing::debug!(error = %e, "spdy: ending session");
                        break true;
                    }
                }
                Ok(None) => break false,
                Err(e) => {
                    tracing::debug!(error = %e, "spdy: invalid frame, ending session");
                    break true;
                }
            }
        };
        if failed {
            shared.queue_frame(Frame::GoAway {
                last_good_stream_id: shared.lock().last_remote_id,
                status: frame::goaway::PROTOCOL_ERROR,
            });
            break;
        }
        match conn::read_more(&mut io, &mut buf, &shared.closed).await {
            Read::More => shared.touch(),
            Read::Ended => break,
            Read::Closed => return,
        }
    }
    // Give the writer a moment to put out a GOAWAY before everything closes.
    tokio::task::yield_now().await;
    shared.close();
}

async fn handle_frame(
    shared: &Arc<Shared>,
    decompressor: &mut HeaderDecompressor,
    f: Frame,
) -> Result<(), HeaderError> {
    match f {
        Frame::SynStream {
            stream_id,
            flags,
            header_block,
            ..
        } => {
            let headers = decompressor.decompress(&header_block)?;
            accept_stream(shared, stream_id, flags, headers);
        }
        Frame::SynReply {
            stream_id,
            flags,
            header_block,
        } => {
            let headers = decompressor.decompress(&header_block)?;
            let mut st = shared.lock();
            if let Some(s) = st.streams.get_mut(&stream_id) {
                if let Some(reply) = s.reply.take() {
                    let _ = reply.send(Ok(headers));
                }
                if flags & FLAG_FIN != 0 {
                    s.remote_closed = true;
                    s.inbound = None;
                }
            }
            drop(st);
            shared.remove_if_done(stream_id);
        }
        Frame::Headers {
            stream_id,
            flags,
            header_block,
        } => {
            // Decompressed even though unused: the zlib context must see every block.
            decompressor.decompress(&header_block)?;
            if flags & FLAG_FIN != 0 {
                remote_finished(shared, stream_id);
            }
        }
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            deliver(shared, stream_id, data).await;
            if flags & FLAG_FIN != 0 {
                remote_finished(shared, stream_id);
            }
        }
        Frame::RstStream { stream_id, status } => {
            let removed = shared.lock().streams.remove(&stream_id);
            if let Some(mut s) = removed {
                s.inbound = None;
                if let Some(reply) = s.reply.take() {
                    let _ = reply.send(Err(OpenError::Reset(status)));
                }
            }
            shared.window_changed.notify_waiters();
        }
        Frame::Settings { entries, .. } => {
            let mut st = shared.lock();
            for e in entries {
                if e.id == frame::SETTINGS_INITIAL_WINDOW_SIZE && e.value <= 0x7fff_ffff {
                    st.flow_control = true;
                    let delta = i64::from(e.value) - st.initial_send_window;
                    st.initial_send_window = i64::from(e.value);
                    for s in st.streams.values_mut() {
                        s.send_window += delta;
                    }
                }
            }
            drop(st);
            shared.window_changed.notify_waiters();
        }
        Frame::Ping { id } => {
            let ours = (id % 2 == 1) == (shared.role == Role::Client);
            if ours {
                if let Some(tx) = shared.lock().pings.remove(&id) {
                    let _ = tx.send(());
                }
            } else {
                shared.queue_frame(Frame::Ping { id });
            }
        }
        Frame::GoAway { .. } => {
            shared.lock().goaway_received = true;
        }
        Frame::WindowUpdate { stream_id, delta } => {
            if delta > 0 {
                let mut st = shared.lock();
                st.flow_control = true;
                if stream_id == 0 {
                    st.session_send_window += i64::from(delta);
                } else if let Some(s) = st.streams.get_mut(&stream_id) {
                    s.send_window += i64::from(delta);
                }
                drop(st);
                shared.window_changed.notify_waiters();
            }
        }
        Frame::Unknown { .. } => {}
    }
    Ok(())
}

fn accept_stream(shared: &Arc<Shared>, id: u32, flags: u8, headers: Headers) {
    let refuse = |status| {
        shared.queue_frame(Frame::RstStream {
            stream_id: id,
            status,
        })
    };
    let mut st = shared.lock();
    if id == 0 || !shared.is_peer_id(id) || id <= st.last_remote_id {
        drop(st);
        refuse(rst::PROTOCOL_ERROR);
        return;
    }
    st.last_remote_id = id;
    let open_by_peer = st.streams.keys().filter(|k| shared.is_peer_id(**k)).count();
    let Some(incoming) = st.incoming.clone() else {
        drop(st);
        refuse(rst::REFUSED_STREAM);
        return;
    };
    if st.goaway_sent || open_by_peer >= shared.max_streams {
        drop(st);
        refuse(rst::REFUSED_STREAM);
        return;
    }
    let fin = flags & FLAG_FIN != 0;
    let unidirectional = flags & FLAG_UNIDIRECTIONAL != 0;
    let (reader, writer) = shared.add_stream(&mut st, id, unidirectional, fin, None);
    drop(st);
    let stream = Stream {
        id,
        headers,
        reader,
        writer,
    };
    if let Err(e) = incoming.try_send(stream) {
        let mut stream = match e {
            mpsc::error::TrySendError::Full(s) | mpsc::error::TrySendError::Closed(s) => s,
        };
        stream.writer.reset(rst::REFUSED_STREAM);
    }
}

async fn deliver(shared: &Arc<Shared>, id: u32, data: Bytes) {
    if data.is_empty() {
        return;
    }
    let target = {
        let st = shared.lock();
        st.streams
            .get(&id)
            .and_then(|s| s.inbound.clone().map(|tx| (tx, s.budget.clone())))
    };
    let Some((tx, budget)) = target else {
        // Data for a stream that is gone (reset, finished, refused): dropped, as spdystream
        // does.
        return;
    };
    let n = data.len() as u32;
    let permit = tokio::select! {
        p = budget.acquire_many(n) => p,
        _ = shared.closed.cancelled() => return,
    };
    // An error means the reader was dropped: nobody wants these bytes.
    if let Ok(p) = permit {
        p.forget();
        if tx.send(data).is_err() {
            budget.add_permits(n as usize);
        }
    }
}

fn remote_finished(shared: &Arc<Shared>, id: u32) {
    {
        let mut st = shared.lock();
        if let Some(s) = st.streams.get_mut(&id) {
            s.remote_closed = true;
            s.inbound = None;
        }
    }
    shared.remove_if_done(id);
}
