//! The kill -9 chaos test (issue 10): workers drive pod and container lifecycles, execs and
//! image pulls and removals at once while the daemon is killed with SIGKILL at random
//! moments and restarted. After every restart the invariants must hold: every pod and
//! container whose creation was confirmed is still there (unless its removal was
//! confirmed), ready pods have distinct addresses, running containers answer ExecSync, and
//! nothing half-made is visible. At the end everything is removed and the harness asserts
//! that no process, mount, namespace, link or cgroup is left; the test itself asserts that
//! no run directory, writable layer or snapshot is.
//!
//! `BERTH_CHAOS_KILLS` (default 30) sets the number of kills and `BERTH_CHAOS_SEED` the seed
//! (default: from the clock), printed for replay. The long run: `bash scripts/chaos.sh 500`
//! (see the README).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_e2e::fixtures::{container_config, pod_config};
use berth_e2e::{Daemon, images};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

/// splitmix64: small, seedable, good enough to pick delays and operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the test knows for sure: creations and removals the daemon confirmed.
#[derive(Default)]
struct Model {
    /// Confirmed pods (id -> name), minus confirmed removals.
    pods: BTreeMap<String, String>,
    /// Confirmed containers (id -> pod id), minus confirmed removals.
    containers: BTreeMap<String, String>,
    /// Pods a worker is tearing down: they may be half-stopped after a kill.
    stopping: BTreeSet<String>,
    cycles: u64,
    ops: u64,
}

type Shared = Arc<Mutex<Model>>;

/// At most this many pods are kept running across kills.
const KEEP_PODS: usize = 40;

fn lock(m: &Shared) -> std::sync::MutexGuard<'_, Model> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One worker's life until the daemon dies under it: pod cycles with a container and an
/// exec, or image pulls and removals. Errors end the worker (the daemon is gone).
async fn worker(
    mut rt: RuntimeServiceClient<Channel>,
    mut img: k8s_cri::v1::image_service_client::ImageServiceClient<Channel>,
    model: Shared,
    log_dir: std::path::PathBuf,
    tag: String,
    seed: u64,
) {
    let mut rng = Rng(seed);
    for round in 0.. {
        lock(&model).ops += 1;
        if rng.below(5) == 0 {
            let image = images::BUSYBOX_K8S.to_string();
            let spec = Some(ImageSpec {
                image: image.clone(),
                ..Default::default()
            });
            let pull = img
                .pull_image(PullImageRequest {
                    image: spec.clone(),
                    ..Default::default()
                })
                .await;
            if pull.is_err() {
                return;
            }
            if img
                .remove_image(RemoveImageRequest { image: spec })
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let name = format!("{tag}-{round}");
        let config = pod_config(&name, &log_dir);
        let Ok(pod) = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                ..Default::default()
            })
            .await
        else {
            return;
        };
        let pod_id = pod.into_inner().pod_sandbox_id;
        lock(&model).pods.insert(pod_id.clone(), name.clone());
        let Ok(c) = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(container_config("main", &["sleep", "3600"])),
                sandbox_config: Some(config.clone()),
            })
            .await
        else {
            return;
        };
        let cid = c.into_inner().container_id;
        lock(&model).containers.insert(cid.clone(), pod_id.clone());
        if rt
            .start_container(StartContainerRequest {
                container_id: cid.clone(),
            })
            .await
            .is_err()
        {
            return;
        }
        match rt
            .exec_sync(ExecSyncRequest {
                container_id: cid.clone(),
                cmd: vec!["echo".into(), name.clone()],
                timeout: 10,
            })
            .await
        {
            Ok(r) => assert_eq!(
                String::from_utf8_lossy(&r.get_ref().stdout),
                format!("{name}\n"),
                "exec output"
            ),
            Err(_) => return,
        }
        // Keep some pods across kills (up to a few dozen); tear the others down.
        if rng.below(3) == 0 && lock(&model).pods.len() < KEEP_PODS {
            continue;
        }
        lock(&model).stopping.insert(pod_id.clone());
        if rt
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            })
            .await
            .is_err()
        {
            return;
        }
        if rt
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            })
            .await
            .is_err()
        {
            return;
        }
        let mut m = lock(&model);
        m.pods.remove(&pod_id);
        m.containers.remove(&cid);
        m.stopping.remove(&pod_id);
        m.cycles += 1;
    }
}

/// `berth debug leaks` beside the running daemon must find nothing.
async fn assert_no_leaks(d: &Daemon, when: &str) {
    let out = berth_e2e::run_berth(
        [
            "--config".into(),
            d.config_path().as_os_str().to_owned(),
            "debug".into(),
            "leaks".into(),
        ],
        Duration::from_secs(60),
    )
    .await
    .expect("berth debug leaks");
    assert!(
        out.status.success(),
        "{when}: berth debug leaks found:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks what the restarted daemon reports against what was confirmed.
async fn check_invariants(d: &Daemon, model: &Shared, kill: u64) {
    let mut rt = d.runtime();
    let pods = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    let containers = rt
        .list_containers(ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    let listed: BTreeSet<&str> = pods.iter().map(|p| p.id.as_str()).collect();
    let listed_containers: BTreeSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
    let (want_pods, want_containers, stopping) = {
        let m = lock(model);
        (m.pods.clone(), m.containers.clone(), m.stopping.clone())
    };
    for (id, name) in &want_pods {
        // A removal that was under way may have finished before the kill.
        if stopping.contains(id) {
            continue;
        }
        assert!(
            listed.contains(id.as_str()),
            "kill {kill}: confirmed pod {name} ({id}) was lost"
        );
    }
    for (id, pod) in &want_containers {
        // A pod's removal takes its containers first: cut short, the pod stays without them.
        if stopping.contains(pod) {
            continue;
        }
        assert!(
            listed_containers.contains(id.as_str()),
            "kill {kill}: confirmed container {id} of pod {pod} was lost"
        );
    }
    let mut ips = BTreeMap::new();
    for pod in &pods {
        let status = rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose: false,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner()
            .status
            .expect("a status");
        if status.state != PodSandboxState::SandboxReady as i32 {
            assert!(
                stopping.contains(&pod.id) || !want_pods.contains_key(&pod.id),
                "kill {kill}: pod {} is not ready and nobody stopped it",
                pod.id
            );
            continue;
        }
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        assert!(
            !ip.is_empty(),
            "kill {kill}: ready pod {} has no IP",
            pod.id
        );
        if let Some(other) = ips.insert(ip.clone(), pod.id.clone()) {
            panic!("kill {kill}: pods {other} and {} share {ip}", pod.id);
        }
    }
    for c in &containers {
        if c.state == ContainerState::ContainerRunning as i32 {
            assert!(
                ips.values().any(|p| p == &c.pod_sandbox_id),
                "kill {kill}: container {} runs in a pod that is not ready",
                c.id
            );
            let r = rt
                .exec_sync(ExecSyncRequest {
                    container_id: c.id.clone(),
                    cmd: vec!["true".into()],
                    timeout: 10,
                })
                .await
                .unwrap_or_else(|e| panic!("kill {kill}: exec in {}: {e:?}", c.id));
            assert_eq!(r.into_inner().exit_code, 0);
        }
    }
}

/// What kubelet does after a runtime restart: pods it never heard of (their RunPodSandbox
/// answer was lost with the daemon) and pods whose removal was cut short are removed.
async fn collect_garbage(d: &Daemon, model: &Shared) {
    let pods = d
        .runtime()
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    for pod in pods {
        let (known, stopping) = {
            let m = lock(model);
            (m.pods.contains_key(&pod.id), m.stopping.contains(&pod.id))
        };
        if !known || stopping {
            berth_e2e::fixtures::remove_pod(d, &pod.id).await;
        }
    }
    let mut m = lock(model);
    let gone: Vec<String> = m.stopping.iter().cloned().collect();
    for id in gone {
        m.pods.remove(&id);
        m.containers.retain(|_, pod| pod != &id);
    }
    m.stopping.clear();
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn kill_9_at_random_moments_loses_nothing_and_leaks_nothing() {
    const WORKERS: u64 = 4;
    let kills = env_u64("BERTH_CHAOS_KILLS").unwrap_or(30);
    let seed = env_u64("BERTH_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!("chaos: {kills} kills, BERTH_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);
    let mut d = Daemon::start().await.expect("daemon");
    berth_e2e::fixtures::pull(&d, images::BUSYBOX).await;
    let log_dir = d.dir().path().join("pod-logs");
    let model: Shared = Arc::default();
    let started = Instant::now();
    for kill in 0..kills {
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                tokio::spawn(worker(
                    d.runtime(),
                    d.images(),
                    model.clone(),
                    log_dir.clone(),
                    format!("k{kill}w{w}"),
                    rng.next(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50 + rng.below(700))).await;
        d.kill().await.expect("SIGKILL the daemon");
        for w in workers {
            if let Err(e) = w.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        d.start_again().await.expect("restart");
        d.wait_runtime_ready(Duration::from_secs(60))
            .await
            .expect("runtime ready after restart");
        check_invariants(&d, &model, kill).await;
        assert_no_leaks(&d, &format!("after kill {kill}")).await;
        collect_garbage(&d, &model).await;
    }

    // Everything goes; nothing may stay behind.
    let mut rt = d.runtime();
    let pods = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    for pod in &pods {
        berth_e2e::fixtures::remove_pod(&d, &pod.id).await;
    }
    let mut img = d.images();
    for image in img
        .list_images(ListImagesRequest::default())
        .await
        .expect("ListImages")
        .into_inner()
        .images
    {
        img.remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.id,
                ..Default::default()
            }),
        })
        .await
        .expect("RemoveImage");
    }
    assert_no_leaks(&d, "after removing everything").await;
    let (cycles, ops) = {
        let m = lock(&model);
        (m.cycles, m.ops)
    };
    eprintln!(
        "chaos: {kills} kills, {cycles} pod cycles, {ops} operations, {} pods at the end, {:.1} s, seed {seed}",
        pods.len(),
        started.elapsed().as_secs_f64()
    );
    d.stop().await.expect("stop");
    // A fresh start garbage-collects what the removals left for later.
    d.start_again().await.expect("start for the final check");
    d.wait_runtime_ready(Duration::from_secs(60))
        .await
        .expect("ready");
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.stop().await.expect("stop");
    let state = d.dir().state();
    let root = d.dir().root();
    assert_eq!(
        entries(&state.join("pods")),
        Vec::<String>::new(),
        "pod run dirs"
    );
    assert_eq!(
        entries(&state.join("containers")),
        Vec::<String>::new(),
        "container run dirs"
    );
    assert_eq!(
        entries(&root.join("containers")),
        Vec::<String>::new(),
        "writable layers"
    );
    assert_eq!(
        entries(&root.join("snapshots")),
        Vec::<String>::new(),
        "snapshots"
    );
}
