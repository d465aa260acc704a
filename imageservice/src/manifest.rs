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
mod tests;
