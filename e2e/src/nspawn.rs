//! A node with a real systemd: a Debian 12 root (made by `scripts/nspawn-rootfs.sh` with
//! `mmdebstrap`) booted with `systemd-nspawn --boot`, and Berth started inside it as a
//! systemd service with `[cgroup] driver = "systemd"`.
//!
//! How the container is set up, and why:
//! - `/run` on the test machines is no tmpfs, and nspawn wants `/run/systemd/nspawn` for
//!   its mount propagation: nspawn runs in a private mount namespace (`unshare -m`) with a
//!   tmpfs over `/run/systemd`, so nothing shows on the host;
//! - `--network-namespace-path` puts the container in the harness's node netns (a private
//!   netns already, like `--private-network`), where the loopback registry answers: Berth
//!   inside pulls its images as every other test's daemon does;
//! - `--volatile=overlay` keeps the cached root unchanged (writes go to a tmpfs), and the
//!   daemon's directory is bound at the same path inside, so its config, state, socket and
//!   log are reachable from the test, and the binaries under test are bound read-only;
//! - nspawn runs in cgroups of its own (`/berth-e2e-<run>-nspawn<N>` in every hierarchy),
//!   removed when the container is gone, and picks the node's cgroup layout from the host's
//!   (`SYSTEMD_NSPAWN_UNIFIED_HIERARCHY` unset): hybrid on a hybrid host, v2 on a v2 host.
//!   With v1 controllers it mounts them read-only inside (only `name=systemd` is the
//!   payload's), so they are remounted read-write in the container's mount namespace, as a
//!   node with a delegated cgroup tree would have them, and systemd is re-executed to see
//!   them writable.
//!
//! Shutdown is `systemctl poweroff` inside, then SIGKILL to nspawn and the container's init
//! by their PIDs if it takes too long.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::client::Client;
use crate::daemon::DaemonDir;
use crate::env::Env;
use crate::error::{Error, IoContext, Result};
use crate::leaks::cgroup_roots;

/// The root file system to boot, from `scripts/nspawn-rootfs.sh` (scripts/test.sh sets it).
pub const ROOTFS: &str = "BERTH_E2E_NSPAWN_ROOTFS";

/// How long systemd inside may take to boot.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `systemctl poweroff` may take before the container is killed.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);

/// The root to boot, or an error saying how to make it.
pub fn rootfs() -> Result<PathBuf> {
    let dir = std::env::var_os(ROOTFS).map(PathBuf::from).ok_or_else(|| {
        Error::Environment(format!(
            "{ROOTFS} is not set: build the Debian root with `scripts/nspawn-rootfs.sh` (it \
             prints its path; scripts/test.sh does this) and export {ROOTFS}"
        ))
    })?;
    if !dir.join("usr/lib/systemd/systemd").exists() && !dir.join("lib/systemd/systemd").exists() {
        return Err(Error::Environment(format!(
            "{ROOTFS}={} holds no systemd: rebuild it with scripts/nspawn-rootfs.sh",
            dir.display()
        )));
    }
    Ok(dir)
}

/// A booted systemd-nspawn container, powered off and its cgroups removed on drop.
#[derive(Debug)]
pub struct Node {
    name: String,
    /// systemd-nspawn (the `sh` that execs `unshare`, which execs nspawn: one PID).
    nspawn: Child,
    /// The container's init (systemd), nspawn's child.
    init: i32,
    /// The cgroups made for nspawn, one per hierarchy.
    cgroups: Vec<PathBuf>,
    log: PathBuf,
}

/// Makes nspawn's cgroup in the hierarchy at `root`. A new v1 cpuset has no CPUs or memory
/// nodes: it gets its parent's, so that every cgroup the node makes (Berth makes cpusets
/// too) is below this one, and goes with it.
fn make_cgroup(root: &Path, name: &str) -> Result<PathBuf> {
    let dir = root.join(name);
    std::fs::create_dir(&dir).io_context(|| format!("create cgroup {}", dir.display()))?;
    if root.join("cpuset.cpus").exists() && !root.join("cgroup.controllers").exists() {
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let value = std::fs::read_to_string(root.join(file))
                .io_context(|| format!("read {}", root.join(file).display()))?;
            std::fs::write(dir.join(file), value.trim())
                .io_context(|| format!("write {}", dir.join(file).display()))?;
        }
    }
    Ok(dir)
}

/// Removes a cgroup tree, children first; retries while its processes exit.
fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path())?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

impl Node {
    /// Boots `rootfs` with `binds` (host path, read-only) bound at the same paths inside,
    /// and waits until systemd reports the system running.
    pub fn boot(rootfs: &Path, binds: &[(&Path, bool)], log: &Path) -> Result<Node> {
        let env = Env::try_get()?;
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let name = format!(
            "berth-e2e-{}-nspawn{}",
            env.run_id,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut cgroups = Vec::new();
        for root in cgroup_roots() {
            match make_cgroup(&root, &name) {
                Ok(dir) => cgroups.push(dir),
                Err(e) => {
                    for c in &cgroups {
                        let _ = remove_cgroup_tree(c);
                    }
                    let _ = remove_cgroup_tree(&root.join(&name));
                    return Err(e);
                }
            }
        }
        let mut args: Vec<String> = vec![
            format!("--directory={}", rootfs.display()),
            "--boot".into(),
            "--register=no".into(),
            "--keep-unit".into(),
            "--volatile=overlay".into(),
            "--capability=all".into(),
            format!("--machine={}", &name[name.len().saturating_sub(64)..]),
            format!("--network-namespace-path=/run/netns/{}", env.netns),
        ];
        for (path, ro) in binds {
            let flag = if *ro { "--bind-ro" } else { "--bind" };
            args.push(format!("{flag}={}", path.display()));
        }
        // The shell moves itself into nspawn's cgroups, then becomes unshare, which
        // becomes nspawn: the PID this test records is nspawn's.
        let script = r#"for f in "$@"; do case $f in --*) break;; esac; echo $$ > "$f/cgroup.procs" || exit 1; shift; done
exec unshare --mount --propagation private -- sh -c 'mount -t tmpfs -o mode=0755 tmpfs /run/systemd && exec systemd-nspawn "$@"' nspawn "$@""#;
        let logfile =
            std::fs::File::create(log).io_context(|| format!("create {}", log.display()))?;
        let logfile2 = logfile
            .try_clone()
            .io_context(|| format!("clone {}", log.display()))?;
        let nspawn = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(&cgroups)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(logfile)
            .stderr(logfile2)
            .spawn()
            .io_context(|| "start systemd-nspawn".to_string())?;
        let mut node = Node {
            name,
            nspawn,
            init: 0,
            cgroups,
            log: log.to_owned(),
        };
        node.wait_booted()?;
        Ok(node)
    }

    /// Its name (also its cgroups' name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The systemd-nspawn process, as the host sees it.
    pub fn nspawn_pid(&self) -> u32 {
        self.nspawn.id()
    }

    /// What nspawn and the container's console printed.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_booted(&mut self) -> Result<()> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let pid = self.nspawn.id();
        while self.init == 0 {
            if let Some(status) = self.nspawn.try_wait().io_context(|| "wait nspawn".into())? {
                return Err(Error::Environment(format!(
                    "systemd-nspawn exited ({status}) before the container started:\n{}",
                    self.console()
                )));
            }
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            if let Some(init) = children
                .split_whitespace()
                .find_map(|c| c.parse::<i32>().ok())
            {
                // The child becomes the container's init once it has left nspawn's
                // namespace set; before that it may still be nspawn's own fork.
                let ns = |p: String| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
                if ns(init.to_string()) != ns(pid.to_string()) {
                    self.init = init;
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Environment(format!(
                    "the container did not start in {BOOT_TIMEOUT:?}:\n{}",
                    self.console()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_running(deadline)?;
        // nspawn mounts the v1 controllers read-only for its payload; a node's runtime
        // needs them writable (see the module's docs). systemd decided at boot which v1
        // controllers it manages by whether it could write them: re-executed, it looks
        // again, and then realizes units (Berth's scopes) in memory, cpu and pids too.
        self.run(&[
            "sh",
            "-c",
            "grep -E ' - cgroup2? ' /proc/self/mountinfo | cut -d' ' -f5 | \
             while read -r d; do mount -o remount,bind,rw \"$d\" || exit 1; done && \
             systemctl daemon-reexec",
        ])?;
        self.wait_running(deadline)?;
        // A v2 node whose root lacks the memory controller cannot limit anything: on a
        // hybrid host the controllers are bound to v1 (SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
        // there gives such a node).
        let (controllers, _) = self.run_status(&["cat", "/sys/fs/cgroup/cgroup.controllers"])?;
        let v2 = self
            .run_status(&["test", "-e", "/sys/fs/cgroup/cgroup.controllers"])?
            .1
            .is_ok();
        if v2 && !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(Error::Environment(format!(
                "nspawn gave the node cgroup v2 without the memory controller (controllers: \
                 {:?}); on a host with v1 controllers, leave SYSTEMD_NSPAWN_UNIFIED_HIERARCHY \
                 unset so that nspawn picks the host's layout",
                controllers.trim()
            )));
        }
        Ok(())
    }

    fn wait_running(&self, deadline: Instant) -> Result<()> {
        loop {
            let state = self.run_status(&["systemctl", "is-system-running"]);
            let state = state
                .map(|(out, _)| out.trim().to_string())
                .unwrap_or_default();
            if state == "running" || state == "degraded" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Environment(format!(
                    "systemd did not finish booting in {BOOT_TIMEOUT:?} (state {state:?}):\n{}",
                    self.console()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a command inside (all of the container's namespaces); its stdout, or an error
    /// with its stderr.
    pub fn run(&self, command: &[&str]) -> Result<String> {
        let (out, ok) = self.run_status(command)?;
        ok.map(|()| out)
    }

    /// Runs a command inside; its stdout and whether it succeeded.
    pub fn run_status(&self, command: &[&str]) -> Result<(String, Result<()>)> {
        let init = self.init.to_string();
        let out = Command::new("nsenter")
            .args(["--target", &init, "--all", "--"])
            .args(command)
            .stdin(Stdio::null())
            .output()
            .io_context(|| format!("nsenter {}", command.join(" ")))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let ok = if out.status.success() {
            Ok(())
        } else {
            Err(Error::Command {
                command: format!("(in {}) {}", self.name, command.join(" ")),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        };
        Ok((stdout, ok))
    }

    /// `systemctl show -p NAME --value UNIT` for each name, in order.
    pub fn unit_properties(&self, unit: &str, names: &[&str]) -> Result<Vec<String>> {
        names
            .iter()
            .map(|n| {
                self.run(&["systemctl", "show", "-p", n, "--value", unit])
                    .map(|s| s.trim().to_string())
            })
            .collect()
    }

    /// Powers the container off (killing it if that takes too long) and removes its
    /// cgroups; what could not be done is returned.
    pub fn shutdown(&mut self) -> Result<()> {
        if self.nspawn.try_wait().ok().flatten().is_none() {
            if self.init != 0 {
                let _ = self.run_status(&["systemctl", "poweroff", "--no-block"]);
            }
            let deadline = Instant::now() + POWEROFF_TIMEOUT;
            while self.nspawn.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if self.nspawn.try_wait().ok().flatten().is_none() {
                eprintln!("berth-e2e: {} did not power off: killing it", self.name);
                if self.init != 0 {
                    let _ = kill(Pid::from_raw(self.init), Signal::SIGKILL);
                }
                let _ = self.nspawn.kill();
                let _ = self.nspawn.wait();
            }
        }
        let mut failed = Vec::new();
        for c in std::mem::take(&mut self.cgroups) {
            if let Err(e) = remove_cgroup_tree(&c) {
                failed.push(format!("{}: {e}", c.display()));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Error::Environment(format!(
                "cgroups of {} left: {}",
                self.name,
                failed.join(", ")
            )))
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("berth-e2e: {e}");
        }
    }
}

/// Berth running inside a [`Node`] as the systemd service `berth-<N>.service` (a new
/// name for each start), its directory bound at the same path inside.
#[derive(Debug)]
pub struct NodeDaemon {
    dir: DaemonDir,
    client: Option<Client>,
    starts: u32,
    // Last: the daemon's client goes before the container.
    node: Node,
}

impl AsRef<Client> for NodeDaemon {
    fn as_ref(&self) -> &Client {
        self.client()
    }
}

impl NodeDaemon {
    /// Boots a node and starts Berth in it with the harness config and `extra` merged
    /// over it.
    pub async fn start(extra: &str) -> Result<NodeDaemon> {
        let env = Env::try_get()?;
        let dir = DaemonDir::new()?;
        let mut table = dir.harness_config()?;
        let extra = crate::daemon::parse_toml(extra, "extra config")?;
        crate::daemon::merge_toml(&mut table, extra);
        let text = toml::to_string(&table).map_err(|e| Error::Toml {
            what: "node daemon config".into(),
            message: e.to_string(),
        })?;
        std::fs::write(dir.config_path(), text)
            .io_context(|| format!("write {}", dir.config_path().display()))?;
        let rootfs = rootfs()?;
        let node = Node::boot(
            &rootfs,
            &[(&env.bin_dir, true), (dir.path(), false)],
            &dir.path().join("console.log"),
        )?;
        let mut d = NodeDaemon {
            dir,
            client: None,
            starts: 0,
            node,
        };
        d.start_again().await?;
        Ok(d)
    }

    /// The node it runs in.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Its directory.
    pub fn dir(&self) -> &DaemonDir {
        &self.dir
    }

    /// The connected client; panics before the daemon has started.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("the daemon has started")
    }

    /// The unit the daemon runs as now.
    pub fn unit(&self) -> String {
        format!("berth-{}.service", self.starts)
    }

    /// What the daemon logged (every start).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.log_path()).unwrap_or_default()
    }

    /// Starts the daemon (again) as a new unit, as the shipped berth.service runs it
    /// (`Type=notify`, `KillMode=process`, `Delegate=yes`), and connects.
    pub async fn start_again(&mut self) -> Result<()> {
        self.client = None;
        self.starts += 1;
        let env = Env::try_get()?;
        let unit = self.unit();
        let berth = env.berth_bin().display().to_string();
        let config = self.dir.config_path().display().to_string();
        let log = format!("StandardOutput=append:{}", self.dir.log_path().display());
        let err = format!("StandardError=append:{}", self.dir.log_path().display());
        self.node.run(&[
            "systemd-run",
            "--unit",
            &unit,
            "--collect",
            "-p",
            "Type=notify",
            "-p",
            "KillMode=process",
            "-p",
            "Delegate=yes",
            "-p",
            "TimeoutStartSec=60",
            "-p",
            "LimitNOFILE=1048576",
            "-p",
            &log,
            "-p",
            &err,
            &berth,
            "--config",
            &config,
        ])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(self.dir.socket()).await {
                Ok(c) => {
                    self.client = Some(c);
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Kills the daemon's main process with SIGKILL (its pods' monitors live on in their
    /// scopes) and waits until systemd has seen it die.
    pub async fn kill(&mut self) -> Result<()> {
        let unit = self.unit();
        self.client = None;
        self.node.run(&[
            "systemctl",
            "kill",
            "--kill-who=main",
            "--signal=SIGKILL",
            &unit,
        ])?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let state = self
                .node
                .unit_properties(&unit, &["SubState"])
                .unwrap_or_default();
            if !state.iter().any(|s| s == "running" || s == "start") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Environment(format!("{unit} still {state:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the daemon (SIGTERM through systemd) and powers the node off.
    pub fn shutdown(&mut self) -> Result<()> {
        self.client = None;
        let unit = self.unit();
        let _ = self.node.run(&["systemctl", "stop", &unit]);
        self.node.shutdown()
    }
}

impl Drop for NodeDaemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "berth-e2e: berth in {} logged:\n{}\n--- console:\n{}",
                self.node.name(),
                self.log(),
                self.node.console()
            );
        }
        if let Err(e) = self.shutdown() {
            eprintln!("berth-e2e: {e}");
        }
    }
}
