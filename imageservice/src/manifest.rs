//! Manifests, indexes and image configs as `oci_spec::image`'s types: parsing what a
//! registry sends (OCI and Docker schema 2), the choice of the node's platform in an
//! index, the compression a layer declares, and chain IDs.
//!
//! oci-spec requires some fields that registries in the wild leave out and that Berth has
//! always accepted: a descriptor's `mediaType` (some writers omit it on layers, whose
//! compression the unpacker then sniffs), a platform's `os` and `architecture`, and a
//! config's `os`, `architecture` and `rootfs.type`. `from_json` reads such a document
//! with those fields empty instead of refusing it.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub use oci_spec::image::{
    Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os, Platform,
};

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

/// The platform this daemon runs on, in GOARCH naming with the CPU variant images use.
pub fn host_platform() -> Platform {
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
    let mut p = Platform::default();
    p.set_os(Os::Linux)
        .set_architecture(Arch::from(arch))
        .set_variant(variant.map(String::from));
    p
}

/// `os/architecture[/variant]`, as errors and logs name a platform.
pub fn platform_name(p: &Platform) -> String {
    match p.variant() {
        Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
        None => format!("{}/{}", p.os(), p.architecture()),
    }
}

/// How well an image built for `candidate` fits a node of platform `want`: `None` if it
/// cannot run, lower is better.
fn rank(want: &Platform, candidate: &Platform) -> Option<u32> {
    if candidate.os() != want.os() || candidate.architecture() != want.architecture() {
        return None;
    }
    let want_variant = want.variant().as_deref().unwrap_or("");
    let have = candidate.variant().as_deref().unwrap_or("");
    if want_variant == have {
        return Some(0);
    }
    let num = |v: &str| v.strip_prefix('v').and_then(|n| n.parse::<u32>().ok());
    match want.architecture() {
        // arm64: no variant means v8.
        Arch::ARM64
            if (want_variant == "v8" && have.is_empty())
                || (want_variant.is_empty() && have == "v8") =>
        {
            Some(0)
        }
        // amd64 without a variant runs the baseline only.
        Arch::Amd64 if want_variant.is_empty() => (have == "v1").then_some(0),
        // Older variants run on newer CPUs; prefer the newest that runs.
        _ => match (num(want_variant), num(have)) {
            (Some(w), Some(h)) if h <= w => Some(1 + w - h),
            (Some(_), None) if have.is_empty() => Some(100),
            _ => None,
        },
    }
}

/// A parsed manifest document (boxed: oci-spec's documents are hundreds of bytes each).
#[derive(Clone, Debug)]
pub enum ManifestDoc {
    /// A single-platform manifest (OCI or Docker schema 2).
    Manifest(Box<ImageManifest>),
    /// A multi-platform index (OCI) or manifest list (Docker).
    Index(Box<ImageIndex>),
}

/// Parses a manifest or index. `content_type` is the registry's `Content-Type` header,
/// used when the document does not state its own media type.
pub fn parse_manifest(content_type: Option<&str>, body: &[u8]) -> Result<ManifestDoc, String> {
    /// Just enough of any manifest to tell which kind it is.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        schema_version: Option<u32>,
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        layers: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        fs_layers: Option<serde::de::IgnoredAny>,
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
            let index: ImageIndex =
                from_json(body, fill_index).map_err(|e| format!("invalid image index: {e}"))?;
            for m in index.manifests() {
                validate_digest(m.digest().as_ref())?;
            }
            ManifestDoc::Index(Box::new(index))
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: ImageManifest = from_json(body, fill_manifest)
                .map_err(|e| format!("invalid image manifest: {e}"))?;
            validate_digest(m.config().digest().as_ref())?;
            for l in m.layers() {
                validate_digest(l.digest().as_ref())?;
                layer_compression(l.media_type())?;
            }
            ManifestDoc::Manifest(Box::new(m))
        }
        "" => return Err("manifest has no media type".into()),
        other => return Err(format!("unsupported manifest media type {other:?}")),
    };
    Ok(doc)
}

/// Chooses the index entry for `platform`: the best-ranked runnable one, first in the
/// index on ties. The error lists what the index offers.
pub fn select_platform<'a>(
    index: &'a ImageIndex,
    platform: &Platform,
) -> Result<&'a Descriptor, String> {
    let runnable =
        |d: &&Descriptor| matches!(d.media_type().as_ref(), OCI_MANIFEST | DOCKER_MANIFEST | "");
    index
        .manifests()
        .iter()
        .filter(runnable)
        .filter_map(|d| Some((rank(platform, d.platform().as_ref()?)?, d)))
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, d)| d)
        .ok_or_else(|| {
            let available: Vec<String> = index
                .manifests()
                .iter()
                .filter_map(|d| d.platform().as_ref())
                .map(platform_name)
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
pub fn layer_compression(media_type: &MediaType) -> Result<Compression, String> {
    Ok(match media_type {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Compression::None,
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => Compression::Gzip,
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => Compression::Zstd,
        MediaType::Other(docker) => match docker.as_str() {
            "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            // Some writers omit the layer media type; the unpacker sniffs the magic bytes.
            "" => Compression::None,
            other => return Err(format!("unsupported layer media type {other:?}")),
        },
        other => return Err(format!("unsupported layer media type {:?}", other.as_ref())),
    })
}

/// Parses the config blob and checks it matches the manifest's layers.
pub fn parse_config(body: &[u8], layers: usize) -> Result<ImageConfiguration, String> {
    let c: ImageConfiguration =
        from_json(body, fill_config).map_err(|e| format!("invalid image config: {e}"))?;
    let diff_ids = c.rootfs().diff_ids();
    if diff_ids.len() != layers {
        return Err(format!(
            "config lists {} layer diff ids, manifest has {layers} layers",
            diff_ids.len()
        ));
    }
    for d in diff_ids {
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

/// Deserializes `body` as oci-spec's `T`. A document oci-spec refuses is read again with
/// the fields `fill` knows given their empty value where absent (see the module docs); a
/// document `fill` had nothing to add to gets oci-spec's error.
///
/// The first reading keeps serde's refusal of a repeated field; the second one refuses any
/// repeated key, so that no document reads one way here and another way elsewhere.
fn from_json<T: DeserializeOwned>(
    body: &[u8],
    fill: fn(&mut Value) -> bool,
) -> Result<T, serde_json::Error> {
    let refused = match serde_json::from_slice(body) {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    let UniqueKeys(mut value) = serde_json::from_slice(body)?;
    if !fill(&mut value) {
        return Err(refused);
    }
    serde_json::from_value(value)
}

/// Gives `object[key]` an empty string if `object` is a JSON object without `key`; says
/// whether it did.
fn fill_empty(object: Option<&mut Value>, key: &str) -> bool {
    match object {
        Some(Value::Object(o)) if !o.contains_key(key) => {
            o.insert(key.to_owned(), Value::String(String::new()));
            true
        }
        _ => false,
    }
}

/// A descriptor's `mediaType`, and its platform's `os` and `architecture`.
fn fill_descriptor(d: &mut Value) -> bool {
    let mut filled = fill_empty(Some(&mut *d), "mediaType");
    for key in ["os", "architecture"] {
        filled |= fill_empty(d.get_mut("platform"), key);
    }
    filled
}

/// Every descriptor in the JSON array `list`.
fn fill_descriptors(list: Option<&mut Value>) -> bool {
    match list {
        Some(Value::Array(a)) => a.iter_mut().fold(false, |f, d| fill_descriptor(d) | f),
        _ => false,
    }
}

/// A manifest's config, layers and subject.
fn fill_manifest(m: &mut Value) -> bool {
    let mut filled = fill_descriptors(m.get_mut("layers"));
    for key in ["config", "subject"] {
        filled |= m.get_mut(key).is_some_and(fill_descriptor);
    }
    filled
}

/// An index's entries and subject.
fn fill_index(i: &mut Value) -> bool {
    let subject = i.get_mut("subject").is_some_and(fill_descriptor);
    fill_descriptors(i.get_mut("manifests")) | subject
}

/// A config's `os`, `architecture` and `rootfs.type`.
fn fill_config(c: &mut Value) -> bool {
    let mut filled = fill_empty(c.get_mut("rootfs"), "type");
    for key in ["os", "architecture"] {
        filled |= fill_empty(Some(&mut *c), key);
    }
    filled
}

/// A JSON value whose objects have no repeated key.
struct UniqueKeys(Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let UniqueKeys(value) = map.next_value()?;
            if out.insert(key.clone(), value).is_some() {
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate key `{key}`"
                )));
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(UniqueKeys(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests;
