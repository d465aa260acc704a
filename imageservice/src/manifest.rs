//! OCI and Docker schema 2 manifests, indexes and configs, and the choice of the node's
//! platform in an index.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::reference::validate_digest;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1";
/// The `Accept` header for manifest requests.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest or config we accept (as containerd).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform, in index entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OS/architecture pair with its optional CPU variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Platform {
    /// `linux`.
    #[serde(default)]
    pub os: String,
    /// GOARCH naming: `amd64`, `arm64`, `arm`.
    #[serde(default)]
    pub architecture: String,
    /// CPU variant: `v7`, `v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this daemon runs on.
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(String::from),
        }
    }

    fn variant_str(&self) -> &str {
        self.variant.as_deref().unwrap_or("")
    }

    /// How well an image built for `candidate` fits this node: `None` if it cannot run,
    /// lower is better.
    fn rank(&self, candidate: &Platform) -> Option<u32> {
        if candidate.os != self.os || candidate.architecture != self.architecture {
            return None;
        }
        let want = self.variant_str();
        let have = candidate.variant_str();
        if want == have {
            return Some(0);
        }
        let num = |v: &str| v.strip_prefix('v').and_then(|n| n.parse::<u32>().ok());
        match self.architecture.as_str() {
            // arm64: no variant means v8.
            "arm64" if (want == "v8" && have.is_empty()) || (want.is_empty() && have == "v8") => {
                Some(0)
            }
            // amd64 without a variant runs the baseline only.
            "amd64" if want.is_empty() => (have == "v1").then_some(0),
            // Older variants run on newer CPUs; prefer the newest that runs.
            _ => match (num(want), num(have)) {
                (Some(w), Some(h)) if h <= w => Some(1 + w - h),
                (Some(_), None) if have.is_empty() => Some(100),
                _ => None,
            },
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when the manifest states it.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The image configuration.
    pub config: Descriptor,
    /// Layers, bottom first.
    pub layers: Vec<Descriptor>,
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when the index states it.
    #[serde(default)]
    pub media_type: Option<String>,
    /// One entry per platform (and attestations, which have no usable platform).
    pub manifests: Vec<Descriptor>,
}

/// A parsed manifest document.
#[derive(Clone, Debug)]
pub enum ManifestDoc {
    /// A single-platform manifest.
    Manifest(Manifest),
    /// A multi-platform index.
    Index(Index),
}

/// Parses a manifest or index. `content_type` is the registry's `Content-Type` header,
/// used when the document does not state its own media type.
pub fn parse_manifest(content_type: Option<&str>, body: &[u8]) -> Result<ManifestDoc, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        schema_version: Option<u32>,
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        layers: Option<serde_json::Value>,
        #[serde(default)]
        fs_layers: Option<serde_json::Value>,
    }
    let probe: Probe =
        serde_json::from_slice(body).map_err(|e| format!("manifest is not JSON: {e}"))?;
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "text/plain");
    let media_type =
        probe
            .media_type
            .as_deref()
            .or(header)
            .unwrap_or(if probe.manifests.is_some() {
                OCI_INDEX
            } else if probe.layers.is_some() {
                OCI_MANIFEST
            } else if probe.fs_layers.is_some() {
                DOCKER_SCHEMA1
            } else {
                ""
            });
    if probe.schema_version == Some(1) || media_type.starts_with(DOCKER_SCHEMA1) {
        return Err("docker schema 1 manifests are not supported".into());
    }
    let doc = match media_type {
        OCI_INDEX | DOCKER_LIST => {
            let index: Index =
                serde_json::from_slice(body).map_err(|e| format!("invalid image index: {e}"))?;
            for m in &index.manifests {
                validate_digest(&m.digest)?;
            }
            ManifestDoc::Index(index)
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: Manifest =
                serde_json::from_slice(body).map_err(|e| format!("invalid image manifest: {e}"))?;
            validate_digest(&m.config.digest)?;
            for l in &m.layers {
                validate_digest(&l.digest)?;
                layer_compression(&l.media_type)?;
            }
            ManifestDoc::Manifest(m)
        }
        "" => return Err("manifest has no media type".into()),
        other => return Err(format!("unsupported manifest media type {other:?}")),
    };
    Ok(doc)
}

/// Chooses the index entry for `platform`: the best-ranked runnable one, first in the
/// index on ties. The error lists what the index offers.
pub fn select_platform<'a>(
    index: &'a Index,
    platform: &Platform,
) -> Result<&'a Descriptor, String> {
    let runnable =
        |d: &&Descriptor| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | "");
    index
        .manifests
        .iter()
        .filter(runnable)
        .filter_map(|d| Some((platform.rank(d.platform.as_ref()?)?, d)))
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, d)| d)
        .ok_or_else(|| {
            let available: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| p.to_string())
                .collect();
            if available.is_empty() {
                "none".into()
            } else {
                available.join(", ")
            }
        })
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// The compression a layer media type declares; errors on non-layer and encrypted types.
pub fn layer_compression(media_type: &str) -> Result<Compression, String> {
    Ok(match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
        // Some writers omit the layer media type; the unpacker sniffs the magic bytes.
        "" => Compression::None,
        other => return Err(format!("unsupported layer media type {other:?}")),
    })
}

/// The part of an image configuration the pull needs.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConfigSummary {
    /// OS the image was built for.
    #[serde(default)]
    pub os: String,
    /// Architecture the image was built for.
    #[serde(default)]
    pub architecture: String,
    /// Runtime defaults.
    #[serde(default)]
    pub config: Option<ConfigDefaults>,
    /// Uncompressed layer digests.
    pub rootfs: RootFs,
}

/// The `config` object of an image configuration (only what the pull records).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConfigDefaults {
    /// `USER`.
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

/// The `rootfs` object of an image configuration.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RootFs {
    /// `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Uncompressed digests of the layers, bottom first.
    pub diff_ids: Vec<String>,
}

/// Parses the config blob and checks it matches the manifest's layers.
pub fn parse_config(body: &[u8], layers: usize) -> Result<ConfigSummary, String> {
    let c: ConfigSummary =
        serde_json::from_slice(body).map_err(|e| format!("invalid image config: {e}"))?;
    if c.rootfs.diff_ids.len() != layers {
        return Err(format!(
            "config lists {} layer diff ids, manifest has {layers} layers",
            c.rootfs.diff_ids.len()
        ));
    }
    for d in &c.rootfs.diff_ids {
        validate_digest(d)?;
    }
    Ok(c)
}

/// Chain IDs of a layer stack, bottom first: `chain(0) = diff(0)`,
/// `chain(n) = sha256(chain(n-1) + " " + diff(n))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    use sha2::{Digest, Sha256};
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => {
                let h = Sha256::digest(format!("{parent} {d}").as_bytes());
                format!("sha256:{}", hex::encode(h))
            }
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
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

    fn index(entries: Vec<serde_json::Value>) -> Index {
        let body =
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
        match parse_manifest(None, body.to_string().as_bytes()).unwrap() {
            ManifestDoc::Index(i) => i,
            _ => panic!("not an index"),
        }
    }

    fn plat(arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
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
        let ManifestDoc::Manifest(m) = parse_manifest(None, m.to_string().as_bytes()).unwrap()
        else {
            panic!("not a manifest")
        };
        assert_eq!(m.config.digest, d(1));
        assert_eq!(m.layers.len(), 2);
        assert_eq!(
            layer_compression(&m.layers[0].media_type),
            Ok(Compression::Gzip)
        );
        assert_eq!(
            layer_compression(&m.layers[1].media_type),
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
        let odd =
            serde_json::json!({"schemaVersion": 2, "mediaType": "application/x-foo"}).to_string();
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
        assert_eq!(
            select_platform(&i, &plat("amd64", None)).unwrap().digest,
            d(2)
        );
        assert_eq!(
            select_platform(&i, &plat("arm64", Some("v8")))
                .unwrap()
                .digest,
            d(1)
        );
        let err = select_platform(&i, &plat("s390x", None)).unwrap_err();
        assert!(
            err.contains("linux/amd64") && err.contains("linux/arm64/v8"),
            "{err}"
        );
    }

    #[test]
    fn honours_variants() {
        // amd64 with no variant never picks a v3 build.
        let i = index(vec![entry(1, "linux", "amd64", Some("v3"))]);
        assert!(select_platform(&i, &plat("amd64", None)).is_err());
        let i = index(vec![
            entry(1, "linux", "amd64", Some("v3")),
            entry(2, "linux", "amd64", Some("v1")),
        ]);
        assert_eq!(
            select_platform(&i, &plat("amd64", None)).unwrap().digest,
            d(2)
        );
        // arm v7 runs v7 before v6, never v8.
        let i = index(vec![
            entry(1, "linux", "arm", Some("v6")),
            entry(2, "linux", "arm", Some("v8")),
            entry(3, "linux", "arm", Some("v7")),
        ]);
        assert_eq!(
            select_platform(&i, &plat("arm", Some("v7")))
                .unwrap()
                .digest,
            d(3)
        );
        assert_eq!(
            select_platform(&i, &plat("arm", Some("v6")))
                .unwrap()
                .digest,
            d(1)
        );
        assert!(select_platform(&i, &plat("arm", Some("v5"))).is_err());
        // arm64 without variant is v8.
        let i = index(vec![entry(1, "linux", "arm64", None)]);
        assert_eq!(
            select_platform(&i, &plat("arm64", Some("v8")))
                .unwrap()
                .digest,
            d(1)
        );
    }

    #[test]
    fn host_platform_is_linux() {
        let p = Platform::host();
        assert_eq!(p.os, "linux");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(p.to_string(), "linux/amd64");
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
        assert_eq!(c.config.unwrap().user.as_deref(), Some("1000:1000"));
        assert!(
            parse_config(body.as_bytes(), 2)
                .unwrap_err()
                .contains("3 layer diff ids")
        );
        let chain = chain_ids(&c.rootfs.diff_ids);
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
}
