//! The kernel side of a pod's user namespace (see [`crate::userns`]): creating it with the
//! pod's other namespaces inside it, idmapped mounts, and a container process joining it.
//! Only user-namespaced pods reach this code.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::sys::{self, cvt};
use crate::userns::{UsernsSpec, map_text};

fn open_ns(pid: i32, name: &str) -> io::Result<OwnedFd> {
    sys::openat2(
        libc::AT_FDCWD,
        Path::new(&format!("/proc/{pid}/ns/{name}")),
        libc::O_RDONLY,
        0,
        0,
    )
}

/// Creates the pod's user namespace with `spec`'s mappings and, inside it, the namespaces of
/// `flags` (`CLONE_NEWNET`, `CLONE_NEWIPC`, `CLONE_NEWUTS`); the calling process joins those
/// and stays in the node's user namespace, so that it keeps its privileges over the node's
/// files and cgroups. Returns the user namespace. (PID namespaces are left out: one without
/// an init cannot be joined, so the caller unshares the pod's itself, after this, and the
/// monitor becomes its init.)
///
/// A namespace is owned by the user namespace of the process that creates it, so a helper
/// child creates them all in one `unshare` (the user namespace first, as the kernel
/// guarantees), waits while its parent writes the mappings and takes the namespaces, then
/// exits. The caller must be single-threaded.
pub(crate) fn create_pod_namespaces(
    flags: libc::c_int,
    spec: &UsernsSpec,
) -> Result<OwnedFd, String> {
    let (ready_r, ready_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (done_r, done_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the caller is single-threaded; the child only makes system calls and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: unshare/write/read/_exit on integers and our own buffers.
        unsafe {
            let flags = flags & (libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS);
            // The answer: 0, or the errno of unshare.
            let errno: i32 = if libc::unshare(libc::CLONE_NEWUSER | flags) == 0 {
                0
            } else {
                *libc::__errno_location()
            };
            let answer = errno.to_le_bytes();
            libc::write(ready_w.as_raw_fd(), answer.as_ptr().cast(), answer.len());
            drop(done_w);
            let mut b = 0u8;
            // Returns at EOF: the parent closed its end (or died).
            while libc::read(done_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1) > 0 {}
            libc::_exit(0);
        }
    }
    drop((ready_w, done_r));
    let result = take_namespaces(pid, &ready_r, flags, spec);
    drop(done_w);
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    result
}

fn take_namespaces(
    pid: i32,
    ready: &OwnedFd,
    flags: libc::c_int,
    spec: &UsernsSpec,
) -> Result<OwnedFd, String> {
    let mut answer = [0u8; 4];
    // SAFETY: reading into our buffer, at most its length.
    let n = unsafe { libc::read(ready.as_raw_fd(), answer.as_mut_ptr().cast(), answer.len()) };
    let what = "create the pod's user namespace and the namespaces it owns";
    if n != answer.len() as isize {
        return Err(format!(
            "{what}: the helper process ended without an answer"
        ));
    }
    let errno = i32::from_le_bytes(answer);
    if errno != 0 {
        return Err(format!("{what}: {}", io::Error::from_raw_os_error(errno)));
    }
    for (file, ranges) in [("uid_map", &spec.uids), ("gid_map", &spec.gids)] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, map_text(ranges)).map_err(|e| format!("write {path}: {e}"))?;
    }
    let userns = open_ns(pid, "user").map_err(|e| format!("open the user namespace: {e}"))?;
    for (flag, name) in [
        (libc::CLONE_NEWNET, "net"),
        (libc::CLONE_NEWIPC, "ipc"),
        (libc::CLONE_NEWUTS, "uts"),
    ] {
        if flags & flag == 0 {
            continue;
        }
        let fd = open_ns(pid, name).map_err(|e| format!("open the {name} namespace: {e}"))?;
        sys::setns(fd.as_raw_fd(), flag).map_err(|e| format!("join the {name} namespace: {e}"))?;
    }
    Ok(userns)
}

/// A detached, idmapped copy of the mount tree at `source` (with its submounts when
/// `recursive`): files owned by host root show as the container's root through it.
pub(crate) fn idmapped_tree(source: &Path, userns: RawFd, recursive: bool) -> io::Result<OwnedFd> {
    let tree = sys::open_tree_clone(source, recursive)?;
    sys::mount_setattr_idmap(&tree, userns, recursive)?;
    Ok(tree)
}

/// Image layers idmapped with the pod's user namespace, as overlayfs lower dirs.
pub(crate) struct IdmappedLayers {
    /// `/proc/self/fd/<n>` of each layer's detached idmapped copy, topmost first.
    pub dirs: Vec<PathBuf>,
    /// The copies; overlayfs keeps its own references once mounted.
    _trees: Vec<OwnedFd>,
}

/// Detached idmapped copies of the image layers, named by fd: they are attached nowhere,
/// so nothing propagates to the node whatever the container's propagation. Recent kernels'
/// overlayfs takes a detached mount as a layer (6.18 does); one that refuses them answers
/// EINVAL, see [`idmap_layers_in_place`].
pub(crate) fn idmapped_layers(layers: &[PathBuf], userns: RawFd) -> Result<IdmappedLayers, String> {
    let mut out = IdmappedLayers {
        dirs: Vec::with_capacity(layers.len()),
        _trees: Vec::with_capacity(layers.len()),
    };
    for l in layers {
        let tree = idmapped_tree(l, userns, false)
            .map_err(|e| format!("idmap image layer {}: {e}", l.display()))?;
        out.dirs
            .push(PathBuf::from(format!("/proc/self/fd/{}", tree.as_raw_fd())));
        out._trees.push(tree);
    }
    Ok(out)
}

/// The image layers idmapped where they are: each layer's idmapped copy is mounted over the
/// layer's own path in the container's mount namespace (for kernels whose overlayfs takes
/// only attached layers). The caller's root must not propagate to the node.
pub(crate) fn idmap_layers_in_place(layers: &[PathBuf], userns: RawFd) -> Result<(), String> {
    for l in layers {
        let tree = idmapped_tree(l, userns, false)
            .map_err(|e| format!("idmap image layer {}: {e}", l.display()))?;
        let target = sys::openat2(libc::AT_FDCWD, l, libc::O_PATH | libc::O_DIRECTORY, 0, 0)
            .map_err(|e| format!("open image layer {}: {e}", l.display()))?;
        sys::move_mount_to(&tree, target.as_raw_fd())
            .map_err(|e| format!("mount idmapped image layer {}: {e}", l.display()))?;
    }
    Ok(())
}

/// Enters the pod's user namespace as the container's root: from here on the process's ids
/// are the namespace's, and it has no privilege over anything the node owns. Its
/// supplementary groups (the node root's, unmapped) are dropped; the container's own are set
/// later with its ids.
pub(crate) fn join(userns: RawFd) -> Result<(), String> {
    sys::setns(userns, libc::CLONE_NEWUSER)
        .map_err(|e| format!("join the pod's user namespace: {e}"))?;
    // SAFETY: setgroups/setresgid/setresuid with integer arguments and an empty list.
    unsafe {
        cvt(libc::setgroups(0, std::ptr::null()) as libc::c_long)
            .map_err(|e| format!("drop supplementary groups: {e}"))?;
        cvt(libc::setresgid(0, 0, 0) as libc::c_long)
            .map_err(|e| format!("become group 0 of the user namespace: {e}"))?;
        cvt(libc::setresuid(0, 0, 0) as libc::c_long)
            .map_err(|e| format!("become root of the user namespace: {e}"))?;
    }
    Ok(())
}

/// Binds the user namespace `userns` on `target` (an existing empty file), as the pod's
/// other namespaces are: the node can name it.
pub(crate) fn bind_ns(userns: RawFd, target: &Path) -> Result<(), String> {
    nix::mount::mount(
        Some(Path::new(&format!("/proc/self/fd/{userns}"))),
        target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind the user namespace to {}: {e}", target.display()))
}
