//! RuntimeClass handlers run by an external OCI runtime (runc, crun, or one with the same
//! command line): the OCI runtime spec (`config.json`) generated from the same
//! [`ContainerSpec`] Berth's own executor runs, and the bundle it goes in.
//!
//! The daemon writes the bundle; the pod's monitor mounts the overlay root in a private mount
//! namespace and runs `<runtime> create` there with the container's stdio pipes, then
//! `start` and `delete` (see `monitor::oci`). The monitor stays the container's reaper, log
//! writer and exit-code keeper, as for the default handler. Only handler pods pay for this,
//! and containers of Berth's own executor that have OCI hooks, whose `config.json` the daemon
//! writes for the hooks to read (vendor hooks find it in the state's bundle): the default
//! path of a container without hooks never reaches this module.
//!
//! What Berth's cgroup manager already did stays authoritative: the container's cgroup
//! exists with its limits and device rules before the runtime runs; `config.json` names
//! that cgroup and repeats the CPU, memory and device settings, so a runtime that applies
//! them writes the same values.
//!
//! `config.rs` builds `config.json` from the plan in oci-spec's runtime types; this file
//! resolves what it needs from the node (device nodes, the target container's pid), writes
//! the bundle, and cleans up after a runtime (its state, the cgroups it made).

use std::path::{Path, PathBuf};

use k8s_cri::v1::LinuxContainerResources;
use oci_spec::runtime::{LinuxSeccomp, Spec};

use crate::cgroups::DeviceRule;
use crate::error::{Error, Result};
use crate::spec::{ContainerSpec, OciRuntimeSpec};

mod config;

pub use config::{OCI_VERSION, mount, runtime_spec, seccomp};

/// A configured RuntimeClass handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    /// The RuntimeClass handler name kubelet sends.
    pub name: String,
    /// The OCI runtime binary.
    pub path: PathBuf,
    /// Global options put before every command (`--cgroup-manager=disabled`).
    pub args: Vec<String>,
}

/// A device node of the container, resolved from the host device it copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Path inside the container.
    pub path: String,
    /// `c` or `b`.
    pub kind: char,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits of the node (from the CRI permissions: `r` and `w`, or CDI's).
    pub file_mode: u32,
    /// Owner in the container.
    pub uid: u32,
    /// Group in the container.
    pub gid: u32,
}

/// What the runtime spec needs beyond the container's own plan: how it joins its pod.
#[derive(Debug, Clone, Default)]
pub struct PodBinding {
    /// Namespaces the pod holds, joined through `<ns_dir>/<name>`.
    pub namespaces: Vec<crate::namespace::Namespace>,
    /// The pod's `ns/` dir, where the monitor bind-mounts its namespaces.
    pub ns_dir: PathBuf,
    /// PID of the target container of a `Target` PID namespace, as the pod's monitor sees it
    /// (see [`pid_in_ns_of`]).
    pub target_pid: Option<i32>,
    /// The container's cgroup as Berth's cgroup manager names it (`/berth/<pod>/<id>`).
    pub cgroups_path: String,
    /// kubelet's resources for the container.
    pub resources: Option<LinuxContainerResources>,
    /// Device cgroup rules beyond the defaults (the container's devices).
    pub device_rules: Vec<DeviceRule>,
    /// The container's device nodes.
    pub devices: Vec<DeviceNode>,
    /// The seccomp profile in OCI form, if any.
    pub seccomp: Option<LinuxSeccomp>,
}

/// The `NSpid:` list of a process (its pid in each PID namespace, outermost first), from
/// the text of its `/proc/<pid>/status`.
pub fn nspids(status: &str) -> Vec<i32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The pid of process `target` as seen from the PID namespace of `viewer` (both host pids),
/// when `target` is in that namespace or below it.
pub fn pid_in_ns_of(target: i32, viewer: i32) -> Option<i32> {
    let read = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
    let depth = nspids(&read(viewer)?).len();
    nspids(&read(target)?).get(depth.checked_sub(1)?).copied()
}

/// Resolves the container's device nodes from the host devices they copy.
pub fn device_nodes(devices: &[crate::spec::DeviceSpec]) -> Result<Vec<DeviceNode>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    devices
        .iter()
        .map(|d| {
            let mut file_mode = 0;
            if d.permissions.contains('r') {
                file_mode |= 0o444;
            }
            if d.permissions.contains('w') {
                file_mode |= 0o222;
            }
            if let Some(n) = &d.node {
                return Ok(DeviceNode {
                    path: d.container_path.clone(),
                    kind: n.kind,
                    major: n.major,
                    minor: n.minor,
                    file_mode: n.file_mode.unwrap_or(file_mode),
                    uid: n.uid.unwrap_or(0),
                    gid: n.gid.unwrap_or(0),
                });
            }
            let md = std::fs::metadata(&d.host_path)
                .map_err(|e| Error::io("stat device", &d.host_path, e))?;
            let kind = if md.file_type().is_char_device() {
                'c'
            } else if md.file_type().is_block_device() {
                'b'
            } else {
                return Err(Error::InvalidArgument(format!(
                    "{} is not a device",
                    d.host_path.display()
                )));
            };
            let rdev = md.rdev();
            Ok(DeviceNode {
                path: d.container_path.clone(),
                kind,
                major: libc::major(rdev) as u64,
                minor: libc::minor(rdev) as u64,
                file_mode,
                uid: 0,
                gid: 0,
            })
        })
        .collect()
}

/// The runtime's state root for a handler: `<state>/runtimes/<handler>`.
pub fn runtime_root(state: &Path, handler: &str) -> PathBuf {
    state.join("runtimes").join(handler)
}

/// Writes `config.json` into `bundle` (created if missing) and returns what the monitor
/// needs to run the container with `handler`.
pub fn write_bundle(
    state: &Path,
    handler: &Handler,
    bundle: &Path,
    config: &Spec,
) -> Result<OciRuntimeSpec> {
    let root = runtime_root(state, &handler.name);
    for d in [bundle, root.as_path()] {
        std::fs::create_dir_all(d).map_err(|e| Error::io("create", d, e))?;
    }
    write_config(bundle, config)?;
    Ok(OciRuntimeSpec {
        handler: handler.name.clone(),
        binary: handler.path.clone(),
        args: handler.args.clone(),
        root,
        bundle: bundle.to_owned(),
    })
}

/// Writes `config` as `<dir>/config.json`, mode 0600, replacing what was there.
pub fn write_config(dir: &Path, config: &Spec) -> Result<()> {
    let text = serde_json::to_vec_pretty(config)
        .map_err(|e| Error::Internal(format!("encode config.json: {e}")))?;
    let path = dir.join("config.json");
    // It holds the container's environment (Secrets too): the node's root reads it, no one
    // else, even where the umask is not the daemon's.
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(&text)
    };
    write().map_err(|e| Error::io("write", &path, e))
}

/// Everything [`prepare`] reads about a container and its pod.
#[derive(Debug)]
pub struct BundleInput<'a> {
    /// The daemon's state dir (`/run/berth`): runtime roots live under `runtimes/`.
    pub state: &'a Path,
    /// The pod's handler.
    pub handler: &'a Handler,
    /// The container's run dir: the bundle is its `bundle/`.
    pub container_dir: PathBuf,
    /// The container's security context, for its seccomp profile.
    pub security: Option<&'a k8s_cri::v1::LinuxContainerSecurityContext>,
    /// How the container joins its pod.
    pub binding: PodBinding,
}

/// Writes the bundle of a handler container and returns what the monitor runs it with.
pub fn prepare(spec: &ContainerSpec, input: BundleInput<'_>) -> Result<OciRuntimeSpec> {
    let config = bundle_spec(spec, input.security, input.binding)?;
    write_bundle(
        input.state,
        input.handler,
        &input.container_dir.join("bundle"),
        &config,
    )
}

/// The `config.json` of a container in its pod (see [`runtime_spec`]), with the seccomp
/// profile its settings name (the plan holds it compiled): a handler's bundle, and what
/// the hooks of a container of Berth's own executor read in theirs.
pub fn bundle_spec(
    spec: &ContainerSpec,
    security: Option<&k8s_cri::v1::LinuxContainerSecurityContext>,
    mut binding: PodBinding,
) -> Result<Spec> {
    if spec.process.security.seccomp.is_some() {
        let default = k8s_cri::v1::LinuxContainerSecurityContext::default();
        let caps = spec.process.security.capabilities.bounding;
        binding.seccomp = crate::security::seccomp_profile(security.unwrap_or(&default), caps)?
            .map(|(p, _)| seccomp(&p))
            .transpose()?;
    }
    runtime_spec(spec, &binding)
}

/// Removes the cgroup directories a runtime made for a pod Berth owns in hierarchies Berth's
/// cgroup manager does not use (runc joins every mounted v1 hierarchy, `name=systemd`
/// included, and creates the container's cgroup with its parents there; its `delete` removes
/// only the container's own). Only empty cgroups are removed (`rmdir`).
pub fn remove_runtime_cgroups(pod_cgroup: &str) {
    let rel = pod_cgroup.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for mount in cgroup_mounts(&mountinfo) {
        let dir = mount.join(rel);
        if dir.is_dir() {
            remove_empty_tree(&dir);
        }
    }
}

/// Mount points of the cgroup file systems in mountinfo text.
pub fn cgroup_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

fn remove_empty_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_tree(&e.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove a runtime's cgroup");
    }
}

/// Forgets a container's runtime state when its monitor is gone (the monitor runs the
/// runtime's `delete` for the containers it ran). The state is removed, not `delete`d: the
/// pids it records are the dead pod's, and the runtime, run from here, would check (and
/// could signal) the host's processes of those numbers. Berth removes the cgroups.
pub fn forget_state(rt: &OciRuntimeSpec, id: &str) {
    let dir = rt.root.join(id);
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(container = %id, dir = %dir.display(), error = %e, "cannot remove runtime state");
    }
}

#[cfg(test)]
mod tests;
