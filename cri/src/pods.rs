//! Pod sandbox RPCs: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox.
//! The runtime runs the pod's monitor; these handlers put the network around it.

use std::path::Path;
use std::time::Instant;

use berth_cni::{DnsConfig, PodNetworkRequest, PortMapping};
use k8s_cri::v1::*;
use tonic::Status;

use crate::node::Node;
use crate::status::status;

fn network_request(
    id: &str,
    config: &PodSandboxConfig,
    netns: &Path,
) -> Result<PodNetworkRequest, berth_cni::Error> {
    let meta = config.metadata.clone().unwrap_or_default();
    let mut port_mappings = Vec::new();
    for p in &config.port_mappings {
        if let Some(m) =
            PortMapping::from_cri(p.protocol, p.container_port, p.host_port, &p.host_ip)?
        {
            port_mappings.push(m);
        }
    }
    Ok(PodNetworkRequest {
        pod_id: id.to_owned(),
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        netns: netns.to_owned(),
        port_mappings,
        dns: config.dns_config.as_ref().map(|d| DnsConfig {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
        bandwidth: None,
    })
}

/// Handles `RunPodSandbox`: the monitor in new namespaces, then the network in its netns.
pub async fn run_pod_sandbox(
    node: &Node,
    req: RunPodSandboxRequest,
) -> Result<RunPodSandboxResponse, Status> {
    let created = node
        .runtime
        .run_pod_sandbox(&req)
        .await
        .map_err(|e| status("RunPodSandbox", &e))?;
    let mut ips = Vec::new();
    if let (Some(netns), Some(config)) = (&created.netns, req.config.as_ref()) {
        let setup = match network_request(&created.id, config, netns) {
            Ok(r) => node.network.setup(&r).await,
            Err(e) => Err(e),
        };
        match setup {
            Ok(net) => ips = net.ips.iter().map(|ip| ip.to_string()).collect(),
            Err(e) => {
                let what = format!("set up the network of pod sandbox {}", created.id);
                let _ = node.runtime.remove_pod_sandbox(&created.id).await;
                return Err(status(&what, &e));
            }
        }
    }
    // Confirms the pod: a crash before this line leaves a pod the next start undoes.
    if let Err(e) = node.runtime.set_pod_network(&created.id, ips) {
        let _ = stop(node, &created.id).await;
        let _ = node.runtime.remove_pod_sandbox(&created.id).await;
        return Err(status("RunPodSandbox", &e));
    }
    // Listed from now on: kubelet's Evented PLEG hears of it as containerd tells it.
    for kind in [
        ContainerEventType::ContainerCreatedEvent,
        ContainerEventType::ContainerStartedEvent,
    ] {
        if let Some(event) = node.runtime.pod_event(kind, &created.id) {
            node.runtime.publish(event);
        }
    }
    Ok(RunPodSandboxResponse {
        pod_sandbox_id: created.id,
    })
}

/// Whether the pod is READY now (false for an unknown pod).
fn is_ready(node: &Node, id: &str) -> bool {
    node.runtime
        .pod_sandbox_status(id, false)
        .ok()
        .and_then(|s| s.status)
        .is_some_and(|s| s.state == PodSandboxState::SandboxReady as i32)
}

/// Stops a pod: its network goes while its monitor ends its processes.
pub(crate) async fn stop(node: &Node, id: &str) -> Result<(), Status> {
    let what = format!("StopPodSandbox {id}");
    let Some((pod_id, netns)) = node.runtime.pod_network_target(id) else {
        return Ok(());
    };
    // A pod stops once: a repeated stop, or one after its monitor died (the runtime told of
    // that), is no event.
    let was_ready = is_ready(node, id);
    let started = Instant::now();
    // The network goes while the monitor ends its processes: the veth's deletion (the
    // kernel waits for RCU grace periods) is the longest step, and neither needs the other.
    // The pod's namespace files stay mounted until both are done (CNI DEL enters the netns).
    let ((stopped, runtime_done), (torn, network_done)) = tokio::join!(
        async {
            let r = node.runtime.stop_pod_sandbox(&pod_id).await;
            (r, started.elapsed())
        },
        async {
            let r = node.network.teardown(&pod_id, netns.as_deref()).await;
            (r, started.elapsed())
        },
    );
    let stopped = stopped.map_err(|e| status(&what, &e))?;
    torn.map_err(|e| status(&what, &e))?;
    if let Some(stopped) = stopped {
        if was_ready
            && let Some(event) = node
                .runtime
                .pod_event(ContainerEventType::ContainerStoppedEvent, &stopped.id)
        {
            node.runtime.publish(event);
        }
        // A device CDI moved into the pod goes back to the node under its own name while
        // the namespace is still held (its processes are gone by now).
        if let Some(netns) = &stopped.netns {
            for d in &stopped.net_devices {
                node.network
                    .return_net_device(netns, &d.name, &d.host_name)
                    .await
                    .map_err(|e| status(&what, &e))?;
            }
        }
        node.runtime
            .release_pod_namespaces(&stopped.id)
            .map_err(|e| status(&what, &e))?;
    }
    tracing::debug!(
        pod = %pod_id,
        runtime_ms = runtime_done.as_secs_f64() * 1e3,
        network_ms = network_done.as_secs_f64() * 1e3,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "pod sandbox stopped"
    );
    Ok(())
}

/// Handles `StopPodSandbox`: containers and monitor end, the network is torn down.
pub async fn stop_pod_sandbox(
    node: &Node,
    req: StopPodSandboxRequest,
) -> Result<StopPodSandboxResponse, Status> {
    stop(node, &req.pod_sandbox_id).await?;
    Ok(StopPodSandboxResponse {})
}

/// Handles `RemovePodSandbox` (stopping the pod first if needed).
pub async fn remove_pod_sandbox(
    node: &Node,
    req: RemovePodSandboxRequest,
) -> Result<RemovePodSandboxResponse, Status> {
    let id = req.pod_sandbox_id;
    stop(node, &id).await?;
    // The pod's containers go with it: their image leases must go too, or their snapshots
    // stay pinned until the next start.
    let filter = ContainerFilter {
        pod_sandbox_id: id.clone(),
        ..Default::default()
    };
    let containers: Vec<String> = node
        .runtime
        .list_containers(Some(&filter))
        .into_iter()
        .map(|c| c.id)
        .collect();
    // Its status as it was, told after the removal; its containers were told of one by one.
    let deleted = node
        .runtime
        .pod_event(ContainerEventType::ContainerDeletedEvent, &id)
        .map(|mut event| {
            event.containers_statuses.clear();
            event
        });
    node.runtime
        .remove_pod_sandbox(&id)
        .await
        .map_err(|e| status(&format!("RemovePodSandbox {id}"), &e))?;
    if let Some(event) = deleted {
        node.runtime.publish(event);
    }
    let images = crate::images::image_store(node)?;
    for c in containers {
        images
            .remove_lease(&c)
            .map_err(|e| status(&format!("release the image of {c}"), &e))?;
    }
    if !node.runtime.has_pods() {
        crate::memory::trim_now();
    }
    Ok(RemovePodSandboxResponse {})
}

/// Handles `PodSandboxStatus`.
pub async fn pod_sandbox_status(
    node: &Node,
    req: PodSandboxStatusRequest,
) -> Result<PodSandboxStatusResponse, Status> {
    node.runtime
        .pod_sandbox_status(&req.pod_sandbox_id, req.verbose)
        .map_err(|e| status("PodSandboxStatus", &e))
}

/// Handles `ListPodSandbox`.
pub async fn list_pod_sandbox(
    node: &Node,
    req: ListPodSandboxRequest,
) -> Result<ListPodSandboxResponse, Status> {
    Ok(ListPodSandboxResponse {
        items: node.runtime.list_pod_sandbox(req.filter.as_ref()),
    })
}
