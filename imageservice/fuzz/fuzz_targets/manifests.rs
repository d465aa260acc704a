//! What a registry sends and a user types: manifests and indexes (each media type),
//! image configs, and references. Errors are fine; panics are not, and whatever parses
//! must stay consistent (a chosen platform is one of the index's, chain ids one per layer).
#![no_main]

use berth_imageservice::Reference;
use berth_imageservice::manifest::{
    ManifestDoc, chain_ids, host_platform, layer_compression, parse_config, parse_manifest,
    select_platform,
};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [Option<&str>; 6] = [
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    Some("application/json"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    match parse_manifest(content_type, body) {
        Ok(ManifestDoc::Index(index)) => {
            if let Ok(chosen) = select_platform(&index, &host_platform()) {
                assert!(index.manifests().iter().any(|m| std::ptr::eq(m, chosen)));
            }
        }
        Ok(ManifestDoc::Manifest(m)) => {
            for layer in m.layers() {
                let _ = layer_compression(layer.media_type());
            }
        }
        Err(_) => {}
    }
    if let Ok(config) = parse_config(body, usize::from(selector)) {
        let diff_ids = config.rootfs().diff_ids();
        assert_eq!(chain_ids(diff_ids).len(), diff_ids.len());
    }
    if let Ok(text) = std::str::from_utf8(body)
        && let Ok(r) = Reference::parse(text)
    {
        // A parsed reference prints to a reference that parses to itself.
        let again = Reference::parse(&r.to_string()).expect("a printed reference parses");
        assert_eq!(again.to_string(), r.to_string());
    }
});
