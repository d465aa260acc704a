//! The pod monitor: one small single-threaded process per pod that holds the pod's
//! namespaces, creates and reaps its containers, writes their CRI logs and serves the daemon
//! on a unix socket (see [`crate::protocol`]). Everything here runs in the `berth-monitor`
//! process, never in the daemon.
//!
//! The daemon starts the `berth-monitor` binary with the pod's new namespaces already
//! unshared; [`launch`] forks once so that the monitor is PID 1 of the pod's PID namespace and
//! not the daemon's child, then the monitor reports readiness on fd 3.
//!
//! By concern, as in conmon-rs: entry and state (here), [`setup`] once at start, the poll
//! loop ([`server`]), request dispatch and answers ([`dispatch`]), container create, start,
//! kill and remove ([`container`], and [`oci`] for RuntimeClass handlers), [`exec`],
//! [`attach`], the child reaper ([`reaper`]), container output and logs ([`logs`]), the sync
//! socket with a forked child ([`sync`]), and, in the forked child, [`child`] with its
//! [`rootfs`], [`terminal`] and [`userns`] steps.

mod attach;
mod child;
mod container;
mod dispatch;
mod exec;
mod logs;

pub(crate) use logs::open_log;
mod memory;
mod oci;
mod reaper;
mod rootfs;
mod server;
mod setup;
mod sync;
mod terminal;
mod userns;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::protocol::{Class, ExitStatus, FrameReader, MonitorConfig};
use crate::sys;
use logs::Output;

/// The fd on which the daemon waits for `ok <pid>` or `error: <message>`.
pub const READY_FD: RawFd = 3;

/// How long a container's (or an exec's) setup may take before create fails.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Entry point of the `berth-monitor` binary: `berth-monitor <monitor.json>`.
/// Returns the process exit code.
pub fn launch(args: &[String]) -> i32 {
    let Some(config_path) = args.get(1) else {
        eprintln!("usage: berth-monitor <monitor.json>");
        return 2;
    };
    // Not dumpable: the pod's processes see the monitor (PID 1 of the pod) and the children
    // it forks for containers until they exec, and reaching their /proc entries (exe, fds,
    // memory) now takes CAP_SYS_PTRACE. exec makes a container's process dumpable again.
    // It runs from a sealed copy named by its fd; ps and top show the binary's name.
    // SAFETY: prctl with integer arguments and a NUL-terminated literal.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"berth-monitor".as_ptr(), 0, 0, 0);
    }
    // Fork once: the child is PID 1 of the PID namespace the daemon unshared for us (if any)
    // and is adopted by init when we exit, so it outlives the daemon.
    // Born in its cgroup where the kernel allows (the rest are joined in `setup`).
    let cfg = std::fs::read(config_path)
        .ok()
        .and_then(|t| serde_json::from_slice::<MonitorConfig>(&t).ok());
    // A user-namespaced pod: the daemon unshared nothing. Its net, ipc and uts namespaces
    // are made inside its user namespace; its PID namespace (owned by the node's: a PID
    // namespace cannot be joined before it has an init) is unshared here, after the helper
    // that made the others is gone, and the child below is born into all of them.
    let userns = match cfg.as_ref().and_then(|c| c.userns.as_ref().map(|u| (c, u))) {
        Some((c, u)) => {
            let flags = crate::namespace::unshare_flags(&c.namespaces);
            let made = userns::create_pod_namespaces(flags, u).and_then(|fd| {
                if flags & libc::CLONE_NEWPID != 0
                    // SAFETY: unshare with a flag; single-threaded.
                    && unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0
                {
                    return Err(format!(
                        "unshare the pid namespace: {}",
                        io::Error::last_os_error()
                    ));
                }
                Ok(fd)
            });
            match made {
                Ok(fd) => Some(fd),
                Err(e) => {
                    report_ready(&format!("error: {e}"));
                    return 1;
                }
            }
        }
        None => None,
    };
    let cgroups = cfg.map(|c| c.cgroup_procs).unwrap_or_default();
    // SAFETY: single-threaded here; the child only continues this program.
    match unsafe { sys::fork_into_cgroup(&cgroups) } {
        -1 => {
            report_ready(&format!("error: fork: {}", io::Error::last_os_error()));
            1
        }
        0 => run(Path::new(config_path), userns),
        _ => {
            // SAFETY: closing our copy of the readiness fd so only the monitor holds it.
            unsafe { libc::close(READY_FD) };
            0
        }
    }
}

fn report_ready(msg: &str) {
    let line = format!("{msg}\n");
    // SAFETY: writing our buffer to the readiness fd, then closing it.
    unsafe {
        libc::write(READY_FD, line.as_ptr().cast(), line.len());
        libc::close(READY_FD);
    }
}

struct Client {
    id: u64,
    stream: UnixStream,
    reader: FrameReader,
    fds: VecDeque<OwnedFd>,
    subscribed: bool,
    closed: bool,
}

struct Container {
    id: String,
    pid: i32,
    host_pid: i32,
    pidfd: OwnedFd,
    own_pidns: bool,
    started_at: i64,
    exit: Option<ExitStatus>,
    sync: Option<OwnedFd>,
    /// The write end of the container's stdin pipe, held so the container does not see
    /// EOF until `CloseStdin`; attachers get a duplicate to write to.
    stdin: Option<OwnedFd>,
    /// The container runs on a pty (its master is `outputs[0]` while it is open).
    tty: bool,
    /// Attach output sockets: every output chunk is copied to each; closed at exit.
    attachers: Vec<OwnedFd>,
    log_path: Option<PathBuf>,
    log: Option<std::fs::File>,
    outputs: Vec<Output>,
    exit_file: PathBuf,
    /// Run by an external OCI runtime (a RuntimeClass handler), see [`oci`].
    oci: Option<crate::spec::OciRuntimeSpec>,
    /// Its `startContainer` and `poststart` hooks, when it has some.
    start_hooks: Option<Box<container::StartHooks>>,
}

struct Exec {
    pid: i32,
    client: u64,
    deadline: Option<Instant>,
    timed_out: bool,
}

struct Monitor {
    cfg: MonitorConfig,
    host_pid: i32,
    listener: UnixListener,
    sigfd: OwnedFd,
    self_pidns: OwnedFd,
    clients: Vec<Client>,
    containers: Vec<Container>,
    execs: Vec<Exec>,
    next_client: u64,
    pollfds: Vec<libc::pollfd>,
    /// One read buffer for every output stream (kept off the stack, allocated once).
    readbuf: Vec<u8>,
    /// The records framed from what a wake-up read, written in one `write` (`logs::flush_log`).
    logbuf: Vec<u8>,
    /// When to trim the resident set next, set by activity since the last trim.
    next_trim: Option<Instant>,
    shutdown: bool,
    /// The pod's own user namespace, which its containers join; `None`: the node's.
    userns: Option<OwnedFd>,
}

/// A failed call: its class on the wire and the message.
type Failure = (Class, String);

/// A failure of `class`.
fn err(class: Class, msg: impl Into<String>) -> Failure {
    (class, msg.into())
}

/// An internal failure: `what` failed with `e`.
fn sys_err(what: &str, e: impl std::fmt::Display) -> Failure {
    (Class::Internal, format!("{what}: {e}"))
}

fn run(config_path: &Path, userns: Option<OwnedFd>) -> i32 {
    memory::tune_malloc();
    let mut m = match setup::setup(config_path, userns) {
        Ok(m) => m,
        Err(e) => {
            report_ready(&format!("error: {e}"));
            return 1;
        }
    };
    report_ready(&format!("ok {}", m.host_pid));
    // The daemon's CreateContainer and StartContainer usually follow within milliseconds
    // and run much of the same code: the first trim waits until the pod is quiet.
    m.schedule_trim();
    m.serve();
    m.cleanup();
    0
}

impl Monitor {
    /// The container `id`, or NotFound.
    fn container(&mut self, id: &str) -> Result<&mut Container, Failure> {
        self.containers
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or_else(|| {
                err(
                    Class::NotFound,
                    format!("container {id} not found in this pod"),
                )
            })
    }
}
