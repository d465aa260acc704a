//! Container RPCs: lifecycle, status, logs, ExecSync, events. The image service resolves
//! the image into plain layers and config; the runtime does the rest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use berth_runtime::{ImageConfig, ImageInfo};
use k8s_cri::v1::*;
use tokio_stream::StreamExt;
use tonic::Status;

use crate::images::{image_store, to_status};
use crate::node::Node;
use crate::not_implemented;
use crate::pods::runtime_status;

/// The image a container asks for, as plain data for the runtime.
fn image_info(node: &Node, name: &str) -> Result<ImageInfo, Status> {
    let store = image_store(node)?;
    let what = format!("image {name:?}");
    let image = store
        .get(name)
        .map_err(|e| to_status(&what, &e))?
        .ok_or_else(|| Status::not_found(format!("image {name:?} not found: pull it first")))?;
    let lower_dirs = store
        .rootfs_layers(&image.id)
        .map_err(|e| to_status(&what, &e))?;
    let oci = store
        .image_config(&image.id)
        .map_err(|e| to_status(&what, &e))?;
    let config = oci
        .config()
        .as_ref()
        .map(|c| ImageConfig {
            env: c.env().clone().unwrap_or_default(),
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
            stop_signal: c.stop_signal().clone().unwrap_or_default(),
        })
        .unwrap_or_default();
    Ok(ImageInfo {
        id: image.id.clone(),
        name: name.to_owned(),
        repo_digest: image.repo_digests.first().cloned().unwrap_or_default(),
        lower_dirs,
        config,
    })
}

/// Handles `CreateContainer`.
pub async fn create_container(
    node: &Node,
    req: CreateContainerRequest,
) -> Result<CreateContainerResponse, Status> {
    node.wait_reconciled().await?;
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("container config is missing"))?;
    let name = config
        .image
        .as_ref()
        .map(|i| i.image.trim())
        .unwrap_or_default();
    if name.is_empty() {
        return Err(Status::invalid_argument("container config names no image"));
    }
    let image = image_info(node, name)?;
    let mut mount_images: HashMap<String, Vec<PathBuf>> = HashMap::new();
    let store = image_store(node)?;
    for m in &config.mounts {
        if let Some(spec) = m.image.as_ref().filter(|s| !s.image.is_empty()) {
            let layers = store
                .rootfs_layers(&spec.image)
                .map_err(|e| to_status(&format!("image volume {:?}", spec.image), &e))?;
            mount_images.insert(spec.image.clone(), layers);
        }
    }
    let pod_config = req.sandbox_config.unwrap_or_default();
    let image_id = image.id.clone();
    let id = node
        .runtime
        .create_container(
            &req.pod_sandbox_id,
            &config,
            &pod_config,
            image,
            &mount_images,
        )
        .await
        .map_err(|e| runtime_status("CreateContainer", &e))?;
    // Keep the layers from image GC while the container exists.
    if let Err(e) = store.add_lease(&id, &image_id) {
        let _ = node.runtime.remove_container(&id).await;
        return Err(to_status(
            &format!("lease image {image_id} for container {id}"),
            &e,
        ));
    }
    Ok(CreateContainerResponse { container_id: id })
}

/// Handles `StartContainer`.
pub async fn start_container(
    node: &Node,
    req: StartContainerRequest,
) -> Result<StartContainerResponse, Status> {
    node.wait_reconciled().await?;
    node.runtime
        .start_container(&req.container_id)
        .await
        .map_err(|e| runtime_status("StartContainer", &e))?;
    Ok(StartContainerResponse {})
}

/// Handles `StopContainer`.
pub async fn stop_container(
    node: &Node,
    req: StopContainerRequest,
) -> Result<StopContainerResponse, Status> {
    node.wait_reconciled().await?;
    node.runtime
        .stop_container(&req.container_id, req.timeout)
        .await
        .map_err(|e| runtime_status("StopContainer", &e))?;
    Ok(StopContainerResponse {})
}

/// Handles `RemoveContainer`.
pub async fn remove_container(
    node: &Node,
    req: RemoveContainerRequest,
) -> Result<RemoveContainerResponse, Status> {
    node.wait_reconciled().await?;
    let full_id = node
        .runtime
        .container_status(&req.container_id, false)
        .ok()
        .and_then(|s| s.status)
        .map(|s| s.id);
    // The container's image lease ends in the transaction that records its removal intent.
    let lease = match &full_id {
        Some(id) => Some(image_store(node)?.lease_release(id)),
        None => None,
    };
    node.runtime
        .remove_container_with(&req.container_id, lease)
        .await
        .map_err(|e| runtime_status("RemoveContainer", &e))?;
    Ok(RemoveContainerResponse {})
}

/// Handles `ListContainers`.
pub async fn list_containers(
    node: &Node,
    req: ListContainersRequest,
) -> Result<ListContainersResponse, Status> {
    Ok(ListContainersResponse {
        containers: node.runtime.list_containers(req.filter.as_ref()),
    })
}

/// Handles `ContainerStatus`.
pub async fn container_status(
    node: &Node,
    req: ContainerStatusRequest,
) -> Result<ContainerStatusResponse, Status> {
    node.runtime
        .container_status(&req.container_id, req.verbose)
        .map_err(|e| runtime_status("ContainerStatus", &e))
}

/// Handles `UpdateContainerResources`.
pub async fn update_container_resources(
    node: &Node,
    req: UpdateContainerResourcesRequest,
) -> Result<UpdateContainerResourcesResponse, Status> {
    let Some(linux) = req.linux else {
        return Err(Status::invalid_argument(
            "UpdateContainerResources needs linux resources",
        ));
    };
    node.runtime
        .update_container_resources(&req.container_id, &linux)
        .await
        .map_err(|e| runtime_status("UpdateContainerResources", &e))?;
    Ok(UpdateContainerResourcesResponse {})
}

/// Handles `ReopenContainerLog`.
pub async fn reopen_container_log(
    node: &Node,
    req: ReopenContainerLogRequest,
) -> Result<ReopenContainerLogResponse, Status> {
    node.runtime
        .reopen_container_log(&req.container_id)
        .await
        .map_err(|e| runtime_status("ReopenContainerLog", &e))?;
    Ok(ReopenContainerLogResponse {})
}

/// Handles `ExecSync`: output cut at 16 MiB per stream; a timeout is DeadlineExceeded.
pub async fn exec_sync(node: &Node, req: ExecSyncRequest) -> Result<ExecSyncResponse, Status> {
    let timeout = Duration::from_secs(req.timeout.max(0) as u64);
    node.runtime
        .exec_sync(&req.container_id, &req.cmd, timeout)
        .await
        .map_err(|e| runtime_status("ExecSync", &e))
}

/// Handles `CheckpointContainer`.
pub async fn checkpoint_container(
    _node: &Node,
    _req: CheckpointContainerRequest,
) -> Result<CheckpointContainerResponse, Status> {
    Err(not_implemented("CheckpointContainer"))
}

/// Handles `GetContainerEvents`: a subscriber that falls behind loses the oldest events
/// rather than slowing the runtime.
pub async fn get_container_events(
    node: &Node,
    _req: GetEventsRequest,
) -> Result<crate::service::EventStream, Status> {
    let rx = node.runtime.subscribe_events();
    let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|r| r.ok().map(Ok));
    Ok(Box::pin(stream))
}
