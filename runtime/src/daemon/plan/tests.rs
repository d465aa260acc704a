//! Tests of the container plan: mounts, argv, ids and namespaces from CRI configs.
use super::*;
use crate::Classify;
use k8s_cri::v1::{
    ContainerMetadata, IdMapping, ImageSpec, KeyValue, LinuxContainerConfig,
    LinuxContainerResources, LinuxContainerSecurityContext, Mount, NamespaceOption, UserNamespace,
};

/// An image's passwd with only root.
fn root_passwd() -> Vec<crate::user::PasswdEntry> {
    crate::user::parse_passwd("root:x:0:0:root:/root:/bin/sh\n")
}

/// No image is mounted as a volume.
static NO_MOUNT_IMAGES: std::sync::LazyLock<HashMap<String, Vec<PathBuf>>> =
    std::sync::LazyLock::new(HashMap::new);

/// The input of container `cid` of `pod` on a node with 41 capabilities and an
/// oom_score_adj floor of -500.
fn input_for<'a>(
    config: &'a ContainerConfig,
    pod: &'a PodContext,
    image: &'a ImageInfo,
    passwd: &'a [crate::user::PasswdEntry],
) -> PlanInput<'a> {
    PlanInput {
        id: "cid",
        config,
        pod,
        image,
        mount_images: &NO_MOUNT_IMAGES,
        container_dir: "/var/lib/berth/containers/cid".into(),
        passwd,
        groups: &[],
        all_caps: (1 << 41) - 1,
        oom_score_adj_floor: -500,
        cgroup_procs: vec![],
    }
}

fn pod() -> PodContext {
    PodContext {
        run_dir: "/run/berth/pods/p".into(),
        hostname: "web-0".into(),
        log_directory: "/var/log/pods/ns_web_uid".into(),
        ..Default::default()
    }
}

fn mount(path: &str, host: &str, ro: bool, prop: i32) -> Mount {
    Mount {
        container_path: path.into(),
        host_path: host.into(),
        readonly: ro,
        propagation: prop,
        ..Default::default()
    }
}

/// Plans `config` with the rest of `input` (a fresh container directory, no cgroup files).
fn plan_with(input: &PlanInput<'_>, config: &ContainerConfig) -> Result<ContainerSpec> {
    plan_container(&PlanInput {
        config,
        container_dir: input.container_dir.clone(),
        cgroup_procs: vec![],
        ..*input
    })
}

fn dests(m: &[MountSpec]) -> Vec<&str> {
    m.iter().map(|m| m.destination.as_str()).collect()
}

#[test]
fn defaults_then_cri_sorted_and_overrides() {
    let cri = vec![
        mount("/data/sub", "/h/sub", false, 0),
        mount("/etc/hosts", "/var/lib/kubelet/hosts", false, 0),
        mount("/data", "/h/data", true, 1),
    ];
    let (all, root) =
        plan_mounts(default_mounts(&pod(), false, false), &cri, &HashMap::new()).unwrap();
    assert_eq!(
        dests(&all),
        vec![
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/dev/shm",
            "/etc/hostname",
            "/etc/resolv.conf",
            "/data",
            "/data/sub",
            "/etc/hosts"
        ]
    );
    assert_eq!(root, Propagation::Slave);
    let data = all.iter().find(|m| m.destination == "/data").unwrap();
    assert!(data.options.readonly);
    assert_eq!(
        data.kind,
        MountKind::Bind {
            source: "/h/data".into(),
            propagation: Some(Propagation::Slave)
        }
    );
    let sys = all.iter().find(|m| m.destination == "/sys").unwrap();
    assert!(sys.options.readonly);
    let shm = all.iter().find(|m| m.destination == "/dev/shm").unwrap();
    assert_eq!(
        shm.kind,
        MountKind::Bind {
            source: "/run/berth/pods/p/shm".into(),
            propagation: None
        }
    );
}

#[test]
fn bidirectional_makes_root_shared_and_bad_mounts_fail() {
    let (_, root) = plan_mounts(vec![], &[mount("/x", "/h", false, 2)], &HashMap::new()).unwrap();
    assert_eq!(root, Propagation::Shared);
    for bad in [
        mount("rel", "/h", false, 0),
        mount("/x", "", false, 0),
        mount("/x", "/h", false, 7),
    ] {
        let e = plan_mounts(vec![], &[bad], &HashMap::new()).unwrap_err();
        assert_eq!(e.class(), crate::Class::InvalidArgument, "{e}");
    }
    let mut idmapped = mount("/x", "/h", false, 0);
    idmapped.uid_mappings = vec![k8s_cri::v1::IdMapping {
        host_id: 65536,
        container_id: 0,
        length: 65536,
    }];
    let e = plan_mounts(vec![], &[idmapped], &HashMap::new()).unwrap_err();
    assert!(e.to_string().contains("idmapped"), "{e}");
    let mut rro = mount("/x", "/h", false, 0);
    rro.recursive_read_only = true;
    assert!(plan_mounts(vec![], &[rro.clone()], &HashMap::new()).is_err());
    rro.readonly = true;
    let (m, _) = plan_mounts(vec![], &[rro], &HashMap::new()).unwrap();
    assert!(m[0].options.recursive_readonly);
}

#[test]
fn volumes_on_procfs_and_sysfs_are_refused_by_name() {
    let refused = |dest: &str, privileged: bool| {
        refuse_kernel_fs_mounts(&[mount(dest, "/h", false, 0)], privileged)
            .err()
            .map(|e| e.to_string())
    };
    for dest in [
        "/proc",
        "/proc/",
        "/proc/sys/kernel",
        "/x/../proc/self/attr",
        "/sys",
    ] {
        let e = refused(dest, false).unwrap_or_else(|| panic!("{dest} was allowed"));
        assert!(e.contains("a volume cannot be mounted on"), "{e}");
    }
    assert!(refused("/proc", true).unwrap().contains("procfs"));
    assert!(
        refused("/sys/kernel/debug", false)
            .unwrap()
            .contains("sysfs")
    );
    // lxcfs's files, sysfs for a privileged container, and names that only start alike.
    assert_eq!(refused("/proc/meminfo", false), None);
    assert_eq!(refused("/sys/fs/bpf", true), None);
    assert_eq!(refused("/procfs", false), None);
    assert_eq!(refused("/system", false), None);
    assert_eq!(kernel_fs_at("/proc/1/root"), Some(KernelFs::Proc));
    assert_eq!(kernel_fs_at("/data/proc"), None);
}

#[test]
fn image_volumes_and_dot_dot() {
    let mut m = mount("/a/../vol/", "", false, 0);
    m.image = Some(ImageSpec {
        image: "sha256:v".into(),
        ..Default::default()
    });
    let imgs = HashMap::from([("sha256:v".to_string(), vec![PathBuf::from("/l1")])]);
    let (all, _) = plan_mounts(vec![], &[m.clone()], &imgs).unwrap();
    assert_eq!(all[0].destination, "/vol");
    assert_eq!(
        all[0].kind,
        MountKind::Overlay {
            lower_dirs: vec!["/l1".into()]
        }
    );
    assert!(plan_mounts(vec![], &[m], &HashMap::new()).is_err());
}

#[test]
fn full_plan() {
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        args: vec!["-c".into(), "echo hi".into()],
        working_dir: "/work".into(),
        envs: vec![KeyValue {
            key: "A".into(),
            value: "1".into(),
        }],
        log_path: "c/0.log".into(),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                oom_score_adj: -998,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let image = ImageInfo {
        id: "sha256:i".into(),
        name: "busybox".into(),
        lower_dirs: vec!["/snap/2".into(), "/snap/1".into()],
        config: crate::image::ImageConfig {
            entrypoint: vec!["/bin/sh".into()],
            env: vec!["PATH=/bin".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let passwd = root_passwd();
    let p = pod();
    let input = input_for(&config, &p, &image, &passwd);
    let spec = plan_container(&input).unwrap();
    assert_eq!(spec.process.args, vec!["/bin/sh", "-c", "echo hi"]);
    assert_eq!(spec.process.cwd, "/work");
    assert_eq!(
        spec.process.env,
        vec!["PATH=/bin", "A=1", "HOSTNAME=web-0", "HOME=/root"]
    );
    assert_eq!(spec.process.oom_score_adj, Some(-500));
    assert_eq!(
        spec.log_path,
        Some(PathBuf::from("/var/log/pods/ns_web_uid/c/0.log"))
    );
    assert_eq!(
        spec.rootfs.upper_dir,
        PathBuf::from("/var/lib/berth/containers/cid/upper")
    );
    assert_eq!(spec.pid_ns, PidNamespace::Pod);
    // A container that asks for a user namespace its pod does not have.
    let mapping = vec![IdMapping {
        host_id: 100000,
        container_id: 0,
        length: 65536,
    }];
    let with_userns = |c: &ContainerConfig, uids: Vec<IdMapping>, gids: Vec<IdMapping>| {
        let mut c = c.clone();
        c.linux.as_mut().unwrap().security_context = Some(LinuxContainerSecurityContext {
            namespace_options: Some(NamespaceOption {
                userns_options: Some(UserNamespace {
                    mode: NamespaceMode::Pod as i32,
                    uids,
                    gids,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    };
    let userns = with_userns(&config, mapping.clone(), mapping.clone());
    let e = plan_with(&input, &userns).unwrap_err();
    assert!(e.to_string().contains("differs from its pod's"), "{e}");
    let e = plan_with(&input, &with_userns(&config, mapping.clone(), vec![])).unwrap_err();
    assert!(e.to_string().contains("gid mappings"), "{e}");
    let mut no_layers = image.clone();
    no_layers.lower_dirs.clear();
    assert!(
        plan_container(&PlanInput {
            image: &no_layers,
            ..input
        })
        .is_err()
    );
}

#[test]
fn a_user_namespaced_pod_plans_its_containers_in_its_namespace() {
    let range = |host_id| crate::userns::IdRange {
        container_id: 0,
        host_id,
        length: 65536,
    };
    let ns = crate::userns::UsernsSpec {
        uids: vec![range(100000)],
        gids: vec![range(100000)],
    };
    let p = PodContext {
        userns: Some(ns.clone()),
        ..pod()
    };
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        command: vec!["sh".into()],
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    };
    let image = ImageInfo {
        lower_dirs: vec!["/snap/1".into()],
        ..Default::default()
    };
    let passwd = root_passwd();
    let input = input_for(&config, &p, &image, &passwd);
    // A container that names no user namespace joins its pod's.
    let spec = plan_container(&input).unwrap();
    assert_eq!(spec.userns.as_ref(), Some(&ns));
    // The file systems the runtime mounts belong to the container's root and tty group.
    let data = |dest: &str| {
        spec.mounts
            .iter()
            .find(|m| m.destination == dest)
            .and_then(|m| match &m.kind {
                MountKind::Fs { data, .. } => Some(data.clone()),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(data("/dev"), "mode=755,size=65536k,uid=100000,gid=100000");
    assert_eq!(
        data("/dev/pts"),
        "newinstance,ptmxmode=0666,mode=0620,gid=100005"
    );
    assert_eq!(data("/proc"), "");
    // A user outside the mapping cannot be set.
    let mut outside = config.clone();
    outside.linux.as_mut().unwrap().security_context = Some(LinuxContainerSecurityContext {
        run_as_user: Some(k8s_cri::v1::Int64Value { value: 70000 }),
        ..Default::default()
    });
    let e = plan_with(&input, &outside).unwrap_err();
    assert!(e.to_string().contains("not mapped"), "{e}");
    // Nor the node's PID namespace, nor privilege.
    let mut host_pid = config.clone();
    host_pid.linux.as_mut().unwrap().security_context = Some(LinuxContainerSecurityContext {
        namespace_options: Some(NamespaceOption {
            pid: NamespaceMode::Node as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut privileged = config.clone();
    privileged.linux.as_mut().unwrap().security_context = Some(LinuxContainerSecurityContext {
        privileged: true,
        ..Default::default()
    });
    for c in [&host_pid, &privileged] {
        let r = plan_with(&input, c);
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    }
    // A volume may repeat the pod's mapping (then it is an ordinary bind, idmapped by
    // the monitor like every bind of the pod); another mapping is refused.
    let cri_map = |host_id| {
        vec![IdMapping {
            host_id,
            container_id: 0,
            length: 65536,
        }]
    };
    let volume = |host_id| Mount {
        container_path: "/data".into(),
        host_path: "/srv/data".into(),
        uid_mappings: cri_map(host_id),
        gid_mappings: cri_map(host_id),
        ..Default::default()
    };
    let planned = mounts_for_userns(&[volume(100000)], Some(&ns)).unwrap();
    assert!(planned[0].uid_mappings.is_empty() && planned[0].gid_mappings.is_empty());
    let e = mounts_for_userns(&[volume(200000)], Some(&ns)).unwrap_err();
    assert!(
        e.to_string().contains("pod's user namespace mapping"),
        "{e}"
    );
    // Without a user namespace the mapping stays, for plan_mounts to refuse.
    let kept = mounts_for_userns(&[volume(100000)], None).unwrap();
    assert_eq!(kept[0].uid_mappings, cri_map(100000));
}
