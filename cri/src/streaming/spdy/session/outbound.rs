//! The writer side of a session: how queued frames and header blocks become bytes for the
//! shared writer task.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::{HeaderKind, Out, Shared};
use crate::streaming::conn::{self, Encoded, WriterEnd};
use crate::streaming::spdy::frame::{self, Frame};
use crate::streaming::spdy::headers::HeaderCompressor;

/// SPDY's side of the shared writer: frames are encoded as they are, header blocks through
/// the session's one compressor (its state must follow the order frames go out in), and a
/// DATA frame's queue permit is held until the frame is written.
struct SpdyEncoder {
    shared: Arc<Shared>,
    compressor: HeaderCompressor,
    permits: Vec<OwnedSemaphorePermit>,
}

impl conn::Encoder for SpdyEncoder {
    type Item = Out;

    fn encode(&mut self, item: Out, buf: &mut BytesMut) -> Encoded {
        match item {
            Out::Frame(f, permit) => {
                frame::encode(&f, buf);
                self.permits.extend(permit);
            }
            Out::Headers {
                kind,
                stream_id,
                flags,
                headers,
            } => {
                let header_block = match self.compressor.compress(&headers) {
                    Ok(b) => Bytes::from(b),
                    Err(e) => {
                        tracing::warn!(error = %e, "spdy: cannot compress headers");
                        return Encoded::Failed;
                    }
                };
                let f = match kind {
                    HeaderKind::SynStream => Frame::SynStream {
                        stream_id,
                        associated_id: 0,
                        priority: 0,
                        flags,
                        header_block,
                    },
                    HeaderKind::SynReply => Frame::SynReply {
                        stream_id,
                        flags,
                        header_block,
                    },
                };
                frame::encode(&f, buf);
            }
            Out::Shutdown(ack) => return Encoded::Shutdown(ack),
        }
        Encoded::Bytes
    }

    fn written(&mut self) {
        self.shared.touch();
        self.permits.clear();
    }
}

pub(super) async fn write_loop<W: AsyncWrite + Send + Unpin + 'static>(
    shared: Arc<Shared>,
    io: W,
    rx: mpsc::UnboundedReceiver<Out>,
) {
    let encoder = SpdyEncoder {
        shared: shared.clone(),
        compressor: HeaderCompressor::new(),
        permits: Vec::new(),
    };
    if conn::write_loop(io, rx, shared.closed.clone(), encoder).await != WriterEnd::ShutDown {
        shared.close();
    }
}
