//! Snapshots: one directory per unpacked layer, `snapshots/<chain-id-hex>/fs`, usable as
//! an overlayfs lower dir. A layer is unpacked into `snapshots/.tmp-*` and renamed into
//! place only when complete, so a half-unpacked snapshot is never seen; leftovers are moved
//! to `snapshots/.trash` and removed at the next open.
//!
//! Durability is deferred: a snapshot is committed with an unsynced mark, and one
//! `syncfs` after the pull (off the pull's path) makes every pending snapshot durable and
//! drops the markers. The marker is created before the rename that publishes the snapshot,
//! and journaling file systems commit metadata in order, so a snapshot that survives a
//! power loss without its data being synced still carries its mark; after a reboot such
//! snapshots are discarded and unpacked again from the (fsynced) content store.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::content::{hex_of, unique_suffix};
use crate::error::Error;
use crate::unpack::disk_usage;

const TMP_PREFIX: &str = ".tmp-";
const TRASH: &str = ".trash";
const FS: &str = "fs";
const USAGE: &str = "usage.json";
/// The marker of a snapshot not yet durable: an extended attribute of its directory (no
/// inode or block of its own, so usage figures stay exact).
const UNSYNCED: &std::ffi::CStr = c"user.berth.unsynced";

fn marker_op(dir: &Path, op: MarkerOp) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid NUL-terminated strings; the value buffer is live for its length.
    let rc = unsafe {
        match op {
            MarkerOp::Set => {
                libc::setxattr(c.as_ptr(), UNSYNCED.as_ptr(), b"1".as_ptr().cast(), 1, 0) as isize
            }
            MarkerOp::Get => libc::getxattr(c.as_ptr(), UNSYNCED.as_ptr(), std::ptr::null_mut(), 0),
            MarkerOp::Remove => libc::removexattr(c.as_ptr(), UNSYNCED.as_ptr()) as isize,
        }
    };
    if rc >= 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match (op, e.raw_os_error()) {
        (MarkerOp::Get | MarkerOp::Remove, Some(libc::ENODATA)) => Ok(false),
        _ => Err(e),
    }
}

#[derive(Clone, Copy)]
enum MarkerOp {
    Set,
    Get,
    Remove,
}

fn syncfs(dir: &Path) -> Result<(), Error> {
    let d = fs::File::open(dir).map_err(Error::io("open", dir))?;
    // SAFETY: `d` is an open directory descriptor for the duration of the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(Error::io("syncfs", dir)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Disk usage of one snapshot's `fs`, measured once when it is committed.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

/// The snapshot directory.
#[derive(Debug)]
pub(crate) struct Snapshots {
    dir: PathBuf,
    trash: PathBuf,
}

impl Snapshots {
    /// Opens `dir` (`root/snapshots`, mode 0700: layers may hold device nodes), and moves
    /// incomplete snapshots to the trash.
    pub(crate) fn open(dir: &Path) -> Result<Snapshots, Error> {
        let trash = dir.join(TRASH);
        fs::create_dir_all(&trash).map_err(Error::io("create", &trash))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(Error::io("chmod", dir))?;
        let s = Snapshots {
            dir: dir.to_owned(),
            trash,
        };
        for e in fs::read_dir(dir).map_err(Error::io("list", dir))? {
            let e = e.map_err(Error::io("list", dir))?;
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                s.to_trash(&e.path())?;
            }
        }
        Ok(s)
    }

    /// `snapshots/<hex>`.
    fn path(&self, chain_id: &str) -> PathBuf {
        self.dir.join(hex_of(chain_id))
    }

    /// The overlay lower dir of a snapshot.
    pub(crate) fn fs_path(&self, chain_id: &str) -> PathBuf {
        self.path(chain_id).join(FS)
    }

    /// Whether a complete snapshot exists.
    pub(crate) fn exists(&self, chain_id: &str) -> bool {
        self.fs_path(chain_id).is_dir()
    }

    /// A fresh temporary snapshot to unpack into.
    pub(crate) fn prepare(&self, chain_id: &str) -> Result<TempSnapshot, Error> {
        let dir = self.dir.join(format!(
            "{TMP_PREFIX}{}-{}",
            hex_of(chain_id),
            unique_suffix()
        ));
        fs::create_dir(&dir).map_err(Error::io("create", &dir))?;
        let fs_dir = dir.join(FS);
        fs::create_dir(&fs_dir).map_err(Error::io("create", &fs_dir))?;
        fs::set_permissions(&fs_dir, fs::Permissions::from_mode(0o755))
            .map_err(Error::io("chmod", &fs_dir))?;
        Ok(TempSnapshot {
            dir,
            dest: self.path(chain_id),
            trash: self.trash.clone(),
        })
    }

    /// Chain IDs of every complete snapshot.
    pub(crate) fn list(&self) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(Error::io("list", &self.dir))? {
            let e = e.map_err(Error::io("list", &self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                out.push(format!("sha256:{name}"));
            }
        }
        Ok(out)
    }

    /// Moves a snapshot to the trash (instant); `empty_trash` frees the space.
    pub(crate) fn remove(&self, chain_id: &str) -> Result<(), Error> {
        let p = self.path(chain_id);
        if p.exists() {
            self.to_trash(&p)
        } else {
            Ok(())
        }
    }

    fn to_trash(&self, p: &Path) -> Result<(), Error> {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dest = self.trash.join(format!("{name}-{}", unique_suffix()));
        fs::rename(p, &dest).map_err(Error::io("rename", p))
    }

    /// Deletes everything in the trash.
    pub(crate) fn empty_trash(&self) -> Result<(), Error> {
        let entries = match fs::read_dir(&self.trash) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("list", &self.trash)(e)),
        };
        for e in entries {
            let p = e.map_err(Error::io("list", &self.trash))?.path();
            if let Err(e) = fs::remove_dir_all(&p)
                && e.kind() != io::ErrorKind::NotFound
            {
                return Err(Error::io("remove", p)(e));
            }
        }
        Ok(())
    }

    /// Usage of a snapshot directory as `du` counts it (its `fs` measured at commit).
    pub(crate) fn usage(&self, chain_id: &str) -> Usage {
        let dir = self.path(chain_id);
        let own = disk_usage_shallow(&dir) + disk_usage_shallow(&dir.join(USAGE));
        let fs_usage = fs::read(dir.join(USAGE))
            .ok()
            .and_then(|b| serde_json::from_slice::<Usage>(&b).ok())
            .unwrap_or_else(|| {
                let (bytes, inodes) = disk_usage(&dir.join(FS)).unwrap_or_default();
                Usage { bytes, inodes }
            });
        Usage {
            bytes: own.bytes + fs_usage.bytes,
            inodes: own.inodes + fs_usage.inodes,
        }
    }

    /// Chain IDs of the snapshots not yet made durable.
    pub(crate) fn unsynced(&self) -> Result<Vec<String>, Error> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|c| marker_op(&self.path(c), MarkerOp::Get).unwrap_or(false))
            .collect())
    }

    /// Records the usage of every pending snapshot, makes them durable with one `syncfs`
    /// and drops their markers. Returns how many were pending.
    pub(crate) fn sync(&self) -> Result<usize, Error> {
        let pending = self.unsynced()?;
        if pending.is_empty() {
            return Ok(0);
        }
        for c in &pending {
            let dir = self.path(c);
            if !dir.join(USAGE).exists()
                && let Err(e) = record_usage(&dir)
            {
                // `usage` measures the tree instead.
                tracing::warn!(snapshot = %c, error = %e, "recording a snapshot's usage");
            }
        }
        syncfs(&self.dir)?;
        for c in &pending {
            let dir = self.path(c);
            match marker_op(&dir, MarkerOp::Remove) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove the unsynced mark of", dir)(e)),
            }
        }
        Ok(pending.len())
    }

    /// After a reboot: moves the snapshots that were never made durable to the trash (their
    /// files may be incomplete); returns their chain IDs.
    pub(crate) fn discard_unsynced(&self) -> Result<Vec<String>, Error> {
        let pending = self.unsynced()?;
        for c in &pending {
            self.remove(c)?;
        }
        Ok(pending)
    }

    /// The directory counted by `fs_usage`.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Measures a snapshot's `fs` (it no longer changes) and writes the figures beside it,
/// through a temporary file so a reader never sees half of them.
fn record_usage(dir: &Path) -> Result<(), Error> {
    let fs_dir = dir.join(FS);
    let (bytes, inodes) = disk_usage(&fs_dir).map_err(Error::io("measure", &fs_dir))?;
    let json = serde_json::to_vec(&Usage { bytes, inodes }).unwrap_or_default();
    let tmp = dir.join(format!("{USAGE}.tmp"));
    let usage_path = dir.join(USAGE);
    fs::write(&tmp, json).map_err(Error::io("write", &tmp))?;
    fs::rename(&tmp, &usage_path).map_err(Error::io("rename", &usage_path))
}

fn disk_usage_shallow(p: &Path) -> Usage {
    use std::os::unix::fs::MetadataExt;
    match fs::symlink_metadata(p) {
        Ok(m) => Usage {
            bytes: m.blocks() * 512,
            inodes: 1,
        },
        Err(_) => Usage::default(),
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage {
            bytes: self.bytes + o.bytes,
            inodes: self.inodes + o.inodes,
        }
    }
}

/// A snapshot being unpacked; moved to the trash on drop unless committed.
#[derive(Debug)]
pub(crate) struct TempSnapshot {
    dir: PathBuf,
    dest: PathBuf,
    trash: PathBuf,
}

impl TempSnapshot {
    /// Where to unpack.
    pub(crate) fn fs(&self) -> PathBuf {
        self.dir.join(FS)
    }

    /// Marks the snapshot unsynced and renames it into place; [`Snapshots::sync`] records
    /// its usage and makes it durable later, off the pull's path.
    pub(crate) fn commit(mut self) -> Result<(), Error> {
        match marker_op(&self.dir, MarkerOp::Set) {
            Ok(_) => {}
            // No user xattrs here: measured and durable now, as before deferral.
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
                record_usage(&self.dir)?;
                syncfs(&self.dir)?;
            }
            Err(e) => return Err(Error::io("mark unsynced", &self.dir)(e)),
        }
        fs::rename(&self.dir, &self.dest).map_err(Error::io("rename", &self.dest))?;
        self.dir = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempSnapshot {
    fn drop(&mut self) {
        if self.dir.as_os_str().is_empty() {
            return;
        }
        // Rename first so a crash during the removal cannot leave a `.tmp-` directory
        // that looks like work in progress, then delete.
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dest = self.trash.join(format!("{name}-{}", unique_suffix()));
        let victim = if fs::rename(&self.dir, &dest).is_ok() {
            dest
        } else {
            self.dir.clone()
        };
        let _ = fs::remove_dir_all(victim);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn commit_renames_and_drop_cleans() {
        let root = tempfile::tempdir().unwrap();
        let s = Snapshots::open(&root.path().join("snapshots")).unwrap();
        let t = s.prepare(C).unwrap();
        fs::write(t.fs().join("f"), b"x").unwrap();
        assert!(!s.exists(C), "incomplete snapshot invisible");
        assert!(s.list().unwrap().is_empty());
        t.commit().unwrap();
        assert!(s.exists(C));
        assert_eq!(fs::read(s.fs_path(C).join("f")).unwrap(), b"x");
        assert_eq!(s.list().unwrap(), vec![C.to_owned()]);
        // The usage is recorded off the pull's path, when the snapshot is made durable.
        let pending = s.unsynced().unwrap().len();
        assert!(
            pending == 1 || s.path(C).join(USAGE).exists(),
            "a snapshot made durable at once (no user xattrs) is measured at once"
        );
        assert_eq!(s.sync().unwrap(), pending);
        assert!(s.path(C).join(USAGE).exists(), "usage recorded by sync");
        assert!(s.unsynced().unwrap().is_empty());
        let u = s.usage(C);
        assert_eq!(u.inodes, 4, "dir, usage.json, fs, f");

        let t = s.prepare("sha256:bb").unwrap();
        fs::write(t.fs().join("g"), b"y").unwrap();
        drop(t);
        let names: Vec<_> = fs::read_dir(s.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "only the snapshot and the trash: {names:?}");
        assert_eq!(fs::read_dir(s.dir().join(TRASH)).unwrap().count(), 0);

        s.remove(C).unwrap();
        assert!(!s.exists(C));
        s.empty_trash().unwrap();
        assert_eq!(fs::read_dir(s.dir().join(TRASH)).unwrap().count(), 0);
    }

    #[test]
    fn open_discards_half_unpacked() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("snapshots");
        let s = Snapshots::open(&dir).unwrap();
        let t = s.prepare(C).unwrap();
        fs::write(t.fs().join("half"), b"x").unwrap();
        std::mem::forget(t); // a crash mid-unpack
        let s = Snapshots::open(&dir).unwrap();
        assert!(s.list().unwrap().is_empty());
        assert!(!fs::read_dir(&dir).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(TMP_PREFIX)
        }));
        s.empty_trash().unwrap();
        assert_eq!(fs::read_dir(dir.join(TRASH)).unwrap().count(), 0);
    }
}
