//! The container's mounts: its overlay root (idmapped with a user namespace), the planned
//! binds and file systems, each target opened inside the root and refused where it lands
//! on procfs or sysfs, and the remounts that set their flags.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::{StepResult, ensure_in_root, fd_path, refused, step};
use crate::plan::{KernelFs, may_mount_on};
use crate::spec::{MountKind, MountOptions, MountSpec, Propagation};
use crate::sys::{self, RESOLVE_IN_ROOT, RESOLVE_NO_SYMLINKS, cpath, cvt};

/// The kernel file system `fd` is on, if it is procfs or sysfs.
pub(super) fn kernel_fs_of(fd: RawFd) -> io::Result<Option<KernelFs>> {
    let magic = sys::fs_magic(fd)?;
    Ok(if magic == libc::PROC_SUPER_MAGIC {
        Some(KernelFs::Proc)
    } else if magic == libc::SYSFS_MAGIC {
        Some(KernelFs::Sys)
    } else {
        None
    })
}

/// Whether `m` is the runtime's own procfs at `/proc` or sysfs at `/sys`: the only mounts
/// that may land on a kernel file system without [`may_mount_on`]'s leave.
fn is_runtime_kernel_fs(m: &MountSpec) -> bool {
    matches!(&m.kind, MountKind::Fs { fstype, .. }
        if (fstype == "proc" && m.destination == "/proc")
            || (fstype == "sysfs" && m.destination == "/sys"))
}

/// Refuses a mount whose target, as resolved inside the root, is on procfs or sysfs where
/// it may not be: an image symlink (`/etc/hosts -> /proc/thread-self/attr/...`) or a
/// volume could otherwise put a mount over a file the runtime or the kernel acts on.
pub(super) fn check_target_fs(target: &OwnedFd, m: &MountSpec, privileged: bool) -> StepResult {
    if is_runtime_kernel_fs(m) {
        return Ok(());
    }
    let fs = step(
        || format!("check the file system under {}", m.destination),
        kernel_fs_of(target.as_raw_fd()),
    )?;
    match fs {
        Some(fs) if !may_mount_on(fs, &m.destination, privileged) => refused(format!(
            "mount {}: its target resolves onto {fs}, where a volume cannot be mounted",
            m.destination
        )),
        _ => Ok(()),
    }
}

/// `mount(2)` with Rust strings; empty `data` is none.
pub(in crate::monitor) fn mount_raw(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let src = source
        .map(|s| CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL)))
        .transpose()?;
    let fst = fstype
        .map(|s| CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL)))
        .transpose()?;
    let dat = CString::new(data).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let tgt = cpath(target)?;
    // SAFETY: every pointer is a NUL-terminated string alive for the call, or null.
    let r = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            tgt.as_ptr(),
            fst.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                dat.as_ptr().cast()
            },
        )
    };
    cvt(r as libc::c_long).map(|_| ())
}

pub(super) fn propagation_flag(p: Propagation) -> libc::c_ulong {
    match p {
        Propagation::Private => libc::MS_PRIVATE,
        Propagation::Slave => libc::MS_SLAVE,
        Propagation::Shared => libc::MS_SHARED,
    }
}

fn option_flags(o: &MountOptions) -> libc::c_ulong {
    let mut f = 0;
    if o.readonly {
        f |= libc::MS_RDONLY;
    }
    if o.nosuid {
        f |= libc::MS_NOSUID;
    }
    if o.nodev {
        f |= libc::MS_NODEV;
    }
    if o.noexec {
        f |= libc::MS_NOEXEC;
    }
    f
}

/// The per-mount flags a mount has now, so a bind remount keeps them.
fn current_flags(path: &Path) -> libc::c_ulong {
    let Ok(c) = cpath(path) else { return 0 };
    // SAFETY: statvfs writes into the zeroed struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` and `st` outlive the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    let mut f = 0;
    for (st_flag, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
        (libc::ST_RDONLY, libc::MS_RDONLY),
    ] {
        if st.f_flag & st_flag != 0 {
            f |= ms;
        }
    }
    f
}

/// The overlay options for `lower` (and `upper` with its work dir).
pub(in crate::monitor) fn overlay_data(lower: &[PathBuf], upper: Option<(&Path, &Path)>) -> String {
    let mut data = String::from("lowerdir=");
    for (i, l) in lower.iter().enumerate() {
        if i > 0 {
            data.push(':');
        }
        data.push_str(&l.to_string_lossy());
    }
    if let Some((u, w)) = upper {
        data.push_str(&format!(
            ",upperdir={},workdir={}",
            u.display(),
            w.display()
        ));
    }
    data
}

/// Refuses a proc or sysfs mount whose target is a symlink in the image: resolved inside
/// the root it would still land on another directory of the image's choosing (one that a
/// volume or a later mount covers), while the masked paths and the process's own /proc
/// writes go through the link (CVE-2019-19921). runc refuses the same.
pub(super) fn check_kernel_fs_target(rootfd: RawFd, rel: &str, fstype: &str) -> StepResult {
    match sys::openat2(
        rootfd,
        Path::new(rel),
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
        RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS,
    ) {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => refused(format!(
            "/{rel} is a symlink in the image: {fstype} must be mounted on a directory"
        )),
        Ok(fd) => {
            // SAFETY: fstat on our fd into a zeroed struct we own.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0
                && st.st_mode & libc::S_IFMT == libc::S_IFLNK
            {
                return refused(format!(
                    "/{rel} is a symlink in the image: {fstype} must be mounted on a directory"
                ));
            }
            Ok(())
        }
        // Missing: created as a directory next.
        Err(_) => Ok(()),
    }
}

/// Mounts an overlay of `lower` (and `upper`) on `target`; with a user namespace, of the
/// layers idmapped with it: detached copies where the kernel takes them, else copies
/// mounted over the layers themselves when `in_place_ok` (nothing propagates to the node).
pub(super) fn mount_overlay(
    target: &Path,
    lower: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    flags: libc::c_ulong,
    userns: Option<RawFd>,
    in_place_ok: bool,
) -> io::Result<()> {
    let Some(ns) = userns else {
        return mount_raw(
            Some("overlay"),
            target,
            Some("overlay"),
            flags,
            &overlay_data(lower, upper),
        );
    };
    let layers = crate::monitor::userns::idmapped_layers(lower, ns).map_err(io::Error::other)?;
    match mount_raw(
        Some("overlay"),
        target,
        Some("overlay"),
        flags,
        &overlay_data(&layers.dirs, upper),
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && in_place_ok => {
            drop(layers);
            crate::monitor::userns::idmap_layers_in_place(lower, ns).map_err(io::Error::other)?;
            mount_raw(
                Some("overlay"),
                target,
                Some("overlay"),
                flags,
                &overlay_data(lower, upper),
            )
        }
        other => other,
    }
}

/// Binds `source` on the target `target` is open on: idmapped with the pod's user namespace
/// when there is one and the source's file system supports it (a plain bind otherwise,
/// logged: its files then show the owners they have on the node).
fn bind_source(source: &Path, target: &OwnedFd, userns: Option<RawFd>) -> io::Result<()> {
    if let Some(ns) = userns {
        match crate::monitor::userns::idmapped_tree(source, ns, true) {
            Ok(tree) => return sys::move_mount_to(&tree, target.as_raw_fd()),
            Err(e) => eprintln!(
                "berth-monitor: {} cannot be idmapped ({e}): bound without idmapping",
                source.display()
            ),
        }
    }
    mount_raw(
        Some(&source.to_string_lossy()),
        &fd_path(target),
        None,
        libc::MS_BIND | libc::MS_REC,
        "",
    )
}

pub(super) fn mount_one(
    rootfd: RawFd,
    m: &MountSpec,
    userns: Option<RawFd>,
    in_place_ok: bool,
    privileged: bool,
) -> StepResult {
    let userns = userns.filter(|_| crate::userns::idmapped(&m.kind));
    let rel = m.destination.trim_start_matches('/');
    if let MountKind::Fs { fstype, .. } = &m.kind
        && (fstype == "proc" || fstype == "sysfs")
    {
        check_kernel_fs_target(rootfd, rel, fstype)?;
    }
    let is_file = match &m.kind {
        MountKind::Bind { source, .. } => {
            let md = step(
                || format!("stat mount source {}", source.display()),
                std::fs::metadata(source),
            )?;
            !md.is_dir()
        }
        _ => false,
    };
    let target = step(
        || format!("create mount point {}", m.destination),
        ensure_in_root(rootfd, rel, is_file),
    )?;
    check_target_fs(&target, m, privileged)?;
    let tpath = fd_path(&target);
    let flags = option_flags(&m.options);
    match &m.kind {
        MountKind::Fs {
            fstype,
            source,
            data,
        } => {
            step(
                || format!("mount {fstype} on {}", m.destination),
                mount_raw(Some(source), &tpath, Some(fstype), flags, data),
            )?;
        }
        MountKind::Overlay { lower_dirs } if lower_dirs.len() == 1 => {
            step(
                || format!("bind image layer on {}", m.destination),
                bind_source(&lower_dirs[0], &target, userns),
            )?;
            remount(rootfd, rel, &m.destination, flags | libc::MS_RDONLY)?;
        }
        MountKind::Overlay { lower_dirs } => {
            step(
                || format!("mount image overlay on {}", m.destination),
                mount_overlay(
                    &tpath,
                    lower_dirs,
                    None,
                    flags | libc::MS_RDONLY,
                    userns,
                    in_place_ok,
                ),
            )?;
        }
        MountKind::Bind {
            source,
            propagation,
        } => {
            step(
                || format!("bind {} on {}", source.display(), m.destination),
                bind_source(source, &target, userns),
            )?;
            // The fd still names the covered directory: reopen to reach the new mount.
            let reopened = step(
                || format!("reopen {}", m.destination),
                ensure_in_root(rootfd, rel, is_file),
            )?;
            let rpath = fd_path(&reopened);
            if let Some(p) = propagation {
                step(
                    || format!("set propagation of {}", m.destination),
                    set_propagation(&rpath, propagation_flag(*p)),
                )?;
            }
            if flags != 0 {
                remount(rootfd, rel, &m.destination, flags)?;
            }
            if m.options.recursive_readonly {
                let again = step(
                    || format!("reopen {}", m.destination),
                    ensure_in_root(rootfd, rel, is_file),
                )?;
                step(
                    || format!("make {} recursively read-only", m.destination),
                    sys::mount_setattr_recursive_ro(&fd_path(&again)),
                )?;
            }
        }
    }
    Ok(())
}

fn remount(rootfd: RawFd, rel: &str, dest: &str, flags: libc::c_ulong) -> StepResult {
    let fd = step(
        || format!("reopen {dest}"),
        ensure_in_root(rootfd, rel, false).or_else(|_| ensure_in_root(rootfd, rel, true)),
    )?;
    remount_keeping(&fd_path(&fd), flags, || format!("remount {dest}"))
}

/// Remounts the bind mount at `path` with `flags` added to those it has now (a bind
/// remount would clear them); `what` names the step.
pub(super) fn remount_keeping(
    path: &Path,
    flags: libc::c_ulong,
    what: impl FnOnce() -> String,
) -> StepResult {
    let keep = current_flags(path);
    let all = libc::MS_BIND | libc::MS_REMOUNT | keep | flags;
    step(what, mount_raw(None, path, None, all, ""))
}

/// Sets the propagation (`MS_SHARED`, `MS_SLAVE` or `MS_PRIVATE`) of the mount at `path`
/// and of every mount below it.
pub(in crate::monitor) fn set_propagation(path: &Path, flag: libc::c_ulong) -> io::Result<()> {
    mount_raw(None, path, None, libc::MS_REC | flag, "")
}
