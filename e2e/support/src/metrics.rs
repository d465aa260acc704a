//! The metric families Berth exports, as the tests expect them: the same list checks the
//! text format (cri's unit tests) and a scrape of a running daemon (e2e).

/// Every family Berth exports, with its Prometheus type.
pub const FAMILIES: [(&str, &str); 11] = [
    ("berth_grpc_requests", "counter"),
    ("berth_grpc_request_duration_seconds", "histogram"),
    ("berth_pods", "gauge"),
    ("berth_containers", "gauge"),
    ("berth_monitors", "gauge"),
    ("berth_image_pulls", "counter"),
    ("berth_image_pull_bytes", "counter"),
    ("berth_image_pull_duration_seconds", "histogram"),
    ("berth_errors", "counter"),
    ("berth_build_info", "gauge"),
    ("berth_start_time_seconds", "gauge"),
];
