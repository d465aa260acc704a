//! Starting a pod's monitor: the `berth-monitor` binary with the pod's new namespaces
//! unshared before exec, readiness reported on fd 3.
//!
//! Monitors run from a sealed in-memory copy of the binary, made once per daemon: the
//! monitor is PID 1 of its pod, so its `/proc/1/exe` is in reach of the pod's containers,
//! and it must not lead to the file on the host (CVE-2019-5736: a container that reopens
//! the runtime's binary for writing replaces it for the whole node). All monitors of a
//! daemon share the copy's pages, as they would share the file's.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};
use crate::monitor::READY_FD;
use crate::namespace::{Namespace, unshare_flags};
use crate::sys::cvt;

/// How long a monitor may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A sealed copy of `binary` in memory (memfd): no write, grow, shrink or new seal is
/// possible, so neither the copy nor the file behind it can be changed through it. Its fd
/// is above [`READY_FD`], which the monitor's fd 3 replaces before exec.
pub(crate) fn sealed_copy(binary: &Path) -> std::io::Result<OwnedFd> {
    let mut src = std::fs::File::open(binary)?;
    const MFD_EXEC: libc::c_uint = 0x10;
    let create = |flags: libc::c_uint| {
        // SAFETY: the name is a NUL-terminated literal; the result is checked.
        let fd = unsafe { libc::memfd_create(c"berth-monitor".as_ptr(), flags) };
        cvt(fd as libc::c_long).map(|fd| fd as i32)
    };
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // MFD_EXEC (Linux 6.3) keeps the copy executable where vm.memfd_noexec would not; older
    // kernels refuse the flag and make executable memfds anyway.
    let fd = create(base | MFD_EXEC).or_else(|e| match e.raw_os_error() {
        Some(libc::EINVAL) => create(base),
        _ => Err(e),
    })?;
    // SAFETY: a new fd that only we hold.
    let low = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: F_DUPFD_CLOEXEC on our fd; the result is checked and owned below.
    let fd =
        cvt(unsafe { libc::fcntl(low.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) } as libc::c_long)?;
    drop(low);
    // SAFETY: as above.
    let mut copy = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    std::io::copy(&mut src, &mut copy)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS on our fd with integer flags.
    cvt(unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } as libc::c_long)?;
    Ok(copy.into())
}

/// Starts the monitor from `exe` (the sealed copy of `binary`) and waits for its report;
/// returns its host PID.
pub(crate) async fn spawn_monitor(
    binary: &Path,
    exe: &OwnedFd,
    config: &Path,
    namespaces: &[Namespace],
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
    // The kernel opens the path before close-on-exec fds close; argv[0] stays the binary's
    // path, so the monitor reads as itself in ps and to the leak finder.
    let mut cmd = tokio::process::Command::new(format!("/proc/self/fd/{}", exe.as_raw_fd()));
    cmd.arg0(binary)
        .arg(config)
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
    fn the_sealed_copy_runs_and_cannot_be_written() {
        use std::io::Write;
        let copy = sealed_copy(Path::new("/bin/true")).unwrap();
        assert!(copy.as_raw_fd() > READY_FD);
        let path = format!("/proc/self/fd/{}", copy.as_raw_fd());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read("/bin/true").unwrap()
        );
        let status = std::process::Command::new(&path).status().unwrap();
        assert!(status.success());
        // Reopened for writing through /proc, as a container would try it.
        let write = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"#!/bin/sh\n"));
        assert!(write.is_err(), "the sealed copy took a write");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read("/bin/true").unwrap()
        );
    }
}
