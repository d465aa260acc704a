//! Exec in a running container: the checks and the process every exec shares, and
//! ExecSync, whose output the daemon collects (each stream cut at [`MAX_EXEC_OUTPUT`]) with
//! its timeout. Streaming exec and attach are in `stream`.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::ExecSyncResponse;
use tokio::io::AsyncReadExt;

use crate::daemon::runtime::{PodEntry, Runtime};
use crate::error::{Error, Result};
use crate::protocol::{Request, Response};
use crate::sys;

/// The most ExecSync output kept per stream; the rest is read and dropped.
pub const MAX_EXEC_OUTPUT: usize = 16 << 20;

pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    sys::pipe().map_err(|e| Error::Sys("pipe".into(), e))
}

/// An exec ready to send: the request and the pod whose monitor runs it (see
/// [`Runtime::exec_target`]).
pub(crate) struct ExecTarget {
    /// The container's full id.
    pub(crate) container_id: String,
    /// The pod, whose monitor runs the exec.
    pub(crate) pod: Arc<PodEntry>,
    /// The `Exec` request.
    pub(crate) request: Request,
}

impl Runtime {
    /// The exec of `cmd` in the running container `id`: the container's process with `cmd`
    /// as its argv (with `TERM` set for a terminal, as containerd does) in the container's
    /// cgroups; its stdin a pipe when `stdin` (a terminal brings its own).
    pub(crate) fn exec_target(
        &self,
        id: &str,
        cmd: &[String],
        tty: bool,
        stdin: bool,
        timeout_ms: u64,
    ) -> Result<ExecTarget> {
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("exec command is empty".into()));
        }
        let (c, (process, cgroups)) = self.running_container(id, |rec| {
            let mut p = rec.spec.process.clone();
            p.args = cmd.to_vec();
            if tty && !p.env.iter().any(|e| e.starts_with("TERM=")) {
                p.env.push("TERM=xterm".into());
            }
            (p, rec.spec.cgroup_procs.clone())
        })?;
        let pod = self.pod_entry(&c.pod_id)?;
        Ok(ExecTarget {
            request: Request::Exec {
                id: c.id.clone(),
                process: Box::new(process),
                cgroup_procs: cgroups,
                timeout_ms,
                stdin: stdin && !tty,
                tty,
            },
            container_id: c.id.clone(),
            pod,
        })
    }

    /// Runs `cmd` in a running container with its ids, environment and working directory;
    /// returns its output (each stream cut at 16 MiB) and exit code. A zero `timeout` is no
    /// limit; past it the process is killed and the error is DeadlineExceeded.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecSyncResponse> {
        let ExecTarget {
            container_id,
            pod,
            request: req,
        } = self.exec_target(id, cmd, false, false, timeout.as_millis() as u64)?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let call_timeout = if timeout.is_zero() {
            Duration::from_secs(365 * 86400)
        } else {
            timeout + Duration::from_secs(30)
        };
        let client = pod.client.clone();
        let mut call = Box::pin(async move {
            use std::os::fd::AsRawFd;
            let fds = [out_w.as_raw_fd(), err_w.as_raw_fd()];
            let r = client.call_with(&req, &fds, call_timeout).await;
            drop((out_w, err_w));
            r
        });
        let mut out_rx = tokio::net::unix::pipe::Receiver::from_owned_fd(out_r)
            .map_err(|e| Error::Sys("pipe".into(), e))?;
        let mut err_rx = tokio::net::unix::pipe::Receiver::from_owned_fd(err_r)
            .map_err(|e| Error::Sys("pipe".into(), e))?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let (mut obuf, mut ebuf) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
        let (mut out_done, mut err_done) = (false, false);
        let mut answer: Option<Result<Response>> = None;
        // Output may be held open by a background child; once the exec has exited, wait for
        // the pipes only briefly.
        let grace = tokio::time::sleep(Duration::from_secs(365 * 86400));
        tokio::pin!(grace);
        loop {
            if answer.is_some() && out_done && err_done {
                break;
            }
            tokio::select! {
                r = &mut call, if answer.is_none() => {
                    grace.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
                    answer = Some(r);
                }
                n = out_rx.read(&mut obuf), if !out_done => match n {
                    Ok(0) | Err(_) => out_done = true,
                    Ok(n) => keep(&mut stdout, &obuf[..n]),
                },
                n = err_rx.read(&mut ebuf), if !err_done => match n {
                    Ok(0) | Err(_) => err_done = true,
                    Ok(n) => keep(&mut stderr, &ebuf[..n]),
                },
                _ = &mut grace, if answer.is_some() => break,
            }
        }
        match answer {
            Some(Ok(Response::ExecExited {
                timed_out: true, ..
            })) => Err(Error::DeadlineExceeded(format!(
                "command {cmd:?} in container {} timed out after {}s",
                container_id,
                timeout.as_secs()
            ))),
            Some(Ok(Response::ExecExited { exit, .. })) => Ok(ExecSyncResponse {
                stdout,
                stderr,
                exit_code: exit.exit_code,
            }),
            Some(Ok(other)) => Err(Error::Internal(format!(
                "unexpected answer to exec: {other:?}"
            ))),
            Some(Err(e)) => Err(e),
            None => Err(Error::Internal("exec ended without an answer".into())),
        }
    }
}

fn keep(buf: &mut Vec<u8>, data: &[u8]) {
    let room = MAX_EXEC_OUTPUT.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}
