//! The container's file system, built inside its new mount namespace: overlay root, the
//! planned mounts (each target resolved inside the root with `openat2(RESOLVE_IN_ROOT)` and
//! refused where it lands on procfs or sysfs), device nodes, `pivot_root`, masked and
//! read-only paths. Runs in the forked child only.
//!
//! Everything a pod spec or an image controls is hostile here: a mount target, a volume at
//! `/dev`, a symlink planted where a device node or a masked path should be. So every
//! target is held by fd and checked with `fstat`/`fstatfs` for what the kernel says it is,
//! and what the runtime binds (the `/dev/null` that masks) is opened on the node before the
//! container's file system exists and bound through its fd, never looked up by path inside
//! the container (CVE-2025-31133).
//!
//! By concern: the planned [`mounts`] (overlay root, binds, kernel file systems), the
//! [`devices`] of the runtime's `/dev` and those the container asked for, and the
//! [`masked`] and read-only paths; here, the order of the steps, `pivot_root` and the
//! lookups inside the root they share.

mod devices;
mod masked;
mod mounts;
#[cfg(test)]
mod tests;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

pub(super) use mounts::{mount_raw, overlay_data, set_propagation};

use super::child::ChildError;
use crate::spec::{ContainerSpec, MountKind, Propagation};
use crate::sys::{self, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, cvt};
use devices::{setup_default_dev, setup_devices};
use masked::{NodeNull, mask_paths};
use mounts::{mount_one, mount_overlay, propagation_flag, remount_keeping};

/// A failed step of building the file system: whether the pod spec or the image was at
/// fault (the caller's `InvalidArgument`), and what was being done.
pub(crate) type StepResult<T = ()> = Result<T, ChildError>;

/// A step the kernel refused: the runtime's fault, unless a check below says otherwise.
fn step<T>(what: impl FnOnce() -> String, r: io::Result<T>) -> StepResult<T> {
    r.map_err(|e| (false, format!("{}: {e}", what())))
}

/// A step refused because of what the pod spec or the image asked for.
fn refused<T>(msg: String) -> StepResult<T> {
    Err((true, msg))
}

/// `/proc/self/fd/N` of `fd`: a path that reaches what the fd is open on.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens `rel` inside the root `rootfd` (symlinks resolved inside it), creating missing
/// directories, and the last component as an empty file when `file` is set.
pub(crate) fn ensure_in_root(rootfd: RawFd, rel: &str, file: bool) -> io::Result<OwnedFd> {
    let comps: Vec<&str> = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    let mut cur = sys::openat2(
        rootfd,
        Path::new("."),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        resolve,
    )?;
    for (i, c) in comps.iter().enumerate() {
        let prefix = comps[..=i].join("/");
        match sys::openat2(rootfd, Path::new(&prefix), libc::O_PATH, 0, resolve) {
            Ok(fd) => cur = fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let name =
                    CString::new(*c).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                let last = i + 1 == comps.len();
                if last && file {
                    // SAFETY: `name` outlives the call; the fd is closed right away.
                    let fd = unsafe {
                        libc::openat(
                            cur.as_raw_fd(),
                            name.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                            0o644,
                        )
                    };
                    cvt(fd as libc::c_long)?;
                    // SAFETY: closing the fd we just opened.
                    unsafe { libc::close(fd) };
                } else {
                    // SAFETY: `name` outlives the call.
                    let r = unsafe { libc::mkdirat(cur.as_raw_fd(), name.as_ptr(), 0o755) };
                    if r != 0 {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::EEXIST) {
                            return Err(e);
                        }
                    }
                }
                cur = sys::openat2(rootfd, Path::new(&prefix), libc::O_PATH, 0, resolve)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(cur)
}

/// The directory `rel` inside the root, made if missing, opened for `*at` calls.
fn open_dir_in_root(rootfd: RawFd, rel: &str) -> StepResult<OwnedFd> {
    let path = step(
        || format!("create /{rel}"),
        ensure_in_root(rootfd, rel, false),
    )?;
    step(
        || format!("open /{rel}"),
        sys::openat2(
            path.as_raw_fd(),
            Path::new("."),
            libc::O_DIRECTORY | libc::O_RDONLY,
            0,
            0,
        ),
    )
}

/// The mount point that holds `path` (longest mountinfo prefix).
fn mount_point_of(path: &Path) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<PathBuf> = None;
    for line in info.lines() {
        if let Some(mp) = line.split(' ').nth(4).map(sys::unescape_mountinfo) {
            let mp = PathBuf::from(mp);
            if path.starts_with(&mp)
                && best
                    .as_ref()
                    .is_none_or(|b| mp.as_os_str().len() > b.as_os_str().len())
            {
                best = Some(mp);
            }
        }
    }
    best
}

/// Makes `root` the root: `pivot_root` onto it and the old root detached.
fn pivot(root: &Path) -> StepResult {
    let open_dir = |p: &Path| -> io::Result<OwnedFd> {
        sys::openat2(libc::AT_FDCWD, p, libc::O_DIRECTORY | libc::O_RDONLY, 0, 0)
    };
    let newroot = step(|| format!("open {}", root.display()), open_dir(root))?;
    let oldroot = step(|| "open /".into(), open_dir(Path::new("/")))?;
    let call = |what: &str, r: libc::c_long| step(|| what.to_string(), cvt(r));
    // SAFETY: fchdir on fds we own; pivot_root with NUL-terminated literals.
    unsafe {
        call("enter new root", libc::fchdir(newroot.as_raw_fd()).into())?;
        call(
            "pivot_root",
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()),
        )?;
        call("enter old root", libc::fchdir(oldroot.as_raw_fd()).into())?;
    }
    step(
        || "make old root a slave".into(),
        set_propagation(Path::new("."), libc::MS_SLAVE),
    )?;
    // SAFETY: literals are NUL-terminated.
    unsafe {
        call(
            "detach old root",
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH).into(),
        )?;
        call("chdir /", libc::chdir(c"/".as_ptr()).into())?;
    }
    Ok(())
}

/// Builds the container's file system and makes it the root. The caller has unshared the
/// mount namespace. With `userns` (the pod's user namespace) the image layers and binds are
/// idmapped with it and the writable layer belongs to the container's root. `before_pivot`
/// runs once the root is complete, before `pivot_root` (the OCI hooks' point).
pub(crate) fn setup(
    spec: &ContainerSpec,
    userns: Option<RawFd>,
    before_pivot: impl FnOnce() -> StepResult,
) -> StepResult {
    let sec = &spec.process.security;
    let nulls = if sec.privileged {
        Vec::new()
    } else {
        let null = step(|| "open the node's /dev/null".into(), NodeNull::open())?;
        step(
            || "bind the node's /dev/null".into(),
            null.binds(sec.masked_paths.len()),
        )?
    };
    let prop = propagation_flag(spec.root_propagation);
    step(
        || "set root propagation".into(),
        set_propagation(Path::new("/"), prop),
    )?;
    let root = &spec.rootfs.mount_point;
    if spec.root_propagation == Propagation::Shared
        && let Some(parent) = root.parent().and_then(mount_point_of)
    {
        // pivot_root refuses a shared parent, and the overlay must not propagate to the host.
        step(
            || "make the rootfs parent private".into(),
            mount_raw(None, &parent, None, libc::MS_PRIVATE, ""),
        )?;
    }
    let data = overlay_data(
        &spec.rootfs.lower_dirs,
        Some((&spec.rootfs.upper_dir, &spec.rootfs.work_dir)),
    );
    if data.len() >= 4000 {
        return refused(format!(
            "overlay options for {} layers are too long",
            spec.rootfs.lower_dirs.len()
        ));
    }
    if let Some(u) = &spec.userns {
        // What the container creates lands in its upper dir with its root's host ids, as
        // copied-up files do (the idmapped layers show them so); the root directory of
        // the merged tree is the upper dir's.
        let (uid, gid) = u.host_root();
        step(
            || format!("chown {}", spec.rootfs.upper_dir.display()),
            std::os::unix::fs::chown(&spec.rootfs.upper_dir, Some(uid), Some(gid)),
        )?;
    }
    // Layers idmapped in place would propagate to the node through a shared root.
    let in_place_ok = spec.root_propagation != Propagation::Shared;
    step(
        || format!("mount overlay on {}", root.display()),
        mount_overlay(
            root,
            &spec.rootfs.lower_dirs,
            Some((&spec.rootfs.upper_dir, &spec.rootfs.work_dir)),
            0,
            userns.filter(|_| spec.userns.is_some()),
            in_place_ok,
        ),
    )?;
    let rootfd = step(
        || format!("open {}", root.display()),
        sys::openat2(libc::AT_FDCWD, root, libc::O_PATH | libc::O_DIRECTORY, 0, 0),
    )?;
    let userns = userns.filter(|_| spec.userns.is_some());
    for m in &spec.mounts {
        mount_one(rootfd.as_raw_fd(), m, userns, in_place_ok, sec.privileged)?;
    }
    let root_dev = step(|| "stat the root".into(), sys::fstat(rootfd.as_raw_fd()))?.st_dev;
    let mut own_fs = vec![root_dev];
    let runtime_dev = spec
        .mounts
        .iter()
        .rev()
        .find(|m| m.destination == "/dev")
        .is_some_and(|m| matches!(&m.kind, MountKind::Fs { fstype, .. } if fstype == "tmpfs"));
    if runtime_dev {
        setup_default_dev(rootfd.as_raw_fd())?;
        let dev = open_dir_in_root(rootfd.as_raw_fd(), "dev")?;
        own_fs.push(step(|| "stat /dev".into(), sys::fstat(dev.as_raw_fd()))?.st_dev);
    }
    setup_devices(
        rootfd.as_raw_fd(),
        &own_fs,
        &spec.devices,
        spec.userns.as_ref(),
    )?;
    drop(rootfd);
    before_pivot()?;
    pivot(root)?;
    if !sec.privileged {
        mask_paths(nulls, &sec.masked_paths, &sec.readonly_paths)?;
    }
    if spec.rootfs.readonly {
        remount_keeping(Path::new("/"), libc::MS_RDONLY, || {
            "remount / read-only".into()
        })?;
    }
    Ok(())
}
