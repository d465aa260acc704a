//! ImageService RPCs: PullImage, ListImages, ImageStatus, RemoveImage, ImageFsInfo.

use k8s_cri::v1::*;
use tonic::Status;

use crate::node::Node;
use crate::not_implemented;

/// Handles `ListImages`.
pub async fn list_images(
    _node: &Node,
    _req: ListImagesRequest,
) -> Result<ListImagesResponse, Status> {
    Err(not_implemented("ListImages"))
}

/// Handles `ImageStatus`.
pub async fn image_status(
    _node: &Node,
    _req: ImageStatusRequest,
) -> Result<ImageStatusResponse, Status> {
    Err(not_implemented("ImageStatus"))
}

/// Handles `PullImage`.
pub async fn pull_image(_node: &Node, _req: PullImageRequest) -> Result<PullImageResponse, Status> {
    Err(not_implemented("PullImage"))
}

/// Handles `RemoveImage`.
pub async fn remove_image(
    _node: &Node,
    _req: RemoveImageRequest,
) -> Result<RemoveImageResponse, Status> {
    Err(not_implemented("RemoveImage"))
}

/// Handles `ImageFsInfo`.
pub async fn image_fs_info(
    _node: &Node,
    _req: ImageFsInfoRequest,
) -> Result<ImageFsInfoResponse, Status> {
    Err(not_implemented("ImageFsInfo"))
}
