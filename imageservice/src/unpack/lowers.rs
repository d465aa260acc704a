//! Hard links into lower layers: the target looked up through the layers as overlayfs
//! does, copied up into the new layer, then linked.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::fsops::{
    is_opaque, is_whiteout, mkdir, mknod, remove_existing, set_times_nofollow, set_xattrs,
    xattrs_of,
};
use super::{UnpackError, invalid, io_err};

/// Makes the hard links a layer's archive named to files of lower layers
/// ([`UnpackSummary::lower_links`]) in the unpacked layer `root`, given the lower layers'
/// directories topmost first, as overlayfs does on a merged mount: the target is looked
/// up through the layers (whiteouts and opaque directories hide what is below), copied up
/// into `root` with its parent directories and metadata, then linked.
pub fn link_from_lowers(
    root: &Path,
    lowers: &[PathBuf],
    links: &[(PathBuf, PathBuf)],
) -> Result<(), UnpackError> {
    for (name, target) in links {
        let entry = name.as_os_str().as_bytes();
        let up = real_parent(root, target, entry)?;
        if fs::symlink_metadata(&up).is_err() {
            let layer = find_below(root, lowers, target)
                .ok_or_else(|| invalid(entry, "hard link target is in no layer"))?;
            copy_up(layer, root, target, entry)?;
        }
        if fs::symlink_metadata(&up).is_ok_and(|m| m.is_dir()) {
            return Err(invalid(entry, "hard link to a directory"));
        }
        let dst = real_parent(root, name, entry)?;
        remove_existing(&dst)?;
        fs::hard_link(&up, &dst).map_err(io_err("hard link", &dst))?;
    }
    Ok(())
}

/// `root/rel`, after checking that every existing parent below `root` is a real directory.
pub(super) fn real_parent(root: &Path, rel: &Path, entry: &[u8]) -> Result<PathBuf, UnpackError> {
    let mut dir = root.to_owned();
    let comps: Vec<_> = rel.iter().collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        dir.push(c);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(invalid(
                    entry,
                    "a parent of the hard link is not a directory",
                ));
            }
            Err(_) => {}
        }
    }
    Ok(root.join(rel))
}

/// The layer among `root` (the new layer, which can only hide) and `lowers` whose file
/// overlayfs would show at `target`.
pub(super) fn find_below<'a>(
    root: &Path,
    lowers: &'a [PathBuf],
    target: &Path,
) -> Option<&'a Path> {
    let comps: Vec<_> = target.iter().collect();
    let layers = std::iter::once(root).chain(lowers.iter().map(PathBuf::as_path));
    for (i, layer) in layers.enumerate() {
        let mut dir = layer.to_owned();
        let mut opaque = false;
        for (k, c) in comps.iter().enumerate() {
            let p = dir.join(c);
            let Ok(m) = fs::symlink_metadata(&p) else {
                break;
            };
            if is_whiteout(&m) {
                return None;
            }
            if k + 1 < comps.len() {
                if !m.is_dir() {
                    return None;
                }
                opaque |= is_opaque(&p);
                dir = p;
            } else if i == 0 || m.is_dir() {
                return None;
            } else {
                return Some(lowers[i - 1].as_path());
            }
        }
        if opaque {
            return None;
        }
    }
    None
}

/// Copies `target` of `layer` into `root` with the same type, contents, owner, mode,
/// extended attributes and time, making missing parents as they are in `layer`.
pub(super) fn copy_up(
    layer: &Path,
    root: &Path,
    target: &Path,
    entry: &[u8],
) -> Result<(), UnpackError> {
    use std::os::unix::fs::MetadataExt;
    let comps: Vec<_> = target.iter().collect();
    let (last, parents) = comps
        .split_last()
        .ok_or_else(|| invalid(entry, "empty target"))?;
    let (mut src, mut dst) = (layer.to_owned(), root.to_owned());
    for c in parents {
        src.push(c);
        dst.push(c);
        if fs::symlink_metadata(&dst).is_ok() {
            continue;
        }
        let m = fs::symlink_metadata(&src).map_err(io_err("stat", &src))?;
        mkdir(&dst)?;
        std::os::unix::fs::lchown(&dst, Some(m.uid()), Some(m.gid()))
            .map_err(io_err("chown", &dst))?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(io_err("chmod", &dst))?;
        set_times_nofollow(&dst, m.modified().unwrap_or(UNIX_EPOCH))
            .map_err(io_err("set times of", &dst))?;
    }
    let (src, dst) = (src.join(last), dst.join(last));
    let m = fs::symlink_metadata(&src).map_err(io_err("stat", &src))?;
    let ft = m.file_type();
    if ft.is_symlink() {
        let t = fs::read_link(&src).map_err(io_err("read link", &src))?;
        std::os::unix::fs::symlink(t, &dst).map_err(io_err("symlink", &dst))?;
    } else if ft.is_file() {
        fs::copy(&src, &dst).map_err(io_err("copy up", &dst))?;
    } else {
        mknod(&dst, m.mode() & libc::S_IFMT, 0, m.rdev() as libc::dev_t)?;
    }
    std::os::unix::fs::lchown(&dst, Some(m.uid()), Some(m.gid())).map_err(io_err("chown", &dst))?;
    if !ft.is_symlink() {
        fs::set_permissions(&dst, fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(io_err("chmod", &dst))?;
    }
    set_xattrs(&dst, &xattrs_of(&src))?;
    set_times_nofollow(&dst, m.modified().unwrap_or(UNIX_EPOCH))
        .map_err(io_err("set times of", &dst))
}
