//! Container RPCs: lifecycle, status, logs, ExecSync, events. The image service resolves
//! the image into plain layers and config; the runtime does the rest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use berth_runtime::{ImageConfig, ImageInfo};
use futures::Stream;
use k8s_cri::v1::*;
use tokio::sync::broadcast;
use tonic::Status;

use crate::images::image_store;
use crate::node::Node;
use crate::not_implemented;
use crate::status::status;

/// The image a container asks for, as plain data for the runtime.
fn image_info(node: &Node, name: &str) -> Result<ImageInfo, Status> {
    let store = image_store(node)?;
    let what = format!("image {name:?}");
    let image = store
        .get(name)
        .map_err(|e| status(&what, &e))?
        .ok_or_else(|| Status::not_found(format!("image {name:?} not found: pull it first")))?;
    let lower_dirs = store
        .rootfs_layers(&image.id)
        .map_err(|e| status(&what, &e))?;
    let oci = store
        .image_config(&image.id)
        .map_err(|e| status(&what, &e))?;
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
                .map_err(|e| status(&format!("image volume {:?}", spec.image), &e))?;
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
        .map_err(|e| status("CreateContainer", &e))?;
    if let Err(e) = give_net_devices(node, &req.pod_sandbox_id).await {
        let _ = node.runtime.remove_container(&id).await;
        return Err(e);
    }
    // Keep the layers from image GC while the container exists.
    if let Err(e) = store.add_lease(&id, &image_id) {
        let _ = node.runtime.remove_container(&id).await;
        return Err(status(
            &format!("lease image {image_id} for container {id}"),
            &e,
        ));
    }
    Ok(CreateContainerResponse { container_id: id })
}

/// Moves the host network interfaces recorded for the pod (CDI `netDevices`) into its
/// network namespace; those already there stay. They go back at StopPodSandbox.
async fn give_net_devices(node: &Node, pod_id: &str) -> Result<(), Status> {
    let what = format!("CreateContainer in pod {pod_id}");
    let (netns, devices) = node
        .runtime
        .pod_net_devices(pod_id)
        .map_err(|e| status(&what, &e))?;
    let Some(netns) = netns.filter(|_| !devices.is_empty()) else {
        return Ok(());
    };
    for d in devices {
        node.network
            .give_net_device(&netns, &d.host_name, &d.name)
            .await
            .map_err(|e| status(&format!("CDI network device {}", d.host_name), &e))?;
    }
    Ok(())
}

/// Handles `StartContainer`.
pub async fn start_container(
    node: &Node,
    req: StartContainerRequest,
) -> Result<StartContainerResponse, Status> {
    node.runtime
        .start_container(&req.container_id)
        .await
        .map_err(|e| status("StartContainer", &e))?;
    Ok(StartContainerResponse {})
}

/// Handles `StopContainer`.
pub async fn stop_container(
    node: &Node,
    req: StopContainerRequest,
) -> Result<StopContainerResponse, Status> {
    node.runtime
        .stop_container(&req.container_id, req.timeout)
        .await
        .map_err(|e| status("StopContainer", &e))?;
    Ok(StopContainerResponse {})
}

/// Handles `RemoveContainer`.
pub async fn remove_container(
    node: &Node,
    req: RemoveContainerRequest,
) -> Result<RemoveContainerResponse, Status> {
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
        .map_err(|e| status("RemoveContainer", &e))?;
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
        .map_err(|e| status("ContainerStatus", &e))
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
        .map_err(|e| status("UpdateContainerResources", &e))?;
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
        .map_err(|e| status("ReopenContainerLog", &e))?;
    Ok(ReopenContainerLogResponse {})
}

/// Handles `ExecSync`: output cut at 16 MiB per stream; a timeout is DeadlineExceeded.
pub async fn exec_sync(node: &Node, req: ExecSyncRequest) -> Result<ExecSyncResponse, Status> {
    let timeout = Duration::from_secs(req.timeout.max(0) as u64);
    node.runtime
        .exec_sync(&req.container_id, &req.cmd, timeout)
        .await
        .map_err(|e| status("ExecSync", &e))
}

/// Handles `CheckpointContainer`.
pub async fn checkpoint_container(
    _node: &Node,
    _req: CheckpointContainerRequest,
) -> Result<CheckpointContainerResponse, Status> {
    Err(not_implemented("CheckpointContainer"))
}

/// Handles `GetContainerEvents`: every container and pod sandbox event from now on. The
/// runtime never waits for a subscriber: one that falls so far behind that events were
/// lost gets its stream ended with `Aborted`, saying so, instead of silent gaps (kubelet
/// then relists and subscribes again).
pub async fn get_container_events(
    node: &Node,
    _req: GetEventsRequest,
) -> Result<crate::service::EventStream, Status> {
    Ok(Box::pin(events_until_lost(node.runtime.subscribe_events())))
}

/// The events of `rx`, ended by an `Aborted` status at the first gap.
fn events_until_lost(
    rx: broadcast::Receiver<ContainerEventResponse>,
) -> impl Stream<Item = Result<ContainerEventResponse, Status>> + Send + 'static {
    futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Ok(event) => Some((Ok(event), Some(rx))),
            Err(broadcast::error::RecvError::Lagged(lost)) => Some((
                Err(Status::aborted(format!(
                    "container events lost: this subscriber fell {lost} events behind; \
                     list pods and containers again and subscribe anew"
                ))),
                None,
            )),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn event(id: &str) -> ContainerEventResponse {
        ContainerEventResponse {
            container_id: id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_and_its_stream_ends() {
        let (tx, rx) = broadcast::channel(2);
        let mut stream = Box::pin(events_until_lost(rx));
        tx.send(event("a")).unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap().container_id, "a");
        // Five more while it does not read: three are lost.
        for id in ["b", "c", "d", "e", "f"] {
            tx.send(event(id)).unwrap();
        }
        let err = stream.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::Aborted);
        assert!(err.message().contains("fell 3 events behind"), "{err:?}");
        // No silent gap: nothing after the error, though events are still buffered.
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_subscriber_that_keeps_up_gets_every_event_until_the_runtime_goes() {
        let (tx, rx) = broadcast::channel(2);
        let stream = events_until_lost(rx);
        let reader = tokio::spawn(stream.collect::<Vec<_>>());
        for i in 0..10 {
            tx.send(event(&i.to_string())).unwrap();
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        drop(tx);
        let got: Vec<String> = reader
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap().container_id)
            .collect();
        assert_eq!(got, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    }
}
