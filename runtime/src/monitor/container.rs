//! A container's life in the monitor: create (fork the child that builds it, or run the
//! handler's OCI runtime), start, signal and remove.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use super::child::{self, ChildFds, MSG_ERROR, MSG_HOOKS, MSG_READY, MSG_RESUME, MSG_START};
use super::reaper::reap_now;
use super::sync::{child_failure, recv_sync, seqpacket_pair};
use super::{Container, Failure, Monitor, SETUP_TIMEOUT, err, logs, oci, sys_err};
use crate::hooks::{self, State, Status};
use crate::protocol::{Class, Response};
use crate::spec::{ContainerSpec, HookSpec, PidNamespace};
use crate::sys::{self, cvt, pipe};

/// The ends of a new container's stdio that its process gets (the monitor keeps the others).
pub(super) struct ChildStdio {
    /// The read end of its stdin pipe, or /dev/null.
    pub stdin: OwnedFd,
    /// The write end of its stdout pipe.
    pub stdout: OwnedFd,
    /// The write end of its stderr pipe.
    pub stderr: OwnedFd,
}

/// What the monitor keeps of a container's hooks for its start (Berth's own executor, and
/// only when it has some).
pub(super) struct StartHooks {
    /// Where the root file system is mounted (the state's bundle is its directory).
    rootfs: PathBuf,
    /// How much longer than a plain start the `startContainer` hooks may make it.
    start_budget: Duration,
    /// Run once the container's process runs.
    poststart: Vec<HookSpec>,
    /// The container's annotations, for the state `poststart` hooks read.
    annotations: BTreeMap<String, String>,
}

/// A container's first process as a create backend left it: set up, waiting to run the
/// container's program.
pub(super) struct Created {
    /// Its PID in the monitor's PID namespace (what `waitpid` reports).
    pub pid: i32,
    /// Its PID on the node.
    pub host_pid: i32,
    /// A pidfd of it, for signals and for exec to join its namespaces.
    pub pidfd: OwnedFd,
    /// It runs in a PID namespace of its own (or of another container), not the pod's.
    pub own_pidns: bool,
    /// The sync socket it waits on for start (Berth's own executor only).
    pub sync: Option<OwnedFd>,
    /// Its pty master, for a tty container.
    pub tty_master: Option<OwnedFd>,
}

impl Monitor {
    /// Creates a container (by Berth's own executor, or a handler's OCI runtime) and holds
    /// it, stopped before its program runs, with its output read into its log.
    pub(super) fn create(&mut self, spec: ContainerSpec) -> Result<Response, Failure> {
        if self.shutdown {
            return Err(err(Class::FailedPrecondition, "the pod is stopping"));
        }
        if self.containers.iter().any(|c| c.id == spec.id) {
            return Err(err(
                Class::FailedPrecondition,
                format!("container {} already exists", spec.id),
            ));
        }
        if spec.process.args.is_empty() {
            return Err(err(Class::InvalidArgument, "empty argv"));
        }
        let log = match &spec.log_path {
            Some(p) => Some(
                logs::open_log(p)
                    .map_err(|e| sys_err(&format!("open log file {}", p.display()), e))?,
            ),
            None => None,
        };
        let (out_r, out_w) = pipe().map_err(|e| sys_err("pipe", e))?;
        let (err_r, err_w) = pipe().map_err(|e| sys_err("pipe", e))?;
        logs::enlarge_pipe(out_r.as_raw_fd());
        logs::enlarge_pipe(err_r.as_raw_fd());
        let (stdin_child, stdin_keep) = if spec.stdin {
            let (r, w) = pipe().map_err(|e| sys_err("pipe", e))?;
            (r, Some(w))
        } else {
            (devnull().map_err(|e| sys_err("open /dev/null", e))?, None)
        };
        let stdio = ChildStdio {
            stdin: stdin_child,
            stdout: out_w,
            stderr: err_w,
        };
        let made = match &spec.oci {
            Some(rt) => self.create_oci(&spec, rt, stdio, &err_r)?,
            None => self.create_own(&spec, stdio)?,
        };
        let master = if spec.tty {
            Some(
                made.tty_master
                    .ok_or_else(|| err(Class::Internal, "no pty received"))?,
            )
        } else {
            None
        };
        let outputs = logs::container_outputs(master, out_r, err_r);
        self.containers.push(Container {
            id: spec.id.clone(),
            pid: made.pid,
            host_pid: made.host_pid,
            pidfd: made.pidfd,
            own_pidns: made.own_pidns,
            started_at: 0,
            exit: None,
            sync: made.sync,
            stdin: stdin_keep,
            tty: spec.tty,
            attachers: Vec::new(),
            log_path: spec.log_path.clone(),
            log,
            outputs,
            exit_file: self.cfg.containers_dir.join(&spec.id).join("exit"),
            start_hooks: start_hooks(&spec),
            oci: spec.oci,
        });
        Ok(Response::Created { pid: made.host_pid })
    }

    /// Berth's own executor: forks the child that builds the container (see
    /// [`child::container_main`]) and waits until it reports set up or failed.
    fn create_own(&mut self, spec: &ContainerSpec, stdio: ChildStdio) -> Result<Created, Failure> {
        let (sync_parent, sync_child) = seqpacket_pair().map_err(|e| sys_err("socketpair", e))?;
        let (switched, own_pidns) = match &spec.pid_ns {
            PidNamespace::Container => {
                // SAFETY: unshare with a flag; affects only children we fork next.
                cvt(unsafe { libc::unshare(libc::CLONE_NEWPID) } as libc::c_long)
                    .map_err(|e| sys_err("unshare pid namespace", e))?;
                (true, true)
            }
            PidNamespace::Target { container_id } => {
                let t = self.container(container_id)?;
                if t.exit.is_some() {
                    return Err(err(
                        Class::FailedPrecondition,
                        format!("target container {container_id} is not running"),
                    ));
                }
                sys::setns(t.pidfd.as_raw_fd(), libc::CLONE_NEWPID).map_err(|e| {
                    sys_err(&format!("enter the pid namespace of {container_id}"), e)
                })?;
                (true, true)
            }
            PidNamespace::Pod | PidNamespace::Node => (false, false),
        };
        let fds = ChildFds {
            stdin: stdio.stdin.as_raw_fd(),
            stdout: stdio.stdout.as_raw_fd(),
            stderr: stdio.stderr.as_raw_fd(),
            sync: sync_child.as_raw_fd(),
        };
        let userns = self.userns.as_ref().map(|f| f.as_raw_fd());
        let pid = self.fork_child(&spec.cgroup_procs, switched, || {
            child::container_main(spec, fds, userns)
        })?;
        drop((stdio, sync_child));
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                reap_now(pid);
                return Err(sys_err("pidfd_open", e));
            }
        };
        // The createContainer hooks run in the child, within its setup.
        let setup_timeout = SETUP_TIMEOUT + hooks::budget(&spec.hooks.create_container);
        let mut report = recv_sync(&sync_parent, setup_timeout);
        if let Ok(Some((msg, _))) = &report
            && msg.first() == Some(&MSG_HOOKS)
            && msg.len() >= 5
        {
            let host_pid = i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
            if let Err(e) = create_runtime(spec, host_pid, &sync_parent) {
                let _ = sys::pidfd_send_signal(&pidfd, libc::SIGKILL);
                reap_now(pid);
                return Err(e);
            }
            report = recv_sync(&sync_parent, setup_timeout);
        }
        let (host_pid, tty_master) = match report {
            Ok(Some((msg, fd))) if msg.first() == Some(&MSG_READY) && msg.len() >= 5 => {
                (i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]), fd)
            }
            Ok(Some((msg, _))) if msg.first() == Some(&MSG_ERROR) => {
                reap_now(pid);
                return Err(child_failure(&msg));
            }
            Ok(_) => {
                reap_now(pid);
                return Err(err(
                    Class::Internal,
                    "container setup ended without a report",
                ));
            }
            Err(e) => {
                let _ = sys::pidfd_send_signal(&pidfd, libc::SIGKILL);
                reap_now(pid);
                return Err(sys_err("container setup", e));
            }
        };
        Ok(Created {
            pid,
            host_pid,
            pidfd,
            own_pidns,
            sync: Some(sync_parent),
            tty_master,
        })
    }

    /// Forks a child into `cgroups` that runs `child`, which ends in exec or exit. With
    /// `switched`, the monitor has entered another PID namespace for this child (its
    /// children are born there) and goes back to its own once the child is forked.
    pub(super) fn fork_child(
        &self,
        cgroups: &[PathBuf],
        switched: bool,
        child: impl FnOnce() -> Infallible,
    ) -> Result<i32, Failure> {
        // SAFETY: the monitor is single-threaded, so the child may run arbitrary code.
        let pid = unsafe { sys::fork_into_cgroup(cgroups) };
        if pid == 0 {
            // It never returns: the child ends in exec or exit.
            child();
        }
        let fork_err = io::Error::last_os_error();
        // Back to our own namespace for later children (allowed: it is our active one).
        if switched && let Err(e) = sys::setns(self.self_pidns.as_raw_fd(), libc::CLONE_NEWPID) {
            eprintln!("berth-monitor: restore pid namespace: {e}");
        }
        if pid < 0 {
            return Err(sys_err("fork", fork_err));
        }
        Ok(pid)
    }

    /// Lets a created container run its program.
    pub(super) fn start(&mut self, id: &str) -> Result<Response, Failure> {
        if self.container(id)?.oci.is_some() {
            return self.start_oci(id);
        }
        let c = self.container(id)?;
        if c.exit.is_some() {
            return Err(err(
                Class::FailedPrecondition,
                format!("container {id} has exited"),
            ));
        }
        let Some(sync) = c.sync.take() else {
            return Err(err(
                Class::FailedPrecondition,
                format!("container {id} is already started"),
            ));
        };
        send_byte(&sync, MSG_START).map_err(|e| sys_err("signal start", e))?;
        let extra = c
            .start_hooks
            .as_ref()
            .map_or(Duration::ZERO, |h| h.start_budget);
        match recv_sync(&sync, SETUP_TIMEOUT + extra) {
            Ok(None) => {
                c.started_at = sys::now_ns();
                let started_at = c.started_at;
                if let Some(h) = &c.start_hooks {
                    let state = State::new(
                        id,
                        &h.rootfs,
                        &h.annotations,
                        Status::Running,
                        Some(c.host_pid),
                    );
                    hooks::run_each(&h.poststart, &state, |e| {
                        let msg = hooks::message("poststart", &e);
                        eprintln!("berth-monitor: container {id}: {msg}");
                    });
                }
                Ok(Response::Started { started_at })
            }
            Ok(Some((msg, _))) if msg.first() == Some(&MSG_ERROR) => {
                // It exits right after its report (a startContainer hook or a last step
                // failed): its exit is recorded before the answer, so that the removal
                // that follows a failed start finds it exited, not running.
                let pid = c.pid;
                let mut status = 0;
                // SAFETY: waiting for our own child, which is ending.
                if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
                    self.reaped(pid, status);
                }
                Err(child_failure(&msg))
            }
            Ok(Some(_)) => Err(err(
                Class::Internal,
                "unexpected message from the container",
            )),
            Err(e) => Err(sys_err("start", e)),
        }
    }

    /// Signals a container's first process (a container that has exited: nothing to do).
    pub(super) fn kill(&mut self, id: &str, signal: i32) -> Result<(), Failure> {
        if !(1..=64).contains(&signal) {
            return Err(err(
                Class::InvalidArgument,
                format!("invalid signal {signal}"),
            ));
        }
        let c = self.container(id)?;
        if c.exit.is_some() {
            return Ok(());
        }
        if c.sync.is_some() && signal == libc::SIGKILL {
            // Never started: dropping the sync socket makes it exit before running anything.
            c.sync = None;
        }
        match sys::pidfd_send_signal(&c.pidfd, signal) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(sys_err("signal", e)),
        }
    }

    /// Forgets an exited (or never started) container.
    pub(super) fn remove(&mut self, id: &str) -> Result<(), Failure> {
        let c = self.container(id)?;
        if c.exit.is_none() {
            if c.oci.is_some() && c.started_at == 0 {
                // Created by the runtime, never started: its process waits to exec.
                let _ = sys::pidfd_send_signal(&c.pidfd, libc::SIGKILL);
                let pid = c.pid;
                reap_now(pid);
            } else if c.sync.is_some() {
                // Created, never started: it waits on the sync socket; let it go and kill it.
                c.sync = None;
                let _ = sys::pidfd_send_signal(&c.pidfd, libc::SIGKILL);
                let pid = c.pid;
                reap_now(pid);
            } else {
                return Err(err(
                    Class::FailedPrecondition,
                    format!("container {id} is running"),
                ));
            }
        }
        if let Some(rt) = &c.oci {
            oci::delete(rt, id);
        }
        self.containers.retain(|c| c.id != id);
        Ok(())
    }
}

/// What a container created by Berth's own executor needs of its hooks at start; `None`
/// (nothing kept) without `startContainer` or `poststart` hooks.
fn start_hooks(spec: &ContainerSpec) -> Option<Box<StartHooks>> {
    let h = &spec.hooks;
    if spec.oci.is_some() || (h.start_container.is_empty() && h.poststart.is_empty()) {
        return None;
    }
    Some(Box::new(StartHooks {
        rootfs: spec.rootfs.mount_point.clone(),
        start_budget: hooks::budget(&h.start_container),
        poststart: h.poststart.clone(),
        annotations: spec.annotations.clone(),
    }))
}

/// Runs the `createRuntime` hooks in the monitor (the node's mount namespace, the pod's
/// others) while the child waits before `pivot_root`, and lets it go on; a failing hook
/// fails the create (the caller kills the child).
fn create_runtime(spec: &ContainerSpec, host_pid: i32, sync: &OwnedFd) -> Result<(), Failure> {
    let state = State::new(
        &spec.id,
        &spec.rootfs.mount_point,
        &spec.annotations,
        Status::Creating,
        Some(host_pid),
    );
    hooks::run_all(&spec.hooks.create_runtime, &state)
        .map_err(|e| err(Class::Internal, hooks::message("createRuntime", &e)))?;
    send_byte(sync, MSG_RESUME).map_err(|e| sys_err("resume the container's setup", e))
}

/// Sends a one-byte message to a child waiting on its sync socket.
fn send_byte(sync: &OwnedFd, msg: u8) -> io::Result<()> {
    // SAFETY: sending one byte on our socket.
    let n = unsafe {
        libc::send(
            sync.as_raw_fd(),
            [msg].as_ptr().cast(),
            1,
            libc::MSG_NOSIGNAL,
        )
    };
    if n != 1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `/dev/null` for reading: the stdin of a process that gets none.
pub(super) fn devnull() -> io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .open("/dev/null")?
        .into())
}
