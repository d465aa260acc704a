//! The side-by-side benchmark (issue 11): Berth and containerd (Debian's 1.6, with runc) on
//! the same machine, driven over their CRI sockets by the same Rust client, inside the
//! harness's node namespace with its loopback registry. Run by `scripts/bench.sh`; prints
//! a Markdown report (the figures SPECIFICATION.md records).
//!
//! Usage (inside the harness): `bench [--smoke] [--iterations N] [--pods N]`. `--smoke`
//! runs Berth alone, once, and checks only that every step works (CI runs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_e2e::fixtures::{container_config, pod_config};
use berth_e2e::{Client, Daemon, DaemonDir, Env, images};
use k8s_cri::v1::*;

/// One runtime under test.
struct Runtime {
    name: &'static str,
    client: Client,
    pid: u32,
}

/// Timings of one CRI call, in milliseconds.
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1000.0);
    }
    fn quantile(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    }
}

const CALLS: [&str; 12] = [
    "PullImage (cold: a fresh daemon, empty store)",
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "pod ready (run+create+start)",
    "ContainerStatus",
    "ListContainers",
    "ExecSync",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
];

/// What one runtime measured.
struct Report {
    calls: Vec<Samples>,
    idle_rss_kib: u64,
    idle_rss_after_kib: u64,
    per_pod_rss_kib: f64,
    per_pod_pss_kib: f64,
    launch: Samples,
}

fn smaps_rollup(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
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

async fn pull(rt: &Runtime, image: &str) -> anyhow::Result<Duration> {
    let spec = Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    });
    let mut images = rt.client.images();
    images
        .remove_image(RemoveImageRequest {
            image: spec.clone(),
        })
        .await
        .ok();
    let t = Instant::now();
    images
        .pull_image(PullImageRequest {
            image: spec,
            ..Default::default()
        })
        .await
        .with_context(|| format!("{}: pull {image}", rt.name))?;
    Ok(t.elapsed())
}

/// Runs `n` pod lifecycles and `pods` pods at once; measures calls and memory.
async fn measure(
    rt: &Runtime,
    n: usize,
    pods: usize,
    per_pod: impl Fn(&[String]) -> Vec<u32>,
) -> anyhow::Result<Report> {
    let mut calls: Vec<Samples> = CALLS.iter().map(|_| Samples::default()).collect();
    let idle_rss_kib = smaps_rollup(rt.pid).0;
    pull(rt, images::BUSYBOX).await?;
    let mut c = rt.client.runtime();
    let logs = std::env::temp_dir().join(format!("berth-bench-logs-{}", rt.name));
    let timed = |i: usize, calls: &mut Vec<Samples>, t: Instant| calls[i].push(t.elapsed());
    for i in 0..n {
        let config = pod_config(&format!("{}-bench-{i}", rt.name), &logs);
        let t0 = Instant::now();
        let pod = c
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("{}: RunPodSandbox: {e:?}", rt.name))?
            .into_inner()
            .pod_sandbox_id;
        timed(1, &mut calls, t0);
        let t = Instant::now();
        let id = c
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config("c", &["sleep", "3600"])),
                sandbox_config: Some(config),
            })
            .await
            .map_err(|e| anyhow::anyhow!("{}: CreateContainer: {e:?}", rt.name))?
            .into_inner()
            .container_id;
        timed(2, &mut calls, t);
        let t = Instant::now();
        c.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("{}: StartContainer: {e:?}", rt.name))?;
        timed(3, &mut calls, t);
        timed(4, &mut calls, t0);
        let t = Instant::now();
        c.container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await?;
        timed(5, &mut calls, t);
        let t = Instant::now();
        c.list_containers(ListContainersRequest::default()).await?;
        timed(6, &mut calls, t);
        let t = Instant::now();
        let out = c
            .exec_sync(ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["true".into()],
                timeout: 30,
            })
            .await?
            .into_inner();
        if out.exit_code != 0 {
            bail!("{}: exec exited {}", rt.name, out.exit_code);
        }
        timed(7, &mut calls, t);
        let t = Instant::now();
        c.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await?;
        timed(8, &mut calls, t);
        let t = Instant::now();
        c.remove_container(RemoveContainerRequest { container_id: id })
            .await?;
        timed(9, &mut calls, t);
        let t = Instant::now();
        c.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?;
        timed(10, &mut calls, t);
        let t = Instant::now();
        c.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await?;
        timed(11, &mut calls, t);
    }
    // Memory: `pods` pods with a container each, then what the runtime added per pod.
    let mut ids = Vec::new();
    for i in 0..pods {
        let config = pod_config(&format!("{}-mem-{i}", rt.name), &logs);
        let pod = c
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                ..Default::default()
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
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
            .await?;
        ids.push(pod);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let helpers = per_pod(&ids);
    let (rss, pss) = helpers
        .iter()
        .map(|&p| smaps_rollup(p))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let per = pods.max(1) as f64;
    for pod in &ids {
        c.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?;
        c.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(Report {
        calls,
        idle_rss_kib,
        idle_rss_after_kib: smaps_rollup(rt.pid).0,
        per_pod_rss_kib: rss as f64 / per,
        per_pod_pss_kib: pss as f64 / per,
        launch: Samples::default(),
    })
}

/// containerd with a private root, state, socket and CNI config, mirrors to the harness
/// registry. Stopped (by its PID) and cleaned on drop.
struct Containerd {
    child: Child,
    dir: PathBuf,
    bridge: String,
}

impl Containerd {
    async fn start(dir: &Path) -> anyhow::Result<(Containerd, Client, Duration)> {
        let env = Env::try_get()?;
        let socket = dir.join("containerd.sock");
        let net = dir.join("net.d");
        std::fs::create_dir_all(&net)?;
        let bridge = "bcbench0".to_string();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0", "name": "bench",
            "plugins": [
                {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.66.0.0/16"}]],
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

/// Fresh Berth daemons (empty root each): launch to serving, then a cold pull.
async fn cold_berth(n: usize) -> anyhow::Result<(Samples, Samples)> {
    let (mut pulls, mut launches) = (Samples::default(), Samples::default());
    for _ in 0..n {
        let t = Instant::now();
        let mut d = Daemon::builder()
            .config("[log]\nlevel = \"warn\"")
            .spawn()
            .context("start berth")?;
        // Polled every millisecond, as containerd is below.
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
        launches.push(t.elapsed());
        d.wait_serving(Duration::from_secs(5)).await?;
        // A pull on a node comes long after start-up: let the start-up reconciliation
        // (which a pull waits for) finish first.
        d.wait_runtime_ready(Duration::from_secs(30)).await?;
        let rt = Runtime {
            name: "berth",
            client: d.client().clone(),
            pid: d.pid().context("berth pid")?,
        };
        pulls.push(pull(&rt, images::BUSYBOX).await?);
    }
    Ok((pulls, launches))
}

/// Fresh containerd daemons (empty root each): launch to serving, then a cold pull.
async fn cold_containerd(n: usize) -> anyhow::Result<(Samples, Samples)> {
    let (mut pulls, mut launches) = (Samples::default(), Samples::default());
    for _ in 0..n {
        let dir = DaemonDir::new()?;
        let (ctd, client, launch) = Containerd::start(dir.path()).await?;
        launches.push(launch);
        let rt = Runtime {
            name: "containerd",
            client,
            pid: ctd.child.id(),
        };
        pulls.push(pull(&rt, images::BUSYBOX).await?);
        drop(ctd);
    }
    Ok((pulls, launches))
}

fn row(out: &mut String, name: &str, cells: &[String]) {
    out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = if smoke { 1 } else { flag("--iterations", 20) };
    let pods = if smoke { 2 } else { flag("--pods", 10) };

    let cold = if smoke { 1 } else { n.min(10) };
    let berth = Daemon::builder()
        .config("[log]\nlevel = \"warn\"")
        .start()
        .await
        .context("start berth")?;
    let state = berth.dir().state();
    let rt = Runtime {
        name: "berth",
        client: berth.client().clone(),
        pid: berth.pid().context("berth pid")?,
    };
    let mut berth_report = measure(&rt, n, pods, |_| {
        processes_with(&["berth-monitor", &state.display().to_string()])
    })
    .await?;
    drop(berth);
    (berth_report.calls[0], berth_report.launch) = cold_berth(cold).await?;
    let mut reports = vec![("berth", berth_report)];
    let _containerd_dir;
    if !smoke {
        let dir = DaemonDir::new()?;
        let (ctd, client, _) = Containerd::start(dir.path()).await?;
        let rt = Runtime {
            name: "containerd",
            client,
            pid: ctd.child.id(),
        };
        pull(&rt, images::PAUSE).await?;
        let sock = dir.path().join("containerd.sock").display().to_string();
        let mut report = measure(&rt, n, pods, |_| {
            // The shims are what containerd adds per pod (our pause is busybox sleep, not
            // the real 300 KiB pause binary, so it is left out: this favours containerd).
            processes_with(&["containerd-shim-runc-v2", &sock])
        })
        .await?;
        drop(ctd);
        _containerd_dir = dir;
        (report.calls[0], report.launch) = cold_containerd(cold).await?;
        reports.push(("containerd", report));
    }

    let mut out = String::new();
    let names: Vec<String> = reports.iter().map(|(n, _)| n.to_string()).collect();
    out.push_str(&format!(
        "## {} iterations, {pods} pods for memory\n\n| median ms (p90) | {} |{}\n|---|{}{}\n",
        n,
        names.join(" | "),
        if reports.len() == 2 {
            " berth / containerd |"
        } else {
            ""
        },
        "---|".repeat(names.len()),
        if reports.len() == 2 { "---|" } else { "" },
    ));
    for (i, call) in CALLS.iter().enumerate() {
        let mut cells: Vec<String> = reports
            .iter()
            .map(|(_, r)| {
                format!(
                    "{:.2} ({:.2})",
                    r.calls[i].quantile(0.5),
                    r.calls[i].quantile(0.9)
                )
            })
            .collect();
        if reports.len() == 2 {
            cells.push(format!(
                "{:.2}",
                reports[0].1.calls[i].quantile(0.5) / reports[1].1.calls[i].quantile(0.5)
            ));
        }
        row(&mut out, call, &cells);
    }
    let fig = |f: &dyn Fn(&Report) -> String| -> Vec<String> {
        reports.iter().map(|(_, r)| f(r)).collect()
    };
    out.push('\n');
    out.push_str(&format!(
        "| memory and start | {} |\n|---|{}\n",
        names.join(" | "),
        "---|".repeat(names.len())
    ));
    row(
        &mut out,
        "per pod RSS KiB",
        &fig(&|r| format!("{:.0}", r.per_pod_rss_kib)),
    );
    row(
        &mut out,
        "per pod PSS KiB",
        &fig(&|r| format!("{:.0}", r.per_pod_pss_kib)),
    );
    row(
        &mut out,
        "daemon RSS KiB, idle after start",
        &fig(&|r| r.idle_rss_kib.to_string()),
    );
    row(
        &mut out,
        "daemon RSS KiB, idle after the pods",
        &fig(&|r| r.idle_rss_after_kib.to_string()),
    );
    row(
        &mut out,
        "launch to serving ms, median (p90)",
        &fig(&|r| {
            format!(
                "{:.1} ({:.1})",
                r.launch.quantile(0.5),
                r.launch.quantile(0.9)
            )
        }),
    );
    println!("{out}");
    if smoke {
        eprintln!("bench: smoke run passed (figures not checked)");
    }
    Ok(())
}
