//! Running one OCI hook (runtime spec, "POSIX-platform Hooks"): the program at `path` with
//! exactly its `args` and `env`, the container's state JSON on its stdin, its output kept
//! (bounded) for the error, killed when its `timeout` passes. Shared by the monitor and
//! the daemon, each of which runs the points whose namespaces it is in.
//!
//! Where each point runs (Berth's own executor; a handler's runtime runs the hooks in its
//! bundle itself). A hook is forked by a process already in the namespaces its point calls
//! for, since a process cannot enter a mount namespace once it is in another's PID
//! namespace or has pivoted:
//! - `createRuntime`: by the monitor (the node's mount namespace, the pod's others), while
//!   the container's setup child, its root built, waits before `pivot_root` for the
//!   monitor's word on its sync socket.
//! - `createContainer`: by that child, in the container's mount namespace (and PID
//!   namespace and cgroup) before `pivot_root`, so the root is still at its path on the
//!   node: a file a hook writes under `<bundle>/rootfs` is in the container. It runs with
//!   the node's privileges, before the child joins the pod's user namespace.
//! - `startContainer`: by that child once start is asked, after it took the container's
//!   ids, capabilities and seccomp filter and before it runs the container's program: the
//!   path is the container's, and what runs there is what the image holds, so it gets no
//!   more privilege than the container's own process.
//! - `poststart`: by the monitor once the container's program runs; a failure is logged.
//! - `poststop`: by the daemon after the container is removed, also when the pod's monitor
//!   is gone (the pod was stopped first) or outlived a restart, and again when a crash cut
//!   a removal short (at least once); a failure is logged.
//!
//! The state's `bundle` is the container's directory, which holds its `rootfs/` and, for a
//! container with hooks, its `config.json` (the daemon writes it: vendor hooks read the
//! root, environment, mounts and annotations there); its `annotations` are the container's
//! CRI annotations.
//!
//! A hook's program, arguments, environment and timeout come from files on the node (CDI
//! specs), which Berth does not trust: a hook that writes without end, never reads its
//! stdin, never exits, leaves a child holding its pipes, or asks for a timeout of years is
//! bounded here: its output is kept up to [`MAX_OUTPUT`] per stream (the rest is read and
//! dropped so that it does not block), and it is killed after at most [`MAX_TIMEOUT`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::spec::HookSpec;
use crate::sys;

/// The bytes of a hook's stdout and of its stderr that are kept; what it writes beyond is
/// read and dropped.
pub const MAX_OUTPUT: usize = 4096;

/// The longest a hook runs: the timeout a hook gets without one, and the most it can ask
/// for. The monitor serves the whole pod from one thread and waits for a hook to finish,
/// so a hook may not hold it for longer than a container's setup may take.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// How much of a failed hook's stderr goes into its error (kubelet shows the message).
const MAX_MESSAGE: usize = 1024;

/// The container's state as a hook reads it on stdin (runtime spec, "State").
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct State<'a> {
    /// The runtime spec version the state follows.
    pub oci_version: &'static str,
    /// The container's id.
    pub id: &'a str,
    /// Where the container is in its life.
    pub status: Status,
    /// The container's first process as the node sees it; absent once it is gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The container's directory (its `rootfs/` is the container's root before
    /// `pivot_root`); for Berth's own executor it holds the container's `config.json`
    /// (see [`bundle_of`]).
    pub bundle: &'a Path,
    /// The container's annotations (its CRI annotations).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: &'a BTreeMap<String, String>,
}

/// A container's status in [`State`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being built: `createRuntime` and `createContainer`.
    Creating,
    /// Built, its program not run yet: `startContainer`.
    Created,
    /// Its program runs: `poststart`.
    Running,
    /// Gone: `poststop`.
    Stopped,
}

impl<'a> State<'a> {
    /// The state of container `id` whose root file system is mounted at `rootfs` (its
    /// bundle is the directory that holds it) and whose annotations are `annotations`.
    pub fn new(
        id: &'a str,
        rootfs: &'a Path,
        annotations: &'a BTreeMap<String, String>,
        status: Status,
        pid: Option<i32>,
    ) -> Self {
        State {
            oci_version: crate::oci::OCI_VERSION,
            id,
            status,
            pid,
            bundle: bundle_of(rootfs),
            annotations,
        }
    }
}

/// The bundle the state names for a container of Berth's own executor whose root file
/// system is mounted at `rootfs`: the directory that holds it, where the daemon writes the
/// container's `config.json` when it has hooks (vendor hooks read it from there).
pub fn bundle_of(rootfs: &Path) -> &Path {
    rootfs.parent().unwrap_or(rootfs)
}

/// Why a hook failed. Each names the hook's program, so kubelet sees which one.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook as written cannot be run (relative path, an env entry without `=`,
    /// a zero timeout).
    #[error("hook {}: {reason}", path.display())]
    Invalid {
        /// The hook's program.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// It could not be started (no such program, not executable).
    #[error("hook {}: start", path.display())]
    Start {
        /// The hook's program.
        path: PathBuf,
        /// Why `execve` (or the fork) failed.
        #[source]
        source: io::Error,
    },
    /// Running it failed on Berth's side (pipes, poll, wait).
    #[error("hook {}: {what}", path.display())]
    Io {
        /// The hook's program.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// Its error.
        #[source]
        source: io::Error,
    },
    /// It ran past its timeout and was killed.
    #[error("hook {} timed out after {}s and was killed{}", path.display(), timeout.as_secs(), shown(output))]
    TimedOut {
        /// The hook's program.
        path: PathBuf,
        /// The timeout it had.
        timeout: Duration,
        /// What it wrote before.
        output: Box<Output>,
    },
    /// It exited with a non-zero code or was killed by a signal.
    #[error("hook {} {}{}", path.display(), ended(*status), shown(output))]
    Failed {
        /// The hook's program.
        path: PathBuf,
        /// How it ended.
        status: ExitStatus,
        /// What it wrote.
        output: Box<Output>,
    },
}

/// What a hook wrote, each stream cut at [`MAX_OUTPUT`] bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
    /// It wrote more than was kept on one of them.
    pub truncated: bool,
}

/// `exited with code N` or `was killed by signal N`.
fn ended(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => "ended".into(),
    }
}

/// `: <stderr>` (or stdout when stderr is empty), trimmed and cut at [`MAX_MESSAGE`]
/// bytes; nothing when the hook wrote nothing.
fn shown(output: &Output) -> String {
    let raw = if output.stderr.iter().all(u8::is_ascii_whitespace) {
        &output.stdout
    } else {
        &output.stderr
    };
    let text = String::from_utf8_lossy(raw);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let mut end = text.len().min(MAX_MESSAGE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = end < text.len() || output.truncated;
    format!(": {}{}", &text[..end], if cut { " [...]" } else { "" })
}

/// How long `hook` may run.
pub fn timeout_of(hook: &HookSpec) -> Duration {
    hook.timeout
        .map_or(MAX_TIMEOUT, |s| Duration::from_secs(s.into()))
        .min(MAX_TIMEOUT)
}

/// The longest `hooks` can take one after the other: what a process waiting for another
/// one that runs them adds to its own deadline.
pub fn budget(hooks: &[HookSpec]) -> Duration {
    hooks.iter().map(timeout_of).sum()
}

/// Runs `hooks` in order with `state` on their stdin; the first failure stops the rest.
/// Nothing is allocated when `hooks` is empty.
pub fn run_all(hooks: &[HookSpec], state: &State<'_>) -> Result<(), HookError> {
    let Some(first) = hooks.first() else {
        return Ok(());
    };
    let json = serde_json::to_vec(state).map_err(|e| HookError::Io {
        path: first.path.clone(),
        what: "encode the state",
        source: e.into(),
    })?;
    for hook in hooks {
        run(hook, &json)?;
    }
    Ok(())
}

/// Runs `hooks` in order with `state` on their stdin, each failure handed to `failed` and
/// the rest run anyway: `poststart` and `poststop`, whose failure undoes nothing.
pub fn run_each(hooks: &[HookSpec], state: &State<'_>, mut failed: impl FnMut(HookError)) {
    for hook in hooks {
        if let Err(e) = run_all(std::slice::from_ref(hook), state) {
            failed(e);
        }
    }
}

/// The error of a hook run at `point` (`createContainer`, ...), with its causes, on one
/// line.
pub fn message(point: &str, e: &HookError) -> String {
    format!("{point} {}", berth_db::commit::chain(e))
}

/// Runs one hook with `state` (JSON) on its stdin and waits until it exits or its timeout
/// passes; the output it wrote on success.
pub fn run(hook: &HookSpec, state: &[u8]) -> Result<Output, HookError> {
    let mut cmd = command(hook)?;
    let timeout = timeout_of(hook);
    let deadline = Instant::now() + timeout;
    let _pipe = IgnorePipe::new();
    let mut child = cmd.spawn().map_err(|source| HookError::Start {
        path: hook.path.clone(),
        source,
    })?;
    let io_err = |what, source| HookError::Io {
        path: hook.path.clone(),
        what,
        source,
    };
    let mut output = Output::default();
    match watch(&mut child, state, deadline, &mut output) {
        Ok(true) => {}
        Ok(false) => {
            kill(&mut child);
            return Err(HookError::TimedOut {
                path: hook.path.clone(),
                timeout,
                output: Box::new(output),
            });
        }
        Err((what, e)) => {
            kill(&mut child);
            return Err(io_err(what, e));
        }
    }
    let status = child.wait().map_err(|e| io_err("wait", e))?;
    if status.success() {
        Ok(output)
    } else {
        Err(HookError::Failed {
            path: hook.path.clone(),
            status,
            output: Box::new(output),
        })
    }
}

/// The command for `hook`: its program, its argv (`args[0]` included, `[path]` when
/// empty), exactly its environment, `/` as working directory, its stdio piped to us.
fn command(hook: &HookSpec) -> Result<Command, HookError> {
    let invalid = |reason: String| HookError::Invalid {
        path: hook.path.clone(),
        reason,
    };
    if !hook.path.is_absolute() {
        return Err(invalid("the path is not absolute".into()));
    }
    if hook.timeout == Some(0) {
        return Err(invalid("the timeout is zero".into()));
    }
    let mut cmd = Command::new(&hook.path);
    if let Some((arg0, rest)) = hook.args.split_first() {
        cmd.arg0(arg0).args(rest);
    }
    cmd.env_clear();
    for entry in &hook.env {
        let Some((key, value)) = entry.split_once('=') else {
            return Err(invalid(format!("environment entry {entry:?} has no '='")));
        };
        cmd.env(key, value);
    }
    cmd.current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the forked child before exec and makes only raw system
    // calls (async-signal-safe): no allocation, no lock.
    unsafe {
        cmd.pre_exec(move || {
            // A hook dies with the process that runs it (a container setup the monitor
            // killed), instead of living on in the pod.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            // The hook gets its three pipes and nothing else that the caller holds open.
            sys::cloexec_from(3)
        });
    }
    Ok(cmd)
}

/// SIGPIPE ignored while a hook runs (restored after): a hook that exits without reading
/// its stdin must fail our write, not kill the container's setup process, which has the
/// default action back.
struct IgnorePipe(libc::sighandler_t);

impl IgnorePipe {
    fn new() -> Self {
        // SAFETY: setting a signal's disposition to SIG_IGN.
        IgnorePipe(unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) })
    }
}

impl Drop for IgnorePipe {
    fn drop(&mut self) {
        if self.0 != libc::SIG_IGN && self.0 != libc::SIG_ERR {
            // SAFETY: restoring the disposition `signal` returned.
            unsafe { libc::signal(libc::SIGPIPE, self.0) };
        }
    }
}

/// Kills a hook and reaps it.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A failed step of [`watch`].
type Step = (&'static str, io::Error);

/// Feeds `state` to the hook's stdin and collects its output until it exits (`true`) or
/// `deadline` passes (`false`).
fn watch(
    child: &mut Child,
    state: &[u8],
    deadline: Instant,
    output: &mut Output,
) -> Result<bool, Step> {
    let pidfd = sys::pidfd_open(child.id() as i32).map_err(|e| ("pidfd_open", e))?;
    // As files, so that the three pipes are read and written alike.
    let mut stdin = child.stdin.take().map(|p| File::from(OwnedFd::from(p)));
    let mut stdout = child.stdout.take().map(|p| File::from(OwnedFd::from(p)));
    let mut stderr = child.stderr.take().map(|p| File::from(OwnedFd::from(p)));
    for fd in [
        stdin.as_ref().map(AsRawFd::as_raw_fd),
        stdout.as_ref().map(AsRawFd::as_raw_fd),
        stderr.as_ref().map(AsRawFd::as_raw_fd),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd).map_err(|e| ("set the pipes non-blocking", e))?;
    }
    let mut written = 0;
    if state.is_empty() {
        stdin = None;
    }
    let mut scratch = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut fds = [
            pollfd(pidfd.as_raw_fd(), libc::POLLIN),
            pollfd(stdin.as_ref().map_or(-1, AsRawFd::as_raw_fd), libc::POLLOUT),
            pollfd(stdout.as_ref().map_or(-1, AsRawFd::as_raw_fd), libc::POLLIN),
            pollfd(stderr.as_ref().map_or(-1, AsRawFd::as_raw_fd), libc::POLLIN),
        ];
        let ms = (left.as_millis() + 1).min(i32::MAX as u128) as i32;
        // SAFETY: polling pollfds we own (a negative fd is skipped).
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(("poll", e));
        }
        if fds[1].revents != 0
            && let Some(w) = stdin.as_mut()
        {
            match w.write(&state[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // It closed its stdin (or exited) without reading all: its choice.
                Err(_) => written = state.len(),
            }
            if written == state.len() {
                stdin = None;
            }
        }
        let exited = fds[0].revents != 0;
        for (i, pipe, keep) in [
            (2, &mut stdout, &mut output.stdout),
            (3, &mut stderr, &mut output.stderr),
        ] {
            if fds[i].revents != 0 || exited {
                // Once it exited, what is left is read (a child of its own may keep the
                // pipe open: its EOF is not waited for).
                if drain(pipe, keep, &mut output.truncated, &mut scratch) {
                    *pipe = None;
                }
            }
        }
        if exited {
            return Ok(true);
        }
    }
}

/// Reads what `pipe` has (up to a pipe's capacity) into `keep`, up to [`MAX_OUTPUT`] in
/// all; `true` at EOF or a read error.
fn drain<R: Read>(
    pipe: &mut Option<R>,
    keep: &mut Vec<u8>,
    truncated: &mut bool,
    scratch: &mut [u8],
) -> bool {
    let Some(r) = pipe.as_mut() else {
        return false;
    };
    // A pipe's worth per wake-up, so that a hook that writes without end cannot keep us
    // from its deadline.
    for _ in 0..16 {
        match r.read(scratch) {
            Ok(0) => return true,
            Ok(n) => {
                let room = MAX_OUTPUT - keep.len();
                keep.extend_from_slice(&scratch[..n.min(room)]);
                *truncated |= n > room;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    false
}

fn pollfd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we hold, with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    sys::cvt(flags.into())?;
    // SAFETY: as above.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    sys::cvt(r.into())?;
    Ok(())
}

#[cfg(test)]
mod tests;
