//! WebSocket frames from an untrusted client (masked, as the server requires) and server
//! (unmasked, as the client requires): frames or errors, never a panic, and accepted frames
//! re-encode to the same frame.
#![no_main]

use berth_cri::streaming::websocket::frame::{WsDecoder, encode};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let masked = mode & 1 == 1;
    let chunk = usize::from(mode >> 1).max(1);
    let mut decoder = WsDecoder::new(1 << 20, masked);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let mut out = BytesMut::new();
                    let mask = masked.then_some([1, 2, 3, 4]);
                    encode(frame.fin, frame.opcode, &frame.payload, mask, &mut out);
                    let again = WsDecoder::new(1 << 20, masked)
                        .decode(&mut out)
                        .expect("an encoded frame decodes");
                    assert_eq!(again.as_ref(), Some(&frame), "round trip");
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
