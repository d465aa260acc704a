//! What the requested CDI devices change in a container's plan: environment, device nodes,
//! mounts, additional groups and hooks. For each device, its spec's own edits come first
//! (once per spec) and then the device's, in request order, as the CDI Go library applies
//! them. An edit replaces what the container's own config set at the same place (an env
//! name, a device path, a mount destination), as there; two devices that disagree about one
//! place are an error naming both, where the Go library would let the later one win. The
//! network devices are returned, not planned: they are the pod's, moved by the daemon.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use super::spec::{self, Edits};
use super::{DeviceRef, NetDevice};
use crate::error::{Error, Result};
use crate::plan::{kernel_fs_at, may_mount_on};
use crate::spec::{
    ContainerSpec, DeviceSpec, HookSpec, MountKind, MountOptions, MountSpec, NodeSpec, Propagation,
};

/// Where the kernel's resctrl file system is mounted when the node has Intel RDT.
const RESCTRL: &str = "/sys/fs/resctrl";

/// Places already set by an earlier device, with the device and the value set.
#[derive(Default)]
struct Claims {
    env: HashMap<String, (String, String)>,
    nodes: HashMap<String, (String, DeviceSpec)>,
    mounts: HashMap<String, (String, MountSpec)>,
    /// By the name in the pod.
    net: std::collections::BTreeMap<String, (String, NetDevice)>,
}

/// Whether `path` is the root of a mounted file system of type `fstype` (by mountinfo).
fn is_mounted(path: &str, fstype: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines().any(|l| {
            let mut halves = l.split(" - ");
            let (Some(a), Some(b)) = (halves.next(), halves.next()) else {
                return false;
            };
            a.split(' ').nth(4) == Some(path) && b.split(' ').next() == Some(fstype)
        })
    })
}

/// Applies the edits of `devices` (resolved by the registry, in request order) to the plan.
/// `privileged` decides which kernel file systems a mount may land on, as for CRI mounts.
/// Returns the network devices the pod is to get, which are not the plan's to make.
pub fn apply(
    plan: &mut ContainerSpec,
    devices: &[(String, DeviceRef)],
    privileged: bool,
) -> Result<Vec<NetDevice>> {
    let mut claims = Claims::default();
    let mut specs_done: Vec<PathBuf> = Vec::new();
    let mut new_mounts: Vec<MountSpec> = Vec::new();
    for (name, d) in devices {
        let fail = |e: String| Error::InvalidArgument(format!("CDI device {name}: {e}"));
        if !specs_done.contains(&d.path) {
            specs_done.push(d.path.clone());
            let what = format!("{name} (spec {})", d.path.display());
            apply_one(
                plan,
                &d.spec.container_edits,
                &what,
                &mut claims,
                &mut new_mounts,
                privileged,
            )
            .map_err(fail)?;
        }
        let edits = &d.spec.devices[d.index].container_edits;
        apply_one(plan, edits, name, &mut claims, &mut new_mounts, privileged).map_err(fail)?;
    }
    // Parents before children, as the plan orders CRI mounts.
    new_mounts.sort_by_key(|m| m.destination.split('/').filter(|c| !c.is_empty()).count());
    let shared = |m: &MountSpec| {
        matches!(
            m.kind,
            MountKind::Bind {
                propagation: Some(Propagation::Shared),
                ..
            }
        )
    };
    if new_mounts.iter().any(shared) {
        plan.root_propagation = Propagation::Shared;
    }
    plan.mounts.extend(new_mounts);
    Ok(claims.net.into_values().map(|(_, n)| n).collect())
}

fn apply_one(
    plan: &mut ContainerSpec,
    e: &Edits,
    who: &str,
    claims: &mut Claims,
    new_mounts: &mut Vec<MountSpec>,
    privileged: bool,
) -> std::result::Result<(), String> {
    if e.intel_rdt.is_some() {
        return Err(if is_mounted(RESCTRL, "resctrl") {
            "asks for Intel RDT settings, which Berth does not apply".into()
        } else {
            format!("asks for Intel RDT settings, but {RESCTRL} is not mounted on this node")
        });
    }
    for n in &e.net_devices {
        let dev = NetDevice {
            host_name: n.host_interface_name.clone(),
            name: n.name.clone(),
        };
        let same_host = claims
            .net
            .values()
            .find(|(_, d)| d.host_name == dev.host_name && d.name != dev.name);
        if let Some((other, d)) = same_host {
            return Err(format!(
                "network device {} is {} for CDI device {other}",
                dev.host_name, d.name
            ));
        }
        if let Some((other, d)) = claims.net.get(&dev.name)
            && d.host_name != dev.host_name
        {
            return Err(format!(
                "network device name {} is {} for CDI device {other}",
                dev.name, d.host_name
            ));
        }
        claims.net.insert(dev.name.clone(), (who.to_owned(), dev));
    }
    for kv in &e.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if let Some((other, old)) = claims.env.get(k) {
            if old != v {
                return Err(format!("sets {k} differently from CDI device {other}"));
            }
            continue;
        }
        claims
            .env
            .insert(k.to_owned(), (who.to_owned(), v.to_owned()));
        let prefix = format!("{k}=");
        plan.process
            .env
            .retain(|x| !x.starts_with(&prefix) && x != k);
        plan.process.env.push(kv.clone());
    }
    for n in &e.device_nodes {
        let dev = device_node(n)?;
        if let Some((other, old)) = claims.nodes.get(&dev.container_path) {
            if old.node != dev.node || old.permissions != dev.permissions {
                return Err(format!(
                    "device node {} differs from CDI device {other}'s",
                    dev.container_path
                ));
            }
            continue;
        }
        claims
            .nodes
            .insert(dev.container_path.clone(), (who.to_owned(), dev.clone()));
        plan.devices
            .retain(|d| d.container_path != dev.container_path);
        plan.devices.push(dev);
    }
    for m in &e.mounts {
        let mount = mount(m)?;
        let dest = &mount.destination;
        if let Some(fs) = kernel_fs_at(dest)
            && !may_mount_on(fs, dest, privileged)
        {
            return Err(format!("mount {dest}: cannot be mounted on {fs}"));
        }
        if let Some((other, old)) = claims.mounts.get(dest) {
            if *old != mount {
                return Err(format!("mount {dest} differs from CDI device {other}'s"));
            }
            continue;
        }
        claims
            .mounts
            .insert(dest.clone(), (who.to_owned(), mount.clone()));
        plan.mounts.retain(|x| x.destination != *dest);
        new_mounts.push(mount);
    }
    for gid in e.additional_gids.iter().copied().filter(|g| *g != 0) {
        if let Some(u) = &plan.userns
            && u.host_gid(gid).is_none()
        {
            return Err(format!(
                "additional group {gid} is not mapped in the pod's user namespace"
            ));
        }
        if !plan.process.user.additional_gids.contains(&gid) {
            plan.process.user.additional_gids.push(gid);
        }
    }
    for h in &e.hooks {
        let hook = HookSpec {
            path: PathBuf::from(&h.path),
            args: h.args.clone(),
            env: h.env.clone(),
            timeout: h.timeout.and_then(|t| u32::try_from(t).ok()),
        };
        let list = match h.hook_name.as_str() {
            // The OCI runtime spec runs the deprecated prestart hooks where createRuntime
            // hooks run (runc does both there).
            "prestart" | "createRuntime" => &mut plan.hooks.create_runtime,
            "createContainer" => &mut plan.hooks.create_container,
            "startContainer" => &mut plan.hooks.start_container,
            "poststart" => &mut plan.hooks.poststart,
            "poststop" => &mut plan.hooks.poststop,
            other => return Err(format!("unknown hook point {other:?}")),
        };
        if !list.contains(&hook) {
            list.push(hook);
        }
    }
    Ok(())
}

/// A CDI device node as the plan carries it: type and numbers from the spec, or read from
/// the host node (not following a final symlink, as the Go library) when it omits them.
fn device_node(n: &spec::DeviceNode) -> std::result::Result<DeviceSpec, String> {
    let host = n.host_path.clone().unwrap_or_else(|| n.path.clone());
    let kind = match n.kind.as_deref() {
        None | Some("") => None,
        Some("c") | Some("u") => Some('c'),
        Some("b") => Some('b'),
        Some("p") => Some('p'),
        Some(t) => return Err(format!("device node {}: invalid type {t:?}", n.path)),
    };
    let (kind, major, minor) = match (kind, n.major, n.minor) {
        (Some('p'), _, _) => ('p', 0, 0),
        (Some(k), Some(major), minor) => (k, major as u64, minor.unwrap_or(0) as u64),
        (kind, _, _) => {
            let md = std::fs::symlink_metadata(&host)
                .map_err(|e| format!("device node {}: host device {host}: {e}", n.path))?;
            let ft = md.file_type();
            let host_kind = if ft.is_char_device() {
                'c'
            } else if ft.is_block_device() {
                'b'
            } else if ft.is_fifo() {
                'p'
            } else {
                return Err(format!(
                    "device node {}: host path {host} is not a device",
                    n.path
                ));
            };
            if kind.is_some_and(|k| k != host_kind) {
                return Err(format!(
                    "device node {}: the spec says type {}, {host} is of type {host_kind}",
                    n.path,
                    kind.unwrap_or(host_kind)
                ));
            }
            let rdev = md.rdev();
            (
                host_kind,
                libc::major(rdev) as u64,
                libc::minor(rdev) as u64,
            )
        }
    };
    let permissions = match n.permissions.as_deref() {
        None | Some("") => "rwm".to_owned(),
        Some(p) => p.to_owned(),
    };
    Ok(DeviceSpec {
        host_path: PathBuf::from(host),
        container_path: n.path.clone(),
        permissions,
        node: Some(NodeSpec {
            kind,
            major,
            minor,
            file_mode: n.file_mode,
            uid: n.uid,
            gid: n.gid,
        }),
    })
}

/// A CDI mount as the plan carries it: a bind mount when its type is empty or `bind`, else
/// a file system instance; OCI's flag options become the plan's flags.
fn mount(m: &spec::Mount) -> std::result::Result<MountSpec, String> {
    let dest = &m.container_path;
    let bind = matches!(m.kind.as_deref(), None | Some("") | Some("bind"));
    let mut options = MountOptions::default();
    let mut propagation = None;
    let mut data: Vec<&str> = Vec::new();
    for o in &m.options {
        match o.as_str() {
            "ro" => options.readonly = true,
            "rro" => {
                options.readonly = true;
                options.recursive_readonly = true;
            }
            "nosuid" => options.nosuid = true,
            "nodev" => options.nodev = true,
            "noexec" => options.noexec = true,
            "rw" | "suid" | "dev" | "exec" | "bind" | "rbind" => {}
            "private" | "rprivate" => propagation = Some(Propagation::Private),
            "slave" | "rslave" => propagation = Some(Propagation::Slave),
            "shared" | "rshared" => propagation = Some(Propagation::Shared),
            other if !bind && !other.contains(',') => data.push(other),
            other => return Err(format!("mount {dest}: unsupported option {other:?}")),
        }
    }
    let kind = if bind {
        if !m.host_path.starts_with('/') {
            return Err(format!(
                "mount {dest}: hostPath {:?} is not an absolute path",
                m.host_path
            ));
        }
        MountKind::Bind {
            source: PathBuf::from(&m.host_path),
            propagation,
        }
    } else {
        MountKind::Fs {
            fstype: m.kind.clone().unwrap_or_default(),
            source: m.host_path.clone(),
            data: data.join(","),
        }
    };
    Ok(MountSpec {
        destination: dest.clone(),
        kind,
        options,
    })
}
