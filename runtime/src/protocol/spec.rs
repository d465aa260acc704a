//! What the monitor needs to create a container: every decision already made by the daemon
//! (mount list, argv, environment, ids, security settings), so the monitor only executes it.
//! It crosses the monitor protocol as JSON and is kept in the container record.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::security::SecuritySettings;
use crate::user::ResolvedUser;

/// A container, fully planned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Container id.
    pub id: String,
    /// The overlay root file system.
    pub rootfs: RootfsSpec,
    /// Propagation of the container's mount tree: slave, or shared when a mount asks for
    /// bidirectional propagation.
    pub root_propagation: Propagation,
    /// Mounts in the order they are made, destinations inside the container.
    pub mounts: Vec<MountSpec>,
    /// Device nodes created in the container's `/dev`.
    pub devices: Vec<DeviceSpec>,
    /// The process, its ids and security settings.
    pub process: ProcessSpec,
    /// Which PID namespace the container joins.
    pub pid_ns: PidNamespace,
    /// Absolute path of the CRI log file; `None` discards output.
    pub log_path: Option<PathBuf>,
    /// `cgroup.procs` (or `tasks`) files the container's processes are written into.
    pub cgroup_procs: Vec<PathBuf>,
    /// Keep a stdin pipe open.
    pub stdin: bool,
    /// Close stdin after the first attach ends.
    pub stdin_once: bool,
    /// Run on a pseudo terminal.
    pub tty: bool,
    /// The pod's user namespace, which the container joins; `None`: the node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<crate::userns::UsernsSpec>,
    /// Run by an external OCI runtime (a RuntimeClass handler) instead of Berth's own
    /// executor; `None` for the default handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciRuntimeSpec>,
    /// OCI hooks run around the container's life (today they come from CDI device
    /// specs), with the OCI runtime spec's semantics.
    #[serde(default, skip_serializing_if = "HooksSpec::is_empty")]
    pub hooks: HooksSpec,
    /// The container's CRI annotations, kept only when it has hooks: the OCI state a hook
    /// reads on its stdin, and the `config.json` its bundle holds, carry them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The OCI hooks of a container, by the point of its life they run at (OCI runtime spec,
/// "POSIX-platform Hooks"), each list in the order the hooks run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HooksSpec {
    /// In the runtime's namespaces, after the container's namespaces exist and before
    /// `pivot_root`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create_runtime: Vec<HookSpec>,
    /// In the container's namespaces (its mount namespace, root not yet pivoted), after
    /// `createRuntime`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create_container: Vec<HookSpec>,
    /// In the container's namespaces, after start is asked and before the user process
    /// is executed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_container: Vec<HookSpec>,
    /// In the runtime's namespaces, after the user process started; a failure is logged,
    /// not fatal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststart: Vec<HookSpec>,
    /// In the runtime's namespaces, after the container is deleted; a failure is logged,
    /// not fatal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststop: Vec<HookSpec>,
}

impl HooksSpec {
    /// No hook at any point.
    pub fn is_empty(&self) -> bool {
        self.create_runtime.is_empty()
            && self.create_container.is_empty()
            && self.start_container.is_empty()
            && self.poststart.is_empty()
            && self.poststop.is_empty()
    }
}

/// One OCI hook: a program run with the container's state JSON on its stdin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSpec {
    /// Absolute path of the program, in the namespace the hook runs in.
    pub path: PathBuf,
    /// argv, `args[0]` included (OCI semantics); empty means `[path]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// `KEY=value` entries, the hook's whole environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Seconds after which the hook is killed and counted as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
}

/// How the monitor runs a container with an external OCI runtime: the daemon has written
/// the bundle's `config.json`; the monitor mounts the root and drives the runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciRuntimeSpec {
    /// The RuntimeClass handler name.
    pub handler: String,
    /// The runtime binary (runc, crun).
    pub binary: PathBuf,
    /// Global options put before every command, after `--root` and `--log`.
    #[serde(default)]
    pub args: Vec<String>,
    /// The runtime's state root (its `--root`).
    pub root: PathBuf,
    /// The bundle: `config.json`, the pid file and the runtime's log.
    pub bundle: PathBuf,
}

/// The container's root: overlayfs of the image layers and a private upper dir.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RootfsSpec {
    /// Image layers, topmost first.
    pub lower_dirs: Vec<PathBuf>,
    /// The container's writable layer.
    pub upper_dir: PathBuf,
    /// overlayfs work dir (same file system as `upper_dir`).
    pub work_dir: PathBuf,
    /// Where the overlay is mounted (inside the container's own mount namespace only).
    pub mount_point: PathBuf,
    /// Remount the root read-only once everything is mounted.
    pub readonly: bool,
}

/// Mount propagation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// `rprivate`.
    Private,
    /// `rslave`: host mounts propagate in, none out.
    #[default]
    Slave,
    /// `rshared`: both ways.
    Shared,
}

/// One mount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Absolute path inside the container.
    pub destination: String,
    /// What is mounted.
    pub kind: MountKind,
    /// Flags.
    #[serde(default)]
    pub options: MountOptions,
}

/// The source of a mount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MountKind {
    /// A (recursive) bind mount of a host path.
    Bind {
        /// Host path.
        source: PathBuf,
        /// Propagation of the new mount; `None` leaves it as inherited.
        #[serde(default)]
        propagation: Option<Propagation>,
    },
    /// A file system instance (proc, sysfs, tmpfs, devpts, mqueue).
    Fs {
        /// File system type.
        fstype: String,
        /// Source name shown in mountinfo.
        source: String,
        /// File-system specific options (`mode=755,size=65536k`).
        #[serde(default)]
        data: String,
    },
    /// A read-only overlay of image layers (image volumes).
    Overlay {
        /// Layers, topmost first.
        lower_dirs: Vec<PathBuf>,
    },
}

/// Generic mount flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountOptions {
    /// MS_RDONLY.
    #[serde(default)]
    pub readonly: bool,
    /// Read-only for every submount too (`mount_setattr(AT_RECURSIVE)`).
    #[serde(default)]
    pub recursive_readonly: bool,
    /// MS_NOSUID.
    #[serde(default)]
    pub nosuid: bool,
    /// MS_NODEV.
    #[serde(default)]
    pub nodev: bool,
    /// MS_NOEXEC.
    #[serde(default)]
    pub noexec: bool,
}

/// A device node made in the container from a host device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// The host device whose type and numbers are copied.
    pub host_path: PathBuf,
    /// Path inside the container.
    pub container_path: String,
    /// cgroup permissions (`rwm`); file mode follows `r` and `w` unless `node` sets it.
    pub permissions: String,
    /// The node as the daemon resolved it (CDI device nodes, whose spec may give type and
    /// numbers without a host device); `None` copies `host_path`'s when the node is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeSpec>,
}

/// A device node's kind, numbers, mode and owner, decided by the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// `c` (character), `b` (block) or `p` (fifo), as the device cgroup and OCI name them.
    pub kind: char,
    /// Major number (0 for a fifo).
    pub major: u64,
    /// Minor number (0 for a fifo).
    pub minor: u64,
    /// Permission bits; `None` follows the permissions' `r` and `w`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<u32>,
    /// Owner in the container (mapped through a user namespace); `None`: root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Group in the container (mapped through a user namespace); `None`: root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// The container's (or an exec's) process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// Absolute working directory, created if missing.
    pub cwd: String,
    /// Ids.
    pub user: ResolvedUser,
    /// Capabilities, no_new_privs, seccomp, masked and read-only paths.
    pub security: SecuritySettings,
    /// Value written to `/proc/self/oom_score_adj`, already clamped to what the node allows.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
}

/// The PID namespace a container joins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum PidNamespace {
    /// Its own, the process is PID 1 (kubelet's default).
    #[default]
    Container,
    /// The pod's (the monitor is PID 1).
    Pod,
    /// The host's.
    Node,
    /// Another container's.
    Target {
        /// The target container.
        container_id: String,
    },
}
