//! Tests of `manifest`.

use super::*;

fn d(n: u8) -> String {
    format!("sha256:{}", hex::encode([n; 32]))
}

fn entry(n: u8, os: &str, arch: &str, variant: Option<&str>) -> serde_json::Value {
    let mut p = serde_json::json!({"os": os, "architecture": arch});
    if let Some(v) = variant {
        p["variant"] = v.into();
    }
    serde_json::json!({"mediaType": OCI_MANIFEST, "digest": d(n), "size": 100, "platform": p})
}

fn index(entries: Vec<serde_json::Value>) -> ImageIndex {
    let body =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    match parse_manifest(None, body.to_string().as_bytes()).unwrap() {
        ManifestDoc::Index(i) => *i,
        _ => panic!("not an index"),
    }
}

/// The digest of the entry of `i` chosen for linux/`arch`/`variant`.
fn chosen(i: &ImageIndex, arch: &str, variant: Option<&str>) -> Result<String, String> {
    select_platform(i, &plat(arch, variant)).map(|d| d.digest().to_string())
}

fn plat(arch: &str, variant: Option<&str>) -> Platform {
    let mut p = Platform::default();
    p.set_os(Os::Linux)
        .set_architecture(Arch::from(arch))
        .set_variant(variant.map(Into::into));
    p
}

#[test]
fn parses_docker_and_oci_manifests() {
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": d(1), "size": 10},
        "layers": [
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": d(2), "size": 20},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": d(3), "size": 30},
        ]
    });
    let ManifestDoc::Manifest(m) = parse_manifest(None, m.to_string().as_bytes()).unwrap() else {
        panic!("not a manifest")
    };
    assert_eq!(m.config().digest().as_ref(), d(1));
    assert_eq!(m.layers().len(), 2);
    assert_eq!(
        layer_compression(m.layers()[0].media_type()),
        Ok(Compression::Gzip)
    );
    assert_eq!(
        layer_compression(m.layers()[1].media_type()),
        Ok(Compression::Zstd)
    );

    // No mediaType field: the Content-Type header decides.
    let body = serde_json::json!({"schemaVersion": 2, "manifests": []}).to_string();
    assert!(matches!(
        parse_manifest(
            Some("application/vnd.docker.distribution.manifest.list.v2+json"),
            body.as_bytes()
        ),
        Ok(ManifestDoc::Index(_))
    ));
    // Neither: the shape decides.
    assert!(matches!(
        parse_manifest(Some("application/json"), body.as_bytes()),
        Ok(ManifestDoc::Index(_))
    ));
}

#[test]
fn rejects_bad_manifests() {
    let schema1 = serde_json::json!({"schemaVersion": 1, "fsLayers": []}).to_string();
    assert!(
        parse_manifest(None, schema1.as_bytes())
            .unwrap_err()
            .contains("schema 1")
    );
    assert!(
        parse_manifest(None, b"not json")
            .unwrap_err()
            .contains("not JSON")
    );
    let odd = serde_json::json!({"schemaVersion": 2, "mediaType": "application/x-foo"}).to_string();
    assert!(
        parse_manifest(None, odd.as_bytes())
            .unwrap_err()
            .contains("unsupported")
    );
    let bad_digest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "x", "digest": "sha256:zz", "size": 1}, "layers": []
    })
    .to_string();
    assert!(parse_manifest(None, bad_digest.as_bytes()).is_err());
    let encrypted = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "x", "digest": d(1), "size": 1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip+encrypted", "digest": d(2), "size": 1}]
    })
    .to_string();
    assert!(
        parse_manifest(None, encrypted.as_bytes())
            .unwrap_err()
            .contains("layer media type")
    );
}

#[test]
fn selects_host_platform() {
    let i = index(vec![
        entry(1, "linux", "arm64", Some("v8")),
        entry(2, "linux", "amd64", None),
        entry(3, "windows", "amd64", None),
        entry(4, "unknown", "unknown", None),
    ]);
    assert_eq!(chosen(&i, "amd64", None), Ok(d(2)));
    assert_eq!(chosen(&i, "arm64", Some("v8")), Ok(d(1)));
    let err = chosen(&i, "s390x", None).unwrap_err();
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64/v8"),
        "{err}"
    );
}

#[test]
fn honours_variants() {
    // amd64 with no variant never picks a v3 build.
    let i = index(vec![entry(1, "linux", "amd64", Some("v3"))]);
    assert!(chosen(&i, "amd64", None).is_err());
    let i = index(vec![
        entry(1, "linux", "amd64", Some("v3")),
        entry(2, "linux", "amd64", Some("v1")),
    ]);
    assert_eq!(chosen(&i, "amd64", None), Ok(d(2)));
    // arm v7 runs v7 before v6, never v8.
    let i = index(vec![
        entry(1, "linux", "arm", Some("v6")),
        entry(2, "linux", "arm", Some("v8")),
        entry(3, "linux", "arm", Some("v7")),
    ]);
    assert_eq!(chosen(&i, "arm", Some("v7")), Ok(d(3)));
    assert_eq!(chosen(&i, "arm", Some("v6")), Ok(d(1)));
    assert!(chosen(&i, "arm", Some("v5")).is_err());
    // arm64 without variant is v8.
    let i = index(vec![entry(1, "linux", "arm64", None)]);
    assert_eq!(chosen(&i, "arm64", Some("v8")), Ok(d(1)));
}

#[test]
fn host_platform_is_linux() {
    let p = host_platform();
    assert_eq!(*p.os(), Os::Linux);
    #[cfg(target_arch = "x86_64")]
    assert_eq!(platform_name(&p), "linux/amd64");
}

#[test]
fn config_and_chain_ids() {
    let body = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"User": "1000:1000", "Env": null},
        "rootfs": {"type": "layers", "diff_ids": [d(1), d(2), d(3)]}
    })
    .to_string();
    let c = parse_config(body.as_bytes(), 3).unwrap();
    assert_eq!(
        c.config().as_ref().and_then(|c| c.user().as_deref()),
        Some("1000:1000")
    );
    assert!(
        parse_config(body.as_bytes(), 2)
            .unwrap_err()
            .contains("3 layer diff ids")
    );
    let chain = chain_ids(c.rootfs().diff_ids());
    assert_eq!(chain[0], d(1));
    // Known value: sha256("<d1> <d2>").
    use sha2::{Digest, Sha256};
    let expect = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(format!("{} {}", d(1), d(2))))
    );
    assert_eq!(chain[1], expect);
    assert_ne!(chain[2], chain[1]);
}

/// What oci-spec requires and Berth has always accepted without: a descriptor's media
/// type, a platform's os and architecture, a config's os, architecture and rootfs type.
#[test]
fn fields_registries_leave_out_read_as_empty() {
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"digest": d(1), "size": 10},
        "layers": [{"digest": d(2), "size": 20, "x-unknown": [1, {"a": null}]}],
        "subject": {"digest": d(9), "size": 1},
        "x-unknown": true
    })
    .to_string();
    let ManifestDoc::Manifest(m) = parse_manifest(None, m.as_bytes()).unwrap() else {
        panic!("not a manifest")
    };
    assert_eq!(m.config().media_type().as_ref(), "");
    assert_eq!(
        layer_compression(m.layers()[0].media_type()),
        Ok(Compression::None)
    );

    // An entry without a media type may be chosen; one without a platform never is.
    let i = index(vec![
        serde_json::json!({"digest": d(1), "size": 1, "platform": {"variant": "v8"}}),
        serde_json::json!({"digest": d(2), "size": 1}),
        serde_json::json!({"digest": d(3), "size": 1, "platform": {"os": "linux", "architecture": "amd64"}}),
    ]);
    assert_eq!(chosen(&i, "amd64", None), Ok(d(3)));
    let err = chosen(&i, "arm64", None).unwrap_err();
    assert_eq!(err, "//v8, linux/amd64");

    let c = serde_json::json!({"rootfs": {"diff_ids": [d(1)]}}).to_string();
    let c = parse_config(c.as_bytes(), 1).unwrap();
    assert_eq!(c.os().to_string(), "");
    assert_eq!(c.architecture().to_string(), "");
    assert!(
        parse_config(b"{\"os\": \"linux\"}", 0).is_err(),
        "rootfs is required"
    );
}

/// A document that two parsers could read two ways is refused, whichever path reads it.
#[test]
fn repeated_fields_are_refused() {
    let twice = format!(
        r#"{{"schemaVersion": 2, "mediaType": "{OCI_MANIFEST}",
            "config": {{"mediaType": "x", "digest": "{}", "digest": "{}", "size": 1}},
            "layers": []}}"#,
        d(1),
        d(2)
    );
    let err = parse_manifest(None, twice.as_bytes()).unwrap_err();
    assert!(err.contains("duplicate"), "{err}");
    // The same with a layer that has no media type, which takes the second reading.
    let twice = format!(
        r#"{{"schemaVersion": 2, "mediaType": "{OCI_MANIFEST}",
            "layers": [{{"digest": "{}", "size": 1}}],
            "config": {{"mediaType": "x", "digest": "{}", "digest": "{}", "size": 1}}}}"#,
        d(3),
        d(1),
        d(2)
    );
    let err = parse_manifest(None, twice.as_bytes()).unwrap_err();
    assert!(err.contains("duplicate"), "{err}");
}

/// Hostile and malformed documents are errors, never panics, and what parses holds
/// together (the fuzz target's properties, over a fixed set).
#[test]
fn hostile_documents_are_errors() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let docs = [
        deep.clone(),
        format!(r#"{{"schemaVersion": 2, "manifests": {deep}}}"#),
        r#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}"#.into(),
        r#"{"schemaVersion": 2, "manifests": [{"digest": "sha512:00", "size": 1}]}"#.into(),
        r#"{"schemaVersion": 2, "manifests": [{"digest": "../x", "size": 1}]}"#.into(),
        format!(
            r#"{{"schemaVersion": 2, "manifests": [{{"digest": "{}", "size": -1}}]}}"#,
            d(1)
        ),
        format!(
            r#"{{"schemaVersion": 2, "manifests": [{{"digest": "{}", "size": 1.5}}]}}"#,
            d(1)
        ),
        format!(
            r#"{{"schemaVersion": 2, "manifests": [{{"mediaType": null, "digest": "{}", "size": 1}}]}}"#,
            d(1)
        ),
        r#"{"schemaVersion": 2, "layers": [], "config": 7}"#.into(),
        r#"{"schemaVersion": 2, "layers": "x"}"#.into(),
        r#"{"schemaVersion": "2", "manifests": []}"#.into(),
        "null".into(),
        "\u{feff}{}".into(),
    ];
    for doc in &docs {
        assert!(parse_manifest(None, doc.as_bytes()).is_err(), "{doc:.80}");
        assert!(parse_config(doc.as_bytes(), 0).is_err(), "{doc:.80}");
    }
}
