//! User namespaces for pods (KEP-127): the mapping kubelet asks for, validated, and the plain
//! decisions that follow from it (the `uid_map` text, the host ids of the container's root,
//! the ownership options of the file systems the runtime mounts for the container).
//!
//! One user namespace per pod: the monitor creates it (see `monitor::userns`) together with
//! the pod's net, ipc and uts namespaces, which it owns, so that the container's root holds
//! its capabilities over the pod's network but none over the node's. Container roots are
//! overlays of idmapped image layers and their binds are idmapped with the same namespace,
//! so image files and volumes the node's root owns show as the container's root's.

use k8s_cri::v1::{NamespaceMode, UserNamespace};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One range of a mapping: `length` ids from `container_id` map to ids from `host_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// First id inside the namespace.
    pub container_id: u32,
    /// First id on the host.
    pub host_id: u32,
    /// How many ids.
    pub length: u32,
}

/// A pod's user namespace: its uid and gid mappings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsernsSpec {
    /// uid ranges.
    pub uids: Vec<IdRange>,
    /// gid ranges.
    pub gids: Vec<IdRange>,
}

/// The kernel takes at most this many lines in a `uid_map` (Linux 4.15).
const MAX_RANGES: usize = 340;

fn ranges(what: &str, list: &[k8s_cri::v1::IdMapping]) -> Result<Vec<IdRange>> {
    if list.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "user namespace mode POD needs {what} mappings"
        )));
    }
    if list.len() > MAX_RANGES {
        return Err(Error::InvalidArgument(format!(
            "user namespace has {} {what} mappings, at most {MAX_RANGES} are possible",
            list.len()
        )));
    }
    let mut out: Vec<IdRange> = Vec::with_capacity(list.len());
    for m in list {
        let r = IdRange {
            container_id: m.container_id,
            host_id: m.host_id,
            length: m.length,
        };
        if r.length == 0 {
            return Err(Error::InvalidArgument(format!(
                "user namespace {what} mapping {}:{} has length 0",
                r.container_id, r.host_id
            )));
        }
        let fits = |start: u32| start.checked_add(r.length - 1).is_some();
        if !fits(r.container_id) || !fits(r.host_id) {
            return Err(Error::InvalidArgument(format!(
                "user namespace {what} mapping {}:{}:{} overflows the 32-bit id range",
                r.container_id, r.host_id, r.length
            )));
        }
        let overlaps = |a: u32, b: u32, len_a: u32, len_b: u32| {
            (a as u64) < b as u64 + len_b as u64 && (b as u64) < a as u64 + len_a as u64
        };
        if out.iter().any(|o| {
            overlaps(o.container_id, r.container_id, o.length, r.length)
                || overlaps(o.host_id, r.host_id, o.length, r.length)
        }) {
            return Err(Error::InvalidArgument(format!(
                "user namespace {what} mappings overlap"
            )));
        }
        out.push(r);
    }
    if !out.iter().any(|r| r.container_id == 0) {
        // The container's root is what the runtime becomes inside the namespace.
        return Err(Error::InvalidArgument(format!(
            "user namespace {what} mappings do not map the container's root (id 0)"
        )));
    }
    Ok(out)
}

/// The user namespace kubelet asks for: `None` for the node's (mode NODE, or no options),
/// the validated mapping for mode POD; modes CONTAINER and TARGET are refused, as
/// containerd refuses them.
pub fn from_cri(opts: Option<&UserNamespace>) -> Result<Option<UsernsSpec>> {
    let Some(u) = opts else { return Ok(None) };
    match NamespaceMode::try_from(u.mode) {
        Ok(NamespaceMode::Node) => {
            if !u.uids.is_empty() || !u.gids.is_empty() {
                return Err(Error::InvalidArgument(
                    "user namespace mode NODE takes no uid or gid mappings".into(),
                ));
            }
            Ok(None)
        }
        Ok(NamespaceMode::Pod) => Ok(Some(UsernsSpec {
            uids: ranges("uid", &u.uids)?,
            gids: ranges("gid", &u.gids)?,
        })),
        Ok(m) => Err(Error::InvalidArgument(format!(
            "user namespace mode {} is not supported (only NODE and POD)",
            m.as_str_name()
        ))),
        Err(_) => Err(Error::InvalidArgument(format!(
            "unknown user namespace mode {}",
            u.mode
        ))),
    }
}

/// The text written to `/proc/<pid>/uid_map` (or `gid_map`): one `inside outside length`
/// line per range.
pub fn map_text(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.container_id, r.host_id, r.length))
        .collect()
}

fn to_host(ranges: &[IdRange], id: u32) -> Option<u32> {
    ranges
        .iter()
        .find(|r| id >= r.container_id && id - r.container_id < r.length)
        .map(|r| r.host_id + (id - r.container_id))
}

impl UsernsSpec {
    /// The host uid of a container uid, if mapped.
    pub fn host_uid(&self, uid: u32) -> Option<u32> {
        to_host(&self.uids, uid)
    }

    /// The host gid of a container gid, if mapped.
    pub fn host_gid(&self, gid: u32) -> Option<u32> {
        to_host(&self.gids, gid)
    }

    /// The host ids of the container's root (validation guarantees both are mapped).
    pub fn host_root(&self) -> (u32, u32) {
        (self.host_uid(0).unwrap_or(0), self.host_gid(0).unwrap_or(0))
    }
}

/// The data of a file system the runtime mounts for a user-namespaced container, so that
/// what it creates belongs to the container's root (a tmpfs) or to the container's `tty`
/// group (devpts): the runtime mounts them from the node's user namespace, where the ids
/// in the options would otherwise name host ids.
pub fn fs_data(fstype: &str, data: &str, userns: &UsernsSpec) -> String {
    let (uid, gid) = userns.host_root();
    let mut parts: Vec<String> = data
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    match fstype {
        "tmpfs" => {
            parts.retain(|p| !p.starts_with("uid=") && !p.starts_with("gid="));
            parts.push(format!("uid={uid}"));
            parts.push(format!("gid={gid}"));
        }
        "devpts" => {
            for p in parts.iter_mut() {
                if let Some(g) = p.strip_prefix("gid=")
                    && let Ok(g) = g.parse::<u32>()
                {
                    *p = format!("gid={}", userns.host_gid(g).unwrap_or(gid));
                }
            }
        }
        _ => {}
    }
    parts.join(",")
}

/// Whether a mount of a user-namespaced container is idmapped with the pod's namespace:
/// binds (volumes, the pod's files, /dev/shm) and image layers are, so that what the node's
/// root owns shows as the container's root's; the file systems the runtime mounts itself
/// (proc, sysfs, tmpfs, devpts, mqueue) are not: they belong to the namespaces they are
/// mounted for, or take owners as options ([`fs_data`]).
pub fn idmapped(kind: &crate::spec::MountKind) -> bool {
    use crate::spec::MountKind;
    match kind {
        MountKind::Bind { .. } | MountKind::Overlay { .. } => true,
        MountKind::Fs { .. } => false,
    }
}

/// Whether this node can run user-namespaced pods as Berth does: user namespaces allowed
/// (`user.max_user_namespaces` > 0) and idmapped layers under overlayfs (Linux 5.19, which
/// also has `mount_setattr(2)` for idmapped binds).
pub fn supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        max > 0 && kernel_at_least(&release, (5, 19)) && crate::sys::mount_setattr_supported()
    })
}

/// Whether a kernel release string (`6.1.0-18-amd64`) is at least `want`.
pub fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let major = v.next().unwrap_or(0);
    let minor = v.next().unwrap_or(0);
    (major, minor) >= want
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::IdMapping;

    fn m(container_id: u32, host_id: u32, length: u32) -> IdMapping {
        IdMapping {
            container_id,
            host_id,
            length,
        }
    }

    fn pod(uids: Vec<IdMapping>, gids: Vec<IdMapping>) -> UserNamespace {
        UserNamespace {
            mode: NamespaceMode::Pod as i32,
            uids,
            gids,
        }
    }

    #[test]
    fn node_mode_and_no_options_are_the_host_namespace() {
        assert_eq!(from_cri(None).unwrap(), None);
        let node = UserNamespace {
            mode: NamespaceMode::Node as i32,
            ..Default::default()
        };
        assert_eq!(from_cri(Some(&node)).unwrap(), None);
        let with_maps = UserNamespace {
            uids: vec![m(0, 100000, 65536)],
            ..node
        };
        assert!(from_cri(Some(&with_maps)).is_err());
    }

    #[test]
    fn pod_mode_takes_a_valid_mapping() {
        let spec = from_cri(Some(&pod(
            vec![m(0, 100000, 65536)],
            vec![m(0, 200000, 65536)],
        )))
        .unwrap()
        .unwrap();
        assert_eq!(spec.host_root(), (100000, 200000));
        assert_eq!(spec.host_uid(1000), Some(101000));
        assert_eq!(spec.host_uid(65536), None);
        assert_eq!(map_text(&spec.uids), "0 100000 65536\n");
        let two = [
            IdRange {
                container_id: 0,
                host_id: 100000,
                length: 1,
            },
            IdRange {
                container_id: 1,
                host_id: 300000,
                length: 10,
            },
        ];
        assert_eq!(map_text(&two), "0 100000 1\n1 300000 10\n");
    }

    #[test]
    fn bad_mappings_and_modes_are_invalid_arguments() {
        let ok = || vec![m(0, 100000, 65536)];
        let cases = [
            (pod(vec![], ok()), "needs uid"),
            (pod(ok(), vec![]), "needs gid"),
            (pod(vec![m(0, 100000, 0)], ok()), "length 0"),
            (pod(vec![m(0, u32::MAX - 10, 65536)], ok()), "overflows"),
            (pod(ok(), vec![m(u32::MAX, 1, 2)]), "overflows"),
            (
                pod(vec![m(0, 100000, 10), m(5, 200000, 10)], ok()),
                "overlap",
            ),
            (
                pod(vec![m(0, 100000, 10), m(10, 100005, 10)], ok()),
                "overlap",
            ),
            (pod(vec![m(1, 100000, 65536)], ok()), "root"),
        ];
        for (u, want) in cases {
            let e = from_cri(Some(&u)).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidArgument(msg) if msg.contains(want)),
                "{u:?}: {e}"
            );
        }
        for mode in [NamespaceMode::Container, NamespaceMode::Target] {
            let u = UserNamespace {
                mode: mode as i32,
                uids: ok(),
                gids: ok(),
            };
            assert!(matches!(from_cri(Some(&u)), Err(Error::InvalidArgument(_))));
        }
        // The last id of the 32-bit range is fine.
        assert!(from_cri(Some(&pod(vec![m(0, u32::MAX - 9, 10)], ok()))).is_ok());
    }

    #[test]
    fn runtime_mounted_file_systems_belong_to_the_container() {
        let spec = UsernsSpec {
            uids: vec![IdRange {
                container_id: 0,
                host_id: 100000,
                length: 65536,
            }],
            gids: vec![IdRange {
                container_id: 0,
                host_id: 200000,
                length: 65536,
            }],
        };
        assert_eq!(
            fs_data("tmpfs", "mode=755,size=65536k", &spec),
            "mode=755,size=65536k,uid=100000,gid=200000"
        );
        assert_eq!(
            fs_data("devpts", "newinstance,ptmxmode=0666,mode=0620,gid=5", &spec),
            "newinstance,ptmxmode=0666,mode=0620,gid=200005"
        );
        assert_eq!(fs_data("proc", "", &spec), "");
        assert_eq!(fs_data("mqueue", "", &spec), "");
    }

    #[test]
    fn binds_and_layers_are_idmapped_kernel_file_systems_are_not() {
        use crate::spec::MountKind;
        let bind = MountKind::Bind {
            source: "/var/lib/kubelet/pods/x/volumes/data".into(),
            propagation: None,
        };
        let layers = MountKind::Overlay {
            lower_dirs: vec!["/snap/1".into()],
        };
        assert!(idmapped(&bind));
        assert!(idmapped(&layers));
        for fstype in ["proc", "sysfs", "tmpfs", "devpts", "mqueue"] {
            let fs = MountKind::Fs {
                fstype: fstype.into(),
                source: fstype.into(),
                data: String::new(),
            };
            assert!(!idmapped(&fs), "{fstype}");
        }
    }

    #[test]
    fn kernel_versions() {
        assert!(kernel_at_least("6.18.44-fc-v782", (5, 19)));
        assert!(kernel_at_least("5.19.0", (5, 19)));
        assert!(!kernel_at_least("5.15.0-91-generic", (5, 19)));
        assert!(!kernel_at_least("", (5, 19)));
    }
}
