//! The containerd under comparison: a private daemon with its own root, bridge and CNI
//! config, started and cleaned up by the benchmark. Debian's 1.6 by default, or the binary
//! `BERTH_BENCH_CONTAINERD` names (e.g. a containerd 2.1 built elsewhere, its shim beside it).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_e2e::{Client, DaemonDir, Env, images};

use crate::measure::{Backlog, Runtime, entries, first_answer, processes_with};

/// Names the containerd binary to compare with, instead of `containerd` on PATH.
const BINARY_VAR: &str = "BERTH_BENCH_CONTAINERD";

/// The containerd binary compared: `BERTH_BENCH_CONTAINERD` when set, else `containerd` on
/// PATH.
pub(crate) fn binary() -> PathBuf {
    std::env::var_os(BINARY_VAR)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("containerd"), PathBuf::from)
}

/// The PATH containerd runs with: the directory of `binary` first, since containerd looks
/// for `containerd-shim-runc-v2` on PATH before beside itself, and Debian's 1.6 shim in
/// /usr/bin would otherwise serve a containerd 2.1.
fn path_for(binary: &Path) -> OsString {
    let inherited = std::env::var_os("PATH").unwrap_or_default();
    match binary.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => {
            let mut dirs = vec![dir.to_path_buf()];
            dirs.extend(std::env::split_paths(&inherited));
            std::env::join_paths(dirs).unwrap_or(inherited)
        }
        None => inherited,
    }
}

/// containerd with a private root, state, socket, bridge and CNI config, mirrors to the
/// harness registry. Stopped (by its PID) and cleaned on drop.
pub(crate) struct Containerd {
    child: Child,
    dir: PathBuf,
    bridge: String,
}

impl Containerd {
    pub(crate) async fn start(dir: &DaemonDir) -> anyhow::Result<(Containerd, Client, Duration)> {
        let env = Env::try_get()?;
        let (number, dir) = (dir.number(), dir.path());
        let socket = dir.join("containerd.sock");
        let net = dir.join("net.d");
        std::fs::create_dir_all(&net)?;
        // Its own bridge and subnet, so one containerd's cleanup leaves another's alone.
        let bridge = format!("bcbench{number}");
        write_conflist(&net, &bridge, 66, number, dir)?;
        let mut mirrors = String::new();
        for host in images::MIRRORED_HOSTS {
            mirrors.push_str(&format!(
                "[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{host}\"]\n  endpoint = [\"{}\"]\n",
                env.registry_url()
            ));
        }
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n[grpc]\n  address = \"{sock}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{pause}\"\n  restrict_oom_score_adj = true\n\
             stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n  enable_tls_streaming = false\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{net}\"\n{mirrors}",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = socket.display(),
            pause = images::PAUSE,
            net = net.display(),
        );
        // The streaming server as Berth's runs in the benchmark: plain HTTP on a loopback
        // port of the node namespace (these are containerd 1.6's defaults, spelled out).
        // restrict_oom_score_adj: root on these machines lacks CAP_SYS_RESOURCE, and runc
        // cannot lower a process's oom_score_adj without it. containerd 2.x reads this
        // version 2 config by migrating it (mirrors included, deprecated until 2.2).
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let t = Instant::now();
        let binary = binary();
        let child = Command::new(&binary)
            .env("PATH", path_for(&binary))
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "start {} (apt-get install containerd runc, or set {BINARY_VAR})",
                    binary.display()
                )
            })?;
        let me = Containerd {
            child,
            dir: dir.to_owned(),
            bridge,
        };
        let (client, launch) = first_answer(&socket, t).await.with_context(|| {
            format!(
                "containerd did not serve within 30 s; see {}",
                dir.display()
            )
        })?;
        Ok((me, client, launch))
    }
}

/// Writes the CNI config both containerd and Berth's CNI mode run with (Debian's bridge,
/// host-local, portmap and loopback plugins): bridge `bridge`, one /20 (room for a full
/// node of pods) of `10.<net>.0.0/16` picked by `number`, addresses recorded under `dir`.
pub(crate) fn write_conflist(
    conf_dir: &Path,
    bridge: &str,
    net: u8,
    number: u32,
    dir: &Path,
) -> anyhow::Result<()> {
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0", "name": "bench",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
             "ipam": {"type": "host-local",
                      "ranges": [[{"subnet": format!("10.{net}.{}.0/20", (number % 16) * 16)}]],
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": dir.join("ipam").display().to_string()}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"}
        ]
    });
    std::fs::create_dir_all(conf_dir)?;
    std::fs::write(conf_dir.join("10-bench.conflist"), conflist.to_string())?;
    Ok(())
}

/// Deletes a bridge the CNI bridge plugin made: the plugin never deletes it (containerd
/// leaves it too), so whoever wrote the conflist removes it.
pub(crate) fn delete_bridge(bridge: &str) {
    let _ = Command::new("ip")
        .args(["link", "del", bridge])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        // What containerd leaves on purpose: its bridge and the mounts of its state.
        delete_bridge(&self.bridge);
        for m in berth_e2e::leaks::mounts_under(&self.dir) {
            let _ = nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

pub(crate) fn containerd_runtime(ctd: &Containerd, client: Client, dir: &DaemonDir) -> Runtime {
    let sock = dir.path().join("containerd.sock").display().to_string();
    let shims = sock.clone();
    let (tasks, snapshots) = (
        dir.path()
            .join("state/io.containerd.runtime.v2.task/k8s.io"),
        dir.path()
            .join("root/io.containerd.snapshotter.v1.overlayfs/snapshots"),
    );
    Runtime {
        name: "containerd",
        client,
        pid: ctd.child.id(),
        logs: dir.path().join("pod-logs"),
        // The shims are what containerd adds per pod (our pause is busybox sleep, not the
        // real 300 KiB pause binary, so it is left out: this favours containerd).
        helpers: Box::new(move || processes_with(&["containerd-shim-runc-v2", &sock])),
        // Shims still exiting and their task directories; its snapshots are removed by
        // its garbage collection, in the background after RemoveContainer.
        backlog: Box::new(move || Backlog {
            pending: processes_with(&["containerd-shim-runc-v2", &shims]).len()
                + entries(&tasks, ""),
            churn: entries(&snapshots, ""),
        }),
    }
}
