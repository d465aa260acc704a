use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::*;

/// A host tree with one large file: what a hostile layer would like counted.
const HOST_FILE: usize = 8 << 20;

#[test]
fn counts_files_dirs_and_symlinks_without_following() {
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("big"), vec![1u8; HOST_FILE]).unwrap();
    let layer = tempfile::tempdir().unwrap();
    fs::create_dir(layer.path().join("d")).unwrap();
    fs::write(layer.path().join("d/f"), vec![1u8; 10000]).unwrap();
    std::os::unix::fs::symlink(host.path(), layer.path().join("to-host")).unwrap();
    std::os::unix::fs::symlink("/", layer.path().join("d/to-root")).unwrap();
    let (bytes, inodes) = disk_usage(layer.path()).unwrap();
    assert_eq!(inodes, 5, "root, d, d/f and two symlinks");
    assert!(bytes >= 10000, "{bytes}");
    assert!(
        bytes < HOST_FILE as u64,
        "the host tree was counted: {bytes}"
    );
}

#[test]
fn a_missing_tree_uses_nothing_and_a_file_is_itself() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(disk_usage(&dir.path().join("absent")).unwrap(), (0, 0));
    fs::write(dir.path().join("f"), vec![1u8; 5000]).unwrap();
    let (bytes, inodes) = disk_usage(&dir.path().join("f")).unwrap();
    assert_eq!(inodes, 1);
    assert!(bytes >= 5000, "{bytes}");
}

#[test]
fn depth_and_entries_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut deep = dir.path().to_owned();
    for _ in 0..10 {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    let limits = WalkLimits {
        max_depth: 10,
        max_entries: 1000,
    };
    // The root and the ten directories below it.
    assert_eq!(disk_usage_within(dir.path(), &limits).unwrap().1, 11);
    let shallow = WalkLimits {
        max_depth: 9,
        ..limits
    };
    let e = disk_usage_within(dir.path(), &shallow).unwrap_err();
    assert!(e.to_string().contains("deeper than 9"), "{e}");

    for i in 0..20 {
        fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
    }
    let few = WalkLimits {
        max_depth: 64,
        max_entries: 25,
    };
    let e = disk_usage_within(dir.path(), &few).unwrap_err();
    assert!(e.to_string().contains("more than 25 entries"), "{e}");
}

/// `renameat2(RENAME_EXCHANGE)`: swaps two names atomically.
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let (a, b) = (
        CString::new(a.as_os_str().as_bytes()).unwrap(),
        CString::new(b.as_os_str().as_bytes()).unwrap(),
    );
    // SAFETY: both are valid NUL-terminated paths alive for the call, which keeps neither.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Swaps `a` and `b` (`RENAME_EXCHANGE`) and back, until `stop`; counts the rounds.
fn swap_until(a: PathBuf, b: PathBuf, stop: Arc<AtomicBool>, rounds: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        exchange(&a, &b).unwrap();
        std::thread::yield_now();
        exchange(&a, &b).unwrap();
        rounds.fetch_add(1, Ordering::Relaxed);
    }
}

/// The attack: while the layer is measured, threads swap two of its directories (one at the
/// top, one deeper) for symlinks to a host tree holding a large file, over and over. No
/// measure may include the host file's bytes, whichever moment a swap lands.
#[test]
fn a_directory_swapped_for_a_symlink_to_the_host_is_never_followed() {
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("big"), vec![1u8; HOST_FILE]).unwrap();
    let layer = tempfile::tempdir().unwrap();
    let top = layer.path().join("a");
    let deep = layer.path().join("x/y/z");
    for dir in [&top, &deep] {
        fs::create_dir_all(dir).unwrap();
        for i in 0..20 {
            fs::write(dir.join(format!("f{i}")), b"small").unwrap();
        }
        let decoy = dir.with_file_name("decoy");
        std::os::unix::fs::symlink(host.path(), decoy).unwrap();
    }
    // Each directory's own files share names with nothing in the host tree but `big`.
    fs::write(top.join("big"), b"small").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let swappers: Vec<_> = [&top, &deep]
        .into_iter()
        .map(|dir| {
            let (a, b) = (dir.clone(), dir.with_file_name("decoy"));
            let (stop, rounds) = (stop.clone(), rounds.clone());
            std::thread::spawn(move || swap_until(a, b, stop, rounds))
        })
        .collect();
    let mut largest = 0;
    for _ in 0..2000 {
        let (bytes, _) = disk_usage(layer.path()).unwrap();
        largest = largest.max(bytes);
    }
    stop.store(true, Ordering::Relaxed);
    for s in swappers {
        s.join().unwrap();
    }
    assert!(
        rounds.load(Ordering::Relaxed) > 100,
        "the swaps ran during the walks"
    );
    assert!(
        largest < HOST_FILE as u64 / 2,
        "a walk counted the host tree: {largest} bytes"
    );
}
