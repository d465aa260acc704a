//! The sync socket between the monitor and a child it forked: a `SOCK_SEQPACKET` pair on
//! which the child reports ready (with its host PID and pty master) or failed, and waits
//! for start.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::socket::MsgFlags;

use super::Failure;
use crate::protocol::Class;
use crate::protocol::fds::recv_with_fds;
use crate::sys::cvt;

/// A connected `SOCK_SEQPACKET` pair, close-on-exec.
pub(super) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into our array.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } as libc::c_long)?;
    // SAFETY: both fds are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits up to `timeout` for one message from a child on its sync socket. `Ok(None)` is EOF
/// (the child exec'd or died); a passed fd is returned with the bytes.
pub(super) fn recv_sync(
    sync: &OwnedFd,
    timeout: Duration,
) -> io::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
    let deadline = Instant::now() + timeout;
    while !wait_fd(sync.as_raw_fd(), libc::POLLIN, deadline)? {}
    let mut buf = vec![0u8; 4096];
    let mut passed = VecDeque::new();
    let n = recv_with_fds(sync.as_raw_fd(), &mut buf, &mut passed, MsgFlags::empty())?;
    if n == 0 {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some((buf, passed.pop_front())))
}

/// Waits until `fd` has one of `events` or `deadline` passes: `Ok(true)` when it is ready,
/// `Ok(false)` when the wait was cut short (a signal) and the caller should check again, and
/// `ETIMEDOUT` once the deadline has passed.
pub(super) fn wait_fd(fd: RawFd, events: i16, deadline: Instant) -> io::Result<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
    }
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // Rounded up: a wait of less than a millisecond must not become a busy poll.
    let ms = (left.as_millis() + 1).min(i32::MAX as u128) as i32;
    // SAFETY: polling one pollfd we own.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        n if n > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// The failure a child reported (`MSG_ERROR`, whether the request was at fault, the text).
pub(super) fn child_failure(msg: &[u8]) -> Failure {
    let invalid = msg.get(1) == Some(&1);
    let text = String::from_utf8_lossy(msg.get(2..).unwrap_or_default()).into_owned();
    (
        if invalid {
            Class::InvalidArgument
        } else {
            Class::Internal
        },
        text,
    )
}
