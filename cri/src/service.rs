//! The CRI v1 `RuntimeService` and `ImageService` traits, each RPC delegated to the module
//! that owns its area. Every call is logged at debug level with its duration, and every
//! failure at the level its code deserves.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use k8s_cri::v1::*;
use tonic::{Code, Request, Response, Status};

use crate::metrics::Metrics;
use crate::node::{Needs, Node};
use crate::{containers, images, pods, runtime_info, stats, streaming};

/// The gRPC front of a [`Node`].
#[derive(Clone)]
pub struct CriService {
    node: Arc<Node>,
}

impl CriService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> Self {
        CriService { node }
    }
}

/// One call in progress, logged and counted when it ends. tonic drops a call's future when
/// its client goes away or its deadline passes: such a call is counted with code
/// `Canceled`, since nobody received its answer.
struct Call<'a> {
    metrics: &'a Metrics,
    method: &'static str,
    started: Instant,
    answered: bool,
}

impl<'a> Call<'a> {
    fn start(metrics: &'a Metrics, method: &'static str) -> Self {
        crate::memory::note_call();
        Call {
            metrics,
            method,
            started: Instant::now(),
            answered: false,
        }
    }

    /// Logs and counts the answer: debug for every call, warn for failures that are the
    /// runtime's.
    fn answered<T>(mut self, result: &Result<T, Status>) {
        self.answered = true;
        let method = self.method;
        let elapsed = self.started.elapsed();
        let code = result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
        self.metrics.observe_rpc(method, code, elapsed);
        let micros = elapsed.as_micros() as u64;
        match result {
            Ok(_) => tracing::debug!(method, micros, "rpc"),
            Err(status) => match status.code() {
                code if crate::metrics::is_internal(code) => {
                    tracing::warn!(method, micros, code = ?status.code(), error = status.message(), "rpc failed")
                }
                code => tracing::debug!(
                    method,
                    micros,
                    ?code,
                    error = status.message(),
                    "rpc failed"
                ),
            },
        }
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let elapsed = self.started.elapsed();
        self.metrics
            .observe_rpc(self.method, Code::Cancelled, elapsed);
        tracing::debug!(
            method = self.method,
            micros = elapsed.as_micros() as u64,
            "rpc abandoned by its client"
        );
    }
}

/// Runs a handler once the parts of start-up reconciliation it needs are done (bounded by
/// the client's deadline), logs and counts it in the node's metrics, and wraps its answer.
/// `$r` names the request inside `$call`.
macro_rules! rpc {
    ($node:expr, $method:literal, $needs:expr, $r:ident => $call:expr) => {{
        let call = Call::start(&$node.metrics, $method);
        let timeout = timeout_of($r.metadata());
        let result = async {
            $node.ready_for($needs, $method, timeout).await?;
            let $r = $r.into_inner();
            $call.await
        }
        .await;
        call.answered(&result);
        result.map(Response::new)
    }};
}

/// Runs a handler that changes pods, containers or images to its end even when the client
/// goes away: tonic drops a call's future when its client disconnects, and a change cut
/// short there would leave half a pod behind. Waits, logs, counts and wraps like [`rpc!`].
macro_rules! rpc_to_the_end {
    ($method:literal, $node:expr, $needs:expr, $handler:path, $r:ident) => {{
        let node = $node.clone();
        rpc!($node, $method, $needs, $r => async move {
            tokio::spawn(async move { $handler(&node, $r).await })
                .await
                .unwrap_or_else(|e| Err(Status::internal(format!("{}: {e}", $method))))
        })
    }};
}

/// The client's deadline, from its `grpc-timeout` header.
fn timeout_of(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::deadline::parse_grpc_timeout)
}

/// The stream of container events kubelet's Evented PLEG reads.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for CriService {
    async fn version(
        &self,
        r: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        rpc!(
            self.node,
            "Version",
            Needs::Nothing,
            r => runtime_info::version(&self.node, r)
        )
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        rpc_to_the_end!(
            "RunPodSandbox",
            self.node,
            Needs::Everything,
            pods::run_pod_sandbox,
            r
        )
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        rpc_to_the_end!(
            "StopPodSandbox",
            self.node,
            Needs::Everything,
            pods::stop_pod_sandbox,
            r
        )
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        rpc_to_the_end!(
            "RemovePodSandbox",
            self.node,
            Needs::Everything,
            pods::remove_pod_sandbox,
            r
        )
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        rpc!(
            self.node,
            "PodSandboxStatus",
            Needs::Runtime,
            r => pods::pod_sandbox_status(&self.node, r)
        )
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        rpc!(
            self.node,
            "ListPodSandbox",
            Needs::Runtime,
            r => pods::list_pod_sandbox(&self.node, r)
        )
    }

    async fn create_container(
        &self,
        r: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        rpc_to_the_end!(
            "CreateContainer",
            self.node,
            Needs::Everything,
            containers::create_container,
            r
        )
    }

    async fn start_container(
        &self,
        r: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        rpc_to_the_end!(
            "StartContainer",
            self.node,
            Needs::Everything,
            containers::start_container,
            r
        )
    }

    async fn stop_container(
        &self,
        r: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        rpc_to_the_end!(
            "StopContainer",
            self.node,
            Needs::Everything,
            containers::stop_container,
            r
        )
    }

    async fn remove_container(
        &self,
        r: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        rpc_to_the_end!(
            "RemoveContainer",
            self.node,
            Needs::Everything,
            containers::remove_container,
            r
        )
    }

    async fn list_containers(
        &self,
        r: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        rpc!(
            self.node,
            "ListContainers",
            Needs::Runtime,
            r => containers::list_containers(&self.node, r)
        )
    }

    async fn container_status(
        &self,
        r: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        rpc!(
            self.node,
            "ContainerStatus",
            Needs::Runtime,
            r => containers::container_status(&self.node, r)
        )
    }

    async fn update_container_resources(
        &self,
        r: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        rpc!(
            self.node,
            "UpdateContainerResources",
            Needs::Runtime,
            r => containers::update_container_resources(&self.node, r)
        )
    }

    async fn reopen_container_log(
        &self,
        r: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        rpc!(
            self.node,
            "ReopenContainerLog",
            Needs::Runtime,
            r => containers::reopen_container_log(&self.node, r)
        )
    }

    async fn exec_sync(
        &self,
        r: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        rpc!(
            self.node,
            "ExecSync",
            Needs::Runtime,
            r => containers::exec_sync(&self.node, r)
        )
    }

    async fn exec(&self, r: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        rpc!(
            self.node,
            "Exec",
            Needs::Runtime,
            r => streaming::exec(&self.node, r)
        )
    }

    async fn attach(&self, r: Request<AttachRequest>) -> Result<Response<AttachResponse>, Status> {
        rpc!(
            self.node,
            "Attach",
            Needs::Runtime,
            r => streaming::attach(&self.node, r)
        )
    }

    async fn port_forward(
        &self,
        r: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        rpc!(
            self.node,
            "PortForward",
            Needs::Runtime,
            r => streaming::port_forward(&self.node, r)
        )
    }

    async fn container_stats(
        &self,
        r: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        rpc!(
            self.node,
            "ContainerStats",
            Needs::Runtime,
            r => stats::container_stats(&self.node, r)
        )
    }

    async fn list_container_stats(
        &self,
        r: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        rpc!(
            self.node,
            "ListContainerStats",
            Needs::Runtime,
            r => stats::list_container_stats(&self.node, r)
        )
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        rpc!(
            self.node,
            "PodSandboxStats",
            Needs::Runtime,
            r => stats::pod_sandbox_stats(&self.node, r)
        )
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        rpc!(
            self.node,
            "ListPodSandboxStats",
            Needs::Runtime,
            r => stats::list_pod_sandbox_stats(&self.node, r)
        )
    }

    async fn update_runtime_config(
        &self,
        r: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        rpc!(
            self.node,
            "UpdateRuntimeConfig",
            Needs::Everything,
            r => runtime_info::update_runtime_config(&self.node, r)
        )
    }

    async fn status(&self, r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        rpc!(
            self.node,
            "Status",
            Needs::Nothing,
            r => runtime_info::status(&self.node, r)
        )
    }

    async fn checkpoint_container(
        &self,
        r: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        rpc!(
            self.node,
            "CheckpointContainer",
            Needs::Runtime,
            r => containers::checkpoint_container(&self.node, r)
        )
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        r: Request<GetEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        rpc!(
            self.node,
            "GetContainerEvents",
            Needs::Runtime,
            r => containers::get_container_events(&self.node, r)
        )
    }

    async fn list_metric_descriptors(
        &self,
        r: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        rpc!(
            self.node,
            "ListMetricDescriptors",
            Needs::Runtime,
            r => stats::list_metric_descriptors(&self.node, r)
        )
    }

    async fn list_pod_sandbox_metrics(
        &self,
        r: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        rpc!(
            self.node,
            "ListPodSandboxMetrics",
            Needs::Runtime,
            r => stats::list_pod_sandbox_metrics(&self.node, r)
        )
    }

    async fn runtime_config(
        &self,
        r: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        rpc!(
            self.node,
            "RuntimeConfig",
            Needs::Runtime,
            r => runtime_info::runtime_config(&self.node, r)
        )
    }
}

#[tonic::async_trait]
impl ImageService for CriService {
    async fn list_images(
        &self,
        r: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        rpc!(
            self.node,
            "ListImages",
            Needs::Images,
            r => images::list_images(&self.node, r)
        )
    }

    async fn image_status(
        &self,
        r: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        rpc!(
            self.node,
            "ImageStatus",
            Needs::Images,
            r => images::image_status(&self.node, r)
        )
    }

    async fn pull_image(
        &self,
        r: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        rpc_to_the_end!("PullImage", self.node, Needs::Images, images::pull_image, r)
    }

    async fn remove_image(
        &self,
        r: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        rpc_to_the_end!(
            "RemoveImage",
            self.node,
            Needs::Images,
            images::remove_image,
            r
        )
    }

    async fn image_fs_info(
        &self,
        r: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        rpc!(
            self.node,
            "ImageFsInfo",
            Needs::Images,
            r => images::image_fs_info(&self.node, r)
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use berth_runtime::Census;

    fn count(metrics: &Metrics, method: &str, code: &str) -> Option<String> {
        let series = format!("berth_grpc_requests_total{{method=\"{method}\",code=\"{code}\"}} ");
        metrics
            .render(&Census::default())
            .lines()
            .find_map(|l| l.strip_prefix(&series).map(str::to_owned))
    }

    /// A request as a client with a deadline of `timeout` (gRPC's header value) sends it.
    fn with_deadline<T>(message: T, timeout: &'static str) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut()
            .insert("grpc-timeout", timeout.parse().unwrap());
        r
    }

    #[tokio::test]
    async fn before_reconciliation_only_version_and_status_answer() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::new(
            crate::config::Config::in_dir(dir.path()),
            crate::store::Store::open(dir.path()).unwrap(),
        )
        .unwrap();
        let svc = CriService::new(node.clone());
        svc.version(Request::new(VersionRequest::default()))
            .await
            .unwrap();
        let status = svc
            .status(Request::new(StatusRequest::default()))
            .await
            .unwrap()
            .into_inner();
        let runtime = status
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.r#type == "RuntimeReady")
            .unwrap();
        assert!(!runtime.status);
        assert_eq!(runtime.reason, "Reconciling");

        // Reads of pods, containers and streams wait, and say why when the deadline comes.
        let err = svc
            .list_pod_sandbox(with_deadline(ListPodSandboxRequest::default(), "40m"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        assert!(
            err.message().starts_with("ListPodSandbox: ")
                && err.message().contains("reconciling pods and containers"),
            "{err:?}"
        );
        let err = svc
            .exec(with_deadline(ExecRequest::default(), "40m"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        let err = svc
            .list_images(with_deadline(ListImagesRequest::default(), "40m"))
            .await
            .unwrap_err();
        assert!(err.message().contains("reconciling images"), "{err:?}");

        node.reconcile().await;
        let pods = svc
            .list_pod_sandbox(with_deadline(ListPodSandboxRequest::default(), "1S"))
            .await
            .unwrap()
            .into_inner();
        assert!(pods.items.is_empty());
    }

    #[test]
    fn answered_calls_count_with_their_code() {
        let metrics = Metrics::new();
        Call::start(&metrics, "Version").answered(&Ok::<_, Status>(()));
        Call::start(&metrics, "Version").answered(&Err::<(), _>(Status::not_found("x")));
        Call::start(&metrics, "Version").answered(&Err::<(), _>(Status::internal("x")));
        assert_eq!(count(&metrics, "Version", "OK").as_deref(), Some("1"));
        assert_eq!(count(&metrics, "Version", "NotFound").as_deref(), Some("1"));
        assert_eq!(count(&metrics, "Version", "Internal").as_deref(), Some("1"));
        assert_eq!(count(&metrics, "Version", "Canceled"), None);
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_answer_counts_as_canceled() {
        let metrics = Metrics::new();
        let slow = async {
            let call = Call::start(&metrics, "StopContainer");
            tokio::time::sleep(Duration::from_secs(60)).await;
            call.answered(&Ok::<_, Status>(()));
        };
        // As tonic does when the client's deadline passes or it disconnects.
        let timed_out = tokio::time::timeout(Duration::from_millis(10), slow).await;
        assert!(timed_out.is_err());
        assert_eq!(
            count(&metrics, "StopContainer", "Canceled").as_deref(),
            Some("1")
        );
        assert_eq!(count(&metrics, "StopContainer", "OK"), None);
    }
}
