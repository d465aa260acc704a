//! What stats are read from: a snapshot of the running containers and ready pods with their
//! cgroups, writable layers and network namespaces, taken under the index lock and read
//! after it is released, so that no file of any pod is read while the lock is held.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use k8s_cri::v1::{ContainerMetadata, PodSandboxMetadata};

use crate::cgroups::PodCgroup;
use crate::cgroups::read::{KeptFile, Reading, UsageDirs, Wanted};
use crate::daemon::runtime::{Runtime, lock};
use crate::daemon::store::{ContainerPhase, PodPhase};
use crate::namespace::Namespace;

/// A running container, as stats see it.
#[derive(Debug, Clone)]
pub struct ContainerTarget {
    /// Container id.
    pub id: String,
    /// Its pod.
    pub pod_id: String,
    /// kubelet's metadata.
    pub metadata: Option<ContainerMetadata>,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Annotations.
    pub annotations: HashMap<String, String>,
    /// Its cgroup (driver naming).
    pub cgroup: String,
    /// Its cgroup's directories once opened; kept while the container lives.
    pub dirs: Arc<UsageDirs>,
    /// Its writable layer (the overlay upper dir).
    pub writable_layer: PathBuf,
    /// The image it runs, as kubelet named it.
    pub image: String,
    /// Running (or created): its cgroup holds live figures. Exited ones are only reported
    /// when asked for by id.
    pub live: bool,
}

/// A ready pod, as stats see it.
#[derive(Debug, Clone)]
pub struct PodTarget {
    /// Pod id.
    pub id: String,
    /// kubelet's metadata.
    pub metadata: Option<PodSandboxMetadata>,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Annotations.
    pub annotations: HashMap<String, String>,
    /// Its cgroups.
    pub cgroup: PodCgroup,
    /// The pod cgroup's directories once opened; kept while the pod lives.
    pub dirs: Arc<UsageDirs>,
    /// `/proc/<monitor>/net/dev` of its network namespace; `None` on the node's network.
    pub net_dev: Option<PathBuf>,
    /// That file once opened; kept while the pod is ready.
    pub net_file: Arc<KeptFile>,
    /// Ready (its monitor runs). Others are only reported when asked for by id.
    pub ready: bool,
}

impl Runtime {
    /// Every pod (none unless `with_pods`: a call about containers copies no pod's
    /// labels) and every container past creation, for stats.
    pub fn usage_targets(&self, with_pods: bool) -> (Vec<PodTarget>, Vec<ContainerTarget>) {
        let (pods, containers): (Vec<_>, Vec<_>) = {
            let index = lock(&self.index);
            (
                if with_pods {
                    index.pods.values().map(Arc::clone).collect()
                } else {
                    Vec::new()
                },
                index.containers.values().map(Arc::clone).collect(),
            )
        };
        let pods = pods
            .iter()
            .filter_map(|p| {
                let rec = lock(&p.rec);
                (rec.phase != PodPhase::Creating).then(|| {
                    (
                        p,
                        PodTarget {
                            id: rec.id.clone(),
                            metadata: rec.config.metadata.clone(),
                            labels: rec.config.labels.clone(),
                            annotations: rec.config.annotations.clone(),
                            cgroup: rec.cgroup.clone(),
                            net_dev: (rec.namespaces.contains(&Namespace::Net)
                                && rec.monitor_pid > 0)
                                .then(|| {
                                    PathBuf::from(format!("/proc/{}/net/dev", rec.monitor_pid))
                                }),
                            ready: rec.phase == PodPhase::Ready,
                            dirs: Arc::default(),
                            net_file: Arc::default(),
                        },
                    )
                })
            })
            .map(|(p, mut t)| {
                t.dirs = Arc::clone(&p.usage_dirs);
                t.net_file = Arc::clone(&p.net_dev);
                t
            })
            .collect();
        let containers = containers
            .iter()
            .filter_map(|c| {
                let rec = lock(&c.rec);
                (rec.phase != ContainerPhase::Creating).then(|| {
                    (
                        c,
                        ContainerTarget {
                            id: rec.id.clone(),
                            pod_id: rec.pod_id.clone(),
                            metadata: rec.config.metadata.clone(),
                            labels: rec.config.labels.clone(),
                            annotations: rec.config.annotations.clone(),
                            cgroup: rec.cgroup.clone(),
                            writable_layer: rec.spec.rootfs.upper_dir.clone(),
                            image: rec.image.name.clone(),
                            live: rec.phase != ContainerPhase::Exited,
                            dirs: Arc::default(),
                        },
                    )
                })
            })
            .map(|(c, mut t)| {
                t.dirs = Arc::clone(&c.usage_dirs);
                t
            })
            .collect();
        (pods, containers)
    }

    /// Every container past creation, with its writable layer (the overlay upper dir):
    /// what `ImageFsInfo` sums.
    pub fn writable_layers(&self) -> Vec<(String, PathBuf)> {
        let containers: Vec<_> = lock(&self.index)
            .containers
            .values()
            .map(Arc::clone)
            .collect();
        containers
            .iter()
            .filter_map(|c| {
                let rec = lock(&c.rec);
                (rec.phase != ContainerPhase::Creating)
                    .then(|| (rec.id.clone(), rec.spec.rootfs.upper_dir.clone()))
            })
            .collect()
    }

    /// Usage of a cgroup named by [`Runtime::usage_targets`]: the reading another call
    /// took at `since` or later if it holds the figures `want` asks for (never when
    /// `since` is `None`), else one taken now through the directories `dirs` keeps
    /// (opened on the first call, outside every lock). `buf` is scratch space reused
    /// across cgroups.
    pub fn cgroup_usage(
        &self,
        dirs: &UsageDirs,
        cgroup: &str,
        want: Wanted,
        since: Option<Instant>,
        buf: &mut Vec<u8>,
    ) -> Reading {
        dirs.reading(|| self.opts.cgroups.usage_dirs(cgroup), want, since, buf)
    }

    /// The full id of a container (any state) named by id or unique prefix.
    pub fn container_id(&self, id: &str) -> Option<String> {
        self.find_container(id).map(|c| c.id.clone())
    }

    /// The full id of a pod (any state) named by id or unique prefix.
    pub fn pod_id(&self, id: &str) -> Option<String> {
        self.find_pod(id).map(|p| p.id.clone())
    }
}
