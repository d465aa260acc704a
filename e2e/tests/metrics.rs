//! Berth's own metrics: with `[metrics] address` set, the daemon serves
//! `GET /metrics` over HTTP, and its counters and gauges move by exactly the CRI calls
//! made; without it, nothing listens.
//!
//! Run through the harness: `scripts/test.sh` (as root).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use berth_e2e::fixtures::{
    container_config, daemon_with, log_dir, pod_config, pull, remove_pod, run_pod, start_container,
};
use berth_e2e::{Daemon, Env, images};
use berth_test_support::metrics::FAMILIES;
use bytes::Bytes;
use k8s_cri::v1::*;
use tonic::Code;

/// A series: its sample name and its labels, sorted.
type Series = (String, BTreeMap<String, String>);

/// One scrape, parsed.
struct Scrape {
    /// Family name to its type (`counter`, `gauge`, `histogram`).
    types: BTreeMap<String, String>,
    samples: BTreeMap<Series, f64>,
}

impl Scrape {
    /// Parses the OpenMetrics text format strictly: every line is a `# HELP`, `# TYPE` or
    /// `# UNIT` comment, a sample `name{label="value",...} value`, or the final `# EOF`;
    /// a family's HELP and TYPE come before its samples, its samples follow one another,
    /// sample names are the family's name with the suffixes its type allows, and no series
    /// appears twice.
    fn parse(text: &str) -> Scrape {
        let mut types = BTreeMap::new();
        let mut helped = HashSet::new();
        let mut samples = BTreeMap::new();
        let mut current: Option<(String, String)> = None;
        let mut lines = text.lines().peekable();
        let mut saw_eof = false;
        while let Some(line) = lines.next() {
            assert!(!saw_eof, "a line after # EOF: {line:?}");
            if line == "# EOF" {
                assert!(lines.peek().is_none(), "# EOF is not the last line");
                saw_eof = true;
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty(), "{line:?}: empty help");
                check_name(name);
                assert!(helped.insert(name.to_owned()), "HELP twice for {name}");
                assert!(!types.contains_key(name), "{name}: HELP after TYPE");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name type");
                check_name(name);
                assert!(
                    matches!(kind, "counter" | "gauge" | "histogram"),
                    "{line:?}: unexpected type"
                );
                assert!(helped.contains(name), "{name}: TYPE without HELP before it");
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "{name}: TYPE twice (samples of a family must be together)"
                );
                current = Some((name.to_owned(), kind.to_owned()));
            } else if line.starts_with("# UNIT ") {
            } else {
                assert!(!line.starts_with('#'), "unknown comment {line:?}");
                let (name, labels, value) = parse_sample(line);
                let (family, kind) = current
                    .as_ref()
                    .unwrap_or_else(|| panic!("{line:?}: sample before any TYPE"));
                let suffix = name
                    .strip_prefix(family.as_str())
                    .unwrap_or_else(|| panic!("{line:?} outside its family {family}"));
                let allowed: &[&str] = match kind.as_str() {
                    "counter" => &["_total", "_created"],
                    "gauge" => &[""],
                    _ => &["_bucket", "_sum", "_count", "_created"],
                };
                assert!(allowed.contains(&suffix), "{line:?}: not a {kind} sample");
                assert_eq!(
                    suffix == "_bucket",
                    labels.contains_key("le"),
                    "{line:?}: `le` belongs to buckets alone"
                );
                let series = (name, labels);
                assert!(
                    samples.insert(series.clone(), value).is_none(),
                    "{series:?} twice"
                );
            }
        }
        assert!(saw_eof, "the exposition does not end with # EOF");
        let scrape = Scrape { types, samples };
        scrape.check_histograms();
        scrape
    }

    /// Every histogram series has cumulative buckets ending in `+Inf`, which equals its
    /// count.
    fn check_histograms(&self) {
        for (family, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            let bucket_name = format!("{family}_bucket");
            let mut buckets: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
            for ((name, labels), value) in &self.samples {
                if *name != bucket_name {
                    continue;
                }
                let mut series = labels.clone();
                let le = series.remove("le").expect("a bucket has le");
                let le = match le.as_str() {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().expect("a numeric le"),
                };
                buckets.entry(series).or_default().push((le, *value));
            }
            for (series, mut bounds) in buckets {
                bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
                assert!(
                    bounds.windows(2).all(|w| w[0].1 <= w[1].1),
                    "{family}{series:?}: buckets are not cumulative: {bounds:?}"
                );
                let (last_le, last) = *bounds.last().unwrap();
                assert_eq!(last_le, f64::INFINITY, "{family}{series:?}: no +Inf bucket");
                let count = self
                    .samples
                    .get(&(format!("{family}_count"), series.clone()));
                assert_eq!(
                    count,
                    Some(&last),
                    "{family}{series:?}: +Inf is not the count"
                );
            }
        }
    }

    /// The value of a series, or `None` when it is not exposed.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples.get(&(name.to_owned(), labels)).copied()
    }

    /// Like [`Scrape::get`], a missing series counting as 0.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

fn check_name(name: &str) {
    let mut chars = name.chars();
    let first = chars.next().expect("an empty metric name");
    assert!(
        (first.is_ascii_alphabetic() || first == '_' || first == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "invalid metric name {name:?}"
    );
}

/// `name{a="x",b="y"} value` or `name value`.
fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("{line:?}: no value"));
    let name = &line[..name_end];
    check_name(name);
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = inner
                .split_once("=\"")
                .unwrap_or_else(|| panic!("{line:?}: label without =\""));
            check_name(label);
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => panic!("{line:?}: bad escape {other:?}"),
                    },
                    Some((_, c)) => value.push(c),
                    None => panic!("{line:?}: unterminated label value"),
                }
            };
            assert!(
                labels.insert(label.to_owned(), value).is_none(),
                "{line:?}: label {label} twice"
            );
            inner = &after[end + 1..];
            if let Some(next) = inner.strip_prefix(',') {
                inner = next;
            } else {
                assert!(inner.starts_with('}'), "{line:?}: expected , or }}");
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("{line:?}: no space before the value"));
    assert!(
        !value.contains(' '),
        "{line:?}: timestamps are not expected"
    );
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("{line:?}: {v:?} is not a number")),
    };
    (name.to_owned(), labels, value)
}

/// The address the daemon logged for its metrics endpoint.
fn metrics_address(d: &Daemon) -> SocketAddr {
    let log = d.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("metrics endpoint listening"))
        .unwrap_or_else(|| panic!("no \"metrics endpoint listening\" line in\n{log}"));
    let address = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .unwrap_or_else(|| panic!("no address= in {line:?}"));
    address.parse().expect("a socket address")
}

async fn get(addr: SocketAddr, path: &str) -> berth_e2e::http::Response {
    berth_e2e::http::send(addr, "GET", path, &[], Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let resp = get(addr, "/metrics").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    Scrape::parse(std::str::from_utf8(&resp.body).expect("UTF-8 exposition"))
}

const REQUESTS: &str = "berth_grpc_requests_total";
const DURATION_COUNT: &str = "berth_grpc_request_duration_seconds_count";

/// How much each RPC counter moved between two scrapes: every (method, code) series of
/// `after` that differs from `before`.
fn calls_between(before: &Scrape, after: &Scrape) -> BTreeMap<(String, String), f64> {
    after
        .samples
        .iter()
        .filter(|((name, _), _)| name == REQUESTS)
        .filter_map(|((name, labels), v)| {
            let was = before.samples.get(&(name.clone(), labels.clone()));
            let delta = v - was.copied().unwrap_or(0.0);
            (delta != 0.0).then(|| ((labels["method"].clone(), labels["code"].clone()), delta))
        })
        .collect()
}

fn calls(expected: &[(&str, &str, f64)]) -> BTreeMap<(String, String), f64> {
    expected
        .iter()
        .map(|(m, c, n)| ((m.to_string(), c.to_string()), *n))
        .collect()
}

#[tokio::test]
async fn metrics_count_the_calls_made_and_show_the_pods() {
    let d = daemon_with("[metrics]\naddress = \"127.0.0.1:0\"").await;
    let addr = metrics_address(&d);
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    let start = scrape(addr).await;
    for (family, kind) in FAMILIES {
        assert_eq!(
            start.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    assert_eq!(
        start.get(
            "berth_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(start.get("berth_monitors", &[]), Some(0.0));
    assert_eq!(start.get("berth_pods", &[("state", "ready")]), Some(0.0));

    // The calls: a Version, a pull that fails and one that works, a pod with a running
    // container, and one call refused for an unknown id.
    d.runtime()
        .version(VersionRequest::default())
        .await
        .expect("Version");
    // Named on the loopback registry itself: a mirrored name would fall back to upstream.
    let registry = Env::try_get().expect("harness env").registry_url();
    let missing_tag = format!(
        "{}/library/busybox:no-such-tag",
        registry.trim_start_matches("http://")
    );
    let missing = d
        .images()
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: missing_tag,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("a tag the registry does not have");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    pull(&d, images::BUSYBOX).await;
    let log_dir = log_dir(&d);
    let pod = pod_config("metrics", &log_dir);
    let pod_id = run_pod(&d, &pod).await;
    let sleeper = container_config("sleeper", &["sleep", "3600"]);
    start_container(&d, &pod_id, &pod, sleeper).await;
    let unknown = d
        .runtime()
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: "no-such-pod".into(),
            verbose: false,
        })
        .await
        .expect_err("an unknown pod");
    assert_eq!(unknown.code(), Code::NotFound);

    let running = scrape(addr).await;
    assert_eq!(
        calls_between(&start, &running),
        calls(&[
            ("Version", "OK", 1.0),
            ("PullImage", "NotFound", 1.0),
            ("PullImage", "OK", 1.0),
            ("RunPodSandbox", "OK", 1.0),
            ("CreateContainer", "OK", 1.0),
            ("StartContainer", "OK", 1.0),
            ("PodSandboxStatus", "NotFound", 1.0),
        ])
    );
    let timed = |s: &Scrape, method| s.value(DURATION_COUNT, &[("method", method)]);
    assert_eq!(
        timed(&running, "RunPodSandbox") - timed(&start, "RunPodSandbox"),
        1.0
    );
    assert_eq!(
        timed(&running, "PodSandboxStatus") - timed(&start, "PodSandboxStatus"),
        1.0
    );
    let run_bucket = running.value(
        "berth_grpc_request_duration_seconds_bucket",
        &[("method", "RunPodSandbox"), ("le", "+Inf")],
    );
    assert_eq!(run_bucket, timed(&running, "RunPodSandbox"));

    assert_eq!(running.get("berth_pods", &[("state", "ready")]), Some(1.0));
    assert_eq!(
        running.get("berth_pods", &[("state", "notready")]),
        Some(0.0)
    );
    assert_eq!(running.get("berth_monitors", &[]), Some(1.0));
    assert_eq!(
        running.get("berth_containers", &[("state", "running")]),
        Some(1.0)
    );
    assert_eq!(
        running.get("berth_containers", &[("state", "created")]),
        Some(0.0)
    );

    // A fresh root downloads every layer of the image once.
    let busybox = images::info(images::BUSYBOX).expect("busybox info");
    let layer_bytes: u64 = busybox.layers.iter().map(|l| l.size).sum();
    let pulled = |s: &Scrape, result| s.value("berth_image_pulls_total", &[("result", result)]);
    assert_eq!(pulled(&running, "success") - pulled(&start, "success"), 1.0);
    assert_eq!(pulled(&running, "failure") - pulled(&start, "failure"), 1.0);
    assert_eq!(
        running.value("berth_image_pull_bytes_total", &[])
            - start.value("berth_image_pull_bytes_total", &[]),
        layer_bytes as f64
    );
    assert_eq!(
        running.value("berth_image_pull_duration_seconds_count", &[])
            - start.value("berth_image_pull_duration_seconds_count", &[]),
        2.0
    );
    // NotFound is the caller's mistake, not an internal error.
    assert_eq!(
        running.get("berth_errors_total", &[("kind", "rpc")]),
        Some(0.0)
    );

    remove_pod(&d, &pod_id).await;
    let removed = scrape(addr).await;
    assert_eq!(
        calls_between(&running, &removed),
        calls(&[
            ("StopPodSandbox", "OK", 1.0),
            ("RemovePodSandbox", "OK", 1.0)
        ])
    );
    assert_eq!(removed.get("berth_pods", &[("state", "ready")]), Some(0.0));
    assert_eq!(
        removed.get("berth_pods", &[("state", "notready")]),
        Some(0.0)
    );
    assert_eq!(removed.get("berth_monitors", &[]), Some(0.0));
    for state in ["created", "running", "exited"] {
        assert_eq!(
            removed.get("berth_containers", &[("state", state)]),
            Some(0.0),
            "{state}"
        );
    }

    // Only /metrics is served.
    assert_eq!(get(addr, "/").await.status, 404);
    assert_eq!(get(addr, "/metrics/extra").await.status, 404);
    let post = berth_e2e::http::send(addr, "POST", "/metrics", &[], Bytes::new())
        .await
        .expect("POST /metrics");
    assert_eq!(post.status, 405);
}

#[tokio::test]
async fn without_an_address_no_endpoint_is_served() {
    let d = Daemon::start().await.expect("daemon");
    d.runtime()
        .version(VersionRequest::default())
        .await
        .expect("Version");
    let log = d.log();
    assert!(
        !log.contains("metrics endpoint listening"),
        "an endpoint started without [metrics] address:\n{log}"
    );
    // The daemon's listening TCP sockets: the streaming server's, and no other.
    let pid = d.pid().expect("running");
    let listening = listening_ports(pid);
    assert_eq!(listening.len(), 1, "listening ports {listening:?}");
}

/// Local ports of the TCP sockets `pid` listens on (IPv4 and IPv6).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A = LISTEN), inode
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                let port = fields[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

#[tokio::test]
async fn a_metrics_address_in_use_stops_the_daemon_naming_it() {
    let first = daemon_with("[metrics]\naddress = \"127.0.0.1:0\"").await;
    let taken = metrics_address(&first);
    let mut second = Daemon::builder()
        .config(&format!("[metrics]\naddress = \"{taken}\""))
        .spawn()
        .expect("spawn a second berth");
    let status = second
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the second berth keeps running");
    assert!(!status.success(), "{status:?}");
    let log = second.log();
    assert!(
        log.contains(&format!("cannot listen on metrics address {taken}")),
        "the log does not say why:\n{log}"
    );
    // The first daemon's endpoint is untouched.
    assert_eq!(get(taken, "/metrics").await.status, 200);
}
