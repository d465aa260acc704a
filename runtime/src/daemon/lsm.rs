//! AppArmor and SELinux requests. On a node with AppArmor, containers run confined as
//! containerd runs them: `RuntimeDefault` (and no request at all) means Berth's own
//! default profile, loaded at start ([`load_default_profile`]); `Localhost` names a
//! profile the node has loaded; `Unconfined` and privileged containers get none. The
//! profile is applied by the container's process itself, as its exec's transition
//! (`attr/apparmor/exec`), just before it execs. Where the node has no AppArmor, a
//! `Localhost` profile is refused and the rest needs nothing, as in containerd. SELinux
//! options are ignored where SELinux is not enabled, as containerd and CRI-O ignore them
//! (kubelet and Kubernetes' conformance specs send a level such as `s0` to every node);
//! where it is enabled Berth sets no label, so a label is refused with a message saying why.

use std::io::Write;
use std::process::{Command, Stdio};

use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{
    LinuxContainerSecurityContext, LinuxSandboxSecurityContext, SeLinuxOption, SecurityProfile,
};

use crate::error::{Error, Result};

/// The AppArmor profile `RuntimeDefault` stands for.
pub const DEFAULT_APPARMOR_PROFILE: &str = "berth-default";

/// The profiles the kernel has loaded, one `name (mode)` a line.
const LOADED_PROFILES: &str = "/sys/kernel/security/apparmor/profiles";

/// [`DEFAULT_APPARMOR_PROFILE`]'s policy: what containerd's and Docker's default profiles
/// keep from containers (mounts, the kernel's own /proc and /sys files), with everything
/// else left to the container's capabilities and seccomp profile.
pub const DEFAULT_APPARMOR_POLICY: &str = r#"# Berth's default AppArmor profile for containers (RuntimeDefault), loaded by berth.
#include <tunables/global>

profile berth-default flags=(attach_disconnected,mediate_deleted) {
  #include <abstractions/base>

  # What capabilities and seccomp allow stays allowed...
  capability,
  network,
  file,
  umount,

  # ...signals from the host (kubelet, berth) and within the container...
  signal (receive) peer=unconfined,
  signal (send,receive) peer=berth-default,
  ptrace (trace,read,tracedby,readby) peer=berth-default,

  # ...but no mounts, whatever capabilities were granted,
  deny mount,

  # no writes to the kernel's own /proc files (a process's /proc/<pid> stays writable),
  deny @{PROC}/* w,
  deny @{PROC}/{sys,irq,bus,fs,driver,tty,acpi,scsi,sysvipc,pressure}/** w,
  deny @{PROC}/{kcore,sysrq-trigger,kallsyms,kmsg} rwklx,

  # and sysfs read-only, without firmware, security and power-capping files.
  deny /sys/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
}
"#;

/// The Linux security modules the node runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostLsm {
    /// AppArmor is enabled.
    pub apparmor: bool,
    /// SELinux is enabled.
    pub selinux: bool,
}

impl HostLsm {
    /// Reads what the kernel reports: AppArmor's module parameter (as runc checks it) and
    /// whether selinuxfs is registered.
    pub fn detect() -> Self {
        let apparmor = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|s| s.trim_start().starts_with('Y'));
        let selinux = std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some("selinuxfs"))
        });
        HostLsm { apparmor, selinux }
    }
}

/// Whether the kernel has the AppArmor profile `name` loaded.
pub fn apparmor_profile_loaded(name: &str) -> bool {
    std::fs::read_to_string(LOADED_PROFILES).is_ok_and(|list| profile_listed(&list, name))
}

fn profile_listed(list: &str, name: &str) -> bool {
    list.lines()
        .any(|l| l.rsplit_once(" (").is_some_and(|(n, _)| n == name))
}

/// Why the default profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `apparmor_parser` could not be run.
    #[error("run apparmor_parser: {0}")]
    Run(std::io::Error),
    /// It ran and refused the policy.
    #[error("apparmor_parser failed: {0}")]
    Refused(String),
}

/// Loads [`DEFAULT_APPARMOR_POLICY`] unless the kernel has it already. The kernel takes
/// only compiled policy, so this runs Debian's and Ubuntu's `apparmor_parser` (the
/// `apparmor` package), once at start on AppArmor nodes and never on a pod's path.
pub fn load_default_profile() -> std::result::Result<(), LoadError> {
    if apparmor_profile_loaded(DEFAULT_APPARMOR_PROFILE) {
        return Ok(());
    }
    run_apparmor_parser(&["--replace", "--skip-cache"])
}

/// Runs `apparmor_parser args...` with [`DEFAULT_APPARMOR_POLICY`] on its stdin.
fn run_apparmor_parser(args: &[&str]) -> std::result::Result<(), LoadError> {
    // The daemon's PATH may lack the sbin directories.
    let program = ["/usr/sbin/apparmor_parser", "/sbin/apparmor_parser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("apparmor_parser");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(LoadError::Run)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(DEFAULT_APPARMOR_POLICY.as_bytes())
            .map_err(LoadError::Run)?;
    }
    let out = child.wait_with_output().map_err(LoadError::Run)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LoadError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// What an AppArmor request asks for.
#[derive(Debug, PartialEq, Eq)]
enum AppArmor {
    /// Nothing named, or the runtime's default.
    Default,
    /// No profile.
    Unconfined,
    /// A profile loaded on the node, by name.
    Localhost(String),
}

fn apparmor_wanted(profile: Option<&SecurityProfile>, deprecated: &str) -> Result<AppArmor> {
    if let Some(p) = profile {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(AppArmor::Default),
            Ok(ProfileType::Unconfined) => Ok(AppArmor::Unconfined),
            Ok(ProfileType::Localhost) => Ok(AppArmor::Localhost(p.localhost_ref.clone())),
            Err(_) => Err(Error::InvalidArgument(format!(
                "unknown apparmor profile type {}",
                p.profile_type
            ))),
        };
    }
    match deprecated {
        "" | "runtime/default" => Ok(AppArmor::Default),
        "unconfined" => Ok(AppArmor::Unconfined),
        other => match other.strip_prefix("localhost/") {
            Some(name) => Ok(AppArmor::Localhost(name.to_owned())),
            None => Err(Error::InvalidArgument(format!(
                "unknown apparmor profile {other:?}"
            ))),
        },
    }
}

/// The AppArmor profile a request comes to on this node (`None`: unconfined), or why it
/// cannot be had. `loaded` tells whether the kernel has a profile.
fn check_apparmor(
    what: &str,
    profile: Option<&SecurityProfile>,
    deprecated: &str,
    host: HostLsm,
    loaded: &dyn Fn(&str) -> bool,
) -> Result<Option<String>> {
    let wanted = apparmor_wanted(profile, deprecated)?;
    if !host.apparmor {
        return match wanted {
            AppArmor::Default | AppArmor::Unconfined => Ok(None),
            AppArmor::Localhost(name) => Err(Error::InvalidArgument(format!(
                "{what}: apparmor profile {name:?} cannot be applied: AppArmor is not enabled \
                 on this node"
            ))),
        };
    }
    match wanted {
        AppArmor::Unconfined => Ok(None),
        AppArmor::Default if loaded(DEFAULT_APPARMOR_PROFILE) => {
            Ok(Some(DEFAULT_APPARMOR_PROFILE.to_owned()))
        }
        AppArmor::Default => Err(Error::FailedPrecondition(format!(
            "{what}: the default apparmor profile {DEFAULT_APPARMOR_PROFILE:?} is not loaded \
             (berth loads it at start with apparmor_parser; its log says why it could not)"
        ))),
        AppArmor::Localhost(name) if loaded(&name) => Ok(Some(name)),
        AppArmor::Localhost(name) => Err(Error::InvalidArgument(format!(
            "{what}: apparmor profile {name:?} is not loaded on this node"
        ))),
    }
}

fn check_selinux(what: &str, opts: Option<&SeLinuxOption>, host: HostLsm) -> Result<()> {
    let Some(o) = opts else { return Ok(()) };
    // Without SELinux there is no label to apply and nothing it would protect (DESIGN.md
    // settled question 14).
    if !host.selinux
        || [&o.user, &o.role, &o.r#type, &o.level]
            .iter()
            .all(|f| f.is_empty())
    {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "{what}: selinux label {}:{}:{}:{} cannot be applied: berth does not set SELinux labels",
        o.user, o.role, o.r#type, o.level,
    )))
}

/// Checks a container's AppArmor and SELinux requests; returns the AppArmor profile to
/// run it under. A privileged container gets neither, as the CRI says, so nothing it
/// names is refused.
pub fn check_container(
    ctx: Option<&LinuxContainerSecurityContext>,
    host: HostLsm,
) -> Result<Option<String>> {
    check_container_with(ctx, host, &apparmor_profile_loaded)
}

fn check_container_with(
    ctx: Option<&LinuxContainerSecurityContext>,
    host: HostLsm,
    loaded: &dyn Fn(&str) -> bool,
) -> Result<Option<String>> {
    let default = LinuxContainerSecurityContext::default();
    let ctx = ctx.unwrap_or(&default);
    if ctx.privileged {
        return Ok(None);
    }
    #[allow(deprecated)]
    let deprecated = ctx.apparmor_profile.as_str();
    let profile = check_apparmor("container", ctx.apparmor.as_ref(), deprecated, host, loaded)?;
    check_selinux("container", ctx.selinux_options.as_ref(), host)?;
    Ok(profile)
}

/// Checks a pod's AppArmor and SELinux requests (kubelet repeats them per container, which
/// is where a profile applies: the pod itself runs no process of the image).
pub fn check_pod(ctx: Option<&LinuxSandboxSecurityContext>, host: HostLsm) -> Result<()> {
    check_pod_with(ctx, host, &apparmor_profile_loaded)
}

fn check_pod_with(
    ctx: Option<&LinuxSandboxSecurityContext>,
    host: HostLsm,
    loaded: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let Some(ctx) = ctx.filter(|c| !c.privileged) else {
        return Ok(());
    };
    // RuntimeDefault is checked where it applies, per container.
    let any = |_: &str| true;
    let loaded: &dyn Fn(&str) -> bool = if ctx
        .apparmor
        .as_ref()
        .is_some_and(|p| p.profile_type == ProfileType::Localhost as i32)
    {
        loaded
    } else {
        &any
    };
    check_apparmor("pod sandbox", ctx.apparmor.as_ref(), "", host, loaded)?;
    check_selinux("pod sandbox", ctx.selinux_options.as_ref(), host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Classify;

    const NONE: HostLsm = HostLsm {
        apparmor: false,
        selinux: false,
    };
    const BOTH: HostLsm = HostLsm {
        apparmor: true,
        selinux: true,
    };

    fn profile(t: ProfileType, name: &str) -> Option<SecurityProfile> {
        Some(SecurityProfile {
            profile_type: t as i32,
            localhost_ref: name.into(),
        })
    }

    #[allow(deprecated)]
    fn container(
        apparmor: Option<SecurityProfile>,
        deprecated: &str,
        selinux: Option<SeLinuxOption>,
        privileged: bool,
    ) -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext {
            apparmor,
            apparmor_profile: deprecated.into(),
            selinux_options: selinux,
            privileged,
            ..Default::default()
        }
    }

    #[test]
    fn what_needs_no_lsm_passes() {
        for ctx in [
            container(None, "", None, false),
            container(profile(ProfileType::RuntimeDefault, ""), "", None, false),
            container(profile(ProfileType::Unconfined, ""), "", None, false),
            container(None, "runtime/default", None, false),
            container(None, "unconfined", None, false),
            container(None, "", Some(SeLinuxOption::default()), false),
            // Kubernetes' EmptyDir conformance specs send level s0 to every node.
            container(
                None,
                "",
                Some(SeLinuxOption {
                    level: "s0".into(),
                    ..Default::default()
                }),
                false,
            ),
        ] {
            assert_eq!(check_container(Some(&ctx), NONE).unwrap(), None);
        }
        assert_eq!(check_container(None, NONE).unwrap(), None);
        check_pod(Some(&LinuxSandboxSecurityContext::default()), NONE).unwrap();
    }

    #[test]
    fn what_needs_an_lsm_is_refused_with_the_reason() {
        let label = SeLinuxOption {
            r#type: "spc_t".into(),
            level: "s0:c1,c2".into(),
            ..Default::default()
        };
        let cases = [
            (
                container(
                    profile(ProfileType::Localhost, "k8s-nginx"),
                    "",
                    None,
                    false,
                ),
                "k8s-nginx",
                "AppArmor is not enabled",
            ),
            (
                container(None, "localhost/k8s-nginx", None, false),
                "k8s-nginx",
                "AppArmor is not enabled",
            ),
        ];
        for (ctx, names, why) in cases {
            let e = check_container(Some(&ctx), NONE).unwrap_err();
            assert_eq!(e.class(), crate::Class::InvalidArgument);
            let msg = e.to_string();
            assert!(msg.contains(names) && msg.contains(why), "{msg}");
            // A node that has the LSM but not the profile still refuses.
            let msg = check_container_with(Some(&ctx), BOTH, &|_| false)
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("berth does not") || msg.contains("is not loaded"),
                "{msg}"
            );
        }
        assert!(check_container(Some(&container(None, "bogus", None, false)), NONE).is_err());
        // An SELinux label is refused where SELinux runs (Berth sets none), ignored elsewhere.
        let selinux = HostLsm {
            apparmor: false,
            selinux: true,
        };
        let labelled = container(None, "", Some(label.clone()), false);
        let msg = check_container(Some(&labelled), selinux).unwrap_err();
        assert_eq!(msg.class(), crate::Class::InvalidArgument);
        assert!(msg.to_string().contains("spc_t"), "{msg}");
        assert_eq!(check_container(Some(&labelled), NONE).unwrap(), None);
        let pod = LinuxSandboxSecurityContext {
            selinux_options: Some(label.clone()),
            ..Default::default()
        };
        assert!(check_pod(Some(&pod), selinux).is_err());
        check_pod(Some(&pod), NONE).unwrap();
        let pod = LinuxSandboxSecurityContext {
            apparmor: profile(ProfileType::Localhost, "p"),
            ..Default::default()
        };
        assert!(check_pod(Some(&pod), NONE).is_err());
    }

    #[test]
    fn privileged_containers_get_no_lsm_so_nothing_is_refused() {
        let ctx = container(
            profile(ProfileType::Localhost, "p"),
            "",
            Some(SeLinuxOption {
                r#type: "spc_t".into(),
                ..Default::default()
            }),
            true,
        );
        check_container(Some(&ctx), NONE).unwrap();
    }

    #[test]
    fn on_an_apparmor_node_containers_get_their_profile() {
        let host = HostLsm {
            apparmor: true,
            selinux: false,
        };
        let loaded = |n: &str| n == DEFAULT_APPARMOR_PROFILE || n == "k8s-nginx";
        let cases = [
            (
                container(None, "", None, false),
                Some(DEFAULT_APPARMOR_PROFILE),
            ),
            (
                container(profile(ProfileType::RuntimeDefault, ""), "", None, false),
                Some(DEFAULT_APPARMOR_PROFILE),
            ),
            (
                container(None, "runtime/default", None, false),
                Some(DEFAULT_APPARMOR_PROFILE),
            ),
            (
                container(profile(ProfileType::Unconfined, ""), "", None, false),
                None,
            ),
            (container(None, "unconfined", None, false), None),
            (
                container(
                    profile(ProfileType::Localhost, "k8s-nginx"),
                    "",
                    None,
                    false,
                ),
                Some("k8s-nginx"),
            ),
            (
                container(None, "localhost/k8s-nginx", None, false),
                Some("k8s-nginx"),
            ),
            // Privileged: unconfined, whatever it names.
            (
                container(profile(ProfileType::Localhost, "other"), "", None, true),
                None,
            ),
        ];
        for (ctx, want) in cases {
            let got = check_container_with(Some(&ctx), host, &loaded).unwrap();
            assert_eq!(got.as_deref(), want, "{ctx:?}");
        }
        let e = check_container_with(
            Some(&container(
                profile(ProfileType::Localhost, "missing"),
                "",
                None,
                false,
            )),
            host,
            &loaded,
        )
        .unwrap_err();
        assert_eq!(e.class(), crate::Class::InvalidArgument);
        assert!(e.to_string().contains("\"missing\" is not loaded"), "{e}");
        // The default profile failed to load: a node problem, said as such.
        let e = check_container_with(None, host, &|_| false).unwrap_err();
        assert_eq!(e.class(), crate::Class::FailedPrecondition);
        assert!(e.to_string().contains("apparmor_parser"), "{e}");
        // A pod names a Localhost profile the node lacks.
        let pod = LinuxSandboxSecurityContext {
            apparmor: profile(ProfileType::Localhost, "missing"),
            ..Default::default()
        };
        assert!(check_pod_with(Some(&pod), host, &loaded).is_err());
        let pod = LinuxSandboxSecurityContext {
            apparmor: profile(ProfileType::RuntimeDefault, ""),
            ..Default::default()
        };
        check_pod_with(Some(&pod), host, &|_| false).unwrap();
    }

    #[test]
    fn loaded_profiles_are_read_by_name() {
        let list = "berth-default (enforce)\nk8s nginx (complain)\n/usr/bin/man (enforce)\n";
        assert!(profile_listed(list, "berth-default"));
        assert!(profile_listed(list, "k8s nginx"));
        assert!(profile_listed(list, "/usr/bin/man"));
        assert!(!profile_listed(list, "berth"));
    }

    /// The policy compiles with Debian's `apparmor_parser` (the test suite installs the
    /// `apparmor` package). Nothing is loaded: `--skip-kernel-load`.
    #[test]
    fn the_default_policy_compiles() {
        assert!(
            std::path::Path::new("/etc/apparmor.d/tunables/global").exists(),
            "install Debian's apparmor package (scripts/test.sh does)"
        );
        run_apparmor_parser(&["--skip-kernel-load", "--skip-cache"]).unwrap();
    }
}
