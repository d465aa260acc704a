//! The benchmark's outputs: the Markdown report, every figure as JSON with the machine it
//! ran on, and the latency distributions as an SVG.

use std::path::Path;
use std::process::{Command, Stdio};

use berth_e2e::bench::{Series, Summary, latency_svg, ratio};

use crate::Settings;
use crate::measure::{Density, Figures, Runtime, kib_field, op_names};
use crate::node::{NODE_PEAK_RSS_TARGET_KIB, NODE_POLLED, Node};
use crate::streams::{BULK_BYTES, FORWARD_BULK};

/// Output of a command, trimmed; `None` if it fails.
pub(crate) fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The machine and software the figures come from.
pub(crate) fn machine(smoke: bool) -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string());
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string());
    let cgroup = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        "hybrid"
    } else {
        "v1"
    };
    // The benchmark runs as root in a checkout another user may own.
    let git = |args: &[&str]| {
        let mut all = vec!["-c", "safe.directory=*"];
        all.extend_from_slice(args);
        command_output("git", &all)
    };
    serde_json::json!({
        "date": command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "os": os,
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "memory_kib": kib_field(&read("/proc/meminfo"), "MemTotal:"),
        "cgroup": cgroup,
        "commit": git(&["rev-parse", "--short", "HEAD"]),
        "dirty": git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
        "containerd": if smoke { None } else {
            command_output(&crate::containerd::binary().to_string_lossy(), &["--version"])
        },
        "runc": if smoke { None } else {
            command_output("runc", &["--version"]).and_then(|v| v.lines().next().map(str::to_string))
        },
    })
}

/// Every figure, per runtime, with the machine and the settings.
pub(crate) fn json(settings: &Settings, runs: &[(&Runtime, Figures)]) -> serde_json::Value {
    let names = op_names(runs.iter().map(|(_, f)| f));
    let ops = |f: &Figures| -> Vec<serde_json::Value> {
        names
            .iter()
            .filter_map(|op| {
                let s = f.calls.get(op)?;
                Some(serde_json::json!({"op": op, "unit": "ms", "summary": s.summary(), "samples": s}))
            })
            .collect()
    };
    let mut runtimes = serde_json::Map::new();
    for (rt, f) in runs {
        runtimes.insert(
            rt.name.into(),
            serde_json::json!({
                "ops": ops(f),
                "density": f.density.iter().map(|d| serde_json::json!({
                    "pods": d.pods,
                    "start_all_ms": d.start_ms,
                    "teardown_all_ms": d.teardown_ms,
                    "daemon_max_rss_kib": d.daemon_max_rss_kib,
                })).collect::<Vec<_>>(),
                "memory": {
                    "pods": settings.pods,
                    "per_pod_rss_kib": f.per_pod_rss_kib,
                    "per_pod_pss_kib": f.per_pod_pss_kib,
                    "daemon_idle_rss_kib": f.idle_rss_kib,
                    "daemon_idle_rss_after_kib": f.idle_rss_after_kib,
                },
                "log_flood": crate::logs::json(&f.floods),
                "node": f.node.as_ref().map(|n| node_json(n, f)),
            }),
        );
    }
    // Each Berth mode over containerd.
    let mut ratios = serde_json::Map::new();
    for (b, c) in pairs(runs) {
        let list: Vec<serde_json::Value> = names
            .iter()
            .filter_map(|op| {
                let (b, c) = (b.1.summary(op)?, c.1.summary(op)?);
                Some(serde_json::json!({
                    "op": op,
                    "min": ratio(Some(b.min), Some(c.min)),
                    "median": ratio(Some(b.median), Some(c.median)),
                    "p90": ratio(Some(b.p90), Some(c.p90)),
                }))
            })
            .collect();
        ratios.insert(b.0.name.into(), list.into());
    }
    serde_json::json!({
        "machine": machine(settings.smoke),
        "settings": {
            "smoke": settings.smoke,
            "iterations": settings.iterations,
            "cold_iterations": settings.cold,
            "memory_pods": settings.pods,
            "density": settings.density,
            "restarts": settings.restarts,
            "restart_pods": settings.restart_pods,
            "node": settings.node,
            "node_poll_s": settings.node_poll.as_secs(),
            "alternated": true,
        },
        "runtimes": runtimes,
        "ratios_over_containerd": ratios,
    })
}

/// One runtime's run: the runtime and what it measured.
pub(crate) type Run<'a> = (&'a Runtime, Figures);

/// Each run that is not containerd's, paired with containerd's (when it ran).
pub(crate) fn pairs<'a>(runs: &'a [Run<'a>]) -> Vec<(&'a Run<'a>, &'a Run<'a>)> {
    let Some(c) = runs.iter().find(|(rt, _)| rt.name == "containerd") else {
        return Vec::new();
    };
    runs.iter()
        .filter(|(rt, _)| rt.name != "containerd")
        .map(|b| (b, c))
        .collect()
}

/// The p50 and p99 of a polled call, in ms.
fn p50_p99(f: &Figures, op: &str) -> Option<(f64, f64)> {
    let s = f.calls.get(op).filter(|s| !s.is_empty())?;
    Some((s.quantile(0.5), s.quantile(0.99)))
}

fn node_json(n: &Node, f: &Figures) -> serde_json::Value {
    let polled: Vec<serde_json::Value> = NODE_POLLED
        .iter()
        .filter_map(|(op, target)| {
            let (p50, p99) = p50_p99(f, op)?;
            Some(serde_json::json!({
                "op": op, "p50_ms": p50, "p99_ms": p99, "p99_target_ms": target,
            }))
        })
        .collect();
    serde_json::json!({
        "pods": n.pods,
        "start_all_ms": n.start_ms,
        "teardown_all_ms": n.teardown_ms,
        "daemon_peak_rss_kib": n.daemon_peak_rss_kib,
        "per_pod": n.per_pod.iter().map(|p| serde_json::json!({
            "pods": p.pods, "rss_kib": p.rss_kib, "pss_kib": p.pss_kib,
        })).collect::<Vec<_>>(),
        "polled": polled,
    })
}

/// The full node's section: start and teardown, memory per pod by count, the polled calls'
/// p50 / p99, and the targets at 500 pods (for Berth's modes).
fn node_markdown(out: &mut String, runs: &[(&Runtime, Figures)]) {
    let Some(pods) = runs
        .iter()
        .find_map(|(_, f)| f.node.as_ref().map(|n| n.pods))
    else {
        return;
    };
    let names: Vec<&str> = runs.iter().map(|(rt, _)| rt.name).collect();
    header(out, &format!("full node, {pods} pods"), &names);
    let cell = |g: &dyn Fn(&Node, &Figures) -> String| -> Vec<String> {
        runs.iter()
            .map(|(_, f)| f.node.as_ref().map_or("—".into(), |n| g(n, f)))
            .collect()
    };
    row(
        out,
        "all running, ms (50 at a time)",
        &cell(&|n, _| format!("{:.0}", n.start_ms)),
    );
    row(
        out,
        "all removed, ms (50 at a time)",
        &cell(&|n, _| format!("{:.0}", n.teardown_ms)),
    );
    row(
        out,
        "daemon peak RSS KiB",
        &cell(&|n, _| n.daemon_peak_rss_kib.to_string()),
    );
    let counts: Vec<usize> = runs
        .iter()
        .find_map(|(_, f)| f.node.as_ref())
        .map(|n| n.per_pod.iter().map(|p| p.pods).collect())
        .unwrap_or_default();
    for k in counts {
        let at = |n: &Node| {
            n.per_pod
                .iter()
                .find(|p| p.pods == k)
                .map(|p| (p.rss_kib, p.pss_kib))
        };
        row(
            out,
            &format!("per pod RSS / PSS KiB at {k} pods"),
            &cell(&|n, _| at(n).map_or("—".into(), |(r, p)| format!("{r:.0} / {p:.0}"))),
        );
    }
    for (op, _) in NODE_POLLED {
        row(
            out,
            &format!("{op}: p50 / p99 ms"),
            &cell(&|_, f| p50_p99(f, op).map_or("—".into(), |(a, b)| format!("{a:.2} / {b:.2}"))),
        );
    }
    let berths: Vec<&(&Runtime, Figures)> = runs
        .iter()
        .filter(|(rt, _)| rt.name != "containerd")
        .collect();
    let modes: Vec<&str> = berths.iter().map(|(rt, _)| rt.name).collect();
    header(
        out,
        &format!("targets at {pods} pods (issue 24: at 500)"),
        &modes,
    );
    let met = |ok: bool| if ok { "met" } else { "missed" }.to_string();
    for (op, target) in NODE_POLLED {
        let cells: Vec<String> = berths
            .iter()
            .map(|(_, f)| {
                p50_p99(f, op).map_or("—".into(), |(_, p99)| {
                    format!("{p99:.2} ms: {}", met(p99 <= target))
                })
            })
            .collect();
        row(out, &format!("{op} p99 <= {target} ms"), &cells);
    }
    let cells: Vec<String> = berths
        .iter()
        .map(|(_, f)| {
            f.node.as_ref().map_or("—".into(), |n| {
                let kib = n.daemon_peak_rss_kib;
                format!("{kib} KiB: {}", met(kib <= NODE_PEAK_RSS_TARGET_KIB))
            })
        })
        .collect();
    row(out, "daemon peak RSS <= 64 MiB", &cells);
}

pub(crate) fn row(out: &mut String, name: &str, cells: &[String]) {
    out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
}

pub(crate) fn header(out: &mut String, first: &str, columns: &[&str]) {
    out.push_str(&format!(
        "\n| {first} | {} |\n|---|{}\n",
        columns.join(" | "),
        "---|".repeat(columns.len())
    ));
}

pub(crate) fn three(s: Option<Summary>) -> String {
    s.map_or("—".into(), |s| {
        format!("{:.2} / {:.2} / {:.2}", s.min, s.median, s.p90)
    })
}

pub(crate) fn times(r: Option<f64>) -> String {
    r.map_or("—".into(), |r| format!("{r:.2}"))
}

/// The Markdown report: every op as min / median / p90, density, memory, and (with two
/// runtimes) the Berth / containerd ratios.
pub(crate) fn markdown(settings: &Settings, runs: &[(&Runtime, Figures)]) -> String {
    let names: Vec<&str> = runs.iter().map(|(rt, _)| rt.name).collect();
    let mut out = format!(
        "## {} iterations (runtimes alternated), {} cold starts, {} pods for memory, density {:?}, \
         {} restarts (busy node: {} pods running)\n",
        settings.iterations,
        settings.cold,
        settings.pods,
        settings.density,
        settings.restarts,
        settings.restart_pods
    );
    let ops = op_names(runs.iter().map(|(_, f)| f));
    header(&mut out, "ms: min / median / p90", &names);
    for &op in &ops {
        let cells: Vec<String> = runs.iter().map(|(_, f)| three(f.summary(op))).collect();
        row(&mut out, op, &cells);
    }
    header(&mut out, "density", &names);
    for (i, n) in settings.density.iter().enumerate() {
        let cell = |g: &dyn Fn(&Density) -> String| -> Vec<String> {
            runs.iter()
                .map(|(_, f)| f.density.get(i).map_or("—".into(), g))
                .collect()
        };
        row(
            &mut out,
            &format!("{n} pods: all running, ms"),
            &cell(&|d| format!("{:.0}", d.start_ms)),
        );
        row(
            &mut out,
            &format!("{n} pods: all removed, ms"),
            &cell(&|d| format!("{:.0}", d.teardown_ms)),
        );
        row(
            &mut out,
            &format!("{n} pods: daemon max RSS KiB"),
            &cell(&|d| d.daemon_max_rss_kib.to_string()),
        );
    }
    header(&mut out, "streams", &names);
    row(
        &mut out,
        "PortForward throughput MB/s (median download)",
        &runs.iter().map(|(_, f)| mb_per_s(f)).collect::<Vec<_>>(),
    );
    header(&mut out, "memory", &names);
    let fig = |g: &dyn Fn(&Figures) -> String| -> Vec<String> {
        runs.iter().map(|(_, f)| g(f)).collect()
    };
    row(
        &mut out,
        "per pod RSS KiB",
        &fig(&|f| format!("{:.0}", f.per_pod_rss_kib)),
    );
    row(
        &mut out,
        "per pod PSS KiB",
        &fig(&|f| format!("{:.0}", f.per_pod_pss_kib)),
    );
    row(
        &mut out,
        "daemon RSS KiB, idle after start",
        &fig(&|f| f.idle_rss_kib.to_string()),
    );
    row(
        &mut out,
        "daemon RSS KiB, idle after the pods",
        &fig(&|f| f.idle_rss_after_kib.to_string()),
    );
    crate::logs::markdown(&mut out, runs);
    node_markdown(&mut out, runs);
    for ((brt, b), (crt, c)) in pairs(runs) {
        header(
            &mut out,
            &format!("{} / {}", brt.name, crt.name),
            &["min", "median", "p90"],
        );
        for &op in &ops {
            let (bs, cs) = (b.summary(op), c.summary(op));
            let r = |g: fn(Summary) -> f64| times(ratio(bs.map(g), cs.map(g)));
            row(&mut out, op, &[r(|s| s.min), r(|s| s.median), r(|s| s.p90)]);
        }
        for (db, dc) in b.density.iter().zip(&c.density) {
            // One figure each: its ratio goes in the median column.
            let r = |x: f64, y: f64| vec!["".into(), times(ratio(Some(x), Some(y))), "".into()];
            row(
                &mut out,
                &format!("{} pods: all running", db.pods),
                &r(db.start_ms, dc.start_ms),
            );
            row(
                &mut out,
                &format!("{} pods: all removed", db.pods),
                &r(db.teardown_ms, dc.teardown_ms),
            );
            row(
                &mut out,
                &format!("{} pods: daemon max RSS", db.pods),
                &r(db.daemon_max_rss_kib as f64, dc.daemon_max_rss_kib as f64),
            );
        }
        let r = |x: f64, y: f64| vec!["".into(), times(ratio(Some(x), Some(y))), "".into()];
        row(
            &mut out,
            "per pod RSS",
            &r(b.per_pod_rss_kib, c.per_pod_rss_kib),
        );
        row(
            &mut out,
            "per pod PSS",
            &r(b.per_pod_pss_kib, c.per_pod_pss_kib),
        );
        row(
            &mut out,
            "daemon RSS, idle after start",
            &r(b.idle_rss_kib as f64, c.idle_rss_kib as f64),
        );
    }
    out
}

/// The port-forward throughput, in MB/s (10^6 bytes), of the median 64 MiB download.
fn mb_per_s(f: &Figures) -> String {
    f.summary(FORWARD_BULK).map_or("—".into(), |s| {
        format!("{:.0}", BULK_BYTES as f64 / 1e6 / (s.median / 1000.0))
    })
}

pub(crate) fn svg(runs: &[(&Runtime, Figures)]) -> String {
    let flood_status: Vec<_> = runs
        .iter()
        .map(|(rt, f)| (rt.name, crate::logs::status_samples(&f.floods)))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    let mut rows: Vec<(&str, Vec<Series<'_>>)> = op_names(runs.iter().map(|(_, f)| f))
        .into_iter()
        .map(|op| {
            let series = runs
                .iter()
                .filter_map(|(rt, f)| {
                    Some(Series {
                        runtime: rt.name,
                        samples: f.calls.get(op)?,
                    })
                })
                .collect();
            (op, series)
        })
        .collect();
    if !flood_status.is_empty() {
        rows.push((
            crate::logs::STATUS_DURING_FLOOD,
            flood_status
                .iter()
                .map(|(runtime, samples)| Series { runtime, samples })
                .collect(),
        ));
    }
    let names: Vec<&str> = runs.iter().map(|(rt, _)| rt.name).collect();
    let title = format!("CRI latency, ms (log scale): {}", names.join(" and "));
    latency_svg(&title, &rows)
}
