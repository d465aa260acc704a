//! A container's output in arbitrary pieces: every byte lands in the CRI log exactly once,
//! in order, as `<time> <stream> F|P <line>` records.
#![no_main]

use berth_runtime::crilog::{LineFramer, Stream};
use libfuzzer_sys::fuzz_target;

const TS: &[u8] = b"2026-01-01T00:00:00.000000000Z";

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut framer = LineFramer::new(Stream::Stdout);
    let mut log = Vec::new();
    for piece in data.chunks(chunk) {
        framer.feed(piece, TS, &mut log);
    }
    framer.finish(TS, &mut log);
    // Reassemble the content from the records.
    let mut content = Vec::new();
    for record in log.split_inclusive(|&b| b == b'\n') {
        let record = record.strip_suffix(b"\n").expect("records end with a newline");
        let rest = record.strip_prefix(TS).expect("timestamp first");
        let rest = rest.strip_prefix(b" stdout ").expect("the stream next");
        let (tag, line) = rest.split_at(2);
        match tag {
            b"F " => {
                content.extend_from_slice(line);
                content.push(b'\n');
            }
            b"P " => content.extend_from_slice(line),
            _ => panic!("bad tag {tag:?}"),
        }
    }
    // A final partial line is logged without its (absent) newline.
    let expected: Vec<u8> = data.to_vec();
    assert!(
        content == expected || (content.last() == Some(&b'\n') && content[..content.len() - 1] == expected[..]),
        "log content differs from the output"
    );
});
