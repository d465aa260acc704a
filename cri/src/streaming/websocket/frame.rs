//! WebSocket frames (RFC 6455 section 5): decoding with unmasking, encoding with optional
//! masking. No extensions are negotiated, so the RSV bits must be clear.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Continuation of a fragmented message.
pub const OP_CONTINUATION: u8 = 0x0;
/// A UTF-8 text message.
pub const OP_TEXT: u8 = 0x1;
/// A binary message.
pub const OP_BINARY: u8 = 0x2;
/// Close handshake.
pub const OP_CLOSE: u8 = 0x8;
/// Ping; answered with a pong carrying the same payload.
pub const OP_PING: u8 = 0x9;
/// Pong.
pub const OP_PONG: u8 = 0xa;

/// One frame, its payload already unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsFrame {
    /// Last frame of a message.
    pub fin: bool,
    /// One of the `OP_*` codes.
    pub opcode: u8,
    /// The payload.
    pub payload: Bytes,
}

/// Why bytes are not an acceptable frame; each maps to a close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsFrameError {
    /// RSV bits set, unknown opcode, a fragmented or oversized control frame, or a masking
    /// that does not match the sender's role.
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    /// A frame larger than this endpoint accepts.
    #[error("websocket frame of {0} bytes is too large")]
    TooLarge(u64),
}

impl WsFrameError {
    /// The close status to send for this error (1002 protocol error, 1009 too big).
    pub fn close_code(&self) -> u16 {
        match self {
            WsFrameError::Protocol(_) => 1002,
            WsFrameError::TooLarge(_) => 1009,
        }
    }
}

/// Decodes frames sent by one side. A server requires masked frames (clients must mask), a
/// client requires unmasked ones.
#[derive(Debug)]
pub struct WsDecoder {
    max_payload: usize,
    masked: bool,
}

impl WsDecoder {
    /// A decoder for frames whose payloads are at most `max_payload` bytes; `masked` says
    /// whether the sender must mask (true when decoding a client's frames).
    pub fn new(max_payload: usize, masked: bool) -> WsDecoder {
        WsDecoder {
            max_payload,
            masked,
        }
    }

    /// Takes the next frame off the front of `buf`; `Ok(None)` means more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<WsFrame>, WsFrameError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let b0 = buf[0];
        let b1 = buf[1];
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(WsFrameError::Protocol("reserved bits set"));
        }
        let opcode = b0 & 0x0f;
        let control = opcode & 0x8 != 0;
        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(WsFrameError::Protocol("unknown opcode")),
        }
        let masked = b1 & 0x80 != 0;
        if masked != self.masked {
            return Err(WsFrameError::Protocol(if self.masked {
                "client frames must be masked"
            } else {
                "server frames must not be masked"
            }));
        }
        let (len, mut at) = match b1 & 0x7f {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        if control && (len > 125 || !fin) {
            return Err(WsFrameError::Protocol("invalid control frame"));
        }
        if len > self.max_payload as u64 {
            return Err(WsFrameError::TooLarge(len));
        }
        let len = len as usize;
        let mask_at = at;
        if masked {
            at += 4;
        }
        if buf.len() < at + len {
            buf.reserve(at + len - buf.len());
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        if masked {
            mask.copy_from_slice(&buf[mask_at..mask_at + 4]);
        }
        buf.advance(at);
        let mut payload = buf.split_to(len);
        if masked {
            apply_mask(&mut payload, mask);
        }
        Ok(Some(WsFrame {
            fin,
            opcode,
            payload: payload.freeze(),
        }))
    }
}

/// XORs `data` with the 4-byte masking key, as both masking and unmasking do.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Appends one frame to `out`; with `mask`, the payload is masked (client to server).
pub fn encode(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>, out: &mut BytesMut) {
    out.put_u8(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.put_u8(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.put_u8(mask_bit | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(mask_bit | 127);
            out.put_u64(n as u64);
        }
    }
    match mask {
        Some(key) => {
            out.put_slice(&key);
            let start = out.len();
            out.put_slice(payload);
            apply_mask(&mut out[start..], key);
        }
        None => out.put_slice(payload),
    }
}

/// The payload of a close frame: status code and reason.
pub fn close_payload(code: u16, reason: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(2 + reason.len());
    b.put_u16(code);
    b.put_slice(&reason.as_bytes()[..reason.len().min(123)]);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_every_length_class_round_trip_masked_and_not() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut wire = BytesMut::new();
                encode(true, OP_BINARY, &payload, mask, &mut wire);
                if mask.is_some() && len > 4 {
                    // The payload on the wire is masked, not plain.
                    assert_ne!(&wire[wire.len() - len..][..4], &payload[..4]);
                }
                let mut dec = WsDecoder::new(1 << 20, mask.is_some());
                let f = dec.decode(&mut wire).unwrap().unwrap();
                assert!(f.fin);
                assert_eq!(f.opcode, OP_BINARY);
                assert_eq!(&f.payload[..], &payload[..]);
                assert!(wire.is_empty());
            }
        }
    }

    #[test]
    fn partial_input_waits_for_more() {
        let mut wire = BytesMut::new();
        encode(
            false,
            OP_TEXT,
            b"hello world",
            Some([9, 8, 7, 6]),
            &mut wire,
        );
        encode(true, OP_CONTINUATION, b"!", Some([5, 5, 5, 5]), &mut wire);
        let all = wire.clone();
        let mut dec = WsDecoder::new(1024, true);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in all.iter() {
            buf.put_u8(*b);
            if let Some(f) = dec.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[0].payload[..], b"hello world");
        assert!(!frames[0].fin);
        assert_eq!(frames[1].opcode, OP_CONTINUATION);
        assert_eq!(&frames[1].payload[..], b"!");
    }

    #[test]
    fn protocol_violations_are_refused() {
        let mut dec = WsDecoder::new(100, true);
        // unmasked frame from a client
        let mut wire = BytesMut::new();
        encode(true, OP_BINARY, b"x", None, &mut wire);
        assert!(matches!(
            dec.decode(&mut wire),
            Err(WsFrameError::Protocol(_))
        ));
        // reserved bits
        let mut wire = BytesMut::from(&[0xc2u8, 0x80, 0, 0, 0, 0][..]);
        assert!(matches!(
            dec.decode(&mut wire),
            Err(WsFrameError::Protocol(_))
        ));
        // unknown opcode
        let mut wire = BytesMut::from(&[0x83u8, 0x80, 0, 0, 0, 0][..]);
        assert!(matches!(
            dec.decode(&mut wire),
            Err(WsFrameError::Protocol(_))
        ));
        // fragmented ping
        let mut wire = BytesMut::new();
        encode(false, OP_PING, b"", Some([0; 4]), &mut wire);
        assert!(matches!(
            dec.decode(&mut wire),
            Err(WsFrameError::Protocol(_))
        ));
        // too large, refused from the header alone
        let mut wire = BytesMut::from(&[0x82u8, 0xff, 0, 0, 0, 1, 0, 0, 0, 0][..]);
        assert_eq!(dec.decode(&mut wire), Err(WsFrameError::TooLarge(1 << 32)));
        assert_eq!(WsFrameError::TooLarge(1).close_code(), 1009);
        // masked frame from a server
        let mut client = WsDecoder::new(100, false);
        let mut wire = BytesMut::new();
        encode(true, OP_TEXT, b"x", Some([1; 4]), &mut wire);
        assert!(client.decode(&mut wire).is_err());
    }

    #[test]
    fn close_payload_carries_code_and_reason() {
        let p = close_payload(1000, "bye");
        assert_eq!(&p[..], b"\x03\xe8bye");
    }
}
