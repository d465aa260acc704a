//! What the harness records about the images it pushed (digests, sizes, platforms), and
//! how tests read it back.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::{BUSYBOX, BUSYBOX_LOCAL, Content, TestImage};
use crate::env::Env;
use crate::error::{Error, Result};
use crate::oci::Platform;

/// Digests and sizes of one pushed image, as the harness recorded them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Upstream reference (`docker.io/library/busybox:1.28`).
    pub reference: String,
    /// Repository in the registry (`library/busybox`).
    pub repository: String,
    /// Tag.
    pub tag: String,
    /// Digest the tag resolves to (the manifest, or the index for multi-arch images).
    pub digest: String,
    /// Media type of what the tag resolves to.
    pub media_type: String,
    /// Config digest (the image id) of this machine's platform.
    pub config_digest: String,
    /// Manifest digest of this machine's platform.
    pub manifest_digest: String,
    /// Layers of this machine's platform, bottom first.
    pub layers: Vec<LayerInfo>,
    /// Every platform of an index (empty for single manifests).
    pub platforms: Vec<PlatformInfo>,
    /// `USER` of the config, if set.
    pub user: Option<String>,
}

impl ImageInfo {
    /// `name@digest` as CRI `repo_digests` lists it (`docker.io/library/busybox@sha256:..`).
    pub fn repo_digest(&self) -> String {
        let name = self
            .reference
            .rsplit_once(':')
            .map_or(&*self.reference, |(n, _)| n);
        format!("{name}@{}", self.digest)
    }

    /// Sum of the compressed layer sizes of this machine's platform.
    pub fn layers_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// One layer of a pushed image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Blob digest.
    pub digest: String,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// Media type in the manifest.
    pub media_type: String,
    /// Blob size.
    pub size: u64,
    /// Uncompressed tar size.
    pub uncompressed_size: u64,
}

/// One platform entry of an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformInfo {
    /// `linux`.
    pub os: String,
    /// GOARCH name.
    pub architecture: String,
    /// CPU variant.
    pub variant: Option<String>,
    /// Its manifest digest.
    pub manifest_digest: String,
    /// Its config digest.
    pub config_digest: String,
}

/// The catalog entry for a built image.
pub fn info_of(img: &TestImage) -> ImageInfo {
    let (host_img, platforms, digest, media_type) = match &img.content {
        Content::Single(i) => (
            i,
            vec![],
            i.manifest.digest.clone(),
            i.manifest.media_type.clone(),
        ),
        Content::Index(idx) => {
            let host = Platform::host();
            let h = idx
                .images
                .iter()
                .find(|i| i.platform == host)
                .unwrap_or(&idx.images[0]);
            let platforms = idx
                .images
                .iter()
                .map(|i| PlatformInfo {
                    os: i.platform.os.clone(),
                    architecture: i.platform.architecture.clone(),
                    variant: i.platform.variant.clone(),
                    manifest_digest: i.manifest.digest.clone(),
                    config_digest: i.config.digest.clone(),
                })
                .collect();
            (
                h,
                platforms,
                idx.blob.digest.clone(),
                idx.blob.media_type.clone(),
            )
        }
    };
    let config: serde_json::Value =
        serde_json::from_slice(&host_img.config.data).unwrap_or_default();
    ImageInfo {
        reference: img.reference.to_string(),
        repository: img.repository.clone(),
        tag: img.tag.clone(),
        digest,
        media_type,
        config_digest: host_img.config.digest.clone(),
        manifest_digest: host_img.manifest.digest.clone(),
        layers: host_img
            .layers
            .iter()
            .map(|l| LayerInfo {
                digest: l.blob.digest.clone(),
                diff_id: l.diff_id.clone(),
                media_type: l.blob.media_type.clone(),
                size: l.blob.size(),
                uncompressed_size: l.uncompressed_size,
            })
            .collect(),
        platforms,
        user: config["config"]["User"].as_str().map(str::to_string),
    }
}

/// The catalog file's content for `images`: reference -> [`ImageInfo`].
pub fn catalog_json(images: &[TestImage]) -> Result<Vec<u8>> {
    let map: BTreeMap<&str, ImageInfo> = images.iter().map(|i| (i.reference, info_of(i))).collect();
    serde_json::to_vec_pretty(&map).map_err(|source| Error::Json {
        what: "image catalog".into(),
        source,
    })
}

/// What the harness pushed for `reference` (one of the constants of this module).
pub fn info(reference: &str) -> Result<ImageInfo> {
    static CATALOG: OnceLock<std::result::Result<BTreeMap<String, ImageInfo>, String>> =
        OnceLock::new();
    let catalog = CATALOG
        .get_or_init(|| {
            let env = Env::try_get().map_err(|e| e.to_string())?;
            let data = std::fs::read(&env.images_file)
                .map_err(|e| format!("read {}: {e}", env.images_file.display()))?;
            serde_json::from_slice(&data)
                .map_err(|e| format!("parse {}: {e}", env.images_file.display()))
        })
        .as_ref()
        .map_err(|m| Error::Environment(m.clone()))?;
    let key = if reference == BUSYBOX_LOCAL {
        BUSYBOX
    } else {
        reference
    };
    catalog
        .get(key)
        .cloned()
        .ok_or_else(|| Error::Image(format!("{reference} is not a test image")))
}
