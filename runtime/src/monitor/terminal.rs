//! The terminal of a tty container or exec: a pty pair from the container's own devpts
//! instance, whose slave becomes the process's controlling terminal and stdio and whose
//! master goes to the monitor (which logs it and hands it to attachers). Runs in the forked
//! child, inside the container's mounts.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use crate::sys;

/// Opens the `ptmx` of the container's own devpts instance: resolved from the root with no
/// symlink on the way (the container's `/dev/ptmx` is a link it could replace) and checked
/// to be devpts's 5:2 before it is used.
fn open_ptmx() -> Result<std::os::fd::OwnedFd, String> {
    let fd = sys::openat2(
        libc::AT_FDCWD,
        Path::new("/dev/pts/ptmx"),
        libc::O_RDWR | libc::O_NOCTTY,
        0,
        sys::RESOLVE_IN_ROOT | sys::RESOLVE_NO_SYMLINKS,
    )
    .map_err(|e| format!("open /dev/pts/ptmx: {e}"))?;
    let magic = sys::fs_magic(fd.as_raw_fd()).map_err(|e| format!("check /dev/pts: {e}"))?;
    let st = sys::fstat(fd.as_raw_fd()).map_err(|e| format!("check /dev/pts/ptmx: {e}"))?;
    if magic != libc::DEVPTS_SUPER_MAGIC
        || st.st_mode & libc::S_IFMT != libc::S_IFCHR
        || st.st_rdev != libc::makedev(5, 2)
    {
        return Err("/dev/pts/ptmx is not the container's devpts".into());
    }
    Ok(fd)
}

/// Opens a pty pair from the container's own devpts; the slave becomes the controlling
/// terminal and stdio, the master is returned to be passed to the monitor.
pub(super) fn setup_tty() -> Result<RawFd, String> {
    use std::os::fd::IntoRawFd;
    let master = open_ptmx()?.into_raw_fd();
    // SAFETY: ioctl/dup2 on fds we own.
    unsafe {
        let mut unlock: libc::c_int = 0;
        if libc::ioctl(master, libc::TIOCSPTLCK, &mut unlock) != 0 {
            return Err(format!("unlock pty: {}", std::io::Error::last_os_error()));
        }
        const TIOCGPTPEER: libc::c_ulong = 0x5441;
        let slave = libc::ioctl(master, TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
        if slave < 0 {
            return Err(format!(
                "open pty peer: {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::ioctl(slave, libc::TIOCSCTTY, 0) != 0 {
            return Err(format!(
                "set controlling terminal: {}",
                std::io::Error::last_os_error()
            ));
        }
        for to in 0..3 {
            if libc::dup2(slave, to) < 0 {
                return Err(format!(
                    "set up tty stdio: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        if slave > 2 {
            libc::close(slave);
        }
        Ok(master)
    }
}
