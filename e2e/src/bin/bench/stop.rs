//! The stop phase: StopPodSandbox timed alone, of a pod without containers (what critest's
//! own benchmark measures) and of a pod whose container still runs (the stop kills it).
//! The pod is run and removed untimed around each stop; the stop must leave the pod
//! NOTREADY and its container exited, or the figure would time a stop that did nothing.

use anyhow::{Context, bail};
use berth_e2e::fixtures::pod_config;
use k8s_cri::v1::*;

use crate::measure::{Figures, Runtime, timed};
use crate::pods::{remove_pod, run_pod};

/// StopPodSandbox of a pod that never had a container.
pub(crate) const STOP_EMPTY: &str = "StopPodSandbox (no containers)";
/// StopPodSandbox of a pod whose one container (`sleep`) is running.
pub(crate) const STOP_RUNNING: &str = "StopPodSandbox (running container)";

/// One timed stop of each kind for `rt` (iteration `i` names the pods).
pub(crate) async fn stop(rt: &Runtime, i: usize, f: &mut Figures) -> anyhow::Result<()> {
    let mut c = rt.client.runtime();
    let config = pod_config(&format!("{}-stop-empty-{i}", rt.name), &rt.logs);
    let empty = c
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            ..Default::default()
        })
        .await
        .with_context(|| format!("{}: RunPodSandbox for {STOP_EMPTY}", rt.name))?
        .into_inner()
        .pod_sandbox_id;
    let stopped = timed_stop(rt, f, STOP_EMPTY, &empty, 0).await;
    remove_pod(rt, &empty).await?;
    stopped?;

    let running = run_pod(rt, format!("{}-stop-running-{i}", rt.name)).await?;
    let stopped = timed_stop(rt, f, STOP_RUNNING, &running, 1).await;
    remove_pod(rt, &running).await?;
    stopped
}

/// Times StopPodSandbox of `pod`, then checks what the stop must have done: the pod
/// NOTREADY, its `containers` containers all exited.
async fn timed_stop(
    rt: &Runtime,
    f: &mut Figures,
    op: &'static str,
    pod: &str,
    containers: usize,
) -> anyhow::Result<()> {
    let mut c = rt.client.runtime();
    timed(
        rt,
        f,
        op,
        c.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        }),
    )
    .await?;
    let status = c
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        })
        .await
        .with_context(|| format!("{}: PodSandboxStatus after {op}", rt.name))?
        .into_inner();
    if status.status.map(|s| s.state) != Some(PodSandboxState::SandboxNotready as i32) {
        bail!("{}: pod {pod} is still ready after {op}", rt.name);
    }
    let listed = c
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod.into(),
                ..Default::default()
            }),
        })
        .await
        .with_context(|| format!("{}: ListContainers after {op}", rt.name))?
        .into_inner()
        .containers;
    if listed.len() != containers {
        bail!(
            "{}: pod {pod} has {} containers after {op}, expected {containers}",
            rt.name,
            listed.len()
        );
    }
    if let Some(c) = listed
        .iter()
        .find(|c| c.state != ContainerState::ContainerExited as i32)
    {
        bail!(
            "{}: container {} of pod {pod} is not exited after {op}",
            rt.name,
            c.id
        );
    }
    Ok(())
}
