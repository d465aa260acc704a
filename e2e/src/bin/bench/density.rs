//! The memory and density phases: what a runtime adds per pod, and many pods started and
//! removed at once.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::measure::{Density, Figures, PeakRss, Runtime, smaps_rollup};
use crate::pods::{remove_pod, run_pod, running_in};

/// Memory: `pods` pods with a container each, one after the other, then the RSS and PSS
/// of what the runtime added per pod.
pub(crate) async fn memory(rt: &Runtime, pods: usize, f: &mut Figures) -> anyhow::Result<()> {
    let mut ids = Vec::new();
    let mut result = Ok(());
    for i in 0..pods {
        match run_pod(rt, format!("{}-mem-{i}", rt.name)).await {
            Ok(pod) => ids.push(pod),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (rss, pss) = (rt.helpers)()
            .iter()
            .map(|&p| smaps_rollup(p))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        let per = pods.max(1) as f64;
        f.per_pod_rss_kib = rss as f64 / per;
        f.per_pod_pss_kib = pss as f64 / per;
    }
    for pod in &ids {
        remove_pod(rt, pod).await?;
    }
    result
}

/// Density: `n` pods started at once (each run, create, start), the wall time until all
/// run; then all stopped and removed at once, the wall time until all are gone. Samples
/// the daemon's VmRSS while they start and run. Whatever fails, the pods that started are
/// torn down before the error is returned.
pub(crate) async fn density(rt: &Runtime, n: usize, f: &mut Figures) -> anyhow::Result<()> {
    let rss = PeakRss::start(rt.pid, Duration::from_millis(5));
    let t = Instant::now();
    let started = futures::future::join_all(
        (0..n).map(|i| run_pod(rt, format!("{}-density{n}-{i}", rt.name))),
    )
    .await;
    let start_ms = t.elapsed().as_secs_f64() * 1000.0;
    let (pods, failed): (Vec<_>, Vec<_>) = started.into_iter().partition(Result::is_ok);
    let pods: Vec<String> = pods.into_iter().flatten().collect();
    // Every container counted as running by the runtime itself, not only by our calls.
    let running = running_in(rt, &pods).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let daemon_max_rss_kib = rss.stop().await;
    let t = Instant::now();
    let removed = futures::future::join_all(pods.iter().map(|p| remove_pod(rt, p))).await;
    let teardown_ms = t.elapsed().as_secs_f64() * 1000.0;
    if let Some(Err(e)) = failed.into_iter().next() {
        return Err(e.context(format!("{}: density {n}", rt.name)));
    }
    if let Some(Err(e)) = removed.into_iter().find(Result::is_err) {
        return Err(e.context(format!("{}: density {n} teardown", rt.name)));
    }
    let running = running?;
    if running != n {
        bail!("{}: density {n}: {running} containers running", rt.name);
    }
    f.density.push(Density {
        pods: n,
        start_ms,
        teardown_ms,
        daemon_max_rss_kib: daemon_max_rss_kib?,
    });
    Ok(())
}
