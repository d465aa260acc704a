//! The security context as a container sees it: seccomp profiles, capabilities,
//! users and groups with both supplemental group policies, read-only and masked paths,
//! recursive read-only binds, pod sysctls, AppArmor/SELinux refusals, user namespaces and
//! privileged pods (the known runtime escapes are in `escapes.rs`). What is checked is what
//! the process inside observes, or the error kubelet gets.
use berth_e2e::fixtures::{
    Tmpfs, assert_refused, bind, busybox_daemon, busybox_pod, container_config, container_status,
    create_refused, default_handler, exec_ok, exec_sync, host_dir, image_spec, image_volume,
    linux_security, list_containers, list_pods, log_dir, new_pod, pod_config, pod_status, pull,
    remove_pod, run_pod, run_pod_refused, runtime_status, security_context, start, start_container,
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
    c.linux = Some(linux_security(LinuxContainerSecurityContext {
        seccomp,
        privileged,
        capabilities: Some(Capability {
            add_capabilities: add_caps.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }));
    c
}

/// The Linux part of a pod that may run privileged containers.
fn privileged_pod() -> LinuxPodSandboxConfig {
    LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn profile(t: ProfileType, localhost: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: t as i32,
        localhost_ref: localhost.into(),
    })
}

/// Runs `cmd` in container `id`, which must fail with EPERM.
async fn assert_eperm(d: &Daemon, id: &str, cmd: &[&str]) {
    let (_, err, code) = exec_sync(d, id, cmd).await;
    assert_ne!(code, 0, "{cmd:?} worked");
    assert!(err.contains("Operation not permitted"), "{cmd:?}: {err}");
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
    let d = busybox_daemon().await;
    let dir = d.dir().path().to_path_buf();
    // A profile that refuses `calls` with EPERM, written to `name`; returns its path.
    let refusing = |name: &str, calls: &str| {
        let path = dir.join(name);
        let json = format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":[{calls}],"action":"SCMP_ACT_ERRNO"}}]}}"#
        );
        std::fs::write(&path, json).unwrap();
        path.display().to_string()
    };
    let block_chmod = refusing("block-chmod.json", r#""chmod","fchmodat""#);
    let block_hostname = refusing("block-hostname.json", r#""sethostname""#);
    let mut config = pod_config("seccomp", &dir.join("pod-logs"));
    config.linux = Some(privileged_pod());
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
    assert_eperm(&d, &default, &["unshare", "-u", "true"]).await;
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
            profile(ProfileType::Localhost, &block_chmod),
            &[],
            false,
        ),
    )
    .await;
    assert_eperm(&d, &chmod, &["chmod", "400", "/"]).await;

    // sethostname denied by the profile even with CAP_SYS_ADMIN; allowed when unconfined;
    // a privileged container ignores the profile.
    let blocked = start_container(
        &d,
        &pod,
        &config,
        secured(
            "blocked",
            profile(ProfileType::Localhost, &block_hostname),
            &["SYS_ADMIN"],
            false,
        ),
    )
    .await;
    assert_eperm(&d, &blocked, &["hostname", "nope"]).await;
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
            profile(ProfileType::Localhost, &block_hostname),
            &[],
            true,
        ),
    )
    .await;
    assert_eq!(seccomp_mode(&d, &privileged).await, "0");

    // A profile that cannot be read is a clear error at CreateContainer.
    let err = create_refused(
        &d,
        &pod,
        &config,
        secured(
            "missing",
            profile(ProfileType::Localhost, "/no/such/profile.json"),
            &[],
            false,
        ),
    )
    .await;
    assert_refused(&err, Code::InvalidArgument, "/no/such/profile.json");
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn run_as_group_needs_a_user() {
    let (d, config, pod) = busybox_pod("grouponly").await;
    let mut c = container_config("c", &["sleep", "3600"]);
    c.linux = Some(linux_security(LinuxContainerSecurityContext {
        run_as_group: Some(Int64Value { value: 1234 }),
        ..Default::default()
    }));
    let err = create_refused(&d, &pod, &config, c).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    remove_pod(&d, &pod).await;
}

/// The value of `field` in the container's `/proc/self/status`.
async fn status_field(d: &Daemon, id: &str, field: &str) -> String {
    let (out, _, _) = exec_sync(d, id, &["grep", &format!("^{field}:"), "/proc/self/status"]).await;
    out.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn capabilities_users_read_only_and_masked_paths() {
    let d = busybox_daemon().await;
    let mut config = pod_config("privs", &log_dir(&d));
    config.linux = Some(LinuxPodSandboxConfig {
        sysctls: [(
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "80".to_string(),
        )]
        .into_iter()
        .collect(),
        ..privileged_pod()
    });
    let pod = run_pod(&d, &config).await;
    let with = |name: &str, sc: LinuxContainerSecurityContext| {
        let mut c = container_config(name, &["sleep", "3600"]);
        c.linux = Some(linux_security(sc));
        c
    };

    // containerd's default set: 0x00000000a80425fb.
    let plain = start_container(&d, &pod, &config, with("plain", Default::default())).await;
    assert_eq!(status_field(&d, &plain, "CapEff").await, "00000000a80425fb");
    assert_eq!(status_field(&d, &plain, "NoNewPrivs").await, "0");
    // Masked and read-only paths.
    // (This kernel has no /proc/kcore; /proc/timer_list is on the same list.)
    let (size, err, code) = exec_sync(&d, &plain, &["sh", "-c", "wc -c < /proc/timer_list"]).await;
    assert_eq!(
        size.trim(),
        "0",
        "/proc/timer_list is masked ({code}: {err})"
    );
    let (_, err, code) =
        exec_sync(&d, &plain, &["sh", "-c", "echo 1 > /proc/sys/kernel/panic"]).await;
    assert_ne!(code, 0, "/proc/sys is read-only");
    assert!(err.contains("Read-only file system"), "{err}");
    // The pod's sysctl, seen inside.
    let (v, _, _) = exec_sync(
        &d,
        &plain,
        &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
    )
    .await;
    assert_eq!(v.trim(), "80");

    // Add and drop, a user with groups, no_new_privs, a read-only rootfs.
    let tight = start_container(
        &d,
        &pod,
        &config,
        with(
            "tight",
            LinuxContainerSecurityContext {
                capabilities: Some(Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    drop_capabilities: vec!["ALL".into()],
                    ..Default::default()
                }),
                run_as_user: Some(Int64Value { value: 1000 }),
                run_as_group: Some(Int64Value { value: 3000 }),
                supplemental_groups: vec![4000],
                no_new_privs: true,
                readonly_rootfs: true,
                ..Default::default()
            },
        ),
    )
    .await;
    // Only NET_ADMIN (bit 12) is bounded; a non-root user has no effective set.
    assert_eq!(status_field(&d, &tight, "CapBnd").await, "0000000000001000");
    assert_eq!(status_field(&d, &tight, "NoNewPrivs").await, "1");
    let (ids, _, _) = exec_sync(&d, &tight, &["sh", "-c", "id -u; id -g; id -G"]).await;
    let lines: Vec<&str> = ids.lines().collect();
    assert_eq!(lines[0], "1000");
    assert_eq!(lines[1], "3000");
    assert!(lines[2].split_whitespace().any(|g| g == "4000"), "{ids}");
    let (_, err, code) = exec_sync(&d, &tight, &["touch", "/new-file"]).await;
    assert_ne!(code, 0, "a read-only rootfs took a write");
    assert!(err.contains("Read-only file system"), "{err}");

    // Privileged: the daemon's own bounding set, and writable /proc/sys paths unmasked.
    let own_bounding = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("CapBnd:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_string();
    let privileged = start_container(
        &d,
        &pod,
        &config,
        with(
            "privileged",
            LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            },
        ),
    )
    .await;
    assert_eq!(status_field(&d, &privileged, "CapEff").await, own_bounding);
    let (size, _, _) = exec_sync(&d, &privileged, &["sh", "-c", "wc -c < /proc/timer_list"]).await;
    assert_ne!(
        size.trim(),
        "0",
        "privileged containers see /proc/timer_list unmasked"
    );
    remove_pod(&d, &pod).await;
}

/// A pod config with `sysctls`, on the node's network when `host_network`.
fn pod_with_sysctls(
    d: &Daemon,
    name: &str,
    sysctls: &[(&str, &str)],
    host_network: bool,
) -> PodSandboxConfig {
    let mut config = pod_config(name, &log_dir(d));
    config.linux = Some(LinuxPodSandboxConfig {
        sysctls: sysctls
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: if host_network {
                    NamespaceMode::Node as i32
                } else {
                    NamespaceMode::Pod as i32
                },
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

#[tokio::test]
async fn only_namespaced_sysctls_reach_a_pod() {
    let d = busybox_daemon().await;
    let host_shmmax = std::fs::read_to_string("/proc/sys/kernel/shmmax").unwrap();
    let config = pod_with_sysctls(
        &d,
        "sysctls",
        &[
            ("kernel.shmmax", "65536000"),
            ("net.ipv4.ip_unprivileged_port_start", "1000"),
        ],
        false,
    );
    let pod = run_pod(&d, &config).await;
    let c = start(&d, &pod, &config, "c", &["sleep", "3600"]).await;
    let (v, _, _) = exec_sync(
        &d,
        &c,
        &[
            "cat",
            "/proc/sys/kernel/shmmax",
            "/proc/sys/net/ipv4/ip_unprivileged_port_start",
        ],
    )
    .await;
    assert_eq!(v, "65536000\n1000\n");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/shmmax").unwrap(),
        host_shmmax,
        "the node's value is untouched"
    );
    remove_pod(&d, &pod).await;

    // Node-wide sysctls, and namespaced ones in a namespace the pod shares with the node.
    // Each asks for the value the node has, so that even a runtime that took it would not
    // change the machine under the other tests.
    for (name, sysctl, host_network) in [
        ("swappiness", "vm.swappiness", false),
        ("pidmax", "kernel.pid_max", false),
        ("hostnet", "net.ipv4.ip_unprivileged_port_start", true),
    ] {
        let file = format!("/proc/sys/{}", sysctl.replace('.', "/"));
        let value = std::fs::read_to_string(&file).unwrap();
        let config = pod_with_sysctls(&d, name, &[(sysctl, value.trim())], host_network);
        let err = run_pod_refused(&d, &config).await;
        assert_refused(&err, Code::InvalidArgument, sysctl);
    }
    let pods = list_pods(&d).await;
    assert!(pods.is_empty(), "a refused pod was left: {pods:?}");
}

/// Whether the node runs SELinux (selinuxfs registered), as the daemon decides it.
fn selinux_enabled() -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| {
        s.lines()
            .any(|l| l.split_whitespace().last() == Some("selinuxfs"))
    })
}

#[tokio::test]
async fn apparmor_and_selinux_requests_berth_cannot_apply_are_refused() {
    let d = busybox_daemon().await;
    let logs = log_dir(&d);

    // A pod asking for an SELinux label: on a node without SELinux the options are ignored
    // and the pod runs, as with containerd and CRI-O (kubelet sends level s0 for EmptyDir
    // pods in Kubernetes' conformance specs); where SELinux runs, it is refused before
    // anything runs, since Berth sets no label.
    let mut labelled = pod_config("labelled", &logs);
    labelled.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            selinux_options: Some(SeLinuxOption {
                r#type: "container_t".into(),
                level: "s0:c1,c2".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    if selinux_enabled() {
        let err = run_pod_refused(&d, &labelled).await;
        assert_refused(&err, Code::InvalidArgument, "container_t");
    } else {
        let pod = run_pod(&d, &labelled).await;
        let mut c = container_config("s0", &["sleep", "3600"]);
        c.linux = Some(linux_security(LinuxContainerSecurityContext {
            selinux_options: Some(SeLinuxOption {
                level: "s0".into(),
                ..Default::default()
            }),
            ..Default::default()
        }));
        let id = start_container(&d, &pod, &labelled, c).await;
        let (out, _, code) = exec_sync(&d, &id, &["echo", "running"]).await;
        assert_eq!((out.as_str(), code), ("running\n", 0));
        remove_pod(&d, &pod).await;
    }

    let config = pod_config("lsm", &logs);
    let pod = run_pod(&d, &config).await;
    let with = |name: &str, sc: LinuxContainerSecurityContext| {
        let mut c = container_config(name, &["sleep", "3600"]);
        c.linux = Some(linux_security(sc));
        c
    };
    // What needs no LSM runs: AppArmor Unconfined and RuntimeDefault, empty SELinux options.
    for (name, t) in [
        ("unconfined", ProfileType::Unconfined),
        ("default", ProfileType::RuntimeDefault),
    ] {
        let id = start_container(
            &d,
            &pod,
            &config,
            with(
                name,
                LinuxContainerSecurityContext {
                    apparmor: profile(t, ""),
                    selinux_options: Some(SeLinuxOption::default()),
                    ..Default::default()
                },
            ),
        )
        .await;
        let (out, _, code) = exec_sync(&d, &id, &["echo", "running"]).await;
        assert_eq!((out.as_str(), code), ("running\n", 0));
    }
    // A named AppArmor profile, or an SELinux label, is refused at CreateContainer.
    for (name, sc, named) in [(
        "apparmor",
        LinuxContainerSecurityContext {
            apparmor: profile(ProfileType::Localhost, "k8s-apparmor-example"),
            ..Default::default()
        },
        "k8s-apparmor-example",
    )] {
        let err = create_refused(&d, &pod, &config, with(name, sc)).await;
        assert_refused(&err, Code::InvalidArgument, named);
    }
    let label = LinuxContainerSecurityContext {
        selinux_options: Some(SeLinuxOption {
            r#type: "spc_t".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut running = 2;
    if selinux_enabled() {
        let err = create_refused(&d, &pod, &config, with("selinux", label)).await;
        assert_refused(&err, Code::InvalidArgument, "spc_t");
    } else {
        start_container(&d, &pod, &config, with("selinux", label)).await;
        running += 1;
    }
    let listed = list_containers(&d).await;
    assert_eq!(
        listed.len(),
        running,
        "refused containers were left: {listed:?}"
    );
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn a_recursive_read_only_bind_keeps_its_submounts_read_only() {
    let d = busybox_daemon().await;
    let default = default_handler(&d).await;
    assert!(
        default
            .features
            .as_ref()
            .is_some_and(|f| f.recursive_read_only_mounts),
        "{default:?}"
    );

    let src = d.dir().path().join("tree");
    std::fs::create_dir_all(&src).unwrap();
    let _sub = Tmpfs::mount(&src.join("sub"), "size=1m");
    let (config, pod) = new_pod(&d, "rro").await;
    let mut c = container_config("c", &["sleep", "3600"]);
    let bind = |path: &str, recursive: bool| Mount {
        container_path: path.into(),
        host_path: src.display().to_string(),
        readonly: true,
        recursive_read_only: recursive,
        propagation: MountPropagation::PropagationPrivate as i32,
        ..Default::default()
    };
    c.mounts = vec![bind("/rro", true), bind("/ro", false)];
    let c = start_container(&d, &pod, &config, c).await;
    for path in ["/rro/x", "/rro/sub/x", "/ro/x"] {
        let (_, err, code) = exec_sync(&d, &c, &["touch", path]).await;
        assert_ne!(code, 0, "{path} took a write");
        assert!(err.contains("Read-only file system"), "{path}: {err}");
    }
    // Without recursive_read_only the submount stays writable, as in every runtime.
    let (_, err, code) = exec_sync(&d, &c, &["touch", "/ro/sub/x"]).await;
    assert_eq!(code, 0, "{err}");
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn supplemental_groups_policies_merge_or_keep_strictly_to_the_request() {
    use images::configured::{SUPPLEMENTARY_GID, UID};
    let d = Daemon::start().await.expect("daemon");
    pull(&d, images::CONFIGURED).await;
    let status = runtime_status(&d).await;
    assert!(
        status
            .features
            .is_some_and(|f| f.supplemental_groups_policy),
        "the feature is reported"
    );
    let (config, pod) = new_pod(&d, "groups").await;
    // The image's user is a member of its group `extra` (SUPPLEMENTARY_GID) in /etc/group.
    for (name, policy, has_image_group) in [
        ("merge", SupplementalGroupsPolicy::Merge, true),
        ("strict", SupplementalGroupsPolicy::Strict, false),
    ] {
        let mut c = container_config(name, &["sleep", "3600"]);
        c.image = image_spec(images::CONFIGURED);
        c.linux = Some(linux_security(LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value {
                value: i64::from(UID),
            }),
            supplemental_groups: vec![4000],
            supplemental_groups_policy: policy as i32,
            ..Default::default()
        }));
        let id = start_container(&d, &pod, &config, c).await;
        let (groups, _, code) = exec_sync(&d, &id, &["id", "-G"]).await;
        assert_eq!(code, 0);
        let groups: Vec<u32> = groups
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect();
        assert!(groups.contains(&4000), "{name}: {groups:?}");
        assert_eq!(
            groups.contains(&SUPPLEMENTARY_GID),
            has_image_group,
            "{name}: {groups:?}"
        );
        let reported = container_status(&d, &id)
            .await
            .user
            .and_then(|u| u.linux)
            .expect("ContainerStatus.user");
        assert_eq!(
            reported
                .supplemental_groups
                .contains(&i64::from(SUPPLEMENTARY_GID)),
            has_image_group,
            "{name}: {reported:?}"
        );
    }
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn privileged_containers_need_a_privileged_pod() {
    let (d, config, pod) = busybox_pod("unprivileged").await;
    let err = create_refused(&d, &pod, &config, secured("privileged", None, &[], true)).await;
    assert_refused(&err, Code::InvalidArgument, "privileged");
    // The same pod still takes an ordinary container.
    let plain = start_container(&d, &pod, &config, secured("plain", None, &[], false)).await;
    assert_eq!(status_field(&d, &plain, "CapEff").await, "00000000a80425fb");
    remove_pod(&d, &pod).await;
}

/// The user namespace kubelet asks for: container ids from 0 map to host ids from `host_id`.
fn userns(mode: NamespaceMode, host_id: u32, length: u32) -> UserNamespace {
    let mapping = vec![IdMapping {
        host_id,
        container_id: 0,
        length,
    }];
    UserNamespace {
        mode: mode as i32,
        uids: if mode == NamespaceMode::Node {
            vec![]
        } else {
            mapping.clone()
        },
        gids: if mode == NamespaceMode::Node {
            vec![]
        } else {
            mapping
        },
    }
}

fn pod_with_userns(name: &str, d: &Daemon, u: UserNamespace) -> PodSandboxConfig {
    let mut config = pod_config(name, &log_dir(d));
    config.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                userns_options: Some(u),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// A container as kubelet sends it in a user-namespaced pod: the pod's namespace options.
fn container_in_userns(name: &str, u: &UserNamespace, add_caps: &[&str]) -> ContainerConfig {
    let mut c = secured(name, None, add_caps, false);
    let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    sc.namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Container as i32,
        userns_options: Some(u.clone()),
        ..Default::default()
    });
    c
}

async fn out(d: &Daemon, id: &str, cmd: &[&str]) -> String {
    let stdout = exec_ok(d, id, cmd).await;
    stdout.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn a_user_namespaced_pod_runs_as_an_unprivileged_host_range() {
    let mut d = Daemon::start().await.expect("daemon");
    let default = default_handler(&d).await;
    assert!(
        default.features.is_some_and(|f| f.user_namespaces),
        "kubelet is told: {default:?}"
    );
    pull(&d, images::BUSYBOX).await;
    let u = userns(NamespaceMode::Pod, 100000, 65536);
    let mut config = pod_with_userns("userns", &d, u.clone());
    // The runtime still sets the pod's sysctls in namespaces the node's root does not own.
    config.linux.as_mut().unwrap().sysctls = [(
        "net.ipv4.ip_unprivileged_port_start".to_string(),
        "80".to_string(),
    )]
    .into_iter()
    .collect();
    let pod = run_pod(&d, &config).await;
    // PodSandboxStatus reports the namespace back, as containerd does.
    let pod_status = pod_status(&d, &pod).await;
    // The daemon wired the pod's network namespace from the node's user namespace.
    let pod_ip = pod_status.network.clone().unwrap_or_default().ip;
    assert!(!pod_ip.is_empty(), "{pod_status:?}");
    let reported = pod_status
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .and_then(|o| o.userns_options);
    assert_eq!(reported.as_ref(), Some(&u));

    // A volume as kubelet makes them: a directory and a file the node's root owns.
    let vol = host_dir(&d, "userns-vol");
    std::fs::write(vol.join("from-node"), b"x").unwrap();
    pull(&d, images::CONFIGURED).await;
    let mut c = container_in_userns("c", &u, &["NET_ADMIN"]);
    c.mounts = vec![
        bind("/vol", &vol),
        image_volume("/imgvol", images::CONFIGURED),
    ];
    let c = start_container(&d, &pod, &config, c).await;

    // The mapping, seen by the container's first process and by an exec.
    for who in ["/proc/1", "/proc/self"] {
        let uid_map = format!("{who}/uid_map");
        let gid_map = format!("{who}/gid_map");
        assert_eq!(out(&d, &c, &["cat", &uid_map]).await, "0 100000 65536");
        assert_eq!(out(&d, &c, &["cat", &gid_map]).await, "0 100000 65536");
    }
    assert_eq!(out(&d, &c, &["id", "-u"]).await, "0");
    assert_eq!(
        out(
            &d,
            &c,
            &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]
        )
        .await,
        "80"
    );
    assert_eq!(out(&d, &c, &["id", "-g"]).await, "0");
    // The image's files, its root and the runtime's files belong to the container's root.
    for path in [
        "/",
        "/etc/passwd",
        "/bin",
        "/etc/hostname",
        "/etc/resolv.conf",
        "/dev",
        "/dev/shm",
        "/vol",
        "/vol/from-node",
        "/imgvol",
        "/imgvol/etc/passwd",
    ] {
        assert_eq!(
            out(&d, &c, &["stat", "-c", "%u:%g", path]).await,
            "0:0",
            "owner of {path}"
        );
    }
    // What it writes lands with the mapped ids in its upper dir, and with the volume's
    // own ids in the volume (an idmapped bind maps them back).
    out(
        &d,
        &c,
        &["sh", "-c", "echo hi > /created && echo hi > /vol/from-pod"],
    )
    .await;
    out(&d, &c, &["touch", "/dev/shm/x", "/vol/from-node"]).await;
    use std::os::unix::fs::MetadataExt;
    let upper = d.dir().root().join("containers").join(&c).join("upper");
    let created = std::fs::metadata(upper.join("created")).expect("the file in the upper dir");
    assert_eq!((created.uid(), created.gid()), (100000, 100000));
    // A copied-up image file keeps its mapped owner.
    out(&d, &c, &["sh", "-c", "echo x >> /etc/passwd"]).await;
    let copied = std::fs::metadata(upper.join("etc/passwd")).unwrap();
    assert_eq!((copied.uid(), copied.gid()), (100000, 100000));
    let from_pod = std::fs::metadata(vol.join("from-pod")).unwrap();
    assert_eq!((from_pod.uid(), from_pod.gid()), (0, 0));
    // The pod's network namespace belongs to the pod's user namespace: its root, with
    // CAP_NET_ADMIN, configures it.
    assert!(
        out(&d, &c, &["ip", "-4", "addr", "show", "eth0"])
            .await
            .contains(&format!("{pod_ip}/"))
    );
    out(
        &d,
        &c,
        &["ip", "addr", "add", "10.255.255.1/32", "dev", "lo"],
    )
    .await;
    assert!(
        out(&d, &c, &["ip", "addr", "show", "lo"])
            .await
            .contains("10.255.255.1/32")
    );
    // A second container shares the pod's namespace.
    let c2 = start_container(&d, &pod, &config, container_in_userns("c2", &u, &[])).await;
    assert_eq!(
        out(&d, &c2, &["cat", "/proc/1/uid_map"]).await,
        "0 100000 65536"
    );
    assert_eq!(
        out(&d, &c2, &["readlink", "/proc/self/ns/net"]).await,
        out(&d, &c, &["readlink", "/proc/self/ns/net"]).await
    );
    // A read-only root: the idmapped binds are remounted read-only too.
    let mut ro = container_in_userns("ro", &u, &[]);
    security_context(&mut ro).readonly_rootfs = true;
    let ro = start_container(&d, &pod, &config, ro).await;
    for path in ["/x", "/etc/hostname"] {
        let (_, err, code) = exec_sync(&d, &ro, &["sh", "-c", &format!("echo x > {path}")]).await;
        assert_ne!(code, 0, "{path} took a write");
        assert!(err.contains("Read-only file system"), "{path}: {err}");
    }
    assert_eq!(
        out(&d, &ro, &["stat", "-c", "%u", "/etc/hostname"]).await,
        "0"
    );
    // A container on a pty: its terminal belongs to its root and its tty group.
    let mut on_tty = container_in_userns("tty", &u, &[]);
    on_tty.tty = true;
    let on_tty = start_container(&d, &pod, &config, on_tty).await;
    assert_eq!(
        out(&d, &on_tty, &["stat", "-L", "-c", "%u:%g", "/proc/1/fd/0"]).await,
        "0:5"
    );
    // The monitor holds the namespace across a daemon restart.
    d.kill().await.expect("SIGKILL the daemon");
    d.start_again().await.expect("restart");
    d.wait_runtime_ready(std::time::Duration::from_secs(60))
        .await
        .expect("runtime ready after restart");
    assert_eq!(
        out(&d, &c, &["cat", "/proc/self/uid_map"]).await,
        "0 100000 65536"
    );
    // (Its working directory, missing in the image, is made by the container's root.)
    let mut c3 = container_in_userns("c3", &u, &[]);
    c3.working_dir = "/made/here".into();
    let c3 = start_container(&d, &pod, &config, c3).await;
    assert_eq!(
        out(&d, &c3, &["stat", "-c", "%u", "/etc/passwd"]).await,
        "0"
    );
    let made = std::fs::metadata(
        d.dir()
            .root()
            .join("containers")
            .join(&c3)
            .join("upper/made/here"),
    )
    .expect("the working directory in the upper dir");
    assert_eq!((made.uid(), made.gid()), (100000, 100000));
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn a_node_mode_pod_keeps_the_node_user_namespace() {
    let d = busybox_daemon().await;
    let u = userns(NamespaceMode::Node, 0, 0);
    let config = pod_with_userns("hostusers", &d, u.clone());
    let pod = run_pod(&d, &config).await;
    let c = start_container(&d, &pod, &config, container_in_userns("c", &u, &[])).await;
    assert_eq!(
        out(&d, &c, &["cat", "/proc/1/uid_map"]).await,
        "0 0 4294967295"
    );
    assert_eq!(
        out(&d, &c, &["cat", "/proc/self/gid_map"]).await,
        "0 0 4294967295"
    );
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn invalid_user_namespaces_are_refused() {
    let d = Daemon::start().await.expect("daemon");
    let bad = [
        userns(NamespaceMode::Pod, 100000, 0),
        userns(NamespaceMode::Pod, u32::MAX - 10, 65536),
        userns(NamespaceMode::Container, 100000, 65536),
        userns(NamespaceMode::Target, 100000, 65536),
        UserNamespace {
            gids: vec![],
            ..userns(NamespaceMode::Pod, 100000, 65536)
        },
    ];
    for u in bad {
        let err = run_pod_refused(&d, &pod_with_userns("bad-userns", &d, u.clone())).await;
        assert_refused(&err, Code::InvalidArgument, "user namespace");
    }
    let listed = list_pods(&d).await;
    assert!(listed.is_empty(), "{listed:?}");

    // A container must use its pod's namespace, and an idmapped volume needs one.
    pull(&d, images::BUSYBOX).await;
    let u = userns(NamespaceMode::Pod, 200000, 65536);
    let config = pod_with_userns("userns-mismatch", &d, u.clone());
    let pod = run_pod(&d, &config).await;
    let other = userns(NamespaceMode::Pod, 300000, 65536);
    let c = container_in_userns("c", &other, &[]);
    let err = create_refused(&d, &pod, &config, c).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    remove_pod(&d, &pod).await;
    let (config, pod) = new_pod(&d, "idmapped").await;
    let mut c = container_config("c", &["sleep", "3600"]);
    c.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: d.dir().path().display().to_string(),
        uid_mappings: u.uids.clone(),
        ..Default::default()
    }];
    let err = create_refused(&d, &pod, &config, c).await;
    assert_refused(&err, Code::InvalidArgument, "idmapped");
    remove_pod(&d, &pod).await;
}
