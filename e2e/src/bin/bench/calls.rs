//! The node calls phase: the calls kubelet makes about running pods (the stats calls every
//! 10 s, ImageFsInfo and Status with them) and the ones it makes on a container's behalf
//! (UpdateContainerResources, ReopenContainerLog), each timed with 10 and with 100 pods of
//! one running container on every runtime at once, alternated call round by call round.

use std::collections::HashSet;

use anyhow::bail;
use k8s_cri::v1::*;

use crate::measure::{Figures, Runtime, timed};
use berth_e2e::Env;
use berth_e2e::fixtures::pod_config;

use crate::pods::{remove_pod, run_configured_pod};

/// The calls timed on a node of `pods` running containers, by node size; `None` where the
/// report has no row for that size.
pub(crate) fn stats_ops(pods: usize) -> Option<[&'static str; 4]> {
    match pods {
        10 => Some([
            "ListContainerStats (10 containers)",
            "ListPodSandboxStats (10 pods)",
            "ContainerStats (10 containers)",
            "PodSandboxStats (10 pods)",
        ]),
        100 => Some([
            "ListContainerStats (100 containers)",
            "ListPodSandboxStats (100 pods)",
            "ContainerStats (100 containers)",
            "PodSandboxStats (100 pods)",
        ]),
        _ => None,
    }
}

/// The node sizes the stats calls are timed at.
pub(crate) const STATS_PODS: [usize; 2] = [10, 100];

/// One runtime's pods for this phase: pod ids and their containers' ids, in order.
struct Node {
    pods: Vec<String>,
    containers: Vec<String>,
}

/// A pod config as kubelet sends it: with a cgroup parent of its own (containerd 1.6
/// reads a pod's stats from it and refuses ListPodSandboxStats without one). The parents
/// are unique to the harness run, which removes them at its end.
pub(crate) fn kubelet_pod_config(rt: &Runtime, name: &str) -> PodSandboxConfig {
    let mut config = pod_config(name, &rt.logs);
    config.linux = Some(LinuxPodSandboxConfig {
        cgroup_parent: Env::get().cgroup_parent(name),
        ..Default::default()
    });
    config
}

/// Starts `n` pods of one `sleep` container on `rt`, ten at a time.
async fn start_node(rt: &Runtime, n: usize) -> (Vec<String>, anyhow::Result<()>) {
    let mut pods = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
        let started = futures::future::join_all(chunk.iter().map(|i| {
            run_configured_pod(
                rt,
                kubelet_pod_config(rt, &format!("{}-calls{n}-{i}", rt.name)),
            )
        }))
        .await;
        let mut failed = None;
        for r in started {
            match r {
                Ok(p) => pods.push(p),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            return (pods, Err(e));
        }
    }
    (pods, Ok(()))
}

/// The running containers of `pods`, as the runtime lists them; every pod must have one.
async fn containers_of(rt: &Runtime, pods: &[String]) -> anyhow::Result<Vec<String>> {
    let containers = crate::pods::running_containers(rt).await?;
    let mut out = Vec::new();
    for pod in pods {
        match containers.iter().find(|c| &c.pod_sandbox_id == pod) {
            Some(c) => out.push(c.id.clone()),
            None => bail!("{}: pod {pod} has no running container", rt.name),
        }
    }
    Ok(out)
}

/// The phase: for each node size, every runtime gets its pods, then `rounds` rounds of the
/// calls alternate between the runtimes; the single-container calls (ImageFsInfo, Status,
/// UpdateContainerResources, ReopenContainerLog) are timed on the smallest node. Every pod
/// is removed before an error is returned.
pub(crate) async fn node_calls(
    runs: &mut [(Runtime, Figures)],
    sizes: &[usize],
    rounds: usize,
) -> anyhow::Result<()> {
    for (k, &n) in sizes.iter().enumerate() {
        let mut nodes = Vec::new();
        let mut result = Ok(());
        for (rt, _) in runs.iter() {
            let (pods, started) = start_node(rt, n).await;
            let containers = match started {
                Ok(()) => containers_of(rt, &pods).await,
                Err(e) => Err(e),
            };
            match containers {
                Ok(containers) => nodes.push(Node { pods, containers }),
                Err(e) => {
                    nodes.push(Node {
                        pods,
                        containers: Vec::new(),
                    });
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            'rounds: for i in 0..rounds {
                for ((rt, f), node) in runs.iter_mut().zip(&nodes) {
                    let mut r = stats_round(rt, f, n, node, i).await;
                    if r.is_ok() && k == 0 {
                        r = single_calls(rt, f, node, i).await;
                    }
                    if let Err(e) = r {
                        result = Err(e);
                        break 'rounds;
                    }
                }
            }
        }
        for ((rt, _), node) in runs.iter().zip(&nodes) {
            let removed = futures::future::join_all(node.pods.iter().map(|p| remove_pod(rt, p)));
            if let Some(Err(e)) = removed.await.into_iter().find(Result::is_err) {
                result = result.and(Err(e));
            }
        }
        result?;
    }
    Ok(())
}

/// How many of `ids` the answer's stats are about.
fn count_covered<'a, A: HasId + 'a>(
    ids: &[String],
    answered: impl Iterator<Item = &'a Option<A>>,
) -> usize {
    let answered: HashSet<&str> = answered.flatten().map(HasId::id).collect();
    ids.iter()
        .filter(|id| answered.contains(id.as_str()))
        .count()
}

/// The attributes of a container's or a pod's stats, by their id.
trait HasId {
    fn id(&self) -> &str;
}

impl HasId for ContainerAttributes {
    fn id(&self) -> &str {
        &self.id
    }
}

impl HasId for PodSandboxAttributes {
    fn id(&self) -> &str {
        &self.id
    }
}

/// One round of the stats calls on a node of `n` pods; each answer must cover the node.
async fn stats_round(
    rt: &Runtime,
    f: &mut Figures,
    n: usize,
    node: &Node,
    i: usize,
) -> anyhow::Result<()> {
    let Some([list_c, list_p, one_c, one_p]) = stats_ops(n) else {
        bail!("no report rows for a node of {n} pods");
    };
    let mut c = rt.client.runtime();
    let stats = timed(
        rt,
        f,
        list_c,
        c.list_container_stats(ListContainerStatsRequest::default()),
    )
    .await?
    .stats;
    let covered = count_covered(&node.containers, stats.iter().map(|s| &s.attributes));
    if covered != n {
        bail!("{}: {list_c}: {covered} of {n} containers", rt.name);
    }
    let stats = timed(
        rt,
        f,
        list_p,
        c.list_pod_sandbox_stats(ListPodSandboxStatsRequest::default()),
    )
    .await?
    .stats;
    let covered = count_covered(&node.pods, stats.iter().map(|s| &s.attributes));
    if covered != n {
        bail!("{}: {list_p}: {covered} of {n} pods", rt.name);
    }
    // A different container and pod each round, so no answer comes from a warm cache
    // the others did not get.
    let id = &node.containers[i % n];
    let one = timed(
        rt,
        f,
        one_c,
        c.container_stats(ContainerStatsRequest {
            container_id: id.clone(),
        }),
    )
    .await?;
    if one.stats.and_then(|s| s.memory).is_none() {
        bail!("{}: {one_c}: no memory figures for {id}", rt.name);
    }
    let pod = &node.pods[i % n];
    let one = timed(
        rt,
        f,
        one_p,
        c.pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        }),
    )
    .await?;
    if one.stats.and_then(|s| s.attributes).map(|a| a.id).as_ref() != Some(pod) {
        bail!("{}: {one_p}: no stats for {pod}", rt.name);
    }
    Ok(())
}

/// The node-wide and single-container calls: ImageFsInfo, Status as kubelet asks it
/// (verbose false), UpdateContainerResources (a new CPU weight and memory limit each
/// round) and ReopenContainerLog after the log was moved aside, as kubelet's rotation does.
async fn single_calls(rt: &Runtime, f: &mut Figures, node: &Node, i: usize) -> anyhow::Result<()> {
    let fs = timed(
        rt,
        f,
        "ImageFsInfo",
        rt.client
            .images()
            .image_fs_info(ImageFsInfoRequest::default()),
    )
    .await?;
    if fs.image_filesystems.is_empty() {
        bail!("{}: ImageFsInfo: no image filesystem", rt.name);
    }
    let mut c = rt.client.runtime();
    let status = timed(rt, f, "Status", c.status(StatusRequest { verbose: false })).await?;
    let ready = status.status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && c.status)
    });
    if !ready {
        bail!("{}: Status: the runtime is not ready", rt.name);
    }
    let id = &node.containers[0];
    let mib = 64 + (i % 2) as i64 * 64;
    timed(
        rt,
        f,
        "UpdateContainerResources",
        c.update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(LinuxContainerResources {
                cpu_shares: 512 + (i % 2) as i64 * 512,
                memory_limit_in_bytes: mib << 20,
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await?;
    let log = rt.logs.join("c.log");
    let moved = rt.logs.join(format!("c.log.{i}"));
    // Rotation moves the file before asking; the reopened log is a new file at the path.
    let _ = std::fs::rename(&log, &moved);
    timed(
        rt,
        f,
        "ReopenContainerLog",
        c.reopen_container_log(ReopenContainerLogRequest {
            container_id: id.clone(),
        }),
    )
    .await?;
    let _ = std::fs::remove_file(&moved);
    if !log.exists() {
        bail!(
            "{}: ReopenContainerLog: no new log at {}",
            rt.name,
            log.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(id: &str) -> Option<ContainerAttributes> {
        Some(ContainerAttributes {
            id: id.into(),
            ..Default::default()
        })
    }

    #[test]
    fn coverage_counts_only_the_node_ids_the_answer_names() {
        let node = vec!["a".to_string(), "b".into(), "c".into()];
        let answer = [attrs("a"), None, attrs("c"), attrs("other")];
        assert_eq!(count_covered(&node, answer.iter()), 2);
        assert_eq!(count_covered(&node, answer[1..2].iter()), 0);
    }

    #[test]
    fn every_node_size_timed_has_its_report_rows() {
        for n in STATS_PODS {
            let ops = stats_ops(n).expect("rows");
            assert!(
                ops.iter().all(|op| crate::measure::OPS.contains(op)),
                "{ops:?}"
            );
        }
        assert!(stats_ops(7).is_none());
    }
}
