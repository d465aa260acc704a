//! Running `berth` under test: a private root, state and socket in a directory below the
//! run's workdir, the loopback registry as mirror of the upstream hosts, the log captured
//! to a file that is printed when the test fails, and the process stopped by its PID.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_cri::v1::{StatusRequest, VersionRequest};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::client::Client;
use crate::env::Env;
use crate::error::{Error, IoContext, Result};
use crate::images::MIRRORED_HOSTS;
use crate::leaks;

/// How long [`DaemonBuilder::start`] waits for the socket to answer `Version`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Daemon::stop`] waits after SIGTERM before it reports a timeout.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A private directory for one daemon: `root/`, `state/` (with the socket), the config
/// file and the log. Removed on drop unless the test failed or something is still
/// mounted below it (the harness reports and cleans those).
#[derive(Debug)]
pub struct DaemonDir {
    path: PathBuf,
    number: u32,
}

impl DaemonDir {
    /// Creates a new numbered directory under the run's workdir.
    pub fn new() -> Result<DaemonDir> {
        let env = Env::try_get()?;
        static NEXT: AtomicU32 = AtomicU32::new(1);
        loop {
            let number = NEXT.fetch_add(1, Ordering::Relaxed);
            // Numbers restart in every test binary: skip directories an earlier one made.
            let path = env.workdir.join(number.to_string());
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(DaemonDir { path, number }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(Error::Io {
                        what: format!("create {}", path.display()),
                        source,
                    });
                }
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its number, unique within the run.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The daemon's `root` (persistent state).
    pub fn root(&self) -> PathBuf {
        self.path.join("root")
    }

    /// The daemon's `state` (volatile state).
    pub fn state(&self) -> PathBuf {
        self.path.join("state")
    }

    /// The CRI socket (`state/berth.sock`).
    pub fn socket(&self) -> PathBuf {
        self.state().join("berth.sock")
    }

    /// The config file the builder writes.
    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.toml")
    }

    /// The daemon's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.path.join("berth.log")
    }

    /// The configuration the harness gives every daemon: private paths, debug logs, the
    /// loopback registry as mirror of docker.io, registry.k8s.io, gcr.io and quay.io, and
    /// a bridge name and pod CIDR unique to this directory (daemons run side by side in
    /// the node netns).
    pub fn harness_config(&self) -> Result<toml::Table> {
        let env = Env::try_get()?;
        let mut mirrors = toml::Table::new();
        for host in MIRRORED_HOSTS {
            let mut m = toml::Table::new();
            m.insert("endpoints".into(), vec![env.registry_url()].into());
            mirrors.insert((*host).into(), m.into());
        }
        let path = |p: PathBuf| toml::Value::from(p.to_string_lossy().into_owned());
        let table_of = |pairs: Vec<(&str, toml::Value)>| {
            toml::Value::Table(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        };
        let mut table = toml::Table::new();
        table.insert("root".into(), path(self.root()));
        table.insert("state".into(), path(self.state()));
        table.insert(
            "grpc".into(),
            table_of(vec![("socket", path(self.socket()))]),
        );
        table.insert("log".into(), table_of(vec![("level", "debug".into())]));
        table.insert(
            "network".into(),
            table_of(vec![
                ("bridge", format!("berth{}", self.number).into()),
                (
                    "pod_cidr",
                    format!("10.{}.0.0/16", 100 + self.number % 150).into(),
                ),
            ]),
        );
        table.insert(
            "registry".into(),
            table_of(vec![("mirrors", mirrors.into())]),
        );
        table.insert(
            "cgroup".into(),
            table_of(vec![(
                "parent",
                env.cgroup_parent(&format!("d{}", self.number)).into(),
            )]),
        );
        Ok(table)
    }
}

impl Drop for DaemonDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "berth-e2e: test failed; {} is left for the harness (`--keep` keeps it)",
                self.path.display()
            );
            return;
        }
        if !leaks::mounts_under(&self.path).is_empty() {
            eprintln!(
                "berth-e2e: keeping {}: mounts are left below it",
                self.path.display()
            );
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Parses a TOML document into a table.
pub fn parse_toml(text: &str, what: &str) -> Result<toml::Table> {
    text.parse::<toml::Table>().map_err(|e| Error::Toml {
        what: what.to_string(),
        message: e.to_string(),
    })
}

/// Merges `extra` into `base`: tables merge key by key, other values replace.
pub fn merge_toml(base: &mut toml::Table, extra: toml::Table) {
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge_toml(b, e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Where the config comes from.
#[derive(Debug, Clone)]
enum ConfigSource {
    /// [`DaemonDir::harness_config`] with this merged over it.
    Harness(toml::Table),
    /// This text, written as is.
    Raw(String),
    /// An existing file (another daemon's, for instance).
    File(PathBuf),
}

/// Configures a daemon before it starts; see [`Daemon::builder`].
#[derive(Debug)]
pub struct DaemonBuilder {
    config: ConfigSource,
    args: Vec<OsString>,
    subcommand: bool,
    dir: Option<DaemonDir>,
}

impl DaemonBuilder {
    /// Merges a TOML fragment over the harness config (`"[network]\nmode = \"cni\""`).
    /// Panics on invalid TOML: fragments are test code.
    pub fn config(mut self, fragment: &str) -> Self {
        let extra = parse_toml(fragment, "extra config").unwrap_or_else(|e| panic!("{e}"));
        match &mut self.config {
            ConfigSource::Harness(t) => merge_toml(t, extra),
            _ => self.config = ConfigSource::Harness(extra),
        }
        self
    }

    /// Uses `text` as the whole config file instead of the harness config.
    pub fn raw_config(mut self, text: impl Into<String>) -> Self {
        self.config = ConfigSource::Raw(text.into());
        self
    }

    /// Uses an existing config file.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = ConfigSource::File(path.into());
        self
    }

    /// Adds a command-line argument (after `--config FILE`).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Runs `berth daemon ...` instead of plain `berth ...`.
    pub fn daemon_subcommand(mut self) -> Self {
        self.subcommand = true;
        self
    }

    /// Uses this directory (for the log and the written config) instead of a new one.
    pub fn dir(mut self, dir: DaemonDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Starts the process without waiting for it to serve.
    pub fn spawn(self) -> Result<Daemon> {
        let dir = match self.dir {
            Some(d) => d,
            None => DaemonDir::new()?,
        };
        let (config_path, text) = match self.config {
            ConfigSource::Harness(extra) => {
                let mut table = dir.harness_config()?;
                merge_toml(&mut table, extra);
                let text = toml::to_string(&table).map_err(|e| Error::Toml {
                    what: "harness config".into(),
                    message: e.to_string(),
                })?;
                write_file(&dir.config_path(), &text)?;
                (dir.config_path(), text)
            }
            ConfigSource::Raw(text) => {
                write_file(&dir.config_path(), &text)?;
                (dir.config_path(), text)
            }
            ConfigSource::File(path) => {
                let text = std::fs::read_to_string(&path)
                    .io_context(|| format!("read {}", path.display()))?;
                (path, text)
            }
        };
        let socket = socket_of(&text);
        let mut args: Vec<OsString> = Vec::new();
        if self.subcommand {
            args.push("daemon".into());
        }
        args.push("--config".into());
        args.push(config_path.clone().into());
        args.extend(self.args);
        let mut daemon = Daemon {
            dir,
            config_path,
            socket,
            args,
            child: None,
            client: None,
        };
        daemon.spawn_process()?;
        Ok(daemon)
    }

    /// Starts the daemon and waits until its socket answers `Version`.
    pub async fn start(self) -> Result<Daemon> {
        let mut d = self.spawn()?;
        d.wait_serving(START_TIMEOUT).await?;
        Ok(d)
    }
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).io_context(|| format!("write {}", path.display()))
}

/// The `[grpc] socket` a config names, or the built-in default.
fn socket_of(config: &str) -> PathBuf {
    parse_toml(config, "config")
        .ok()
        .and_then(|t| t.get("grpc")?.get("socket")?.as_str().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/run/berth/berth.sock"))
}

/// A `berth` daemon process this test started. Dropping it stops the process (SIGTERM,
/// then SIGKILL) and, when the test is failing, prints the daemon's log.
#[derive(Debug)]
pub struct Daemon {
    dir: DaemonDir,
    config_path: PathBuf,
    socket: PathBuf,
    args: Vec<OsString>,
    child: Option<Child>,
    client: Option<Client>,
}

impl Daemon {
    /// A builder for a daemon with the harness config.
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder {
            config: ConfigSource::Harness(toml::Table::new()),
            args: Vec::new(),
            subcommand: false,
            dir: None,
        }
    }

    /// Starts a daemon with the harness config and waits until it serves.
    pub async fn start() -> Result<Daemon> {
        Self::builder().start().await
    }

    fn spawn_process(&mut self) -> Result<()> {
        let env = Env::try_get()?;
        let bin = env.berth_bin();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.log_path())
            .io_context(|| format!("open {}", self.dir.log_path().display()))?;
        let _ = writeln!(
            log,
            "=== berth-e2e: starting {} {:?}",
            bin.display(),
            self.args
        );
        let err = log.try_clone().io_context(|| "dup log".into())?;
        let child = Command::new(&bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .io_context(|| format!("spawn {}", bin.display()))?;
        self.child = Some(child);
        self.client = None;
        Ok(())
    }

    /// Waits until the socket answers `Version`; fails if the process exits first.
    pub async fn wait_serving(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Err(Error::DaemonExited {
                    status,
                    log: self.dir.log_path(),
                    tail: self.log_tail(40),
                });
            }
            if self.socket.exists()
                && let Ok(client) = Client::connect(&self.socket).await
                && client
                    .runtime()
                    .version(VersionRequest::default())
                    .await
                    .is_ok()
            {
                self.client = Some(client);
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("berth to serve on {}", self.socket.display()),
                    seconds: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The runtime's `Status`.
    async fn status(&self, verbose: bool) -> Result<k8s_cri::v1::StatusResponse> {
        let response = self.runtime().status(StatusRequest { verbose }).await;
        let response = response.map_err(|source| Error::Grpc {
            rpc: "Status".into(),
            source,
        })?;
        Ok(response.into_inner())
    }

    /// Waits until `Status` reports RuntimeReady (reconciliation done).
    pub async fn wait_runtime_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let resp = self.status(false).await?;
            let ready = resp.status.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.r#type == "RuntimeReady" && c.status)
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: "RuntimeReady".into(),
                    seconds: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The connected client. Panics if the daemon was only spawned and never served.
    pub fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("daemon is not serving: use start() or wait_serving() first")
    }

    /// A RuntimeService client.
    pub fn runtime(
        &self,
    ) -> k8s_cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel> {
        self.client().runtime()
    }

    /// An ImageService client.
    pub fn images(
        &self,
    ) -> k8s_cri::v1::image_service_client::ImageServiceClient<tonic::transport::Channel> {
        self.client().images()
    }

    /// The effective configuration as `Status(verbose)` reports it under `info["config"]`.
    pub async fn effective_config(&self) -> Result<serde_json::Value> {
        let resp = self.status(true).await?;
        let text = resp.info.get("config").ok_or_else(|| {
            Error::Environment("Status(verbose) has no info key \"config\"".into())
        })?;
        serde_json::from_str(text).map_err(|source| Error::Json {
            what: "Status info[\"config\"]".into(),
            source,
        })
    }

    /// The daemon's directory.
    pub fn dir(&self) -> &DaemonDir {
        &self.dir
    }

    /// The CRI socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The config file passed with `--config`.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the daemon has logged so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.log_path()).unwrap_or_default()
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The exit status if the process has ended (reaping it), None while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait().io_context(|| "wait for berth".into())?;
        if status.is_some() {
            self.child = None;
            self.client = None;
        }
        Ok(status)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && matches!(self.try_wait(), Ok(None))
    }

    /// Sends `signal` to the daemon's PID.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let Some(pid) = self.pid() else {
            return Err(Error::Environment("berth is not running".into()));
        };
        kill(Pid::from_raw(pid as i32), signal).io_context(|| format!("kill -{signal} {pid}"))
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.child.is_none() {
                return Err(Error::Environment("berth is not running".into()));
            }
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: "berth to exit".into(),
                    seconds: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM and wait for the exit status (the daemon should exit 0).
    pub async fn stop(&mut self) -> Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        self.wait_exit(STOP_TIMEOUT).await
    }

    /// SIGKILL and wait: a crash, for restart tests.
    pub async fn kill(&mut self) -> Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        self.wait_exit(STOP_TIMEOUT).await
    }

    /// Launches the same daemon again (same config, dir and log) after it exited, without
    /// waiting: for callers that time the start themselves.
    pub fn spawn_again(&mut self) -> Result<()> {
        if self.is_running() {
            return Err(Error::Environment("berth is still running".into()));
        }
        self.spawn_process()
    }

    /// Starts the same daemon again (same config, dir and log) after it exited, and waits
    /// until it serves.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            return Err(Error::Environment("berth is still running".into()));
        }
        self.spawn_process()?;
        self.wait_serving(START_TIMEOUT).await
    }
}

/// Stops and removes every pod of the daemon at `socket`, on a thread of its own (a
/// dropped [`Daemon`] cannot await), so a failing test does not leave its pods running.
fn remove_all_pods(socket: PathBuf) {
    let work = move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let client = Client::connect(&socket).await.ok()?;
            let mut runtime = client.runtime();
            let pods = runtime
                .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default())
                .await
                .ok()?
                .into_inner()
                .items;
            for pod in pods {
                let _ = runtime
                    .stop_pod_sandbox(k8s_cri::v1::StopPodSandboxRequest {
                        pod_sandbox_id: pod.id.clone(),
                    })
                    .await;
                let _ = runtime
                    .remove_pod_sandbox(k8s_cri::v1::RemovePodSandboxRequest {
                        pod_sandbox_id: pod.id,
                    })
                    .await;
            }
            Some(())
        })
    };
    if let Ok(handle) = std::thread::Builder::new().spawn(work) {
        let _ = handle.join();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() && self.client.is_some() {
            // The test failed half-way: what it made would show as leaks of every test.
            remove_all_pods(self.socket().to_path_buf());
        }
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            let mut ended = false;
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    ended = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if !ended {
                eprintln!("berth-e2e: berth {pid} ignored SIGTERM for {STOP_TIMEOUT:?}; SIGKILL");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "----- berth log {} -----\n{}\n----- end of berth log -----",
                self.dir.log_path().display(),
                self.log()
            );
        }
    }
}

/// Runs `berth args...` to completion (for `version`, `config default`, bad configs),
/// killing it after `timeout`.
pub async fn run_berth<I, S>(args: I, timeout: Duration) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let env = Env::try_get()?;
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let child = tokio::process::Command::new(env.berth_bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .io_context(|| format!("spawn berth {args:?}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out.io_context(|| format!("wait for berth {args:?}")),
        Err(_) => Err(Error::Timeout {
            what: format!("berth {args:?} to exit"),
            seconds: timeout.as_secs(),
        }),
    }
}

/// Describes an exit status for assertion messages (`exit 1`, `signal 9`).
pub fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => format!("{status}"),
    }
}

/// The daemon's connected client (see [`Daemon::client`]), for the fixtures.
impl AsRef<Client> for Daemon {
    fn as_ref(&self) -> &Client {
        self.client()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_siblings_and_replaces_leaves() {
        let mut base = parse_toml("a = 1\n[t]\nx = 1\ny = 2\n[t.u]\nz = 3\n", "b").unwrap();
        let extra = parse_toml("a = 2\n[t]\ny = 5\n[t.u]\nw = 4\n", "e").unwrap();
        merge_toml(&mut base, extra);
        let want = parse_toml("a = 2\n[t]\nx = 1\ny = 5\n[t.u]\nz = 3\nw = 4\n", "w").unwrap();
        assert_eq!(base, want);
    }

    #[test]
    fn socket_comes_from_the_grpc_table() {
        assert_eq!(
            socket_of("[grpc]\nsocket = \"/x/y.sock\"\n"),
            PathBuf::from("/x/y.sock")
        );
        assert_eq!(
            socket_of("root = \"/r\"\n"),
            PathBuf::from("/run/berth/berth.sock")
        );
    }
}
