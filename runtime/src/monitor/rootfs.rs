//! The container's file system, built inside its new mount namespace: overlay root, the
//! planned mounts (each target resolved inside the root with `openat2(RESOLVE_IN_ROOT)`),
//! device nodes, `pivot_root`, masked and read-only paths. Runs in the forked child only.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::spec::{ContainerSpec, DeviceSpec, MountKind, MountOptions, MountSpec, Propagation};
use crate::sys::{self, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, cpath, cvt};

/// A failed step, with what was being done.
pub(crate) type StepResult<T = ()> = Result<T, String>;

fn step<T>(what: impl FnOnce() -> String, r: io::Result<T>) -> StepResult<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

pub(super) fn mount_raw(
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

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn propagation_flag(p: Propagation) -> libc::c_ulong {
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

pub(super) fn overlay_data(lower: &[PathBuf], upper: Option<(&Path, &Path)>) -> String {
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

/// Refuses a proc or sysfs mount whose target is a symlink in the image: resolved inside
/// the root it would still land on another directory of the image's choosing (one that a
/// volume or a later mount covers), while the masked paths and the process's own /proc
/// writes go through the link (CVE-2019-19921). runc refuses the same.
fn check_kernel_fs_target(rootfd: RawFd, rel: &str, fstype: &str) -> StepResult {
    match sys::openat2(
        rootfd,
        Path::new(rel),
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
        RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS,
    ) {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(format!(
            "/{rel} is a symlink in the image: {fstype} must be mounted on a directory"
        )),
        Ok(fd) => {
            // SAFETY: fstat on our fd into a zeroed struct we own.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0
                && st.st_mode & libc::S_IFMT == libc::S_IFLNK
            {
                return Err(format!(
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
fn mount_overlay(
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
    let layers = super::userns::idmapped_layers(lower, ns).map_err(io::Error::other)?;
    match mount_raw(
        Some("overlay"),
        target,
        Some("overlay"),
        flags,
        &overlay_data(&layers.dirs, upper),
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && in_place_ok => {
            drop(layers);
            super::userns::idmap_layers_in_place(lower, ns).map_err(io::Error::other)?;
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
        match super::userns::idmapped_tree(source, ns, true) {
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

fn mount_one(rootfd: RawFd, m: &MountSpec, userns: Option<RawFd>, in_place_ok: bool) -> StepResult {
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
                    mount_raw(None, &rpath, None, libc::MS_REC | propagation_flag(*p), ""),
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
    let p = fd_path(&fd);
    let keep = current_flags(&p);
    step(
        || format!("remount {dest}"),
        mount_raw(
            None,
            &p,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | keep | flags,
            "",
        ),
    )
}

fn mknod_at(dirfd: RawFd, name: &str, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` outlives the call.
    let r = unsafe { libc::mknodat(dirfd, c.as_ptr(), mode, dev) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

fn symlink_at(dirfd: RawFd, target: &str, name: &str) -> io::Result<()> {
    let t = CString::new(target).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: both strings outlive the call.
    let r = unsafe { libc::symlinkat(t.as_ptr(), dirfd, n.as_ptr()) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

/// The standard nodes and links of a container's /dev, then the requested devices.
fn setup_dev(rootfd: RawFd, devices: &[DeviceSpec]) -> StepResult {
    let dev = step(|| "open /dev".into(), ensure_in_root(rootfd, "dev", false))?;
    let devfd = step(
        || "open /dev".into(),
        sys::openat2(
            dev.as_raw_fd(),
            Path::new("."),
            libc::O_DIRECTORY | libc::O_RDONLY,
            0,
            0,
        ),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        step(
            || format!("mknod /dev/{name}"),
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
        step(
            || format!("symlink /dev/{name}"),
            symlink_at(devfd.as_raw_fd(), target, name),
        )?;
    }
    for d in devices {
        let md = step(
            || format!("stat device {}", d.host_path.display()),
            std::fs::metadata(&d.host_path),
        )?;
        let kind = if md.file_type().is_char_device() {
            libc::S_IFCHR
        } else if md.file_type().is_block_device() {
            libc::S_IFBLK
        } else {
            return Err(format!("{} is not a device", d.host_path.display()));
        };
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
        let pfd = step(
            || format!("create {}", d.container_path),
            ensure_in_root(rootfd, parent, false),
        )?;
        let pdir = step(
            || format!("open parent of {}", d.container_path),
            sys::openat2(
                pfd.as_raw_fd(),
                Path::new("."),
                libc::O_DIRECTORY | libc::O_RDONLY,
                0,
                0,
            ),
        )?;
        step(
            || format!("mknod {}", d.container_path),
            mknod_at(
                pdir.as_raw_fd(),
                name,
                kind | mode,
                md.rdev() as libc::dev_t,
            ),
        )?;
    }
    Ok(())
}

fn pivot(root: &Path) -> StepResult {
    let open_dir = |p: &Path| -> io::Result<OwnedFd> {
        sys::openat2(libc::AT_FDCWD, p, libc::O_DIRECTORY | libc::O_RDONLY, 0, 0)
    };
    let newroot = step(|| format!("open {}", root.display()), open_dir(root))?;
    let oldroot = step(|| "open /".into(), open_dir(Path::new("/")))?;
    // SAFETY: fchdir/pivot_root/umount2/chdir on fds and literals we own.
    unsafe {
        step(
            || "enter new root".into(),
            cvt(libc::fchdir(newroot.as_raw_fd()) as libc::c_long),
        )?;
        step(
            || "pivot_root".into(),
            cvt(libc::syscall(
                libc::SYS_pivot_root,
                c".".as_ptr(),
                c".".as_ptr(),
            )),
        )?;
        step(
            || "enter old root".into(),
            cvt(libc::fchdir(oldroot.as_raw_fd()) as libc::c_long),
        )?;
    }
    step(
        || "make old root a slave".into(),
        mount_raw(
            None,
            Path::new("."),
            None,
            libc::MS_SLAVE | libc::MS_REC,
            "",
        ),
    )?;
    // SAFETY: literals are NUL-terminated.
    unsafe {
        step(
            || "detach old root".into(),
            cvt(libc::umount2(c".".as_ptr(), libc::MNT_DETACH) as libc::c_long),
        )?;
        step(
            || "chdir /".into(),
            cvt(libc::chdir(c"/".as_ptr()) as libc::c_long),
        )?;
    }
    Ok(())
}

fn mask_paths(masked: &[String], readonly: &[String]) -> StepResult {
    for p in masked {
        let path = Path::new(p);
        match std::fs::metadata(path) {
            Ok(md) if md.is_dir() => step(
                || format!("mask {p}"),
                mount_raw(
                    Some("tmpfs"),
                    path,
                    Some("tmpfs"),
                    libc::MS_RDONLY,
                    "size=0k",
                ),
            )?,
            Ok(_) => step(
                || format!("mask {p}"),
                mount_raw(Some("/dev/null"), path, None, libc::MS_BIND, ""),
            )?,
            Err(_) => {}
        }
    }
    for p in readonly {
        let path = Path::new(p);
        if std::fs::symlink_metadata(path).is_err() {
            continue;
        }
        step(
            || format!("bind {p} read-only"),
            mount_raw(Some(p), path, None, libc::MS_BIND | libc::MS_REC, ""),
        )?;
        let keep = current_flags(path);
        step(
            || format!("remount {p} read-only"),
            mount_raw(
                None,
                path,
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | keep,
                "",
            ),
        )?;
    }
    Ok(())
}

/// Builds the container's file system and makes it the root. The caller has unshared the
/// mount namespace. With `userns` (the pod's user namespace) the image layers and binds are
/// idmapped with it and the writable layer belongs to the container's root.
pub(crate) fn setup(spec: &ContainerSpec, userns: Option<RawFd>) -> StepResult {
    let prop = propagation_flag(spec.root_propagation);
    step(
        || "set root propagation".into(),
        mount_raw(None, Path::new("/"), None, libc::MS_REC | prop, ""),
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
        return Err(format!(
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
        mount_one(rootfd.as_raw_fd(), m, userns, in_place_ok)?;
    }
    if spec.mounts.iter().any(|m| m.destination == "/dev") {
        setup_dev(rootfd.as_raw_fd(), &spec.devices)?;
    }
    drop(rootfd);
    pivot(root)?;
    let sec = &spec.process.security;
    if !sec.privileged {
        mask_paths(&sec.masked_paths, &sec.readonly_paths)?;
    }
    if spec.rootfs.readonly {
        let keep = current_flags(Path::new("/"));
        step(
            || "remount / read-only".into(),
            mount_raw(
                None,
                Path::new("/"),
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | keep,
                "",
            ),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options() {
        let l = vec![PathBuf::from("/a"), PathBuf::from("/b")];
        assert_eq!(overlay_data(&l, None), "lowerdir=/a:/b");
        assert_eq!(
            overlay_data(&l, Some((Path::new("/u"), Path::new("/w")))),
            "lowerdir=/a:/b,upperdir=/u,workdir=/w"
        );
    }

    #[test]
    fn ensure_creates_inside_root_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // A symlink pointing outside the root resolves inside it.
        std::os::unix::fs::symlink("/", root.join("escape")).unwrap();
        let rootfd = sys::openat2(
            libc::AT_FDCWD,
            &root,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            0,
        )
        .unwrap();
        ensure_in_root(rootfd.as_raw_fd(), "/escape/berth-test-dir/x", false).unwrap();
        assert!(root.join("berth-test-dir/x").is_dir());
        assert!(!Path::new("/berth-test-dir").exists());
        ensure_in_root(rootfd.as_raw_fd(), "etc/hostname", true).unwrap();
        assert!(root.join("etc/hostname").is_file());
    }

    #[test]
    fn proc_and_sys_must_not_be_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::create_dir_all(root.join("real/sys")).unwrap();
        std::os::unix::fs::symlink("/tmp", root.join("proc")).unwrap();
        std::os::unix::fs::symlink("real", root.join("link")).unwrap();
        let rootfd =
            sys::openat2(libc::AT_FDCWD, root, libc::O_PATH | libc::O_DIRECTORY, 0, 0).unwrap();
        let fd = rootfd.as_raw_fd();
        let e = check_kernel_fs_target(fd, "proc", "proc").unwrap_err();
        assert!(e.contains("/proc is a symlink"), "{e}");
        assert!(check_kernel_fs_target(fd, "link/sys", "sysfs").is_err());
        check_kernel_fs_target(fd, "tmp", "proc").unwrap();
        check_kernel_fs_target(fd, "missing", "sysfs").unwrap();
    }

    #[test]
    fn mount_point_lookup() {
        assert_eq!(
            mount_point_of(Path::new("/proc/self")),
            Some(PathBuf::from("/proc"))
        );
    }
}
