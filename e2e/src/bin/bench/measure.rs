//! What the benchmark measures and with what: the names of the timed operations, a runtime
//! under test, the figures it collects, and the /proc readings behind the memory figures.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_e2e::bench::{Samples, Summary};
use berth_e2e::{Client, Daemon};
use k8s_cri::v1::VersionRequest;

use crate::streams::{ATTACH, EXEC_SPDY, EXEC_WS, FORWARD_BULK, FORWARD_FIRST};

pub(crate) const COLD_PULL: &str = "PullImage (cold: a fresh daemon, empty store)";
pub(crate) const COLD_PULL_LAYERED: &str = "PullImage (cold store, 4 layers, 40 MB)";
pub(crate) const PULL_ABSENT: &str = "PullImage (warm daemon, image absent)";
pub(crate) const PULL_PRESENT: &str = "PullImage (image present)";
pub(crate) const POD_READY: &str = "pod ready (run+create+start)";
pub(crate) const LAUNCH: &str = "launch to serving";
pub(crate) const RESTART_EMPTY: &str = "restart to RuntimeReady (no pods)";
pub(crate) const RESTART_BUSY: &str = "restart to RuntimeReady (busy node)";
pub(crate) const RESTART_LISTED: &str = "restart to a true ListPodSandbox (busy node)";

/// The timed operations, in the report's order.
pub(crate) const OPS: &[&str] = &[
    COLD_PULL,
    COLD_PULL_LAYERED,
    PULL_ABSENT,
    PULL_PRESENT,
    "ImageStatus",
    "ListImages",
    "RemoveImage",
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    POD_READY,
    "PodSandboxStatus",
    "ListPodSandbox",
    "ContainerStatus",
    "ListContainers",
    "ExecSync",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    crate::stop::STOP_EMPTY,
    crate::stop::STOP_RUNNING,
    "RemovePodSandbox",
    "ListContainerStats (10 containers)",
    "ListPodSandboxStats (10 pods)",
    "ContainerStats (10 containers)",
    "PodSandboxStats (10 pods)",
    "ListContainerStats (100 containers)",
    "ListPodSandboxStats (100 pods)",
    "ContainerStats (100 containers)",
    "PodSandboxStats (100 pods)",
    "ImageFsInfo",
    "Status",
    "UpdateContainerResources",
    "ReopenContainerLog",
    EXEC_SPDY,
    EXEC_WS,
    ATTACH,
    FORWARD_FIRST,
    FORWARD_BULK,
    LAUNCH,
    RESTART_EMPTY,
    RESTART_BUSY,
    RESTART_LISTED,
];

/// One runtime under test.
pub(crate) struct Runtime {
    pub(crate) name: &'static str,
    pub(crate) client: Client,
    pub(crate) pid: u32,
    pub(crate) logs: PathBuf,
    /// The processes the runtime adds per pod (Berth's monitors, containerd's shims).
    pub(crate) helpers: Box<dyn Fn() -> Vec<u32>>,
    /// The work it still does after its answers, read from the host (see [`Backlog`]).
    pub(crate) backlog: Box<dyn Fn() -> Backlog>,
}

/// What a runtime still has to finish after answering, read from the host: the next
/// runtime's turn waits until it is done (`crate::quiet`), so one runtime's deferred work
/// never lands in the other's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backlog {
    /// Items known to be pending: directories renamed aside for deletion, per-pod processes
    /// still exiting, task directories not yet cleaned.
    pub(crate) pending: usize,
    /// A count that moves while background work runs (the snapshot directories, until
    /// garbage collection has removed what it will): quiet once it stops changing.
    pub(crate) churn: usize,
}

/// Entries of `dir` whose names start with `prefix` (all with ""); 0 if it is unreadable.
pub(crate) fn entries(dir: &Path, prefix: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .count()
    })
}

/// One density round: `pods` pods started at once, then torn down at once.
pub(crate) struct Density {
    pub(crate) pods: usize,
    pub(crate) start_ms: f64,
    pub(crate) teardown_ms: f64,
    /// The daemon's highest VmRSS while the pods started and ran.
    pub(crate) daemon_max_rss_kib: u64,
}

/// What one runtime measured.
#[derive(Default)]
pub(crate) struct Figures {
    pub(crate) calls: BTreeMap<&'static str, Samples>,
    pub(crate) density: Vec<Density>,
    pub(crate) idle_rss_kib: u64,
    pub(crate) idle_rss_after_kib: u64,
    pub(crate) per_pod_rss_kib: f64,
    pub(crate) per_pod_pss_kib: f64,
    /// The log floods, one per round.
    pub(crate) floods: Vec<crate::logs::Flood>,
    /// The full-node phase (`--node N`), when it ran.
    pub(crate) node: Option<crate::node::Node>,
}

impl Figures {
    pub(crate) fn op(&mut self, name: &'static str) -> &mut Samples {
        self.calls.entry(name).or_default()
    }
    pub(crate) fn summary(&self, name: &str) -> Option<Summary> {
        self.calls.get(name).and_then(Samples::summary)
    }
}

/// Every operation any runtime of `figures` timed: those of [`OPS`] in its order, then the
/// others (added by phases that do not list theirs there) by name, so no timed call is
/// left out of the report, the JSON or the plot.
pub(crate) fn op_names<'a>(figures: impl IntoIterator<Item = &'a Figures>) -> Vec<&'static str> {
    let mut extra: Vec<&'static str> = Vec::new();
    for f in figures {
        for op in f.calls.keys() {
            if !OPS.contains(op) && !extra.contains(op) {
                extra.push(op);
            }
        }
    }
    extra.sort_unstable();
    OPS.iter().copied().chain(extra).collect()
}

/// Polls `socket` every millisecond until a CRI `Version` call answers; returns the client
/// and the time since `launched`, or `None` once 30 s have passed without an answer.
pub(crate) async fn first_answer(socket: &Path, launched: Instant) -> Option<(Client, Duration)> {
    loop {
        if socket.exists()
            && let Ok(client) = Client::connect(socket).await
            && client
                .runtime()
                .version(VersionRequest::default())
                .await
                .is_ok()
        {
            return Some((client, launched.elapsed()));
        }
        if launched.elapsed() > Duration::from_secs(30) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Awaits one CRI call, adding its time to `op`'s samples.
pub(crate) async fn timed<T>(
    rt: &Runtime,
    figures: &mut Figures,
    op: &'static str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    let t = Instant::now();
    // The code too: a status's own text can be empty.
    let out = call
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
        .with_context(|| format!("{}: {op}", rt.name))?;
    figures.op(op).push_ms(t.elapsed());
    Ok(out.into_inner())
}

pub(crate) fn smaps_rollup(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (kib_field(&text, "Rss:"), kib_field(&text, "Pss:"))
}

/// A `Name:   123 kB` field of a /proc file.
pub(crate) fn kib_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A process's highest VmRSS, sampled on a task from [`PeakRss::start`] until
/// [`PeakRss::stop`].
pub(crate) struct PeakRss {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl PeakRss {
    /// Samples `pid`'s VmRSS every `every`.
    pub(crate) fn start(pid: u32, every: Duration) -> PeakRss {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut max = vm_rss_kib(pid);
            while !flag.load(Ordering::Relaxed) {
                max = max.max(vm_rss_kib(pid));
                tokio::time::sleep(every).await;
            }
            max
        });
        PeakRss { stop, task }
    }

    /// The highest VmRSS seen, in KiB.
    pub(crate) async fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.context("the RSS sampler")
    }
}

pub(crate) fn vm_rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    kib_field(&text, "VmRSS:")
}

/// Processes whose command line contains every one of `needles`.
pub(crate) fn processes_with(needles: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if needles.iter().all(|n| cmd.contains(n)) {
            out.push(pid);
        }
    }
    out
}

pub(crate) fn berth_runtime(d: &Daemon) -> anyhow::Result<Runtime> {
    let state = d.dir().state().display().to_string();
    let (root, state_dir) = (d.dir().root(), d.dir().state());
    let monitors = state.clone();
    Ok(Runtime {
        name: "berth",
        client: d.client().clone(),
        pid: d.pid().context("berth pid")?,
        logs: d.dir().path().join("pod-logs"),
        helpers: Box::new(move || processes_with(&["berth-monitor", &state])),
        // Removed containers' directories are renamed `.removed-<id>` and deleted on a
        // blocking thread; removed snapshots wait in `snapshots/.trash`.
        backlog: Box::new(move || Backlog {
            pending: entries(&root.join("containers"), ".removed-")
                + entries(&state_dir.join("containers"), ".removed-")
                + entries(&root.join("snapshots/.trash"), "")
                + processes_with(&["berth-monitor", &monitors]).len(),
            churn: entries(&root.join("snapshots"), ""),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_timed_operation_is_named_known_ones_first() {
        let mut a = Figures::default();
        a.op("Z new call").push(1.0);
        a.op(POD_READY).push(1.0);
        let mut b = Figures::default();
        b.op("A new call").push(1.0);
        let names = op_names([&a, &b]);
        assert_eq!(names.len(), OPS.len() + 2);
        assert_eq!(&names[..OPS.len()], OPS);
        assert_eq!(&names[OPS.len()..], &["A new call", "Z new call"]);
    }

    #[test]
    fn kib_fields_are_read_from_proc_text() {
        let status = "Name:\tberth\nVmRSS:\t   30092 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), 30092);
        assert_eq!(kib_field(status, "VmHWM:"), 0);
    }
}
