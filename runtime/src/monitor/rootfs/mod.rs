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

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::child::ChildError;
use crate::plan::{KernelFs, may_mount_on};
use crate::spec::{ContainerSpec, DeviceSpec, MountKind, MountOptions, MountSpec, Propagation};
use crate::sys::{self, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, cpath, cvt};

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

/// The node's `/dev/null`, opened before the container's file system exists and checked to
/// be the character device 1:3: what masks a file, bound by fd.
struct NodeNull(OwnedFd);

impl NodeNull {
    /// Opens and checks it, in the child's new mount namespace before anything of the
    /// container is mounted (what it sees there is still the node's).
    fn open() -> io::Result<NodeNull> {
        let fd = sys::openat2(
            libc::AT_FDCWD,
            Path::new("/dev/null"),
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
            RESOLVE_NO_SYMLINKS,
        )?;
        let st = sys::fstat(fd.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != libc::makedev(1, 3) {
            return Err(io::Error::other(
                "/dev/null is not the character device 1:3",
            ));
        }
        Ok(NodeNull(fd))
    }

    /// `n` detached binds of it, made while its mount is still in this namespace (after
    /// `pivot_root` detaches the old root, it no longer is and cannot be cloned), to be
    /// attached one per masked file.
    fn binds(&self, n: usize) -> io::Result<Vec<OwnedFd>> {
        (0..n)
            .map(|_| sys::open_tree_clone_fd(self.0.as_raw_fd()))
            .collect()
    }
}

/// The kernel file system `fd` is on, if it is procfs or sysfs.
fn kernel_fs_of(fd: RawFd) -> io::Result<Option<KernelFs>> {
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
fn check_target_fs(target: &OwnedFd, m: &MountSpec, privileged: bool) -> StepResult {
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

fn mount_one(
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
enum Made {
    /// Made now, or it already was exactly that node or link.
    Ok,
    /// Something else is there (a symlink where a node goes, a file, another device).
    Other,
}

/// Makes the device node `name` in `dirfd`; an existing entry is accepted only if it is
/// already that very node (a planted symlink or file is never followed or reused).
fn mknod_at(dirfd: RawFd, name: &str, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<Made> {
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
fn symlink_at(dirfd: RawFd, target: &str, name: &str) -> io::Result<Made> {
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
fn made(what: &str, r: io::Result<Made>) -> StepResult {
    match step(|| what.to_string(), r)? {
        Made::Ok => Ok(()),
        Made::Other => refused(format!("{what}: something else is already there")),
    }
}

/// The standard nodes and links of the runtime's own `/dev` (a tmpfs it mounted), made
/// only there: a volume mounted at `/dev` gets none, as with runc.
fn setup_default_dev(rootfd: RawFd) -> StepResult {
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

/// The devices the container asked for. A node is made only in the container's own file
/// system (its writable layer or the runtime's `/dev`), never in a volume, whose files are
/// the node's; an entry already at its path must be that very device.
fn setup_devices(rootfd: RawFd, own_fs: &[libc::dev_t], devices: &[DeviceSpec]) -> StepResult {
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
            return refused(format!("{} is not a device", d.host_path.display()));
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

/// Opens the masked or read-only path `p` inside the new root, by fd, with no symlink on the
/// way: `None` when it does not exist. A symlink there is refused: masking through it would
/// hide, or bind over, whatever it names.
fn open_masked(root: &OwnedFd, p: &str) -> StepResult<Option<OwnedFd>> {
    let rel = p.trim_start_matches('/');
    match sys::openat2(
        root.as_raw_fd(),
        Path::new(if rel.is_empty() { "." } else { rel }),
        // Not O_NOFOLLOW: that would open a final symlink itself, where
        // RESOLVE_NO_SYMLINKS refuses it.
        libc::O_PATH,
        0,
        RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS,
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            refused(format!("masked or read-only path {p} is a symlink"))
        }
        Err(e) => Err((false, format!("open {p}: {e}"))),
    }
}

/// Checks that the container's `/proc` is the procfs the runtime mounted (no volume or
/// image symlink can stand there by now), so that `/proc/self/fd/N` names our own fds.
fn check_own_proc(root: &OwnedFd) -> StepResult {
    let proc_fd = step(
        || "open /proc".into(),
        sys::openat2(
            root.as_raw_fd(),
            Path::new("proc"),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
            RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS,
        ),
    )?;
    match step(|| "check /proc".into(), kernel_fs_of(proc_fd.as_raw_fd()))? {
        Some(KernelFs::Proc) => Ok(()),
        _ => Err((false, "/proc is not the container's procfs".into())),
    }
}

/// Masks `masked` (a read-only empty tmpfs over a directory, the node's `/dev/null` bound
/// by fd over anything else) and makes `readonly` read-only. Runs after `pivot_root`; every
/// path is opened inside the new root without following a symlink.
fn mask_paths(mut nulls: Vec<OwnedFd>, masked: &[String], readonly: &[String]) -> StepResult {
    let root = step(
        || "open /".into(),
        sys::openat2(
            libc::AT_FDCWD,
            Path::new("/"),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            0,
        ),
    )?;
    check_own_proc(&root)?;
    for p in masked {
        let Some(fd) = open_masked(&root, p)? else {
            continue;
        };
        let st = step(|| format!("stat {p}"), sys::fstat(fd.as_raw_fd()))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            step(
                || format!("mask {p}"),
                mount_raw(
                    Some("tmpfs"),
                    &fd_path(&fd),
                    Some("tmpfs"),
                    libc::MS_RDONLY,
                    "size=0k",
                ),
            )?;
        } else {
            let Some(tree) = nulls.pop() else {
                return Err((false, format!("mask {p}: no /dev/null bind left")));
            };
            step(
                || format!("mask {p}"),
                sys::move_mount_to(&tree, fd.as_raw_fd()),
            )?;
        }
    }
    for p in readonly {
        let Some(fd) = open_masked(&root, p)? else {
            continue;
        };
        let path = fd_path(&fd);
        step(
            || format!("bind {p} read-only"),
            mount_raw(
                Some(&path.to_string_lossy()),
                &path,
                None,
                libc::MS_BIND | libc::MS_REC,
                "",
            ),
        )?;
        // The fd still names the covered object: reopen to reach the new mount.
        let Some(again) = open_masked(&root, p)? else {
            return Err((false, format!("{p} vanished while made read-only")));
        };
        let again = fd_path(&again);
        let keep = current_flags(&again);
        step(
            || format!("remount {p} read-only"),
            mount_raw(
                None,
                &again,
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
    setup_devices(rootfd.as_raw_fd(), &own_fs, &spec.devices)?;
    drop(rootfd);
    pivot(root)?;
    if !sec.privileged {
        mask_paths(nulls, &sec.masked_paths, &sec.readonly_paths)?;
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
        let (invalid, e) = check_kernel_fs_target(fd, "proc", "proc").unwrap_err();
        assert!(invalid && e.contains("/proc is a symlink"), "{e}");
        assert!(check_kernel_fs_target(fd, "link/sys", "sysfs").is_err());
        check_kernel_fs_target(fd, "tmp", "proc").unwrap();
        check_kernel_fs_target(fd, "missing", "sysfs").unwrap();
    }

    #[test]
    fn the_node_null_is_the_character_device() {
        let null = NodeNull::open().unwrap();
        let st = sys::fstat(null.0.as_raw_fd()).unwrap();
        assert_eq!(st.st_rdev, libc::makedev(1, 3));
    }

    #[test]
    fn kernel_file_systems_are_told_by_the_kernel() {
        let open =
            |p: &str| sys::openat2(libc::AT_FDCWD, Path::new(p), libc::O_PATH, 0, 0).unwrap();
        assert_eq!(
            kernel_fs_of(open("/proc/self/status").as_raw_fd()).unwrap(),
            Some(KernelFs::Proc)
        );
        assert_eq!(
            kernel_fs_of(open("/sys/kernel").as_raw_fd()).unwrap(),
            Some(KernelFs::Sys)
        );
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            kernel_fs_of(open(d.path().to_str().unwrap()).as_raw_fd()).unwrap(),
            None
        );
        // A volume's mount resolving onto procfs is refused; the runtime's own /proc is not.
        let vol = MountSpec {
            destination: "/etc/hosts".into(),
            kind: MountKind::Bind {
                source: "/x".into(),
                propagation: None,
            },
            options: MountOptions::default(),
        };
        let (invalid, e) = check_target_fs(&open("/proc/self/attr"), &vol, false).unwrap_err();
        assert!(
            invalid && e.contains("mount /etc/hosts: its target resolves onto procfs"),
            "{e}"
        );
        let proc = MountSpec {
            destination: "/proc".into(),
            kind: MountKind::Fs {
                fstype: "proc".into(),
                source: "proc".into(),
                data: String::new(),
            },
            options: MountOptions::default(),
        };
        check_target_fs(&open("/proc"), &proc, false).unwrap();
        let sys_vol = MountSpec {
            destination: "/sys/fs/bpf".into(),
            ..vol
        };
        assert!(check_target_fs(&open("/sys/kernel"), &sys_vol, false).is_err());
        check_target_fs(&open("/sys/kernel"), &sys_vol, true).unwrap();
    }

    #[test]
    fn planted_entries_are_never_taken_for_device_nodes_or_links() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/proc/sys/kernel/core_pattern", d.path().join("null")).unwrap();
        std::fs::write(d.path().join("zero"), b"").unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("fd")).unwrap();
        let dir = sys::openat2(
            libc::AT_FDCWD,
            d.path(),
            libc::O_DIRECTORY | libc::O_RDONLY,
            0,
            0,
        )
        .unwrap();
        let fd = dir.as_raw_fd();
        let chr = libc::S_IFCHR | 0o666;
        assert!(matches!(
            mknod_at(fd, "null", chr, libc::makedev(1, 3)).unwrap(),
            Made::Other
        ));
        assert!(matches!(
            mknod_at(fd, "zero", chr, libc::makedev(1, 5)).unwrap(),
            Made::Other
        ));
        assert!(matches!(
            mknod_at(fd, "full", chr, libc::makedev(1, 7)).unwrap(),
            Made::Ok
        ));
        // Made already: the same node is accepted, another device is not.
        assert!(matches!(
            mknod_at(fd, "full", chr, libc::makedev(1, 7)).unwrap(),
            Made::Ok
        ));
        assert!(matches!(
            mknod_at(fd, "full", chr, libc::makedev(1, 8)).unwrap(),
            Made::Other
        ));
        assert!(matches!(
            symlink_at(fd, "/proc/self/fd", "fd").unwrap(),
            Made::Other
        ));
        assert!(matches!(
            symlink_at(fd, "pts/ptmx", "ptmx").unwrap(),
            Made::Ok
        ));
        assert!(matches!(
            symlink_at(fd, "pts/ptmx", "ptmx").unwrap(),
            Made::Ok
        ));
        let (invalid, e) = made("mknod /dev/null", Ok(Made::Other)).unwrap_err();
        assert!(
            invalid && e.contains("something else is already there"),
            "{e}"
        );
        // The symlink was never followed.
        assert!(
            std::fs::symlink_metadata(d.path().join("null"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn masked_paths_are_opened_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("proc")).unwrap();
        std::fs::write(d.path().join("proc/kcore"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", d.path().join("proc/keys")).unwrap();
        let root = sys::openat2(
            libc::AT_FDCWD,
            d.path(),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            0,
        )
        .unwrap();
        assert!(open_masked(&root, "/proc/kcore").unwrap().is_some());
        assert!(open_masked(&root, "/proc/missing").unwrap().is_none());
        let (invalid, e) = open_masked(&root, "/proc/keys").unwrap_err();
        assert!(invalid && e.contains("/proc/keys is a symlink"), "{e}");
        // A tmp dir is no procfs: the masking refuses to trust /proc/self/fd there.
        assert!(check_own_proc(&root).is_err());
    }

    #[test]
    fn mount_point_lookup() {
        assert_eq!(
            mount_point_of(Path::new("/proc/self")),
            Some(PathBuf::from("/proc"))
        );
    }
}
