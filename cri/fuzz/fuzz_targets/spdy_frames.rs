//! SPDY/3.1 frames and header blocks from an untrusted peer: the decoder and the header
//! decompressor must return frames or errors, never panic or grow without bound, and every
//! frame they accept must encode back to bytes that decode to the same frame.
#![no_main]

use berth_cri::streaming::spdy::frame::{Frame, FrameDecoder, encode};
use berth_cri::streaming::spdy::headers::HeaderDecompressor;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

const MAX_CONTROL: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input into arrival chunks, as a socket would deliver it.
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut decoder = FrameDecoder::new(MAX_CONTROL, 4096);
    let mut headers = HeaderDecompressor::new(MAX_CONTROL);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => check(&frame, &mut headers),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

fn check(frame: &Frame, headers: &mut HeaderDecompressor) {
    if let Frame::SynStream { header_block, .. }
    | Frame::SynReply { header_block, .. }
    | Frame::Headers { header_block, .. } = frame
    {
        // One zlib stream spans the session: an error ends it, as the server does.
        let _ = headers.decompress(header_block);
    }
    if matches!(frame, Frame::Data { .. }) {
        // DATA is handed out in chunks: its framing is not one frame's.
        return;
    }
    let mut out = BytesMut::new();
    encode(frame, &mut out);
    let mut again = FrameDecoder::new(usize::MAX, usize::MAX);
    let decoded = again.decode(&mut out).expect("an encoded frame decodes");
    assert_eq!(decoded.as_ref(), Some(frame), "round trip");
}
