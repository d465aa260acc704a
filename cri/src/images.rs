//! ImageService RPCs: PullImage, ListImages, ImageStatus, RemoveImage, ImageFsInfo, over
//! the image service's [`ImageStore`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use berth_imageservice::{Credentials, ImageStore};
use k8s_cri::v1::*;
use tonic::Status;

use crate::node::Node;
use crate::status::status;

pub mod writable;

/// The node's image store.
pub fn image_store(node: &Node) -> Result<Arc<ImageStore>, Status> {
    Ok(node.images.clone())
}

/// The image name of a request, which must be non-empty.
fn image_name(spec: Option<&ImageSpec>) -> Result<&str, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(Status::invalid_argument("image name is empty")),
    }
}

/// Splits an image's `USER` as containerd does: a numeric user becomes `uid`, a name
/// becomes `username`; a `:group` part is dropped.
pub fn user_of(user: &str) -> (Option<Int64Value>, String) {
    let user = user.split(':').next().unwrap_or_default();
    if user.is_empty() {
        return (None, String::new());
    }
    match user.parse::<i64>() {
        Ok(uid) => (Some(Int64Value { value: uid }), String::new()),
        Err(_) => (None, user.to_owned()),
    }
}

fn to_cri(image: berth_imageservice::Image) -> Image {
    let (uid, username) = user_of(&image.user);
    Image {
        spec: Some(ImageSpec {
            image: image.id.clone(),
            ..Default::default()
        }),
        id: image.id,
        repo_tags: image.repo_tags,
        repo_digests: image.repo_digests,
        size: image.size,
        uid,
        username,
        pinned: image.pinned,
    }
}

fn credentials(auth: Option<AuthConfig>) -> Option<Credentials> {
    auth.map(|a| Credentials {
        username: a.username,
        password: a.password,
        auth: a.auth,
        server_address: a.server_address,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    })
}

/// Handles `ListImages`: every image, or the one the filter names.
pub async fn list_images(
    node: &Node,
    req: ListImagesRequest,
) -> Result<ListImagesResponse, Status> {
    let store = image_store(node)?;
    let filter = req
        .filter
        .and_then(|f| f.image)
        .map(|s| s.image)
        .filter(|s| !s.trim().is_empty());
    let images = match filter {
        Some(name) => store
            .get(&name)
            .map_err(|e| status(&format!("looking up image {name:?}"), &e))?
            .into_iter()
            .collect(),
        None => store.list().map_err(|e| status("listing images", &e))?,
    };
    Ok(ListImagesResponse {
        images: images.into_iter().map(to_cri).collect(),
    })
}

/// Handles `ImageStatus`: an unknown image is an empty response, not an error; `verbose`
/// adds the image config as JSON under `info` (containerd's `imageSpec`).
pub async fn image_status(
    node: &Node,
    req: ImageStatusRequest,
) -> Result<ImageStatusResponse, Status> {
    let name = image_name(req.image.as_ref())?;
    let store = image_store(node)?;
    let what = || format!("status of image {name:?}");
    let Some(image) = store.get(name).map_err(|e| status(&what(), &e))? else {
        return Ok(ImageStatusResponse::default());
    };
    let mut info = HashMap::new();
    if req.verbose {
        let config = store
            .image_config(&image.id)
            .map_err(|e| status(&what(), &e))?;
        let json = serde_json::json!({ "id": image.id, "imageSpec": config });
        info.insert("info".to_owned(), json.to_string());
    }
    Ok(ImageStatusResponse {
        image: Some(to_cri(image)),
        info,
    })
}

/// Handles `PullImage`: returns the image ID (the config digest), like containerd.
pub async fn pull_image(node: &Node, req: PullImageRequest) -> Result<PullImageResponse, Status> {
    let name = image_name(req.image.as_ref())?.to_owned();
    let store = image_store(node)?;
    let started = Instant::now();
    let pulled = store.pull_measured(&name, credentials(req.auth)).await;
    node.metrics.observe_pull(
        pulled.as_ref().ok().map(|p| p.downloaded),
        started.elapsed(),
    );
    let pulled = pulled.map_err(|e| status(&format!("pulling image {name:?}"), &e))?;
    Ok(PullImageResponse {
        image_ref: pulled.image.id,
    })
}

/// Handles `RemoveImage`: by ID, tag or digest; an unknown image is not an error.
pub async fn remove_image(
    node: &Node,
    req: RemoveImageRequest,
) -> Result<RemoveImageResponse, Status> {
    let name = image_name(req.image.as_ref())?.to_owned();
    let store = image_store(node)?;
    store
        .remove(&name)
        .await
        .map_err(|e| status(&format!("removing image {name:?}"), &e))?;
    Ok(RemoveImageResponse {})
}

/// Handles `ImageFsInfo`: bytes and inodes of the content store and snapshots (measured
/// again only after pulls, removals and GC changed them), and of the containers' writable
/// layers (each layer's last background measure, at most [`writable::FRESHNESS`] older
/// than the previous call: see [`writable`]; a layer not yet measured counts for nothing).
pub async fn image_fs_info(
    node: &Node,
    _req: ImageFsInfoRequest,
) -> Result<ImageFsInfoResponse, Status> {
    let store = image_store(node)?;
    let usage = match store.cached_fs_usage() {
        Some(u) => Ok(u),
        // A walk of the content store and the per-snapshot usage records: off the async
        // threads.
        None => tokio::task::spawn_blocking(move || store.fs_usage())
            .await
            .map_err(|e| Status::internal(format!("measuring the image filesystem: {e}")))?,
    };
    let usage = usage.map_err(|e| status("measuring the image filesystem", &e))?;
    let layers = node.runtime.writable_layers();
    node.writable
        .track(layers.iter().map(|(id, dir)| (id.as_str(), dir.as_path())));
    let (layer_bytes, layer_inodes) = node.writable.total();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default();
    let fs = |used: u64, inodes: u64| FilesystemUsage {
        timestamp,
        // One filesystem for both, as containerd and CRI-O report when images and
        // containers share a disk: kubelet then sees no split image filesystem.
        fs_id: Some(FilesystemIdentifier {
            mountpoint: usage.mountpoint.display().to_string(),
        }),
        used_bytes: Some(UInt64Value { value: used }),
        inodes_used: Some(UInt64Value { value: inodes }),
    };
    Ok(ImageFsInfoResponse {
        image_filesystems: vec![fs(usage.used_bytes, usage.inodes_used)],
        container_filesystems: vec![fs(layer_bytes, layer_inodes)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::Store;
    use tonic::Code;

    fn node(dir: &std::path::Path) -> Arc<Node> {
        let config = Config {
            root: dir.to_owned(),
            ..Config::in_dir(dir)
        };
        Node::new(config, Store::open(dir).unwrap()).unwrap()
    }

    fn spec(image: &str) -> Option<ImageSpec> {
        Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        })
    }

    #[test]
    fn users_split_like_containerd() {
        assert_eq!(user_of(""), (None, String::new()));
        assert_eq!(
            user_of("1000"),
            (Some(Int64Value { value: 1000 }), String::new())
        );
        assert_eq!(
            user_of("1000:1000"),
            (Some(Int64Value { value: 1000 }), String::new())
        );
        assert_eq!(user_of("nobody"), (None, "nobody".to_owned()));
        assert_eq!(user_of("www-data:www-data"), (None, "www-data".to_owned()));
    }

    #[tokio::test]
    async fn empty_store_answers() {
        let dir = tempfile::tempdir().unwrap();
        let node = node(dir.path());
        let list = list_images(&node, ListImagesRequest::default())
            .await
            .unwrap();
        assert!(list.images.is_empty());
        let status = image_status(
            &node,
            ImageStatusRequest {
                image: spec("busybox"),
                verbose: true,
            },
        )
        .await
        .unwrap();
        assert_eq!(
            status,
            ImageStatusResponse::default(),
            "unknown image: empty"
        );
        let err = image_status(&node, ImageStatusRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let fs = image_fs_info(&node, ImageFsInfoRequest::default())
            .await
            .unwrap();
        let u = &fs.image_filesystems[0];
        assert_eq!(
            u.fs_id.as_ref().unwrap().mountpoint,
            dir.path().display().to_string()
        );
        assert!(u.inodes_used.as_ref().unwrap().value >= 3);
    }

    #[tokio::test]
    async fn bad_requests_get_codes() {
        let dir = tempfile::tempdir().unwrap();
        let node = node(dir.path());
        node.reconcile().await;
        let pull = |image: &str| {
            pull_image(
                &node,
                PullImageRequest {
                    image: spec(image),
                    ..Default::default()
                },
            )
        };
        let err = pull("Not/A/Valid:Ref:").await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("Not/A/Valid"), "{err:?}");
        let err = pull_image(&node, PullImageRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        // Nothing listens on port 1 of loopback.
        let err = pull("127.0.0.1:1/x/y:z").await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        remove_image(
            &node,
            RemoveImageRequest {
                image: spec("never/pulled:1"),
            },
        )
        .await
        .expect("removing an unknown image is fine");
    }
}
