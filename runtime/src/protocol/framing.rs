//! Framing: each message is a 4-byte big-endian length and that many bytes of JSON.

use serde::{Deserialize, Serialize};

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 4 << 20;

/// Encodes a message as one frame.
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    // Serializing these types to a Vec cannot fail: no maps with non-string keys.
    serde_json::to_writer(&mut out, msg).expect("protocol message serializes");
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Why bytes did not decode into a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is over [`MAX_FRAME`].
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    /// The payload is not the expected JSON.
    #[error("malformed frame")]
    Json(#[from] serde_json::Error),
}

/// Accumulates bytes read from a stream and yields complete frames.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// Adds bytes read from the connection.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame's payload, if one has arrived.
    pub fn next_payload(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let payload = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        if self.buf.is_empty() && self.buf.capacity() > 8192 {
            self.buf = Vec::new();
        }
        Ok(Some(payload))
    }

    /// The next complete frame decoded as `T`.
    pub fn next_message<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, FrameError> {
        match self.next_payload()? {
            Some(p) => Ok(Some(serde_json::from_slice(&p)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PROTOCOL_VERSION, Request};
    use crate::spec::ProcessSpec;

    #[test]
    fn round_trip_in_pieces() {
        let reqs = vec![
            Request::Hello {
                version: PROTOCOL_VERSION,
            },
            Request::Kill {
                id: "c1".into(),
                signal: 15,
            },
            Request::Exec {
                id: "c1".into(),
                process: Box::new(ProcessSpec {
                    args: vec!["ls".into()],
                    ..Default::default()
                }),
                cgroup_procs: vec![],
                timeout_ms: 5000,
                stdin: true,
                tty: false,
            },
            Request::Attach {
                id: "c1".into(),
                stdin: true,
            },
            Request::CloseStdin { id: "c1".into() },
            Request::Create {
                spec: Box::default(),
            },
            Request::Shutdown,
        ];
        let mut bytes = Vec::new();
        for r in &reqs {
            bytes.extend(encode_frame(r));
        }
        let mut reader = FrameReader::default();
        let mut got = Vec::new();
        for chunk in bytes.chunks(7) {
            reader.push(chunk);
            while let Some(r) = reader.next_message::<Request>().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got, reqs);
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let mut r = FrameReader::default();
        r.push(&u32::MAX.to_be_bytes());
        assert!(matches!(r.next_payload(), Err(FrameError::TooLarge(_))));
        let mut r = FrameReader::default();
        r.push(&3u32.to_be_bytes());
        r.push(b"{x}");
        assert!(r.next_message::<Request>().is_err());
        let mut r = FrameReader::default();
        r.push(&encode_frame(&serde_json::json!({"op": "teleport"})));
        assert!(r.next_message::<Request>().is_err());
    }
}
