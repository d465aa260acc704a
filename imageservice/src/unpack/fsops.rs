//! The file operations unpacking needs that `std` lacks: device nodes, extended
//! attributes and times set on a path without following a final symlink.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{OVERLAY_OPAQUE_XATTR, UnpackError, io_err};

pub(super) fn mkdir(path: &Path) -> Result<(), UnpackError> {
    fs::create_dir(path).map_err(io_err("create directory", path))
}

/// Removes whatever is at `path` (a directory recursively), never following a symlink.
pub(super) fn remove_any(path: &Path) -> Result<(), UnpackError> {
    let m = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    if m.is_dir() {
        fs::remove_dir_all(path).map_err(io_err("remove", path))
    } else {
        fs::remove_file(path).map_err(io_err("remove", path))
    }
}

pub(super) fn remove_existing(path: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(_) => remove_any(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("stat", path)(e)),
    }
}

pub(super) fn cpath(path: &Path) -> Result<CString, UnpackError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| UnpackError::Invalid(format!("NUL byte in path {}", path.display())))
}

pub(super) fn mknod(
    path: &Path,
    kind: libc::mode_t,
    perm: libc::mode_t,
    dev: libc::dev_t,
) -> Result<(), UnpackError> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call; mknod does not
    // retain the pointer.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | perm, dev) };
    if rc != 0 {
        return Err(io_err("mknod", path)(io::Error::last_os_error()));
    }
    Ok(())
}

pub(super) fn setxattr(path: &Path, name: &str, value: &[u8]) -> Result<(), UnpackError> {
    set_xattrs(path, &[(OsString::from(name), value.to_vec())])
}

pub(super) fn set_xattrs(path: &Path, xattrs: &[(OsString, Vec<u8>)]) -> Result<(), UnpackError> {
    if xattrs.is_empty() {
        return Ok(());
    }
    let c = cpath(path)?;
    for (name, value) in xattrs {
        let n = CString::new(name.as_bytes())
            .map_err(|_| UnpackError::Invalid("NUL byte in xattr name".into()))?;
        // SAFETY: both strings are valid and NUL-terminated; `value` is a live slice of
        // `value.len()` bytes; lsetxattr copies them and does not follow a final symlink.
        let rc = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // Like containerd: a filesystem without xattr support loses them, with a log.
            if e.raw_os_error() == Some(libc::ENOTSUP) {
                tracing::warn!(path = %path.display(), xattr = ?name, "xattr not supported, dropped");
                continue;
            }
            return Err(io_err("set xattr on", path)(e));
        }
    }
    Ok(())
}

pub(super) fn set_times_nofollow(path: &Path, mtime: SystemTime) -> io::Result<()> {
    let d = mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ts = libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as _,
    };
    let times = [ts, ts];
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated path and `times` two initialised timespecs,
    // both alive for the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads an extended attribute without following symlinks (`None` if absent).
pub fn get_xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0u8; 4096];
    let rc = lgetxattr(&c, &n, &mut buf);
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENODATA) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    buf.truncate(rc as usize);
    Ok(Some(buf))
}

pub(super) fn is_whiteout(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    m.file_type().is_char_device() && m.rdev() == 0
}

pub(super) fn is_opaque(dir: &Path) -> bool {
    let (Ok(c), Ok(n)) = (cpath(dir), CString::new(OVERLAY_OPAQUE_XATTR)) else {
        return false;
    };
    let mut v = [0u8; 2];
    let len = lgetxattr(&c, &n, &mut v);
    len == 1 && v[0] == b'y'
}

pub(super) fn xattrs_of(path: &Path) -> Vec<(OsString, Vec<u8>)> {
    let Ok(c) = cpath(path) else {
        return Vec::new();
    };
    let mut names = vec![0u8; 4096];
    // SAFETY: valid path; `names` is a live buffer of the length passed.
    let len = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if len <= 0 {
        return Vec::new();
    }
    names.truncate(len as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(n) = CString::new(name) else { continue };
        let mut value = vec![0u8; 65536];
        let len = lgetxattr(&c, &n, &mut value);
        if len >= 0 {
            value.truncate(len as usize);
            out.push((OsStr::from_bytes(name).to_owned(), value));
        }
    }
    out
}

/// `lgetxattr(2)`: the value of `name` on `path` (never following a final symlink) into
/// `buf`; its length, or -1 with `errno` set.
fn lgetxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> isize {
    // SAFETY: both strings are valid and NUL-terminated and `buf` is a live, writable
    // buffer of the length passed, all alive for the call, which keeps no pointer.
    unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    }
}
