//! AppArmor and SELinux requests. Berth loads no AppArmor profile and sets no SELinux
//! label, so a request that needs either is refused with a message saying why (the node
//! lacks the LSM, or Berth cannot apply it) instead of running the container unconfined.
//! What needs nothing passes: AppArmor `Unconfined`, `RuntimeDefault` where the node has no
//! AppArmor (as containerd does) and empty SELinux options.

use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{
    LinuxContainerSecurityContext, LinuxSandboxSecurityContext, SeLinuxOption, SecurityProfile,
};

use crate::error::{Error, Result};

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

fn check_apparmor(
    what: &str,
    profile: Option<&SecurityProfile>,
    deprecated: &str,
    host: HostLsm,
) -> Result<()> {
    match apparmor_wanted(profile, deprecated)? {
        AppArmor::Default | AppArmor::Unconfined => Ok(()),
        AppArmor::Localhost(name) => Err(Error::InvalidArgument(format!(
            "{what}: apparmor profile {name:?} cannot be applied: {}",
            if host.apparmor {
                "berth does not apply AppArmor profiles"
            } else {
                "AppArmor is not enabled on this node"
            }
        ))),
    }
}

fn check_selinux(what: &str, opts: Option<&SeLinuxOption>, host: HostLsm) -> Result<()> {
    let Some(o) = opts else { return Ok(()) };
    if [&o.user, &o.role, &o.r#type, &o.level]
        .iter()
        .all(|f| f.is_empty())
    {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "{what}: selinux label {}:{}:{}:{} cannot be applied: {}",
        o.user,
        o.role,
        o.r#type,
        o.level,
        if host.selinux {
            "berth does not set SELinux labels"
        } else {
            "SELinux is not enabled on this node"
        }
    )))
}

/// Checks a container's AppArmor and SELinux requests. A privileged container gets
/// neither, as the CRI says, so nothing it names is refused.
pub fn check_container(ctx: Option<&LinuxContainerSecurityContext>, host: HostLsm) -> Result<()> {
    let Some(ctx) = ctx.filter(|c| !c.privileged) else {
        return Ok(());
    };
    #[allow(deprecated)]
    let deprecated = ctx.apparmor_profile.as_str();
    check_apparmor("container", ctx.apparmor.as_ref(), deprecated, host)?;
    check_selinux("container", ctx.selinux_options.as_ref(), host)
}

/// Checks a pod's AppArmor and SELinux requests (kubelet repeats them per container).
pub fn check_pod(ctx: Option<&LinuxSandboxSecurityContext>, host: HostLsm) -> Result<()> {
    let Some(ctx) = ctx.filter(|c| !c.privileged) else {
        return Ok(());
    };
    check_apparmor("pod sandbox", ctx.apparmor.as_ref(), "", host)?;
    check_selinux("pod sandbox", ctx.selinux_options.as_ref(), host)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ] {
            check_container(Some(&ctx), NONE).unwrap();
        }
        check_container(None, NONE).unwrap();
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
            (
                container(None, "", Some(label.clone()), false),
                "spc_t",
                "SELinux is not enabled",
            ),
        ];
        for (ctx, names, why) in cases {
            let e = check_container(Some(&ctx), NONE).unwrap_err();
            assert_eq!(e.class(), crate::ErrorClass::InvalidArgument);
            let msg = e.to_string();
            assert!(msg.contains(names) && msg.contains(why), "{msg}");
            // A node that has the LSM still gets a refusal: Berth cannot apply it.
            let msg = check_container(Some(&ctx), BOTH).unwrap_err().to_string();
            assert!(msg.contains("berth does not"), "{msg}");
        }
        assert!(check_container(Some(&container(None, "bogus", None, false)), NONE).is_err());
        let pod = LinuxSandboxSecurityContext {
            selinux_options: Some(label.clone()),
            ..Default::default()
        };
        assert!(check_pod(Some(&pod), NONE).is_err());
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
}
