//! The seam for the security context: capabilities, no_new_privs, seccomp, masked and
//! read-only paths. The daemon computes a [`SecuritySettings`]; the monitor applies it as the
//! last steps before exec.

use serde::{Deserialize, Serialize};

use k8s_cri::v1::LinuxContainerSecurityContext;

use crate::error::{Error, Result};

/// Capability names by number (`CAP_CHOWN` = 0 ...), as the kernel numbers them.
pub const CAPABILITY_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// containerd's default capability set for a container.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// containerd's default masked paths.
pub const DEFAULT_MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/interrupts",
];

/// containerd's default read-only paths.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The capability sets of a process, one bit per capability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitySets {
    /// Bounding set.
    pub bounding: u64,
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
    /// Ambient set.
    pub ambient: u64,
}

pub use berth_seccomp::{BpfInstruction, SeccompFilter};

/// Everything about a process's privileges beyond its ids.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecuritySettings {
    /// Capability sets (applied for root and non-root alike, with keep-caps across setuid).
    pub capabilities: CapabilitySets,
    /// PR_SET_NO_NEW_PRIVS.
    #[serde(default)]
    pub no_new_privs: bool,
    /// A seccomp filter, if any.
    #[serde(default)]
    pub seccomp: Option<SeccompFilter>,
    /// Paths hidden from the container (`/dev/null` over files, an empty read-only tmpfs over
    /// directories).
    #[serde(default)]
    pub masked_paths: Vec<String>,
    /// Paths remounted read-only.
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    /// A privileged container: all capabilities, no masked or read-only paths, writable /sys.
    #[serde(default)]
    pub privileged: bool,
    /// The AppArmor profile the process execs into (see [`crate::lsm`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apparmor_profile: Option<String>,
}

/// The capability number of `name` (`CAP_NET_ADMIN` or `NET_ADMIN`, any case).
pub fn capability_number(name: &str) -> Option<u32> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITY_NAMES
        .iter()
        .position(|n| *n == bare)
        .map(|i| i as u32)
}

fn mask_of(names: &[&str]) -> u64 {
    names
        .iter()
        .filter_map(|n| capability_number(n))
        .fold(0, |m, c| m | (1u64 << c))
}

/// The bounding set of the calling process (the daemon's), which "all capabilities" means.
pub fn own_bounding_set() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX >> (64 - CAPABILITY_NAMES.len()))
}

/// The filter a container's seccomp settings ask for (see [`seccomp_profile`]).
fn seccomp_for(ctx: &LinuxContainerSecurityContext, caps: u64) -> Result<Option<SeccompFilter>> {
    match seccomp_profile(ctx, caps)? {
        None => Ok(None),
        // The runtime default, compiled by Berth: its rules keep their order here.
        Some((p, None)) => {
            crate::seccomp::compile(&crate::seccomp::guard_socket_family(p)).map(Some)
        }
        Some((p, Some(path))) => crate::seccomp::compile(&p)
            .map(Some)
            .map_err(|e| Error::InvalidArgument(format!("seccomp profile {path}: {e}"))),
    }
}

/// The profile a container's seccomp settings ask for: `seccomp` if set, else the
/// deprecated `seccomp_profile_path` (`runtime/default`, `docker/default`, `unconfined`,
/// `localhost/<path>`); nothing set is unconfined, as in containerd. `caps` is the
/// container's capability set (the runtime default profile depends on it). A Localhost
/// profile comes with its path.
pub fn seccomp_profile(
    ctx: &LinuxContainerSecurityContext,
    caps: u64,
) -> Result<Option<(crate::seccomp::Profile, Option<&str>)>> {
    use k8s_cri::v1::security_profile::ProfileType;
    enum Wanted<'a> {
        Default,
        Unconfined,
        Localhost(&'a str),
    }
    let wanted = match &ctx.seccomp {
        Some(p) => match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Wanted::Default,
            Ok(ProfileType::Unconfined) => Wanted::Unconfined,
            Ok(ProfileType::Localhost) => Wanted::Localhost(&p.localhost_ref),
            Err(_) => {
                return Err(Error::InvalidArgument(format!(
                    "unknown seccomp profile type {}",
                    p.profile_type
                )));
            }
        },
        // kubelet still fills the deprecated field for older runtimes.
        #[allow(deprecated)]
        None => match ctx.seccomp_profile_path.as_str() {
            "" | "unconfined" => Wanted::Unconfined,
            "runtime/default" | "docker/default" => Wanted::Default,
            other => match other.strip_prefix("localhost/") {
                Some(path) => Wanted::Localhost(path),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "unknown seccomp profile {other:?}"
                    )));
                }
            },
        },
    };
    match wanted {
        Wanted::Unconfined => Ok(None),
        Wanted::Default => Ok(Some((crate::seccomp::runtime_default(caps), None))),
        Wanted::Localhost(path) => {
            if !path.starts_with('/') {
                return Err(Error::InvalidArgument(format!(
                    "seccomp localhost profile {path:?} is not an absolute path"
                )));
            }
            crate::seccomp::read_profile(path).map(|p| Some((p, Some(path))))
        }
    }
}

impl SecuritySettings {
    /// Computes the settings from a CRI security context, with containerd's defaults.
    /// `all_caps` is the set "ALL" and privileged stand for (the daemon's bounding set).
    pub fn from_cri(ctx: Option<&LinuxContainerSecurityContext>, all_caps: u64) -> Result<Self> {
        let default = LinuxContainerSecurityContext::default();
        let ctx = ctx.unwrap_or(&default);
        let mut caps = mask_of(&DEFAULT_CAPABILITIES) & all_caps;
        let mut ambient = 0u64;
        if ctx.privileged {
            caps = all_caps;
        }
        if let Some(c) = &ctx.capabilities {
            let parse = |list: &[String]| -> Result<u64> {
                let mut m = 0u64;
                for n in list {
                    if n.eq_ignore_ascii_case("ALL") {
                        m |= all_caps;
                    } else {
                        let bit = capability_number(n).ok_or_else(|| {
                            Error::InvalidArgument(format!("unknown capability {n:?}"))
                        })?;
                        m |= 1 << bit;
                    }
                }
                Ok(m)
            };
            let (add, drop, amb) = (
                parse(&c.add_capabilities)?,
                parse(&c.drop_capabilities)?,
                parse(&c.add_ambient_capabilities)?,
            );
            if !ctx.privileged {
                // containerd applies drop after add, except that an explicit add wins over
                // a drop of ALL.
                let drops_all = c
                    .drop_capabilities
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case("ALL"));
                caps = if drops_all {
                    add & all_caps
                } else {
                    (caps | add) & !drop & all_caps
                };
            }
            ambient = amb & caps;
        }
        let (masked, readonly) = if ctx.privileged {
            (Vec::new(), Vec::new())
        } else {
            (
                if ctx.masked_paths.is_empty() {
                    DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect()
                } else {
                    ctx.masked_paths.clone()
                },
                if ctx.readonly_paths.is_empty() {
                    DEFAULT_READONLY_PATHS
                        .iter()
                        .map(|s| s.to_string())
                        .collect()
                } else {
                    ctx.readonly_paths.clone()
                },
            )
        };
        let seccomp = if ctx.privileged {
            // A privileged container runs unconfined, whatever profile it names.
            None
        } else {
            seccomp_for(ctx, caps)?
        };
        Ok(SecuritySettings {
            capabilities: CapabilitySets {
                bounding: caps,
                effective: caps,
                permitted: caps,
                inheritable: ambient,
                ambient,
            },
            no_new_privs: ctx.no_new_privs,
            seccomp,
            masked_paths: masked,
            readonly_paths: readonly,
            privileged: ctx.privileged,
            // Decided with the node's LSMs (crate::lsm) by the caller.
            apparmor_profile: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Classify;
    use k8s_cri::v1::Capability;

    const ALL: u64 = (1 << 41) - 1;

    #[test]
    #[allow(deprecated)]
    fn seccomp_profiles_follow_the_cri_fields() {
        use k8s_cri::v1::SecurityProfile;
        use k8s_cri::v1::security_profile::ProfileType;
        let with = |p: Option<SecurityProfile>, path: &str, privileged: bool| {
            SecuritySettings::from_cri(
                Some(&LinuxContainerSecurityContext {
                    seccomp: p,
                    seccomp_profile_path: path.into(),
                    privileged,
                    ..Default::default()
                }),
                ALL,
            )
        };
        let profile = |t: ProfileType, r: &str| {
            Some(SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            })
        };
        // Whether the resolved context carries a seccomp filter.
        let filtered = |p, field, privileged| with(p, field, privileged).unwrap().seccomp.is_some();
        assert!(!filtered(None, "", false));
        assert!(!filtered(None, "unconfined", false));
        assert!(filtered(None, "runtime/default", false));
        assert!(filtered(
            profile(ProfileType::RuntimeDefault, ""),
            "",
            false
        ));
        assert!(!filtered(
            profile(ProfileType::Unconfined, ""),
            "runtime/default",
            false
        ));
        assert!(!filtered(
            profile(ProfileType::RuntimeDefault, ""),
            "",
            true
        ));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.json");
        std::fs::write(
            &file,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let path = file.display().to_string();
        assert!(
            with(profile(ProfileType::Localhost, &path), "", false)
                .unwrap()
                .seccomp
                .is_some()
        );
        assert!(
            with(None, &format!("localhost/{path}"), false)
                .unwrap()
                .seccomp
                .is_some()
        );
        for bad in [
            with(profile(ProfileType::Localhost, "relative.json"), "", false),
            with(profile(ProfileType::Localhost, "/no/such.json"), "", false),
            with(None, "whatever", false),
        ] {
            assert_eq!(
                bad.unwrap_err().class(),
                crate::error::Class::InvalidArgument
            );
        }
    }

    #[test]
    fn names() {
        assert_eq!(capability_number("CAP_CHOWN"), Some(0));
        assert_eq!(capability_number("net_admin"), Some(12));
        assert_eq!(capability_number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(capability_number("CAP_NOPE"), None);
    }

    #[test]
    fn defaults_are_containerds() {
        let s = SecuritySettings::from_cri(None, ALL).unwrap();
        assert_eq!(s.capabilities.bounding, 0x00000000a80425fb);
        assert_eq!(s.capabilities.effective, s.capabilities.bounding);
        assert_eq!(s.capabilities.ambient, 0);
        assert!(s.masked_paths.contains(&"/proc/kcore".to_string()));
        assert!(s.readonly_paths.contains(&"/proc/sys".to_string()));
        assert!(!s.no_new_privs);
    }

    #[test]
    fn add_drop_all_and_privileged() {
        let ctx = |add: &[&str], drop: &[&str], privileged| LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                add_ambient_capabilities: vec![],
            }),
            privileged,
            no_new_privs: true,
            ..Default::default()
        };
        let s =
            SecuritySettings::from_cri(Some(&ctx(&["NET_ADMIN"], &["CHOWN"], false)), ALL).unwrap();
        assert_eq!(s.capabilities.bounding, (0xa80425fb | 1 << 12) & !1);
        assert!(s.no_new_privs);
        let s = SecuritySettings::from_cri(Some(&ctx(&["KILL"], &["ALL"], false)), ALL).unwrap();
        assert_eq!(s.capabilities.bounding, 1 << 5);
        let s = SecuritySettings::from_cri(Some(&ctx(&[], &[], true)), ALL & !(1 << 24)).unwrap();
        assert_eq!(s.capabilities.bounding, ALL & !(1 << 24));
        assert!(s.masked_paths.is_empty() && s.privileged);
        assert!(SecuritySettings::from_cri(Some(&ctx(&["BOGUS"], &[], false)), ALL).is_err());
    }
}
