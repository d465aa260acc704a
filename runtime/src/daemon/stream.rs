//! What the streaming server gets from the runtime: an exec process wired to fds the daemon
//! holds, an attachment to a container's own stdio, and the pod's network namespace.
//!
//! The bytes of an exec never pass through the monitor: its stdin, stdout and stderr are
//! pipes the daemon made (or a pty the process opened in the container, whose master the
//! monitor hands over). Attach output does pass through the monitor, which owns the
//! container's stdio and copies each chunk it logs to every attacher.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use crate::daemon::client::OpenCall;
use crate::daemon::exec::{ExecTarget, pipe};
use crate::daemon::runtime::{Runtime, lock};
use crate::daemon::store::PodPhase;
use crate::error::{Error, Result};
use crate::protocol::{ExitStatus, Request, Response};

/// What a streaming request needs to know about a running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTarget {
    /// The container's pod.
    pub pod_id: String,
    /// It was created with `stdin`.
    pub stdin: bool,
    /// Its stdin closes after the first attach ends.
    pub stdin_once: bool,
    /// It runs on a pty.
    pub tty: bool,
}

/// An exec process started for a streaming client. Dropping it kills the process.
pub struct ExecSession {
    /// Where the process's input goes: a pipe's write end, or the pty master with a tty.
    /// Dropping it is EOF for a pipe.
    pub stdin: Option<OwnedFd>,
    /// The process's output: a pipe's read end, or the pty master with a tty.
    pub stdout: OwnedFd,
    /// The process's stderr (none with a tty).
    pub stderr: Option<OwnedFd>,
    /// The pty master with a tty, for the terminal size.
    pub tty: Option<OwnedFd>,
    call: OpenCall,
}

impl ExecSession {
    /// Waits for the process to exit (its output may still be buffered in the fds).
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        match self.call.next().await? {
            (Response::ExecExited { exit, .. }, _) => Ok(exit),
            (other, _) => Err(Error::Internal(format!(
                "unexpected answer to exec: {other:?}"
            ))),
        }
    }
}

/// An attachment to a container's own stdio.
pub struct AttachSession {
    /// A `SOCK_SEQPACKET` socket: each message is one [`crate::protocol::AttachStream`]
    /// byte and a chunk of output; EOF when the container exits.
    pub output: OwnedFd,
    /// Writable: the container's stdin pipe, or its pty master (also for the terminal size).
    pub stdin: Option<OwnedFd>,
}

impl Runtime {
    /// The container `id` if it exists and runs: `NotFound` or `FailedPrecondition` if not.
    pub fn stream_target(&self, id: &str) -> Result<StreamTarget> {
        let (c, (stdin, stdin_once, tty)) = self.running_container(id, |rec| {
            (rec.spec.stdin, rec.spec.stdin_once, rec.spec.tty)
        })?;
        Ok(StreamTarget {
            pod_id: c.pod_id.clone(),
            stdin,
            stdin_once,
            tty,
        })
    }

    /// Starts `cmd` in the running container `id` with its ids, environment, working
    /// directory, cgroup and security settings; on a new pty when `tty`, with a stdin pipe
    /// when `stdin` (otherwise /dev/null).
    pub async fn exec_stream(
        &self,
        id: &str,
        cmd: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<ExecSession> {
        let ExecTarget {
            pod, request: req, ..
        } = self.exec_target(id, cmd, tty, stdin, 0)?;
        if tty {
            let mut call = pod.client.open_call(&req, &[]).await?;
            let (resp, mut fds) = call.next().await?;
            if !matches!(resp, Response::ExecStarted) || fds.len() != 1 {
                return Err(Error::Internal(format!(
                    "unexpected answer to a tty exec: {resp:?} with {} fds",
                    fds.len()
                )));
            }
            let master = fds.remove(0);
            let dup = |what: &str| {
                master
                    .try_clone()
                    .map_err(|e| Error::Sys(format!("dup pty master for {what}"), e))
            };
            return Ok(ExecSession {
                stdin: stdin.then(|| dup("stdin")).transpose()?,
                stdout: dup("stdout")?,
                stderr: None,
                tty: Some(master),
                call,
            });
        }
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (in_r, in_w) = if stdin {
            let (r, w) = pipe()?;
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        let mut fds = Vec::with_capacity(3);
        fds.extend(in_r.as_ref().map(|f| f.as_raw_fd()));
        fds.push(out_w.as_raw_fd());
        fds.push(err_w.as_raw_fd());
        let call = pod.client.open_call(&req, &fds).await?;
        // The child ends now belong to the monitor's process: ours must go, or EOF never
        // comes.
        drop((in_r, out_w, err_w));
        Ok(ExecSession {
            stdin: in_w,
            stdout: out_r,
            stderr: Some(err_r),
            tty: None,
            call,
        })
    }

    /// Attaches to the running container `id`'s stdio; its stdin too when `stdin` and the
    /// container has one.
    pub async fn attach(&self, id: &str, stdin: bool) -> Result<AttachSession> {
        let target = self.stream_target(id)?;
        let pod = self.pod_entry(&target.pod_id)?;
        let mut call = pod
            .client
            .open_call(
                &Request::Attach {
                    id: id.to_string(),
                    stdin,
                },
                &[],
            )
            .await?;
        let (resp, mut fds) = call.next().await?;
        let Response::Attached { stdin: has_stdin } = resp else {
            return Err(Error::Internal(format!(
                "unexpected answer to attach: {resp:?}"
            )));
        };
        if fds.len() != 1 + has_stdin as usize {
            return Err(Error::Internal(format!(
                "attach answer carried {} fds",
                fds.len()
            )));
        }
        let output = fds.remove(0);
        Ok(AttachSession {
            output,
            stdin: fds.pop(),
        })
    }

    /// Closes the container's stdin for good (`stdin_once` after the first attach).
    pub async fn close_stdin(&self, id: &str) -> Result<()> {
        let target = self.stream_target(id)?;
        let pod = self.pod_entry(&target.pod_id)?;
        pod.client
            .call_ok(&Request::CloseStdin { id: id.to_string() })
            .await
    }

    /// The pod's network namespace file, or `None` when it uses the node's network:
    /// `NotFound` for an unknown pod, `FailedPrecondition` for one that is not ready.
    pub fn pod_netns(&self, pod_id: &str) -> Result<Option<PathBuf>> {
        let pod = self.pod_entry(pod_id)?;
        let rec = lock(&pod.rec);
        if rec.phase != PodPhase::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        Ok(self.own_netns(&rec))
    }
}
