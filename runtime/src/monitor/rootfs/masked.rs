//! Masked and read-only paths, after `pivot_root`: the node's `/dev/null` (opened and
//! checked before the container's file system exists, bound by fd) over a masked file, an
//! empty read-only tmpfs over a masked directory, and read-only binds; every path opened
//! inside the new root without following a symlink.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use super::mounts::{kernel_fs_of, mount_raw, remount_keeping};
use super::{StepResult, fd_path, refused, step};
use crate::plan::KernelFs;
use crate::sys::{self, RESOLVE_IN_ROOT, RESOLVE_NO_SYMLINKS};

/// The node's `/dev/null`, opened before the container's file system exists and checked to
/// be the character device 1:3: what masks a file, bound by fd.
pub(super) struct NodeNull(pub(super) OwnedFd);

impl NodeNull {
    /// Opens and checks it, in the child's new mount namespace before anything of the
    /// container is mounted (what it sees there is still the node's).
    pub(super) fn open() -> io::Result<NodeNull> {
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
    pub(super) fn binds(&self, n: usize) -> io::Result<Vec<OwnedFd>> {
        (0..n)
            .map(|_| sys::open_tree_clone_fd(self.0.as_raw_fd()))
            .collect()
    }
}

/// Opens the masked or read-only path `p` inside the new root, by fd, with no symlink on the
/// way: `None` when it does not exist. A symlink there is refused: masking through it would
/// hide, or bind over, whatever it names.
pub(super) fn open_masked(root: &OwnedFd, p: &str) -> StepResult<Option<OwnedFd>> {
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
pub(super) fn check_own_proc(root: &OwnedFd) -> StepResult {
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
pub(super) fn mask_paths(
    mut nulls: Vec<OwnedFd>,
    masked: &[String],
    readonly: &[String],
) -> StepResult {
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
        remount_keeping(&fd_path(&again), libc::MS_RDONLY, || {
            format!("remount {p} read-only")
        })?;
    }
    Ok(())
}
