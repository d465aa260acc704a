//! Stats and metrics RPCs: container and pod stats, cAdvisor-style metrics.

use k8s_cri::v1::*;
use tonic::Status;

use crate::node::Node;
use crate::not_implemented;

/// Handles `ContainerStats`.
pub async fn container_stats(
    _node: &Node,
    _req: ContainerStatsRequest,
) -> Result<ContainerStatsResponse, Status> {
    Err(not_implemented("ContainerStats"))
}

/// Handles `ListContainerStats`.
pub async fn list_container_stats(
    _node: &Node,
    _req: ListContainerStatsRequest,
) -> Result<ListContainerStatsResponse, Status> {
    Err(not_implemented("ListContainerStats"))
}

/// Handles `PodSandboxStats`.
pub async fn pod_sandbox_stats(
    _node: &Node,
    _req: PodSandboxStatsRequest,
) -> Result<PodSandboxStatsResponse, Status> {
    Err(not_implemented("PodSandboxStats"))
}

/// Handles `ListPodSandboxStats`.
pub async fn list_pod_sandbox_stats(
    _node: &Node,
    _req: ListPodSandboxStatsRequest,
) -> Result<ListPodSandboxStatsResponse, Status> {
    Err(not_implemented("ListPodSandboxStats"))
}

/// Handles `ListMetricDescriptors`.
pub async fn list_metric_descriptors(
    _node: &Node,
    _req: ListMetricDescriptorsRequest,
) -> Result<ListMetricDescriptorsResponse, Status> {
    Err(not_implemented("ListMetricDescriptors"))
}

/// Handles `ListPodSandboxMetrics`.
pub async fn list_pod_sandbox_metrics(
    _node: &Node,
    _req: ListPodSandboxMetricsRequest,
) -> Result<ListPodSandboxMetricsResponse, Status> {
    Err(not_implemented("ListPodSandboxMetrics"))
}
