//! Attach: the daemon gets a socket that carries the container's output (each message one
//! [`crate::protocol::AttachStream`] byte, then the bytes) and, when asked, a writable fd of
//! its stdin.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::logs::set_nonblocking;
use super::sync::seqpacket_pair;
use super::{Failure, Monitor, err, sys_err};
use crate::protocol::{Class, Response};

impl Monitor {
    /// Hands the daemon a socket carrying the container's output, and its stdin if asked.
    pub(super) fn attach(
        &mut self,
        client: u64,
        id: &str,
        want_stdin: bool,
    ) -> Result<(), Failure> {
        let c = self.container(id)?;
        if c.exit.is_some() || c.started_at == 0 {
            return Err(err(
                Class::FailedPrecondition,
                format!("container {id} is not running"),
            ));
        }
        let stdin = match (want_stdin, c.tty, &c.stdin) {
            (false, _, _) => Ok(None),
            (true, true, _) => c.outputs.first().map(|o| o.fd.try_clone()).transpose(),
            (true, false, Some(w)) => w.try_clone().map(Some),
            (true, false, None) => Ok(None),
        }
        .map_err(|e| sys_err("dup stdin", e))?;
        let (keep, give) = seqpacket_pair().map_err(|e| sys_err("socketpair", e))?;
        set_nonblocking(keep.as_raw_fd());
        grow_send_buffer(&keep);
        // SAFETY: shutting down the read side of our own socket: the daemon never writes.
        unsafe { libc::shutdown(keep.as_raw_fd(), libc::SHUT_RD) };
        c.attachers.push(keep);
        let mut fds = vec![give.as_raw_fd()];
        fds.extend(stdin.as_ref().map(|f| f.as_raw_fd()));
        self.reply_fds(
            client,
            &Response::Attached {
                stdin: stdin.is_some(),
            },
            &fds,
        );
        Ok(())
    }

    /// Drops the attacher whose socket `fd` is; false when `fd` is not an attacher's.
    pub(super) fn detach(&mut self, fd: RawFd) -> bool {
        for c in &mut self.containers {
            if let Some(i) = c.attachers.iter().position(|a| a.as_raw_fd() == fd) {
                c.attachers.remove(i);
                return true;
            }
        }
        false
    }
}

const ATTACH_SEND_BUFFER: libc::c_int = 1 << 20;

/// Makes room on an attach socket for `ATTACH_SEND_BUFFER` bytes (forced past the
/// system's limit where the monitor may).
fn grow_send_buffer(fd: &OwnedFd) {
    let size = ATTACH_SEND_BUFFER;
    for opt in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
        // SAFETY: setting an int socket option from a local.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}

/// Sends one attach message (`tag`, then `data`) without blocking; false when the attacher
/// is gone or too slow.
pub(super) fn send_tagged(sock: &OwnedFd, tag: u8, data: &[u8]) -> bool {
    let hdr = [tag];
    let iov = [io::IoSlice::new(&hdr), io::IoSlice::new(data)];
    nix::sys::socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[],
        nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .is_ok()
}
