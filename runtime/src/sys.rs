//! The system calls both processes make, in the shape their callers want (raw fds in,
//! `io::Result` out), and small file helpers.
//!
//! Where `nix` has the call, the wrapper is a line over it with the same flags and errors
//! (`pipe`, `setns`, `openat2`, `fs_magic`, `fstat`, `umount_quiet`, `with_umask`); none
//! retries on `EINTR`, as none did before, and only `openat2` retries `EAGAIN` (a raced
//! scoped lookup). The calls `nix` 0.30 lacks stay here on `libc`:
//! `pidfd_open` and `pidfd_send_signal`, the new mount API (`open_tree`, `move_mount`,
//! `mount_setattr`), `close_range`, `capset`, `getrandom`, and `clone3` with
//! `CLONE_INTO_CGROUP` in [`fork_into_cgroup`].

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Turns a `-1` return into the thread's errno.
pub fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A path as a C string; an interior NUL is `EINVAL`.
pub fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Borrows a raw fd the caller holds open for the duration of one call.
fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: every caller passes an fd it holds open across the one system call made with
    // the borrow, which does not outlive that call (or `AT_FDCWD`, which nix accepts).
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// `pidfd_open(2)`: a handle on a process that cannot be confused with a reused PID.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; the returned fd is owned by us.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel just gave us this fd and nobody else holds it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(2)`.
pub fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: plain syscall; a null siginfo means "as kill(2) would".
    cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })?;
    Ok(())
}

/// `setns(2)` on any namespace fd or pidfd.
pub fn setns(fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
    let nstype = nix::sched::CloneFlags::from_bits_retain(nstype);
    Ok(nix::sched::setns(borrow(fd), nstype)?)
}

/// `RESOLVE_IN_ROOT`: resolve as if `dirfd` were `/` (symlinks cannot escape it).
pub const RESOLVE_IN_ROOT: u64 = 0x10;
/// `RESOLVE_NO_MAGICLINKS`.
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
/// `RESOLVE_NO_SYMLINKS`: no symlink at all on the way.
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;

/// How many times [`openat2`] tries a lookup the kernel asked to retry (`EAGAIN`).
const OPENAT2_ATTEMPTS: u32 = 32;

/// Whether [`openat2`] tries again after attempt number `attempt` (counting from 1) failed
/// with `err`. With `RESOLVE_IN_ROOT`, `RESOLVE_BENEATH` or `RESOLVE_NO_XDEV` the kernel
/// answers `EAGAIN` when a mount or rename elsewhere on the system raced the lookup (it
/// cannot then prove `..` stayed inside the root), so the same call may well succeed next
/// time; runc and libpathrs retry it a bounded number of times too, so that a system under
/// constant mount churn still gets an answer instead of a hang.
fn openat2_retries(err: nix::errno::Errno, attempt: u32) -> bool {
    err == nix::errno::Errno::EAGAIN && attempt < OPENAT2_ATTEMPTS
}

/// `openat2(2)` with a resolve mask, retried (bounded) while the kernel answers `EAGAIN`.
pub fn openat2(
    dirfd: RawFd,
    path: &Path,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(OFlag::from_bits_retain(flags | libc::O_CLOEXEC))
        .mode(nix::sys::stat::Mode::from_bits_retain(mode))
        .resolve(ResolveFlag::from_bits_retain(resolve));
    let mut attempt = 1;
    loop {
        match nix::fcntl::openat2(borrow(dirfd), path, how) {
            Err(e) if openat2_retries(e, attempt) => attempt += 1,
            res => return Ok(res?),
        }
    }
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Makes the mount at `path` and every mount below it read-only (`mount_setattr(2)`).
pub fn mount_setattr_recursive_ro(path: &Path) -> io::Result<()> {
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const AT_RECURSIVE: libc::c_int = 0x8000;
    let c = cpath(path)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `c` and `attr` outlive the call; the size matches the struct.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// A detached copy of the mount tree at `path` (`open_tree(2)` with `OPEN_TREE_CLONE`; with
/// `recursive`, its submounts too), to be changed and attached with [`move_mount_to`].
pub fn open_tree_clone(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let c = cpath(path)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: `c` outlives the call; the returned fd is new and ours.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) })?;
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A detached bind of the one file or directory `fd` is open on (`open_tree(2)` with
/// `OPEN_TREE_CLONE | AT_EMPTY_PATH`): nothing is resolved by path, so what is bound is the
/// object checked through `fd`, whatever its path leads to by then.
pub fn open_tree_clone_fd(fd: RawFd) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    // SAFETY: an fd we hold and an empty path literal; the returned fd is new and ours.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_open_tree, fd, c"".as_ptr(), flags) })?;
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The magic number of the file system `fd` is on (`fstatfs(2)`'s `f_type`): what the
/// kernel says the object is, whatever mount or path led to it.
// f_type is a `long` in glibc and an `unsigned long` in musl; the magic constants are `long`.
#[allow(clippy::unnecessary_cast)]
pub fn fs_magic(fd: RawFd) -> io::Result<libc::c_long> {
    Ok(nix::sys::statfs::fstatfs(borrow(fd))?.filesystem_type().0 as libc::c_long)
}

/// `fstat(2)` on an fd (an `O_PATH` one included).
pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    Ok(nix::sys::stat::fstat(borrow(fd))?)
}

/// Makes the detached mount tree `tree` (from [`open_tree_clone`]) idmapped with the user
/// namespace `userns` (`MOUNT_ATTR_IDMAP`, Linux 5.12): ids on disk show through it as the
/// namespace maps them, and ids written through it are mapped back.
pub fn mount_setattr_idmap(tree: &OwnedFd, userns: RawFd, recursive: bool) -> io::Result<()> {
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    const AT_RECURSIVE: libc::c_int = 0x8000;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns as u64,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: an fd we hold, an empty path literal and `attr`, which outlives the call; the
    // size matches the struct.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// Attaches the detached mount tree `tree` on the file or directory `target` is open on
/// (`move_mount(2)`, both by fd: no path is resolved again).
pub fn move_mount_to(tree: &OwnedFd, target: RawFd) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    // SAFETY: fds we hold and empty path literals.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target,
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// Whether the kernel has `mount_setattr(2)` (Linux 5.12), which recursive read-only mounts
/// need: a call with no valid fd fails with EBADF where it exists, ENOSYS where it does not.
pub fn mount_setattr_supported() -> bool {
    let attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: an invalid fd and an empty path: the kernel changes nothing; `attr` outlives
    // the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

/// Marks every fd from `first` on close-on-exec (`close_range(2)` with CLOEXEC).
pub fn cloexec_from(first: u32) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: plain syscall with integer arguments.
    cvt(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) })?;
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets the calling thread's effective, permitted and inheritable capability sets.
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    const VERSION_3: u32 = 0x2008_0522;
    let mut hdr = CapHeader {
        version: VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and two data structs as capset(2) version 3 expects; both outlive the call.
    cvt(unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) })?;
    Ok(())
}

/// The highest capability number this kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Writes `data` to `path` atomically: a temporary file in the same directory, then rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// The host PID of the calling process, read from the host's procfs (`/proc/self`), which
/// stays right inside a child PID namespace as long as /proc is the host's.
pub fn host_pid() -> i32 {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// Unmounts `path` lazily; a path that is not a mount point (or is gone) is fine.
pub fn umount_quiet(path: &Path) -> io::Result<()> {
    use nix::errno::Errno;
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether `path` is a mount point, by comparing its mount id with its parent's.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Some(p) = path.to_str() else { return false };
    info.lines()
        .any(|l| l.split(' ').nth(4).map(unescape_mountinfo).as_deref() == Some(p))
}

/// Decodes mountinfo's octal escapes (`\040` for a space).
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Random hex id of 64 characters, as containerd's.
pub fn random_id() -> String {
    let mut buf = [0u8; 32];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most `len - filled` bytes into our buffer.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A path to reach the unix socket `path` by, short enough for `sun_path` (108 bytes): the
/// path itself, or `/proc/self/fd/<dir fd>/<name>` while the returned directory fd is held.
pub fn socket_path(path: &Path) -> io::Result<(Option<OwnedFd>, std::path::PathBuf)> {
    if path.as_os_str().len() < 100 {
        return Ok((None, path.to_owned()));
    }
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let fd = openat2(libc::AT_FDCWD, dir, libc::O_PATH | libc::O_DIRECTORY, 0, 0)?;
    let short = std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())).join(name);
    Ok((Some(fd), short))
}

/// The umask under which a new socket (or file asking for 0777/0666) gets `mode` at most.
pub fn umask_for(mode: u32) -> u32 {
    !mode & 0o777
}

/// Runs `f` with the process umask set to `umask`, and restores the previous one. The
/// umask is the process's, not the thread's: call this only where no other thread creates
/// files meanwhile (the daemon before it serves, the single-threaded monitor).
pub fn with_umask<T>(umask: u32, f: impl FnOnce() -> T) -> T {
    use nix::sys::stat::{Mode, umask as set_umask};
    let old = set_umask(Mode::from_bits_truncate(umask as libc::mode_t));
    let out = f();
    set_umask(old);
    out
}

/// Binds a unix stream socket at `path` (a path [`socket_path`] made short enough) that has
/// `mode` from its first instant: the bind runs under the matching umask. A chmod after the
/// bind would leave a moment in which the socket has the mode the umask gave it, and anyone
/// it allows could connect then. See [`with_umask`] for when this may be called.
pub fn bind_unix(path: &Path, mode: u32) -> io::Result<std::os::unix::net::UnixListener> {
    with_umask(umask_for(mode), || {
        std::os::unix::net::UnixListener::bind(path)
    })
}

/// In a process forked by [`fork_into_cgroup`]: the `cgroup.procs` file it was born into,
/// which it need not (and should not, to spare the migration) write.
/// (A child of such a child inherits the value, so each fork replaces it.)
static BORN_INTO: std::sync::Mutex<Option<std::path::PathBuf>> = std::sync::Mutex::new(None);

fn set_born_into(file: Option<std::path::PathBuf>) {
    *BORN_INTO.lock().unwrap_or_else(|e| e.into_inner()) = file;
}

/// Whether this process was forked straight into the cgroup of `procs_file`.
pub fn born_into(procs_file: &Path) -> bool {
    BORN_INTO
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_deref()
        == Some(procs_file)
}

/// `fork`, with the child placed directly in the cgroup v2 directory among `cgroup_files`
/// (the one named `cgroup.procs`) when the kernel can (`clone3` with `CLONE_INTO_CGROUP`,
/// Linux 5.7): a process moved into a cgroup after it exists takes the kernel's global
/// threadgroup lock, whose first taker waits for an RCU grace period (about 10 ms here);
/// one born there does not. Falls back to a plain fork. Returns what `fork` returns.
///
/// # Safety
/// As `fork`: the calling process must be single-threaded, and the child must not return
/// into code that assumes it is the parent.
pub unsafe fn fork_into_cgroup(cgroup_files: &[std::path::PathBuf]) -> libc::pid_t {
    use std::os::unix::fs::OpenOptionsExt;
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let v2 = cgroup_files
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == "cgroup.procs"));
    if let Some(file) = v2
        && let Some(dir) = file.parent()
        && let Ok(d) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
    {
        let args = CloneArgs {
            flags: CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: d.as_raw_fd() as u64,
            ..Default::default()
        };
        // SAFETY: clone3 with a valid, fully initialised argument block of the size passed
        // and no new stack: in the child it returns 0 like fork (the caller's contract).
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if pid == 0 {
            set_born_into(Some(file.clone()));
            return 0;
        }
        if pid > 0 {
            return pid as libc::pid_t;
        }
        // ENOSYS, E2BIG, EINVAL (an old kernel), EBUSY (a cgroup that cannot hold
        // processes): fork and migrate as before.
    }
    // SAFETY: the caller's contract.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        set_born_into(None);
    }
    pid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn openat2_retries_a_raced_lookup_a_bounded_number_of_times() {
        use nix::errno::Errno;
        assert!(openat2_retries(Errno::EAGAIN, 1));
        assert!(openat2_retries(Errno::EAGAIN, OPENAT2_ATTEMPTS - 1));
        assert!(!openat2_retries(Errno::EAGAIN, OPENAT2_ATTEMPTS));
        // Any other answer is the lookup's real result and goes back to the caller at once.
        for e in [Errno::ENOENT, Errno::EXDEV, Errno::ELOOP, Errno::EINTR] {
            assert!(!openat2_retries(e, 1), "{e}");
        }
    }

    #[test]
    fn umask_for_a_mode_masks_the_rest() {
        assert_eq!(umask_for(0o660), 0o117);
        assert_eq!(umask_for(0o600), 0o177);
        assert_eq!(umask_for(0o711), 0o066);
    }

    #[test]
    fn a_socket_has_its_mode_from_the_moment_it_exists() {
        let d = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o660] {
            let path = d.path().join(format!("s{mode:o}"));
            // The mode a socket has right after bind(2), before any later step could change
            // it, under the most permissive umask a daemon could inherit: what the helper
            // does inside, without its own umask.
            let (listener, at_bind) = with_umask(0, || {
                with_umask(umask_for(mode), || {
                    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
                    (l, mode_of(&path))
                })
            });
            assert_eq!(at_bind, mode, "at bind");
            drop(listener);
            std::fs::remove_file(&path).unwrap();
            // The helper itself, and the umask it leaves behind.
            let before = with_umask(0o022, || {
                let l = bind_unix(&path, mode).unwrap();
                // SAFETY: reading the umask by setting it, then putting it back.
                let now = unsafe { libc::umask(0o022) };
                (l, now)
            });
            assert_eq!(before.1, 0o022, "the umask is restored");
            assert_eq!(mode_of(&path), mode, "socket {mode:o}");
        }
    }

    #[test]
    fn nobody_can_connect_to_a_0600_socket() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s");
        // The directory is open to all: only the socket's own mode stands in the way.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let _l = with_umask(0, || bind_unix(&path, 0o600)).unwrap();
        let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: the child only makes raw syscalls on memory prepared before the fork,
        // then _exits with the result.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                if libc::setresgid(65534, 65534, 65534) != 0
                    || libc::setresuid(65534, 65534, 65534) != 0
                {
                    libc::_exit(2);
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let mut addr: libc::sockaddr_un = std::mem::zeroed();
                addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
                for (i, b) in c_path.as_bytes().iter().enumerate() {
                    addr.sun_path[i] = *b as libc::c_char;
                }
                let r = libc::connect(
                    fd,
                    &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                );
                let errno = *libc::__errno_location();
                libc::_exit(if r == 0 {
                    0
                } else if errno == libc::EACCES {
                    13
                } else {
                    3
                });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for the child we forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if libc::WEXITSTATUS(status) == 2 {
            eprintln!("cannot drop privileges here (not root?): connect not tried");
            return;
        }
        assert_eq!(libc::WEXITSTATUS(status), 13, "nobody's connect: EACCES");
    }

    #[test]
    fn ids_and_escapes() {
        let a = random_id();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_id());
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/a\\"), r"/a\\");
    }

    #[test]
    fn mount_setattr_is_detected_as_the_kernel_version_says() {
        let release = nix::sys::utsname::uname().unwrap();
        let release = release.release().to_string_lossy().into_owned();
        let mut v = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>());
        let (major, minor) = (v.next().unwrap().unwrap(), v.next().unwrap().unwrap());
        assert_eq!(
            mount_setattr_supported(),
            (major, minor) >= (5, 12),
            "{release}"
        );
    }

    #[test]
    fn atomic_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("exit");
        write_atomic(&p, b"1").unwrap();
        write_atomic(&p, b"2").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"2");
        assert!(!d.path().join("exit.tmp").exists());
    }
}
