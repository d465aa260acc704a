//! The pod-ready phase: one pod's lifecycle and the image calls, each CRI call timed, and
//! the pod and pull helpers the other phases share.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_e2e::fixtures::{container_config, pod_config};
use berth_e2e::images;
use k8s_cri::v1::*;

use crate::measure::{Figures, POD_READY, PULL_ABSENT, PULL_PRESENT, Runtime, timed};

/// The image of the image operations: its layers (zstd) share no blob with busybox's
/// (gzip), so removing it removes its content and the next pull fetches it again.
pub(crate) const IMAGE_OPS_IMAGE: &str = images::ZSTD;

pub(crate) fn image_spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

/// Pulls `image` into an empty store (removing it first) and returns the pull's time.
pub(crate) async fn pull(rt: &Runtime, image: &str) -> anyhow::Result<Duration> {
    let mut images = rt.client.images();
    images
        .remove_image(RemoveImageRequest {
            image: image_spec(image),
        })
        .await
        .ok();
    let t = Instant::now();
    images
        .pull_image(PullImageRequest {
            image: image_spec(image),
            ..Default::default()
        })
        .await
        .with_context(|| format!("{}: pull {image}", rt.name))?;
    Ok(t.elapsed())
}

/// One pod lifecycle, each call timed: run, create, start, the status and list calls,
/// exec, then stop and remove.
pub(crate) async fn lifecycle(rt: &Runtime, i: usize, f: &mut Figures) -> anyhow::Result<()> {
    let mut c = rt.client.runtime();
    let config = pod_config(&format!("{}-bench-{i}", rt.name), &rt.logs);
    let t0 = Instant::now();
    let pod = timed(
        rt,
        f,
        "RunPodSandbox",
        c.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            ..Default::default()
        }),
    )
    .await?
    .pod_sandbox_id;
    let id = timed(
        rt,
        f,
        "CreateContainer",
        c.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("c", &["sleep", "3600"])),
            sandbox_config: Some(config),
        }),
    )
    .await?
    .container_id;
    timed(
        rt,
        f,
        "StartContainer",
        c.start_container(StartContainerRequest {
            container_id: id.clone(),
        }),
    )
    .await?;
    f.op(POD_READY).push_ms(t0.elapsed());
    let status = timed(
        rt,
        f,
        "PodSandboxStatus",
        c.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        }),
    )
    .await?;
    if status.status.map(|s| s.state) != Some(PodSandboxState::SandboxReady as i32) {
        bail!("{}: pod {pod} is not ready after RunPodSandbox", rt.name);
    }
    timed(
        rt,
        f,
        "ListPodSandbox",
        c.list_pod_sandbox(ListPodSandboxRequest::default()),
    )
    .await?;
    let status = timed(
        rt,
        f,
        "ContainerStatus",
        c.container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        }),
    )
    .await?;
    if status.status.map(|s| s.state) != Some(ContainerState::ContainerRunning as i32) {
        bail!(
            "{}: container {id} is not running after StartContainer",
            rt.name
        );
    }
    timed(
        rt,
        f,
        "ListContainers",
        c.list_containers(ListContainersRequest::default()),
    )
    .await?;
    let out = timed(
        rt,
        f,
        "ExecSync",
        c.exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            timeout: 30,
        }),
    )
    .await?;
    if out.exit_code != 0 {
        bail!("{}: exec exited {}", rt.name, out.exit_code);
    }
    timed(
        rt,
        f,
        "StopContainer",
        c.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        }),
    )
    .await?;
    timed(
        rt,
        f,
        "RemoveContainer",
        c.remove_container(RemoveContainerRequest { container_id: id }),
    )
    .await?;
    timed(
        rt,
        f,
        "StopPodSandbox",
        c.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        }),
    )
    .await?;
    timed(
        rt,
        f,
        "RemovePodSandbox",
        c.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        }),
    )
    .await?;
    Ok(())
}

/// The image calls on an image no pod uses: pull it (absent), its status, the list, pull
/// it again (present), remove it.
pub(crate) async fn image_ops(rt: &Runtime, f: &mut Figures) -> anyhow::Result<()> {
    let mut c = rt.client.images();
    let pull = || PullImageRequest {
        image: image_spec(IMAGE_OPS_IMAGE),
        ..Default::default()
    };
    timed(rt, f, PULL_ABSENT, c.pull_image(pull())).await?;
    let status = timed(
        rt,
        f,
        "ImageStatus",
        c.image_status(ImageStatusRequest {
            image: image_spec(IMAGE_OPS_IMAGE),
            verbose: false,
        }),
    )
    .await?;
    if status.image.is_none() {
        bail!(
            "{}: ImageStatus: {IMAGE_OPS_IMAGE} missing after its pull",
            rt.name
        );
    }
    let list = timed(
        rt,
        f,
        "ListImages",
        c.list_images(ListImagesRequest::default()),
    )
    .await?;
    if list.images.len() < 2 {
        bail!(
            "{}: ListImages: {} images, expected at least 2",
            rt.name,
            list.images.len()
        );
    }
    timed(rt, f, PULL_PRESENT, c.pull_image(pull())).await?;
    timed(
        rt,
        f,
        "RemoveImage",
        c.remove_image(RemoveImageRequest {
            image: image_spec(IMAGE_OPS_IMAGE),
        }),
    )
    .await?;
    Ok(())
}

/// Runs a pod with one `sleep` container; returns the pod's id.
pub(crate) async fn run_pod(rt: &Runtime, name: String) -> anyhow::Result<String> {
    run_configured_pod(rt, pod_config(&name, &rt.logs)).await
}

/// [`run_pod`] with the pod's cgroup at `cgroup_parent`, as kubelet always sends one.
pub(crate) async fn run_pod_in(
    rt: &Runtime,
    name: String,
    cgroup_parent: Option<String>,
) -> anyhow::Result<String> {
    let mut config = pod_config(&name, &rt.logs);
    if let Some(cgroup_parent) = cgroup_parent {
        config.linux = Some(LinuxPodSandboxConfig {
            cgroup_parent,
            ..Default::default()
        });
    }
    run_configured_pod(rt, config).await
}

/// Runs the pod `config` with one `sleep` container; returns the pod's id.
pub(crate) async fn run_configured_pod(
    rt: &Runtime,
    config: PodSandboxConfig,
) -> anyhow::Result<String> {
    let mut c = rt.client.runtime();
    let name = config
        .metadata
        .as_ref()
        .map_or(String::new(), |m| m.name.clone());
    let pod = c
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            ..Default::default()
        })
        .await
        .with_context(|| format!("{}: RunPodSandbox {name}", rt.name))?
        .into_inner()
        .pod_sandbox_id;
    let started = async {
        let id = c
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config("c", &["sleep", "3600"])),
                sandbox_config: Some(config),
            })
            .await?
            .into_inner()
            .container_id;
        c.start_container(StartContainerRequest { container_id: id })
            .await
    };
    match started.await {
        Ok(_) => Ok(pod),
        Err(e) => {
            // Not left behind for the leak check.
            remove_pod(rt, &pod).await.ok();
            Err(e).with_context(|| format!("{}: start the container of {name}", rt.name))
        }
    }
}

/// Stops and removes a pod, its containers with it.
pub(crate) async fn remove_pod(rt: &Runtime, pod: &str) -> anyhow::Result<()> {
    let mut c = rt.client.runtime();
    c.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .with_context(|| format!("{}: StopPodSandbox {pod}", rt.name))?;
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .with_context(|| format!("{}: RemovePodSandbox {pod}", rt.name))?;
    Ok(())
}

/// The containers the runtime itself lists as running.
pub(crate) async fn running_containers(rt: &Runtime) -> anyhow::Result<Vec<Container>> {
    Ok(rt
        .client
        .runtime()
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .with_context(|| format!("{}: ListContainers", rt.name))?
        .into_inner()
        .containers)
}

/// How many containers of `pods` the runtime itself lists as running.
pub(crate) async fn running_in(rt: &Runtime, pods: &[String]) -> anyhow::Result<usize> {
    Ok(running_containers(rt)
        .await?
        .iter()
        .filter(|c| pods.contains(&c.pod_sandbox_id))
        .count())
}
