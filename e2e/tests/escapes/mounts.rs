//! Mounts, /dev, /proc and the runtime's own writes into the container: a volume or an image
//! symlink that would make the runtime mount, mask or write somewhere else than it means to.

use std::path::Path;

use berth_e2e::fixtures::{
    assert_refused, bind, busybox_pod, container_config, create_refused, exec_sync, exec_url,
    host_dir, image_spec, linux_security, list_containers, pull, remove_pod, start_container,
};
use berth_e2e::oci::LayerBuilder;
use berth_e2e::{Daemon, images};
use berth_test_support::streaming_client::{self as client, ExecOptions, Transport};
use k8s_cri::v1::*;
use tonic::Code;

fn core_pattern() -> String {
    std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap()
}

fn with_caps(name: &str, command: &[&str], caps: &[&str]) -> ContainerConfig {
    let mut c = container_config(name, command);
    c.linux = Some(linux_security(LinuxContainerSecurityContext {
        capabilities: Some(Capability {
            add_capabilities: caps.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }));
    c
}

/// Creates `c` in the pod, which must be refused as an invalid argument naming `needle`,
/// leaving no container behind.
async fn refused_with_nothing_made(
    d: &Daemon,
    pod: &str,
    config: &PodSandboxConfig,
    c: ContainerConfig,
    needle: &str,
) {
    let err = create_refused(d, pod, config, c).await;
    assert_refused(&err, Code::InvalidArgument, needle);
    assert!(list_containers(d).await.is_empty());
}

/// The masking that hides /proc/keys, /proc/kcore and the rest binds the node's /dev/null,
/// opened on the node and checked to be 1:3: a volume at /dev whose `null` is a symlink to
/// the node's core_pattern cannot get that file bound read-write over them. Such a volume
/// gets no device nodes either (it is the node's directory).
#[tokio::test]
async fn cve_2025_31133_a_volume_at_dev_cannot_redirect_the_masking() {
    let (d, config, pod) = busybox_pod("dev-null").await;
    let dev = host_dir(&d, "planted-dev");
    std::os::unix::fs::symlink("/proc/sys/kernel/core_pattern", dev.join("null")).unwrap();
    let before = core_pattern();
    let mut c = container_config("victim", &["sleep", "3600"]);
    c.mounts = vec![bind("/dev", &dev)];
    let id = start_container(&d, &pod, &config, c).await;

    for masked in ["/proc/keys", "/proc/kcore", "/proc/timer_list"] {
        let (ls, err, code) = exec_sync(&d, &id, &["ls", "-lL", masked]).await;
        if code != 0 && err.contains("No such file") {
            continue; // not every kernel has every file
        }
        assert!(
            ls.starts_with('c') && ls.contains("1,   3"),
            "{masked} is not masked by the node's /dev/null: {ls} {err}"
        );
        let (content, _, _) = exec_sync(&d, &id, &["cat", masked]).await;
        assert!(content.is_empty(), "{masked} shows {content:?}");
    }
    let (_, _, _) = exec_sync(
        &d,
        &id,
        &["sh", "-c", "echo '|/bin/berth-escape' > /proc/keys"],
    )
    .await;
    assert_eq!(core_pattern(), before, "the node's core_pattern changed");
    let (mountinfo, _, _) = exec_sync(&d, &id, &["cat", "/proc/self/mountinfo"]).await;
    assert!(
        !mountinfo.contains("core_pattern"),
        "core_pattern is mounted in the container:\n{mountinfo}"
    );
    let mut left: Vec<String> = std::fs::read_dir(&dev)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["null"],
        "device nodes were made in the node's directory"
    );
    assert!(
        std::fs::symlink_metadata(dev.join("null"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    remove_pod(&d, &pod).await;
}

/// Where the runtime makes a device node, something already there must be that very node:
/// a volume over `/dev/null` is refused, by name, rather than reused or followed.
#[tokio::test]
async fn cve_2025_31133_an_entry_where_a_device_node_goes_is_refused() {
    let (d, config, pod) = busybox_pod("dev-entry").await;
    let file = d.dir().path().join("not-null");
    std::fs::write(&file, "a file of the node\n").unwrap();
    let mut c = container_config("planted", &["sleep", "3600"]);
    c.mounts = vec![Mount {
        container_path: "/dev/null".into(),
        host_path: file.display().to_string(),
        ..Default::default()
    }];
    let err = create_refused(&d, &pod, &config, c).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("/dev/null") && err.message().contains("already there"),
        "{}",
        err.message()
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "a file of the node\n"
    );
    assert!(list_containers(&d).await.is_empty());
    remove_pod(&d, &pod).await;
}

/// A volume on /proc (or under it) would replace what the runtime writes its AppArmor
/// profile and oom_score_adj into, and what it masks; on /sys it would cover kernel knobs.
/// Each is refused naming the mount, before anything is made.
#[tokio::test]
async fn cve_2019_16884_and_cve_2019_19921_volumes_on_proc_and_sys_are_refused() {
    let (d, config, pod) = busybox_pod("proc-volume").await;
    let fake = host_dir(&d, "fake-proc");
    for dest in [
        "/proc",
        "/proc/self/attr",
        "/proc/sys/kernel",
        "/sys",
        "/sys/kernel/mm",
    ] {
        let mut c = container_config("fake-proc", &["sleep", "3600"]);
        c.mounts = vec![bind(dest, &fake)];
        let err = create_refused(&d, &pod, &config, c).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{dest}: {err:?}");
        assert!(
            err.message()
                .contains(&format!("mount {dest}: a volume cannot be mounted on")),
            "{dest}: {}",
            err.message()
        );
    }
    // A symlink in a volume that leads a later mount onto procfs is caught where it lands.
    let vol = host_dir(&d, "links");
    std::os::unix::fs::symlink("/proc/sys", vol.join("sys")).unwrap();
    let mut c = container_config("via-link", &["sleep", "3600"]);
    c.mounts = vec![bind("/vol", &vol), bind("/vol/sys/kernel", &fake)];
    refused_with_nothing_made(
        &d,
        &pod,
        &config,
        c,
        "mount /vol/sys/kernel: its target resolves onto procfs",
    )
    .await;
    assert_eq!(std::fs::read_dir(&fake).unwrap().count(), 0);
    remove_pod(&d, &pod).await;
}

/// An image whose `/proc` is a symlink cannot move the runtime's procfs elsewhere, where a
/// volume could stand in for it.
#[tokio::test]
async fn cve_2019_19921_an_image_cannot_redirect_the_proc_mount() {
    let (d, config, pod) = busybox_pod("procsymlink").await;
    pull(&d, images::PROC_SYMLINK).await;
    let mut cfg = container_config("c", &["sleep", "3600"]);
    cfg.image = image_spec(images::PROC_SYMLINK);
    refused_with_nothing_made(&d, &pod, &config, cfg, "/proc is a symlink in the image").await;
    remove_pod(&d, &pod).await;
}

/// An image whose `/etc/hosts` leads into `/proc/thread-self/attr` would have the runtime
/// bind the pod's hosts file over the file its AppArmor request goes to (and so run the
/// container unconfined), or any other procfs file: refused where the target lands.
#[tokio::test]
async fn cve_2025_52881_an_image_symlink_cannot_put_a_mount_over_proc() {
    let mut layer = LayerBuilder::new();
    layer
        .symlink("etc/hosts", "/proc/thread-self/attr/exec")
        .unwrap();
    let image = images::push_busybox_with("hosts-into-proc", &layer, |_| {})
        .await
        .expect("push the image");
    let (d, config, pod) = busybox_pod("hosts-proc").await;
    pull(&d, &image).await;
    let mut c = container_config("c", &["sleep", "3600"]);
    c.image = image_spec(&image);
    refused_with_nothing_made(
        &d,
        &pod,
        &config,
        c,
        "mount /etc/hosts: its target resolves onto procfs",
    )
    .await;
    remove_pod(&d, &pod).await;
}

/// While one container swaps a directory of a shared volume with a symlink to `/`, another
/// is created again and again with a mount whose target goes through it. Targets are
/// resolved inside the container's root and mounted by fd, so the swap can only move the
/// mount within that container: the node's files never show up in it.
#[tokio::test]
async fn cve_2021_30465_a_mount_target_swapped_for_a_symlink_stays_in_the_container() {
    let (d, config, pod) = busybox_pod("swap").await;
    let shared = host_dir(&d, "shared");
    let data = host_dir(&d, "data");
    std::fs::write(data.join("from-the-volume"), "volume\n").unwrap();
    // A file of the node's that no container mounts: it must never be seen.
    let secret_name = format!("berth-node-only-{}", std::process::id());
    let secret_dir = host_dir(&d, "node-only");
    std::fs::write(secret_dir.join(&secret_name), "node\n").unwrap();
    let swap = "cd /vol; mkdir -p dir; ln -s / link; \
        while :; do mv dir t; mv t dir; mv link t; mv t link; done";
    let mut racer = container_config("racer", &["sh", "-c", swap]);
    racer.mounts = vec![bind("/vol", &shared)];
    start_container(&d, &pod, &config, racer).await;
    for i in 0..12 {
        let mut c = container_config(&format!("victim-{i}"), &["sleep", "3600"]);
        c.mounts = vec![bind("/vol", &shared), bind("/vol/t/mnt", &data)];
        let created = d
            .runtime()
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(c),
                sandbox_config: Some(config.clone()),
            })
            .await;
        let Ok(created) = created else { continue };
        let id = created.into_inner().container_id;
        if d.runtime()
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .is_err()
        {
            continue;
        }
        let find =
            format!("find / -path /proc -prune -o -path /sys -prune -o -name {secret_name} -print");
        let (found, _, _) = exec_sync(&d, &id, &["sh", "-c", &find]).await;
        assert!(found.is_empty(), "victim-{i} sees the node's file: {found}");
        let (mounts, _, _) = exec_sync(&d, &id, &["cat", "/proc/self/mountinfo"]).await;
        assert!(
            !mounts.contains(&secret_dir.display().to_string()),
            "victim-{i}: {mounts}"
        );
    }
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host_mounts.contains(&data.display().to_string()),
        "the volume is mounted on the node:\n{host_mounts}"
    );
    remove_pod(&d, &pod).await;
}

/// The container's own runtime process (the monitor, PID 1 of the pod) is out of reach: its
/// binary cannot be read or rewritten through `/proc/1/exe`, and with CAP_SYS_PTRACE the link
/// leads to a sealed in-memory copy, so the node's binary never changes.
#[tokio::test]
async fn cve_2019_5736_the_monitor_binary_cannot_be_overwritten() {
    let (d, config, pod) = busybox_pod("exe").await;
    let monitor = berth_e2e::Env::get().bin_dir.join("berth-monitor");
    let before = std::fs::read(&monitor).expect("the monitor binary");
    let plain = start_container(
        &d,
        &pod,
        &config,
        with_caps("plain", &["sleep", "3600"], &[]),
    )
    .await;
    let (out, _, _) = exec_sync(&d, &plain, &["cat", "/proc/1/cmdline"]).await;
    assert!(
        out.contains("berth-monitor"),
        "PID 1 is not the monitor: {out}"
    );
    let (link, _, code) = exec_sync(&d, &plain, &["readlink", "/proc/1/exe"]).await;
    assert_ne!(code, 0, "readlink /proc/1/exe worked: {link}");
    for cmd in [
        "cat /proc/1/exe > /dev/null",
        "cat /proc/1/environ",
        "echo x >> /proc/1/exe",
    ] {
        let (out, err, code) = exec_sync(&d, &plain, &["sh", "-c", cmd]).await;
        assert_ne!(code, 0, "{cmd} worked: {out}");
        assert!(err.contains("Permission denied"), "{cmd}: {err}");
    }
    let tracer = start_container(
        &d,
        &pod,
        &config,
        with_caps("tracer", &["sleep", "3600"], &["SYS_PTRACE"]),
    )
    .await;
    let (link, err, code) = exec_sync(&d, &tracer, &["readlink", "/proc/1/exe"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(link.starts_with("/memfd:berth-monitor"), "{link}");
    for cmd in [
        "echo x >> /proc/1/exe",
        "echo x > /proc/1/exe",
        "printf x | dd of=/proc/1/exe conv=notrunc",
    ] {
        let (_, _, code) = exec_sync(&d, &tracer, &["sh", "-c", cmd]).await;
        assert_ne!(code, 0, "{cmd} worked");
    }
    let md5 = ["sh", "-c", "md5sum < /proc/1/exe"];
    let (sum, _, code) = exec_sync(&d, &tracer, &md5).await;
    assert_eq!(code, 0);
    let (sum_again, _, _) = exec_sync(&d, &tracer, &md5).await;
    assert_eq!(sum, sum_again, "the monitor's copy changed");
    remove_pod(&d, &pod).await;
    assert!(
        std::fs::read(&monitor).expect("the monitor binary") == before,
        "the monitor binary on the node changed"
    );
}

/// No fd of the runtime survives into the container (a leaked directory fd was runc's way
/// out), and a working directory or mount target through a magic link or a symlink above the
/// root resolves inside the container.
#[tokio::test]
async fn cve_2024_21626_no_runtime_fd_or_working_dir_leads_out_of_the_container() {
    let (d, config, pod) = busybox_pod("fds").await;
    let c = start_container(
        &d,
        &pod,
        &config,
        container_config(
            "c",
            &["sh", "-c", "ls /proc/self/fd > /tmp/fds; sleep 3600"],
        ),
    )
    .await;
    let wait_cat = "until [ -s /tmp/fds ]; do sleep 0.05; done; cat /tmp/fds";
    let (first, _, _) = exec_sync(&d, &c, &["sh", "-c", wait_cat]).await;
    assert_eq!(first, "0\n1\n2\n3\n", "the first process's fds");
    let (exec, _, _) = exec_sync(&d, &c, &["ls", "/proc/self/fd"]).await;
    assert_eq!(exec, "0\n1\n2\n3\n", "an exec process's fds");

    for wd in [
        "/proc/self/fd/3",
        "/proc/self/fd/7",
        "/proc/self/cwd",
        "/proc/1/root",
    ] {
        let mut cfg = container_config("magic", &["sleep", "3600"]);
        cfg.working_dir = wd.into();
        let err = create_refused(&d, &pod, &config, cfg).await;
        assert_refused(&err, Code::InvalidArgument, wd);
    }

    let vol = host_dir(&d, "vol");
    std::os::unix::fs::symlink("../../../../../../..", vol.join("up")).unwrap();
    std::os::unix::fs::symlink("/", vol.join("abs")).unwrap();
    let data = host_dir(&d, "data");
    std::fs::write(data.join("marker"), "from the volume\n").unwrap();
    let mut cfg = container_config("links", &["sleep", "3600"]);
    cfg.working_dir = "/vol/up/berth-escape-wd".into();
    cfg.mounts = vec![
        bind("/vol", &vol),
        Mount {
            readonly: true,
            ..bind("/vol/abs/berth-escape-mount", &data)
        },
    ];
    let links = start_container(&d, &pod, &config, cfg).await;
    let (cwd, _, _) = exec_sync(&d, &links, &["sh", "-c", "readlink /proc/self/cwd"]).await;
    assert_eq!(cwd, "/berth-escape-wd\n");
    let (marker, _, _) = exec_sync(&d, &links, &["cat", "/berth-escape-mount/marker"]).await;
    assert_eq!(marker, "from the volume\n");
    for host in ["/berth-escape-wd", "/berth-escape-mount"] {
        assert!(!Path::new(host).exists(), "{host} was made on the node");
    }
    remove_pod(&d, &pod).await;
}

/// runc binds the terminal over `/dev/console`, and a racing container could swap that path
/// for a symlink (CVE-2025-52565). Berth's executor makes no `/dev/console` at all: a
/// terminal container's terminal is its stdio, from its own devpts. And a terminal exec
/// opens that devpts's `ptmx` by fd, never the container's `/dev/ptmx` link, which the
/// container's root can replace.
#[tokio::test]
async fn cve_2025_52565_no_console_bind_and_terminals_come_from_the_containers_devpts() {
    let (d, config, pod) = busybox_pod("console").await;
    let mut c = container_config("tty", &["sh", "-c", "tty > /tmp/tty; sleep 3600"]);
    c.tty = true;
    let id = start_container(&d, &pod, &config, c).await;
    let (console, _, code) = exec_sync(&d, &id, &["ls", "-l", "/dev/console"]).await;
    assert_ne!(code, 0, "/dev/console exists: {console}");
    let (mountinfo, _, _) = exec_sync(&d, &id, &["cat", "/proc/self/mountinfo"]).await;
    assert!(!mountinfo.contains(" /dev/console "), "{mountinfo}");
    let wait_cat = "until [ -s /tmp/tty ]; do sleep 0.05; done; cat /tmp/tty";
    let (tty, _, _) = exec_sync(&d, &id, &["sh", "-c", wait_cat]).await;
    assert!(
        tty.starts_with("/dev/pts/"),
        "the container's terminal: {tty}"
    );

    // The container's root points /dev/ptmx elsewhere; a terminal exec still gets a pty.
    let (_, err, code) = exec_sync(
        &d,
        &id,
        &["sh", "-c", "rm /dev/ptmx && ln -s /dev/zero /dev/ptmx"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let opts = ExecOptions {
        stdin: false,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let url = exec_url(&d, &id, &["tty"], opts).await;
    let r = client::run(&url, opts, &Transport::spdy(), None, None)
        .await
        .expect("a terminal exec");
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.trim_end().starts_with("/dev/pts/"), "tty said {out:?}");
    assert_eq!(r.status.exit_code(), Some(0), "{:?}", r.status);
    remove_pod(&d, &pod).await;
}
