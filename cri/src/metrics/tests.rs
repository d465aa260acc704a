use std::sync::Arc;
use std::time::Duration;

use berth_test_support::metrics::FAMILIES;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// The value of the one sample line `series` (name and labels as exposed), or `None`.
fn sample(text: &str, series: &str) -> Option<f64> {
    let mut found = text.lines().filter_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse::<f64>().expect("a numeric value"))
    });
    let value = found.next();
    assert!(found.next().is_none(), "{series} appears twice in\n{text}");
    value
}

#[test]
fn calls_are_counted_by_method_and_code() {
    let m = Metrics::new();
    m.observe_rpc("Version", Code::Ok, Duration::from_micros(300));
    m.observe_rpc("Version", Code::Ok, Duration::from_millis(3));
    m.observe_rpc(
        "RunPodSandbox",
        Code::InvalidArgument,
        Duration::from_millis(1),
    );
    m.observe_rpc("RunPodSandbox", Code::Internal, Duration::from_millis(2));
    let text = m.render(&Census::default());
    let count = |s: &str| sample(&text, s);
    assert_eq!(
        count(r#"berth_grpc_requests_total{method="Version",code="OK"}"#),
        Some(2.0)
    );
    assert_eq!(
        count(r#"berth_grpc_requests_total{method="RunPodSandbox",code="InvalidArgument"}"#),
        Some(1.0)
    );
    assert_eq!(
        count(r#"berth_grpc_requests_total{method="RunPodSandbox",code="Internal"}"#),
        Some(1.0)
    );
    assert_eq!(
        count(r#"berth_grpc_requests_total{method="RunPodSandbox",code="OK"}"#),
        None
    );
    // The histogram: cumulative buckets, a count and a sum per method.
    assert_eq!(
        count(r#"berth_grpc_request_duration_seconds_bucket{le="0.0005",method="Version"}"#),
        Some(1.0)
    );
    assert_eq!(
        count(r#"berth_grpc_request_duration_seconds_bucket{le="0.005",method="Version"}"#),
        Some(2.0)
    );
    assert_eq!(
        count(r#"berth_grpc_request_duration_seconds_bucket{le="+Inf",method="Version"}"#),
        Some(2.0)
    );
    assert_eq!(
        count(r#"berth_grpc_request_duration_seconds_count{method="Version"}"#),
        Some(2.0)
    );
    let sum = count(r#"berth_grpc_request_duration_seconds_sum{method="Version"}"#).unwrap();
    assert!((sum - 0.0033).abs() < 1e-9, "{sum}");
    // Only the Internal answer is the runtime's fault.
    assert_eq!(count(r#"berth_errors_total{kind="rpc"}"#), Some(1.0));
}

#[test]
fn gauges_follow_the_census_of_each_scrape() {
    let m = Metrics::new();
    let census = Census {
        pods_ready: 2,
        pods_not_ready: 1,
        containers_created: 1,
        containers_running: 3,
        containers_exited: 4,
        monitors: 2,
        containers_files_lost: 1,
    };
    let text = m.render(&census);
    let value = |s: &str| sample(&text, s);
    assert_eq!(value(r#"berth_pods{state="ready"}"#), Some(2.0));
    assert_eq!(value(r#"berth_pods{state="notready"}"#), Some(1.0));
    assert_eq!(value(r#"berth_containers{state="created"}"#), Some(1.0));
    assert_eq!(value(r#"berth_containers{state="running"}"#), Some(3.0));
    assert_eq!(value(r#"berth_containers{state="exited"}"#), Some(4.0));
    assert_eq!(value("berth_monitors"), Some(2.0));
    assert_eq!(value("berth_containers_files_lost"), Some(1.0));
    // A later scrape shows the later state, zeros included.
    let text = m.render(&Census::default());
    assert_eq!(sample(&text, r#"berth_pods{state="ready"}"#), Some(0.0));
    assert_eq!(sample(&text, "berth_monitors"), Some(0.0));
}

#[test]
fn pulls_count_results_bytes_and_time() {
    let m = Metrics::new();
    let text = m.render(&Census::default());
    assert_eq!(
        sample(&text, r#"berth_image_pulls_total{result="success"}"#),
        Some(0.0),
        "results exist before the first pull"
    );
    m.observe_pull(Some(1000), Duration::from_millis(200));
    m.observe_pull(Some(24), Duration::from_millis(300));
    m.observe_pull(None, Duration::from_secs(2));
    let text = m.render(&Census::default());
    let value = |s: &str| sample(&text, s);
    assert_eq!(
        value(r#"berth_image_pulls_total{result="success"}"#),
        Some(2.0)
    );
    assert_eq!(
        value(r#"berth_image_pulls_total{result="failure"}"#),
        Some(1.0)
    );
    assert_eq!(value("berth_image_pull_bytes_total"), Some(1024.0));
    assert_eq!(value("berth_image_pull_duration_seconds_count"), Some(3.0));
    assert_eq!(
        value(r#"berth_image_pull_duration_seconds_bucket{le="0.25"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(r#"berth_image_pull_duration_seconds_bucket{le="2.5"}"#),
        Some(3.0)
    );
}

#[test]
fn errors_build_and_start_time_are_exposed() {
    let m = Metrics::new();
    m.error(ErrorKind::ImageGc);
    let text = m.render(&Census::default());
    let value = |s: &str| sample(&text, s);
    assert_eq!(value(r#"berth_errors_total{kind="image_gc"}"#), Some(1.0));
    assert_eq!(value(r#"berth_errors_total{kind="reconcile"}"#), Some(0.0));
    assert_eq!(value(r#"berth_errors_total{kind="rpc"}"#), Some(0.0));
    let build = format!(
        r#"berth_build_info{{version="{}"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&build), Some(1.0));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value("berth_start_time_seconds").unwrap();
    assert!(started <= now && now - started < 60.0, "{started} vs {now}");
}

#[test]
fn every_family_is_described_before_its_samples_and_the_text_ends_with_eof() {
    let m = Metrics::new();
    m.observe_rpc("Version", Code::Ok, Duration::from_millis(1));
    m.observe_pull(Some(1), Duration::from_millis(1));
    let text = m.render(&Census::default());
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut typed: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            typed.push((name.to_owned(), kind.to_owned()));
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let (family, kind) = typed.last().unwrap_or_else(|| panic!("{line}: no TYPE"));
            let suffix = name
                .strip_prefix(family.as_str())
                .unwrap_or_else(|| panic!("{line} is not in family {family}"));
            let allowed: &[&str] = match kind.as_str() {
                "counter" => &["_total"],
                "gauge" => &[""],
                "histogram" => &["_bucket", "_sum", "_count"],
                other => panic!("unexpected type {other}"),
            };
            assert!(allowed.contains(&suffix), "{line} in {kind} {family}");
        }
    }
    let kinds: std::collections::HashMap<_, _> = typed.into_iter().collect();
    for (family, kind) in FAMILIES {
        assert_eq!(
            kinds.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
}

#[test]
fn codes_have_grpc_go_names() {
    assert_eq!(code_name(Code::Ok), "OK");
    assert_eq!(code_name(Code::Cancelled), "Canceled");
    assert_eq!(code_name(Code::DeadlineExceeded), "DeadlineExceeded");
    assert!(is_internal(Code::Unknown) && is_internal(Code::DataLoss));
    assert!(!is_internal(Code::NotFound) && !is_internal(Code::Unavailable));
}

/// Sends one request on a fresh connection; returns the status line, the headers and
/// the body.
async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> (String, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn the_endpoint_serves_metrics_and_nothing_else() {
    let metrics = Arc::new(Metrics::new());
    let scraped = metrics.clone();
    let census = Census {
        pods_ready: 7,
        ..Census::default()
    };
    let server = http::start("127.0.0.1:0", Arc::new(move || scraped.render(&census)))
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0, "port 0 picks a port");
    metrics.observe_rpc("Version", Code::Ok, Duration::from_millis(1));

    let (head, body) = request(addr, "GET", "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-type: {}", http::CONTENT_TYPE)),
        "{head}"
    );
    assert_eq!(sample(&body, r#"berth_pods{state="ready"}"#), Some(7.0));
    assert_eq!(
        sample(
            &body,
            r#"berth_grpc_requests_total{method="Version",code="OK"}"#
        ),
        Some(1.0)
    );

    let (head, _) = request(addr, "GET", "/").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = request(addr, "GET", "/metrics/x").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = request(addr, "POST", "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("allow: get, head"),
        "{head}"
    );

    drop(server);
    // The listener closes once the accept loop has seen the cancellation.
    let refused = async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(1), refused)
        .await
        .expect("the endpoint still accepts after being dropped");
}

#[tokio::test]
async fn a_bad_address_is_an_error_naming_it() {
    let err = http::start("not an address", Arc::new(String::new))
        .await
        .err()
        .expect("binding fails");
    assert!(err.to_string().contains("not an address"), "{err}");
}
