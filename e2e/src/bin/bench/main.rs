//! The side-by-side benchmark: Berth and containerd (Debian's 1.6, or the build
//! `BERTH_BENCH_CONTAINERD` names; with runc) on the same machine, driven over their CRI
//! sockets by the same Rust client, inside the harness's node namespace with its loopback
//! registry. Run by `scripts/bench.sh`; prints
//! a Markdown report (the figures SPECIFICATION.md records), and writes every figure as
//! JSON and the latency distributions as an SVG.
//!
//! Usage (inside the harness):
//! `bench [--smoke] [--iterations N] [--pods N] [--density N,N] [--restart-pods N] [--node N]
//! [--phases NAME,...] [--json PATH] [--svg PATH]`; `--phases` runs only the named phases
//! (`cold,pods,calls,streams,memory,density,logs,node,restart`); `bench merge [--json PATH] [--svg PATH] RUN.json...` merges
//! several runs' JSON into medians with their spread (`runs`; `scripts/bench.sh --runs N`).
//! Three runtimes run at once and are measured alternately, iteration by iteration, so they
//! share the machine's noise: Berth with its built-in network, Berth in CNI mode with the
//! same conflist and plugins as containerd (`cni`), and containerd. Before each turn the
//! previous runtimes' deferred work is waited for (`quiet`). `--node N` adds the full-node
//! phase (`node`: N pods, kubelet's List and stats calls polled for 60 s). Restarts are
//! timed for Berth alone, with no pods and with a busy node (`--restart-pods`, 100 by default). `--smoke` runs Berth alone, every step
//! once (density with 3 pods, the busy node with 5, a full node of 5 polled for 3 s), in
//! both network modes, writes the JSON and SVG, and checks only that every step works (CI
//! runs it).
//!
//! This file parses the settings and runs the phases in order; each phase is a module
//! beside it (`cold`, `pods`, `stop`, `calls`, `streams`, `density`, `logs`, `node`,
//! `restart`), `measure` holds what they measure with, `containerd` and `cni` the daemons
//! compared, and `report` the outputs.

mod calls;
mod cni;
mod cold;
mod containerd;
mod density;
mod logs;
mod measure;
mod node;
mod pods;
mod quiet;
mod report;
mod restart;
mod runs;
mod stop;
mod streams;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use berth_e2e::{Daemon, DaemonDir, images};
use k8s_cri::v1::RemoveImageRequest;

use crate::calls::{STATS_PODS, node_calls};
use crate::cni::BerthCni;
use crate::cold::cold;
use crate::containerd::{Containerd, containerd_runtime};
use crate::density::{density, memory};
use crate::measure::{Figures, Runtime, berth_runtime, smaps_rollup};
use crate::node::node;
use crate::pods::{IMAGE_OPS_IMAGE, image_ops, image_spec, lifecycle, pull};
use crate::quiet::quiet;
use crate::report::{json, markdown, svg};
use crate::restart::restart;
use crate::stop::stop;
use crate::streams::streams;

const USAGE: &str = "usage: bench [--smoke] [--berth-only] [--iterations N] [--pods N] [--density N,N] \
                     [--restart-pods N] [--node N] [--phases NAME,...] [--json PATH] [--svg PATH]\n       \
                     bench merge [--json PATH] [--svg PATH] RUN.json...";

/// What the benchmark was asked to do.
struct Settings {
    smoke: bool,
    /// Only Berth with its built-in network (`--berth-only`): no CNI-mode daemon, no
    /// containerd; for iterating on one of Berth's figures, never for a comparison.
    berth_only: bool,
    iterations: usize,
    pods: usize,
    density: Vec<usize>,
    cold: usize,
    /// Pods running on the busy node of the restart phase.
    restart_pods: usize,
    /// Restarts timed with no pods, and again with the busy node.
    restarts: usize,
    /// Pods of the full-node phase; `None`: no such phase.
    node: Option<usize>,
    /// How long the full node's List and stats calls are polled.
    node_poll: Duration,
    /// The phases to run (`--phases`); `None`: every one.
    phases: Option<Vec<String>>,
    json: PathBuf,
    svg: PathBuf,
}

/// The phases `--phases` can name, in the order they run.
const PHASES: [&str; 9] = [
    "cold", "pods", "calls", "streams", "memory", "density", "logs", "node", "restart",
];

impl Settings {
    fn parse(args: &[String]) -> anyhow::Result<Settings> {
        let mut flags: BTreeMap<&str, &str> = BTreeMap::new();
        let mut smoke = false;
        let mut berth_only = false;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--smoke" => smoke = true,
                "--berth-only" => berth_only = true,
                "--iterations" | "--pods" | "--density" | "--restart-pods" | "--node"
                | "--phases" | "--json" | "--svg" => {
                    let v = it
                        .next()
                        .with_context(|| format!("{a} needs a value\n{USAGE}"))?;
                    flags.insert(a, v);
                }
                _ => bail!("unknown argument {a}\n{USAGE}"),
            }
        }
        let number = |name: &str, default: usize| -> anyhow::Result<usize> {
            flags.get(name).map_or(Ok(default), |v| {
                v.parse()
                    .with_context(|| format!("{name}: not a number: {v}"))
            })
        };
        let density = match flags.get("--density") {
            Some(v) => v
                .split(',')
                .map(|n| n.trim().parse())
                .collect::<Result<Vec<usize>, _>>()
                .with_context(|| format!("--density: not a list of numbers: {v}"))?,
            None => vec![20, 100],
        };
        let iterations = if smoke {
            1
        } else {
            number("--iterations", 20)?
        };
        let node = match flags.get("--node") {
            _ if smoke => Some(5),
            Some(_) => match number("--node", 0)? {
                0 => bail!("--node: a full node needs at least one pod"),
                n => Some(n),
            },
            None => None,
        };
        let phases = match flags.get("--phases") {
            _ if smoke => None,
            None => None,
            Some(v) => {
                let names: Vec<String> = v.split(',').map(|n| n.trim().to_owned()).collect();
                if let Some(bad) = names.iter().find(|n| !PHASES.contains(&n.as_str())) {
                    bail!("--phases: no phase {bad:?} (phases: {})", PHASES.join(","));
                }
                Some(names)
            }
        };
        Ok(Settings {
            smoke,
            berth_only,
            iterations,
            pods: if smoke { 2 } else { number("--pods", 10)? },
            density: if smoke { vec![3] } else { density },
            cold: if smoke { 1 } else { iterations.min(10) },
            restart_pods: if smoke {
                5
            } else {
                number("--restart-pods", 100)?
            },
            restarts: if smoke { 1 } else { iterations.min(10) },
            node,
            node_poll: Duration::from_secs(if smoke { 3 } else { 60 }),
            phases,
            json: PathBuf::from(flags.get("--json").unwrap_or(&"target/bench/results.json")),
            svg: PathBuf::from(flags.get("--svg").unwrap_or(&"target/bench/latency.svg")),
        })
    }

    /// Whether the phase `name` (one of [`PHASES`]) runs.
    fn runs(&self, name: &str) -> bool {
        self.phases
            .as_ref()
            .is_none_or(|p| p.iter().any(|n| n == name))
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("merge") {
        return runs::merge_main(&args[1..]);
    }
    let settings = Settings::parse(&args)?;

    let mut berth_figures = Figures::default();
    let mut containerd_figures = Figures::default();
    let cold_roots = if settings.runs("cold") {
        Some(
            cold(
                &settings,
                &mut berth_figures,
                (!settings.smoke && !settings.berth_only).then_some(&mut containerd_figures),
            )
            .await?,
        )
    } else {
        None
    };

    let berth = Daemon::builder()
        .config("[log]\nlevel = \"warn\"")
        .start()
        .await
        .context("start berth")?;
    let mut runs: Vec<(Runtime, Figures)> = vec![(berth_runtime(&berth)?, berth_figures)];
    let mut berth_cni = None;
    if !settings.berth_only {
        let cni = BerthCni::start().await?;
        runs.push((cni.runtime()?, Figures::default()));
        berth_cni = Some(cni);
    }
    let containerd_dir;
    let mut containerd = None;
    if !settings.smoke && !settings.berth_only {
        containerd_dir = DaemonDir::new()?;
        let (ctd, client, _) = Containerd::start(&containerd_dir).await?;
        runs.push((
            containerd_runtime(&ctd, client, &containerd_dir),
            containerd_figures,
        ));
        containerd = Some(ctd);
    }
    for (rt, f) in &mut runs {
        f.idle_rss_kib = smaps_rollup(rt.pid).0;
        std::fs::create_dir_all(&rt.logs)?;
        pull(rt, images::BUSYBOX).await?;
        if rt.name == "containerd" {
            pull(rt, images::PAUSE).await?;
        }
        // A leftover from an earlier run would make the first "absent" pull a warm one.
        rt.client
            .images()
            .remove_image(RemoveImageRequest {
                image: image_spec(IMAGE_OPS_IMAGE),
            })
            .await
            .ok();
    }
    // Alternated: Berth, Berth (CNI), containerd, Berth, ... so all see the same noise;
    // each turn starts once the others' deferred work is done.
    for i in (0..settings.iterations).filter(|_| settings.runs("pods")) {
        for k in 0..runs.len() {
            quiet(runs.iter().map(|(rt, _)| rt)).await;
            let (rt, f) = &mut runs[k];
            lifecycle(rt, i, f).await?;
            stop(rt, i, f).await?;
            image_ops(rt, f).await?;
        }
    }
    // The stats and node calls with 10 and 100 running containers (smoke: 10), and the
    // streams, alternated round by round.
    let sizes = if settings.smoke {
        &STATS_PODS[..1]
    } else {
        &STATS_PODS[..]
    };
    if settings.runs("calls") {
        node_calls(&mut runs, sizes, settings.iterations).await?;
    }
    if settings.runs("streams") {
        streams(&mut runs, settings.iterations).await?;
    }
    for k in (0..runs.len()).filter(|_| settings.runs("memory")) {
        quiet(runs.iter().map(|(rt, _)| rt)).await;
        let (rt, f) = &mut runs[k];
        memory(rt, settings.pods, f).await?;
    }
    for &n in settings.density.iter().filter(|_| settings.runs("density")) {
        for k in 0..runs.len() {
            quiet(runs.iter().map(|(rt, _)| rt)).await;
            let (rt, f) = &mut runs[k];
            density(rt, n, f).await?;
        }
    }
    if settings.runs("logs") {
        logs::floods(&settings, &mut runs).await?;
    }
    if let Some(n) = settings.node.filter(|_| settings.runs("node")) {
        for k in 0..runs.len() {
            quiet(runs.iter().map(|(rt, _)| rt)).await;
            let (rt, f) = &mut runs[k];
            node(rt, n, settings.node_poll, f).await?;
        }
    }
    quiet(runs.iter().map(|(rt, _)| rt)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (rt, f) in &mut runs {
        f.idle_rss_after_kib = smaps_rollup(rt.pid).0;
    }
    if settings.runs("restart") {
        restart(&settings, &mut runs[0].1).await?;
    }
    drop(containerd);
    drop(berth_cni);
    drop(berth);
    drop(cold_roots);

    let runs: Vec<(&Runtime, Figures)> = runs
        .iter_mut()
        .map(|(rt, f)| (&*rt, std::mem::take(f)))
        .collect();
    println!("{}", markdown(&settings, &runs));
    let json = serde_json::to_string_pretty(&json(&settings, &runs))?;
    write(&settings.json, &json)?;
    write(&settings.svg, &svg(&runs))?;
    eprintln!(
        "bench: wrote {} and {}",
        settings.json.display(),
        settings.svg.display()
    );
    if settings.smoke {
        eprintln!("bench: smoke run passed (figures not checked)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Settings> {
        Settings::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn defaults_are_the_full_run() {
        let s = parse(&[]).unwrap();
        assert!(!s.smoke);
        assert_eq!((s.iterations, s.pods, s.cold), (20, 10, 10));
        assert_eq!(s.density, vec![20, 100]);
        assert_eq!((s.restarts, s.restart_pods), (10, 100));
        assert_eq!(s.node, None);
        assert_eq!(s.json, Path::new("target/bench/results.json"));
        assert_eq!(s.svg, Path::new("target/bench/latency.svg"));
    }

    #[test]
    fn flags_set_counts_density_and_outputs() {
        let s = parse(&[
            "--iterations",
            "3",
            "--pods",
            "4",
            "--density",
            "5, 50",
            "--node",
            "500",
            "--json",
            "/tmp/r.json",
            "--svg",
            "/tmp/l.svg",
        ])
        .unwrap();
        assert_eq!((s.iterations, s.pods, s.cold), (3, 4, 3));
        assert_eq!(s.density, vec![5, 50]);
        assert_eq!((s.node, s.node_poll), (Some(500), Duration::from_secs(60)));
        assert_eq!(s.json, Path::new("/tmp/r.json"));
        assert_eq!(s.svg, Path::new("/tmp/l.svg"));
    }

    #[test]
    fn smoke_runs_everything_once_with_small_density() {
        let s = parse(&["--smoke", "--iterations", "50", "--density", "100"]).unwrap();
        assert_eq!((s.iterations, s.pods, s.cold), (1, 2, 1));
        assert_eq!(s.density, vec![3]);
        assert_eq!((s.restarts, s.restart_pods), (1, 5));
        assert_eq!((s.node, s.node_poll), (Some(5), Duration::from_secs(3)));
    }

    #[test]
    fn phases_choose_what_runs() {
        let s = parse(&["--phases", "pods, restart"]).unwrap();
        assert!(s.runs("pods") && s.runs("restart"));
        assert!(!s.runs("cold") && !s.runs("node"));
        assert!(PHASES.iter().all(|p| parse(&[]).unwrap().runs(p)));
        assert!(
            PHASES
                .iter()
                .all(|p| parse(&["--smoke", "--phases", "pods"]).unwrap().runs(p))
        );
        assert!(parse(&["--phases", "pods,warp"]).is_err());
    }

    #[test]
    fn berth_only_is_off_unless_asked() {
        assert!(!parse(&[]).unwrap().berth_only);
        let s = parse(&["--berth-only", "--phases", "node", "--node", "500"]).unwrap();
        assert!(s.berth_only && s.runs("node") && !s.runs("pods"));
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["--iterations"]).is_err());
        assert!(parse(&["--iterations", "many"]).is_err());
        assert!(parse(&["--density", "20,x"]).is_err());
        assert!(parse(&["--pod", "3"]).is_err());
        assert!(parse(&["--node", "0"]).is_err());
    }
}
