//! Plain functions that turn a CRI container config, its pod and its image into a
//! [`ContainerSpec`]: which mounts in which order, argv, environment, ids, namespaces.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1::{ContainerConfig, MountPropagation, NamespaceMode, NamespaceOption};

use crate::command::{compose_argv, compose_env};
use crate::error::{Error, Result};
use crate::image::ImageInfo;
use crate::security::SecuritySettings;
use crate::spec::*;
use crate::user::{GroupEntry, PasswdEntry, UserRequest, resolve_user};

/// What a container plan needs to know about its pod.
#[derive(Debug, Clone, Default)]
pub struct PodContext {
    /// The pod's run dir (`<state>/pods/<id>`), holding hostname, hosts, resolv.conf, shm.
    pub run_dir: PathBuf,
    /// The pod's hostname.
    pub hostname: String,
    /// The pod uses the host's IPC namespace (containers get the host's /dev/shm).
    pub host_ipc: bool,
    /// The pod's PID namespace is the host's.
    pub host_pid: bool,
    /// `PodSandboxConfig.log_directory`.
    pub log_directory: String,
    /// The pod's own user namespace; `None`: the node's.
    pub userns: Option<crate::userns::UsernsSpec>,
}

/// Everything [`plan_container`] reads.
#[derive(Debug)]
pub struct PlanInput<'a> {
    /// The new container's id.
    pub id: &'a str,
    /// kubelet's container config.
    pub config: &'a ContainerConfig,
    /// The pod.
    pub pod: &'a PodContext,
    /// The image.
    pub image: &'a ImageInfo,
    /// Layers of images used as volumes (`Mount.image`), by the mount's image reference.
    pub mount_images: &'a HashMap<String, Vec<PathBuf>>,
    /// `<root>/containers/<id>`: upper, work and rootfs mount point live here.
    pub container_dir: PathBuf,
    /// The image's /etc/passwd entries.
    pub passwd: &'a [PasswdEntry],
    /// The image's /etc/group entries.
    pub groups: &'a [GroupEntry],
    /// What "all capabilities" means on this node.
    pub all_caps: u64,
    /// The lowest oom_score_adj the node lets us set (the daemon's own).
    pub oom_score_adj_floor: i32,
    /// cgroup files the container joins.
    pub cgroup_procs: Vec<PathBuf>,
}

fn fs(dest: &str, fstype: &str, data: &str, o: MountOptions) -> MountSpec {
    MountSpec {
        destination: dest.into(),
        kind: MountKind::Fs {
            fstype: fstype.into(),
            source: fstype.into(),
            data: data.into(),
        },
        options: o,
    }
}

fn bind(dest: &str, source: PathBuf, o: MountOptions) -> MountSpec {
    MountSpec {
        destination: dest.into(),
        kind: MountKind::Bind {
            source,
            propagation: None,
        },
        options: o,
    }
}

const NSD: MountOptions = MountOptions {
    readonly: false,
    recursive_readonly: false,
    nosuid: true,
    nodev: true,
    noexec: true,
};

/// The mounts every container gets, in order (containerd's defaults plus the pod's files).
pub fn default_mounts(pod: &PodContext, privileged: bool, readonly_rootfs: bool) -> Vec<MountSpec> {
    let ro_files = MountOptions {
        readonly: readonly_rootfs,
        ..Default::default()
    };
    let mut mounts = vec![
        fs("/proc", "proc", "", NSD),
        fs(
            "/dev",
            "tmpfs",
            "mode=755,size=65536k",
            MountOptions {
                nosuid: true,
                ..Default::default()
            },
        ),
        fs(
            "/dev/pts",
            "devpts",
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
            MountOptions {
                nosuid: true,
                noexec: true,
                ..Default::default()
            },
        ),
        fs("/dev/mqueue", "mqueue", "", NSD),
        fs(
            "/sys",
            "sysfs",
            "",
            MountOptions {
                readonly: !privileged,
                ..NSD
            },
        ),
        bind(
            "/dev/shm",
            if pod.host_ipc {
                PathBuf::from("/dev/shm")
            } else {
                pod.run_dir.join("shm")
            },
            NSD,
        ),
        bind("/etc/hostname", pod.run_dir.join("hostname"), ro_files),
        bind("/etc/hosts", pod.run_dir.join("hosts"), ro_files),
        bind(
            "/etc/resolv.conf",
            pod.run_dir.join("resolv.conf"),
            ro_files,
        ),
    ];
    if let Some(userns) = &pod.userns {
        for m in &mut mounts {
            if let MountKind::Fs { fstype, data, .. } = &mut m.kind {
                *data = crate::userns::fs_data(fstype, data, userns);
            }
        }
    }
    mounts
}

/// The kernel file systems whose files steer the kernel and the runtime: a mount that
/// lands on one could hide a masked path or catch a write the runtime makes there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFs {
    /// procfs, at the container's `/proc`.
    Proc,
    /// sysfs, at the container's `/sys`.
    Sys,
}

impl std::fmt::Display for KernelFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelFs::Proc => "procfs",
            KernelFs::Sys => "sysfs",
        })
    }
}

/// Files of /proc a volume may cover, as runc allows: the views lxcfs virtualises. The
/// runtime never writes to them and the kernel takes no command through them.
const PROC_FILES_A_VOLUME_MAY_COVER: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/net/dev",
];

/// Whether a mount (not the runtime's own procfs or sysfs) may sit at the clean container
/// path `dest` when that lands on `fs`: into procfs only over the files above; into sysfs
/// only for a privileged container, which could mount there itself (CVE-2019-16884,
/// CVE-2019-19921, CVE-2025-52881).
pub fn may_mount_on(fs: KernelFs, dest: &str, privileged: bool) -> bool {
    match fs {
        KernelFs::Proc => PROC_FILES_A_VOLUME_MAY_COVER.contains(&dest),
        KernelFs::Sys => privileged,
    }
}

/// The kernel file system the clean container path `dest` names, by its place alone
/// (where the runtime mounts procfs and sysfs); the monitor checks where it really lands.
pub fn kernel_fs_at(dest: &str) -> Option<KernelFs> {
    let under =
        |top: &str| dest == top || dest.strip_prefix(top).is_some_and(|r| r.starts_with('/'));
    if under("/proc") {
        Some(KernelFs::Proc)
    } else if under("/sys") {
        Some(KernelFs::Sys)
    } else {
        None
    }
}

/// Refuses a CRI mount whose destination is on procfs or sysfs where [`may_mount_on`] says
/// no, naming it: before anything is created, with the error kubelet shows the user.
fn refuse_kernel_fs_mounts(mounts: &[k8s_cri::v1::Mount], privileged: bool) -> Result<()> {
    for m in mounts {
        let dest = clean_abs(&m.container_path, "mount container_path")?;
        if let Some(fs) = kernel_fs_at(&dest)
            && !may_mount_on(fs, &dest, privileged)
        {
            return Err(Error::InvalidArgument(format!(
                "mount {dest}: a volume cannot be mounted on {fs}"
            )));
        }
    }
    Ok(())
}

fn clean_abs(path: &str, what: &str) -> Result<String> {
    if !path.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "{what} {path:?} is not an absolute path"
        )));
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// The full mount list: defaults not overridden by a CRI mount, then the CRI mounts ordered
/// so that parents come before children. Returns the list and the root propagation.
pub fn plan_mounts(
    defaults: Vec<MountSpec>,
    cri: &[k8s_cri::v1::Mount],
    mount_images: &HashMap<String, Vec<PathBuf>>,
) -> Result<(Vec<MountSpec>, Propagation)> {
    let mut planned: Vec<MountSpec> = Vec::with_capacity(cri.len());
    let mut root = Propagation::Slave;
    for m in cri {
        let dest = clean_abs(&m.container_path, "mount container_path")?;
        let options = MountOptions {
            readonly: m.readonly || m.recursive_read_only,
            recursive_readonly: m.recursive_read_only,
            ..Default::default()
        };
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "mount {dest}: idmapped mounts need the pod to have its own user namespace"
            )));
        }
        if m.recursive_read_only && !m.readonly {
            return Err(Error::InvalidArgument(format!(
                "mount {dest}: recursive_read_only requires readonly"
            )));
        }
        let kind = if let Some(image) = m.image.as_ref().filter(|i| !i.image.is_empty()) {
            if !m.host_path.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "mount {dest}: both host_path and image are set"
                )));
            }
            let layers = mount_images.get(&image.image).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "mount {dest}: image {:?} is not available",
                    image.image
                ))
            })?;
            MountKind::Overlay {
                lower_dirs: layers.clone(),
            }
        } else {
            if m.host_path.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "mount {dest}: host_path is empty"
                )));
            }
            let propagation = match MountPropagation::try_from(m.propagation) {
                Ok(MountPropagation::PropagationPrivate) => Propagation::Private,
                Ok(MountPropagation::PropagationHostToContainer) => Propagation::Slave,
                Ok(MountPropagation::PropagationBidirectional) => Propagation::Shared,
                Err(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "mount {dest}: unknown propagation {}",
                        m.propagation
                    )));
                }
            };
            if m.recursive_read_only && propagation != Propagation::Private {
                return Err(Error::InvalidArgument(format!(
                    "mount {dest}: recursive_read_only requires private propagation"
                )));
            }
            if propagation == Propagation::Shared {
                root = Propagation::Shared;
            }
            MountKind::Bind {
                source: PathBuf::from(&m.host_path),
                propagation: Some(propagation),
            }
        };
        planned.push(MountSpec {
            destination: dest,
            kind,
            options,
        });
    }
    // Parents before children; equal depth keeps kubelet's order (containerd sorts the same way).
    planned.sort_by_key(|m| m.destination.split('/').filter(|c| !c.is_empty()).count());
    let mut all: Vec<MountSpec> = defaults
        .into_iter()
        .filter(|d| !planned.iter().any(|m| m.destination == d.destination))
        .collect();
    all.extend(planned);
    Ok((all, root))
}

/// The namespaces a container's config asks for, if it says.
fn namespace_options(config: &ContainerConfig) -> Option<&NamespaceOption> {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
}

fn pid_namespace(config: &ContainerConfig, pod: &PodContext) -> Result<PidNamespace> {
    let Some(opts) = namespace_options(config) else {
        return Ok(if pod.host_pid {
            PidNamespace::Node
        } else {
            PidNamespace::Pod
        });
    };
    Ok(match NamespaceMode::try_from(opts.pid) {
        Ok(NamespaceMode::Container) => PidNamespace::Container,
        Ok(NamespaceMode::Pod) if pod.host_pid => PidNamespace::Node,
        Ok(NamespaceMode::Pod) => PidNamespace::Pod,
        Ok(NamespaceMode::Node) if pod.userns.is_some() => {
            return Err(Error::InvalidArgument(
                "a container in a pod with its own user namespace cannot use the node's PID \
                 namespace"
                    .into(),
            ));
        }
        Ok(NamespaceMode::Node) => PidNamespace::Node,
        Ok(NamespaceMode::Target) => {
            if opts.target_id.is_empty() {
                return Err(Error::InvalidArgument(
                    "pid namespace TARGET without target_id".into(),
                ));
            }
            PidNamespace::Target {
                container_id: opts.target_id.clone(),
            }
        }
        Err(_) => {
            return Err(Error::InvalidArgument(format!(
                "unknown pid namespace mode {}",
                opts.pid
            )));
        }
    })
}

/// The container's user namespace: the pod's. A container that names one must name the
/// pod's (all containers of a pod share it, as with containerd); one that names none joins it.
fn container_userns(
    config: &ContainerConfig,
    pod: &PodContext,
) -> Result<Option<crate::userns::UsernsSpec>> {
    let Some(opts) = namespace_options(config).and_then(|o| o.userns_options.as_ref()) else {
        return Ok(pod.userns.clone());
    };
    let asked = crate::userns::from_cri(Some(opts))?;
    if asked != pod.userns {
        return Err(Error::InvalidArgument(format!(
            "the container's user namespace ({}) differs from its pod's ({})",
            describe_userns(asked.as_ref()),
            describe_userns(pod.userns.as_ref())
        )));
    }
    Ok(asked)
}

fn describe_userns(u: Option<&crate::userns::UsernsSpec>) -> String {
    match u {
        None => "the node's".into(),
        Some(u) => format!(
            "uids {} gids {}",
            crate::userns::map_text(&u.uids).trim().replace('\n', ", "),
            crate::userns::map_text(&u.gids).trim().replace('\n', ", ")
        ),
    }
}

/// The CRI mounts as [`plan_mounts`] takes them: in a user-namespaced pod every bind is
/// idmapped with the pod's namespace, so a mount may repeat the pod's mapping (kubelet's
/// `uid_mappings`), which is then dropped; any other mapping is refused.
fn mounts_for_userns(
    mounts: &[k8s_cri::v1::Mount],
    userns: Option<&crate::userns::UsernsSpec>,
) -> Result<Vec<k8s_cri::v1::Mount>> {
    let Some(userns) = userns else {
        return Ok(mounts.to_vec());
    };
    let same = |list: &[k8s_cri::v1::IdMapping], ranges: &[crate::userns::IdRange]| {
        list.len() == ranges.len()
            && list.iter().zip(ranges).all(|(m, r)| {
                m.container_id == r.container_id && m.host_id == r.host_id && m.length == r.length
            })
    };
    mounts
        .iter()
        .map(|m| {
            if m.uid_mappings.is_empty() && m.gid_mappings.is_empty() {
                return Ok(m.clone());
            }
            if !same(&m.uid_mappings, &userns.uids) || !same(&m.gid_mappings, &userns.gids) {
                return Err(Error::InvalidArgument(format!(
                    "mount {}: an idmapped mount must use its pod's user namespace mapping",
                    m.container_path
                )));
            }
            Ok(k8s_cri::v1::Mount {
                uid_mappings: Vec::new(),
                gid_mappings: Vec::new(),
                ..m.clone()
            })
        })
        .collect()
}

/// Plans a container. Reads nothing from disk: the caller passes the image's accounts.
pub fn plan_container(input: &PlanInput<'_>) -> Result<ContainerSpec> {
    let c = input.config;
    let sc = c.linux.as_ref().and_then(|l| l.security_context.as_ref());
    let privileged = sc.is_some_and(|s| s.privileged);
    let readonly_rootfs = sc.is_some_and(|s| s.readonly_rootfs);
    let security = SecuritySettings::from_cri(sc, input.all_caps)?;

    let argv = compose_argv(&c.command, &c.args, &input.image.config)?;
    let user = resolve_user(
        &UserRequest {
            run_as_user: sc.and_then(|s| s.run_as_user.as_ref()).map(|v| v.value),
            run_as_group: sc.and_then(|s| s.run_as_group.as_ref()).map(|v| v.value),
            run_as_username: sc.map(|s| s.run_as_username.clone()).unwrap_or_default(),
            image_user: input.image.config.user.clone(),
            supplemental_groups: sc
                .map(|s| s.supplemental_groups.clone())
                .unwrap_or_default(),
            strict_groups: sc.is_some_and(|s| s.supplemental_groups_policy == 1),
        },
        input.passwd,
        input.groups,
    )?;
    let cri_env: Vec<(String, String)> = c
        .envs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    let env = compose_env(
        &input.image.config.env,
        &cri_env,
        &input.pod.hostname,
        &user.home,
    );
    let cwd = if !c.working_dir.is_empty() {
        clean_abs(&c.working_dir, "working_dir")?
    } else if !input.image.config.working_dir.is_empty() {
        clean_abs(&input.image.config.working_dir, "image working dir")?
    } else {
        "/".into()
    };
    let userns = container_userns(c, input.pod)?;
    if userns.is_some() && privileged {
        // As kubelet validates: privileged means the node's root.
        return Err(Error::InvalidArgument(
            "a privileged container cannot run in a pod with its own user namespace".into(),
        ));
    }
    if let Some(u) = &userns {
        let unmapped_gid = std::iter::once(user.gid)
            .chain(user.additional_gids.iter().copied())
            .find(|g| u.host_gid(*g).is_none());
        if u.host_uid(user.uid).is_none() || unmapped_gid.is_some() {
            return Err(Error::InvalidArgument(format!(
                "user {}:{} is not mapped in the pod's user namespace",
                user.uid,
                unmapped_gid.unwrap_or(user.gid)
            )));
        }
    }
    refuse_kernel_fs_mounts(&c.mounts, privileged)?;
    let cri_mounts = mounts_for_userns(&c.mounts, userns.as_ref())?;
    let (mounts, root_propagation) = plan_mounts(
        default_mounts(input.pod, privileged, readonly_rootfs),
        &cri_mounts,
        input.mount_images,
    )?;
    let mut devices = Vec::with_capacity(c.devices.len());
    for d in &c.devices {
        if d.host_path.is_empty() {
            return Err(Error::InvalidArgument(
                "device with an empty host_path".into(),
            ));
        }
        let container_path = if d.container_path.is_empty() {
            d.host_path.clone()
        } else {
            d.container_path.clone()
        };
        devices.push(DeviceSpec {
            host_path: PathBuf::from(&d.host_path),
            container_path: clean_abs(&container_path, "device container_path")?,
            permissions: if d.permissions.is_empty() {
                "rwm".into()
            } else {
                d.permissions.clone()
            },
            node: None,
        });
    }
    let oom = c
        .linux
        .as_ref()
        .and_then(|l| l.resources.as_ref())
        .map(|r| r.oom_score_adj);
    let oom_score_adj = oom.map(|v| (v.clamp(-1000, 1000) as i32).max(input.oom_score_adj_floor));
    let log_path = if input.pod.log_directory.is_empty() || c.log_path.is_empty() {
        None
    } else {
        Some(Path::new(&input.pod.log_directory).join(&c.log_path))
    };
    if input.image.lower_dirs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "image {:?} has no layers",
            input.image.name
        )));
    }
    Ok(ContainerSpec {
        id: input.id.to_owned(),
        rootfs: RootfsSpec {
            lower_dirs: input.image.lower_dirs.clone(),
            upper_dir: input.container_dir.join("upper"),
            work_dir: input.container_dir.join("work"),
            mount_point: input.container_dir.join("rootfs"),
            readonly: readonly_rootfs,
        },
        root_propagation,
        mounts,
        devices,
        process: ProcessSpec {
            args: argv,
            env,
            cwd,
            user,
            security,
            oom_score_adj,
        },
        pid_ns: pid_namespace(c, input.pod)?,
        log_path,
        cgroup_procs: input.cgroup_procs.clone(),
        stdin: c.stdin,
        stdin_once: c.stdin_once,
        tty: c.tty,
        userns,
        oci: None,
        hooks: HooksSpec::default(),
        // Set with the hooks (CDI's, applied after the plan): only they read them.
        annotations: Default::default(),
    })
}

/// Host paths the plan binds that do not exist: a CRI mount of a missing path is an error
/// kubelet must see (it does not create them).
pub fn missing_bind_sources(spec: &ContainerSpec) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    for m in &spec.mounts {
        if let MountKind::Bind { source, .. } = &m.kind
            && std::fs::metadata(source).is_err()
        {
            missing.push(source.clone());
        }
    }
    for d in spec.devices.iter().filter(|d| d.node.is_none()) {
        if std::fs::metadata(&d.host_path).is_err() {
            missing.push(d.host_path.clone());
        }
    }
    missing
}

#[cfg(test)]
mod tests;
