//! Pod sandbox RPCs: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox.

use k8s_cri::v1::*;
use tonic::Status;

use crate::node::Node;
use crate::not_implemented;

/// Handles `RunPodSandbox`.
pub async fn run_pod_sandbox(
    _node: &Node,
    _req: RunPodSandboxRequest,
) -> Result<RunPodSandboxResponse, Status> {
    Err(not_implemented("RunPodSandbox"))
}

/// Handles `StopPodSandbox`.
pub async fn stop_pod_sandbox(
    _node: &Node,
    _req: StopPodSandboxRequest,
) -> Result<StopPodSandboxResponse, Status> {
    Err(not_implemented("StopPodSandbox"))
}

/// Handles `RemovePodSandbox`.
pub async fn remove_pod_sandbox(
    _node: &Node,
    _req: RemovePodSandboxRequest,
) -> Result<RemovePodSandboxResponse, Status> {
    Err(not_implemented("RemovePodSandbox"))
}

/// Handles `PodSandboxStatus`.
pub async fn pod_sandbox_status(
    _node: &Node,
    _req: PodSandboxStatusRequest,
) -> Result<PodSandboxStatusResponse, Status> {
    Err(not_implemented("PodSandboxStatus"))
}

/// Handles `ListPodSandbox`.
pub async fn list_pod_sandbox(
    _node: &Node,
    _req: ListPodSandboxRequest,
) -> Result<ListPodSandboxResponse, Status> {
    Err(not_implemented("ListPodSandbox"))
}
