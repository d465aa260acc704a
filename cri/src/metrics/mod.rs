//! Berth's own metrics: every CRI call, image pulls, pods, containers and monitors, and
//! internal errors, exposed in the OpenMetrics text format (which Prometheus scrapes) by
//! the endpoint in [`http`] when `[metrics] address` is set.
//!
//! Counters and histograms are updated where the work happens ([`crate::service`] for
//! calls, [`crate::images`] for pulls); the pod, container and monitor gauges are read
//! from the runtime's index at scrape time, so they never drift from what List* answers.

pub mod http;

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_runtime::Census;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tonic::Code;

/// Bucket bounds of CRI call durations, in seconds: from a List answered from memory to a
/// StopContainer that waits out its grace period.
const RPC_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0,
];
/// Bucket bounds of image pull durations, in seconds.
const PULL_BUCKETS: [f64; 11] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// What went wrong inside Berth, as `berth_errors_total{kind}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A CRI call was answered Internal, Unknown or DataLoss: the runtime's fault, not the
    /// caller's.
    Rpc,
    /// Start-up reconciliation failed.
    Reconcile,
    /// Background image garbage collection failed.
    ImageGc,
}

impl ErrorKind {
    const ALL: [ErrorKind; 3] = [ErrorKind::Rpc, ErrorKind::Reconcile, ErrorKind::ImageGc];

    fn label(self) -> &'static str {
        match self {
            ErrorKind::Rpc => "rpc",
            ErrorKind::Reconcile => "reconcile",
            ErrorKind::ImageGc => "image_gc",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

fn rpc_histogram() -> Histogram {
    Histogram::new(RPC_BUCKETS)
}

/// The daemon's metrics and the registry that exposes them. Updating one is a few atomic
/// operations, so they are kept whether or not the endpoint is on.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rpcs: Family<RpcLabels, Counter>,
    rpc_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pods: Family<StateLabels, Gauge>,
    containers: Family<StateLabels, Gauge>,
    monitors: Gauge,
    files_lost: Gauge,
    pulls: Family<ResultLabels, Counter>,
    pull_bytes: Counter,
    pull_seconds: Histogram,
    errors: Family<KindLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric under the `berth_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("berth");
        let rpcs = Family::<RpcLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "CRI calls answered, by method and gRPC status code",
            rpcs.clone(),
        );
        let rpc_seconds = Family::new_with_constructor(rpc_histogram as fn() -> Histogram);
        registry.register(
            "grpc_request_duration_seconds",
            "Time to answer a CRI call, by method",
            rpc_seconds.clone(),
        );
        let pods = Family::<StateLabels, Gauge>::default();
        registry.register(
            "pods",
            "Pod sandboxes by state, as ListPodSandbox shows them",
            pods.clone(),
        );
        let containers = Family::<StateLabels, Gauge>::default();
        registry.register(
            "containers",
            "Containers by state, as ListContainers shows them",
            containers.clone(),
        );
        let monitors = Gauge::default();
        registry.register(
            "monitors",
            "Pod monitor processes running",
            monitors.clone(),
        );
        let files_lost = Gauge::default();
        registry.register(
            "containers_files_lost",
            "Containers whose files were found gone at start though no removal was recorded \
             (listed exited with reason FilesLost until removed): a fault",
            files_lost.clone(),
        );
        let pulls = Family::<ResultLabels, Counter>::default();
        registry.register(
            "image_pulls",
            "Image pulls finished, by result (success or failure)",
            pulls.clone(),
        );
        let pull_bytes = Counter::default();
        registry.register(
            "image_pull_bytes",
            "Compressed layer bytes downloaded by successful image pulls",
            pull_bytes.clone(),
        );
        let pull_seconds = Histogram::new(PULL_BUCKETS);
        registry.register(
            "image_pull_duration_seconds",
            "Time an image pull took, successful or not",
            pull_seconds.clone(),
        );
        let errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "errors",
            "Internal errors by kind: rpc (a call answered Internal, Unknown or DataLoss), \
             reconcile (start-up reconciliation), image_gc (image garbage collection)",
            errors.clone(),
        );
        let build = Family::<VersionLabels, Gauge>::default();
        registry.register("build_info", "Berth's version; always 1", build.clone());
        build
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        let start_time = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "start_time_seconds",
            "When the daemon started, in seconds since the Unix epoch",
            start_time.clone(),
        );
        start_time.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
        );
        // Series that exist from the start, so that rates and alerts see a zero rather
        // than nothing.
        for result in ["success", "failure"] {
            let _ = pulls.get_or_create(&ResultLabels { result });
        }
        for kind in ErrorKind::ALL {
            let _ = errors.get_or_create(&KindLabels { kind: kind.label() });
        }
        Metrics {
            registry,
            rpcs,
            rpc_seconds,
            pods,
            containers,
            monitors,
            files_lost,
            pulls,
            pull_bytes,
            pull_seconds,
            errors,
        }
    }

    /// Counts one answered CRI call; a call answered with a code that is the runtime's
    /// fault also counts as an `rpc` error.
    pub fn observe_rpc(&self, method: &'static str, code: Code, elapsed: Duration) {
        self.rpcs
            .get_or_create(&RpcLabels {
                method,
                code: code_name(code),
            })
            .inc();
        self.rpc_seconds
            .get_or_create(&MethodLabels { method })
            .observe(elapsed.as_secs_f64());
        if is_internal(code) {
            self.error(ErrorKind::Rpc);
        }
    }

    /// Counts one finished image pull: `downloaded` is `Some(bytes)` for a success.
    pub fn observe_pull(&self, downloaded: Option<u64>, elapsed: Duration) {
        let result = match downloaded {
            Some(bytes) => {
                self.pull_bytes.inc_by(bytes);
                "success"
            }
            None => "failure",
        };
        self.pulls.get_or_create(&ResultLabels { result }).inc();
        self.pull_seconds.observe(elapsed.as_secs_f64());
    }

    /// Counts one internal error.
    pub fn error(&self, kind: ErrorKind) {
        self.errors
            .get_or_create(&KindLabels { kind: kind.label() })
            .inc();
    }

    /// The exposition of every metric, with the gauges set from `census`.
    pub fn render(&self, census: &Census) -> String {
        let set = |family: &Family<StateLabels, Gauge>, state, n: usize| {
            family
                .get_or_create(&StateLabels { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set(&self.pods, "ready", census.pods_ready);
        set(&self.pods, "notready", census.pods_not_ready);
        set(&self.containers, "created", census.containers_created);
        set(&self.containers, "running", census.containers_running);
        set(&self.containers, "exited", census.containers_exited);
        self.monitors
            .set(i64::try_from(census.monitors).unwrap_or(i64::MAX));
        self.files_lost
            .set(i64::try_from(census.containers_files_lost).unwrap_or(i64::MAX));
        let mut text = String::with_capacity(8 << 10);
        // Writing to a String cannot fail, and every metric here encodes.
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("metrics encode into a string");
        text
    }
}

/// Whether a code says the runtime failed rather than the caller; such failures are logged
/// as warnings too.
pub fn is_internal(code: Code) -> bool {
    matches!(code, Code::Internal | Code::Unknown | Code::DataLoss)
}

/// The canonical name of a gRPC code, as grpc-go spells it and the `code` label of
/// containerd's and CRI-O's gRPC metrics carries.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests;
