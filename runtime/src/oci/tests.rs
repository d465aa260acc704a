use std::collections::HashMap;
use std::path::PathBuf;

use k8s_cri::v1::{ContainerConfig, LinuxContainerResources};
use serde_json::json;

use super::*;
use crate::image::ImageInfo;
use crate::namespace::Namespace;
use crate::plan::{PlanInput, PodContext, plan_container};
use crate::seccomp::Profile;
use crate::security::CAPABILITY_NAMES;
use crate::security::{CapabilitySets, SecuritySettings};
use crate::spec::{
    MountKind, MountOptions, MountSpec, PidNamespace, ProcessSpec, Propagation, RootfsSpec,
};
use crate::user::ResolvedUser;

fn plain_spec() -> ContainerSpec {
    ContainerSpec {
        id: "c1".into(),
        rootfs: RootfsSpec {
            lower_dirs: vec!["/l1".into()],
            upper_dir: "/c/upper".into(),
            work_dir: "/c/work".into(),
            mount_point: "/c/rootfs".into(),
            readonly: true,
        },
        process: ProcessSpec {
            args: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/work".into(),
            user: ResolvedUser {
                uid: 1000,
                gid: 100,
                additional_gids: vec![100, 5],
                home: "/home/u".into(),
            },
            security: SecuritySettings {
                capabilities: CapabilitySets {
                    bounding: (1 << 0) | (1 << 13),
                    effective: 1 << 13,
                    permitted: 1 << 13,
                    inheritable: 0,
                    ambient: 0,
                },
                no_new_privs: true,
                masked_paths: vec!["/proc/kcore".into()],
                readonly_paths: vec!["/proc/sys".into()],
                ..Default::default()
            },
            oom_score_adj: Some(500),
        },
        ..Default::default()
    }
}

fn binding() -> PodBinding {
    PodBinding {
        namespaces: vec![Namespace::Net, Namespace::Ipc, Namespace::Uts],
        ns_dir: "/run/berth/pods/p1/ns".into(),
        cgroups_path: "/berth/p1/c1".into(),
        ..Default::default()
    }
}

/// The `config.json` of a plan in a pod, as the JSON it is written as.
fn config_value(spec: &ContainerSpec, pod: &PodBinding) -> serde_json::Value {
    sorted_capabilities(serde_json::to_value(runtime_spec(spec, pod).unwrap()).unwrap())
}

fn mount_value(m: &MountSpec) -> serde_json::Value {
    serde_json::to_value(mount(m).unwrap()).unwrap()
}

fn seccomp_value(p: &Profile) -> serde_json::Value {
    serde_json::to_value(seccomp(p).unwrap()).unwrap()
}

#[test]
fn process_root_and_ids_follow_the_plan() {
    let s = config_value(&plain_spec(), &binding());
    assert_eq!(s["ociVersion"], OCI_VERSION);
    let p = &s["process"];
    assert_eq!(p["args"], json!(["sh", "-c", "true"]));
    assert_eq!(p["env"], json!(["PATH=/bin"]));
    assert_eq!(p["cwd"], "/work");
    assert_eq!(
        p["user"],
        json!({"uid": 1000, "gid": 100, "additionalGids": [100, 5]})
    );
    assert_eq!(p["terminal"], false);
    assert_eq!(p["noNewPrivileges"], true);
    assert_eq!(p["oomScoreAdj"], 500);
    assert!(p.get("apparmorProfile").is_none(), "unconfined: no profile");
    let mut confined = plain_spec();
    confined.process.security.apparmor_profile = Some("berth-default".into());
    let c = config_value(&confined, &binding());
    assert_eq!(c["process"]["apparmorProfile"], "berth-default");
    assert_eq!(
        p["capabilities"]["bounding"],
        json!(["CAP_CHOWN", "CAP_NET_RAW"])
    );
    assert_eq!(p["capabilities"]["effective"], json!(["CAP_NET_RAW"]));
    assert_eq!(p["capabilities"]["ambient"], json!([]));
    assert_eq!(s["root"], json!({"path": "/c/rootfs", "readonly": true}));
    assert_eq!(s["linux"]["cgroupsPath"], "/berth/p1/c1");
    assert_eq!(s["linux"]["maskedPaths"], json!(["/proc/kcore"]));
    assert_eq!(s["linux"]["readonlyPaths"], json!(["/proc/sys"]));
    assert_eq!(s["linux"]["rootfsPropagation"], "rslave");
    assert!(s["linux"].get("seccomp").is_none());
}

#[test]
fn the_pod_namespaces_are_joined_by_path_and_mount_and_pid_are_new() {
    let s = config_value(&plain_spec(), &binding());
    assert_eq!(
        s["linux"]["namespaces"],
        json!([
            {"type": "mount"},
            {"type": "pid"},
            {"type": "network", "path": "/run/berth/pods/p1/ns/net"},
            {"type": "ipc", "path": "/run/berth/pods/p1/ns/ipc"},
            {"type": "uts", "path": "/run/berth/pods/p1/ns/uts"},
        ])
    );

    // Host network and IPC: nothing to join; host PID: no PID namespace.
    let mut spec = plain_spec();
    spec.pid_ns = PidNamespace::Node;
    let host = PodBinding {
        namespaces: vec![],
        ..binding()
    };
    let s = config_value(&spec, &host);
    assert_eq!(s["linux"]["namespaces"], json!([{"type": "mount"}]));

    // Another container's PID namespace, by its pid.
    spec.pid_ns = PidNamespace::Target {
        container_id: "c0".into(),
    };
    let s = config_value(
        &spec,
        &PodBinding {
            target_pid: Some(4242),
            ..host.clone()
        },
    );
    assert_eq!(
        s["linux"]["namespaces"][1],
        json!({"type": "pid", "path": "/proc/4242/ns/pid"})
    );
    let e = runtime_spec(&spec, &host).unwrap_err();
    assert!(e.to_string().contains("c0"), "{e}");

    // The pod's: the runtime already runs in it.
    spec.pid_ns = PidNamespace::Pod;
    let s = config_value(&spec, &binding());
    assert_eq!(s["linux"]["namespaces"][1]["type"], "network");
}

#[test]
fn nested_pids_are_read_outermost_first() {
    let status = "Name:\tsleep\nTgid:\t7\nNSpid:\t4242\t7\t1\nPPid:\t1\n";
    assert_eq!(nspids(status), [4242, 7, 1]);
    assert!(nspids("Name:\tx\n").is_empty());
    // This process seen from its own namespace is itself.
    let me = std::process::id() as i32;
    let own = nspids(&std::fs::read_to_string("/proc/self/status").unwrap());
    assert_eq!(pid_in_ns_of(me, me), own.last().copied());
}

#[test]
fn mounts_keep_their_kind_flags_and_propagation() {
    let want = [
        json!({"destination": "/data", "type": "bind", "source": "/srv/data",
               "options": ["rbind", "rshared", "ro", "rro"]}),
        json!({"destination": "/cache", "type": "bind", "source": "/srv/cache",
               "options": ["rbind"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["mode=755", "size=65536k", "nosuid", "nodev", "noexec"]}),
        json!({"destination": "/img", "type": "overlay", "source": "overlay",
               "options": ["lowerdir=/a:/b", "ro"]}),
    ];
    let mounts = every_mount_kind();
    assert_eq!(mounts.len(), want.len());
    for (m, want) in mounts.iter().zip(want) {
        assert_eq!(mount_value(m), want);
    }
}

#[test]
fn resources_and_devices_repeat_what_the_cgroup_got() {
    let b = PodBinding {
        resources: Some(LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpuset_cpus: "0".into(),
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        device_rules: vec![crate::cgroups::DeviceRule {
            kind: 'c',
            major: Some(10),
            minor: None,
            access: "rw".into(),
        }],
        devices: vec![DeviceNode {
            path: "/dev/fuse".into(),
            kind: 'c',
            major: 10,
            minor: 229,
            file_mode: 0o666,
            uid: 0,
            gid: 0,
        }],
        ..binding()
    };
    let s = config_value(&plain_spec(), &b);
    let r = &s["linux"]["resources"];
    assert_eq!(
        r["cpu"],
        json!({"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"})
    );
    assert_eq!(r["memory"], json!({"limit": 64 << 20}));
    assert_eq!(
        r["devices"],
        json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "access": "rw"},
        ])
    );
    assert_eq!(
        s["linux"]["devices"],
        json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                "fileMode": 0o666, "uid": 0, "gid": 0}])
    );

    // Privileged: every device, no masked paths.
    let mut spec = plain_spec();
    spec.process.security.privileged = true;
    let s = config_value(&spec, &b);
    assert_eq!(
        s["linux"]["resources"]["devices"],
        json!([{"allow": true, "access": "rwm"}])
    );
    assert!(s["linux"].get("maskedPaths").is_none());
}

#[test]
fn seccomp_profiles_take_the_oci_form() {
    let profile: Profile = serde_json::from_value(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                     "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
        ],
    }))
    .unwrap();
    assert_eq!(
        seccomp_value(&profile),
        json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
            ],
        })
    );
    // Ours: the runtime default profile converts, keeping its default action.
    let ours = seccomp_value(&crate::seccomp::runtime_default(0));
    assert_eq!(ours["defaultAction"], "SCMP_ACT_ERRNO");
    assert!(
        ours["syscalls"][0]["names"]
            .as_array()
            .is_some_and(|n| n.iter().any(|s| s == "read"))
    );
}

/// A container planned from a CRI config, as the daemon plans it, gets a bundle whose
/// `config.json` reads back as the spec it was written from.
#[test]
fn a_planned_container_s_config_json_reads_back_as_its_spec() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = binding();
    b.seccomp = Some(seccomp(&crate::seccomp::runtime_default(0)).unwrap());
    let spec = runtime_spec(&planned_spec(), &b).unwrap();
    let bundle = dir.path().join("bundle");
    write_bundle(dir.path(), &runc(), &bundle, &spec).unwrap();
    let text = std::fs::read_to_string(bundle.join("config.json")).unwrap();
    let parsed: oci_spec::runtime::Spec = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("not an OCI runtime spec: {e}\n{text}"));
    assert_eq!(parsed, spec);
    let linux = parsed.linux().as_ref().unwrap();
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/berth/p1/c1"))
    );
    assert!(linux.seccomp().is_some());
    let mounts = parsed.mounts().as_ref().unwrap();
    assert!(mounts.iter().any(|m| m.destination() == Path::new("/proc")));
    assert!(
        mounts
            .iter()
            .any(|m| m.destination() == Path::new("/etc/resolv.conf")
                && m.source().as_deref() == Some(Path::new("/run/berth/pods/p1/resolv.conf")))
    );
}

fn runc() -> Handler {
    Handler {
        name: "runc".into(),
        path: "/usr/sbin/runc".into(),
        args: vec!["--debug".into()],
    }
}

#[test]
fn the_bundle_holds_config_json_and_names_the_runtime_root() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("containers/c1/bundle");
    let config = runtime_spec(&plain_spec(), &binding()).unwrap();
    let rt = write_bundle(dir.path(), &runc(), &bundle, &config).unwrap();
    assert_eq!(rt.root, dir.path().join("runtimes/runc"));
    assert!(rt.root.is_dir());
    assert_eq!(rt.bundle, bundle);
    assert_eq!(rt.binary, Path::new("/usr/sbin/runc"));
    assert_eq!(rt.args, ["--debug"]);
    let text = std::fs::read_to_string(bundle.join("config.json")).unwrap();
    assert!(text.contains("1.0.2"), "{text}");
    // It holds the container's environment: the node's root alone reads it.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(bundle.join("config.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn annotations_are_in_config_json_only_when_the_plan_keeps_them() {
    assert!(
        config_value(&plain_spec(), &binding())
            .get("annotations")
            .is_none()
    );
    let mut spec = plain_spec();
    spec.annotations = [("example.com/gpu.note", "a \"quoted\" value")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
    let s = config_value(&spec, &binding());
    assert_eq!(
        s["annotations"],
        json!({"example.com/gpu.note": "a \"quoted\" value"})
    );
}

#[test]
fn write_config_replaces_a_config_json_with_one_only_root_reads() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    // A stale, longer, world-readable file there is replaced whole and made private.
    std::fs::write(&path, vec![b'x'; 1 << 16]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = runtime_spec(&plain_spec(), &binding()).unwrap();
    write_config(dir.path(), &config).unwrap();
    let back: Spec = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(back, config);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let err = write_config(&dir.path().join("missing"), &config).unwrap_err();
    assert!(err.to_string().contains("missing/config.json"), "{err}");
}

#[test]
fn cgroup_mounts_are_found_in_mountinfo() {
    let text = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
";
    assert_eq!(
        cgroup_mounts(text),
        [
            PathBuf::from("/sys/fs/cgroup/unified"),
            PathBuf::from("/sys/fs/cgroup/systemd"),
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
        ]
    );
}

/// A Localhost-style profile: Docker's `archMap`, a single `name`, arguments, an errno and
/// flags, each of which has its own place in the OCI form.
fn localhost_profile() -> Profile {
    serde_json::from_value(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "architectures": ["SCMP_ARCH_X86_64"],
        "archMap": [{"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
        "syscalls": [
            {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
            {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": [], "action": "SCMP_ACT_KILL"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                      {"index": 1, "value": 255, "valueTwo": 4, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["ptrace"], "action": "SCMP_ACT_KILL_PROCESS"},
        ],
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
    }))
    .unwrap()
}

/// Every kind of mount the plan makes: a bind with propagation, a file system with data, an
/// image volume.
fn every_mount_kind() -> Vec<MountSpec> {
    vec![
        MountSpec {
            destination: "/data".into(),
            kind: MountKind::Bind {
                source: "/srv/data".into(),
                propagation: Some(Propagation::Shared),
            },
            options: MountOptions {
                readonly: true,
                recursive_readonly: true,
                ..Default::default()
            },
        },
        MountSpec {
            destination: "/cache".into(),
            kind: MountKind::Bind {
                source: "/srv/cache".into(),
                propagation: None,
            },
            options: MountOptions::default(),
        },
        MountSpec {
            destination: "/dev".into(),
            kind: MountKind::Fs {
                fstype: "tmpfs".into(),
                source: "tmpfs".into(),
                data: "mode=755,size=65536k".into(),
            },
            options: MountOptions {
                nosuid: true,
                noexec: true,
                nodev: true,
                ..Default::default()
            },
        },
        MountSpec {
            destination: "/img".into(),
            kind: MountKind::Overlay {
                lower_dirs: vec!["/a".into(), "/b".into()],
            },
            options: MountOptions {
                readonly: true,
                ..Default::default()
            },
        },
    ]
}

/// A container planned from a CRI config as the daemon plans it, with the runtime default
/// seccomp profile.
fn planned_spec() -> ContainerSpec {
    let image = ImageInfo {
        lower_dirs: vec![PathBuf::from("/layers/1")],
        ..Default::default()
    };
    let pod = PodContext {
        run_dir: "/run/berth/pods/p1".into(),
        hostname: "h".into(),
        log_directory: "/logs".into(),
        ..Default::default()
    };
    let config = ContainerConfig {
        command: vec!["sleep".into(), "1".into()],
        log_path: "c.log".into(),
        ..Default::default()
    };
    let mut spec = plan_container(&PlanInput {
        id: "c1",
        config: &config,
        pod: &pod,
        image: &image,
        mount_images: &HashMap::new(),
        container_dir: "/var/lib/berth/containers/c1".into(),
        passwd: &[],
        groups: &[],
        // A fixed set, so the recorded bundle does not depend on the machine's.
        all_caps: (1 << CAPABILITY_NAMES.len()) - 1,
        oom_score_adj_floor: -1000,
        cgroup_procs: vec![],
    })
    .unwrap();
    spec.process.security.seccomp = None;
    spec
}

/// Representative plans and pods, each with the `config.json` it was given when the bundle
/// was built with `serde_json::json!` (recorded in `testdata/`), which the oci-spec build must
/// repeat.
fn recorded_cases() -> Vec<(&'static str, ContainerSpec, PodBinding, &'static str)> {
    let mut plain = plain_spec();
    plain.mounts = every_mount_kind();
    plain.process.security.apparmor_profile = Some("berth-default".into());
    let limited = PodBinding {
        resources: Some(LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        device_rules: vec![
            crate::cgroups::DeviceRule {
                kind: 'c',
                major: Some(10),
                minor: None,
                access: "rw".into(),
            },
            crate::cgroups::DeviceRule {
                kind: 'b',
                major: Some(8),
                minor: Some(0),
                access: "rwm".into(),
            },
        ],
        devices: vec![
            DeviceNode {
                path: "/dev/fuse".into(),
                kind: 'c',
                major: 10,
                minor: 229,
                file_mode: 0o666,
                uid: 0,
                gid: 0,
            },
            DeviceNode {
                path: "/dev/sda".into(),
                kind: 'b',
                major: 8,
                minor: 0,
                file_mode: 0o444,
                uid: 0,
                gid: 0,
            },
        ],
        seccomp: Some(seccomp(&localhost_profile()).unwrap()),
        ..binding()
    };

    let mut privileged = plain_spec();
    privileged.tty = true;
    privileged.pid_ns = PidNamespace::Node;
    privileged.root_propagation = Propagation::Shared;
    privileged.rootfs.readonly = false;
    privileged.process.oom_score_adj = None;
    privileged.process.security.privileged = true;
    privileged.process.security.no_new_privs = false;
    let host = PodBinding {
        namespaces: vec![],
        cgroups_path: String::new(),
        ..limited.clone()
    };

    let mut target = plain_spec();
    target.pid_ns = PidNamespace::Target {
        container_id: "c0".into(),
    };
    target.process.user.additional_gids = vec![];
    let zero_limits = PodBinding {
        namespaces: vec![Namespace::Uts, Namespace::Net],
        target_pid: Some(4242),
        resources: Some(LinuxContainerResources {
            cpu_quota: -1,
            ..Default::default()
        }),
        ..binding()
    };

    let mut pod_pid = plain_spec();
    pod_pid.pid_ns = PidNamespace::Pod;
    let unlimited = PodBinding {
        resources: Some(LinuxContainerResources::default()),
        ..binding()
    };

    let planned = PodBinding {
        seccomp: Some(seccomp(&crate::seccomp::runtime_default(0)).unwrap()),
        ..binding()
    };
    vec![
        (
            "limited",
            plain,
            limited,
            include_str!("testdata/limited.json"),
        ),
        (
            "privileged-host",
            privileged,
            host,
            include_str!("testdata/privileged-host.json"),
        ),
        (
            "target-pid",
            target,
            zero_limits,
            include_str!("testdata/target-pid.json"),
        ),
        (
            "pod-pid",
            pod_pid,
            unlimited,
            include_str!("testdata/pod-pid.json"),
        ),
        (
            "planned",
            planned_spec(),
            planned,
            include_str!("testdata/planned.json"),
        ),
    ]
}

/// The capability sets are sets: their order in the document carries no meaning.
fn sorted_capabilities(mut spec: serde_json::Value) -> serde_json::Value {
    if let Some(sets) = spec["process"]["capabilities"].as_object_mut() {
        for set in sets.values_mut() {
            if let Some(names) = set.as_array_mut() {
                names.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    spec
}

#[test]
fn config_json_says_what_the_recorded_bundles_say() {
    for (name, spec, binding, recorded) in recorded_cases() {
        let got = config_value(&spec, &binding);
        let want: serde_json::Value = serde_json::from_str(recorded).unwrap();
        assert_eq!(
            sorted_capabilities(got),
            sorted_capabilities(want),
            "{name}"
        );
    }
}

/// A name oci-spec has no value for cannot be written into `config.json`: the request is
/// refused with the name, before any runtime runs.
#[test]
fn names_the_oci_runtime_spec_lacks_are_refused_with_the_name() {
    let mut profile = localhost_profile();
    profile.arch_map[0]
        .sub_architectures
        .push("SCMP_ARCH_LOONGARCH64".into());
    let e = seccomp(&profile).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    assert!(e.to_string().contains("SCMP_ARCH_LOONGARCH64"), "{e}");

    let mut profile = localhost_profile();
    profile.syscalls[0].args.push(crate::seccomp::ArgCondition {
        index: 0,
        value: 1,
        value_two: 0,
        op: "SCMP_CMP_SOMETIMES".into(),
    });
    let e = seccomp(&profile).unwrap_err();
    assert!(e.to_string().contains("SCMP_CMP_SOMETIMES"), "{e}");

    let b = PodBinding {
        device_rules: vec![crate::cgroups::DeviceRule {
            kind: 'x',
            major: None,
            minor: None,
            access: "r".into(),
        }],
        ..binding()
    };
    let e = runtime_spec(&plain_spec(), &b).unwrap_err();
    assert!(e.to_string().contains("\"x\""), "{e}");
}
