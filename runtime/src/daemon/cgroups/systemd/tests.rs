//! Tests of the systemd cgroup driver against a fake bus and a fake cgroup tree.
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::super::dbus::{Message, fake};
use super::*;
use crate::cgroups::create_in_fake_tree;

/// A fake host: a v2 root holding cpu memory pids io cpuset hugetlb.
fn fake_v2(dir: &Path) -> Vec<CgroupMount> {
    let root = dir.join("unified");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids rdma\n",
    )
    .unwrap();
    vec![CgroupMount {
        mount_point: root.display().to_string(),
        v2: true,
        controllers: vec![],
    }]
}

/// The value of property `name` in a StartTransientUnit call.
fn property<'a>(call: &'a Message, name: &str) -> Option<&'a Value> {
    let Some(Value::Array(_, props)) = call.body.get(2) else {
        return None;
    };
    props.iter().find_map(|p| match p {
        Value::Struct(f) if f[0] == Value::str(name) => match &f[1] {
            Value::Variant(v) => Some(&**v),
            _ => None,
        },
        _ => None,
    })
}

/// A fake systemd over the fake tree at `root`: StartTransientUnit makes the scope in
/// its slice with the pids, as systemd does; StopUnit of a unit it never started is
/// NoSuchUnit; units named `denied-*` are refused.
fn fake_systemd(socket: &Path, root: &Path, place: bool) -> Arc<Mutex<Vec<Message>>> {
    fake_systemd_over(socket, &[root.to_owned()], place)
}

/// [`fake_systemd`] over several hierarchies (systemd realizes a delegated unit in the
/// unified one and in each v1 hierarchy of a controller it manages).
fn fake_systemd_over(socket: &Path, roots: &[PathBuf], place: bool) -> Arc<Mutex<Vec<Message>>> {
    let roots = roots.to_vec();
    let started = Mutex::new(Vec::<String>::new());
    fake::serve(socket, move |call| {
        let unit = call.body.first().and_then(Value::as_str).unwrap_or("");
        match call.member.as_deref() {
            Some("StartTransientUnit") => {
                if unit.contains("denied") {
                    return Err((
                        "org.freedesktop.DBus.Error.AccessDenied".into(),
                        "Access denied".into(),
                    ));
                }
                let slice = property(call, "Slice").and_then(Value::as_str).unwrap();
                for root in roots.iter().filter(|_| place) {
                    let dir = root.join(systemd_slice(slice).unwrap()).join(unit);
                    std::fs::create_dir_all(&dir).unwrap();
                    let Some(Value::Array(_, pids)) = property(call, "PIDs") else {
                        panic!("no PIDs")
                    };
                    let Value::U32(pid) = pids[0] else { panic!() };
                    std::fs::write(dir.join("cgroup.procs"), format!("{pid}\n")).unwrap();
                }
                started.lock().unwrap().push(unit.to_owned());
                Ok(vec![Value::ObjectPath(
                    "/org/freedesktop/systemd1/job/7".into(),
                )])
            }
            Some("StopUnit") if started.lock().unwrap().iter().any(|u| u == unit) => {
                Ok(vec![Value::ObjectPath(
                    "/org/freedesktop/systemd1/job/8".into(),
                )])
            }
            Some("StopUnit") => Err((NO_SUCH_UNIT.into(), format!("Unit {unit} not loaded."))),
            _ => Err((
                "org.freedesktop.DBus.Error.UnknownMethod".into(),
                "no".into(),
            )),
        }
    })
}

fn private(path: PathBuf) -> Vec<BusAddress> {
    vec![BusAddress { path, bus: false }]
}

/// Removes the regular files of a fake tree: on cgroupfs they vanish with their
/// directory, on a tmpfs they would keep rmdir from succeeding.
/// A fake node in `dir`: cgroup v2 at `dir/unified`, and a fake systemd that places what it
/// starts, on the private bus `dir/private`. Returns the cgroup root, the calls systemd
/// receives, and a manager using that bus.
fn systemd_on_private_bus(dir: &Path) -> (PathBuf, Arc<Mutex<Vec<Message>>>, Systemd) {
    let root = dir.join("unified");
    let mounts = fake_v2(dir);
    let calls = fake_systemd(&dir.join("private"), &root, true);
    let sd = Systemd::new(&mounts, "berth.slice", 0, private(dir.join("private"))).unwrap();
    (root, calls, sd)
}

fn strip_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            strip_files(&e.path());
        } else {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
}

#[test]
fn pods_are_scopes_in_kubelets_slice_or_berths_own() {
    let t = tempfile::tempdir().unwrap();
    let sd = Systemd::new(&fake_v2(t.path()), "berth.slice", 0, Vec::new()).unwrap();
    let p = sd
        .place_pod("abc", "kubepods-burstable-pod12.slice")
        .unwrap();
    let scope = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice/\
                     berth-abc.scope";
    assert_eq!(
        p,
        PodCgroup {
            pod: scope.into(),
            owned: true,
            monitor: format!("{scope}/monitor"),
        }
    );
    assert_eq!(sd.container_cgroup(&p, "c1"), format!("{scope}/c1"));
    assert_eq!(
        scope_unit(&p.pod),
        Some(("berth-abc.scope", "kubepods-burstable-pod12.slice"))
    );
    let own = sd.place_pod("abc", "").unwrap();
    assert_eq!(own.pod, "/berth.slice/berth-abc.scope");
    assert_eq!(
        scope_unit("/berth-x.scope"),
        Some(("berth-x.scope", "-.slice"))
    );
    let e = sd.place_pod("abc", "/kubepods/burstable/pod1").unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("driver = \"cgroupfs\""), "{e}");
    assert!(matches!(
        sd.place_pod("abc", "a--b.slice"),
        Err(Error::InvalidArgument(_))
    ));
    assert!(Systemd::new(&fake_v2(t.path()), "/berth", 0, Vec::new()).is_err());
}

#[test]
fn a_pod_is_a_delegated_scope_with_its_monitor_in_a_leaf() {
    let t = tempfile::tempdir().unwrap();
    let (root, calls, sd) = systemd_on_private_bus(t.path());
    let pod = sd.place_pod("p1", "kubepods-pod12.slice").unwrap();
    assert!(sd.create_pod(&pod, None).unwrap().is_empty());
    sd.attach_monitor(&pod, 4242).unwrap();

    let call = calls.lock().unwrap()[0].clone();
    assert_eq!(call.member.as_deref(), Some("StartTransientUnit"));
    assert_eq!(call.interface.as_deref(), Some(MANAGER));
    assert_eq!(call.destination.as_deref(), Some(SYSTEMD));
    assert_eq!(call.signature(), "ssa(sv)a(sa(sv))");
    assert_eq!(call.body[0], Value::str("berth-p1.scope"));
    assert_eq!(call.body[1], Value::str("fail"));
    assert_eq!(
        property(&call, "Slice"),
        Some(&Value::str("kubepods-pod12.slice"))
    );
    assert_eq!(
        property(&call, "PIDs"),
        Some(&Value::Array("u".into(), vec![Value::U32(4242)]))
    );
    assert_eq!(property(&call, "Delegate"), Some(&Value::Bool(true)));
    assert_eq!(
        property(&call, "DefaultDependencies"),
        Some(&Value::Bool(false))
    );
    assert_eq!(
        property(&call, "Description"),
        Some(&Value::str("Berth pod p1"))
    );
    assert_eq!(
        property(&call, "CollectMode"),
        Some(&Value::str("inactive-or-failed"))
    );

    let scope = root.join("kubepods.slice/kubepods-pod12.slice/berth-p1.scope");
    let read = |p: &str| std::fs::read_to_string(scope.join(p)).unwrap();
    assert_eq!(read("monitor/cgroup.procs"), "4242");
    // Controllers pass down from the scope only once the monitor left its root.
    assert_eq!(read("cgroup.subtree_control"), "+cpu +memory +pids +io");

    let r = LinuxContainerResources {
        memory_limit_in_bytes: 1 << 20,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        ..Default::default()
    };
    let (c, procs) = create_in_fake_tree(&sd, &pod, "c1", &r);
    assert_eq!(procs, vec![scope.join("c1/cgroup.procs")]);
    assert_eq!(read("c1/memory.max"), "1048576");
    assert_eq!(read("c1/cpu.max"), "50000 100000");
    sd.update_container(
        &c,
        &LinuxContainerResources {
            memory_limit_in_bytes: 2 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(read("c1/memory.max"), "2097152");
    std::fs::write(scope.join("memory.current"), "8192\n").unwrap();
    assert_eq!(sd.usage(&pod.pod).memory_usage, Some(8192));

    strip_files(&scope);
    sd.remove_pod(&pod).unwrap();
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].member.as_deref(), Some("StopUnit"));
    assert_eq!(
        calls[1].body,
        vec![Value::str("berth-p1.scope"), Value::str("replace")]
    );
    assert!(!scope.exists(), "the scope and its leaves are gone");
    assert!(root.join("kubepods.slice/kubepods-pod12.slice").exists());
}

#[test]
fn hybrid_hosts_get_the_monitor_and_limits_in_every_hierarchy() {
    let t = tempfile::tempdir().unwrap();
    let dir = |p: &str| t.path().join(p);
    for h in ["unified", "memory", "cpuset"] {
        std::fs::create_dir_all(dir(h)).unwrap();
    }
    std::fs::write(dir("unified/cgroup.controllers"), "").unwrap();
    std::fs::write(dir("cpuset/cpuset.cpus"), "0-3\n").unwrap();
    std::fs::write(dir("cpuset/cpuset.mems"), "0\n").unwrap();
    let v1 = |h: &str| CgroupMount {
        mount_point: dir(h).display().to_string(),
        v2: false,
        controllers: vec![h.to_owned()],
    };
    let mounts = vec![
        CgroupMount {
            mount_point: dir("unified").display().to_string(),
            v2: true,
            controllers: vec![],
        },
        v1("memory"),
        v1("cpuset"),
    ];
    // systemd manages memory on v1 but not cpuset: the scope appears in two of three.
    let calls = fake_systemd_over(&dir("private"), &[dir("unified"), dir("memory")], true);
    let sd = Systemd::new(&mounts, "berth.slice", 0, private(dir("private"))).unwrap();
    let pod = sd.place_pod("p1", "kubepods-pod1.slice").unwrap();
    sd.attach_monitor(&pod, 99).unwrap();
    assert_eq!(calls.lock().unwrap().len(), 1);
    let scope = "kubepods.slice/kubepods-pod1.slice/berth-p1.scope";
    let read = |p: String| std::fs::read_to_string(dir(&p)).unwrap();
    for h in ["unified", "memory", "cpuset"] {
        assert_eq!(
            read(format!("{h}/{scope}/monitor/cgroup.procs")),
            "99",
            "{h}"
        );
    }
    // Berth made the levels systemd did not, with the parent's CPUs and memory nodes.
    assert_eq!(read(format!("cpuset/{scope}/monitor/cpuset.cpus")), "0-3");
    assert_eq!(read(format!("cpuset/{scope}/cpuset.mems")), "0");
    // No controller on the unified hierarchy: nothing to pass down.
    assert!(!dir(&format!("unified/{scope}/cgroup.subtree_control")).exists());
    let r = LinuxContainerResources {
        memory_limit_in_bytes: 1 << 20,
        ..Default::default()
    };
    let (_, procs) = create_in_fake_tree(&sd, &pod, "c1", &r);
    assert_eq!(procs.len(), 3);
    assert_eq!(
        read(format!("memory/{scope}/c1/memory.limit_in_bytes")),
        "1048576"
    );
}

#[test]
fn pod_resources_become_properties_of_scopes_in_berths_own_slice() {
    let t = tempfile::tempdir().unwrap();
    let (_, calls, sd) = systemd_on_private_bus(t.path());
    let r = LinuxContainerResources {
        memory_limit_in_bytes: 1 << 30,
        cpu_shares: 1024,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        ..Default::default()
    };
    let own = sd.place_pod("p1", "").unwrap();
    sd.create_pod(&own, Some(&r)).unwrap();
    sd.attach_monitor(&own, 5).unwrap();
    let kubelets = sd.place_pod("p2", "kubepods-pod2.slice").unwrap();
    sd.create_pod(&kubelets, Some(&r)).unwrap();
    sd.attach_monitor(&kubelets, 6).unwrap();
    let calls = calls.lock().unwrap();
    assert_eq!(property(&calls[0], "MemoryMax"), Some(&Value::U64(1 << 30)));
    assert_eq!(property(&calls[0], "CPUWeight"), Some(&Value::U64(39)));
    assert_eq!(
        property(&calls[0], "CPUQuotaPerSecUSec"),
        Some(&Value::U64(500_000))
    );
    assert_eq!(property(&calls[0], "CPUQuotaPeriodUSec"), None);
    // kubelet limits its own pod slice: the scope in it gets nothing of its own.
    assert!(property(&calls[1], "PIDs").is_some());
    assert_eq!(property(&calls[1], "MemoryMax"), None);
    assert_eq!(property(&calls[1], "CPUWeight"), None);
    assert!(sd.pending.lock().unwrap().is_empty());
}

#[test]
fn resource_properties_follow_the_controllers_version() {
    let r = LinuxContainerResources {
        memory_limit_in_bytes: 4096,
        cpu_shares: 512,
        cpu_quota: 33_333,
        cpu_period: 50_000,
        ..Default::default()
    };
    let names = |v1: bool| -> Vec<(String, Value)> {
        resource_properties(&r, |_| v1)
            .unwrap()
            .into_iter()
            .map(|p| match p {
                Value::Struct(f) => match (&f[0], &f[1]) {
                    (Value::Str(n), Value::Variant(v)) => (n.clone(), (**v).clone()),
                    _ => panic!(),
                },
                _ => panic!(),
            })
            .collect()
    };
    let v1 = names(true);
    assert_eq!(v1[0], ("MemoryLimit".into(), Value::U64(4096)));
    assert_eq!(v1[1], ("CPUShares".into(), Value::U64(512)));
    // 33333 / 50000 of a CPU is 666660 us a second, rounded up to a whole percent.
    assert_eq!(v1[2], ("CPUQuotaPerSecUSec".into(), Value::U64(670_000)));
    assert_eq!(v1[3], ("CPUQuotaPeriodUSec".into(), Value::U64(50_000)));
    let v2 = names(false);
    assert_eq!(v2[0].0, "MemoryMax");
    assert_eq!(
        v2[1],
        ("CPUWeight".into(), Value::U64(shares_to_weight(512)))
    );
    let huge = LinuxContainerResources {
        cpu_quota: i64::MAX,
        cpu_period: 1,
        ..Default::default()
    };
    assert!(!resource_properties(&huge, |_| false).unwrap().is_empty());
    let bad = LinuxContainerResources {
        cpu_shares: -1,
        ..Default::default()
    };
    assert!(matches!(
        resource_properties(&bad, |_| false),
        Err(Error::InvalidArgument(_))
    ));
    assert!(
        resource_properties(&LinuxContainerResources::default(), |_| false)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_unit_systemd_no_longer_has_is_removed() {
    let t = tempfile::tempdir().unwrap();
    let (root, calls, sd) = systemd_on_private_bus(t.path());
    let pod = sd.place_pod("never", "").unwrap();
    sd.remove_pod(&pod).unwrap();
    assert_eq!(calls.lock().unwrap()[0].member.as_deref(), Some("StopUnit"));
    // A record of the cgroupfs driver is removed through cgroupfs, without systemd.
    std::fs::create_dir_all(root.join("berth/p2/p2")).unwrap();
    sd.remove_pod(&PodCgroup {
        pod: "/berth/p2".into(),
        owned: true,
        monitor: "/berth/p2/p2".into(),
    })
    .unwrap();
    assert!(!root.join("berth/p2").exists());
    assert_eq!(calls.lock().unwrap().len(), 1);
}

#[test]
fn the_system_bus_is_the_fallback_and_gets_hello_first() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("unified");
    let mounts = fake_v2(t.path());
    let calls = fake_systemd(&t.path().join("bus"), &root, true);
    let buses = vec![
        BusAddress {
            path: t.path().join("missing"),
            bus: false,
        },
        BusAddress {
            path: t.path().join("bus"),
            bus: true,
        },
    ];
    let sd = Systemd::new(&mounts, "berth.slice", 0, buses).unwrap();
    let pod = sd.place_pod("p1", "").unwrap();
    sd.attach_monitor(&pod, 7).unwrap();
    let calls = calls.lock().unwrap();
    let members: Vec<_> = calls.iter().map(|c| c.member.clone().unwrap()).collect();
    assert_eq!(members, ["Hello", "StartTransientUnit"]);
    assert_eq!(
        calls[0].destination.as_deref(),
        Some("org.freedesktop.DBus")
    );
    assert_eq!(
        std::fs::read_to_string(root.join("berth.slice/berth-p1.scope/monitor/cgroup.procs"))
            .unwrap(),
        "7"
    );
}

#[test]
fn failures_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("unified");
    let mounts = fake_v2(t.path());
    // No systemd at all.
    let sd = Systemd::new(&mounts, "berth.slice", 0, private(t.path().join("none"))).unwrap();
    let pod = sd.place_pod("p1", "").unwrap();
    let e = sd.attach_monitor(&pod, 7).unwrap_err();
    let m = e.full_message();
    assert!(
        m.starts_with("systemd: start berth-p1.scope in berth.slice: connect to d-bus socket"),
        "{m}"
    );
    assert!(m.contains("none"), "{m}");
    assert!(sd.remove_pod(&pod).is_err());

    // systemd refuses.
    fake_systemd(&t.path().join("private"), &root, true);
    let sd = Systemd::new(&mounts, "berth.slice", 0, private(t.path().join("private"))).unwrap();
    let pod = sd.place_pod("denied", "").unwrap();
    let m = sd.attach_monitor(&pod, 7).unwrap_err().full_message();
    assert_eq!(
        m,
        "systemd: start berth-denied.scope in berth.slice: \
             org.freedesktop.DBus.Error.AccessDenied: Access denied"
    );

    // systemd accepts, but the monitor never shows in the scope.
    fake_systemd(&t.path().join("lazy"), &root, false);
    let mut sd = Systemd::new(&mounts, "berth.slice", 0, private(t.path().join("lazy"))).unwrap();
    sd.scope_wait = Duration::from_millis(50);
    let pod = sd.place_pod("p3", "").unwrap();
    let m = sd.attach_monitor(&pod, 7).unwrap_err().to_string();
    assert!(m.contains("berth-p3.scope") && m.contains("pid 7"), "{m}");
}
