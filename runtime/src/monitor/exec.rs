//! Exec: a new process in a running container, forked by the monitor into the container's
//! cgroups and PID namespace; its answer comes when it exits (or its timeout kills it).

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::child::{self, ChildFds, MSG_ERROR, MSG_READY};
use super::container::devnull;
use super::reaper::reap_now;
use super::sync::{child_failure, recv_sync, seqpacket_pair};
use super::{Exec, Failure, Monitor, SETUP_TIMEOUT, err, sys_err};
use crate::protocol::{Class, Response};
use crate::spec::ProcessSpec;
use crate::sys;

/// How an exec's stdio is set up.
pub(super) struct ExecOptions {
    /// Kill it after this many milliseconds; 0 is no limit.
    pub timeout_ms: u64,
    /// Its stdin is the first fd passed (else /dev/null).
    pub stdin: bool,
    /// It runs on a new pty.
    pub tty: bool,
}

impl Monitor {
    /// Runs `process` in the running container `id` for the connection `client`, which
    /// hears `ExecExited` when it ends.
    pub(super) fn exec(
        &mut self,
        client: u64,
        id: &str,
        process: &ProcessSpec,
        cgroups: &[PathBuf],
        opts: ExecOptions,
    ) -> Result<(), Failure> {
        if process.args.is_empty() {
            return Err(err(Class::InvalidArgument, "exec with an empty command"));
        }
        // With a tty the child opens its own pty and these stay unused placeholders.
        let (stdin, stdout, stderr) = if opts.tty {
            let null = || devnull().map_err(|e| sys_err("open /dev/null", e));
            (null()?, null()?, null()?)
        } else {
            let c = self
                .client(client)
                .ok_or_else(|| err(Class::Internal, "client gone"))?;
            let stdin = if opts.stdin { c.fds.pop_front() } else { None };
            match (c.fds.pop_front(), c.fds.pop_front()) {
                (Some(o), Some(e)) if stdin.is_some() || !opts.stdin => {
                    let stdin = match stdin {
                        Some(fd) => fd,
                        None => devnull().map_err(|e| sys_err("open /dev/null", e))?,
                    };
                    (stdin, o, e)
                }
                _ => {
                    return Err(err(Class::InvalidArgument, "exec needs its stdio fds"));
                }
            }
        };
        let userns = self.userns.is_some();
        let c = self.container(id)?;
        if c.exit.is_some() || c.started_at == 0 {
            return Err(err(
                Class::FailedPrecondition,
                format!("container {id} is not running"),
            ));
        }
        let pidfd = c.pidfd.as_raw_fd();
        let switched = c.own_pidns;
        let (sync_parent, sync_child) = seqpacket_pair().map_err(|e| sys_err("socketpair", e))?;
        if switched {
            sys::setns(pidfd, libc::CLONE_NEWPID)
                .map_err(|e| sys_err("enter the container's pid namespace", e))?;
        }
        let fds = ChildFds {
            stdin: stdin.as_raw_fd(),
            stdout: stdout.as_raw_fd(),
            stderr: stderr.as_raw_fd(),
            sync: sync_child.as_raw_fd(),
        };
        let pid = self.fork_child(cgroups, switched, || {
            child::exec_main(process, cgroups, pidfd, opts.tty, userns, fds)
        })?;
        drop((stdin, stdout, stderr, sync_child));
        let mut sync_result = recv_sync(&sync_parent, SETUP_TIMEOUT);
        let mut master = None;
        if opts.tty
            && matches!(&sync_result, Ok(Some((msg, Some(_)))) if msg.first() == Some(&MSG_READY))
        {
            if let Ok(Some((_, fd))) = sync_result {
                master = fd;
            }
            sync_result = recv_sync(&sync_parent, SETUP_TIMEOUT);
        }
        match sync_result {
            Ok(None) if opts.tty && master.is_none() => {
                reap_now(pid);
                return Err(err(Class::Internal, "exec did not report its pty"));
            }
            Ok(None) => {}
            Ok(Some((msg, _))) if msg.first() == Some(&MSG_ERROR) => {
                reap_now(pid);
                return Err(child_failure(&msg));
            }
            other => {
                // SAFETY: our unreaped child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                reap_now(pid);
                return Err(err(
                    Class::Internal,
                    format!("exec did not start: {other:?}"),
                ));
            }
        }
        if let Some(m) = master {
            self.reply_fds(client, &Response::ExecStarted, &[m.as_raw_fd()]);
        }
        let deadline =
            (opts.timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(opts.timeout_ms));
        self.execs.push(Exec {
            pid,
            client,
            deadline,
            timed_out: false,
        });
        Ok(())
    }
}
