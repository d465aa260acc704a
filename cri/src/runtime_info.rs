//! What the runtime says about itself: Version, Status, RuntimeConfig, UpdateRuntimeConfig.

use std::collections::HashMap;

use k8s_cri::v1::*;
use tonic::Status;

use crate::config::CgroupDriver as ConfiguredDriver;
use crate::node::Node;

/// The name kubelet and crictl show for this runtime.
pub const RUNTIME_NAME: &str = "berth";
/// The CRI API version served.
pub const RUNTIME_API_VERSION: &str = "v1";
/// The kubelet runtime API version string every CRI runtime answers with.
const KUBELET_API_VERSION: &str = "0.1.0";

/// Handles `Version`.
pub async fn version(_node: &Node, _req: VersionRequest) -> Result<VersionResponse, Status> {
    Ok(VersionResponse {
        version: KUBELET_API_VERSION.into(),
        runtime_name: RUNTIME_NAME.into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: RUNTIME_API_VERSION.into(),
    })
}

/// Handles `Status`: RuntimeReady and NetworkReady as they are now; with `verbose`, the
/// effective configuration as JSON under `config` and the CDI devices and spec files read
/// (with their errors) under `cdi`.
pub async fn status(node: &Node, req: StatusRequest) -> Result<StatusResponse, Status> {
    let runtime = match node.not_ready_reason() {
        None => condition("RuntimeReady", Ok(())),
        Some((reason, message)) => condition("RuntimeReady", Err((reason, message.as_str()))),
    };
    let network_state = node.network.ready_check().await;
    let network = condition(
        "NetworkReady",
        network_state
            .as_ref()
            .map(|_| ())
            .map_err(|e| ("NetworkPluginNotReady", e.as_str())),
    );
    let mut info = HashMap::new();
    if req.verbose {
        let config = serde_json::to_string(&node.effective_config())
            .map_err(|e| Status::internal(format!("cannot encode the configuration: {e}")))?;
        info.insert("config".to_owned(), config);
        info.insert(
            "uptimeSeconds".to_owned(),
            node.started.elapsed().as_secs().to_string(),
        );
        if let Some(report) = node.runtime.cdi_report() {
            let cdi = serde_json::to_string(&report)
                .map_err(|e| Status::internal(format!("cannot encode the CDI devices: {e}")))?;
            info.insert("cdi".to_owned(), cdi);
        }
    }
    Ok(StatusResponse {
        status: Some(RuntimeStatus {
            conditions: vec![runtime, network],
        }),
        info,
        runtime_handlers: runtime_handlers(node),
        // Merge and Strict are both applied by the planner (berth_runtime::user).
        features: Some(RuntimeFeatures {
            supplemental_groups_policy: true,
        }),
    })
}

/// The default handler (named "", as kubelet expects) and every configured RuntimeClass one.
/// Recursive read-only mounts are there where the kernel has mount_setattr; user namespaces
/// where the kernel allows them and has idmapped overlay layers, for Berth's own executor
/// only (the RuntimeClass handlers do not run user-namespaced pods, nor the default one when
/// `default_runtime` hands it to one of them).
fn runtime_handlers(node: &Node) -> Vec<RuntimeHandler> {
    let features = |own: bool| {
        Some(RuntimeHandlerFeatures {
            recursive_read_only_mounts: berth_runtime::sys::mount_setattr_supported(),
            user_namespaces: own && berth_runtime::userns::supported(),
        })
    };
    std::iter::once(RuntimeHandler {
        name: String::new(),
        features: features(node.config.default_runtime.is_empty()),
    })
    .chain(node.config.runtimes.keys().map(|name| RuntimeHandler {
        name: name.clone(),
        features: features(false),
    }))
    .collect()
}

fn condition(kind: &str, state: Result<(), (&str, &str)>) -> RuntimeCondition {
    match state {
        Ok(()) => RuntimeCondition {
            r#type: kind.into(),
            status: true,
            ..Default::default()
        },
        Err((reason, message)) => RuntimeCondition {
            r#type: kind.into(),
            status: false,
            reason: reason.into(),
            message: message.into(),
        },
    }
}

/// Handles `RuntimeConfig`: the cgroup driver kubelet must use.
pub async fn runtime_config(
    node: &Node,
    _req: RuntimeConfigRequest,
) -> Result<RuntimeConfigResponse, Status> {
    let driver = match node.config.cgroup.driver {
        ConfiguredDriver::Cgroupfs => CgroupDriver::Cgroupfs,
        ConfiguredDriver::Systemd => CgroupDriver::Systemd,
    };
    Ok(RuntimeConfigResponse {
        linux: Some(LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    })
}

/// Handles `UpdateRuntimeConfig`: keeps the pod CIDR kubelet assigns to this node.
pub async fn update_runtime_config(
    node: &Node,
    req: UpdateRuntimeConfigRequest,
) -> Result<UpdateRuntimeConfigResponse, Status> {
    let cidr = req
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    // kubelet sends an empty CIDR when it has none; that changes nothing.
    if cidr.is_empty() {
        return Ok(UpdateRuntimeConfigResponse {});
    }
    node.network
        .set_pod_cidr(&cidr)
        .map_err(|e| crate::status::status(&format!("pod CIDR {cidr:?}"), &e))?;
    tracing::info!(pod_cidr = %cidr, "pod CIDR updated by kubelet");
    Ok(UpdateRuntimeConfigResponse {})
}
