//! The security context as a container sees it (issue 8, in part): seccomp profiles
//! (RuntimeDefault, Localhost, Unconfined, none, and privileged ignoring them) and the
//! refusal of RunAsGroup without a user. What is checked is what the process inside
//! observes: `/proc/self/status` and the errors of denied system calls.

use berth_e2e::fixtures::{
    container_config, exec_sync, pod_config, pull, remove_pod, run_pod, start_container,
};
use berth_e2e::{Daemon, images};
use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::*;
use tonic::Code;

fn secured(
    name: &str,
    seccomp: Option<SecurityProfile>,
    add_caps: &[&str],
    privileged: bool,
) -> ContainerConfig {
    let mut c = container_config(name, &["sleep", "3600"]);
    c.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            seccomp,
            privileged,
            capabilities: Some(Capability {
                add_capabilities: add_caps.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

fn profile(t: ProfileType, localhost: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: t as i32,
        localhost_ref: localhost.into(),
    })
}

async fn seccomp_mode(d: &Daemon, id: &str) -> String {
    let (status, _, _) = exec_sync(d, id, &["grep", "Seccomp:", "/proc/self/status"]).await;
    status
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn seccomp_profiles_confine_what_they_say() {
    let d = Daemon::start().await.expect("daemon");
    pull(&d, images::BUSYBOX).await;
    let dir = d.dir().path().to_path_buf();
    let block_chmod = dir.join("block-chmod.json");
    std::fs::write(
        &block_chmod,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod","fchmodat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let block_hostname = dir.join("block-hostname.json");
    std::fs::write(
        &block_hostname,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let config = pod_config("seccomp", &dir.join("pod-logs"));
    let pod = run_pod(&d, &config).await;

    // RuntimeDefault: filtered, and namespaces cannot be made without CAP_SYS_ADMIN.
    let default = start_container(
        &d,
        &pod,
        &config,
        secured(
            "default",
            profile(ProfileType::RuntimeDefault, ""),
            &[],
            false,
        ),
    )
    .await;
    assert_eq!(seccomp_mode(&d, &default).await, "2");
    let (_, err, code) = exec_sync(&d, &default, &["unshare", "-u", "true"]).await;
    assert_ne!(code, 0, "unshare worked under RuntimeDefault");
    assert!(err.contains("Operation not permitted"), "{err}");
    let (out, _, code) = exec_sync(
        &d,
        &default,
        &["sh", "-c", "echo ok > /tmp/f && cat /tmp/f"],
    )
    .await;
    assert_eq!((out.as_str(), code), ("ok\n", 0), "ordinary work goes on");

    // No profile at all: unconfined, as kubelet's nil means.
    let none = start_container(&d, &pod, &config, secured("none", None, &[], false)).await;
    assert_eq!(seccomp_mode(&d, &none).await, "0");

    // A Localhost profile denying chmod.
    let chmod = start_container(
        &d,
        &pod,
        &config,
        secured(
            "chmod",
            profile(ProfileType::Localhost, &block_chmod.display().to_string()),
            &[],
            false,
        ),
    )
    .await;
    let (_, err, code) = exec_sync(&d, &chmod, &["chmod", "400", "/"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("Operation not permitted"), "{err}");

    // sethostname denied by the profile even with CAP_SYS_ADMIN; allowed when unconfined;
    // a privileged container ignores the profile.
    let blocked = start_container(
        &d,
        &pod,
        &config,
        secured(
            "blocked",
            profile(
                ProfileType::Localhost,
                &block_hostname.display().to_string(),
            ),
            &["SYS_ADMIN"],
            false,
        ),
    )
    .await;
    let (_, err, code) = exec_sync(&d, &blocked, &["hostname", "nope"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("Operation not permitted"), "{err}");
    let free = start_container(
        &d,
        &pod,
        &config,
        secured(
            "free",
            profile(ProfileType::Unconfined, ""),
            &["SYS_ADMIN"],
            false,
        ),
    )
    .await;
    let (_, err, code) = exec_sync(&d, &free, &["hostname", "changed"]).await;
    assert_eq!(code, 0, "{err}");
    let privileged = start_container(
        &d,
        &pod,
        &config,
        secured(
            "privileged",
            profile(
                ProfileType::Localhost,
                &block_hostname.display().to_string(),
            ),
            &[],
            true,
        ),
    )
    .await;
    assert_eq!(seccomp_mode(&d, &privileged).await, "0");

    // A profile that cannot be read is a clear error at CreateContainer.
    let err = d
        .runtime()
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(secured(
                "missing",
                profile(ProfileType::Localhost, "/no/such/profile.json"),
                &[],
                false,
            )),
            sandbox_config: Some(config.clone()),
        })
        .await
        .expect_err("a missing profile");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("/no/such/profile.json"),
        "{}",
        err.message()
    );
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn run_as_group_needs_a_user() {
    let d = Daemon::start().await.expect("daemon");
    pull(&d, images::BUSYBOX).await;
    let config = pod_config("grouponly", &d.dir().path().join("pod-logs"));
    let pod = run_pod(&d, &config).await;
    let mut c = container_config("c", &["sleep", "3600"]);
    c.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            run_as_group: Some(Int64Value { value: 1234 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = d
        .runtime()
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(c),
            sandbox_config: Some(config.clone()),
        })
        .await
        .expect_err("a group without a user");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    remove_pod(&d, &pod).await;
}
