//! Hostile layer archives (tar, gzip, zstd): unpacking into a fresh directory may fail, but
//! must never panic and never create anything outside that directory.
#![no_main]

use std::path::Path;

use berth_imageservice::unpack::unpack_layer;
use libfuzzer_sys::fuzz_target;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let outer = tempfile::tempdir().expect("tempdir");
    let dest = outer.path().join("snapshot");
    std::fs::create_dir(&dest).expect("dest");
    let _ = unpack_layer(data, &dest);
    // The only thing beside the snapshot is the snapshot.
    assert_eq!(names(outer.path()), vec!["snapshot".to_string()], "an entry escaped");
});
