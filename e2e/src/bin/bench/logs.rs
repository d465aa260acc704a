//! The log-flood phase: a container writes numbered lines to stdout as fast as it can, and
//! the benchmark measures what reaches its CRI log file (payload bytes per second), the CPU
//! the runtime spends on it (its per-pod process: Berth's monitor, containerd's shim; and
//! its daemon), how fast `ContainerStatus` answers meanwhile, and whether a log rotation
//! (rename, then `ReopenContainerLog`, as kubelet does) in the middle loses or repeats a
//! line.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_e2e::bench::{Samples, ratio};
use berth_e2e::fixtures::{container_config, pod_config};
use k8s_cri::v1::*;

use crate::Settings;
use crate::measure::{Figures, Runtime, vm_rss_kib};
use crate::report::{header, row, times};

/// Lines of the block the writer repeats.
const BLOCK_LINES: u64 = 10_000;
/// The writer: a block of numbered lines of about 100 bytes (`<i> xxx...`, `i` from 1 to
/// [`BLOCK_LINES`]) is made once in the pod's shm, then written again and again by `cat`,
/// each time after a `block <b>` line: `cat` writes far faster than either runtime frames
/// lines, so the runtime sets the pace (an `awk` loop writing each line is slower than
/// Berth: it measured the writer).
fn writer() -> String {
    format!(
        r#"awk 'BEGIN {{ p = sprintf("%92s", ""); gsub(/ /, "x", p); for (i = 1; i <= {BLOCK_LINES}; i++) print i " " p }}' > /dev/shm/block && b=1 && while :; do echo "block $b"; cat /dev/shm/block; b=$((b+1)); done"#
    )
}
/// How often `ContainerStatus` is asked during the flood.
const STATUS_EVERY: Duration = Duration::from_millis(10);
/// How often the per-pod processes' RSS is read during the flood.
const RSS_EVERY: Duration = Duration::from_millis(100);
/// Longest wait for the log to stop growing after the writer was killed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The log is taken as drained once its size held this long.
const DRAIN_QUIET: Duration = Duration::from_millis(300);

/// One flood on one runtime.
#[derive(Debug, Default)]
pub(crate) struct Flood {
    /// From StartContainer to the writer killed (StopContainer answered).
    pub(crate) seconds: f64,
    /// Bytes the container wrote that reached the log: record contents and their newlines.
    pub(crate) payload_bytes: u64,
    /// Whole lines in the two files.
    pub(crate) lines: u64,
    /// Of those, in the file kubelet's rotation renamed.
    pub(crate) lines_before_rotation: u64,
    /// Numbers missing from the sequence.
    pub(crate) lost: u64,
    /// Lines whose number came already (repeated or out of order).
    pub(crate) duplicated: u64,
    /// CPU (user + system) of the runtime's per-pod processes over the flood.
    pub(crate) helper_cpu_s: f64,
    /// CPU of the runtime's daemon over the flood.
    pub(crate) daemon_cpu_s: f64,
    /// The per-pod processes' highest summed VmRSS during the flood.
    pub(crate) helper_max_rss_kib: u64,
    /// ContainerStatus of the flooding container, every 10 ms, in ms.
    pub(crate) status_ms: Samples,
    /// The ReopenContainerLog call, in ms.
    pub(crate) reopen_ms: f64,
}

impl Flood {
    /// Payload bytes per second reaching the log.
    pub(crate) fn bytes_per_s(&self) -> f64 {
        self.payload_bytes as f64 / self.seconds
    }
    /// CPU seconds per GiB of payload logged.
    pub(crate) fn per_gib(&self, cpu_s: f64) -> f64 {
        cpu_s / (self.payload_bytes as f64 / (1u64 << 30) as f64)
    }
}

/// Flood rounds per runtime and their length: `(rounds, seconds)`.
fn shape(settings: &Settings) -> (usize, Duration) {
    if settings.smoke {
        (1, Duration::from_secs(2))
    } else {
        (3, Duration::from_secs(10))
    }
}

/// Runs the floods, alternating the runtimes round by round.
pub(crate) async fn floods(
    settings: &Settings,
    runs: &mut [(Runtime, Figures)],
) -> anyhow::Result<()> {
    let (rounds, length) = shape(settings);
    for round in 0..rounds {
        for (rt, f) in runs.iter_mut() {
            let flood = flood(rt, round, length)
                .await
                .with_context(|| format!("{}: log flood {round}", rt.name))?;
            f.floods.push(flood);
        }
    }
    Ok(())
}

/// User + system CPU seconds of a process (all its threads), 0 once it is gone.
pub(crate) fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    stat_ticks(&stat) as f64 / ticks
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line; the command name before them
/// may hold spaces, so fields are counted after its closing parenthesis.
fn stat_ticks(stat: &str) -> u64 {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    field(14).unwrap_or(0) + field(15).unwrap_or(0)
}

/// One pod whose container floods its log for `length`, rotated half-way; the pod and its
/// log files are removed whatever happens.
async fn flood(rt: &Runtime, round: usize, length: Duration) -> anyhow::Result<Flood> {
    let name = format!("{}-flood-{round}", rt.name);
    let dir = rt.logs.join(&name);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut c = rt.client.runtime();
    let config = pod_config(&name, &dir);
    let pod = c
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            ..Default::default()
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    // The per-pod processes, listed before the container exists: Berth's container
    // process is forked from the monitor and carries its command line until it execs.
    let helpers = (rt.helpers)();
    let result = flood_in(rt, &pod, config, &dir, &helpers, length).await;
    let removed = crate::pods::remove_pod(rt, &pod).await;
    std::fs::remove_dir_all(&dir).ok();
    let flood = result?;
    removed?;
    Ok(flood)
}

async fn flood_in(
    rt: &Runtime,
    pod: &str,
    config: PodSandboxConfig,
    dir: &Path,
    helpers: &[u32],
    length: Duration,
) -> anyhow::Result<Flood> {
    if helpers.is_empty() {
        bail!("no per-pod process found for pod {pod}");
    }
    let mut c = rt.client.runtime();
    let id = c
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(container_config("flood", &["sh", "-c", &writer()])),
            sandbox_config: Some(config),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    let log = dir.join("flood.log");
    let rotated = dir.join("flood.log.rotated");
    let cpu = |pids: &[u32]| pids.iter().map(|&p| cpu_s(p)).sum::<f64>();
    let (helper0, daemon0) = (cpu(helpers), cpu_s(rt.pid));

    let t0 = Instant::now();
    c.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .context("StartContainer")?;
    let stop = Arc::new(AtomicBool::new(false));
    let poller = tokio::spawn(poll_status(rt.client.runtime(), id.clone(), stop.clone()));
    let mut f = Flood::default();
    let mut rotated_yet = false;
    while t0.elapsed() < length {
        let rss = helpers.iter().map(|&p| vm_rss_kib(p)).sum::<u64>();
        f.helper_max_rss_kib = f.helper_max_rss_kib.max(rss);
        if !rotated_yet && t0.elapsed() >= length / 2 {
            rotated_yet = true;
            // kubelet's rotation: rename the live file, then have the runtime reopen it.
            std::fs::rename(&log, &rotated).context("rename the log")?;
            let t = Instant::now();
            c.reopen_container_log(ReopenContainerLogRequest {
                container_id: id.clone(),
            })
            .await
            .context("ReopenContainerLog")?;
            f.reopen_ms = t.elapsed().as_secs_f64() * 1000.0;
        }
        tokio::time::sleep(RSS_EVERY).await;
    }
    stop.store(true, Ordering::Relaxed);
    c.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .context("StopContainer")?;
    f.seconds = t0.elapsed().as_secs_f64();
    f.status_ms = poller.await.context("the ContainerStatus poller")??;
    drained(&[&rotated, &log]).await;
    f.helper_cpu_s = cpu(helpers) - helper0;
    f.daemon_cpu_s = cpu_s(rt.pid) - daemon0;

    let mut check = LineCheck::default();
    check.file(&rotated)?;
    f.lines_before_rotation = check.lines;
    check.file(&log)?;
    if f.lines_before_rotation == 0 || check.lines == f.lines_before_rotation {
        bail!(
            "the rotation left a file without lines ({} before it, {} in all)",
            f.lines_before_rotation,
            check.lines
        );
    }
    f.payload_bytes = check.payload_bytes;
    f.lines = check.lines;
    f.lost = check.lost;
    f.duplicated = check.duplicated;
    Ok(f)
}

/// Asks ContainerStatus every [`STATUS_EVERY`] until `stop`; each answer's time in ms.
async fn poll_status(
    mut c: k8s_cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    id: String,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let t = Instant::now();
        let status = c
            .container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .context("ContainerStatus during the flood")?
            .into_inner();
        samples.push_ms(t.elapsed());
        let state = status.status.map(|s| s.state);
        if state != Some(ContainerState::ContainerRunning as i32) && !stop.load(Ordering::Relaxed) {
            bail!("the flooding container is not running ({state:?})");
        }
    }
    Ok(samples)
}

/// Waits until the files' sizes held for [`DRAIN_QUIET`] (the runtime wrote what the
/// pipe still held), at most [`DRAIN_TIMEOUT`].
async fn drained(files: &[&PathBuf]) {
    let size = || -> u64 {
        files
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum()
    };
    let t = Instant::now();
    let (mut last, mut since) = (size(), Instant::now());
    while t.elapsed() < DRAIN_TIMEOUT && since.elapsed() < DRAIN_QUIET {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = size();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

/// Reads CRI log records (`<time> <stream> <F|P> <content>`), joins partial records into
/// lines and checks the writer's numbering: line `i` of block `b` is number
/// `(b - 1) * (BLOCK_LINES + 1) + i` (the `block b` line itself is `i = 0`), and every
/// number must come once, in order, from 0. A lost `block` line shows as repeats.
#[derive(Debug, Default)]
struct LineCheck {
    /// The number the next line should carry.
    next: u64,
    /// The block the last `block` line started.
    block: Option<u64>,
    lines: u64,
    lost: u64,
    duplicated: u64,
    payload_bytes: u64,
    /// Content of `P` records waiting for their line's `F`.
    partial: Vec<u8>,
}

impl LineCheck {
    /// Checks every record of a log file, in order.
    fn file(&mut self, path: &Path) -> anyhow::Result<()> {
        let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, f);
        let mut record = Vec::new();
        loop {
            record.clear();
            if r.read_until(b'\n', &mut record)? == 0 {
                return Ok(());
            }
            self.record(&record)
                .with_context(|| format!("{}: line {}", path.display(), self.lines + 1))?;
        }
    }

    /// Checks one record (its trailing newline included).
    fn record(&mut self, record: &[u8]) -> anyhow::Result<()> {
        let Some(record) = record.strip_suffix(b"\n") else {
            // The last record of a file cut mid-write: the runtime's, not the writer's.
            bail!("a record without its newline");
        };
        let mut parts = record.splitn(4, |&b| b == b' ');
        let (Some(_time), Some(stream), Some(tag), Some(content)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!(
                "not a CRI log record: {:?}",
                String::from_utf8_lossy(record)
            );
        };
        if stream != b"stdout" {
            bail!("a record on {:?}", String::from_utf8_lossy(stream));
        }
        self.payload_bytes += content.len() as u64;
        match tag {
            b"P" => {
                self.partial.extend_from_slice(content);
                // The writer's lines are short: a runaway partial is a framing fault.
                if self.partial.len() > 1 << 20 {
                    bail!("a partial line over 1 MiB");
                }
                Ok(())
            }
            b"F" => {
                self.payload_bytes += 1;
                let line = if self.partial.is_empty() {
                    content.to_vec()
                } else {
                    let mut l = std::mem::take(&mut self.partial);
                    l.extend_from_slice(content);
                    l
                };
                self.line(&line)
            }
            other => bail!("tag {:?}", String::from_utf8_lossy(other)),
        }
    }

    fn line(&mut self, line: &[u8]) -> anyhow::Result<()> {
        let bad = || {
            format!(
                "not a line of the writer: {:?}",
                String::from_utf8_lossy(&line[..line.len().min(40)])
            )
        };
        let number =
            |digits: &[u8]| -> Option<u64> { std::str::from_utf8(digits).ok()?.parse().ok() };
        let n = if let Some(b) = line.strip_prefix(b"block ") {
            let b = number(b).filter(|&b| b >= 1).with_context(bad)?;
            self.block = Some(b);
            (b - 1) * (BLOCK_LINES + 1)
        } else {
            let digits = line.iter().take_while(|b| b.is_ascii_digit()).count();
            let i = number(&line[..digits])
                .filter(|i| (1..=BLOCK_LINES).contains(i))
                .with_context(bad)?;
            let b = self
                .block
                .context("a numbered line before any block line")?;
            (b - 1) * (BLOCK_LINES + 1) + i
        };
        self.lines += 1;
        if n >= self.next {
            self.lost += n - self.next;
            self.next = n + 1;
        } else {
            self.duplicated += 1;
        }
        Ok(())
    }
}

/// The median over the rounds of one figure of a flood.
fn median(floods: &[Flood], g: impl Fn(&Flood) -> f64) -> Option<f64> {
    let s = Samples(floods.iter().map(g).collect());
    (!s.is_empty()).then(|| s.quantile(0.5))
}

/// The SVG's row of ContainerStatus during the floods.
pub(crate) const STATUS_DURING_FLOOD: &str = "ContainerStatus (during a log flood)";

/// ContainerStatus during every round's flood, pooled.
pub(crate) fn status_samples(floods: &[Flood]) -> Samples {
    Samples(floods.iter().flat_map(|f| f.status_ms.0.clone()).collect())
}

/// The flood rounds of one runtime as JSON.
pub(crate) fn json(floods: &[Flood]) -> serde_json::Value {
    let status = status_samples(floods);
    serde_json::json!({
        "container_status_during_flood_ms": {
            "p50": status.quantile(0.5),
            "p99": status.quantile(0.99),
            "samples": status.0.len(),
        },
        "rounds": floods.iter().map(|f| serde_json::json!({
            "seconds": f.seconds,
            "payload_bytes": f.payload_bytes,
            "payload_bytes_per_s": f.bytes_per_s(),
            "lines": f.lines,
            "lines_before_rotation": f.lines_before_rotation,
            "lines_lost": f.lost,
            "lines_duplicated": f.duplicated,
            "per_pod_cpu_s": f.helper_cpu_s,
            "per_pod_cpu_s_per_gib": f.per_gib(f.helper_cpu_s),
            "daemon_cpu_s": f.daemon_cpu_s,
            "daemon_cpu_s_per_gib": f.per_gib(f.daemon_cpu_s),
            "per_pod_max_rss_kib": f.helper_max_rss_kib,
            "reopen_container_log_ms": f.reopen_ms,
        })).collect::<Vec<_>>(),
    })
}

/// The flood section of the Markdown report: each runtime's medians over the rounds, and
/// (with two runtimes) Berth over containerd.
pub(crate) fn markdown(out: &mut String, runs: &[(&Runtime, Figures)]) {
    if runs.iter().all(|(_, f)| f.floods.is_empty()) {
        return;
    }
    let names: Vec<&str> = runs.iter().map(|(rt, _)| rt.name).collect();
    let rounds = runs.iter().map(|(_, f)| f.floods.len()).max().unwrap_or(0);
    header(
        out,
        &format!(
            "log flood, ~100-byte lines (median of {rounds} round{})",
            if rounds == 1 { "" } else { "s" }
        ),
        &names,
    );
    let cells = |g: &dyn Fn(&[Flood]) -> String| -> Vec<String> {
        runs.iter().map(|(_, f)| g(&f.floods)).collect()
    };
    let fmt = |v: Option<f64>, digits: usize| v.map_or("—".into(), |v| format!("{v:.digits$}"));
    row(
        out,
        "payload MB/s reaching the CRI log",
        &cells(&|fl| fmt(median(fl, |f| f.bytes_per_s() / 1e6), 1)),
    );
    row(
        out,
        "per-pod process CPU s per GiB logged",
        &cells(&|fl| fmt(median(fl, |f| f.per_gib(f.helper_cpu_s)), 2)),
    );
    row(
        out,
        "daemon CPU s per GiB logged",
        &cells(&|fl| fmt(median(fl, |f| f.per_gib(f.daemon_cpu_s)), 2)),
    );
    row(
        out,
        "per-pod process max RSS KiB",
        &cells(&|fl| fmt(median(fl, |f| f.helper_max_rss_kib as f64), 0)),
    );
    row(
        out,
        "ContainerStatus during the flood, ms p50 / p99",
        &cells(&|fl| {
            let s = status_samples(fl);
            format!("{:.2} / {:.2}", s.quantile(0.5), s.quantile(0.99))
        }),
    );
    row(
        out,
        "ReopenContainerLog during the flood, ms",
        &cells(&|fl| fmt(median(fl, |f| f.reopen_ms), 2)),
    );
    row(
        out,
        "lines lost / repeated across the rotation (all rounds)",
        &cells(&|fl| {
            let sum = |g: fn(&Flood) -> u64| fl.iter().map(g).sum::<u64>();
            format!(
                "{} / {} of {}",
                sum(|f| f.lost),
                sum(|f| f.duplicated),
                sum(|f| f.lines)
            )
        }),
    );
    for ((brt, b), (crt, c)) in crate::report::pairs(runs) {
        header(
            out,
            &format!("log flood: {} / {}", brt.name, crt.name),
            &["median"],
        );
        let r = |g: &dyn Fn(&Flood) -> f64| {
            vec![times(ratio(median(&b.floods, g), median(&c.floods, g)))]
        };
        row(out, "payload bytes per second", &r(&|f| f.bytes_per_s()));
        row(
            out,
            "per-pod process CPU per GiB",
            &r(&|f| f.per_gib(f.helper_cpu_s)),
        );
        row(
            out,
            "per-pod process + daemon CPU per GiB",
            &r(&|f| f.per_gib(f.helper_cpu_s + f.daemon_cpu_s)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> anyhow::Result<LineCheck> {
        let mut c = LineCheck::default();
        for r in text.split_inclusive('\n') {
            c.record(r.as_bytes())?;
        }
        Ok(c)
    }

    #[test]
    fn a_complete_sequence_counts_lines_and_payload() {
        let c = check(
            "T stdout F block 1\nT stdout F 1 xx\nT stdout P 2 \nT stdout F x\nT stdout F 3\n",
        )
        .unwrap();
        assert_eq!((c.lines, c.lost, c.duplicated), (4, 0, 0));
        // "block 1\n" + "1 xx\n" + "2 x\n" + "3\n"
        assert_eq!(c.payload_bytes, 8 + 5 + 4 + 2);
        // The next block follows the last line of this one.
        let mut text = String::from("T stdout F block 1\n");
        for i in 1..=BLOCK_LINES {
            text.push_str(&format!("T stdout F {i} x\n"));
        }
        text.push_str("T stdout F block 2\nT stdout F 1 x\n");
        let c = check(&text).unwrap();
        assert_eq!((c.lost, c.duplicated), (0, 0));
        assert_eq!(c.lines, BLOCK_LINES + 3);
    }

    #[test]
    fn gaps_and_repeats_are_counted() {
        let c =
            check("T stdout F block 1\nT stdout F 2 x\nT stdout F 3\nT stdout F 7\nT stdout F 3\n")
                .unwrap();
        assert_eq!(c.lost, 1 + 3, "1, then 4, 5, 6");
        assert_eq!(c.duplicated, 1);
        assert_eq!(c.lines, 5);
        // A block cut short: the rest of it is lost.
        let c = check("T stdout F block 1\nT stdout F 9998 x\nT stdout F block 2\n").unwrap();
        assert_eq!(
            c.lost,
            9997 + 2,
            "1 to 9997 of block 1, then 9999 and 10000"
        );
        // A whole block missing.
        let c = check("T stdout F block 2\n").unwrap();
        assert_eq!(c.lost, BLOCK_LINES + 1);
    }

    #[test]
    fn malformed_records_fail() {
        assert!(check("T stdout F x\n").is_err(), "not numbered");
        assert!(check("T stdout F 1 x\n").is_err(), "no block line first");
        assert!(
            check("T stdout F block 1\nT stdout F 10001 x\n").is_err(),
            "past the block"
        );
        assert!(
            check("T stdout F block 0\n").is_err(),
            "blocks count from 1"
        );
        assert!(check("T stderr F block 1\n").is_err(), "wrong stream");
        assert!(check("T stdout Q block 1\n").is_err(), "unknown tag");
        assert!(check("T stdout\n").is_err(), "short record");
        assert!(check("T stdout F block 1").is_err(), "no newline");
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 10 0 0 0 7 5 0 0 20 0 1 0 1 1 1";
        assert_eq!(stat_ticks(stat), 12);
        assert_eq!(stat_ticks(""), 0);
    }
}
