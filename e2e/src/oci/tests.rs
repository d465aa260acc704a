use super::*;
use serde_json::{Value, json};
use std::io::Read;

fn names(tar: &[u8]) -> Vec<(String, tar::EntryType, u64)> {
    let mut a = tar::Archive::new(tar);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                h.entry_type(),
                h.mtime().unwrap(),
            )
        })
        .collect()
}

#[test]
fn parents_come_first_and_whiteouts_are_named_beside_their_target() {
    let mut l = LayerBuilder::new();
    l.file("a/b/c.txt", 0o644, "x").unwrap();
    l.whiteout("a/gone").unwrap();
    l.opaque("d").unwrap();
    let tar = l.tar().unwrap();
    let got: Vec<String> = names(&tar).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(
        got,
        [
            "a/",
            "a/b/",
            "a/b/c.txt",
            "a/.wh.gone",
            "d/",
            "d/.wh..wh..opq"
        ]
    );
    assert!(names(&tar).iter().all(|(_, _, m)| *m == FIXED_MTIME));
}

#[test]
fn bad_paths_and_duplicates_are_rejected() {
    let mut l = LayerBuilder::new();
    assert!(l.file("../x", 0o644, "").is_err());
    assert!(l.file("", 0o644, "").is_err());
    l.file("x", 0o644, "").unwrap();
    assert!(l.file("/x/", 0o644, "").is_err());
    assert!(l.hardlink("y", "nope").is_err());
}

#[test]
fn building_twice_gives_the_same_digests() {
    let build = || {
        let mut l = LayerBuilder::new();
        l.file("etc/hello", 0o644, "hello\n").unwrap();
        l.symlink("bin/sh", "/bin/busybox").unwrap();
        let layers = vec![
            l.build(Compression::Gzip).unwrap(),
            l.build(Compression::Zstd).unwrap(),
            l.build(Compression::None).unwrap(),
        ];
        Image::build(Format::Oci, Platform::host(), &every_setting(), layers, "t").unwrap()
    };
    let (a, b) = (build(), build());
    // oci-spec holds labels, ports and volumes in HashMaps: their order must not leak.
    assert_eq!(a.config.digest, b.config.digest);
    assert_eq!(a.manifest.digest, b.manifest.digest);
    assert_eq!(a.layers[0].diff_id, a.layers[1].diff_id);
    assert_eq!(a.layers[0].diff_id, a.layers[2].diff_id);
    assert_ne!(a.layers[0].blob.digest, a.layers[1].blob.digest);
}

#[test]
fn compressed_layers_decompress_to_their_diff_id() {
    let mut l = LayerBuilder::new();
    l.file("f", 0o600, vec![7u8; 100_000]).unwrap();
    for c in [Compression::Gzip, Compression::Zstd] {
        let layer = l.build(c).unwrap();
        let mut tar = Vec::new();
        match c {
            Compression::Gzip => {
                flate2::read::GzDecoder::new(&layer.blob.data[..])
                    .read_to_end(&mut tar)
                    .unwrap();
            }
            _ => tar = zstd::stream::decode_all(&layer.blob.data[..]).unwrap(),
        }
        assert_eq!(digest(&tar), layer.diff_id);
        assert_eq!(tar.len() as u64, layer.uncompressed_size);
    }
}

#[test]
fn manifest_and_config_reference_each_other() {
    let mut l = LayerBuilder::new();
    l.file("x", 0o644, "x").unwrap();
    let run = RunConfig {
        user: Some("1000".into()),
        exposed_ports: vec!["8080/tcp".into()],
        stop_signal: Some("SIGUSR1".into()),
        ..RunConfig::default()
    };
    let img = Image::build(
        Format::Docker,
        Platform::linux("arm64", Some("v8")),
        &run,
        vec![l.build(Compression::Gzip).unwrap()],
        "t",
    )
    .unwrap();
    let m: Value = serde_json::from_slice(&img.manifest.data).unwrap();
    assert_eq!(m["mediaType"], DOCKER_MANIFEST);
    assert_eq!(m["config"]["digest"], json!(img.config.digest));
    assert_eq!(m["layers"][0]["mediaType"], DOCKER_LAYER_GZIP);
    let c: Value = serde_json::from_slice(&img.config.data).unwrap();
    assert_eq!(c["variant"], "v8");
    assert_eq!(c["config"]["ExposedPorts"], json!({"8080/tcp": {}}));
    assert_eq!(c["config"]["StopSignal"], "SIGUSR1");
    assert_eq!(c["rootfs"]["diff_ids"][0], json!(img.layers[0].diff_id));
    let idx = Index::build(Format::Oci, vec![img]).unwrap();
    let i: Value = serde_json::from_slice(&idx.blob.data).unwrap();
    assert_eq!(i["manifests"][0]["platform"]["variant"], "v8");
}

/// A run config with every setting, maps with several keys among them.
fn every_setting() -> RunConfig {
    RunConfig {
        user: Some("1000:1000".into()),
        env: vec!["A=1".into(), "PATH=/bin".into()],
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec!["echo hi".into()]),
        working_dir: Some("/w".into()),
        stop_signal: Some("SIGTERM".into()),
        labels: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("c".into(), "3".into()),
        ],
        exposed_ports: vec!["8080/tcp".into(), "53/udp".into(), "443/tcp".into()],
        volumes: vec!["/data".into(), "/cache".into(), "/logs".into()],
    }
}

/// What the writer makes, a registry client reading with oci-spec's types reads back.
#[test]
fn documents_read_back_as_oci_spec_types() {
    let mut l = LayerBuilder::new();
    l.file("x", 0o644, "x").unwrap();
    let img = Image::build(
        Format::Oci,
        Platform::linux("arm64", Some("v8")),
        &every_setting(),
        vec![l.build(Compression::Zstd).unwrap()],
        "t",
    )
    .unwrap();
    let m: spec::ImageManifest = serde_json::from_slice(&img.manifest.data).unwrap();
    assert_eq!(m.media_type(), &Some(MediaType::ImageManifest));
    assert_eq!(m.config().digest().to_string(), img.config.digest);
    assert_eq!(m.layers()[0].media_type(), &MediaType::ImageLayerZstd);
    assert_eq!(m.layers()[0].size(), img.layers[0].blob.size());
    let c: spec::ImageConfiguration = serde_json::from_slice(&img.config.data).unwrap();
    assert_eq!(c.architecture(), &spec::Arch::ARM64);
    assert_eq!(c.variant().as_deref(), Some("v8"));
    assert_eq!(c.rootfs().diff_ids(), &[img.layers[0].diff_id.clone()]);
    let run = c.config().as_ref().unwrap();
    assert_eq!(run.labels().as_ref().unwrap()["b"], "2");
    let mut ports = run.exposed_ports().clone().unwrap();
    ports.sort();
    assert_eq!(ports, ["443/tcp", "53/udp", "8080/tcp"]);
    let idx = Index::build(Format::Docker, vec![img]).unwrap();
    let i: spec::ImageIndex = serde_json::from_slice(&idx.blob.data).unwrap();
    assert_eq!(
        i.media_type(),
        &Some(MediaType::Other(DOCKER_LIST.to_string()))
    );
    let platform = i.manifests()[0].platform().as_ref().unwrap();
    assert_eq!(platform.os(), &spec::Os::Linux);
    assert_eq!(platform.variant().as_deref(), Some("v8"));
}
