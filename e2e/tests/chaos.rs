//! The kill -9 chaos test: workers drive pod and container lifecycles
//! (create, start, exec, stop and remove containers, stop and remove pods), image pulls and
//! removals at once while the daemon is killed with SIGKILL at random moments and
//! restarted. After every restart the invariants must hold: every acknowledged creation
//! exists in its acknowledged state, every acknowledged removal is absent (lists and Status
//! calls), nothing unknown exists (an unknown pod is a failure, never collected quietly), a
//! call cut short left the state before it or one it may reach, ready pods have distinct
//! addresses and running containers answer ExecSync. At the end everything is removed, the
//! daemon killed once more and the removals checked again; the harness asserts that no
//! process, mount, namespace, link or cgroup is left; the test itself asserts that no run
//! directory, writable layer or snapshot is.
//!
//! `BERTH_CHAOS_KILLS` (default 30) sets the number of kills and `BERTH_CHAOS_SEED` the seed
//! (default: from the clock), printed for replay. The long run: `bash scripts/chaos.sh 500`
//! (see the README).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_e2e::fixtures::{
    busybox_daemon, container_config, container_status, container_status_refused, log_dir,
    pod_config, pod_status, remove_pod, run_pod, start, try_container_status, try_pod_status,
    wait_exited,
};
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

/// A pod's state as kubelet reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PodState {
    Ready,
    NotReady,
}

/// A container's state as kubelet reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CtrState {
    Created,
    Running,
    Exited,
}

/// One object the workers made or asked for, and what the daemon may show of it: `None`
/// is absent (never made, or removed).
#[derive(Clone, Debug)]
struct Entry<S> {
    id: Option<String>,
    /// One state once the daemon answered; while a call is unanswered (the daemon died
    /// under it), the state before it and those it may have reached.
    may_be: Vec<Option<S>>,
    /// The daemon acknowledged its removal.
    removal_acked: bool,
    /// That removal was seen to hold after a restart.
    removal_checked: bool,
}

impl<S: Copy + PartialEq + std::fmt::Debug> Entry<S> {
    fn new() -> Self {
        Entry {
            id: None,
            may_be: vec![None],
            removal_acked: false,
            removal_checked: false,
        }
    }

    /// A call that may move it to one of `after` is sent.
    fn begin(&mut self, after: &[Option<S>]) {
        for a in after {
            if !self.may_be.contains(a) {
                self.may_be.push(*a);
            }
        }
    }

    /// The daemon acknowledged (or a restart showed) `state`.
    fn is(&mut self, state: Option<S>) {
        self.may_be = vec![state];
    }

    fn state(&self) -> Option<S> {
        self.may_be[0]
    }

    /// Its removal was acknowledged, and is not checked yet.
    fn removal_to_check(&self) -> bool {
        self.removal_acked && !self.removal_checked && self.may_be == [None]
    }

    /// Checks what a restart showed of it (`what`, after kill `kill`) against what it may
    /// be: an acknowledged removal seen again is resurrected, any other surprise lost. Then
    /// takes `observed` as known. Returns whether this checked its acknowledged removal for
    /// the first time.
    fn observe(&mut self, what: &str, kill: u64, observed: Option<S>, v: &mut Violations) -> bool {
        if !self.may_be.contains(&observed) {
            let found = format!(
                "kill {kill}: {what} ({:?}) is {observed:?}, may be {:?}",
                self.id, self.may_be
            );
            if observed.is_some() && self.may_be == [None] {
                v.resurrected.push(found);
            } else {
                v.lost.push(found);
            }
        }
        let removal_checked = self.removal_to_check();
        if removal_checked {
            self.removal_checked = true;
        }
        self.is(observed);
        removal_checked
    }
}

/// What the test knows: every pod and container the workers asked for, by name, and the
/// figures the run reports.
#[derive(Default)]
struct Model {
    /// Pods by name (names are unique in the run).
    pods: BTreeMap<String, Entry<PodState>>,
    /// Containers by `pod name/container name`.
    ctrs: BTreeMap<String, Entry<CtrState>>,
    cycles: u64,
    /// CRI calls the workers sent.
    ops: u64,
    /// Removals the daemon acknowledged (pods and containers).
    removals: u64,
    /// Acknowledged removals seen absent after a restart.
    removals_checked: u64,
}

impl Model {
    fn pod(&mut self, name: &str) -> &mut Entry<PodState> {
        self.pods.entry(name.to_owned()).or_insert_with(Entry::new)
    }

    fn ctr(&mut self, key: &str) -> &mut Entry<CtrState> {
        self.ctrs.entry(key.to_owned()).or_insert_with(Entry::new)
    }

    /// The containers of pod `name` that exist (or may).
    fn ctrs_of(&self, name: &str) -> Vec<String> {
        let prefix = format!("{name}/");
        self.ctrs
            .iter()
            .filter(|(k, e)| k.starts_with(&prefix) && e.may_be.iter().any(Option::is_some))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn ready_pods(&self) -> usize {
        self.pods
            .values()
            .filter(|e| e.may_be == [Some(PodState::Ready)])
            .count()
    }
}

type Shared = Arc<Mutex<Model>>;

/// At most this many pods are kept running across kills.
const KEEP_PODS: usize = 40;

fn lock(m: &Shared) -> std::sync::MutexGuard<'_, Model> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The calls a worker makes, each recorded in the model before it is sent and after it is
/// answered. Any error means the daemon died: the worker ends, its call left unanswered.
struct Calls {
    rt: RuntimeServiceClient<Channel>,
    model: Shared,
}

type Step<T> = Result<T, tonic::Status>;

impl Calls {
    fn count(&self) {
        lock(&self.model).ops += 1;
    }

    async fn run_pod(&mut self, name: &str, config: &PodSandboxConfig) -> Step<String> {
        self.count();
        lock(&self.model).pod(name).begin(&[Some(PodState::Ready)]);
        let id = self
            .rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                ..Default::default()
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let mut m = lock(&self.model);
        let e = m.pod(name);
        e.id = Some(id.clone());
        e.is(Some(PodState::Ready));
        Ok(id)
    }

    async fn create(
        &mut self,
        key: &str,
        pod_id: &str,
        pod: &PodSandboxConfig,
        name: &str,
    ) -> Step<String> {
        self.count();
        lock(&self.model).ctr(key).begin(&[Some(CtrState::Created)]);
        let id = self
            .rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(container_config(name, &["sleep", "3600"])),
                sandbox_config: Some(pod.clone()),
            })
            .await?
            .into_inner()
            .container_id;
        let mut m = lock(&self.model);
        let e = m.ctr(key);
        e.id = Some(id.clone());
        e.is(Some(CtrState::Created));
        Ok(id)
    }

    async fn start(&mut self, key: &str, id: &str) -> Step<()> {
        self.count();
        lock(&self.model).ctr(key).begin(&[Some(CtrState::Running)]);
        self.rt
            .start_container(StartContainerRequest {
                container_id: id.into(),
            })
            .await?;
        lock(&self.model).ctr(key).is(Some(CtrState::Running));
        Ok(())
    }

    async fn stop_ctr(&mut self, key: &str, id: &str) -> Step<()> {
        self.count();
        lock(&self.model).ctr(key).begin(&[Some(CtrState::Exited)]);
        self.rt
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout: 0,
            })
            .await?;
        lock(&self.model).ctr(key).is(Some(CtrState::Exited));
        Ok(())
    }

    async fn remove_ctr(&mut self, key: &str, id: &str) -> Step<()> {
        self.count();
        // A running container is killed first: cut short, it may be left exited.
        lock(&self.model)
            .ctr(key)
            .begin(&[Some(CtrState::Exited), None]);
        self.rt
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await?;
        let mut m = lock(&self.model);
        let e = m.ctr(key);
        e.is(None);
        e.removal_acked = e.id.is_some();
        m.removals += 1;
        Ok(())
    }

    async fn stop_pod(&mut self, name: &str, id: &str) -> Step<()> {
        self.count();
        {
            let mut m = lock(&self.model);
            m.pod(name).begin(&[Some(PodState::NotReady)]);
            for k in m.ctrs_of(name) {
                m.ctr(&k).begin(&[Some(CtrState::Exited)]);
            }
        }
        self.rt
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await?;
        let mut m = lock(&self.model);
        m.pod(name).is(Some(PodState::NotReady));
        for k in m.ctrs_of(name) {
            m.ctr(&k).is(Some(CtrState::Exited));
        }
        Ok(())
    }

    async fn remove_pod(&mut self, name: &str, id: &str) -> Step<()> {
        self.count();
        {
            let mut m = lock(&self.model);
            m.pod(name).begin(&[None]);
            for k in m.ctrs_of(name) {
                m.ctr(&k).begin(&[None]);
            }
        }
        self.rt
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await?;
        let mut m = lock(&self.model);
        let ctrs = m.ctrs_of(name);
        for k in &ctrs {
            let e = m.ctr(k);
            e.is(None);
            e.removal_acked = e.id.is_some();
        }
        let e = m.pod(name);
        e.is(None);
        e.removal_acked = e.id.is_some();
        m.removals += 1 + ctrs.len() as u64;
        Ok(())
    }
}

/// One worker's life until the daemon dies under it: pod cycles in which containers are
/// created, started, exec'd into, stopped and removed, pods kept or stopped and removed;
/// or image pulls and removals.
async fn worker(
    rt: RuntimeServiceClient<Channel>,
    mut img: k8s_cri::v1::image_service_client::ImageServiceClient<Channel>,
    model: Shared,
    log_dir: std::path::PathBuf,
    tag: String,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let mut calls = Calls { rt, model };
    for round in 0.. {
        if rng.below(5) == 0 {
            calls.count();
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
            calls.count();
            if img
                .remove_image(RemoveImageRequest { image: spec })
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        if pod_cycle(&mut calls, &mut rng, &log_dir, &format!("{tag}-{round}"))
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn pod_cycle(calls: &mut Calls, rng: &mut Rng, log_dir: &Path, name: &str) -> Step<()> {
    let config = pod_config(name, log_dir);
    let pod_id = calls.run_pod(name, &config).await?;
    let main = format!("{name}/main");
    let cid = calls.create(&main, &pod_id, &config, "main").await?;
    calls.start(&main, &cid).await?;
    calls.count();
    let r = calls
        .rt
        .exec_sync(ExecSyncRequest {
            container_id: cid.clone(),
            cmd: vec!["echo".into(), name.into()],
            timeout: 10,
        })
        .await?;
    assert_eq!(
        String::from_utf8_lossy(&r.get_ref().stdout),
        format!("{name}\n"),
        "exec output"
    );
    let keep = lock(&calls.model).ready_pods() < KEEP_PODS;
    match rng.below(6) {
        // Kept running across kills.
        0 | 1 if keep => return Ok(()),
        // The container is replaced; the pod stays.
        2 if keep => {
            calls.stop_ctr(&main, &cid).await?;
            calls.remove_ctr(&main, &cid).await?;
            let second = format!("{name}/second");
            let id = calls.create(&second, &pod_id, &config, "second").await?;
            calls.start(&second, &id).await?;
            return Ok(());
        }
        3 => calls.stop_ctr(&main, &cid).await?,
        4 => calls.remove_ctr(&main, &cid).await?,
        _ => {}
    }
    calls.stop_pod(name, &pod_id).await?;
    calls.remove_pod(name, &pod_id).await?;
    lock(&calls.model).cycles += 1;
    Ok(())
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

/// What one restart's check found wrong, by kind.
#[derive(Default, Debug)]
struct Violations {
    /// Acknowledged objects missing, or in a state they cannot be in.
    lost: Vec<String>,
    /// Acknowledged removals present again.
    resurrected: Vec<String>,
    /// Objects nobody asked for.
    unknown: Vec<String>,
}

impl Violations {
    fn is_empty(&self) -> bool {
        self.lost.is_empty() && self.resurrected.is_empty() && self.unknown.is_empty()
    }
}

/// Compares what kubelet would read from the restarted daemon with the model: every
/// acknowledged creation exists in its state, every acknowledged removal is absent (also to
/// the Status calls), nothing unknown exists, and a call cut short left the state before it
/// or one it may reach. Then the model takes what was seen.
async fn check_invariants(d: &Daemon, model: &Shared, kill: u64) -> Violations {
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
    let pod_state = |s: i32| {
        if s == PodSandboxState::SandboxReady as i32 {
            PodState::Ready
        } else {
            PodState::NotReady
        }
    };
    let ctr_state = |s: i32| match ContainerState::try_from(s) {
        Ok(ContainerState::ContainerCreated) => Some(CtrState::Created),
        Ok(ContainerState::ContainerRunning) => Some(CtrState::Running),
        Ok(ContainerState::ContainerExited) => Some(CtrState::Exited),
        _ => None,
    };
    let mut v = Violations::default();
    let mut seen_pods: BTreeSet<String> = BTreeSet::new();
    let mut seen_ctrs: BTreeSet<String> = BTreeSet::new();
    let mut gone_pods = Vec::new();
    let mut gone_ctrs = Vec::new();
    {
        let mut m = lock(model);
        let m = &mut *m;
        for (name, e) in m.pods.iter_mut() {
            let found = pods.iter().find(|p| match &e.id {
                Some(id) => &p.id == id,
                None => p.metadata.as_ref().is_some_and(|md| &md.name == name),
            });
            let observed = found.map(|p| pod_state(p.state));
            if let Some(p) = found {
                seen_pods.insert(p.id.clone());
                e.id.get_or_insert_with(|| p.id.clone());
            }
            if e.observe(&format!("pod {name}"), kill, observed, &mut v) {
                m.removals_checked += 1;
                gone_pods.push((name.clone(), e.id.clone().unwrap_or_default()));
            }
        }
        for (key, e) in m.ctrs.iter_mut() {
            let (pod_name, cname) = key.split_once('/').expect("pod/container");
            let pod_id = m.pods.get(pod_name).and_then(|p| p.id.clone());
            let found = containers.iter().find(|c| match &e.id {
                Some(id) => &c.id == id,
                None => {
                    Some(&c.pod_sandbox_id) == pod_id.as_ref()
                        && c.metadata.as_ref().is_some_and(|md| md.name == cname)
                }
            });
            let observed = found.and_then(|c| ctr_state(c.state));
            if let Some(c) = found {
                seen_ctrs.insert(c.id.clone());
                e.id.get_or_insert_with(|| c.id.clone());
            }
            if e.observe(&format!("container {key}"), kill, observed, &mut v) {
                m.removals_checked += 1;
                gone_ctrs.push((key.clone(), e.id.clone().unwrap_or_default()));
            }
        }
    }
    for p in &pods {
        if !seen_pods.contains(&p.id) {
            v.unknown.push(format!(
                "kill {kill}: unknown pod {} {:?}",
                p.id, p.metadata
            ));
        }
    }
    for c in &containers {
        if !seen_ctrs.contains(&c.id) {
            v.unknown.push(format!(
                "kill {kill}: unknown container {} of pod {} {:?}",
                c.id, c.pod_sandbox_id, c.metadata
            ));
        }
    }
    // The Status calls agree with the lists for what was removed since the last check.
    for (name, id) in gone_pods {
        match try_pod_status(d, &id, false).await {
            Err(s) if s.code() == tonic::Code::NotFound => {}
            other => v.resurrected.push(format!(
                "kill {kill}: removed pod {name} ({id}): PodSandboxStatus {other:?}"
            )),
        }
    }
    for (key, id) in gone_ctrs {
        match try_container_status(d, &id, false).await {
            Err(s) if s.code() == tonic::Code::NotFound => {}
            other => v.resurrected.push(format!(
                "kill {kill}: removed container {key} ({id}): ContainerStatus {other:?}"
            )),
        }
    }
    let mut ips = BTreeMap::new();
    for pod in &pods {
        if pod.state != PodSandboxState::SandboxReady as i32 {
            continue;
        }
        let status = pod_status(d, &pod.id).await;
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
    v
}

/// What kubelet does after a restart with pods whose teardown a worker began (they are
/// stopped now): it finishes their removal, through the model like any removal.
async fn finish_teardowns(d: &Daemon, model: &Shared) {
    let stopped: Vec<(String, String)> = {
        let m = lock(model);
        m.pods
            .iter()
            .filter(|(_, e)| e.may_be == [Some(PodState::NotReady)])
            .filter_map(|(n, e)| Some((n.clone(), e.id.clone()?)))
            .collect()
    };
    let mut calls = Calls {
        rt: d.runtime(),
        model: model.clone(),
    };
    for (name, id) in stopped {
        calls
            .remove_pod(&name, &id)
            .await
            .unwrap_or_else(|e| panic!("RemovePodSandbox {name} ({id}): {e:?}"));
    }
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
    let mut d = busybox_daemon().await;
    let log_dir = log_dir(&d);
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
        let v = check_invariants(&d, &model, kill).await;
        assert!(v.is_empty(), "after kill {kill} (seed {seed}): {v:#?}");
        assert_no_leaks(&d, &format!("after kill {kill}")).await;
        finish_teardowns(&d, &model).await;
    }

    // Everything goes, through the model; nothing may stay behind.
    let live: Vec<(String, String)> = {
        let m = lock(&model);
        m.pods
            .iter()
            .filter(|(_, e)| e.state().is_some())
            .filter_map(|(n, e)| Some((n.clone(), e.id.clone()?)))
            .collect()
    };
    let mut calls = Calls {
        rt: d.runtime(),
        model: model.clone(),
    };
    for (name, id) in &live {
        calls
            .stop_pod(name, id)
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox {name}: {e:?}"));
        calls
            .remove_pod(name, id)
            .await
            .unwrap_or_else(|e| panic!("RemovePodSandbox {name}: {e:?}"));
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
    // The last removals must hold across a kill too, and a fresh start garbage-collects
    // what the removals left for later.
    d.kill().await.expect("SIGKILL the daemon");
    d.start_again().await.expect("start for the final check");
    d.wait_runtime_ready(Duration::from_secs(60))
        .await
        .expect("ready");
    let v = check_invariants(&d, &model, kills).await;
    assert!(
        v.is_empty(),
        "after the final restart (seed {seed}): {v:#?}"
    );
    {
        let m = lock(&model);
        assert!(
            m.pods.values().all(|e| e.state().is_none())
                && m.ctrs.values().all(|e| e.state().is_none()),
            "something is left after removing everything"
        );
        eprintln!(
            "chaos: {kills} kills, {} pod cycles, {} operations, {} removals acknowledged, {} \
             removals checked after a restart, 0 lost, 0 resurrected, 0 unknown, 0 leaks, {:.1} \
             s, seed {seed}",
            m.cycles,
            m.ops,
            m.removals,
            m.removals_checked,
            started.elapsed().as_secs_f64()
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.stop().await.expect("stop");
    let state = d.dir().state();
    let root = d.dir().root();
    for (dir, what) in [
        (state.join("pods"), "pod run dirs"),
        (state.join("containers"), "container run dirs"),
        (root.join("containers"), "writable layers"),
        (root.join("snapshots"), "snapshots"),
    ] {
        assert_eq!(entries(&dir), Vec::<String>::new(), "{what}");
    }
}

/// A container whose files vanished while the daemon was down, though no removal was ever
/// recorded (what a power loss can do to the directories CreateContainer made on a file
/// system without a journal), is a fault kubelet must see: listed, exited, reason
/// FilesLost, with a message naming the directory; never dropped quietly. Once kubelet
/// removes it, it stays removed across a kill.
#[tokio::test]
async fn a_container_whose_files_vanished_is_shown_to_kubelet_as_a_fault() {
    let mut d = busybox_daemon().await;
    let log_dir = log_dir(&d);
    let config = pod_config("files-lost", &log_dir);
    let pod = run_pod(&d, &config).await;
    let kept = start(&d, &pod, &config, "kept", &["sleep", "3600"]).await;
    let lost = start(&d, &pod, &config, "lost", &["true"]).await;
    wait_exited(&d, &lost).await;
    d.kill().await.expect("SIGKILL the daemon");
    let dir = d.dir().root().join("containers").join(&lost);
    std::fs::remove_dir_all(&dir).expect("remove the container's files");
    d.start_again().await.expect("restart");
    d.wait_runtime_ready(Duration::from_secs(60))
        .await
        .expect("ready");
    let mut rt = d.runtime();
    let listed: Vec<String> = rt
        .list_containers(ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert!(
        listed.contains(&lost),
        "the faulty container is listed: {listed:?}"
    );
    assert!(listed.contains(&kept));
    let status = container_status(&d, &lost).await;
    assert_eq!(status.state, ContainerState::ContainerExited as i32);
    assert_eq!(status.reason, "FilesLost");
    assert!(
        status.message.contains(&dir.display().to_string()),
        "{}",
        status.message
    );
    // The daemon's log tells the operator too.
    assert!(
        d.log().contains("container files lost"),
        "no fault in the daemon's log"
    );
    // The untouched container still runs.
    let kept_status = container_status(&d, &kept).await;
    assert_eq!(kept_status.state, ContainerState::ContainerRunning as i32);
    // kubelet removes it; the removal holds across a kill.
    rt.remove_container(RemoveContainerRequest {
        container_id: lost.clone(),
    })
    .await
    .expect("RemoveContainer");
    d.kill().await.expect("SIGKILL the daemon");
    d.start_again().await.expect("restart");
    d.wait_runtime_ready(Duration::from_secs(60))
        .await
        .expect("ready");
    let gone = container_status_refused(&d, &lost).await;
    assert_eq!(gone.code(), tonic::Code::NotFound);
    remove_pod(&d, &pod).await;
    d.stop().await.expect("stop");
}
