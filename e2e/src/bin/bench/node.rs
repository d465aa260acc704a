//! The full-node phase (`--node N`): N pods with a `sleep` container each, started 50 at
//! a time (kubelet's parallelism); the time until all run, the daemon's peak RSS, what the
//! runtime adds per pod at a few counts up to N (flat, not growing with the count); then,
//! with all N running, the List and stats calls kubelet makes, polled every second as it
//! does; then all N torn down, 50 at a time.

use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt;
use k8s_cri::v1::*;

use crate::measure::{Figures, PeakRss, Runtime, smaps_rollup, timed};
use crate::pods::{remove_pod, run_pod_in, running_in};

/// kubelet's parallelism: pods started (and removed) at once.
pub(crate) const PARALLEL: usize = 50;

/// The calls polled with every pod running, as `calls` names them.
pub(crate) const NODE_LIST_PODS: &str = "ListPodSandbox (full node)";
pub(crate) const NODE_LIST_CONTAINERS: &str = "ListContainers (full node)";
pub(crate) const NODE_CONTAINER_STATS: &str = "ListContainerStats (full node)";
pub(crate) const NODE_POD_STATS: &str = "ListPodSandboxStats (full node)";
/// The polled calls, with their p99 target at 500 pods in ms (issue 24).
pub(crate) const NODE_POLLED: [(&str, f64); 4] = [
    (NODE_LIST_PODS, 5.0),
    (NODE_LIST_CONTAINERS, 5.0),
    (NODE_CONTAINER_STATS, 50.0),
    (NODE_POD_STATS, 50.0),
];
/// The daemon's peak RSS target at 500 pods (issue 24).
pub(crate) const NODE_PEAK_RSS_TARGET_KIB: u64 = 64 * 1024;

/// What a runtime adds per pod with `pods` pods running.
pub(crate) struct PerPod {
    pub(crate) pods: usize,
    pub(crate) rss_kib: f64,
    pub(crate) pss_kib: f64,
}

/// The full node's figures (the polled calls are in `Figures::calls`).
pub(crate) struct Node {
    pub(crate) pods: usize,
    /// Until every pod runs, in ms: the start stages' times added up (the pauses at the
    /// counts where memory is read are left out).
    pub(crate) start_ms: f64,
    pub(crate) teardown_ms: f64,
    /// The daemon's highest VmRSS over the phase: start, poll and teardown.
    pub(crate) daemon_peak_rss_kib: u64,
    pub(crate) per_pod: Vec<PerPod>,
}

/// The counts at which per-pod memory is read: a quarter, half, three quarters and all.
pub(crate) fn checkpoints(n: usize) -> Vec<usize> {
    let mut out: Vec<usize> = (1..=4).map(|q| n * q / 4).filter(|&k| k > 0).collect();
    out.dedup();
    out
}

/// The full node for one runtime: see the module's doc. `poll` is how long the List and
/// stats calls are polled (60 s in a full run). Whatever fails, every pod started is torn
/// down before the error is returned.
pub(crate) async fn node(
    rt: &Runtime,
    n: usize,
    poll: Duration,
    f: &mut Figures,
) -> anyhow::Result<()> {
    let rss = PeakRss::start(rt.pid, Duration::from_millis(10));
    let mut pods = Vec::with_capacity(n);
    let mut per_pod = Vec::new();
    let mut start = Duration::ZERO;
    let mut result = async {
        for k in checkpoints(n) {
            let t = Instant::now();
            let first = pods.len();
            let started: Vec<anyhow::Result<String>> = futures::stream::iter(first..k)
                .map(|i| {
                    let name = format!("{}-node-{i}", rt.name);
                    run_pod_in(rt, name, Some(cgroup_parent(rt, i)))
                })
                .buffer_unordered(PARALLEL)
                .collect()
                .await;
            start += t.elapsed();
            let mut failed = None;
            for r in started {
                match r {
                    Ok(pod) => pods.push(pod),
                    Err(e) => failed = failed.or(Some(e)),
                }
            }
            if let Some(e) = failed {
                return Err(e.context(format!("{}: full node, starting pods", rt.name)));
            }
            // Let the new pods' processes settle before their memory is read.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (rss, pss) = (rt.helpers)()
                .iter()
                .map(|&p| smaps_rollup(p))
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
            per_pod.push(PerPod {
                pods: k,
                rss_kib: rss as f64 / k as f64,
                pss_kib: pss as f64 / k as f64,
            });
        }
        check_running(rt, &pods).await?;
        poll_lists(rt, n, poll, f).await
    }
    .await;
    let t = Instant::now();
    let removed: Vec<anyhow::Result<()>> = futures::stream::iter(&pods)
        .map(|p| remove_pod(rt, p))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let teardown = t.elapsed();
    let peak = rss.stop().await;
    if let Some(Err(e)) = removed.into_iter().find(Result::is_err) {
        result = result.and(Err(e.context(format!("{}: full node teardown", rt.name))));
    }
    result?;
    f.node = Some(Node {
        pods: n,
        start_ms: start.as_secs_f64() * 1000.0,
        teardown_ms: teardown.as_secs_f64() * 1000.0,
        daemon_peak_rss_kib: peak?,
        per_pod,
    });
    Ok(())
}

/// Pod `i`'s cgroup parent, as kubelet gives each pod its own (`/kubepods/.../pod<uid>`):
/// containerd 1.6 has no stats for a pod without one. Below the run's parents, which the
/// harness removes at the end (anything left inside them is reported as a leak).
fn cgroup_parent(rt: &Runtime, i: usize) -> String {
    let tag: String = rt
        .name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    berth_e2e::Env::get().cgroup_parent(&format!("node-{tag}-{i}"))
}

/// Every container of `pods` counted as running by the runtime itself.
async fn check_running(rt: &Runtime, pods: &[String]) -> anyhow::Result<()> {
    let running = running_in(rt, pods).await?;
    if running != pods.len() {
        bail!(
            "{}: full node: {running} of {} containers running",
            rt.name,
            pods.len()
        );
    }
    Ok(())
}

/// kubelet's steady load on a full node: each second, the pod and container lists (its
/// relist) and the stats of everything, each call timed; every answer must hold all `n`.
/// A call the runtime does not implement is left out for it (and missing from the report).
async fn poll_lists(rt: &Runtime, n: usize, poll: Duration, f: &mut Figures) -> anyhow::Result<()> {
    let mut c = rt.client.runtime();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unimplemented = [false; NODE_POLLED.len()];
    // The daemon's CPU seconds in each call, summed over the polls: less sensitive to the
    // machine's other load than the calls' wall time (a clock tick is 10 ms: only the sum
    // over many polls means something).
    let mut cpu = [0.0f64; NODE_POLLED.len()];
    let mut polls = 0u32;
    let t = Instant::now();
    while t.elapsed() < poll {
        tick.tick().await;
        polls += 1;
        for (k, (op, _)) in NODE_POLLED.iter().enumerate() {
            if unimplemented[k] {
                continue;
            }
            let cpu0 = crate::logs::cpu_s(rt.pid);
            let got = match k {
                0 => timed(
                    rt,
                    f,
                    op,
                    c.list_pod_sandbox(ListPodSandboxRequest::default()),
                )
                .await
                .map(|r| r.items.len()),
                1 => timed(
                    rt,
                    f,
                    op,
                    c.list_containers(ListContainersRequest::default()),
                )
                .await
                .map(|r| r.containers.len()),
                2 => timed(
                    rt,
                    f,
                    op,
                    c.list_container_stats(ListContainerStatsRequest::default()),
                )
                .await
                .map(|r| r.stats.len()),
                _ => timed(
                    rt,
                    f,
                    op,
                    c.list_pod_sandbox_stats(ListPodSandboxStatsRequest::default()),
                )
                .await
                .map(|r| r.stats.len()),
            };
            cpu[k] += crate::logs::cpu_s(rt.pid) - cpu0;
            match got {
                Ok(got) if got < n => {
                    bail!("{}: {op}: {got} items with {n} pods running", rt.name)
                }
                Ok(_) => {}
                Err(e)
                    if e.downcast_ref::<tonic::Status>()
                        .is_some_and(|s| s.code() == tonic::Code::Unimplemented) =>
                {
                    eprintln!("bench: {}: {op} is not implemented; left out", rt.name);
                    unimplemented[k] = true;
                }
                Err(e) => return Err(e),
            }
        }
    }
    for (k, (op, _)) in NODE_POLLED.iter().enumerate() {
        eprintln!(
            "bench: {}: {op} with {n} pods: daemon CPU {:.2} ms per call over {polls} polls",
            rt.name,
            cpu[k] * 1000.0 / f64::from(polls.max(1)),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_read_at_quarters_of_the_node() {
        assert_eq!(checkpoints(500), vec![125, 250, 375, 500]);
        assert_eq!(checkpoints(5), vec![1, 2, 3, 5]);
        assert_eq!(checkpoints(2), vec![1, 2]);
        assert_eq!(checkpoints(0), Vec::<usize>::new());
    }
}
