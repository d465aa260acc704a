//! SPDY/3.1 frames on the wire: a decoder that never trusts its input and an encoder.
//!
//! Header blocks stay compressed here: the zlib context belongs to the session, which must
//! feed every block through it in order (see [`super::headers`]). DATA frames are handed out in
//! chunks as their bytes arrive, so a peer's 16 MiB frame never sits in memory whole.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The protocol version carried by every control frame.
pub const VERSION: u16 = 3;
/// Length of every frame header, control or data.
pub const HEADER_LEN: usize = 8;
/// The largest payload a frame's 24-bit length can describe.
pub const MAX_FRAME_LEN: usize = (1 << 24) - 1;

/// FIN: the sender will send nothing more on this stream.
pub const FLAG_FIN: u8 = 0x01;
/// SYN_STREAM only: the stream is half-closed from the start for the receiver's direction.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// SETTINGS only: forget persisted settings.
pub const FLAG_SETTINGS_CLEAR: u8 = 0x01;

/// SETTINGS id of the initial per-stream window size.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// SETTINGS id of the peer's limit of concurrent streams.
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u32 = 4;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

const STREAM_ID_MASK: u32 = 0x7fff_ffff;

/// RST_STREAM status codes (SPDY/3 section 2.6.3).
pub mod rst {
    /// Generic error: the peer broke the protocol.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// A frame for a stream that is not active.
    pub const INVALID_STREAM: u32 = 2;
    /// The stream was refused before any processing (limits, shutdown).
    pub const REFUSED_STREAM: u32 = 3;
    /// The stream is no longer needed.
    pub const CANCEL: u32 = 5;
    /// The endpoint failed on its own.
    pub const INTERNAL_ERROR: u32 = 6;
    /// The peer sent more than its window allowed.
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    /// A frame bigger than the endpoint accepts.
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// GOAWAY status codes.
pub mod goaway {
    /// Normal session teardown.
    pub const OK: u32 = 0;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// The endpoint failed on its own.
    pub const INTERNAL_ERROR: u32 = 2;
}

/// One entry of a SETTINGS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Per-entry flags (persist value, persisted).
    pub flags: u8,
    /// The setting's 24-bit id.
    pub id: u32,
    /// Its value.
    pub value: u32,
}

/// A decoded SPDY frame. Header blocks are still compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// The new stream's id (odd from clients, even from servers).
        stream_id: u32,
        /// The stream this one is associated to, or 0.
        associated_id: u32,
        /// 0 (highest) to 7.
        priority: u8,
        /// [`FLAG_FIN`], [`FLAG_UNIDIRECTIONAL`].
        flags: u8,
        /// The compressed header block.
        header_block: Bytes,
    },
    /// Accepts a stream the peer opened.
    SynReply {
        /// The stream accepted.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// The compressed header block.
        header_block: Bytes,
    },
    /// Aborts a stream.
    RstStream {
        /// The stream aborted.
        stream_id: u32,
        /// One of [`rst`].
        status: u32,
    },
    /// Session parameters.
    Settings {
        /// [`FLAG_SETTINGS_CLEAR`].
        flags: u8,
        /// The entries.
        entries: Vec<Setting>,
    },
    /// A liveness probe; the receiver echoes a peer's ping.
    Ping {
        /// Odd from clients, even from servers.
        id: u32,
    },
    /// The sender will accept no new streams.
    GoAway {
        /// The last stream the sender accepted.
        last_good_stream_id: u32,
        /// One of [`goaway`].
        status: u32,
    },
    /// More headers for a stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// The compressed header block.
        header_block: Bytes,
    },
    /// Grants the peer more send window (stream 0: the whole session, SPDY/3.1).
    WindowUpdate {
        /// The stream, or 0 for the session.
        stream_id: u32,
        /// Bytes added to the window, 1 to 2^31-1.
        delta: u32,
    },
    /// Payload of a stream. The decoder may deliver one DATA frame as several chunks; only
    /// the last carries the frame's FIN.
    Data {
        /// The stream.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// The bytes.
        data: Bytes,
    },
    /// A control frame type this implementation ignores (NOOP, CREDENTIAL, future types).
    Unknown {
        /// The control frame type.
        kind: u16,
    },
}

/// Why bytes on the wire are not a valid SPDY/3 frame. Every variant ends the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A control frame of another SPDY version.
    #[error("unsupported spdy version {0}")]
    UnsupportedVersion(u16),
    /// A control frame bigger than this endpoint accepts.
    #[error("control frame of type {kind} is {len} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The frame type.
        kind: u16,
        /// Its announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A fixed-size frame with the wrong size, or a frame too short for its fields.
    #[error("control frame of type {kind} has invalid length {len}")]
    BadLength {
        /// The frame type.
        kind: u16,
        /// Its announced length.
        len: usize,
    },
}

/// Turns a byte stream into frames. Keeps state between calls: the rest of a DATA frame whose
/// payload has not fully arrived.
#[derive(Debug)]
pub struct FrameDecoder {
    max_control_len: usize,
    max_chunk: usize,
    data: Option<PendingData>,
}

#[derive(Debug)]
struct PendingData {
    stream_id: u32,
    flags: u8,
    remaining: usize,
}

impl FrameDecoder {
    /// A decoder accepting control frames up to `max_control_len` bytes and handing out DATA
    /// payloads in chunks of at most `max_chunk` bytes.
    pub fn new(max_control_len: usize, max_chunk: usize) -> FrameDecoder {
        FrameDecoder {
            max_control_len,
            max_chunk: max_chunk.max(1),
            data: None,
        }
    }

    /// Takes the next frame (or DATA chunk) off the front of `buf`; `Ok(None)` means more
    /// bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let Some(pending) = &mut self.data {
            let n = pending.remaining.min(buf.len()).min(self.max_chunk);
            if n == 0 {
                return Ok(None);
            }
            pending.remaining -= n;
            let last = pending.remaining == 0;
            let frame = Frame::Data {
                stream_id: pending.stream_id,
                flags: if last { pending.flags } else { 0 },
                data: buf.split_to(n).freeze(),
            };
            if last {
                self.data = None;
            }
            return Ok(Some(frame));
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let first = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flags = buf[4];
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if first & 0x8000_0000 == 0 {
            buf.advance(HEADER_LEN);
            let stream_id = first & STREAM_ID_MASK;
            if len == 0 {
                return Ok(Some(Frame::Data {
                    stream_id,
                    flags,
                    data: Bytes::new(),
                }));
            }
            self.data = Some(PendingData {
                stream_id,
                flags,
                remaining: len,
            });
            return self.decode(buf);
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        let kind = (first & 0xffff) as u16;
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        if len > self.max_control_len {
            return Err(FrameError::TooLarge {
                kind,
                len,
                limit: self.max_control_len,
            });
        }
        if buf.len() < HEADER_LEN + len {
            buf.reserve(HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let mut payload = buf.split_to(len).freeze();
        parse_control(kind, flags, &mut payload).map(Some)
    }
}

fn parse_control(kind: u16, flags: u8, p: &mut Bytes) -> Result<Frame, FrameError> {
    let len = p.len();
    // Each control frame has a fixed payload size, or a fixed part before a variable one.
    let need = |fits: bool| {
        if fits {
            Ok(())
        } else {
            Err(FrameError::BadLength { kind, len })
        }
    };
    let frame = match kind {
        TYPE_SYN_STREAM => {
            need(len >= 10)?;
            let stream_id = p.get_u32() & STREAM_ID_MASK;
            let associated_id = p.get_u32() & STREAM_ID_MASK;
            let priority = p.get_u8() >> 5;
            let _slot = p.get_u8();
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                flags,
                header_block: p.split_off(0),
            }
        }
        TYPE_SYN_REPLY | TYPE_HEADERS => {
            need(len >= 4)?;
            let stream_id = p.get_u32() & STREAM_ID_MASK;
            let header_block = p.split_off(0);
            if kind == TYPE_SYN_REPLY {
                Frame::SynReply {
                    stream_id,
                    flags,
                    header_block,
                }
            } else {
                Frame::Headers {
                    stream_id,
                    flags,
                    header_block,
                }
            }
        }
        TYPE_RST_STREAM => {
            need(len == 8)?;
            Frame::RstStream {
                stream_id: p.get_u32() & STREAM_ID_MASK,
                status: p.get_u32(),
            }
        }
        TYPE_SETTINGS => {
            need(len >= 4)?;
            let count = p.get_u32() as usize;
            need(count.checked_mul(8) == Some(len - 4))?;
            let entries = (0..count)
                .map(|_| {
                    let flags_id = p.get_u32();
                    Setting {
                        flags: (flags_id >> 24) as u8,
                        id: flags_id & 0x00ff_ffff,
                        value: p.get_u32(),
                    }
                })
                .collect();
            Frame::Settings { flags, entries }
        }
        TYPE_PING => {
            need(len == 4)?;
            Frame::Ping { id: p.get_u32() }
        }
        TYPE_GOAWAY => {
            need(len == 8)?;
            Frame::GoAway {
                last_good_stream_id: p.get_u32() & STREAM_ID_MASK,
                status: p.get_u32(),
            }
        }
        TYPE_WINDOW_UPDATE => {
            need(len == 8)?;
            Frame::WindowUpdate {
                stream_id: p.get_u32() & STREAM_ID_MASK,
                delta: p.get_u32() & STREAM_ID_MASK,
            }
        }
        kind => Frame::Unknown { kind },
    };
    Ok(frame)
}

/// Appends `frame` to `out` in wire format. DATA payloads and header blocks must fit the
/// 24-bit length (the session splits DATA into small frames); an `Unknown` frame writes
/// nothing.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::SynStream {
            stream_id,
            associated_id,
            priority,
            flags,
            header_block,
        } => {
            control_header(out, TYPE_SYN_STREAM, *flags, 10 + header_block.len());
            out.put_u32(stream_id & STREAM_ID_MASK);
            out.put_u32(associated_id & STREAM_ID_MASK);
            out.put_u8((priority & 0x7) << 5);
            out.put_u8(0);
            out.put_slice(header_block);
        }
        Frame::SynReply {
            stream_id,
            flags,
            header_block,
        } => {
            control_header(out, TYPE_SYN_REPLY, *flags, 4 + header_block.len());
            out.put_u32(stream_id & STREAM_ID_MASK);
            out.put_slice(header_block);
        }
        Frame::Headers {
            stream_id,
            flags,
            header_block,
        } => {
            control_header(out, TYPE_HEADERS, *flags, 4 + header_block.len());
            out.put_u32(stream_id & STREAM_ID_MASK);
            out.put_slice(header_block);
        }
        Frame::RstStream { stream_id, status } => {
            control_header(out, TYPE_RST_STREAM, 0, 8);
            out.put_u32(stream_id & STREAM_ID_MASK);
            out.put_u32(*status);
        }
        Frame::Settings { flags, entries } => {
            control_header(out, TYPE_SETTINGS, *flags, 4 + 8 * entries.len());
            out.put_u32(entries.len() as u32);
            for e in entries {
                out.put_u32((u32::from(e.flags) << 24) | (e.id & 0x00ff_ffff));
                out.put_u32(e.value);
            }
        }
        Frame::Ping { id } => {
            control_header(out, TYPE_PING, 0, 4);
            out.put_u32(*id);
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            control_header(out, TYPE_GOAWAY, 0, 8);
            out.put_u32(last_good_stream_id & STREAM_ID_MASK);
            out.put_u32(*status);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            control_header(out, TYPE_WINDOW_UPDATE, 0, 8);
            out.put_u32(stream_id & STREAM_ID_MASK);
            out.put_u32(delta & STREAM_ID_MASK);
        }
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            debug_assert!(data.len() <= MAX_FRAME_LEN);
            out.put_u32(stream_id & STREAM_ID_MASK);
            out.put_u8(*flags);
            put_u24(out, data.len());
            out.put_slice(data);
        }
        Frame::Unknown { .. } => {}
    }
}

fn control_header(out: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    debug_assert!(len <= MAX_FRAME_LEN);
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u8(flags);
    put_u24(out, len);
}

fn put_u24(out: &mut BytesMut, n: usize) {
    let n = (n.min(MAX_FRAME_LEN)) as u32;
    out.put_slice(&n.to_be_bytes()[1..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::SynStream {
                stream_id: 1,
                associated_id: 0,
                priority: 3,
                flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
                header_block: Bytes::from_static(b"compressed"),
            },
            Frame::SynReply {
                stream_id: 3,
                flags: FLAG_FIN,
                header_block: Bytes::from_static(b"x"),
            },
            Frame::RstStream {
                stream_id: 5,
                status: rst::CANCEL,
            },
            Frame::Settings {
                flags: FLAG_SETTINGS_CLEAR,
                entries: vec![
                    Setting {
                        flags: 1,
                        id: SETTINGS_INITIAL_WINDOW_SIZE,
                        value: 65536,
                    },
                    Setting {
                        flags: 0,
                        id: SETTINGS_MAX_CONCURRENT_STREAMS,
                        value: 100,
                    },
                ],
            },
            Frame::Ping { id: 0xdead_beef },
            Frame::GoAway {
                last_good_stream_id: 7,
                status: goaway::PROTOCOL_ERROR,
            },
            Frame::Headers {
                stream_id: 9,
                flags: 0,
                header_block: Bytes::new(),
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 0x7fff_ffff,
            },
            Frame::Data {
                stream_id: 11,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                stream_id: 13,
                flags: 0,
                data: Bytes::new(),
            },
        ]
    }

    #[test]
    fn every_frame_type_round_trips() {
        let mut wire = BytesMut::new();
        for f in all_frames() {
            encode(&f, &mut wire);
        }
        let mut dec = FrameDecoder::new(1 << 16, 1 << 16);
        let mut got = Vec::new();
        while let Some(f) = dec.decode(&mut wire).unwrap() {
            got.push(f);
        }
        assert_eq!(got, all_frames());
        assert!(wire.is_empty());
    }

    #[test]
    fn frames_arriving_byte_by_byte_decode_the_same() {
        let mut wire = BytesMut::new();
        for f in all_frames() {
            encode(&f, &mut wire);
        }
        let mut dec = FrameDecoder::new(1 << 16, 1 << 16);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        // DATA payloads arrive one byte a chunk: merge them back per frame.
        let mut merged: Vec<Frame> = Vec::new();
        for f in got {
            if let (
                Some(Frame::Data {
                    stream_id: s0,
                    flags: f0,
                    data: d0,
                }),
                Frame::Data {
                    stream_id,
                    flags,
                    data,
                },
            ) = (merged.last_mut(), &f)
                && *s0 == *stream_id
                && *f0 & FLAG_FIN == 0
                && !data.is_empty()
                && !d0.is_empty()
            {
                let mut joined = BytesMut::from(&d0[..]);
                joined.put_slice(data);
                *d0 = joined.freeze();
                *f0 = *flags;
                continue;
            }
            merged.push(f);
        }
        assert_eq!(merged, all_frames());
    }

    #[test]
    fn data_is_chunked_and_fin_is_on_the_last_chunk() {
        let mut wire = BytesMut::new();
        encode(
            &Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: Bytes::from(vec![7u8; 10]),
            },
            &mut wire,
        );
        let mut dec = FrameDecoder::new(1024, 4);
        let mut chunks = Vec::new();
        while let Some(Frame::Data { flags, data, .. }) = dec.decode(&mut wire).unwrap() {
            chunks.push((flags, data.len()));
        }
        assert_eq!(chunks, vec![(0, 4), (0, 4), (FLAG_FIN, 2)]);
    }

    #[test]
    fn wrong_version_oversized_and_malformed_frames_are_errors() {
        let mut dec = FrameDecoder::new(64, 64);
        let mut v2 = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert_eq!(dec.decode(&mut v2), Err(FrameError::UnsupportedVersion(2)));
        let mut big = BytesMut::from(&[0x80, 3, 0, 1, 0, 0, 1, 0][..]);
        assert!(matches!(
            dec.decode(&mut big),
            Err(FrameError::TooLarge { len: 256, .. })
        ));
        let mut short_ping = BytesMut::from(&[0x80, 3, 0, 6, 0, 0, 0, 3, 1, 2, 3][..]);
        assert_eq!(
            dec.decode(&mut short_ping),
            Err(FrameError::BadLength { kind: 6, len: 3 })
        );
        let mut bad_settings =
            BytesMut::from(&[0x80, 3, 0, 4, 0, 0, 0, 8, 0, 0, 0, 2, 0, 0, 0, 7][..]);
        assert!(matches!(
            dec.decode(&mut bad_settings),
            Err(FrameError::BadLength { kind: 4, .. })
        ));
        let mut short_syn = BytesMut::from(&[0x80, 3, 0, 1, 0, 0, 0, 2, 0, 1][..]);
        assert!(matches!(
            dec.decode(&mut short_syn),
            Err(FrameError::BadLength { kind: 1, .. })
        ));
    }

    #[test]
    fn unknown_control_frames_are_skipped_whole() {
        let mut wire = BytesMut::from(&[0x80, 3, 0, 10, 0, 0, 0, 3, 1, 2, 3][..]);
        encode(&Frame::Ping { id: 1 }, &mut wire);
        let mut dec = FrameDecoder::new(64, 64);
        assert_eq!(
            dec.decode(&mut wire).unwrap(),
            Some(Frame::Unknown { kind: 10 })
        );
        assert_eq!(dec.decode(&mut wire).unwrap(), Some(Frame::Ping { id: 1 }));
    }

    #[test]
    fn random_garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let len = rng.random_range(0..64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) && bytes.len() > 2 {
                bytes[0] = 0x80;
                bytes[1] = 3;
            }
            let mut buf = BytesMut::from(&bytes[..]);
            let mut dec = FrameDecoder::new(32, 8);
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
        }
    }
}
