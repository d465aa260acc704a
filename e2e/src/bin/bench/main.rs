//! The side-by-side benchmark (issue 11): Berth and containerd (Debian's 1.6, with runc) on
//! the same machine, driven over their CRI sockets by the same Rust client, inside the
//! harness's node namespace with its loopback registry. Run by `scripts/bench.sh`; prints
//! a Markdown report (the figures SPECIFICATION.md records), and writes every figure as
//! JSON and the latency distributions as an SVG.
//!
//! Usage (inside the harness):
//! `bench [--smoke] [--iterations N] [--pods N] [--density N,N] [--restart-pods N] [--json PATH]
//! [--svg PATH]`.
//! Both daemons run at once and are measured alternately, iteration by iteration, so they
//! share the machine's noise. Restarts are timed for Berth alone, with no pods and with a
//! busy node (`--restart-pods`, 100 by default). `--smoke` runs Berth alone, every step
//! once (density with 3 pods, the busy node with 5), writes the JSON and SVG, and checks
//! only that every step works (CI runs it).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_e2e::bench::{Samples, Series, Summary, latency_svg, ratio};
use berth_e2e::fixtures::{container_config, pod_config};
use berth_e2e::{Client, Daemon, DaemonDir, Env, images};
use k8s_cri::v1::*;

const USAGE: &str = "usage: bench [--smoke] [--iterations N] [--pods N] [--density N,N] \
                     [--restart-pods N] [--json PATH] [--svg PATH]";

const COLD_PULL: &str = "PullImage (cold: a fresh daemon, empty store)";
const COLD_PULL_LAYERED: &str = "PullImage (cold store, 4 layers, 40 MB)";
const PULL_ABSENT: &str = "PullImage (warm daemon, image absent)";
const PULL_PRESENT: &str = "PullImage (image present)";
const POD_READY: &str = "pod ready (run+create+start)";
const LAUNCH: &str = "launch to serving";
const RESTART_EMPTY: &str = "restart to RuntimeReady (no pods)";
const RESTART_BUSY: &str = "restart to RuntimeReady (busy node)";
const RESTART_LISTED: &str = "restart to a true ListPodSandbox (busy node)";

/// The timed operations, in the report's order.
const OPS: [&str; 24] = [
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
    "RemovePodSandbox",
    LAUNCH,
    RESTART_EMPTY,
    RESTART_BUSY,
    RESTART_LISTED,
];

/// The image of the image operations: its layers (zstd) share no blob with busybox's
/// (gzip), so removing it removes its content and the next pull fetches it again.
const IMAGE_OPS_IMAGE: &str = images::ZSTD;

/// What the benchmark was asked to do.
struct Settings {
    smoke: bool,
    iterations: usize,
    pods: usize,
    density: Vec<usize>,
    cold: usize,
    /// Pods running on the busy node of the restart phase.
    restart_pods: usize,
    /// Restarts timed with no pods, and again with the busy node.
    restarts: usize,
    json: PathBuf,
    svg: PathBuf,
}

impl Settings {
    fn parse(args: &[String]) -> anyhow::Result<Settings> {
        let mut flags: BTreeMap<&str, &str> = BTreeMap::new();
        let mut smoke = false;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--smoke" => smoke = true,
                "--iterations" | "--pods" | "--density" | "--restart-pods" | "--json" | "--svg" => {
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
        Ok(Settings {
            smoke,
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
            json: PathBuf::from(flags.get("--json").unwrap_or(&"target/bench/results.json")),
            svg: PathBuf::from(flags.get("--svg").unwrap_or(&"target/bench/latency.svg")),
        })
    }
}

/// One runtime under test.
struct Runtime {
    name: &'static str,
    client: Client,
    pid: u32,
    logs: PathBuf,
    /// The processes the runtime adds per pod (Berth's monitors, containerd's shims).
    helpers: Box<dyn Fn() -> Vec<u32>>,
}

/// One density round: `pods` pods started at once, then torn down at once.
struct Density {
    pods: usize,
    start_ms: f64,
    teardown_ms: f64,
    /// The daemon's highest VmRSS while the pods started and ran.
    daemon_max_rss_kib: u64,
}

/// What one runtime measured.
#[derive(Default)]
struct Figures {
    calls: BTreeMap<&'static str, Samples>,
    density: Vec<Density>,
    idle_rss_kib: u64,
    idle_rss_after_kib: u64,
    per_pod_rss_kib: f64,
    per_pod_pss_kib: f64,
}

impl Figures {
    fn op(&mut self, name: &'static str) -> &mut Samples {
        self.calls.entry(name).or_default()
    }
    fn summary(&self, name: &str) -> Option<Summary> {
        self.calls.get(name).and_then(Samples::summary)
    }
}

/// Awaits one CRI call, adding its time to `op`'s samples.
async fn timed<T>(
    rt: &Runtime,
    figures: &mut Figures,
    op: &'static str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    let t = Instant::now();
    let out = call.await.with_context(|| format!("{}: {op}", rt.name))?;
    figures.op(op).push_ms(t.elapsed());
    Ok(out.into_inner())
}

fn smaps_rollup(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (kib_field(&text, "Rss:"), kib_field(&text, "Pss:"))
}

/// A `Name:   123 kB` field of a /proc file.
fn kib_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn vm_rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    kib_field(&text, "VmRSS:")
}

/// Processes whose command line contains every one of `needles`.
fn processes_with(needles: &[&str]) -> Vec<u32> {
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

fn image_spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

/// Pulls `image` into an empty store (removing it first) and returns the pull's time.
async fn pull(rt: &Runtime, image: &str) -> anyhow::Result<Duration> {
    let mut images = rt.client.images();
    images
        .remove_image(RemoveImageRequest {
            image: image_spec(image),
        })
        .await
        .ok();
    let t = Instant::now();
    images
        .pull_image(PullImageRequest {
            image: image_spec(image),
            ..Default::default()
        })
        .await
        .with_context(|| format!("{}: pull {image}", rt.name))?;
    Ok(t.elapsed())
}

/// One pod lifecycle, each call timed: run, create, start, the status and list calls,
/// exec, then stop and remove.
async fn lifecycle(rt: &Runtime, i: usize, f: &mut Figures) -> anyhow::Result<()> {
    let mut c = rt.client.runtime();
    let config = pod_config(&format!("{}-bench-{i}", rt.name), &rt.logs);
    let t0 = Instant::now();
    let pod = timed(
        rt,
        f,
        "RunPodSandbox",
        c.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            ..Default::default()
        }),
    )
    .await?
    .pod_sandbox_id;
    let id = timed(
        rt,
        f,
        "CreateContainer",
        c.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("c", &["sleep", "3600"])),
            sandbox_config: Some(config),
        }),
    )
    .await?
    .container_id;
    timed(
        rt,
        f,
        "StartContainer",
        c.start_container(StartContainerRequest {
            container_id: id.clone(),
        }),
    )
    .await?;
    f.op(POD_READY).push_ms(t0.elapsed());
    let status = timed(
        rt,
        f,
        "PodSandboxStatus",
        c.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        }),
    )
    .await?;
    if status.status.map(|s| s.state) != Some(PodSandboxState::SandboxReady as i32) {
        bail!("{}: pod {pod} is not ready after RunPodSandbox", rt.name);
    }
    timed(
        rt,
        f,
        "ListPodSandbox",
        c.list_pod_sandbox(ListPodSandboxRequest::default()),
    )
    .await?;
    let status = timed(
        rt,
        f,
        "ContainerStatus",
        c.container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        }),
    )
    .await?;
    if status.status.map(|s| s.state) != Some(ContainerState::ContainerRunning as i32) {
        bail!(
            "{}: container {id} is not running after StartContainer",
            rt.name
        );
    }
    timed(
        rt,
        f,
        "ListContainers",
        c.list_containers(ListContainersRequest::default()),
    )
    .await?;
    let out = timed(
        rt,
        f,
        "ExecSync",
        c.exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            timeout: 30,
        }),
    )
    .await?;
    if out.exit_code != 0 {
        bail!("{}: exec exited {}", rt.name, out.exit_code);
    }
    timed(
        rt,
        f,
        "StopContainer",
        c.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        }),
    )
    .await?;
    timed(
        rt,
        f,
        "RemoveContainer",
        c.remove_container(RemoveContainerRequest { container_id: id }),
    )
    .await?;
    timed(
        rt,
        f,
        "StopPodSandbox",
        c.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        }),
    )
    .await?;
    timed(
        rt,
        f,
        "RemovePodSandbox",
        c.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        }),
    )
    .await?;
    Ok(())
}

/// The image calls on an image no pod uses: pull it (absent), its status, the list, pull
/// it again (present), remove it.
async fn image_ops(rt: &Runtime, f: &mut Figures) -> anyhow::Result<()> {
    let mut c = rt.client.images();
    let pull = || PullImageRequest {
        image: image_spec(IMAGE_OPS_IMAGE),
        ..Default::default()
    };
    timed(rt, f, PULL_ABSENT, c.pull_image(pull())).await?;
    let status = timed(
        rt,
        f,
        "ImageStatus",
        c.image_status(ImageStatusRequest {
            image: image_spec(IMAGE_OPS_IMAGE),
            verbose: false,
        }),
    )
    .await?;
    if status.image.is_none() {
        bail!(
            "{}: ImageStatus: {IMAGE_OPS_IMAGE} missing after its pull",
            rt.name
        );
    }
    let list = timed(
        rt,
        f,
        "ListImages",
        c.list_images(ListImagesRequest::default()),
    )
    .await?;
    if list.images.len() < 2 {
        bail!(
            "{}: ListImages: {} images, expected at least 2",
            rt.name,
            list.images.len()
        );
    }
    timed(rt, f, PULL_PRESENT, c.pull_image(pull())).await?;
    timed(
        rt,
        f,
        "RemoveImage",
        c.remove_image(RemoveImageRequest {
            image: image_spec(IMAGE_OPS_IMAGE),
        }),
    )
    .await?;
    Ok(())
}

/// Runs a pod with one `sleep` container; returns the pod's id.
async fn run_pod(rt: &Runtime, name: String) -> anyhow::Result<String> {
    let mut c = rt.client.runtime();
    let config = pod_config(&name, &rt.logs);
    let pod = c
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            ..Default::default()
        })
        .await
        .with_context(|| format!("{}: RunPodSandbox {name}", rt.name))?
        .into_inner()
        .pod_sandbox_id;
    let started = async {
        let id = c
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config("c", &["sleep", "3600"])),
                sandbox_config: Some(config),
            })
            .await?
            .into_inner()
            .container_id;
        c.start_container(StartContainerRequest { container_id: id })
            .await
    };
    match started.await {
        Ok(_) => Ok(pod),
        Err(e) => {
            // Not left behind for the leak check.
            remove_pod(rt, &pod).await.ok();
            Err(e).with_context(|| format!("{}: start the container of {name}", rt.name))
        }
    }
}

/// Stops and removes a pod, its containers with it.
async fn remove_pod(rt: &Runtime, pod: &str) -> anyhow::Result<()> {
    let mut c = rt.client.runtime();
    c.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .with_context(|| format!("{}: StopPodSandbox {pod}", rt.name))?;
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .with_context(|| format!("{}: RemovePodSandbox {pod}", rt.name))?;
    Ok(())
}

/// Memory: `pods` pods with a container each, one after the other, then the RSS and PSS
/// of what the runtime added per pod.
async fn memory(rt: &Runtime, pods: usize, f: &mut Figures) -> anyhow::Result<()> {
    let mut ids = Vec::new();
    let mut result = Ok(());
    for i in 0..pods {
        match run_pod(rt, format!("{}-mem-{i}", rt.name)).await {
            Ok(pod) => ids.push(pod),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (rss, pss) = (rt.helpers)()
            .iter()
            .map(|&p| smaps_rollup(p))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        let per = pods.max(1) as f64;
        f.per_pod_rss_kib = rss as f64 / per;
        f.per_pod_pss_kib = pss as f64 / per;
    }
    for pod in &ids {
        remove_pod(rt, pod).await?;
    }
    result
}

/// Density: `n` pods started at once (each run, create, start), the wall time until all
/// run; then all stopped and removed at once, the wall time until all are gone. Samples
/// the daemon's VmRSS while they start and run. Whatever fails, the pods that started are
/// torn down before the error is returned.
async fn density(rt: &Runtime, n: usize, f: &mut Figures) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, pid) = (stop.clone(), rt.pid);
        tokio::spawn(async move {
            let mut max = vm_rss_kib(pid);
            while !stop.load(Ordering::Relaxed) {
                max = max.max(vm_rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            max
        })
    };
    let t = Instant::now();
    let started = futures::future::join_all(
        (0..n).map(|i| run_pod(rt, format!("{}-density{n}-{i}", rt.name))),
    )
    .await;
    let start_ms = t.elapsed().as_secs_f64() * 1000.0;
    let (pods, failed): (Vec<_>, Vec<_>) = started.into_iter().partition(Result::is_ok);
    let pods: Vec<String> = pods.into_iter().flatten().collect();
    // Every container counted as running by the runtime itself, not only by our calls.
    let running = rt
        .client
        .runtime()
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .with_context(|| format!("{}: ListContainers", rt.name))
        .map(|r| {
            r.into_inner()
                .containers
                .iter()
                .filter(|c| pods.contains(&c.pod_sandbox_id))
                .count()
        });
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let daemon_max_rss_kib = sampler.await;
    let t = Instant::now();
    let removed = futures::future::join_all(pods.iter().map(|p| remove_pod(rt, p))).await;
    let teardown_ms = t.elapsed().as_secs_f64() * 1000.0;
    if let Some(Err(e)) = failed.into_iter().next() {
        return Err(e.context(format!("{}: density {n}", rt.name)));
    }
    if let Some(Err(e)) = removed.into_iter().find(Result::is_err) {
        return Err(e.context(format!("{}: density {n} teardown", rt.name)));
    }
    let running = running?;
    if running != n {
        bail!("{}: density {n}: {running} containers running", rt.name);
    }
    f.density.push(Density {
        pods: n,
        start_ms,
        teardown_ms,
        daemon_max_rss_kib: daemon_max_rss_kib.context("the RSS sampler")?,
    });
    Ok(())
}

/// Stops `d` (SIGTERM: its pods keep running) and launches it again; returns the time from
/// launch to the first `Status` that reports RuntimeReady, and to the first
/// `ListPodSandbox` that lists every pod of `pods` READY: what kubelet waits for after a
/// runtime restart. Both are polled every millisecond, the list right after readiness
/// (Berth answers it only once its pods are checked, so it is true when it comes).
async fn restarted(d: &mut Daemon, pods: &[String]) -> anyhow::Result<(Duration, Duration)> {
    d.stop().await?;
    let socket = d.socket().to_path_buf();
    let t = Instant::now();
    d.spawn_again()?;
    let give_up = || -> anyhow::Result<()> {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("berth was not ready within 60 s of its restart");
        }
        Ok(())
    };
    let client = loop {
        if let Ok(client) = Client::connect(&socket).await {
            break client;
        }
        give_up()?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let mut c = client.runtime();
    let ready = loop {
        let ready = c
            .status(StatusRequest { verbose: false })
            .await
            .is_ok_and(|r| {
                r.into_inner().status.is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.r#type == "RuntimeReady" && c.status)
                })
            });
        if ready {
            break t.elapsed();
        }
        give_up()?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let listed = loop {
        let items = c
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .context("ListPodSandbox after a restart")?
            .into_inner()
            .items;
        let all_ready = pods.iter().all(|id| {
            items
                .iter()
                .any(|p| &p.id == id && p.state == PodSandboxState::SandboxReady as i32)
        });
        if all_ready {
            break t.elapsed();
        }
        give_up()?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    d.wait_serving(Duration::from_secs(5)).await?;
    Ok((ready, listed))
}

/// Restart cost as kubelet feels it (issue 20): a Berth daemon restarted with no pods, then
/// with `restart_pods` running pods (each with a container), timed from launch to
/// RuntimeReady and to the first true ListPodSandbox. Berth only: containerd restarts its
/// CRI plugin with the whole daemon, which this benchmark does not manage.
async fn restart(settings: &Settings, f: &mut Figures) -> anyhow::Result<()> {
    let mut d = Daemon::builder()
        .config("[log]\nlevel = \"warn\"")
        .start()
        .await
        .context("start berth")?;
    let rt = berth_runtime(&d)?;
    std::fs::create_dir_all(&rt.logs)?;
    pull(&rt, images::BUSYBOX).await?;
    for _ in 0..settings.restarts {
        let (ready, _) = restarted(&mut d, &[]).await?;
        f.op(RESTART_EMPTY).push_ms(ready);
    }
    // Ten at a time: the density phase measures a burst; this one only needs them running.
    let rt = berth_runtime(&d)?;
    let mut pods = Vec::new();
    let mut result = Ok(());
    'start: for first in (0..settings.restart_pods).step_by(10) {
        let last = (first + 10).min(settings.restart_pods);
        let started = futures::future::join_all(
            (first..last).map(|i| run_pod(&rt, format!("berth-restart-{i}"))),
        )
        .await;
        for r in started {
            match r {
                Ok(pod) => pods.push(pod),
                Err(e) => result = Err(e),
            }
        }
        if result.is_err() {
            break 'start;
        }
    }
    if result.is_ok() {
        for _ in 0..settings.restarts {
            match restarted(&mut d, &pods).await {
                Ok((ready, listed)) => {
                    f.op(RESTART_BUSY).push_ms(ready);
                    f.op(RESTART_LISTED).push_ms(listed);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    if d.is_running() && d.wait_serving(Duration::from_secs(5)).await.is_ok() {
        let rt = berth_runtime(&d)?;
        let removed = futures::future::join_all(pods.iter().map(|p| remove_pod(&rt, p))).await;
        if let Some(Err(e)) = removed.into_iter().find(Result::is_err) {
            result = result.and(Err(e));
        }
        d.stop().await?;
    }
    result
}

/// containerd with a private root, state, socket, bridge and CNI config, mirrors to the
/// harness registry. Stopped (by its PID) and cleaned on drop.
struct Containerd {
    child: Child,
    dir: PathBuf,
    bridge: String,
}

impl Containerd {
    async fn start(dir: &DaemonDir) -> anyhow::Result<(Containerd, Client, Duration)> {
        let env = Env::try_get()?;
        let (number, dir) = (dir.number(), dir.path());
        let socket = dir.join("containerd.sock");
        let net = dir.join("net.d");
        std::fs::create_dir_all(&net)?;
        // Its own bridge and subnet, so one containerd's cleanup leaves another's alone.
        let bridge = format!("bcbench{number}");
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0", "name": "bench",
            "plugins": [
                {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
                 "ipam": {"type": "host-local",
                          "ranges": [[{"subnet": format!("10.66.{}.0/24", number % 256)}]],
                          "routes": [{"dst": "0.0.0.0/0"}],
                          "dataDir": dir.join("ipam").display().to_string()}},
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "loopback"}
            ]
        });
        std::fs::write(net.join("10-bench.conflist"), conflist.to_string())?;
        let mut mirrors = String::new();
        for host in images::MIRRORED_HOSTS {
            mirrors.push_str(&format!(
                "[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{host}\"]\n  endpoint = [\"{}\"]\n",
                env.registry_url()
            ));
        }
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n[grpc]\n  address = \"{sock}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{pause}\"\n  restrict_oom_score_adj = true\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{net}\"\n{mirrors}",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = socket.display(),
            pause = images::PAUSE,
            net = net.display(),
        );
        // restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE (DESIGN.md, settled
        // question 8), and runc cannot lower a process's oom_score_adj without it.
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let t = Instant::now();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start containerd (apt-get install containerd runc)")?;
        let me = Containerd {
            child,
            dir: dir.to_owned(),
            bridge,
        };
        loop {
            if socket.exists()
                && let Ok(client) = Client::connect(&socket).await
                && client
                    .runtime()
                    .version(VersionRequest::default())
                    .await
                    .is_ok()
            {
                return Ok((me, client, t.elapsed()));
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!(
                    "containerd did not serve within 30 s; see {}",
                    dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        // What containerd leaves on purpose: its bridge and the mounts of its state.
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        for m in berth_e2e::leaks::mounts_under(&self.dir) {
            let _ = nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A fresh Berth daemon (empty root): launch to serving, then the cold pulls. Its root is
/// moved into `held` rather than removed (see [`cold`]).
async fn cold_berth(f: &mut Figures, held: &Path, round: usize) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut d = Daemon::builder()
        .config("[log]\nlevel = \"warn\"")
        .spawn()
        .context("start berth")?;
    // Polled every millisecond, as containerd is above.
    let socket = d.socket().to_path_buf();
    loop {
        if socket.exists()
            && let Ok(client) = Client::connect(&socket).await
            && client
                .runtime()
                .version(VersionRequest::default())
                .await
                .is_ok()
        {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("berth did not serve within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    f.op(LAUNCH).push_ms(t.elapsed());
    d.wait_serving(Duration::from_secs(5)).await?;
    // A pull on a node comes long after start-up: let the start-up reconciliation (which
    // a pull waits for) finish first.
    d.wait_runtime_ready(Duration::from_secs(30)).await?;
    let rt = berth_runtime(&d)?;
    cold_pulls(&rt, f).await?;
    d.stop().await?;
    let root = d.dir().root();
    std::fs::rename(&root, held.join(format!("berth-{round}")))
        .with_context(|| format!("move {}", root.display()))?;
    Ok(())
}

/// A fresh containerd daemon (empty root): launch to serving, then the cold pulls. Returns
/// its directory, to be removed after the phase (see [`cold`]).
async fn cold_containerd(f: &mut Figures) -> anyhow::Result<DaemonDir> {
    let dir = DaemonDir::new()?;
    let (ctd, client, launch) = Containerd::start(&dir).await?;
    f.op(LAUNCH).push_ms(launch);
    let rt = containerd_runtime(&ctd, client, &dir);
    cold_pulls(&rt, f).await?;
    drop(ctd);
    Ok(dir)
}

/// busybox (one layer) first, the daemon's first pull; then [`images::LAYERED`].
async fn cold_pulls(rt: &Runtime, f: &mut Figures) -> anyhow::Result<()> {
    settle_disk();
    let pulled = pull(rt, images::BUSYBOX).await?;
    f.op(COLD_PULL).push_ms(pulled);
    settle_disk();
    let pulled = pull(rt, images::LAYERED).await?;
    f.op(COLD_PULL_LAYERED).push_ms(pulled);
    Ok(())
}

/// How long ext4 without a journal (these machines' root file system) refuses to reuse a
/// deleted inode: until then every inode allocation in the same block group scans past
/// such inodes (`recently_deleted()` in the kernel's `find_inode_bit()`), and creating a
/// file costs up to 0.4 ms instead of 0.02 ms. Whatever deleted many files just before
/// (the benchmark's build, an earlier round's removed root) would slow down the pulls
/// measured right after it, for whichever runtime happened to run then.
const EXT4_RECENTLY_DELETED: Duration = Duration::from_secs(31);

/// The fresh daemons' directories, removed when dropped: at the end of the benchmark, since
/// deleting them would slow down whatever the next 30 s measure (see above).
struct ColdRoots {
    _berth: DaemonDir,
    _containerd: Vec<DaemonDir>,
}

/// Launch and cold pulls, alternated, each in a fresh daemon with an empty root. Runs first,
/// before anything else of the benchmark has deleted files, after the ext4 window above
/// has passed; the rounds' roots are kept until the benchmark ends.
async fn cold(
    settings: &Settings,
    berth: &mut Figures,
    mut containerd: Option<&mut Figures>,
) -> anyhow::Result<ColdRoots> {
    let registry = berth_e2e::registry::RegistryClient::new(berth_e2e::registry::REGISTRY_ADDR)?;
    images::push(&registry, &images::layered()?)
        .await
        .context("push the layered image")?;
    if !settings.smoke {
        eprintln!(
            "bench: waiting {} s for the file system to forget the build's deletions",
            EXT4_RECENTLY_DELETED.as_secs()
        );
        tokio::time::sleep(EXT4_RECENTLY_DELETED).await;
    }
    let held = DaemonDir::new()?;
    let mut containerd_dirs = Vec::new();
    for round in 0..settings.cold {
        cold_berth(berth, held.path(), round).await?;
        if let Some(f) = containerd.as_deref_mut() {
            containerd_dirs.push(cold_containerd(f).await?);
        }
    }
    Ok(ColdRoots {
        _berth: held,
        _containerd: containerd_dirs,
    })
}

/// Writes back what earlier rounds left dirty (the previous daemon's removed root, the other
/// runtime's layers), so that a cold pull's own fsyncs do not pay for it. Both runtimes get
/// the same treatment.
fn settle_disk() {
    // SAFETY: sync has no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn berth_runtime(d: &Daemon) -> anyhow::Result<Runtime> {
    let state = d.dir().state().display().to_string();
    Ok(Runtime {
        name: "berth",
        client: d.client().clone(),
        pid: d.pid().context("berth pid")?,
        logs: d.dir().path().join("pod-logs"),
        helpers: Box::new(move || processes_with(&["berth-monitor", &state])),
    })
}

fn containerd_runtime(ctd: &Containerd, client: Client, dir: &DaemonDir) -> Runtime {
    let sock = dir.path().join("containerd.sock").display().to_string();
    Runtime {
        name: "containerd",
        client,
        pid: ctd.child.id(),
        logs: dir.path().join("pod-logs"),
        // The shims are what containerd adds per pod (our pause is busybox sleep, not the
        // real 300 KiB pause binary, so it is left out: this favours containerd).
        helpers: Box::new(move || processes_with(&["containerd-shim-runc-v2", &sock])),
    }
}

/// Output of a command, trimmed; `None` if it fails.
fn command_output(program: &str, args: &[&str]) -> Option<String> {
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
fn machine(smoke: bool) -> serde_json::Value {
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
        "containerd": if smoke { None } else { command_output("containerd", &["--version"]) },
        "runc": if smoke { None } else {
            command_output("runc", &["--version"]).and_then(|v| v.lines().next().map(str::to_string))
        },
    })
}

/// Every figure, per runtime, with the machine and the settings.
fn json(settings: &Settings, runs: &[(&Runtime, Figures)]) -> serde_json::Value {
    let ops = |f: &Figures| -> Vec<serde_json::Value> {
        OPS.iter()
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
            }),
        );
    }
    let ratios: Vec<serde_json::Value> = match runs {
        [(_, b), (_, c)] => OPS
            .iter()
            .filter_map(|op| {
                let (b, c) = (b.summary(op)?, c.summary(op)?);
                Some(serde_json::json!({
                    "op": op,
                    "min": ratio(Some(b.min), Some(c.min)),
                    "median": ratio(Some(b.median), Some(c.median)),
                    "p90": ratio(Some(b.p90), Some(c.p90)),
                }))
            })
            .collect(),
        _ => Vec::new(),
    };
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
            "alternated": true,
        },
        "runtimes": runtimes,
        "ratios_berth_over_containerd": ratios,
    })
}

fn row(out: &mut String, name: &str, cells: &[String]) {
    out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
}

fn header(out: &mut String, first: &str, columns: &[&str]) {
    out.push_str(&format!(
        "\n| {first} | {} |\n|---|{}\n",
        columns.join(" | "),
        "---|".repeat(columns.len())
    ));
}

fn three(s: Option<Summary>) -> String {
    s.map_or("—".into(), |s| {
        format!("{:.2} / {:.2} / {:.2}", s.min, s.median, s.p90)
    })
}

fn times(r: Option<f64>) -> String {
    r.map_or("—".into(), |r| format!("{r:.2}"))
}

/// The Markdown report: every op as min / median / p90, density, memory, and (with two
/// runtimes) the Berth / containerd ratios.
fn markdown(settings: &Settings, runs: &[(&Runtime, Figures)]) -> String {
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
    header(&mut out, "ms: min / median / p90", &names);
    for op in OPS {
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
    if let [(_, b), (_, c)] = runs {
        header(&mut out, "berth / containerd", &["min", "median", "p90"]);
        for op in OPS {
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

fn svg(runs: &[(&Runtime, Figures)]) -> String {
    let rows: Vec<(&str, Vec<Series<'_>>)> = OPS
        .iter()
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
            (*op, series)
        })
        .collect();
    let names: Vec<&str> = runs.iter().map(|(rt, _)| rt.name).collect();
    let title = format!("CRI latency, ms (log scale): {}", names.join(" and "));
    latency_svg(&title, &rows)
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
    let settings = Settings::parse(&args)?;

    let mut berth_figures = Figures::default();
    let mut containerd_figures = Figures::default();
    let cold_roots = cold(
        &settings,
        &mut berth_figures,
        (!settings.smoke).then_some(&mut containerd_figures),
    )
    .await?;

    let berth = Daemon::builder()
        .config("[log]\nlevel = \"warn\"")
        .start()
        .await
        .context("start berth")?;
    let mut runs: Vec<(Runtime, Figures)> = vec![(berth_runtime(&berth)?, berth_figures)];
    let containerd_dir;
    let mut containerd = None;
    if !settings.smoke {
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
    // Alternated: Berth, containerd, Berth, ... so both see the same noise.
    for i in 0..settings.iterations {
        for (rt, f) in &mut runs {
            lifecycle(rt, i, f).await?;
            image_ops(rt, f).await?;
        }
    }
    for (rt, f) in &mut runs {
        memory(rt, settings.pods, f).await?;
    }
    for &n in &settings.density {
        for (rt, f) in &mut runs {
            density(rt, n, f).await?;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (rt, f) in &mut runs {
        f.idle_rss_after_kib = smaps_rollup(rt.pid).0;
    }
    restart(&settings, &mut runs[0].1).await?;
    drop(containerd);
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
            "--json",
            "/tmp/r.json",
            "--svg",
            "/tmp/l.svg",
        ])
        .unwrap();
        assert_eq!((s.iterations, s.pods, s.cold), (3, 4, 3));
        assert_eq!(s.density, vec![5, 50]);
        assert_eq!(s.json, Path::new("/tmp/r.json"));
        assert_eq!(s.svg, Path::new("/tmp/l.svg"));
    }

    #[test]
    fn smoke_runs_everything_once_with_small_density() {
        let s = parse(&["--smoke", "--iterations", "50", "--density", "100"]).unwrap();
        assert_eq!((s.iterations, s.pods, s.cold), (1, 2, 1));
        assert_eq!(s.density, vec![3]);
        assert_eq!((s.restarts, s.restart_pods), (1, 5));
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["--iterations"]).is_err());
        assert!(parse(&["--iterations", "many"]).is_err());
        assert!(parse(&["--density", "20,x"]).is_err());
        assert!(parse(&["--pod", "3"]).is_err());
    }

    #[test]
    fn kib_fields_are_read_from_proc_text() {
        let status = "Name:\tberth\nVmRSS:\t   30092 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), 30092);
        assert_eq!(kib_field(status, "VmHWM:"), 0);
    }
}
