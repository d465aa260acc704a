//! Tests of the container's file system steps that need no new mount namespace.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::devices::{Made, made, mknod_at, symlink_at};
use super::masked::{NodeNull, check_own_proc, open_masked};
use super::mounts::{check_kernel_fs_target, check_target_fs, kernel_fs_of, overlay_data};
use super::{ensure_in_root, mount_point_of};
use crate::plan::KernelFs;
use crate::spec::{MountKind, MountOptions, MountSpec};
use crate::sys;

/// `dir` opened as a directory with `flags` besides `O_DIRECTORY`.
fn open_dir(dir: &Path, flags: i32) -> std::os::fd::OwnedFd {
    sys::openat2(libc::AT_FDCWD, dir, libc::O_DIRECTORY | flags, 0, 0).unwrap()
}

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
    let rootfd = open_dir(&root, libc::O_PATH);
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
    let rootfd = open_dir(root, libc::O_PATH);
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
    let open = |p: &str| sys::openat2(libc::AT_FDCWD, Path::new(p), libc::O_PATH, 0, 0).unwrap();
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
    let dir = open_dir(d.path(), libc::O_RDONLY);
    let fd = dir.as_raw_fd();
    let chr = libc::S_IFCHR | 0o666;
    // Each call in turn, and whether it made (or found exactly) its node or link.
    let calls = [
        (mknod_at(fd, "null", chr, libc::makedev(1, 3)), false),
        (mknod_at(fd, "zero", chr, libc::makedev(1, 5)), false),
        (mknod_at(fd, "full", chr, libc::makedev(1, 7)), true),
        // Made already: the same node is accepted, another device is not.
        (mknod_at(fd, "full", chr, libc::makedev(1, 7)), true),
        (mknod_at(fd, "full", chr, libc::makedev(1, 8)), false),
        (symlink_at(fd, "/proc/self/fd", "fd"), false),
        (symlink_at(fd, "pts/ptmx", "ptmx"), true),
        (symlink_at(fd, "pts/ptmx", "ptmx"), true),
    ];
    for (i, (result, ok)) in calls.into_iter().enumerate() {
        let m = result.unwrap();
        assert_eq!(matches!(m, Made::Ok), ok, "call {i}: {m:?}");
    }
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
    let root = open_dir(d.path(), libc::O_PATH);
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
