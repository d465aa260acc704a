//! Container RPCs: lifecycle, status, logs, ExecSync, events.

use k8s_cri::v1::*;
use tonic::Status;

use crate::node::Node;
use crate::not_implemented;

/// Handles `CreateContainer`.
pub async fn create_container(
    _node: &Node,
    _req: CreateContainerRequest,
) -> Result<CreateContainerResponse, Status> {
    Err(not_implemented("CreateContainer"))
}

/// Handles `StartContainer`.
pub async fn start_container(
    _node: &Node,
    _req: StartContainerRequest,
) -> Result<StartContainerResponse, Status> {
    Err(not_implemented("StartContainer"))
}

/// Handles `StopContainer`.
pub async fn stop_container(
    _node: &Node,
    _req: StopContainerRequest,
) -> Result<StopContainerResponse, Status> {
    Err(not_implemented("StopContainer"))
}

/// Handles `RemoveContainer`.
pub async fn remove_container(
    _node: &Node,
    _req: RemoveContainerRequest,
) -> Result<RemoveContainerResponse, Status> {
    Err(not_implemented("RemoveContainer"))
}

/// Handles `ListContainers`.
pub async fn list_containers(
    _node: &Node,
    _req: ListContainersRequest,
) -> Result<ListContainersResponse, Status> {
    Err(not_implemented("ListContainers"))
}

/// Handles `ContainerStatus`.
pub async fn container_status(
    _node: &Node,
    _req: ContainerStatusRequest,
) -> Result<ContainerStatusResponse, Status> {
    Err(not_implemented("ContainerStatus"))
}

/// Handles `UpdateContainerResources`.
pub async fn update_container_resources(
    _node: &Node,
    _req: UpdateContainerResourcesRequest,
) -> Result<UpdateContainerResourcesResponse, Status> {
    Err(not_implemented("UpdateContainerResources"))
}

/// Handles `ReopenContainerLog`.
pub async fn reopen_container_log(
    _node: &Node,
    _req: ReopenContainerLogRequest,
) -> Result<ReopenContainerLogResponse, Status> {
    Err(not_implemented("ReopenContainerLog"))
}

/// Handles `ExecSync`.
pub async fn exec_sync(_node: &Node, _req: ExecSyncRequest) -> Result<ExecSyncResponse, Status> {
    Err(not_implemented("ExecSync"))
}

/// Handles `CheckpointContainer`.
pub async fn checkpoint_container(
    _node: &Node,
    _req: CheckpointContainerRequest,
) -> Result<CheckpointContainerResponse, Status> {
    Err(not_implemented("CheckpointContainer"))
}

/// Handles `GetContainerEvents`.
pub async fn get_container_events(
    _node: &Node,
    _req: GetEventsRequest,
) -> Result<crate::service::EventStream, Status> {
    Err(not_implemented("GetContainerEvents"))
}
