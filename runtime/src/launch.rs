//! Starting a pod's monitor: the `berth-monitor` binary with the pod's new namespaces
//! unshared before exec, readiness reported on fd 3.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};
use crate::monitor::READY_FD;
use crate::sys::cvt;

/// How long a monitor may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The clone flags for the namespaces a pod owns.
pub(crate) fn unshare_flags(namespaces: &[String]) -> libc::c_int {
    namespaces.iter().fold(0, |f, ns| {
        f | match ns.as_str() {
            "net" => libc::CLONE_NEWNET,
            "ipc" => libc::CLONE_NEWIPC,
            "uts" => libc::CLONE_NEWUTS,
            "pid" => libc::CLONE_NEWPID,
            _ => 0,
        }
    })
}

/// Starts the monitor and waits for its report; returns its host PID.
pub(crate) async fn spawn_monitor(
    binary: &Path,
    config: &Path,
    namespaces: &[String],
    log: &Path,
) -> Result<i32> {
    let fail = |message: String| Error::MonitorStart {
        path: binary.to_owned(),
        message,
    };
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds into our array.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long)
        .map_err(|e| fail(format!("pipe: {e}")))?;
    // SAFETY: both fds are new and ours.
    let (ready_r, ready_w) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| fail(format!("open {}: {e}", log.display())))?;
    let flags = unshare_flags(namespaces);
    let wfd = ready_w.as_raw_fd();
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg(config)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls (setsid, unshare, dup2, fcntl, close_range) on integers it captured.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if flags != 0 && libc::unshare(flags) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if wfd == READY_FD {
                if libc::fcntl(READY_FD, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(wfd, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Nothing else of the daemon's reaches the monitor (close_range with
            // CLOSE_RANGE_CLOEXEC; on an old kernel the fds' own flags decide).
            libc::syscall(
                libc::SYS_close_range,
                READY_FD as u32 + 1,
                u32::MAX,
                1u32 << 2,
            );
            Ok(())
        });
    }
    let status = cmd.status().await.map_err(|e| fail(format!("exec: {e}")));
    drop(ready_w);
    let status = status?;
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r)
        .map_err(|e| fail(format!("pipe: {e}")))?;
    let mut report = String::new();
    match tokio::time::timeout(READY_TIMEOUT, rx.read_to_string(&mut report)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(fail(format!("read its report: {e}"))),
        Err(_) => return Err(fail(format!("no report within {READY_TIMEOUT:?}"))),
    }
    let report = report.trim();
    if let Some(pid) = report.strip_prefix("ok ") {
        return pid
            .trim()
            .parse()
            .map_err(|_| fail(format!("bad report {report:?}")));
    }
    if let Some(e) = report.strip_prefix("error: ") {
        return Err(fail(e.to_owned()));
    }
    Err(fail(if report.is_empty() {
        format!("it exited ({status}) without a report")
    } else {
        format!("bad report {report:?}")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        let ns = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            unshare_flags(&ns(&["net", "uts"])),
            libc::CLONE_NEWNET | libc::CLONE_NEWUTS
        );
        assert_eq!(unshare_flags(&ns(&[])), 0);
    }
}
