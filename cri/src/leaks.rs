//! Leak accounting: what Berth left in the kernel or on disk that no record owns, and
//! records whose kernel objects are gone. `berth debug leaks` runs it beside a live daemon:
//! the records come over CRI, the rest from `/proc` and the run directories (read through
//! [`host`], as the e2e harness reads them), so it also shows what a daemon that believes
//! all is well cannot see.
//!
//! Not covered: IP allocations, nf_tables rules and content blobs (the daemon's own
//! start-up reconciliation and garbage collection free those; they are not visible from
//! outside its database), and the containers' overlay mounts, which live only in their
//! private mount namespaces.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use berth_cni::NetworkMode;

use crate::config::Config;

pub mod host;

/// A pod as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedPod {
    /// Pod id.
    pub id: String,
    /// SANDBOX_READY: its monitor must be alive.
    pub ready: bool,
    /// Has its own network namespace (and, with the built-in network, a veth).
    pub pod_network: bool,
}

/// What the daemon's records own.
#[derive(Debug, Clone, Default)]
pub struct Owned {
    /// Every pod, ready or not.
    pub pods: Vec<OwnedPod>,
    /// Every container id.
    pub containers: Vec<String>,
    /// Snapshot directory names (chain id hex) the images and containers use.
    pub snapshots: Vec<String>,
}

/// What kind of object a [`Finding`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A process (a pod monitor), or a pod whose monitor is missing.
    Process,
    /// A mount point.
    Mount,
    /// A directory of Berth's state or root.
    Dir,
    /// A network interface.
    Link,
    /// A cgroup directory.
    Cgroup,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Process => "process",
            Kind::Mount => "mount",
            Kind::Dir => "dir",
            Kind::Link => "link",
            Kind::Cgroup => "cgroup",
        })
    }
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// What kind of object it is.
    pub kind: Kind,
    /// The object (a pid, a path, a link name).
    pub object: String,
    /// What is wrong with it.
    pub problem: String,
}

impl Finding {
    /// A problem with `object`, shown as the object reads.
    pub fn new(kind: Kind, object: impl ToString, problem: impl Into<String>) -> Finding {
        Finding {
            kind,
            object: object.to_string(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.kind, self.object, self.problem)
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// The id directory directly below `base` that `path` is in, if any.
fn id_below(base: &Path, path: &Path) -> Option<String> {
    let rest = path.strip_prefix(base).ok()?;
    rest.components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
}

/// The links, after giving the kernel a moment to finish destroying the network namespaces
/// of pods just removed (their veths go with them, asynchronously).
fn settled_links(allowed: &BTreeSet<String>) -> Vec<String> {
    let stray = |links: &[String]| {
        links
            .iter()
            .any(|l| l.starts_with(berth_cni::VETH_PREFIX) && !allowed.contains(l))
    };
    let mut links = host::links().unwrap_or_default();
    for _ in 0..30 {
        if !stray(&links) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        links = host::links().unwrap_or_default();
    }
    links
}

/// Pod monitors running on this host for `state`: (pid, pod id).
fn monitors(state: &Path) -> Vec<(i32, String)> {
    let pods = state.join("pods");
    let mut out = Vec::new();
    for name in dir_names(Path::new("/proc")) {
        let Ok(pid) = name.parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|&b| b == 0);
        let exe = args.next().unwrap_or_default();
        if !exe.ends_with(b"berth-monitor") {
            continue;
        }
        let Some(cfg) = args.next() else { continue };
        let cfg = PathBuf::from(String::from_utf8_lossy(cfg).into_owned());
        if let Some(id) = id_below(&pods, &cfg) {
            out.push((pid, id));
        }
    }
    out
}

/// Asks the daemon serving `socket` for every pod, container and image it has, and the
/// snapshots (under `snapshots_root`) they use.
pub async fn owned_by_daemon(socket: &Path, snapshots_root: &Path) -> anyhow::Result<Owned> {
    use k8s_cri::v1::image_service_client::ImageServiceClient;
    use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
    use k8s_cri::v1::{
        ContainerStatusRequest, ImageSpec, ImageStatusRequest, ListContainersRequest,
        ListImagesRequest, ListPodSandboxRequest, NamespaceMode, PodSandboxState,
        PodSandboxStatusRequest,
    };
    let path = socket.to_owned();
    // The URI is a placeholder: the connector dials the unix socket.
    let channel = tonic::transport::Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .map_err(|e| anyhow::anyhow!("connect to {}: {e}", socket.display()))?;
    let rt_channel = channel.clone();
    let mut rt = RuntimeServiceClient::new(channel);
    let mut owned = Owned::default();
    let pods = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items;
    for pod in pods {
        let status = rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .unwrap_or_default();
        let host_network = status
            .linux
            .and_then(|l| l.namespaces)
            .and_then(|n| n.options)
            .is_some_and(|o| o.network == NamespaceMode::Node as i32);
        owned.pods.push(OwnedPod {
            id: pod.id,
            ready: pod.state == PodSandboxState::SandboxReady as i32,
            pod_network: !host_network,
        });
    }
    owned.containers = rt
        .list_containers(ListContainersRequest::default())
        .await?
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    // Snapshots: each image's layer chain, and whatever a container's rootfs or image
    // volumes still use (an image may be gone while a container runs from it).
    let mut snapshots = BTreeSet::new();
    let mut images = ImageServiceClient::new(rt_channel);
    let list = images
        .list_images(ListImagesRequest::default())
        .await?
        .into_inner()
        .images;
    for image in list {
        let info = images
            .image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: image.id.clone(),
                    ..Default::default()
                }),
                verbose: true,
            })
            .await?
            .into_inner()
            .info;
        let diff_ids: Vec<String> = info
            .get("info")
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .and_then(|v| serde_json::from_value(v["imageSpec"]["rootfs"]["diff_ids"].clone()).ok())
            .unwrap_or_default();
        for chain in berth_imageservice::manifest::chain_ids(&diff_ids) {
            snapshots.insert(chain.trim_start_matches("sha256:").to_string());
        }
    }
    let snapshot_dir = format!("{}/", snapshots_root.display());
    for id in &owned.containers {
        let info = rt
            .container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: true,
            })
            .await?
            .into_inner()
            .info;
        if let Some(json) = info.get("info") {
            // Every path below the snapshots directory the container's spec names.
            for part in json.split(snapshot_dir.as_str()).skip(1) {
                if let Some(name) = part.split(['/', '"']).next() {
                    snapshots.insert(name.to_string());
                }
            }
        }
    }
    owned.snapshots = snapshots.into_iter().collect();
    Ok(owned)
}

/// Compares what `owned` says with the host. An empty answer means no leak.
pub fn account(config: &Config, owned: &Owned) -> Vec<Finding> {
    let mut found = Vec::new();
    let pods: BTreeSet<&str> = owned.pods.iter().map(|p| p.id.as_str()).collect();
    let ready: BTreeSet<&str> = owned
        .pods
        .iter()
        .filter(|p| p.ready)
        .map(|p| p.id.as_str())
        .collect();
    let containers: BTreeSet<&str> = owned.containers.iter().map(String::as_str).collect();
    let pod_dirs = config.state.join("pods");
    let dirs = [
        (pod_dirs.clone(), &pods, "a pod run directory without a pod"),
        (
            config.state.join("containers"),
            &containers,
            "a container run directory without a container",
        ),
        (
            config.root.join("containers"),
            &containers,
            "a writable layer without a container",
        ),
    ];
    for (base, known, problem) in &dirs {
        for id in dir_names(base) {
            if !known.contains(id.as_str()) {
                found.push(Finding::new(
                    Kind::Dir,
                    base.join(&id).display(),
                    problem.to_string(),
                ));
            }
        }
    }
    for handler in config.runtimes.keys() {
        let base = config.state.join("runtimes").join(handler);
        for id in dir_names(&base) {
            if !containers.contains(id.as_str()) {
                found.push(Finding::new(
                    Kind::Dir,
                    base.join(&id).display(),
                    format!("runtime handler {handler}'s state without a container"),
                ));
            }
        }
    }
    for mount in host::mounts().into_iter().map(|m| m.mount_point) {
        for (base, known, _) in &dirs {
            if let Some(id) = id_below(base, &mount)
                && !known.contains(id.as_str())
            {
                found.push(Finding::new(
                    Kind::Mount,
                    mount.display(),
                    "mounted for an object without a record",
                ));
            }
        }
    }
    let snapshots_root = config.root.join("snapshots");
    let used: BTreeSet<&str> = owned.snapshots.iter().map(String::as_str).collect();
    let present = dir_names(&snapshots_root);
    for name in &present {
        if !used.contains(name.as_str()) {
            found.push(Finding::new(
                Kind::Dir,
                snapshots_root.join(name).display(),
                "a snapshot no image or container uses",
            ));
        }
    }
    for name in &used {
        if !present.iter().any(|p| p == name) {
            found.push(Finding::new(
                Kind::Dir,
                snapshots_root.join(name).display(),
                "an image's or container's snapshot is missing",
            ));
        }
    }
    let running = monitors(&config.state);
    for (pid, id) in &running {
        if !ready.contains(id.as_str()) {
            found.push(Finding::new(
                Kind::Process,
                pid,
                format!(
                    "the monitor of pod {id}, which is {}",
                    if pods.contains(id.as_str()) {
                        "not ready"
                    } else {
                        "unknown"
                    }
                ),
            ));
        }
    }
    for id in &ready {
        if !running.iter().any(|(_, p)| p == id) {
            found.push(Finding::new(
                Kind::Process,
                format!("pod {id}"),
                "ready, but its monitor is not running",
            ));
        }
    }
    if config.network.mode == NetworkMode::Builtin {
        let veths: BTreeSet<String> = owned
            .pods
            .iter()
            .filter(|p| p.ready && p.pod_network)
            .map(|p| berth_cni::veth_name(&p.id))
            .collect();
        // A stopped pod keeps its network until StopPodSandbox has torn it down.
        let allowed: BTreeSet<String> = owned
            .pods
            .iter()
            .map(|p| berth_cni::veth_name(&p.id))
            .collect();
        let links = settled_links(&allowed);
        for link in &links {
            if link.starts_with(berth_cni::VETH_PREFIX) && !allowed.contains(link) {
                found.push(Finding::new(Kind::Link, link, "a pod veth of no pod"));
            }
        }
        for veth in &veths {
            if !links.contains(veth) {
                found.push(Finding::new(
                    Kind::Link,
                    veth,
                    "the veth of a ready pod is missing",
                ));
            }
        }
        // The bridge goes with the last pod that has a network, ready or stopped.
        let networked = owned.pods.iter().any(|p| p.pod_network);
        if !networked && links.contains(&config.network.bridge) {
            found.push(Finding::new(
                Kind::Link,
                &config.network.bridge,
                "the bridge is up with no pod on it",
            ));
        }
    }
    if config.cgroup.driver == crate::config::CgroupDriver::Cgroupfs {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let roots: Vec<PathBuf> = berth_runtime::cgroups::parse::cgroup_mounts(&mountinfo)
            .into_iter()
            .map(|m| PathBuf::from(m.mount_point))
            .collect();
        found.extend(cgroup_findings(
            &roots,
            config.cgroup.parent_or_default(),
            &pods,
            &containers,
        ));
    }
    found.sort();
    found.dedup();
    found
}

/// Cgroups under Berth's own parent (pods without a kubelet parent) in each hierarchy:
/// `<parent>/<pod>` for known pods only, holding the pod's monitor leaf and container leaves.
fn cgroup_findings(
    roots: &[PathBuf],
    parent: &str,
    pods: &BTreeSet<&str>,
    containers: &BTreeSet<&str>,
) -> Vec<Finding> {
    // Cgroup directories hold control files too: only subdirectories are cgroups.
    let subdirs = |dir: &Path| -> Vec<String> {
        dir_names(dir)
            .into_iter()
            .filter(|n| dir.join(n).is_dir())
            .collect()
    };
    let mut found = Vec::new();
    for root in roots {
        let base = root.join(parent.trim_start_matches('/'));
        for pod in subdirs(&base) {
            let dir = base.join(&pod);
            if !pods.contains(pod.as_str()) {
                found.push(Finding::new(
                    Kind::Cgroup,
                    dir.display(),
                    "the cgroup of no pod",
                ));
                continue;
            }
            for leaf in subdirs(&dir) {
                if leaf != pod && !containers.contains(leaf.as_str()) {
                    found.push(Finding::new(
                        Kind::Cgroup,
                        dir.join(&leaf).display(),
                        "the cgroup of no container",
                    ));
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration with root and state under `dir`, where `dirs` exist, and no bridge or
    /// veth checks (they read the host's links).
    fn config_with(dir: &Path, dirs: &[&str]) -> Config {
        for d in dirs {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let mut config = Config::in_dir(dir);
        config.network.mode = NetworkMode::Cni;
        config
    }

    #[test]
    fn unowned_directories_are_leaks_and_owned_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_with(
            dir.path(),
            &[
                "state/pods/p1",
                "state/pods/p2",
                "state/containers/c1",
                "root/containers/c9",
                "state/runtimes/runc/c1",
                "state/runtimes/runc/c7",
            ],
        );
        config.runtimes.insert(
            "runc".into(),
            crate::config::RuntimeHandlerConfig::default(),
        );
        let owned = Owned {
            pods: vec![OwnedPod {
                id: "p1".into(),
                ready: false,
                pod_network: true,
            }],
            containers: vec!["c1".into()],
            snapshots: vec![],
        };
        let found: Vec<String> = account(&config, &owned)
            .iter()
            .map(|f| f.object.clone())
            .collect();
        assert_eq!(
            found,
            vec![
                dir.path().join("root/containers/c9").display().to_string(),
                dir.path().join("state/pods/p2").display().to_string(),
                dir.path()
                    .join("state/runtimes/runc/c7")
                    .display()
                    .to_string(),
            ]
        );
    }

    #[test]
    fn snapshots_must_be_used_and_present() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with(
            dir.path(),
            &[
                "root/snapshots/aaa/fs",
                "root/snapshots/ccc/fs",
                "root/snapshots/.trash",
            ],
        );
        let owned = Owned {
            snapshots: vec!["bbb".into(), "ccc".into()],
            ..Default::default()
        };
        let found: Vec<(String, String)> = account(&config, &owned)
            .into_iter()
            .map(|f| (f.object, f.problem))
            .collect();
        let snap = |n: &str| {
            dir.path()
                .join("root/snapshots")
                .join(n)
                .display()
                .to_string()
        };
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found
                .iter()
                .any(|(o, p)| o == &snap("aaa") && p.contains("no image"))
        );
        assert!(
            found
                .iter()
                .any(|(o, p)| o == &snap("bbb") && p.contains("missing"))
        );
    }

    #[test]
    fn a_ready_pod_needs_its_monitor() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with(dir.path(), &[]);
        let owned = Owned {
            pods: vec![OwnedPod {
                id: "p1".into(),
                ready: true,
                pod_network: false,
            }],
            containers: vec![],
            snapshots: vec![],
        };
        let found = account(&config, &owned);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, Kind::Process);
        assert!(found[0].problem.contains("not running"));
    }

    #[test]
    fn cgroups_must_belong_to_pods_and_containers() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("memory");
        for d in ["berth/p1/p1", "berth/p1/c1", "berth/p1/gone", "berth/p2"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        // Control files are not cgroups.
        for f in [
            "berth/cgroup.procs",
            "berth/p1/tasks",
            "berth/p1/c1/memory.stat",
        ] {
            std::fs::write(root.join(f), "").unwrap();
        }
        let pods = BTreeSet::from(["p1"]);
        let containers = BTreeSet::from(["c1"]);
        let found = cgroup_findings(std::slice::from_ref(&root), "/berth", &pods, &containers);
        let objects: Vec<String> = found.iter().map(|f| f.object.clone()).collect();
        assert_eq!(
            objects,
            vec![
                root.join("berth/p1/gone").display().to_string(),
                root.join("berth/p2").display().to_string()
            ]
        );
    }
}
