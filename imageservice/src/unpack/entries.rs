//! Applying tar entries: path and symlink checks, the entry budget, whiteouts turned into
//! overlayfs form, ownership, modes, extended attributes and times.

use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::fsops::{
    mkdir, mknod, remove_any, remove_existing, set_times_nofollow, set_xattrs, setxattr,
};
use super::stream::PieceReader;
use super::{OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, UnpackError, WHITEOUT_PREFIX, invalid, io_err};
use crate::tarstream::{Entry, TarReader};

/// Applies the tar stream to `dest`; returns the number of entries and the hard links
/// into lower layers. Reads the stream to its end.
pub(super) fn unpack_tar(
    mut tar_stream: PieceReader,
    dest: &Path,
    max_entries: u64,
) -> Result<(u64, Vec<(PathBuf, PathBuf)>), UnpackError> {
    let mut u = Unpacker {
        root: dest.to_owned(),
        dir_times: Vec::new(),
        entries: 0,
        max_entries,
        lower_links: Vec::new(),
    };
    u.run(&mut TarReader::new(&mut tar_stream))?;
    // What follows the archive is hashed by the decompressor: let it finish.
    io::copy(&mut tar_stream, &mut io::sink()).map_err(UnpackError::Read)?;
    Ok((u.entries, u.lower_links))
}

/// Entry metadata after PAX overrides.
pub(super) struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: SystemTime,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

pub(super) struct Unpacker {
    root: PathBuf,
    /// Directory mtimes, applied at the end (adding children changes them).
    dir_times: Vec<(PathBuf, SystemTime)>,
    entries: u64,
    /// The budget of entries.
    max_entries: u64,
    /// Hard links to lower layers, made after the layer (see `UnpackSummary`).
    lower_links: Vec<(PathBuf, PathBuf)>,
}

impl Unpacker {
    fn run<R: Read>(&mut self, archive: &mut TarReader<R>) -> Result<(), UnpackError> {
        while let Some(entry) = archive.next_entry()? {
            if self.entries >= self.max_entries {
                return Err(UnpackError::Invalid(format!(
                    "more entries than the layer budget of {} (image.max_layer_entries)",
                    self.max_entries
                )));
            }
            self.entry(&entry, archive)?;
            self.entries += 1;
        }
        for (path, mtime) in self.dir_times.iter().rev() {
            set_times_nofollow(path, *mtime).map_err(io_err("set times of", path))?;
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        entry: &Entry,
        archive: &mut TarReader<R>,
    ) -> Result<(), UnpackError> {
        let name = entry.name.clone();
        let kind = entry.kind;
        let parts = clean_path(&name).map_err(|r| invalid(&name, r))?;
        let meta = meta(entry);
        if !self.lower_links.is_empty() {
            // A later entry of the same name replaces a pending link.
            let rel: PathBuf = parts.iter().collect();
            self.lower_links.retain(|(n, _)| *n != rel);
        }

        let Some((base, parents)) = parts.split_last() else {
            // The archive root: only its metadata applies.
            if !kind.is_dir() {
                return Err(invalid(&name, "the root of the layer must be a directory"));
            }
            let root = self.root.clone();
            return self.finish_dir(&root, &meta);
        };
        let parent = self.parent_dir(parents, &name, Walk::Create)?;

        let base_bytes = base.as_bytes();
        if base_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(&parent, base, &name);
        }
        let path = parent.join(base);
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&path)?;
                        mkdir(&path)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => mkdir(&path)?,
                    Err(e) => return Err(io_err("stat", &path)(e)),
                }
                self.finish_dir(&path, &meta)
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_existing(&path)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(io_err("create", &path))?;
                io::copy(&mut archive.data(), &mut f).map_err(UnpackError::Read)?;
                std::os::unix::fs::fchown(&f, Some(id32(meta.uid)?), Some(id32(meta.gid)?))
                    .map_err(io_err("chown", &path))?;
                f.set_permissions(fs::Permissions::from_mode(meta.mode))
                    .map_err(io_err("chmod", &path))?;
                set_xattrs(&path, &meta.xattrs)?;
                f.set_times(
                    fs::FileTimes::new()
                        .set_accessed(meta.mtime)
                        .set_modified(meta.mtime),
                )
                .map_err(io_err("set times of", &path))?;
                Ok(())
            }
            tar::EntryType::Symlink => {
                let target = entry.link.clone();
                check_symlink_target(parents.len(), &target).map_err(|r| invalid(&name, r))?;
                remove_existing(&path)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(io_err("symlink", &path))?;
                std::os::unix::fs::lchown(&path, Some(id32(meta.uid)?), Some(id32(meta.gid)?))
                    .map_err(io_err("chown", &path))?;
                set_xattrs(&path, &meta.xattrs)?;
                set_times_nofollow(&path, meta.mtime).map_err(io_err("set times of", &path))
            }
            tar::EntryType::Link => {
                let target = entry.link.clone();
                if target.is_empty() {
                    return Err(invalid(&name, "hard link without a target"));
                }
                let tparts = clean_path(&target)
                    .map_err(|r| invalid(&name, format!("hard link target: {r}")))?;
                let Some((tbase, tparents)) = tparts.split_last() else {
                    return Err(invalid(&name, "hard link to the layer root"));
                };
                let in_layer = self
                    .parent_dir(tparents, &name, Walk::Existing)
                    .ok()
                    .map(|d| d.join(tbase))
                    .filter(|p| fs::symlink_metadata(p).is_ok());
                let Some(source) = in_layer else {
                    // A file of a lower layer: linked once those are unpacked.
                    remove_existing(&path)?;
                    self.lower_links
                        .push((parts.iter().collect(), tparts.iter().collect()));
                    return Ok(());
                };
                if fs::symlink_metadata(&source).is_ok_and(|m| m.is_dir()) {
                    return Err(invalid(&name, "hard link to a directory"));
                }
                if source == path {
                    return Ok(());
                }
                remove_existing(&path)?;
                fs::hard_link(&source, &path).map_err(io_err("hard link", &path))
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (kind_flag, dev) = match kind {
                    tar::EntryType::Char | tar::EntryType::Block => {
                        let (major, minor) = entry.dev;
                        let flag = if kind == tar::EntryType::Char {
                            libc::S_IFCHR
                        } else {
                            libc::S_IFBLK
                        };
                        (flag, libc::makedev(major, minor))
                    }
                    _ => (libc::S_IFIFO, 0),
                };
                remove_existing(&path)?;
                mknod(&path, kind_flag, 0o600, dev)?;
                std::os::unix::fs::lchown(&path, Some(id32(meta.uid)?), Some(id32(meta.gid)?))
                    .map_err(io_err("chown", &path))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode))
                    .map_err(io_err("chmod", &path))?;
                set_xattrs(&path, &meta.xattrs)?;
                set_times_nofollow(&path, meta.mtime).map_err(io_err("set times of", &path))
            }
            other => Err(invalid(&name, format!("unsupported entry type {other:?}"))),
        }
    }

    /// Applies a directory entry's metadata; its mtime waits for the end.
    fn finish_dir(&mut self, path: &Path, meta: &Meta) -> Result<(), UnpackError> {
        std::os::unix::fs::lchown(path, Some(id32(meta.uid)?), Some(id32(meta.gid)?))
            .map_err(io_err("chown", path))?;
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))
            .map_err(io_err("chmod", path))?;
        set_xattrs(path, &meta.xattrs)?;
        self.dir_times.push((path.to_owned(), meta.mtime));
        Ok(())
    }

    /// `.wh..wh..opq` marks `parent` opaque; `.wh.<name>` hides `<name>` of lower layers.
    fn whiteout(&mut self, parent: &Path, base: &OsStr, entry: &[u8]) -> Result<(), UnpackError> {
        let base = base.as_bytes();
        if base == OPAQUE_MARKER.as_bytes() {
            return setxattr(parent, OVERLAY_OPAQUE_XATTR, b"y");
        }
        let hidden = &base[WHITEOUT_PREFIX.len()..];
        if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // Other AUFS meta files (`.wh..wh.plnk`, ...) carry nothing for overlayfs.
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(invalid(entry, "whiteout of an invalid name"));
        }
        let path = parent.join(OsStr::from_bytes(hidden));
        remove_existing(&path)?;
        // overlayfs' whiteout: a 0/0 character device.
        mknod(&path, libc::S_IFCHR, 0, 0)
    }

    /// The directory `parents` names below the root, each component checked with `lstat`
    /// to be a real directory, never a symlink. For an entry's own parents (`Walk::Create`)
    /// missing ones are made; for a hard link's target (`Walk::Existing`) nothing is made
    /// and a parent that is not a directory means the target is not in this layer.
    fn parent_dir(
        &self,
        parents: &[&OsStr],
        entry: &[u8],
        walk: Walk,
    ) -> Result<PathBuf, UnpackError> {
        let create = walk == Walk::Create;
        let mut dir = self.root.clone();
        for p in parents {
            dir.push(p);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if create && m.file_type().is_symlink() => {
                    return Err(invalid(entry, "a parent directory is a symlink"));
                }
                Ok(_) if create => return Err(invalid(entry, "a parent is not a directory")),
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                    mkdir(&dir)?;
                    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                        .map_err(io_err("chmod", &dir))?;
                }
                Err(e) if create => return Err(io_err("stat", &dir)(e)),
                _ => return Err(invalid(entry, "hard link target is not in this layer")),
            }
        }
        Ok(dir)
    }
}

/// How [`Unpacker::parent_dir`] treats missing parents.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Make them (an entry's own parents).
    Create,
    /// Make nothing (a hard link target's parents).
    Existing,
}

/// An entry's metadata; extended attributes only those that may not speak to overlayfs
/// (only the whiteout conversion may).
pub(super) fn meta(e: &Entry) -> Meta {
    let (secs, nanos) = e.mtime;
    let mtime = if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos.into())
    };
    let xattrs = e
        .xattrs
        .iter()
        .filter(|(k, _)| !k.starts_with(b"trusted.overlay.") && !k.starts_with(b"user.overlay."))
        .map(|(k, v)| (OsStr::from_bytes(k).to_owned(), v.clone()))
        .collect();
    Meta {
        mode: e.mode & 0o7777,
        uid: e.uid,
        gid: e.gid,
        mtime,
        xattrs,
    }
}

/// Splits an entry name into components, dropping `.` and empty ones; rejects absolute
/// names and `..`.
pub(super) fn clean_path(name: &[u8]) -> Result<Vec<&OsStr>, &'static str> {
    if name.first() == Some(&b'/') {
        return Err("absolute path");
    }
    if name.contains(&0) {
        return Err("NUL byte in path");
    }
    let mut out = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains '..'"),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

/// A relative symlink target may not climb above the snapshot root (absolute targets are
/// resolved inside the container's root by the kernel, so they cannot point out).
pub(super) fn check_symlink_target(depth: usize, target: &[u8]) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("empty symlink target");
    }
    if target.first() == Some(&b'/') {
        return Ok(());
    }
    let mut depth = depth as isize;
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return Err("symlink points outside the layer");
                }
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

pub(super) fn id32(id: u64) -> Result<u32, UnpackError> {
    u32::try_from(id).map_err(|_| UnpackError::Invalid(format!("owner id {id} out of range")))
}
