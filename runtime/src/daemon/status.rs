//! Records as kubelet sees them: CRI status and list items, and list filters.

use std::collections::HashMap;

use k8s_cri::v1::*;

use crate::daemon::store::{ContainerPhase, ContainerRecord, PodPhase, PodRecord};

/// Whether `labels` has every key and value of kubelet's `selector`.
pub fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn id_matches(id: &str, want: &str) -> bool {
    want.is_empty() || id.starts_with(want)
}

fn pod_state(rec: &PodRecord) -> PodSandboxState {
    if rec.phase == PodPhase::Ready {
        PodSandboxState::SandboxReady
    } else {
        PodSandboxState::SandboxNotready
    }
}

/// `PodSandboxStatus` of a record.
pub fn pod_status(rec: &PodRecord) -> PodSandboxStatus {
    let namespace_options = super::pod::namespace_options(&rec.config)
        .cloned()
        .unwrap_or_default();
    PodSandboxStatus {
        id: rec.id.clone(),
        metadata: rec.config.metadata.clone(),
        state: pod_state(rec) as i32,
        created_at: rec.created_at,
        network: Some(PodSandboxNetworkStatus {
            ip: rec.ips.first().cloned().unwrap_or_default(),
            additional_ips: rec
                .ips
                .iter()
                .skip(1)
                .map(|ip| PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace {
                options: Some(namespace_options),
            }),
        }),
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        runtime_handler: rec.runtime_handler.clone(),
    }
}

/// `ListPodSandbox` item of a record.
pub fn pod_item(rec: &PodRecord) -> PodSandbox {
    PodSandbox {
        id: rec.id.clone(),
        metadata: rec.config.metadata.clone(),
        state: pod_state(rec) as i32,
        created_at: rec.created_at,
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        runtime_handler: rec.runtime_handler.clone(),
    }
}

/// What list filters look at, borrowed from a record: a list is filtered before any item
/// is built, so what the filter drops is never copied.
#[derive(Debug, Clone, Copy)]
pub struct Listed<'a> {
    /// Pod or container id.
    pub id: &'a str,
    /// The container's pod (a pod's own id for a pod).
    pub pod_id: &'a str,
    /// CRI state, as the item reports it.
    pub state: i32,
    /// Labels.
    pub labels: &'a HashMap<String, String>,
}

/// What a pod's list filter looks at.
pub fn pod_listed(rec: &PodRecord) -> Listed<'_> {
    Listed {
        id: &rec.id,
        pod_id: &rec.id,
        state: pod_state(rec) as i32,
        labels: &rec.config.labels,
    }
}

/// Whether a pod passes kubelet's filter.
pub fn pod_matches(p: Listed<'_>, filter: Option<&PodSandboxFilter>) -> bool {
    let Some(f) = filter else { return true };
    id_matches(p.id, &f.id)
        && f.state.as_ref().is_none_or(|s| s.state == p.state)
        && labels_match(p.labels, &f.label_selector)
}

fn container_state(rec: &ContainerRecord) -> ContainerState {
    match rec.phase {
        ContainerPhase::Creating | ContainerPhase::Created => ContainerState::ContainerCreated,
        ContainerPhase::Running => ContainerState::ContainerRunning,
        ContainerPhase::Exited => ContainerState::ContainerExited,
    }
}

fn image_spec(rec: &ContainerRecord) -> ImageSpec {
    let mut spec = rec.config.image.clone().unwrap_or_default();
    if !rec.image.name.is_empty() {
        spec.image = rec.image.name.clone();
    }
    spec
}

/// `ContainerStatus` of a record.
pub fn container_status(rec: &ContainerRecord) -> ContainerStatus {
    let u = &rec.spec.process.user;
    ContainerStatus {
        id: rec.id.clone(),
        metadata: rec.config.metadata.clone(),
        state: container_state(rec) as i32,
        created_at: rec.created_at,
        started_at: rec.started_at,
        finished_at: rec.finished_at,
        exit_code: rec.exit_code,
        image: Some(image_spec(rec)),
        image_ref: rec.image.image_ref.clone(),
        reason: rec.reason.clone(),
        message: rec.message.clone(),
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        mounts: rec.config.mounts.clone(),
        log_path: rec.log_path.display().to_string(),
        resources: Some(ContainerResources {
            linux: rec.config.linux.as_ref().and_then(|l| l.resources.clone()),
            windows: None,
        }),
        image_id: rec.image.id.clone(),
        user: Some(ContainerUser {
            linux: Some(LinuxContainerUser {
                uid: u.uid as i64,
                gid: u.gid as i64,
                supplemental_groups: u.additional_gids.iter().map(|g| *g as i64).collect(),
            }),
        }),
    }
}

/// `ListContainers` item of a record.
pub fn container_item(rec: &ContainerRecord) -> Container {
    Container {
        id: rec.id.clone(),
        pod_sandbox_id: rec.pod_id.clone(),
        metadata: rec.config.metadata.clone(),
        image: Some(image_spec(rec)),
        image_ref: rec.image.image_ref.clone(),
        state: container_state(rec) as i32,
        created_at: rec.created_at,
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        image_id: rec.image.id.clone(),
    }
}

/// What a container's list filter looks at.
pub fn container_listed(rec: &ContainerRecord) -> Listed<'_> {
    Listed {
        id: &rec.id,
        pod_id: &rec.pod_id,
        state: container_state(rec) as i32,
        labels: &rec.config.labels,
    }
}

/// Whether a container passes kubelet's filter.
pub fn container_matches(c: Listed<'_>, filter: Option<&ContainerFilter>) -> bool {
    let Some(f) = filter else { return true };
    id_matches(c.id, &f.id)
        && id_matches(c.pod_id, &f.pod_sandbox_id)
        && f.state.as_ref().is_none_or(|s| s.state == c.state)
        && labels_match(c.labels, &f.label_selector)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod<'a>(id: &'a str, ready: bool, labels: &'a HashMap<String, String>) -> Listed<'a> {
        Listed {
            id,
            pod_id: id,
            state: if ready { 0 } else { 1 },
            labels,
        }
    }

    #[test]
    fn pod_filters() {
        let l = labels(&[("app", "web"), ("tier", "fe")]);
        let p = pod("abcdef", true, &l);
        assert!(pod_matches(p, None));
        assert!(pod_matches(p, Some(&PodSandboxFilter::default())));
        let f = |id: &str, state: Option<i32>, sel: &[(&str, &str)]| PodSandboxFilter {
            id: id.into(),
            state: state.map(|state| PodSandboxStateValue { state }),
            label_selector: sel
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert!(pod_matches(p, Some(&f("abc", Some(0), &[("app", "web")]))));
        assert!(!pod_matches(p, Some(&f("abd", None, &[]))));
        assert!(!pod_matches(p, Some(&f("", Some(1), &[]))));
        assert!(!pod_matches(p, Some(&f("", None, &[("app", "db")]))));
        assert!(!pod_matches(p, Some(&f("", None, &[("missing", "x")]))));
    }

    #[test]
    fn container_filters() {
        let none = HashMap::new();
        let c = Listed {
            id: "c1",
            pod_id: "p1",
            state: 1,
            labels: &none,
        };
        let f = |pod: &str, state: Option<i32>| ContainerFilter {
            pod_sandbox_id: pod.into(),
            state: state.map(|state| ContainerStateValue { state }),
            ..Default::default()
        };
        assert!(container_matches(c, Some(&f("p1", Some(1)))));
        assert!(!container_matches(c, Some(&f("p2", None))));
        assert!(!container_matches(c, Some(&f("", Some(2)))));
    }
}
