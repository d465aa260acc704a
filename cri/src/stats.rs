//! Stats and metrics RPCs: container and pod stats, and the cAdvisor-style metrics kubelet
//! reads from the runtime when `PodAndContainerStatsFromCRI` is on.
//!
//! Figures come from each cgroup's files, the pod's `/proc/<monitor>/net/dev` and the
//! writable layers' last measures. The runtime's index lock is held only to copy the list
//! of pods and containers; files are read after, on a blocking thread. The CPU sample the
//! usage rate (nano cores) is computed against is kept per container. A cgroup's reading
//! serves the List stats calls of the next half second (ListPodSandboxStats, sent with
//! ListContainerStats, holds every container's stats again), each figure stamped with the
//! time of its reading; a call about one pod or container reads afresh. A pod's
//! `net/dev` stays open while it is ready. A writable layer's
//! size needs a walk of the layer, so a call never takes it: it reports the last measure
//! [`crate::images::writable`] took in the background, the same one `ImageFsInfo` sums.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_runtime::cgroups::CgroupUsage;
use berth_runtime::cgroups::parse::{NetDev, net_dev};
use berth_runtime::cgroups::read::{Reading, SHARED_FOR, Wanted};
use berth_runtime::status::labels_match;
use berth_runtime::sys::now_ns;
use berth_runtime::{ContainerTarget, PodTarget, Runtime};
use k8s_cri::v1::*;
use tonic::Status;

use crate::images::writable::WritableUsage;
use crate::node::Node;

/// The shortest window a CPU rate is computed over.
const CPU_WINDOW: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
struct CpuSample {
    at: Instant,
    ns: u64,
}

/// Per-container and per-pod samples kept between stats calls.
#[derive(Default)]
pub struct StatsCache {
    containers: CpuSamples,
    pods: CpuSamples,
}

/// The two latest CPU samples at least [`CPU_WINDOW`] apart, by container or pod id.
#[derive(Default)]
struct CpuSamples(Mutex<HashMap<String, (CpuSample, CpuSample)>>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CpuSamples {
    /// CPU use in nano cores since the older kept sample, or `None` on the first sample.
    fn nano_cores(&self, key: &str, ns: u64, at: Instant) -> Option<u64> {
        let now = CpuSample { at, ns };
        let mut map = lock(&self.0);
        // Looked up before inserting: no key is allocated for a container seen before.
        if !map.contains_key(key) {
            map.insert(key.to_owned(), (now, now));
        }
        let (prev, last) = map.get_mut(key)?;
        if at.duration_since(last.at) >= CPU_WINDOW {
            *prev = *last;
            *last = now;
        }
        let base = if at.duration_since(prev.at) > Duration::ZERO {
            *prev
        } else {
            return None;
        };
        let dt = at.duration_since(base.at).as_nanos() as u64;
        (dt > 0).then(|| ns.saturating_sub(base.ns).saturating_mul(1_000_000_000) / dt)
    }

    /// Forgets the samples of containers or pods that are gone.
    fn retain(&self, live: &HashSet<&str>) {
        lock(&self.0).retain(|k, _| live.contains(k.as_str()));
    }
}

fn value(v: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value: v })
}

fn cpu(u: &CgroupUsage, nano_cores: Option<u64>, timestamp: i64) -> Option<CpuUsage> {
    let ns = u.cpu_ns?;
    Some(CpuUsage {
        timestamp,
        usage_core_nano_seconds: value(ns),
        usage_nano_cores: nano_cores.and_then(value),
    })
}

fn memory(u: &CgroupUsage, timestamp: i64) -> Option<MemoryUsage> {
    let usage = u.memory_usage?;
    let working_set = u.working_set.unwrap_or(usage);
    Some(MemoryUsage {
        timestamp,
        working_set_bytes: value(working_set),
        available_bytes: u
            .memory_limit
            .and_then(|l| value(l.saturating_sub(working_set))),
        usage_bytes: value(usage),
        rss_bytes: u.rss.and_then(value),
        page_faults: u.page_faults.and_then(value),
        major_page_faults: u.major_page_faults.and_then(value),
    })
}

/// Reads everything stats report; blocking (cgroup and procfs files).
struct Collector<'a> {
    runtime: &'a Runtime,
    cache: &'a StatsCache,
    layers: &'a WritableUsage,
    fs_mountpoint: String,
    /// A cgroup reading taken at this time or later serves the call: [`SHARED_FOR`]
    /// before it for the List calls, `None` (read afresh) for a call about one pod or
    /// container, whose caller may be looking for the effect of what it just did.
    since: Option<Instant>,
    /// Scratch space every cgroup file of the call is read into.
    buf: RefCell<Vec<u8>>,
}

/// What container stats report: no process count, no OOM kills (metrics read those).
const CONTAINER_STATS: Wanted = Wanted {
    processes: false,
    oom_kills: false,
};

/// What pod stats report: the process count, no OOM kills.
const POD_STATS: Wanted = Wanted {
    processes: true,
    oom_kills: false,
};

impl Collector<'_> {
    /// A container's cgroup usage: the reading the other stats call just took (see
    /// [`SHARED_FOR`]) when the call shares, or one taken now.
    fn container_usage(&self, t: &ContainerTarget, want: Wanted) -> Reading {
        self.runtime.cgroup_usage(
            &t.dirs,
            &t.cgroup,
            want,
            self.since,
            &mut self.buf.borrow_mut(),
        )
    }

    fn container(&self, t: ContainerTarget) -> ContainerStats {
        let r = self.container_usage(&t, CONTAINER_STATS);
        self.container_with(t, &r)
    }

    /// A container's stats from its cgroup's reading `r`, taken by the caller; the figures
    /// carry the reading's time. The target is the call's own copy: its names and labels
    /// move into the answer, not copied again.
    fn container_with(&self, t: ContainerTarget, r: &Reading) -> ContainerStats {
        let u = &r.usage;
        let nano = u
            .cpu_ns
            .filter(|_| t.live)
            .and_then(|ns| self.cache.containers.nano_cores(&t.id, ns, r.at));
        // Before its first measure (taken in the background soon after the container
        // is first seen), a layer is left out rather than reported empty.
        let layer = self.layers.get(&t.id);
        ContainerStats {
            attributes: Some(ContainerAttributes {
                id: t.id,
                metadata: t.metadata,
                labels: t.labels,
                annotations: t.annotations,
            }),
            cpu: cpu(u, nano, r.timestamp),
            memory: memory(u, r.timestamp),
            writable_layer: layer.map(|m| FilesystemUsage {
                timestamp: m.timestamp,
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: self.fs_mountpoint.clone(),
                }),
                used_bytes: value(m.bytes),
                inodes_used: value(m.inodes),
            }),
            swap: u.swap_usage.map(|s| SwapUsage {
                timestamp: r.timestamp,
                swap_available_bytes: None,
                swap_usage_bytes: value(s),
            }),
        }
    }

    fn network(&self, p: &PodTarget) -> Option<NetworkUsage> {
        let mut buf = self.buf.borrow_mut();
        let timestamp = now_ns();
        let text = p.net_file.read(p.net_dev.as_ref()?, &mut buf)?;
        let usage = |d: &NetDev| NetworkInterfaceUsage {
            name: d.name.clone(),
            rx_bytes: value(d.rx_bytes),
            rx_errors: value(d.rx_errors),
            tx_bytes: value(d.tx_bytes),
            tx_errors: value(d.tx_errors),
        };
        let devs: Vec<NetDev> = net_dev(text)
            .into_iter()
            .filter(|d| d.name != "lo")
            .collect();
        let default = devs.iter().find(|d| d.name == "eth0").or(devs.first());
        Some(NetworkUsage {
            timestamp,
            default_interface: default.map(usage),
            interfaces: devs.iter().map(usage).collect(),
        })
    }

    /// A pod's stats; like a container's, its target moves into the answer.
    fn pod(&self, p: PodTarget, containers: Vec<ContainerStats>) -> PodSandboxStats {
        let r = self.runtime.cgroup_usage(
            &p.dirs,
            &p.cgroup.pod,
            POD_STATS,
            self.since,
            &mut self.buf.borrow_mut(),
        );
        let u = &r.usage;
        let nano = u
            .cpu_ns
            .filter(|_| p.ready)
            .and_then(|ns| self.cache.pods.nano_cores(&p.id, ns, r.at));
        let network = self.network(&p);
        PodSandboxStats {
            attributes: Some(PodSandboxAttributes {
                id: p.id,
                metadata: p.metadata,
                labels: p.labels,
                annotations: p.annotations,
            }),
            linux: Some(LinuxPodSandboxStats {
                cpu: cpu(u, nano, r.timestamp),
                memory: memory(u, r.timestamp),
                network,
                process: u.processes.map(|n| ProcessUsage {
                    timestamp: r.timestamp,
                    process_count: value(n),
                }),
                containers,
            }),
            windows: None,
        }
    }
}

/// What a stats call reports: the pods and containers it selects.
struct Selection {
    pods: Vec<PodTarget>,
    containers: Vec<ContainerTarget>,
}

/// What a stats call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// One container (ContainerStats).
    Container,
    /// The node's containers (ListContainerStats).
    Containers,
    /// One pod (PodSandboxStats).
    Pod,
    /// The node's pods (ListPodSandboxStats, ListPodSandboxMetrics).
    Pods,
}

impl Call {
    /// Cgroup readings of the last [`SHARED_FOR`] serve the List calls; a call about one
    /// pod or container reads afresh.
    fn shares(self) -> bool {
        matches!(self, Call::Containers | Call::Pods)
    }

    /// Whether pods are snapshot: a call about containers has no use for them.
    fn lists_pods(self) -> bool {
        matches!(self, Call::Pod | Call::Pods)
    }
}

/// Runs `f` over a snapshot of the runtime's pods (if `call` reports any) and containers
/// on a blocking thread.
async fn collect<T: Send + 'static>(
    node: &Node,
    call: Call,
    select: impl FnOnce(Vec<PodTarget>, Vec<ContainerTarget>) -> Result<Selection, Status>
    + Send
    + 'static,
    f: impl FnOnce(&Collector<'_>, Selection) -> T + Send + 'static,
) -> Result<T, Status> {
    let runtime = node.runtime.clone();
    let stats = node.stats.clone();
    let layers = node.writable.clone();
    let mountpoint = node.config.root.display().to_string();
    tokio::task::spawn_blocking(move || {
        let (pods, containers) = runtime.usage_targets(call.lists_pods());
        stats
            .containers
            .retain(&containers.iter().map(|c| c.id.as_str()).collect());
        if call.lists_pods() {
            stats
                .pods
                .retain(&pods.iter().map(|p| p.id.as_str()).collect());
        }
        layers.track(
            containers
                .iter()
                .map(|c| (c.id.as_str(), c.writable_layer.as_path())),
        );
        let selection = select(pods, containers)?;
        let at = Instant::now();
        let collector = Collector {
            runtime: &runtime,
            cache: &stats,
            layers: &layers,
            fs_mountpoint: mountpoint,
            since: call.shares().then(|| at.checked_sub(SHARED_FOR)).flatten(),
            buf: RefCell::new(Vec::with_capacity(4096)),
        };
        Ok(f(&collector, selection))
    })
    .await
    .map_err(|e| Status::internal(format!("collecting stats: {e}")))?
}

/// Handles `ContainerStats`.
pub async fn container_stats(
    node: &Node,
    req: ContainerStatsRequest,
) -> Result<ContainerStatsResponse, Status> {
    let id = node
        .runtime
        .container_id(&req.container_id)
        .ok_or_else(|| Status::not_found(format!("container {:?} not found", req.container_id)))?;
    let stats = collect(
        node,
        Call::Container,
        move |_, containers| {
            let containers: Vec<_> = containers.into_iter().filter(|c| c.id == id).collect();
            if containers.is_empty() {
                return Err(Status::not_found(format!(
                    "container {id} is still being created"
                )));
            }
            Ok(Selection {
                pods: Vec::new(),
                containers,
            })
        },
        |c, s| s.containers.into_iter().next().map(|t| c.container(t)),
    )
    .await?;
    Ok(ContainerStatsResponse { stats })
}

/// Handles `ListContainerStats`: running and created containers that pass the filter.
pub async fn list_container_stats(
    node: &Node,
    req: ListContainerStatsRequest,
) -> Result<ListContainerStatsResponse, Status> {
    let filter = req.filter.unwrap_or_default();
    let stats = collect(
        node,
        Call::Containers,
        move |_, containers| {
            let containers = containers
                .into_iter()
                .filter(|c| {
                    c.live
                        && c.id.starts_with(&filter.id)
                        && c.pod_id.starts_with(&filter.pod_sandbox_id)
                        && labels_match(&c.labels, &filter.label_selector)
                })
                .collect();
            Ok(Selection {
                pods: Vec::new(),
                containers,
            })
        },
        |c, s| s.containers.into_iter().map(|t| c.container(t)).collect(),
    )
    .await?;
    Ok(ListContainerStatsResponse { stats })
}

/// Live containers grouped by pod once: a full node has hundreds of pods, each with its
/// containers.
fn live_by_pod(containers: &[ContainerTarget]) -> HashMap<&str, Vec<&ContainerTarget>> {
    let mut by_pod: HashMap<&str, Vec<&ContainerTarget>> = HashMap::new();
    for t in containers.iter().filter(|t| t.live) {
        by_pod.entry(t.pod_id.as_str()).or_default().push(t);
    }
    by_pod
}

/// Each selected pod's stats with its live containers', the targets moved into the answer:
/// the containers are grouped by the pod's place in the selection, once.
fn pods_with_containers(c: &Collector<'_>, s: Selection) -> Vec<PodSandboxStats> {
    let mut groups: Vec<Vec<ContainerTarget>> = s.pods.iter().map(|_| Vec::new()).collect();
    {
        let place: HashMap<&str, usize> = s
            .pods
            .iter()
            .enumerate()
            .map(|(k, p)| (p.id.as_str(), k))
            .collect();
        for t in s.containers.into_iter().filter(|t| t.live) {
            if let Some(&k) = place.get(t.pod_id.as_str()) {
                groups[k].push(t);
            }
        }
    }
    s.pods
        .into_iter()
        .zip(groups)
        .map(|(p, group)| {
            let containers = group.into_iter().map(|t| c.container(t)).collect();
            c.pod(p, containers)
        })
        .collect()
}

/// Handles `PodSandboxStats`.
pub async fn pod_sandbox_stats(
    node: &Node,
    req: PodSandboxStatsRequest,
) -> Result<PodSandboxStatsResponse, Status> {
    let id = node.runtime.pod_id(&req.pod_sandbox_id).ok_or_else(|| {
        Status::not_found(format!("pod sandbox {:?} not found", req.pod_sandbox_id))
    })?;
    let mut stats = collect(
        node,
        Call::Pod,
        move |pods, containers| {
            let pods: Vec<_> = pods.into_iter().filter(|p| p.id == id).collect();
            if pods.is_empty() {
                return Err(Status::not_found(format!(
                    "pod sandbox {id} is still being created"
                )));
            }
            Ok(Selection { pods, containers })
        },
        pods_with_containers,
    )
    .await?;
    Ok(PodSandboxStatsResponse { stats: stats.pop() })
}

/// Handles `ListPodSandboxStats`: ready pods that pass the filter.
pub async fn list_pod_sandbox_stats(
    node: &Node,
    req: ListPodSandboxStatsRequest,
) -> Result<ListPodSandboxStatsResponse, Status> {
    let filter = req.filter.unwrap_or_default();
    let stats = collect(
        node,
        Call::Pods,
        move |pods, containers| {
            let pods = pods
                .into_iter()
                .filter(|p| {
                    p.ready
                        && p.id.starts_with(&filter.id)
                        && labels_match(&p.labels, &filter.label_selector)
                })
                .collect();
            Ok(Selection { pods, containers })
        },
        pods_with_containers,
    )
    .await?;
    Ok(ListPodSandboxStatsResponse { stats })
}

/// Label keys of container metrics, as containerd names them.
const BASE_LABELS: [&str; 2] = ["id", "name"];

/// The metrics Berth reports, with cAdvisor's names: (name, help, counter?, network?).
const METRICS: [(&str, &str, bool, bool); 13] = [
    (
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        true,
        false,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        false,
        false,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        false,
        false,
    ),
    (
        "container_memory_rss",
        "Size of RSS in bytes.",
        false,
        false,
    ),
    (
        "container_memory_swap",
        "Container swap usage in bytes.",
        false,
        false,
    ),
    (
        "container_oom_events_total",
        "Count of out of memory events observed for the container.",
        true,
        false,
    ),
    (
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        false,
        false,
    ),
    (
        "container_processes",
        "Number of processes running inside the container.",
        false,
        false,
    ),
    (
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        false,
        false,
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        true,
        true,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        true,
        true,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        true,
        true,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        true,
        true,
    ),
];

fn label_keys(network: bool) -> Vec<String> {
    let mut keys: Vec<String> = BASE_LABELS.iter().map(|s| s.to_string()).collect();
    if network {
        keys.push("interface".into());
    }
    keys
}

/// Handles `ListMetricDescriptors`.
pub async fn list_metric_descriptors(
    _node: &Node,
    _req: ListMetricDescriptorsRequest,
) -> Result<ListMetricDescriptorsResponse, Status> {
    Ok(ListMetricDescriptorsResponse {
        descriptors: METRICS
            .iter()
            .map(|(name, help, _, network)| MetricDescriptor {
                name: (*name).to_owned(),
                help: (*help).to_owned(),
                label_keys: label_keys(*network),
            })
            .collect(),
    })
}

fn metric(name: &str, timestamp: i64, labels: Vec<String>, v: Option<u64>) -> Option<Metric> {
    let counter = METRICS.iter().find(|m| m.0 == name).is_some_and(|m| m.2);
    Some(Metric {
        name: name.to_owned(),
        timestamp,
        metric_type: if counter {
            MetricType::Counter
        } else {
            MetricType::Gauge
        } as i32,
        label_values: labels,
        value: value(v?),
    })
}

fn container_metrics(
    stats: &ContainerStats,
    usage_oom: u64,
    limit: Option<u64>,
    processes: Option<u64>,
) -> Vec<Metric> {
    let Some(a) = &stats.attributes else {
        return Vec::new();
    };
    let ts = stats.cpu.as_ref().map_or_else(now_ns, |c| c.timestamp);
    let labels = || {
        vec![
            a.id.clone(),
            a.metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default(),
        ]
    };
    let v = |o: &Option<UInt64Value>| o.as_ref().map(|v| v.value);
    let cpu = stats.cpu.as_ref();
    let mem = stats.memory.as_ref();
    [
        metric(
            "container_cpu_usage_seconds_total",
            ts,
            labels(),
            // Whole seconds: CRI's Metric value is an integer (UInt64Value) that kubelet
            // exposes as it is, so a seconds counter cannot carry a fraction here (CRI-O
            // divides the same way). The exact figure is ContainerStats' nanoseconds, from
            // which kubelet's /metrics/resource reports this counter with its fraction.
            cpu.and_then(|c| v(&c.usage_core_nano_seconds))
                .map(|ns| ns / 1_000_000_000),
        ),
        metric(
            "container_memory_usage_bytes",
            ts,
            labels(),
            mem.and_then(|m| v(&m.usage_bytes)),
        ),
        metric(
            "container_memory_working_set_bytes",
            ts,
            labels(),
            mem.and_then(|m| v(&m.working_set_bytes)),
        ),
        metric(
            "container_memory_rss",
            ts,
            labels(),
            mem.and_then(|m| v(&m.rss_bytes)),
        ),
        metric(
            "container_memory_swap",
            ts,
            labels(),
            stats.swap.as_ref().and_then(|s| v(&s.swap_usage_bytes)),
        ),
        metric("container_oom_events_total", ts, labels(), Some(usage_oom)),
        metric(
            "container_spec_memory_limit_bytes",
            ts,
            labels(),
            Some(limit.unwrap_or(0)),
        ),
        metric("container_processes", ts, labels(), processes),
        metric(
            "container_fs_usage_bytes",
            ts,
            labels(),
            stats.writable_layer.as_ref().and_then(|w| v(&w.used_bytes)),
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn network_metrics(pod: &PodTarget, net: Option<NetworkUsage>) -> Vec<Metric> {
    let Some(net) = net else {
        return Vec::new();
    };
    let name = pod
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for i in &net.interfaces {
        let labels = || vec![pod.id.clone(), name.clone(), i.name.clone()];
        let v = |o: &Option<UInt64Value>| o.as_ref().map(|v| v.value);
        out.extend(
            [
                ("container_network_receive_bytes_total", v(&i.rx_bytes)),
                ("container_network_receive_errors_total", v(&i.rx_errors)),
                ("container_network_transmit_bytes_total", v(&i.tx_bytes)),
                ("container_network_transmit_errors_total", v(&i.tx_errors)),
            ]
            .into_iter()
            .filter_map(|(n, val)| metric(n, net.timestamp, labels(), val)),
        );
    }
    out
}

/// Handles `ListPodSandboxMetrics`: every ready pod's network metrics and its running
/// containers' metrics.
pub async fn list_pod_sandbox_metrics(
    node: &Node,
    _req: ListPodSandboxMetricsRequest,
) -> Result<ListPodSandboxMetricsResponse, Status> {
    let pod_metrics = collect(
        node,
        Call::Pods,
        |pods, containers| {
            Ok(Selection {
                pods: pods.into_iter().filter(|p| p.ready).collect(),
                containers,
            })
        },
        |c, s| {
            let by_pod = live_by_pod(&s.containers);
            s.pods
                .iter()
                .map(|p| {
                    let container_metrics = by_pod
                        .get(p.id.as_str())
                        .into_iter()
                        .flatten()
                        .map(|t| {
                            let r = c.container_usage(t, Wanted::ALL);
                            ContainerMetrics {
                                container_id: t.id.clone(),
                                metrics: container_metrics_of(
                                    &c.container_with((*t).clone(), &r),
                                    &r.usage,
                                ),
                            }
                        })
                        .collect();
                    PodSandboxMetrics {
                        pod_sandbox_id: p.id.clone(),
                        metrics: network_metrics(p, c.network(p)),
                        container_metrics,
                    }
                })
                .collect()
        },
    )
    .await?;
    Ok(ListPodSandboxMetricsResponse { pod_metrics })
}

fn container_metrics_of(stats: &ContainerStats, u: &CgroupUsage) -> Vec<Metric> {
    container_metrics(stats, u.oom_kills, u.memory_limit, u.processes)
}

#[cfg(test)]
mod tests;
