//! The e2e runner: sets up a node netns with a loopback registry and the test images, runs
//! a command (the e2e tests) inside it, tears everything down and fails on leaks.
//!
//! Usage: `harness [--timeout SECS] [--keep] [--bin-dir DIR] [--] COMMAND [ARGS...]`

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_e2e::env::{self, NETNS_PREFIX};
use berth_e2e::images::{self, HostBusybox};
use berth_e2e::leaks::{self, Baseline, Scope};
use berth_e2e::netns::NodeNetns;
use berth_e2e::registry::{REGISTRY_ADDR, RegistryClient, RegistryServer};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// The signal that interrupted us (0: none).
static SIGNALLED: AtomicI32 = AtomicI32::new(0);
/// The pid (and process group id) of the running test command (0: none).
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe; it only signals the command's process
        // group (the tests and the daemons they started).
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
    }
}

struct Options {
    timeout: Duration,
    keep: bool,
    bin_dir: PathBuf,
    command: Vec<String>,
}

const USAGE: &str =
    "usage: harness [--timeout SECS] [--keep] [--bin-dir DIR] [--] COMMAND [ARGS...]";

fn parse_args() -> anyhow::Result<Options> {
    let exe = std::env::current_exe().context("locate the harness executable")?;
    let mut opts = Options {
        timeout: Duration::from_secs(3600),
        keep: false,
        bin_dir: exe.parent().map(Path::to_path_buf).unwrap_or_default(),
        command: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--timeout" => {
                let v = args.next().context(USAGE)?;
                opts.timeout = Duration::from_secs(v.parse().context("--timeout SECS")?);
            }
            "--keep" => opts.keep = true,
            "--bin-dir" => opts.bin_dir = args.next().context(USAGE)?.into(),
            "--" => {
                opts.command.extend(args.by_ref());
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => {
                opts.command.push(a);
                opts.command.extend(args.by_ref());
            }
        }
    }
    if opts.command.is_empty() {
        bail!("{USAGE}");
    }
    Ok(opts)
}

fn install_signal_handlers() -> anyhow::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to atomics and calls kill(2), both
        // async-signal-safe.
        unsafe { sigaction(sig, &action) }.with_context(|| format!("install {sig} handler"))?;
    }
    Ok(())
}

fn interrupted() -> anyhow::Result<()> {
    match SIGNALLED.load(Ordering::SeqCst) {
        0 => Ok(()),
        s => bail!("interrupted by signal {s}"),
    }
}

fn run_id() -> anyhow::Result<String> {
    let mut b = [0u8; 3];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    Ok(hex::encode(b))
}

/// Removes the workdir on drop unless asked to keep it or something is mounted below it.
struct Workdir {
    path: PathBuf,
    keep: bool,
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("harness: kept {}", self.path.display());
            return;
        }
        let mounts = leaks::mounts_under(&self.path);
        if !mounts.is_empty() {
            eprintln!(
                "harness: NOT removing {}: {} mounts remain below it",
                self.path.display(),
                mounts.len()
            );
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("harness: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Builds the images and pushes them from inside the netns; returns (build, push) times.
fn prepare_images(
    netns: &NodeNetns,
    registry: &mut RegistryServer,
    catalog_file: &Path,
) -> anyhow::Result<(Duration, Duration)> {
    let t = Instant::now();
    let host = HostBusybox::find()?;
    let built = images::build_all(&host)?;
    std::fs::write(catalog_file, images::catalog_json(&built)?)
        .with_context(|| format!("write {}", catalog_file.display()))?;
    let build_time = t.elapsed();
    interrupted()?;
    let t = Instant::now();
    netns.run_in(|| -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        rt.block_on(async {
            registry.wait_ready(Duration::from_secs(20)).await?;
            let client = RegistryClient::new(REGISTRY_ADDR)?;
            let pushes = built.iter().map(|img| {
                let client = &client;
                async move {
                    images::push(client, img)
                        .await
                        .with_context(|| format!("push {}", img.reference))
                }
            });
            futures::future::try_join_all(pushes).await?;
            interrupted()?;
            for img in &built {
                let info = images::info_of(img);
                let (_, body) = client.get_manifest(&img.repository, &img.tag).await?;
                if berth_e2e::oci::digest(&body) != info.digest {
                    bail!("registry serves another manifest for {}", img.reference);
                }
            }
            Ok(())
        })
    })??;
    Ok((build_time, t.elapsed()))
}

/// Runs the command inside the netns; returns its exit code (128+N for signal N).
fn run_command(opts: &Options, netns: &NodeNetns, envs: &[(&str, String)]) -> anyhow::Result<i32> {
    let ns = netns.open()?;
    let ns_fd = ns.as_raw_fd();
    let mut cmd = Command::new(&opts.command[0]);
    cmd.args(&opts.command[1..]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // SAFETY: runs in the forked child before exec and only calls setns(2) and
    // setpgid(2), which are async-signal-safe; `ns` stays open until after spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Its own process group, so that a stop reaches the tests and their daemons.
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("run {}", opts.command.join(" ")))?;
    drop(ns);
    let pid = child.id() as i32;
    CHILD.store(pid, Ordering::SeqCst);
    // A signal that arrived before CHILD was set is forwarded now.
    if SIGNALLED.load(Ordering::SeqCst) != 0 {
        let _ = kill(Pid::from_raw(-pid), Signal::SIGTERM);
    }
    let started = Instant::now();
    let mut termed_at: Option<Instant> = None;
    let mut killed = false;
    let mut last_reap = Instant::now();
    let code = loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => bail!("wait for the command: {e}"),
        }
        if last_reap.elapsed() > Duration::from_secs(2) {
            leaks::reap_zombies(&[pid]);
            last_reap = Instant::now();
        }
        if termed_at.is_none() && started.elapsed() > opts.timeout {
            eprintln!(
                "harness: command timed out after {:?}; SIGTERM",
                opts.timeout
            );
            let _ = kill(Pid::from_raw(-pid), Signal::SIGTERM);
            termed_at = Some(Instant::now());
        }
        if termed_at.is_none() && SIGNALLED.load(Ordering::SeqCst) != 0 {
            termed_at = Some(Instant::now());
        }
        if !killed && termed_at.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
            eprintln!("harness: command ignored SIGTERM for 30s; SIGKILL");
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    CHILD.store(0, Ordering::SeqCst);
    Ok(code)
}

/// Gives processes that are on their way out (a pod monitor whose pod was just removed)
/// up to 5 s to exit before the leak check looks, reaping them as they go.
fn settle(registry_pid: i32) {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        leaks::reap_zombies(&[registry_pid]);
        let procs = berth_e2e::process::all_processes();
        let busy = berth_e2e::process::descendants(&procs, me)
            .iter()
            .any(|p| p.pid != registry_pid && p.state != 'Z');
        if !busy || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("harness: error: {e:#}");
            ExitCode::from(if SIGNALLED.load(Ordering::SeqCst) != 0 {
                130
            } else {
                1
            })
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let opts = parse_args()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("the e2e harness needs root (network namespaces, mounts, cgroups)");
    }
    for bin in ["berth", "berth-monitor"] {
        let p = opts.bin_dir.join(bin);
        if !p.exists() {
            bail!(
                "{} is missing: build the binaries first (cargo build --workspace --bins) \
                 or pass --bin-dir",
                p.display()
            );
        }
    }
    install_signal_handlers()?;
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes no pointers; orphans of the run are
    // reparented to us so the leak check finds them.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        );
    }
    let total = Instant::now();
    let run_id = run_id()?;
    let workdir = Workdir {
        path: std::env::temp_dir().join(format!("be-{run_id}")),
        keep: opts.keep,
    };
    std::fs::create_dir(&workdir.path)
        .with_context(|| format!("create {}", workdir.path.display()))?;
    std::fs::set_permissions(
        &workdir.path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let baseline = Baseline::take();
    let netns = NodeNetns::create(&format!("{NETNS_PREFIX}{run_id}"))?;
    eprintln!(
        "harness: run {run_id}: netns {}, workdir {}, binaries from {}",
        netns.name(),
        workdir.path.display(),
        opts.bin_dir.display()
    );
    let mut registry = RegistryServer::start(&workdir.path.join("registry"), &netns)?;
    let registry_pid = registry.pid().map_or(0, |p| p as i32);
    let catalog = workdir.path.join("images.json");
    let (build, push) = prepare_images(&netns, &mut registry, &catalog)?;
    eprintln!(
        "harness: built {} test images in {:.2}s, pushed in {:.2}s",
        images::ALL.len(),
        build.as_secs_f64(),
        push.as_secs_f64()
    );
    interrupted()?;

    let envs = [
        (env::RUN_ID, run_id.clone()),
        (env::NETNS, netns.name().to_string()),
        (env::WORKDIR, workdir.path.display().to_string()),
        (env::BIN_DIR, opts.bin_dir.display().to_string()),
        (env::REGISTRY, REGISTRY_ADDR.to_string()),
        (env::IMAGES, catalog.display().to_string()),
    ];
    let t = Instant::now();
    let code = run_command(&opts, &netns, &envs)?;
    let command_time = t.elapsed();

    settle(registry_pid);
    let report = leaks::check(
        &Scope {
            run_id: &run_id,
            workdir: &workdir.path,
            harness_pid: std::process::id() as i32,
            expected_pids: vec![registry_pid],
            node_netns: &netns,
        },
        &baseline,
    );
    for w in &report.warnings {
        eprintln!("harness: warning: {w} (not attributable to this run)");
    }
    for l in &report.leaks {
        eprintln!("harness: LEAK: {l}");
    }
    let mut cleanup_errors = leaks::clean(&report.leaks);
    cleanup_errors.extend(leaks::remove_run_cgroup_parents(&run_id));
    if code != 0 {
        let log = std::fs::read_to_string(registry.log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        if !tail.is_empty() {
            eprintln!("harness: registry log (last lines):");
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
        }
    }
    registry.stop();
    drop(registry);
    if let Err(e) = netns.delete() {
        cleanup_errors.push(e.to_string());
    }
    for e in &cleanup_errors {
        eprintln!("harness: cleanup failed: {e}");
    }
    drop(workdir);

    let signalled = SIGNALLED.load(Ordering::SeqCst);
    eprintln!(
        "harness: command exited {code} after {:.1}s; {} leak(s); total {:.1}s",
        command_time.as_secs_f64(),
        report.leaks.len(),
        total.elapsed().as_secs_f64()
    );
    let exit = if signalled != 0 {
        130
    } else if code != 0 {
        code.clamp(1, 255)
    } else if !report.leaks.is_empty() || !cleanup_errors.is_empty() {
        eprintln!("harness: FAILED: the run left things behind (see LEAK lines above)");
        1
    } else {
        0
    };
    Ok(ExitCode::from(exit as u8))
}
