//! File descriptors that travel with the protocol's bytes as `SCM_RIGHTS`: an exec's stdio
//! with its request, an attach socket or a pty master with an answer, and a pty master from a
//! child the monitor forked, on its sync socket.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// The most fds one message carries (an exec passes three).
pub const MAX_FDS: usize = 4;

/// Sends `data` on `sock` with `fds` attached (none: a plain send) and `flags`; returns how
/// many bytes went, which on a stream socket may be fewer than `data`.
pub fn send_with_fds(
    sock: RawFd,
    data: &[u8],
    fds: &[RawFd],
    flags: MsgFlags,
) -> io::Result<usize> {
    let iov = [IoSlice::new(data)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(sock, &iov, cmsgs, flags, None).map_err(io::Error::from)
}

/// Receives bytes into `buf` with `flags`, and appends the fds that came with them (at most
/// [`MAX_FDS`], close-on-exec) to `fds`; returns how many bytes came (0: the peer closed).
pub fn recv_with_fds(
    sock: RawFd,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
    flags: MsgFlags,
) -> io::Result<usize> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock,
        &mut iov,
        Some(&mut space),
        flags | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(passed) = c {
            for fd in passed {
                // SAFETY: the kernel installed this fd for us; nothing else owns it.
                fds.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok(msg.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn fds_arrive_with_the_bytes_and_stay_usable() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut pipe_r, pipe_w) = std::io::pipe().unwrap();
        let sent = send_with_fds(
            a.as_raw_fd(),
            b"frame",
            &[pipe_w.as_raw_fd()],
            MsgFlags::MSG_NOSIGNAL,
        )
        .unwrap();
        assert_eq!(sent, 5);
        drop(pipe_w);
        let mut buf = [0u8; 16];
        let mut fds = VecDeque::new();
        let n = recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds, MsgFlags::empty()).unwrap();
        assert_eq!(&buf[..n], b"frame");
        assert_eq!(fds.len(), 1);
        // The passed write end reaches the pipe we kept the read end of.
        let w = std::fs::File::from(fds.pop_front().unwrap());
        std::io::Write::write_all(&mut &w, b"through").unwrap();
        drop(w);
        let mut got = String::new();
        pipe_r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "through");
    }

    #[test]
    fn a_closed_peer_reads_as_zero_bytes_without_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let mut fds = VecDeque::new();
        let n = recv_with_fds(b.as_raw_fd(), &mut [0u8; 8], &mut fds, MsgFlags::empty()).unwrap();
        assert_eq!(n, 0);
        assert!(fds.is_empty());
    }
}
