//! Identity: users and groups read from the image, capabilities, seccomp, sysctls.
//!
//! The images are built here: the harness's busybox root file system plus
//! `escape-probe` (this crate's binary, for system calls busybox has no applet for) and a
//! hostile top layer, pushed to the loopback registry and pulled from it.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use berth_e2e::Daemon;
use berth_e2e::fixtures::{
    busybox_daemon, container_config, container_status, exec_ok, exec_sync, image_spec,
    linux_security, list_containers, list_pods, log_dir, new_pod, pod_config, pull, remove_pod,
    run_pod, runc_crun_daemon, start, start_container, try_create,
};
use berth_e2e::images::{self, HostBusybox};
use berth_e2e::oci::{Compression, Layer, LayerBuilder, RunConfig};
use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::*;
use tonic::Code;

/// Where images put the probe.
const PROBE: &str = "/bin/escape-probe";

/// The busybox root file system with the probe and the libraries it needs, built once.
fn base_layer() -> &'static Layer {
    static BASE: OnceLock<Layer> = OnceLock::new();
    BASE.get_or_init(|| {
        let probe = env!("CARGO_BIN_EXE_escape-probe");
        let mut host = HostBusybox::find().expect("the host's busybox");
        let ldd = berth_e2e::process::run("ldd", &[probe]).expect("ldd escape-probe");
        host.libs.extend(images::parse_ldd(&ldd));
        host.libs.sort();
        host.libs.dedup();
        let mut l = images::busybox_rootfs(&host).expect("busybox rootfs");
        l.file(
            PROBE.trim_start_matches('/'),
            0o755,
            std::fs::read(probe).expect("read escape-probe"),
        )
        .unwrap();
        l.build(Compression::Gzip).expect("build the base layer")
    })
}

/// Builds the base image with `top` over it and `user` as its USER, pushes it to the
/// loopback registry as `berth-e2e/identity-<name>:1`, and returns that reference.
async fn push_image(name: &str, top: LayerBuilder, user: Option<&str>) -> String {
    let run = RunConfig {
        user: user.map(str::to_string),
        env: vec![images::PATH_ENV.into()],
        cmd: Some(vec!["sh".into()]),
        ..RunConfig::default()
    };
    let layers = vec![base_layer().clone(), top.build(Compression::Gzip).unwrap()];
    images::push_layers(&format!("berth-e2e/identity-{name}"), layers, &run)
        .await
        .expect("push the image")
}

/// A container of `image` running `sleep`, with `sc` as its security context.
fn container(name: &str, image: &str, sc: LinuxContainerSecurityContext) -> ContainerConfig {
    let mut c = container_config(name, &["sleep", "3600"]);
    c.image = image_spec(image);
    c.linux = Some(linux_security(sc));
    c
}

/// Creates `c` in the pod, which must be refused (`why` says what a success would mean) as
/// an invalid argument whose message names every one of `needles`.
async fn refused(
    d: &Daemon,
    pod: &str,
    config: &PodSandboxConfig,
    c: ContainerConfig,
    why: &str,
    needles: &[&str],
) {
    let name = c
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let err = try_create(d, pod, config, c).await.expect_err(why);
    assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
    for needle in needles {
        assert!(err.message().contains(needle), "{name}: {}", err.message());
    }
}

/// A user of the node's /etc/passwd that no test image has, with a non-zero uid.
fn node_only_user() -> (String, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let users: Vec<(String, u32)> = passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
        })
        .collect();
    ["_apt", "daemon", "bin", "sys", "mail"]
        .iter()
        .find_map(|n| users.iter().find(|(u, uid)| u == n && *uid != 0).cloned())
        .expect("the node's /etc/passwd has _apt, daemon, bin, sys or mail")
}

/// The command of a container that records its own process's status (before that process
/// becomes `sleep`) in /tmp/main-status: in a pod's shared PID namespace, pid 1 is not it.
const RECORD_STATUS: [&str; 3] = [
    "sh",
    "-c",
    "cat /proc/$$/status > /tmp/main-status; exec sleep 3600",
];

/// The status the container's process recorded (see [`RECORD_STATUS`]).
async fn main_status(d: &Daemon, id: &str) -> String {
    for _ in 0..100 {
        let (s, _, _) = exec_sync(d, id, &["cat", "/tmp/main-status"]).await;
        if s.contains("CapAmb") {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("container {id} did not record its status");
}

/// The value of `field` in a `/proc/<pid>/status` text.
fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .to_string()
}

#[tokio::test]
async fn image_etc_symlink_to_the_nodes_etc_cannot_pick_the_user() {
    let (user, node_uid) = node_only_user();
    // `/etc -> /etc`: joined on the node it is the node's /etc, where `user` exists.
    let mut top = LayerBuilder::new();
    top.symlink("etc", "/etc").unwrap();
    let image = push_image("etc-loop", top, Some(&user)).await;
    let d = Daemon::start().await.expect("daemon");
    pull(&d, &image).await;
    let (config, pod) = new_pod(&d, "etc-loop").await;
    for (name, sc) in [
        ("image-user", LinuxContainerSecurityContext::default()),
        (
            "username",
            LinuxContainerSecurityContext {
                run_as_username: user.clone(),
                ..Default::default()
            },
        ),
    ] {
        refused(
            &d,
            &pod,
            &config,
            container(name, &image, sc),
            "a container whose /etc loops was created",
            &["/etc/passwd", "symbolic links"],
        )
        .await;
    }
    // `/etc -> /proc/self/root/etc`: no loop, but in the image that path leads nowhere
    // (its /proc is an empty directory), while on the node it is the daemon's own /etc.
    let mut top = LayerBuilder::new();
    top.symlink("etc", "/proc/self/root/etc").unwrap();
    let elsewhere = push_image("etc-proc-root", top, Some(&user)).await;
    pull(&d, &elsewhere).await;
    refused(
        &d,
        &pod,
        &config,
        container("proc-root", &elsewhere, Default::default()),
        "a container of a user the image does not have was created",
        &[&format!("{user:?} not found")],
    )
    .await;
    // Nothing runs, so nothing runs as the node's uid of `user`.
    let listed = list_containers(&d).await;
    assert!(
        listed.is_empty(),
        "uid {node_uid} container left: {listed:?}"
    );
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn image_passwd_symlink_cannot_leak_the_nodes_shadow() {
    let (user, _) = node_only_user();
    let shadow = std::fs::read_to_string("/etc/shadow").unwrap();
    let shadow_line = shadow
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .expect("the node's shadow has the user")
        .to_string();
    // `etc/passwd -> /etc/shadow`; the image has no shadow file of its own.
    let mut top = LayerBuilder::new();
    top.symlink("etc/passwd", "/etc/shadow").unwrap();
    let image = push_image("passwd-shadow", top, Some(&user)).await;
    let d = Daemon::start().await.expect("daemon");
    pull(&d, &image).await;
    let (config, pod) = new_pod(&d, "passwd-shadow").await;
    // Read as passwd, the node's shadow line `user:hash:lastchg:0:...` would give the
    // container uid `lastchg` and HOME from a shadow field. Read inside the image, the
    // user does not exist.
    refused(
        &d,
        &pod,
        &config,
        container("image-user", &image, Default::default()),
        "the image's USER came from somewhere",
        &[&user, "not found"],
    )
    .await;
    // Run as root instead: nothing of the node's shadow reaches the container.
    let root = container(
        "root",
        &image,
        LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 0 }),
            ..Default::default()
        },
    );
    let id = start_container(&d, &pod, &config, root).await;
    let (out, err, _) = exec_sync(
        &d,
        &id,
        &["sh", "-c", "echo HOME=$HOME; id; cat /etc/passwd"],
    )
    .await;
    assert!(out.starts_with("HOME=/\n"), "{out}");
    assert!(err.contains("No such file"), "/etc/passwd: {err}");
    let hash = shadow_line.split(':').nth(1).unwrap_or_default();
    for seen in [&out, &err] {
        assert!(
            !seen.contains(&shadow_line) && (hash.len() < 2 || !seen.contains(hash)),
            "{seen}"
        );
    }
    let reported = container_status(&d, &id).await.user.and_then(|u| u.linux);
    assert_eq!(reported.map(|u| (u.uid, u.gid)), Some((0, 0)));
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn cve_2023_25173_supplementary_groups_and_no_inherited_capabilities() {
    let mut top = LayerBuilder::new();
    top.file(
        "etc/passwd",
        0o644,
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
    )
    .unwrap();
    top.file(
        "etc/group",
        0o644,
        "root:x:0:\nalice:x:1000:\nsecret:x:4242:alice\nother:x:4343:bob\n",
    )
    .unwrap();
    top.file_owned("secret.txt", 0o640, 0, 4242, "only group 4242\n")
        .unwrap();
    let image = push_image("groups", top, Some("alice")).await;
    let d = Daemon::start().await.expect("daemon");
    pull(&d, &image).await;
    let (config, pod) = new_pod(&d, "groups").await;
    let mut c = container("alice", &image, Default::default());
    c.command = RECORD_STATUS.map(String::from).into();
    let id = start_container(&d, &pod, &config, c).await;
    let recorded = main_status(&d, &id).await;
    let (exec_status, _, _) = exec_sync(&d, &id, &["cat", "/proc/self/status"]).await;
    let want: BTreeSet<String> = ["1000", "4242"].map(String::from).into();
    // Both the container's own process and an exec'd one.
    for (pid, status) in [("container", recorded), ("exec", exec_status)] {
        let uid = status_field(&status, "Uid");
        assert!(uid.split_whitespace().all(|u| u == "1000"), "{pid}: {uid}");
        let groups: BTreeSet<String> = status_field(&status, "Groups")
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(groups, want, "{pid}: the image's supplementary groups");
        for set in ["CapInh", "CapAmb", "CapPrm", "CapEff"] {
            assert_eq!(
                status_field(&status, set),
                "0000000000000000",
                "{pid}: {set} of a non-root user"
            );
        }
        assert_eq!(status_field(&status, "CapBnd"), "00000000a80425fb", "{pid}");
    }
    let (out, err, code) = exec_sync(&d, &id, &["sh", "-c", "id -G; cat /secret.txt"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "1000 4242\nonly group 4242\n");

    // Ambient capabilities only when asked for, and then only those.
    let mut asked = container(
        "ambient",
        &image,
        LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_ambient_capabilities: vec!["NET_BIND_SERVICE".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    asked.command = RECORD_STATUS.map(String::from).into();
    let id = start_container(&d, &pod, &config, asked).await;
    let (exec_status, _, _) = exec_sync(&d, &id, &["cat", "/proc/self/status"]).await;
    for (who, status) in [
        ("container", main_status(&d, &id).await),
        ("exec", exec_status),
    ] {
        for set in ["CapAmb", "CapInh", "CapPrm", "CapEff"] {
            assert_eq!(
                status_field(&status, set),
                "0000000000000400",
                "{who}: {set}"
            );
        }
    }
    remove_pod(&d, &pod).await;
}

/// What `escape-probe args` printed in the container.
async fn probe(d: &Daemon, id: &str, args: &[&str]) -> String {
    let mut cmd = vec![PROBE];
    cmd.extend_from_slice(args);
    exec_ok(d, id, &cmd).await.trim().to_string()
}

#[tokio::test]
async fn seccomp_runtime_default_refuses_af_alg_af_vsock_and_pidfd_getfd() {
    let image = push_image("seccomp", LayerBuilder::new(), None).await;
    let d = Daemon::start().await.expect("daemon");
    pull(&d, &image).await;
    let (config, pod) = new_pod(&d, "seccomp-default").await;
    let with = |name: &str, t: ProfileType, add: &[&str]| {
        container(
            name,
            &image,
            LinuxContainerSecurityContext {
                seccomp: Some(SecurityProfile {
                    profile_type: t as i32,
                    localhost_ref: String::new(),
                }),
                capabilities: Some(Capability {
                    add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    };
    let mut started = Vec::new();
    for (name, profile, add) in [
        ("default", ProfileType::RuntimeDefault, &[][..]),
        ("ptrace", ProfileType::RuntimeDefault, &["SYS_PTRACE"][..]),
        ("unconfined", ProfileType::Unconfined, &[][..]),
    ] {
        started.push(start_container(&d, &pod, &config, with(name, profile, add)).await);
    }
    let [default, ptrace, unconfined] = <[String; 3]>::try_from(started).unwrap();
    let eperm = "errno 1";
    // RuntimeDefault: AF_ALG and AF_VSOCK refused with EPERM, as containerd's default
    // answers them; the family with its upper bits set (the kernel drops them) too.
    assert_eq!(probe(&d, &default, &["socket", "38", "5"]).await, eperm);
    assert_eq!(probe(&d, &default, &["socket", "40", "1"]).await, eperm);
    assert_eq!(
        probe(&d, &default, &["socket", "0x100000026", "5"]).await,
        eperm
    );
    assert_eq!(probe(&d, &default, &["socket", "2", "1"]).await, "ok");
    assert_eq!(probe(&d, &default, &["socket", "10", "2"]).await, "ok");
    assert_eq!(probe(&d, &default, &["pidfd_getfd"]).await, eperm);
    let (_, err, code) =
        exec_sync(&d, &default, &["sh", "-c", "mkdir /tmp/d && rmdir /tmp/d"]).await;
    assert_eq!(code, 0, "rmdir under RuntimeDefault: {err}");
    // CAP_SYS_PTRACE unlocks pidfd_getfd, not the sockets.
    assert_eq!(probe(&d, &ptrace, &["pidfd_getfd"]).await, "ok");
    assert_eq!(probe(&d, &ptrace, &["socket", "38", "5"]).await, eperm);
    // Unconfined, the kernel answers: the refusals above were the filter's.
    for args in [
        ["socket", "38", "5"],
        ["socket", "40", "1"],
        ["socket", "0x100000026", "5"],
    ] {
        assert_ne!(probe(&d, &unconfined, &args).await, eperm, "{args:?}");
    }
    assert_eq!(probe(&d, &unconfined, &["pidfd_getfd"]).await, "ok");
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn cve_2022_0811_sysctl_values_cannot_set_a_node_sysctl() {
    let core_pattern = || std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let before = core_pattern();
    let d = busybox_daemon().await;
    let logs = log_dir(&d);
    let pod_with = |name: &str, sysctl: &str, value: &str| {
        let mut c = pod_config(name, &logs);
        c.linux = Some(LinuxPodSandboxConfig {
            sysctls: [(sysctl.to_string(), value.to_string())].into(),
            ..Default::default()
        });
        c
    };
    let port = "net.ipv4.ip_unprivileged_port_start";
    for (i, (sysctl, value)) in [
        (port, "1024+kernel.core_pattern=|/tmp/berth-cve-2022-0811"),
        (port, "1024\nkernel.core_pattern=|/tmp/berth-cve-2022-0811"),
        (port, "kernel.core_pattern=|/tmp/berth-cve-2022-0811"),
        ("kernel.core_pattern", "|/tmp/berth-cve-2022-0811"),
        (
            "net.ipv4.ip_forward\nkernel.core_pattern",
            "|/tmp/berth-cve-2022-0811",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let err = d
            .runtime()
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_with(&format!("inject-{i}"), sysctl, value)),
                ..Default::default()
            })
            .await
            .expect_err(value);
        assert_eq!(err.code(), Code::InvalidArgument, "{value:?}: {err:?}");
        assert!(
            err.message().contains(&format!("{sysctl:?}")),
            "{value:?}: {}",
            err.message()
        );
        assert_eq!(core_pattern(), before, "the node's core_pattern changed");
    }
    let pods = list_pods(&d).await;
    assert!(pods.is_empty(), "a refused pod was left: {pods:?}");
    // A multi-field value with spaces still works.
    let config = pod_with("ports", "net.ipv4.ip_local_port_range", "32768 60999");
    let pod = run_pod(&d, &config).await;
    let c = start(&d, &pod, &config, "c", &["sleep", "3600"]).await;
    let (v, _, _) = exec_sync(&d, &c, &["cat", "/proc/sys/net/ipv4/ip_local_port_range"]).await;
    assert_eq!(v.split_whitespace().collect::<Vec<_>>(), ["32768", "60999"]);
    remove_pod(&d, &pod).await;
    assert_eq!(core_pattern(), before);
}

#[tokio::test]
async fn seccomp_runtime_default_given_to_runc_and_crun_refuses_af_alg_and_af_vsock() {
    let image = push_image("seccomp-handlers", LayerBuilder::new(), None).await;
    let d = runc_crun_daemon().await;
    pull(&d, &image).await;
    for handler in ["runc", "crun"] {
        let config = pod_config(
            &format!("seccomp-{handler}"),
            &d.dir().path().join(format!("logs-{handler}")),
        );
        let pod = d
            .runtime()
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox with {handler}: {e:?}"))
            .into_inner()
            .pod_sandbox_id;
        let c = container(
            "default",
            &image,
            LinuxContainerSecurityContext {
                seccomp: Some(SecurityProfile {
                    profile_type: ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            },
        );
        let id = start_container(&d, &pod, &config, c).await;
        // The profile the runtime's libseccomp compiled (containerd's rules, no guard):
        // the same answers, the family with upper bits set included.
        for (args, want) in [
            (["socket", "38", "5"], "errno 1"),
            (["socket", "40", "1"], "errno 1"),
            (["socket", "0x100000026", "5"], "errno 1"),
            (["socket", "2", "1"], "ok"),
        ] {
            assert_eq!(probe(&d, &id, &args).await, want, "{handler}: {args:?}");
        }
        assert_eq!(
            probe(&d, &id, &["pidfd_getfd"]).await,
            "errno 1",
            "{handler}"
        );
        remove_pod(&d, &pod).await;
    }
}
