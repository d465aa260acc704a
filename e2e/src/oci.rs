//! A small, deterministic OCI (and Docker schema 2) image writer: tar layers (plain, gzip,
//! zstd) with whiteouts, image configs, manifests and indexes, each a blob addressed by
//! its sha256 digest.
//!
//! The documents are `oci_spec::image` types (Docker schema 2 ones too: they have the same
//! shape under Docker's media types). Every document this writes is well-formed; tests that
//! need hostile or legacy documents write those themselves.
//!
//! Determinism: every tar header has the same mtime ([`FIXED_MTIME`]) and explicit owners,
//! gzip headers carry no time or name, JSON has a fixed key order, so the same inputs give
//! the same digests on every run.

use std::collections::BTreeSet;
use std::io::Write;

use bytes::Bytes;
use oci_spec::image::{
    self as spec, HistoryBuilder, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, PlatformBuilder, RootFsBuilder,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The mtime of every file in every layer: 2024-01-01T00:00:00Z.
pub const FIXED_MTIME: u64 = 1_704_067_200;
/// The `created` time of every image config.
pub const FIXED_CREATED: &str = "2024-01-01T00:00:00Z";

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer media type.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A content-addressed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Its media type.
    pub media_type: String,
    /// `sha256:<hex>` of `data`.
    pub digest: String,
    /// The bytes.
    pub data: Bytes,
}

impl Blob {
    /// A blob of `data` with `media_type`.
    pub fn new(media_type: &str, data: impl Into<Bytes>) -> Blob {
        let data = data.into();
        Blob {
            media_type: media_type.to_string(),
            digest: digest(&data),
            data,
        }
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// An OCI content descriptor for this blob.
    pub fn descriptor(&self) -> Result<spec::Descriptor> {
        let digest: spec::Digest = self.digest.parse().map_err(unwritable)?;
        Ok(spec::Descriptor::new(
            MediaType::from(self.media_type.as_str()),
            self.size(),
            digest,
        ))
    }
}

/// How a layer's tar is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (header without time or name).
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// What a tar entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file with its content.
    File(Bytes),
    /// A symbolic link to the target.
    Symlink(String),
    /// A hard link to an earlier entry of the same layer (path relative to the root).
    Hardlink(String),
}

/// One tar entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the root, without leading or trailing '/'.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (with setuid/setgid/sticky).
    pub mode: u32,
    /// Owner uid.
    pub uid: u64,
    /// Owner gid.
    pub gid: u64,
}

/// Builds one layer's file tree in tar order. Parent directories are added (0755, root)
/// before their first child unless added explicitly first.
#[derive(Debug, Clone, Default)]
pub struct LayerBuilder {
    entries: Vec<Entry>,
    paths: BTreeSet<String>,
}

fn clean(path: &str) -> Result<String> {
    let p = path.trim_matches('/');
    if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(Error::Image(format!("bad layer path {path:?}")));
    }
    Ok(p.to_string())
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> LayerBuilder {
        LayerBuilder::default()
    }

    /// Whether the layer already has an entry at `path`.
    pub fn contains(&self, path: &str) -> bool {
        clean(path).is_ok_and(|p| self.paths.contains(&p))
    }

    /// The entries in tar order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Adds an entry (and missing parent directories). Adding a path twice is an error.
    pub fn push(&mut self, mut entry: Entry) -> Result<&mut Self> {
        entry.path = clean(&entry.path)?;
        if self.paths.contains(&entry.path) {
            return Err(Error::Image(format!("duplicate layer path {}", entry.path)));
        }
        let mut parent = String::new();
        let comps: Vec<&str> = entry.path.split('/').collect();
        for comp in &comps[..comps.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            if self.paths.insert(parent.clone()) {
                self.entries.push(Entry {
                    path: parent.clone(),
                    kind: EntryKind::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                });
            }
        }
        self.paths.insert(entry.path.clone());
        self.entries.push(entry);
        Ok(self)
    }

    /// Adds a root-owned directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self> {
        self.dir_owned(path, mode, 0, 0)
    }

    /// Adds a directory owned by `uid:gid`.
    pub fn dir_owned(&mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Result<&mut Self> {
        self.push(Entry {
            path: path.into(),
            kind: EntryKind::Dir,
            mode,
            uid,
            gid,
        })
    }

    /// Adds a root-owned regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: impl Into<Bytes>) -> Result<&mut Self> {
        self.file_owned(path, mode, 0, 0, data)
    }

    /// Adds a regular file owned by `uid:gid`.
    pub fn file_owned(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        data: impl Into<Bytes>,
    ) -> Result<&mut Self> {
        self.push(Entry {
            path: path.into(),
            kind: EntryKind::File(data.into()),
            mode,
            uid,
            gid,
        })
    }

    /// Adds a symbolic link `path -> target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        self.push(Entry {
            path: path.into(),
            kind: EntryKind::Symlink(target.into()),
            mode: 0o777,
            uid: 0,
            gid: 0,
        })
    }

    /// Adds a hard link `path` to the earlier entry `target` of this layer.
    pub fn hardlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        let target = clean(target)?;
        if !self.paths.contains(&target) {
            return Err(Error::Image(format!(
                "hard link target {target} is not in the layer"
            )));
        }
        self.push(Entry {
            path: path.into(),
            kind: EntryKind::Hardlink(target),
            mode: 0o644,
            uid: 0,
            gid: 0,
        })
    }

    /// Deletes `path` of the layers below: the whiteout file `.wh.<name>` beside it.
    pub fn whiteout(&mut self, path: &str) -> Result<&mut Self> {
        let p = clean(path)?;
        let wh = match p.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{p}"),
        };
        self.file(&wh, 0o644, Bytes::new())
    }

    /// Hides everything the layers below have in directory `dir` (the opaque marker
    /// `.wh..wh..opq`); adds `dir` itself if the layer does not have it yet.
    pub fn opaque(&mut self, dir: &str) -> Result<&mut Self> {
        let d = clean(dir)?;
        if !self.paths.contains(&d) {
            self.dir(&d, 0o755)?;
        }
        self.file(&format!("{d}/.wh..wh..opq"), 0o644, Bytes::new())
    }

    /// The layer as an uncompressed tar.
    pub fn tar(&self) -> Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        let io = |e: std::io::Error| Error::Image(format!("write tar: {e}"));
        for e in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(FIXED_MTIME);
            h.set_uid(e.uid);
            h.set_gid(e.gid);
            h.set_mode(e.mode);
            match &e.kind {
                EntryKind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{}/", e.path), std::io::empty())
                        .map_err(io)?;
                }
                EntryKind::File(data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, &e.path, &data[..]).map_err(io)?;
                }
                EntryKind::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, &e.path, target).map_err(io)?;
                }
                EntryKind::Hardlink(target) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, &e.path, target).map_err(io)?;
                }
            }
        }
        b.into_inner().map_err(io)
    }

    /// Builds the layer: its tar compressed with `compression`.
    pub fn build(&self, compression: Compression) -> Result<Layer> {
        let mut v = self.build_many(&[compression])?;
        Ok(v.remove(0))
    }

    /// Builds the layer once per compression (one tar, one diff ID for all).
    pub fn build_many(&self, compressions: &[Compression]) -> Result<Vec<Layer>> {
        let tar = self.tar()?;
        let diff_id = digest(&tar);
        let uncompressed_size = tar.len() as u64;
        compressions
            .iter()
            .map(|&compression| {
                let data = compress(&tar, compression)?;
                Ok(Layer {
                    blob: Blob::new(compression.oci_media_type(), data),
                    diff_id: diff_id.clone(),
                    compression,
                    uncompressed_size,
                })
            })
            .collect()
    }
}

/// Compresses a tar stream.
pub fn compress(tar: &[u8], compression: Compression) -> Result<Vec<u8>> {
    let io = |e: std::io::Error| Error::Image(format!("compress layer: {e}"));
    match compression {
        Compression::None => Ok(tar.to_vec()),
        Compression::Gzip => {
            let mut enc = flate2::GzBuilder::new()
                .mtime(0)
                .operating_system(255)
                .write(Vec::new(), flate2::Compression::fast());
            enc.write_all(tar).map_err(io)?;
            enc.finish().map_err(io)
        }
        Compression::Zstd => zstd::stream::encode_all(tar, 3).map_err(io),
    }
}

/// A built layer.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The (compressed) blob as pushed; its media type is the OCI one.
    pub blob: Blob,
    /// `sha256` of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
    /// How `blob` is compressed.
    pub compression: Compression,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
}

/// A platform: `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// GOARCH name: `amd64`, `arm64`, ...
    pub architecture: String,
    /// CPU variant (`v8`), if any.
    pub variant: Option<String>,
}

impl Platform {
    /// linux on the GOARCH name of this machine.
    pub fn host() -> Platform {
        Platform::linux(host_arch(), None)
    }

    /// `linux/<arch>[/<variant>]`.
    pub fn linux(arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(str::to_string),
        }
    }

    /// The platform of an index entry.
    fn descriptor_platform(&self) -> Result<spec::Platform> {
        let mut p = PlatformBuilder::default()
            .architecture(self.architecture.as_str())
            .os(self.os.as_str())
            .build()
            .map_err(unwritable)?;
        p.set_variant(self.variant.clone());
        Ok(p)
    }
}

/// The GOARCH name of this machine's architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The runtime settings of an image config (`config` object), as a Dockerfile sets them.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    /// `USER`.
    pub user: Option<String>,
    /// `ENV`, as `KEY=value`.
    pub env: Vec<String>,
    /// `ENTRYPOINT`.
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    pub cmd: Option<Vec<String>>,
    /// `WORKDIR`.
    pub working_dir: Option<String>,
    /// `STOPSIGNAL`.
    pub stop_signal: Option<String>,
    /// `LABEL`s.
    pub labels: Vec<(String, String)>,
    /// `EXPOSE`, as `port/proto`.
    pub exposed_ports: Vec<String>,
    /// `VOLUME`s.
    pub volumes: Vec<String>,
}

impl RunConfig {
    /// The image config's `config` object: only what the Dockerfile set.
    fn config(&self) -> Result<spec::Config> {
        let mut c = spec::Config::default();
        c.set_user(self.user.clone())
            .set_exposed_ports(non_empty(&self.exposed_ports))
            .set_env(non_empty(&self.env))
            .set_entrypoint(self.entrypoint.clone())
            .set_cmd(self.cmd.clone())
            .set_volumes(non_empty(&self.volumes))
            .set_working_dir(self.working_dir.clone())
            .set_labels((!self.labels.is_empty()).then(|| self.labels.iter().cloned().collect()))
            .set_stop_signal(self.stop_signal.clone());
        Ok(c)
    }
}

fn non_empty(v: &[String]) -> Option<Vec<String>> {
    (!v.is_empty()).then(|| v.to_vec())
}

/// Manifest flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCI image manifest and config media types.
    Oci,
    /// Docker schema 2 media types (layers must be gzip).
    Docker,
}

/// A built single-platform image: layers, config and manifest blobs.
#[derive(Debug, Clone)]
pub struct Image {
    /// The layers, bottom first, with their manifest media types.
    pub layers: Vec<Layer>,
    /// The image config blob.
    pub config: Blob,
    /// The manifest blob.
    pub manifest: Blob,
    /// The platform the config names.
    pub platform: Platform,
}

impl Image {
    /// Builds config and manifest for `layers` (bottom first).
    pub fn build(
        format: Format,
        platform: Platform,
        run: &RunConfig,
        layers: Vec<Layer>,
        history: &str,
    ) -> Result<Image> {
        let mut layers = layers;
        if format == Format::Docker {
            for l in &mut layers {
                if l.compression != Compression::Gzip {
                    return Err(Error::Image("docker schema 2 layers must be gzip".into()));
                }
                l.blob.media_type = DOCKER_LAYER_GZIP.into();
            }
        }
        let rootfs = RootFsBuilder::default()
            .diff_ids(layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>())
            .build()
            .map_err(unwritable)?;
        let history = (0..layers.len())
            .map(|i| {
                HistoryBuilder::default()
                    .created(FIXED_CREATED)
                    .created_by(format!("berth-e2e: {history} (layer {i})"))
                    .build()
                    .map_err(unwritable)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut config = ImageConfigurationBuilder::default()
            .created(FIXED_CREATED)
            .architecture(platform.architecture.as_str())
            .os(platform.os.as_str())
            .config(run.config()?)
            .rootfs(rootfs)
            .history(history)
            .build()
            .map_err(unwritable)?;
        config.set_variant(platform.variant.clone());
        let (manifest_type, config_type) = match format {
            Format::Oci => (OCI_MANIFEST, OCI_CONFIG),
            Format::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
        };
        let config = Blob::new(config_type, to_json(&config)?);
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(manifest_type)
            .config(config.descriptor()?)
            .layers(
                layers
                    .iter()
                    .map(|l| l.blob.descriptor())
                    .collect::<Result<Vec<_>>>()?,
            )
            .build()
            .map_err(unwritable)?;
        let manifest = Blob::new(manifest_type, to_json(&manifest)?);
        Ok(Image {
            layers,
            config,
            manifest,
            platform,
        })
    }
}

/// A multi-platform index over built images.
#[derive(Debug, Clone)]
pub struct Index {
    /// The images it lists, in order.
    pub images: Vec<Image>,
    /// The index blob.
    pub blob: Blob,
}

impl Index {
    /// Builds an OCI index (or a Docker manifest list with `Format::Docker`) over `images`.
    pub fn build(format: Format, images: Vec<Image>) -> Result<Index> {
        let media_type = match format {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_LIST,
        };
        let manifests = images
            .iter()
            .map(|i| {
                let mut d = i.manifest.descriptor()?;
                d.set_platform(Some(i.platform.descriptor_platform()?));
                Ok(d)
            })
            .collect::<Result<Vec<_>>>()?;
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(media_type)
            .manifests(manifests)
            .build()
            .map_err(unwritable)?;
        let blob = Blob::new(media_type, to_json(&index)?);
        Ok(Index { images, blob })
    }
}

/// The document's bytes, keys sorted: written through a `serde_json::Value` (whose maps are
/// ordered), because oci-spec keeps labels, exposed ports and volumes in `HashMap`s that
/// iterate in a different order on each run, and digests must not change between runs.
fn to_json(doc: &impl Serialize) -> Result<Vec<u8>> {
    let json = |source| Error::Json {
        what: "image document".into(),
        source,
    };
    serde_json::to_vec(&serde_json::to_value(doc).map_err(json)?).map_err(json)
}

/// oci-spec refused a document or digest this module made: a mistake here, not in a test.
fn unwritable(e: oci_spec::OciSpecError) -> Error {
    Error::Image(format!("build image document: {e}"))
}

#[cfg(test)]
mod tests;
