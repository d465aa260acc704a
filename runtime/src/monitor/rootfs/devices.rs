//! Device nodes: the standard nodes and links of the runtime's own `/dev`, and the devices
//! the container asked for, each made only in the container's own file system and never
//! through, or over, an entry the image or a volume planted.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::{StepResult, open_dir_in_root, refused, step};
use crate::spec::DeviceSpec;
use crate::sys::{self, cvt};

/// What is at `name` in `dirfd`, not following a symlink.
fn lstat_at(dirfd: RawFd, name: &CString) -> io::Result<libc::stat> {
    // SAFETY: fstatat writes into the zeroed struct we own; `name` outlives the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    cvt(rc as libc::c_long)?;
    Ok(st)
}

/// An entry that was already there where a device node or link was to be made.
#[derive(Debug)]
pub(super) enum Made {
    /// Made now, or it already was exactly that node or link.
    Ok,
    /// Something else is there (a symlink where a node goes, a file, another device).
    Other,
}

/// Makes the device node `name` in `dirfd`; an existing entry is accepted only if it is
/// already that very node (a planted symlink or file is never followed or reused).
pub(super) fn mknod_at(
    dirfd: RawFd,
    name: &str,
    mode: libc::mode_t,
    dev: libc::dev_t,
) -> io::Result<Made> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` outlives the call.
    let r = unsafe { libc::mknodat(dirfd, c.as_ptr(), mode, dev) };
    if r == 0 {
        return Ok(Made::Ok);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EEXIST) {
        return Err(e);
    }
    let st = lstat_at(dirfd, &c)?;
    let same = st.st_mode & libc::S_IFMT == mode & libc::S_IFMT && st.st_rdev == dev;
    Ok(if same { Made::Ok } else { Made::Other })
}

/// Makes the symlink `name -> target` in `dirfd`; an existing entry is accepted only if it
/// is already that link.
pub(super) fn symlink_at(dirfd: RawFd, target: &str, name: &str) -> io::Result<Made> {
    let t = CString::new(target).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: both strings outlive the call.
    let r = unsafe { libc::symlinkat(t.as_ptr(), dirfd, n.as_ptr()) };
    if r == 0 {
        return Ok(Made::Ok);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EEXIST) {
        return Err(e);
    }
    let mut buf = [0u8; 256];
    // SAFETY: readlinkat writes at most `buf.len()` bytes into our buffer.
    let len = unsafe { libc::readlinkat(dirfd, n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    Ok(if len >= 0 && &buf[..len as usize] == target.as_bytes() {
        Made::Ok
    } else {
        Made::Other
    })
}

/// The outcome of [`mknod_at`] or [`symlink_at`] as a step.
pub(super) fn made(what: &str, r: io::Result<Made>) -> StepResult {
    match step(|| what.to_string(), r)? {
        Made::Ok => Ok(()),
        Made::Other => refused(format!("{what}: something else is already there")),
    }
}

/// The standard nodes and links of the runtime's own `/dev` (a tmpfs it mounted), made
/// only there: a volume mounted at `/dev` gets none, as with runc.
pub(super) fn setup_default_dev(rootfd: RawFd) -> StepResult {
    let devfd = open_dir_in_root(rootfd, "dev")?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        made(
            &format!("mknod /dev/{name}"),
            mknod_at(
                devfd.as_raw_fd(),
                name,
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            ),
        )?;
    }
    for (target, name) in [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
        ("/proc/kcore", "core"),
    ] {
        made(
            &format!("symlink /dev/{name}"),
            symlink_at(devfd.as_raw_fd(), target, name),
        )?;
    }
    Ok(())
}

/// The kind, numbers and default mode of a device: as the daemon resolved them, or copied
/// from the host device.
fn node_of(d: &DeviceSpec) -> StepResult<(libc::mode_t, libc::dev_t)> {
    if let Some(n) = &d.node {
        let kind = match n.kind {
            'c' => libc::S_IFCHR,
            'b' => libc::S_IFBLK,
            'p' => libc::S_IFIFO,
            k => return refused(format!("device {}: unknown type {k:?}", d.container_path)),
        };
        return Ok((kind, libc::makedev(n.major as u32, n.minor as u32)));
    }
    let md = step(
        || format!("stat device {}", d.host_path.display()),
        std::fs::metadata(&d.host_path),
    )?;
    let kind = if md.file_type().is_char_device() {
        libc::S_IFCHR
    } else if md.file_type().is_block_device() {
        libc::S_IFBLK
    } else {
        return refused(format!("{} is not a device", d.host_path.display()));
    };
    Ok((kind, md.rdev() as libc::dev_t))
}

/// Gives a node made by [`mknod_at`] its exact mode (`mknod` is masked by the umask) and
/// owner, when the daemon decided them; the entry is that node, never a planted link.
fn finish_node(
    dirfd: RawFd,
    name: &str,
    d: &DeviceSpec,
    userns: Option<&crate::userns::UsernsSpec>,
) -> StepResult {
    let Some(n) = &d.node else { return Ok(()) };
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    let c = step(|| format!("name of {}", d.container_path), c)?;
    if let Some(mode) = n.file_mode {
        // SAFETY: `c` outlives the call; fchmodat never follows a link (there is none:
        // `mknod_at` checked the entry is the node).
        let rc = unsafe { libc::fchmodat(dirfd, c.as_ptr(), mode & 0o7777, 0) };
        step(
            || format!("chmod {}", d.container_path),
            cvt(rc as libc::c_long),
        )?;
    }
    if n.uid.is_some() || n.gid.is_some() {
        let map = |id: Option<u32>, f: fn(&crate::userns::UsernsSpec, u32) -> Option<u32>| {
            let id = id.unwrap_or(0);
            match userns {
                Some(u) => f(u, id),
                None => Some(id),
            }
        };
        let (Some(uid), Some(gid)) = (
            map(n.uid, crate::userns::UsernsSpec::host_uid),
            map(n.gid, crate::userns::UsernsSpec::host_gid),
        ) else {
            return refused(format!(
                "device {}: its owner is not mapped in the pod's user namespace",
                d.container_path
            ));
        };
        // SAFETY: as above; AT_SYMLINK_NOFOLLOW keeps the call on the entry itself.
        let rc = unsafe { libc::fchownat(dirfd, c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) };
        step(
            || format!("chown {}", d.container_path),
            cvt(rc as libc::c_long),
        )?;
    }
    Ok(())
}

/// The devices the container asked for. A node is made only in the container's own file
/// system (its writable layer or the runtime's `/dev`), never in a volume, whose files are
/// the node's; an entry already at its path must be that very device.
pub(super) fn setup_devices(
    rootfd: RawFd,
    own_fs: &[libc::dev_t],
    devices: &[DeviceSpec],
    userns: Option<&crate::userns::UsernsSpec>,
) -> StepResult {
    for d in devices {
        let (kind, rdev) = node_of(d)?;
        let mut mode = 0;
        if d.permissions.contains('r') {
            mode |= 0o444;
        }
        if d.permissions.contains('w') {
            mode |= 0o222;
        }
        let rel = d.container_path.trim_start_matches('/');
        let (parent, name) = match rel.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", rel),
        };
        let pdir = open_dir_in_root(rootfd, parent)?;
        let st = step(
            || format!("stat the directory of {}", d.container_path),
            sys::fstat(pdir.as_raw_fd()),
        )?;
        if !own_fs.contains(&st.st_dev) {
            return refused(format!(
                "device {}: its directory is on a volume, where no device node is made",
                d.container_path
            ));
        }
        made(
            &format!("mknod {}", d.container_path),
            mknod_at(pdir.as_raw_fd(), name, kind | mode, rdev),
        )?;
        finish_node(pdir.as_raw_fd(), name, d, userns)?;
    }
    Ok(())
}
