//! A container's `config.json` (its OCI runtime spec): the bundle of a RuntimeClass
//! handler's container, which the handler's runtime runs, and the one the daemon writes for
//! a container of Berth's own executor that has OCI hooks, since vendor hooks
//! (`nvidia-cdi-hook update-ldcache`, `create-symlinks`, most OCI hooks) read
//! `<bundle>/config.json` from the state's `bundle` for the root, the environment, the
//! mounts and the annotations. Both come from the same plan, by the same `oci` code.

use k8s_cri::v1::ContainerConfig;

use crate::cgroups::ContainerLimits;
use crate::daemon::runtime::{PodEntry, Runtime, lock};
use crate::error::{Error, Result};
use crate::namespace::Namespace;
use crate::oci::PodBinding;
use crate::spec::{ContainerSpec, PidNamespace};

impl Runtime {
    /// What a container of a handler pod needs for its bundle; `None` in a default pod.
    pub(super) fn bundle_input<'a>(
        &'a self,
        pod: &PodEntry,
        id: &str,
        config: &'a ContainerConfig,
        spec: &ContainerSpec,
        cgroup: &str,
        limits: &ContainerLimits<'_>,
    ) -> Option<Result<crate::oci::BundleInput<'a>>> {
        let (handler, namespaces, monitor_pid) = {
            let rec = lock(&pod.rec);
            if rec.runtime_handler.is_empty() {
                return None;
            }
            (
                rec.runtime_handler.clone(),
                rec.namespaces.clone(),
                rec.monitor_pid,
            )
        };
        let Some(handler) = self
            .opts
            .runtime_handlers
            .iter()
            .find(|h| h.name == handler)
        else {
            return Some(Err(Error::FailedPrecondition(format!(
                "runtime handler {handler:?} is no longer configured"
            ))));
        };
        // The runtime runs in the monitor's PID namespace: the target's pid as seen there.
        let target_pid = self
            .target_pid(spec)
            .and_then(|p| crate::oci::pid_in_ns_of(p, monitor_pid));
        let binding = match self.pod_binding(pod, namespaces, spec, cgroup, limits, target_pid) {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(crate::oci::BundleInput {
            state: &self.opts.state,
            handler,
            container_dir: self.container_state_dir(id),
            security: config
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref()),
            binding,
        }))
    }

    /// Writes the `config.json` of a container of Berth's own executor that has hooks into
    /// the directory their state names as its bundle (the one holding its `rootfs/`), mode
    /// 0600: it holds the container's environment. It goes with that directory when the
    /// container is removed. `root.path` is where the container's root is mounted, as the
    /// node names it; the namespaces are the pod's files and the target's `/proc` entry,
    /// the pids the node's.
    pub(super) fn write_hooks_config(
        &self,
        pod: &PodEntry,
        config: &ContainerConfig,
        spec: &ContainerSpec,
        cgroup: &str,
        limits: &ContainerLimits<'_>,
    ) -> Result<()> {
        let namespaces = lock(&pod.rec).namespaces.clone();
        let target_pid = self.target_pid(spec);
        let binding = self.pod_binding(pod, namespaces, spec, cgroup, limits, target_pid)?;
        let security = (config.linux.as_ref()).and_then(|l| l.security_context.as_ref());
        let doc = crate::oci::bundle_spec(spec, security, binding)?;
        crate::oci::write_config(crate::hooks::bundle_of(&spec.rootfs.mount_point), &doc)
    }

    /// The node's pid of the running container whose PID namespace `spec` joins, if any.
    fn target_pid(&self, spec: &ContainerSpec) -> Option<i32> {
        let PidNamespace::Target { container_id } = &spec.pid_ns else {
            return None;
        };
        self.find_container(container_id)
            .map(|c| lock(&c.rec).pid)
            .filter(|p| *p > 0)
    }

    /// How a container joins its pod, for its `config.json`: the pod's namespaces
    /// (`namespaces`, by their files in the pod's `ns/` dir), the target container's pid
    /// (`target_pid`), the cgroup Berth made and what it set there, the device nodes.
    fn pod_binding(
        &self,
        pod: &PodEntry,
        namespaces: Vec<Namespace>,
        spec: &ContainerSpec,
        cgroup: &str,
        limits: &ContainerLimits<'_>,
        target_pid: Option<i32>,
    ) -> Result<PodBinding> {
        Ok(PodBinding {
            // The bundle's binding names them as the pod's `ns/` files do.
            namespaces,
            ns_dir: self.pod_dir(&pod.id).join("ns"),
            target_pid,
            cgroups_path: cgroup.to_owned(),
            resources: limits.resources.cloned(),
            device_rules: limits.devices.clone(),
            devices: crate::oci::device_nodes(&spec.devices)?,
            seccomp: None,
        })
    }
}
