//! The node's own files: what an unprivileged node user or a pod can read or redirect.
//!
//! A node user (`nobody`, run through `setpriv`) tries to read what the daemon keeps for its
//! pods: the metadata database (every container's environment), the writable layers (where
//! a container's root can leave a setuid binary), the pod run dirs and the OCI bundles; and
//! to connect to the CRI socket. Each must be refused with EACCES by the modes Berth sets,
//! while the containers' own users still read what their pod gives them. A pod spec's log
//! location must not lead the monitor, which writes as root, onto a node file.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_e2e::fixtures::{
    busybox_daemon, container_config, daemon_with, exec_ok, linux_security, list_pods, log_dir,
    pod_config, pull, remove_pod, run_pod, run_pod_refused, start_container, wait_exited,
};
use berth_e2e::{Daemon, images};
use k8s_cri::v1::*;
use tonic::Code;

/// The node's unprivileged user the checks run as.
const NOBODY: u32 = 65534;

/// Runs `args` on the node as `nobody`, without supplementary groups.
fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
            "--clear-groups",
            "--",
        ])
        .args(args)
        .output()
        .expect("run setpriv")
}

/// Asserts that `nobody` running `args` is refused with EACCES, and that the node's root
/// running the same succeeds (so the refusal is the mode's doing, not a wrong path).
fn assert_refused(what: &str, args: &[&str]) {
    let out = as_nobody(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Permission denied"),
        "nobody could {what} ({args:?}): status {}, stdout {:?}, stderr {stderr:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let root = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        root.status.success(),
        "the node's root could not {what} either ({args:?}): {}",
        String::from_utf8_lossy(&root.stderr)
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Connects to the unix socket `path` from a thread running as `nobody` alone: the raw
/// syscalls change that thread's credentials only (glibc's wrappers would change every
/// thread's), and the thread ends right after.
fn connect_as_nobody(path: PathBuf) -> std::io::Result<()> {
    std::thread::spawn(move || {
        // SAFETY: raw credential syscalls with integer arguments, for this thread only.
        let dropped = unsafe {
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                && libc::syscall(libc::SYS_setresgid, NOBODY, NOBODY, NOBODY) == 0
                && libc::syscall(libc::SYS_setresuid, NOBODY, NOBODY, NOBODY) == 0
        };
        assert!(dropped, "{}", std::io::Error::last_os_error());
        std::os::unix::net::UnixStream::connect(&path).map(drop)
    })
    .join()
    .expect("the connecting thread")
}

/// Every path from `/` to `dir` can be passed by `nobody`, so what refuses it below is
/// Berth's modes (the harness's workdir is 0755).
fn assert_reachable(dir: &Path) {
    let out = as_nobody(&["stat", "-c", "%a", s(dir)]);
    assert!(
        out.status.success(),
        "nobody cannot even reach {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_as(mut c: ContainerConfig, uid: i64) -> ContainerConfig {
    c.linux = Some(linux_security(LinuxContainerSecurityContext {
        run_as_user: Some(Int64Value { value: uid }),
        ..Default::default()
    }));
    c
}

/// The node paths of a container's pod and container cgroups (the two levels Berth
/// creates) in the pids hierarchy (v1) or the unified one, from its `/proc/self/cgroup`.
fn container_cgroup_dirs(proc_cgroup: &str) -> Vec<PathBuf> {
    let v1 = Path::new("/sys/fs/cgroup/pids");
    let (base, rel) = proc_cgroup
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let (ctrls, path) = rest.split_once(':')?;
            match (v1.is_dir(), ctrls) {
                (true, c) if c.split(',').any(|c| c == "pids") => Some((v1, path)),
                (false, "") => Some((Path::new("/sys/fs/cgroup"), path)),
                _ => None,
            }
        })
        .unwrap_or_else(|| panic!("no pids cgroup in {proc_cgroup:?}"));
    let container = base.join(rel.trim_start_matches('/'));
    let pod = container.parent().unwrap().to_owned();
    vec![pod, container]
}

/// What a non-root user of a container must still do: read the pod's hosts files, list and
/// pass `/`, use `/dev/shm`.
async fn assert_container_user_reads_its_pod_files(d: &Daemon, id: &str) {
    assert_eq!(exec_ok(d, id, &["id", "-u"]).await.trim(), "1000");
    let hosts = exec_ok(d, id, &["cat", "/etc/hosts"]).await;
    assert!(hosts.contains("localhost"), "{hosts}");
    exec_ok(d, id, &["cat", "/etc/resolv.conf"]).await;
    exec_ok(d, id, &["cat", "/etc/hostname"]).await;
    let root = exec_ok(d, id, &["ls", "/"]).await;
    assert!(
        root.contains("bin") && root.contains("etc"),
        "ls / shows {root:?}"
    );
    assert_eq!(
        exec_ok(d, id, &["stat", "-c", "%a", "/"]).await.trim(),
        "755"
    );
    assert_eq!(
        exec_ok(
            d,
            id,
            &["stat", "-c", "%a", "/etc/hosts", "/etc/resolv.conf"]
        )
        .await
        .split_whitespace()
        .collect::<Vec<_>>(),
        ["644", "644"]
    );
    exec_ok(
        d,
        id,
        &[
            "sh",
            "-c",
            "echo x > /dev/shm/by-1000 && cat /dev/shm/by-1000",
        ],
    )
    .await;
}

/// The class the issue found on main: `berth.db` (every container's environment, Secrets
/// included) readable by any local user, and a container's writable layer listable by any
/// local user, where a container's root can leave a setuid binary.
#[tokio::test]
async fn node_users_cannot_read_pod_data_and_pod_users_still_read_their_files() {
    let d = daemon_with("[runtimes.runc]\npath = \"/usr/sbin/runc\"\n").await;
    pull(&d, images::BUSYBOX).await;
    let (root, state) = (d.dir().root(), d.dir().state());
    let secret = format!("hunter2-{}", std::process::id());
    let logs = log_dir(&d);
    let config = pod_config("private", &logs);
    let pod = run_pod(&d, &config).await;
    let mut writer = container_config("writer", &["sleep", "3600"]);
    writer.envs.push(KeyValue {
        key: "SECRET_TOKEN".into(),
        value: secret.clone(),
    });
    let writer = start_container(&d, &pod, &config, writer).await;
    // The container's root leaves a file and a setuid binary in its writable layer.
    exec_ok(
        &d,
        &writer,
        &[
            "sh",
            "-c",
            "echo layer-secret > /in-layer && mkdir /suid && cp /bin/busybox /suid/ && chmod 4755 /suid/busybox",
        ],
    )
    .await;
    // A handler pod: its container has an OCI bundle holding the environment.
    let runc_config = pod_config("private-runc", &logs);
    let runc_pod = d
        .runtime()
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(runc_config.clone()),
            runtime_handler: "runc".into(),
        })
        .await
        .expect("RunPodSandbox runc")
        .into_inner()
        .pod_sandbox_id;
    let mut bundled = container_config("bundled", &["sleep", "3600"]);
    bundled.envs.push(KeyValue {
        key: "SECRET_TOKEN".into(),
        value: secret.clone(),
    });
    let bundled = start_container(&d, &runc_pod, &runc_config, bundled).await;

    let db = root.join("berth.db");
    let upper = root.join("containers").join(&writer).join("upper");
    let run_dir = state.join("pods").join(&pod);
    let bundle = state.join("containers").join(&bundled).join("bundle");
    // What is at stake: the secret is there in clear for the node's root.
    for f in [&db, &bundle.join("config.json")] {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} does not hold the environment; the test would prove nothing",
            f.display()
        );
    }
    assert_eq!(
        std::fs::read_to_string(upper.join("in-layer")).unwrap(),
        "layer-secret\n"
    );

    // The modes themselves.
    assert_eq!(mode(&root), 0o711, "root");
    assert_eq!(mode(&state), 0o711, "state");
    assert_eq!(mode(&db), 0o600, "berth.db");
    for dir in [
        root.join("containers"),
        root.join("content"),
        root.join("snapshots"),
        state.join("pods"),
        state.join("containers"),
        state.join("runtimes"),
        run_dir.clone(),
        root.join("containers").join(&writer),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    assert_eq!(mode(&d.dir().socket()), 0o660, "CRI socket");
    assert_eq!(mode(&run_dir.join("monitor.sock")), 0o600, "monitor socket");
    assert_eq!(mode(&run_dir.join("monitor.json")), 0o600, "monitor config");
    assert_eq!(mode(&bundle.join("config.json")), 0o600, "OCI config.json");
    // What containers see keeps an explicit, open mode.
    assert_eq!(mode(&upper), 0o755, "writable layer = the container's /");
    for f in ["hosts", "hostname", "resolv.conf"] {
        assert_eq!(mode(&run_dir.join(f)), 0o644, "pod {f}");
    }
    // CRI logs are kubelet's, as containerd writes them.
    let log = logs.join("writer.log");
    assert_eq!(mode(&log), 0o640, "CRI log file");
    assert_eq!(std::fs::metadata(&log).unwrap().uid(), 0);

    // As a node user: everything refused with EACCES.
    assert_reachable(&root);
    assert_reachable(&state);
    // Not even the file's existence is hidden by root's 0711; its own mode refuses it.
    assert!(as_nobody(&["stat", s(&db)]).status.success());
    assert_refused("read berth.db", &["cat", s(&db)]);
    assert_refused("list root/containers", &["ls", s(&root.join("containers"))]);
    assert_refused("list the writable layer", &["ls", s(&upper)]);
    assert_refused(
        "read a file in the writable layer",
        &["cat", s(&upper.join("in-layer"))],
    );
    // Through `env`: setpriv itself still holds its capabilities when it execs.
    assert_refused(
        "run the container's setuid binary",
        &["env", s(&upper.join("suid/busybox")), "true"],
    );
    assert_refused("list the pod's run dir", &["ls", s(&run_dir)]);
    assert_refused(
        "read the pod's monitor config",
        &["cat", s(&run_dir.join("monitor.json"))],
    );
    assert_refused("list the OCI bundle", &["ls", s(&bundle)]);
    assert_refused(
        "read the OCI config.json",
        &["cat", s(&bundle.join("config.json"))],
    );
    assert_refused("list the image store", &["ls", s(&root.join("snapshots"))]);
    assert_refused("list the content store", &["ls", s(&root.join("content"))]);
    let err = connect_as_nobody(d.dir().socket()).expect_err("nobody connected to CRI");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");

    // Inside, a non-root user still reads the pod's files and passes `/`.
    let as_user = || run_as(container_config("user", &["sleep", "3600"]), 1000);
    let user = start_container(&d, &pod, &config, as_user()).await;
    assert_container_user_reads_its_pod_files(&d, &user).await;
    // Its cgroup (what a cgroup v2 container mounts as its /sys/fs/cgroup) is open to read
    // as runc makes it: cgroupfs would otherwise apply the daemon's umask.
    for dir in container_cgroup_dirs(&exec_ok(&d, &user, &["cat", "/proc/self/cgroup"]).await) {
        assert_eq!(mode(&dir), 0o755, "{}", dir.display());
    }
    // And so in a runc pod (the runtime runs with containerd's umask, not the daemon's).
    let runc_user = start_container(&d, &runc_pod, &runc_config, as_user()).await;
    assert_eq!(
        exec_ok(&d, &runc_user, &["stat", "-c", "%a", "/"])
            .await
            .trim(),
        "755"
    );
    let hosts = exec_ok(&d, &runc_user, &["cat", "/etc/hosts"]).await;
    assert!(hosts.contains("localhost"), "{hosts}");

    remove_pod(&d, &runc_pod).await;
    remove_pod(&d, &pod).await;
}

/// A user-namespaced pod: its containers reach the hosts files and `/` through idmapped
/// mounts, as an unprivileged host range; a non-root user there still reads them.
#[tokio::test]
async fn a_non_root_user_of_an_idmapped_pod_reads_its_pod_files() {
    let d = busybox_daemon().await;
    let u = UserNamespace {
        mode: NamespaceMode::Pod as i32,
        uids: vec![IdMapping {
            host_id: 165536,
            container_id: 0,
            length: 65536,
        }],
        gids: vec![IdMapping {
            host_id: 165536,
            container_id: 0,
            length: 65536,
        }],
    };
    let mut config = pod_config("idmapped-files", &log_dir(&d));
    config.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                userns_options: Some(u.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = run_pod(&d, &config).await;
    let mut c = run_as(container_config("user", &["sleep", "3600"]), 1000);
    let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    sc.namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Container as i32,
        userns_options: Some(u),
        ..Default::default()
    });
    let id = start_container(&d, &pod, &config, c).await;
    // Really in the host range: uid 1000 inside is 166536 outside.
    let uid_map = exec_ok(&d, &id, &["cat", "/proc/self/uid_map"]).await;
    assert!(uid_map.contains("165536"), "{uid_map}");
    assert_container_user_reads_its_pod_files(&d, &id).await;
    // The pod's data stays closed to node users all the same.
    let upper = d.dir().root().join("containers").join(&id).join("upper");
    assert_eq!(mode(&upper), 0o755);
    assert_refused("list the writable layer", &["ls", s(&upper)]);
    remove_pod(&d, &pod).await;
}

/// The monitor writes CRI logs as root: a log path must not lead it onto a node file, by a
/// symlink planted where the log goes or by `..` in the path kubelet relays from the pod.
#[tokio::test]
async fn a_log_path_cannot_write_through_a_symlink_or_climb_out_of_the_log_directory() {
    let d = busybox_daemon().await;
    let logs = log_dir(&d);
    std::fs::create_dir_all(&logs).unwrap();
    let node_file = d.dir().path().join("node-file");
    std::fs::write(&node_file, b"node data\n").unwrap();
    let link = logs.join("planted.log");
    std::os::unix::fs::symlink(&node_file, &link).unwrap();
    let config = pod_config("logs", &logs);
    let pod = run_pod(&d, &config).await;
    let no_containers = |d: &Daemon| {
        let mut rt = d.runtime();
        async move {
            rt.list_containers(ListContainersRequest::default())
                .await
                .unwrap()
                .into_inner()
                .containers
        }
    };

    // The planted link: the container is not created, and nothing is written through it.
    let mut c = container_config("planted", &["echo", "through the link"]);
    c.log_path = "planted.log".into();
    let create = |c: ContainerConfig| {
        let mut rt = d.runtime();
        let (pod, config) = (pod.clone(), config.clone());
        async move {
            rt.create_container(CreateContainerRequest {
                pod_sandbox_id: pod,
                config: Some(c),
                sandbox_config: Some(config),
            })
            .await
        }
    };
    let err = create(c.clone())
        .await
        .expect_err("created through a symlink");
    assert!(
        err.message().contains("planted.log") && err.message().contains("symbolic links"),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&node_file).unwrap(), b"node data\n");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(no_containers(&d).await.is_empty(), "a container was left");
    let left: Vec<_> = std::fs::read_dir(d.dir().root().join("containers"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "writable layers left: {left:?}");

    // Without the link, the same container logs to a file of its own.
    std::fs::remove_file(&link).unwrap();
    let id = start_container(&d, &pod, &config, c).await;
    wait_exited(&d, &id).await;
    let text = std::fs::read_to_string(&link).unwrap();
    assert!(text.contains("stdout F through the link"), "{text}");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    assert_eq!(std::fs::read(&node_file).unwrap(), b"node data\n");
    d.runtime()
        .remove_container(RemoveContainerRequest { container_id: id })
        .await
        .unwrap();

    // `..` and absolute log paths are refused before anything is made.
    for bad in ["../../x", "c/../../../x", "/etc/berth-e2e-x", "c/"] {
        let mut c = container_config("climber", &["echo", "out"]);
        c.log_path = bad.into();
        let err = create(c).await.expect_err("a bad log_path was accepted");
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
        assert!(
            err.message().contains("log_path") && err.message().contains(bad),
            "{err:?}"
        );
        assert!(
            no_containers(&d).await.is_empty(),
            "{bad}: a container was left"
        );
    }
    assert!(!d.dir().path().parent().unwrap().join("x").exists());
    assert!(!Path::new("/etc/berth-e2e-x").exists());

    // A pod's log directory must be absolute.
    let before = list_pods(&d).await.len();
    let mut relative = pod_config("relative-logs", &logs);
    relative.log_directory = "var/log/pods/x".into();
    let err = run_pod_refused(&d, &relative).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("log_directory"), "{err:?}");
    let after = list_pods(&d).await.len();
    assert_eq!(before, after, "a pod was left");
    remove_pod(&d, &pod).await;
}
