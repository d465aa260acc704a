//! Frames on a monitor socket, either direction: the reader yields messages or errors,
//! never panics, and every message it yields encodes to a frame that decodes to itself.
#![no_main]

use berth_runtime::protocol::{FrameReader, Request, Response, encode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut requests = FrameReader::default();
    let mut responses = FrameReader::default();
    for piece in data.chunks(chunk) {
        requests.push(piece);
        responses.push(piece);
        while let Ok(Some(req)) = requests.next_message::<Request>() {
            let mut again = FrameReader::default();
            again.push(&encode_frame(&req));
            assert_eq!(again.next_message::<Request>().unwrap(), Some(req));
        }
        while let Ok(Some(resp)) = responses.next_message::<Response>() {
            let mut again = FrameReader::default();
            again.push(&encode_frame(&resp));
            assert_eq!(again.next_message::<Response>().unwrap(), Some(resp));
        }
    }
});
