//! Several runs merged (`bench merge`, which `scripts/bench.sh --runs N` calls): every
//! figure of the runs' JSON as its median over the runs with the spread (min and max),
//! found by walking the JSON, so a figure any phase adds is covered as it is; every run is
//! kept whole beside the medians, and the latency plot pools every run's samples.

use std::path::PathBuf;

use anyhow::{Context, bail};
use berth_e2e::bench::{Samples, Series, latency_svg};
use serde_json::{Map, Value, json};

use crate::report::{header, row};
use crate::write;

const USAGE: &str = "usage: bench merge [--json PATH] [--svg PATH] RUN.json...";

/// The median of `v` (the mean of the middle two for an even count), with min and max.
fn spread(v: &[f64]) -> Value {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    json!({"median": median, "min": v[0], "max": v[v.len() - 1], "runs": v.len()})
}

/// What identifies an element of a list of objects across runs: its operation, else its
/// pod count, else its place.
fn identity(v: &Value, place: usize) -> String {
    match (v.get("op"), v.get("pods")) {
        (Some(Value::String(op)), _) => op.clone(),
        (_, Some(pods)) => format!("pods={pods}"),
        _ => format!("#{place}"),
    }
}

/// One value from the same place in every run: numbers become their [`spread`]; objects
/// and lists of objects are merged member by member; strings and booleans stay when every
/// run agrees. Lists of numbers (raw samples) are left to the runs: `None`.
pub(crate) fn aggregate(values: &[&Value]) -> Option<Value> {
    let first = values.first()?;
    match first {
        Value::Number(_) => {
            let v: Vec<f64> = values.iter().filter_map(|v| v.as_f64()).collect();
            (!v.is_empty()).then(|| spread(&v))
        }
        Value::Object(_) => {
            let mut out = Map::new();
            let mut keys: Vec<&String> = Vec::new();
            for v in values {
                for k in v.as_object().into_iter().flat_map(Map::keys) {
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
            }
            for k in keys {
                let children: Vec<&Value> = values.iter().filter_map(|v| v.get(k)).collect();
                if let Some(a) = aggregate(&children) {
                    out.insert(k.clone(), a);
                }
            }
            Some(Value::Object(out))
        }
        Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
            let mut groups: Vec<(String, Vec<&Value>)> = Vec::new();
            for v in values {
                for (place, item) in v.as_array().into_iter().flatten().enumerate() {
                    let id = identity(item, place);
                    match groups.iter_mut().find(|(g, _)| *g == id) {
                        Some((_, members)) => members.push(item),
                        None => groups.push((id, vec![item])),
                    }
                }
            }
            // The identity stays as it is (a pod count is a label here, not a figure).
            let merged = groups.iter().filter_map(|(_, members)| {
                let mut m = aggregate(members)?;
                if let (Some(m), Some(pods)) = (m.as_object_mut(), members[0].get("pods")) {
                    m.insert("pods".into(), pods.clone());
                }
                Some(m)
            });
            Some(Value::Array(merged.collect()))
        }
        Value::Array(_) | Value::Null => None,
        Value::String(_) | Value::Bool(_) => {
            values.iter().all(|v| v == first).then(|| (*first).clone())
        }
    }
}

/// `(label, cell)` for every figure under `v`, in order: the path of names that leads to a
/// [`spread`], and that spread as `median (min–max)`.
fn flatten(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    let label = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path} · {k}")
        }
    };
    match v {
        Value::Object(m) if m.contains_key("median") && m.contains_key("runs") => {
            let n = |k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
            let cell = if n("min") == n("max") {
                format!("{:.2}", n("median"))
            } else {
                format!("{:.2} ({:.2}–{:.2})", n("median"), n("min"), n("max"))
            };
            out.push((path.to_string(), cell));
        }
        Value::Object(m) => {
            for (k, child) in m {
                flatten(child, &label(k), out);
            }
        }
        Value::Array(items) => {
            for (place, item) in items.iter().enumerate() {
                let id = identity(item, place);
                flatten(item, &label(&id), out);
            }
        }
        _ => {}
    }
}

/// The merged report: per runtime, every figure's median (min–max) over the runs, one row
/// per figure, a column per runtime; then the other merged figures (the ratios).
pub(crate) fn markdown(merged: &Value, runs: usize) -> String {
    let mut out = format!("## median (min–max) over {runs} runs\n");
    let empty = Map::new();
    let runtimes = merged
        .get("runtimes")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let names: Vec<&str> = runtimes.keys().map(String::as_str).collect();
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    for (k, (_, figures)) in runtimes.iter().enumerate() {
        let mut cells = Vec::new();
        flatten(figures, "", &mut cells);
        for (label, cell) in cells {
            let at = match rows.iter().position(|(l, _)| *l == label) {
                Some(at) => at,
                None => {
                    rows.push((label, vec!["—".to_string(); names.len()]));
                    rows.len() - 1
                }
            };
            rows[at].1[k] = cell;
        }
    }
    header(&mut out, "figure", &names);
    for (label, cells) in &rows {
        row(&mut out, label, cells);
    }
    for (key, v) in merged.as_object().into_iter().flatten() {
        if matches!(key.as_str(), "runtimes" | "machine" | "settings") {
            continue;
        }
        let mut cells = Vec::new();
        flatten(v, "", &mut cells);
        if cells.is_empty() {
            continue;
        }
        header(&mut out, key, &["median (min–max)"]);
        for (label, cell) in cells {
            row(&mut out, &label, &[cell]);
        }
    }
    out
}

/// The latency plot of every run's samples pooled, per operation and runtime, in the
/// order the runs list them.
pub(crate) fn svg(runs: &[Value]) -> String {
    let mut ops: Vec<(String, Vec<(String, Samples)>)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for run in runs {
        for (name, figures) in run
            .get("runtimes")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if !names.contains(name) {
                names.push(name.clone());
            }
            for op in figures
                .get("ops")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(op_name) = op.get("op").and_then(Value::as_str) else {
                    continue;
                };
                let samples = op
                    .get("samples")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten();
                let at = match ops.iter().position(|(o, _)| o == op_name) {
                    Some(at) => at,
                    None => {
                        ops.push((op_name.to_string(), Vec::new()));
                        ops.len() - 1
                    }
                };
                let series = &mut ops[at].1;
                let s = match series.iter().position(|(n, _)| n == name) {
                    Some(s) => s,
                    None => {
                        series.push((name.clone(), Samples::default()));
                        series.len() - 1
                    }
                };
                series[s].1.0.extend(samples.filter_map(Value::as_f64));
            }
        }
    }
    let rows: Vec<(&str, Vec<Series<'_>>)> = ops
        .iter()
        .map(|(op, series)| {
            let mut series: Vec<Series<'_>> = series
                .iter()
                .map(|(runtime, samples)| Series { runtime, samples })
                .collect();
            series.sort_by_key(|s| names.iter().position(|n| n == s.runtime));
            (op.as_str(), series)
        })
        .collect();
    let title = format!(
        "CRI latency, ms (log scale), {} runs pooled: {}",
        runs.len(),
        names.join(", ")
    );
    latency_svg(&title, &rows)
}

/// `bench merge`: reads the runs' JSON files, writes the merged JSON (the medians, and
/// every run whole) and the pooled SVG, and prints the merged Markdown report.
pub(crate) fn merge_main(args: &[String]) -> anyhow::Result<()> {
    let (mut json_out, mut svg_out) = (
        PathBuf::from("target/bench/results.json"),
        PathBuf::from("target/bench/latency.svg"),
    );
    let mut inputs = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" | "--svg" => {
                let v = it
                    .next()
                    .with_context(|| format!("{a} needs a value\n{USAGE}"))?;
                *if a == "--json" {
                    &mut json_out
                } else {
                    &mut svg_out
                } = PathBuf::from(v);
            }
            _ if a.starts_with("--") => bail!("unknown argument {a}\n{USAGE}"),
            _ => inputs.push(PathBuf::from(a)),
        }
    }
    if inputs.is_empty() {
        bail!("no runs to merge\n{USAGE}");
    }
    let runs: Vec<Value> = inputs
        .iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parse {}", p.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    let refs: Vec<&Value> = runs.iter().collect();
    let mut merged = aggregate(&refs).unwrap_or(Value::Null);
    if let Some(m) = merged.as_object_mut() {
        // The machine and settings of each run are in "runs"; the date and commit differ.
        m.remove("machine");
    }
    println!("{}", markdown(&merged, runs.len()));
    let out = json!({"runs_merged": runs.len(), "median": merged, "runs": runs});
    write(&json_out, &serde_json::to_string_pretty(&out)?)?;
    write(&svg_out, &svg(&runs))?;
    eprintln!(
        "bench: merged {} runs into {} and {}",
        runs.len(),
        json_out.display(),
        svg_out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pull: f64, samples: &[f64], rss: u64) -> Value {
        json!({
            "machine": {"commit": "abc"},
            "runtimes": {
                "berth": {
                    "ops": [{"op": "PullImage", "unit": "ms",
                             "summary": {"min": pull, "median": pull * 2.0, "p90": pull * 3.0},
                             "samples": samples}],
                    "density": [{"pods": 20, "start_all_ms": pull * 10.0}],
                    "memory": {"daemon_idle_rss_kib": rss},
                    "new_phase": {"figure": rss as f64 / 2.0}
                },
                "containerd": {"ops": [{"op": "PullImage", "unit": "ms",
                                        "summary": {"min": 9.0, "median": 9.0, "p90": 9.0},
                                        "samples": [9.0]}]}
            }
        })
    }

    #[test]
    fn every_figure_becomes_its_median_with_the_spread() {
        let runs = [
            run(1.0, &[1.0], 100),
            run(3.0, &[3.0], 90),
            run(2.0, &[2.0], 300),
        ];
        let refs: Vec<&Value> = runs.iter().collect();
        let m = aggregate(&refs).unwrap();
        let berth = &m["runtimes"]["berth"];
        let pull = &berth["ops"][0];
        assert_eq!(pull["op"], "PullImage");
        assert_eq!(
            pull["summary"]["median"],
            json!({"median": 4.0, "min": 2.0, "max": 6.0, "runs": 3})
        );
        // Raw samples stay in the runs, not in the medians.
        assert!(pull.get("samples").is_none());
        assert_eq!(berth["density"][0]["pods"], 20);
        assert_eq!(berth["density"][0]["start_all_ms"]["median"], 20.0);
        assert_eq!(berth["memory"]["daemon_idle_rss_kib"]["median"], 100.0);
        // A figure no code here knows about is merged as well.
        assert_eq!(
            berth["new_phase"]["figure"],
            json!({"median": 50.0, "min": 45.0, "max": 150.0, "runs": 3})
        );
        assert_eq!(m["machine"]["commit"], "abc");
    }

    #[test]
    fn list_items_are_matched_by_their_operation_not_their_place() {
        let a = json!([{"op": "A", "v": 1.0}, {"op": "B", "v": 10.0}]);
        let b = json!([{"op": "B", "v": 30.0}, {"op": "A", "v": 3.0}]);
        let m = aggregate(&[&a, &b]).unwrap();
        assert_eq!(m[0]["op"], "A");
        assert_eq!(m[0]["v"]["median"], 2.0);
        assert_eq!(m[1]["v"]["median"], 20.0);
    }

    #[test]
    fn strings_that_differ_between_runs_are_dropped() {
        let (a, b) = (
            json!({"date": "x", "os": "d"}),
            json!({"date": "y", "os": "d"}),
        );
        assert_eq!(aggregate(&[&a, &b]).unwrap(), json!({"os": "d"}));
    }

    #[test]
    fn the_report_has_a_row_per_figure_and_a_column_per_runtime() {
        let runs = [
            run(1.0, &[1.0], 100),
            run(3.0, &[3.0], 90),
            run(2.0, &[2.0], 300),
        ];
        let refs: Vec<&Value> = runs.iter().collect();
        let md = markdown(&aggregate(&refs).unwrap(), 3);
        assert!(md.contains("| figure | berth | containerd |"), "{md}");
        assert!(
            md.contains("| ops · PullImage · summary · median | 4.00 (2.00–6.00) | 9.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| memory · daemon_idle_rss_kib | 100.00 (90.00–300.00) | — |"),
            "{md}"
        );
        assert!(
            md.contains("| density · pods=20 · start_all_ms | 20.00 (10.00–30.00) | — |"),
            "{md}"
        );
    }

    #[test]
    fn the_plot_pools_every_runs_samples() {
        let runs = [run(1.0, &[1.0, 1.5], 100), run(3.0, &[3.0], 90)];
        let svg = svg(&runs);
        // Three berth samples and two of containerd's.
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("2 runs pooled"));
    }
}
