//! Layer unpacking: a (compressed) tar stream into one snapshot directory, in the form
//! overlayfs reads as a lower dir.
//!
//! Safety against hostile layers: every entry path is relative with no `..`; every parent
//! of every entry is checked with `lstat` to be a real directory inside the snapshot just
//! before it is used (this process is the only writer of the temporary directory, so the
//! check cannot race); final components are never followed (`O_EXCL` creation after
//! unlinking, `lchown`, `AT_SYMLINK_NOFOLLOW`); a hard link names a file of the same
//! snapshot or, once they are unpacked, of a lower layer, which is then copied up as
//! overlayfs would ([`link_from_lowers`]); relative symlink targets may not climb above the
//! snapshot root.
//! The caller unpacks into a temporary directory and removes it on any error, so nothing
//! of a rejected layer is left.
//!
//! Against bombs: the archive is read by [`crate::tarstream`] (Go's reading of tar, with
//! extension headers bounded to 1 MiB), and each layer has a budget of uncompressed bytes
//! and of entries ([`LayerLimits`]); memory stays bounded by the pieces in flight between
//! the two threads, whatever the layer claims.

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::tarstream::{Entry, TarError, TarReader};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The archive is malformed or hostile; the reason names the entry.
    #[error("{0}")]
    Invalid(String),
    /// A file operation in the snapshot failed.
    #[error("{op} {}", path.display())]
    Io {
        /// The operation.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading or decompressing the stream failed.
    #[error("reading layer stream")]
    Read(#[source] io::Error),
}

impl From<TarError> for UnpackError {
    fn from(e: TarError) -> Self {
        match e {
            TarError::Invalid(m) => UnpackError::Invalid(format!("malformed archive: {m}")),
            TarError::Read(e) => UnpackError::Read(e),
        }
    }
}

/// The budget of one layer: what a hostile layer may make the daemon write before it is
/// refused. The defaults fit the largest real images (tens of GiB, millions of files).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerLimits {
    /// Uncompressed bytes of the tar stream.
    pub max_bytes: u64,
    /// Tar entries.
    pub max_entries: u64,
}

/// The default of [`LayerLimits::max_bytes`]: 64 GiB.
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 64 << 30;
/// The default of [`LayerLimits::max_entries`].
pub const DEFAULT_MAX_LAYER_ENTRIES: u64 = 4 << 20;

impl Default for LayerLimits {
    fn default() -> Self {
        LayerLimits {
            max_bytes: DEFAULT_MAX_LAYER_BYTES,
            max_entries: DEFAULT_MAX_LAYER_ENTRIES,
        }
    }
}

fn invalid(entry: &[u8], reason: impl std::fmt::Display) -> UnpackError {
    UnpackError::Invalid(format!(
        "entry {:?}: {reason}",
        String::from_utf8_lossy(entry)
    ))
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What unpacking produced.
#[derive(Debug, Clone)]
pub struct UnpackSummary {
    /// `sha256:` of the uncompressed tar stream (the layer's diff ID).
    pub diff_id: String,
    /// Number of tar entries applied.
    pub entries: u64,
    /// Hard links whose target is not in this layer (name, target; relative paths, in
    /// archive order): a file of a lower layer. [`link_from_lowers`] makes them once the
    /// lower layers are unpacked, as overlayfs would: the target is copied up, then linked.
    pub lower_links: Vec<(PathBuf, PathBuf)>,
}

/// Size of the pieces of the tar stream passed from the decompressing thread to the
/// unpacking one, and how many may wait between them.
const CHUNK: usize = 128 << 10;
const CHUNKS_IN_FLIGHT: usize = 16;

/// A piece of the tar stream, or the error that ended it.
type Piece = io::Result<Vec<u8>>;

/// Why the decompressing thread stopped early.
enum Stopped {
    /// Reading or decompressing the source failed.
    Read(io::Error),
    /// The layer went over its budget of uncompressed bytes (the reason says so).
    OverBudget(String),
    /// The unpacking thread gave up (its error says why).
    Unpacker,
}

/// Unpacks the layer read from `source` (gzip, zstd or plain tar, detected from its first
/// bytes) into the existing empty directory `dest`. Reads `source` to its end, so a
/// caller hashing the compressed stream sees every byte.
///
/// Two threads share the work, so that a layer costs the longer of the two instead of
/// their sum: this one creates the files (kernel time), a scoped second one reads the
/// source (for a pull: the download, written to the content store as it passes),
/// decompresses it and hashes the tar stream for the diff ID.
pub fn unpack_layer(source: impl Read + Send, dest: &Path) -> Result<UnpackSummary, UnpackError> {
    unpack_layer_with(source, dest, &LayerLimits::default())
}

/// [`unpack_layer`] within the budget `limits`: a layer that goes over it is refused.
pub fn unpack_layer_with(
    source: impl Read + Send,
    dest: &Path,
    limits: &LayerLimits,
) -> Result<UnpackSummary, UnpackError> {
    let (tx, rx) = mpsc::sync_channel::<Piece>(CHUNKS_IN_FLIGHT);
    let max_bytes = limits.max_bytes;
    std::thread::scope(|scope| {
        let decoder = std::thread::Builder::new()
            .name("layer-decompress".into())
            .spawn_scoped(scope, move || decompress(source, tx, max_bytes))
            .map_err(UnpackError::Read)?;
        let unpacked = unpack_tar(
            PieceReader {
                rx,
                cur: Vec::new(),
                pos: 0,
            },
            dest,
            limits.max_entries,
        );
        let decoded = decoder.join().unwrap_or_else(|_| {
            Err(Stopped::Read(io::Error::other(
                "the layer decompression thread panicked",
            )))
        });
        match (decoded, unpacked) {
            (Ok(diff_id), Ok((entries, lower_links))) => Ok(UnpackSummary {
                diff_id,
                entries,
                lower_links,
            }),
            // A failed stream explains a failed unpack, not the reverse.
            (Err(Stopped::Read(e)), _) => Err(UnpackError::Read(e)),
            (Err(Stopped::OverBudget(m)), _) => Err(UnpackError::Invalid(m)),
            (_, Err(e)) => Err(e),
            (Err(Stopped::Unpacker), Ok(_)) => Err(UnpackError::Read(io::Error::other(
                "the layer stream ended early",
            ))),
        }
    })
}

/// The decompressing thread: `source` → tar stream pieces on `tx`; returns the diff ID.
fn decompress(
    source: impl Read,
    tx: mpsc::SyncSender<Piece>,
    max_bytes: u64,
) -> Result<String, Stopped> {
    let mut raw = BufReader::with_capacity(256 << 10, source);
    let mut hasher = Sha256::new();
    let magic = raw.fill_buf().map_err(Stopped::Read)?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        forward(
            flate2::read::MultiGzDecoder::new(&mut raw),
            &mut hasher,
            &tx,
            max_bytes,
        )?;
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let d = zstd::stream::read::Decoder::with_buffer(&mut raw).map_err(Stopped::Read)?;
        forward(d, &mut hasher, &tx, max_bytes)?;
    } else {
        forward(&mut raw, &mut hasher, &tx, max_bytes)?;
    }
    // Consume whatever follows the compressed stream, so a caller's digest of the blob
    // covers every byte.
    io::copy(&mut raw, &mut io::sink()).map_err(Stopped::Read)?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Hashes everything `tar_stream` yields (the end-of-archive padding belongs to the diff
/// ID too) and passes it on; stops a stream that inflates past `max_bytes`.
fn forward(
    mut tar_stream: impl Read,
    hasher: &mut Sha256,
    tx: &mpsc::SyncSender<Piece>,
    max_bytes: u64,
) -> Result<(), Stopped> {
    let mut total: u64 = 0;
    loop {
        let mut buf = vec![0; CHUNK];
        let n = match tar_stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // The unpacker sees a failed read; the caller gets this error.
                let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                return Err(Stopped::Read(e));
            }
        };
        buf.truncate(n);
        total += n as u64;
        if total > max_bytes {
            let _ = tx.send(Err(io::Error::other("over budget")));
            return Err(Stopped::OverBudget(format!(
                "uncompressed size exceeds the layer budget of {max_bytes} bytes (image.max_layer_bytes)"
            )));
        }
        hasher.update(&buf);
        tx.send(Ok(buf)).map_err(|_| Stopped::Unpacker)?;
    }
}

/// The unpacking thread's end of the tar stream.
struct PieceReader {
    rx: mpsc::Receiver<Piece>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(piece) => {
                    self.cur = piece?;
                    self.pos = 0;
                }
                // The decompressor is done.
                Err(mpsc::RecvError) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Applies the tar stream to `dest`; returns the number of entries and the hard links
/// into lower layers. Reads the stream to its end.
fn unpack_tar(
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
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: SystemTime,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

struct Unpacker {
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
        let parent = self.ensure_parents(parents, &name)?;

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
                    .existing_dir(tparents, &name)
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

    /// Walks (creating as needed) the parent directories of an entry; each must be a real
    /// directory, never a symlink.
    fn ensure_parents(&self, parents: &[&OsStr], entry: &[u8]) -> Result<PathBuf, UnpackError> {
        let mut dir = self.root.clone();
        for p in parents {
            dir.push(p);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(invalid(entry, "a parent directory is a symlink"));
                }
                Ok(_) => return Err(invalid(entry, "a parent is not a directory")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    mkdir(&dir)?;
                    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                        .map_err(io_err("chmod", &dir))?;
                }
                Err(e) => return Err(io_err("stat", &dir)(e)),
            }
        }
        Ok(dir)
    }

    /// Like `ensure_parents` but creates nothing (for hard link targets).
    fn existing_dir(&self, parents: &[&OsStr], entry: &[u8]) -> Result<PathBuf, UnpackError> {
        let mut dir = self.root.clone();
        for p in parents {
            dir.push(p);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(invalid(entry, "hard link target's parent is a symlink"));
                }
                _ => return Err(invalid(entry, "hard link target is not in this layer")),
            }
        }
        Ok(dir)
    }
}

/// An entry's metadata; extended attributes only those that may not speak to overlayfs
/// (only the whiteout conversion may).
fn meta(e: &Entry) -> Meta {
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
fn clean_path(name: &[u8]) -> Result<Vec<&OsStr>, &'static str> {
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
fn check_symlink_target(depth: usize, target: &[u8]) -> Result<(), &'static str> {
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

fn id32(id: u64) -> Result<u32, UnpackError> {
    u32::try_from(id).map_err(|_| UnpackError::Invalid(format!("owner id {id} out of range")))
}

fn mkdir(path: &Path) -> Result<(), UnpackError> {
    fs::create_dir(path).map_err(io_err("create directory", path))
}

/// Removes whatever is at `path` (a directory recursively), never following a symlink.
fn remove_any(path: &Path) -> Result<(), UnpackError> {
    let m = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    if m.is_dir() {
        fs::remove_dir_all(path).map_err(io_err("remove", path))
    } else {
        fs::remove_file(path).map_err(io_err("remove", path))
    }
}

fn remove_existing(path: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(_) => remove_any(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("stat", path)(e)),
    }
}

fn cpath(path: &Path) -> Result<CString, UnpackError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| UnpackError::Invalid(format!("NUL byte in path {}", path.display())))
}

fn mknod(
    path: &Path,
    kind: libc::mode_t,
    perm: libc::mode_t,
    dev: libc::dev_t,
) -> Result<(), UnpackError> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call; mknod does not
    // retain the pointer.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | perm, dev) };
    if rc != 0 {
        return Err(io_err("mknod", path)(io::Error::last_os_error()));
    }
    Ok(())
}

fn setxattr(path: &Path, name: &str, value: &[u8]) -> Result<(), UnpackError> {
    set_xattrs(path, &[(OsString::from(name), value.to_vec())])
}

fn set_xattrs(path: &Path, xattrs: &[(OsString, Vec<u8>)]) -> Result<(), UnpackError> {
    if xattrs.is_empty() {
        return Ok(());
    }
    let c = cpath(path)?;
    for (name, value) in xattrs {
        let n = CString::new(name.as_bytes())
            .map_err(|_| UnpackError::Invalid("NUL byte in xattr name".into()))?;
        // SAFETY: both strings are valid and NUL-terminated; `value` is a live slice of
        // `value.len()` bytes; lsetxattr copies them and does not follow a final symlink.
        let rc = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // Like containerd: a filesystem without xattr support loses them, with a log.
            if e.raw_os_error() == Some(libc::ENOTSUP) {
                tracing::warn!(path = %path.display(), xattr = ?name, "xattr not supported, dropped");
                continue;
            }
            return Err(io_err("set xattr on", path)(e));
        }
    }
    Ok(())
}

fn set_times_nofollow(path: &Path, mtime: SystemTime) -> io::Result<()> {
    let d = mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ts = libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as _,
    };
    let times = [ts, ts];
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated path and `times` two initialised timespecs,
    // both alive for the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads an extended attribute without following symlinks (`None` if absent).
pub fn get_xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings; `buf` is a writable buffer of `buf.len()` bytes.
    let rc = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENODATA) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    buf.truncate(rc as usize);
    Ok(Some(buf))
}

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
fn real_parent(root: &Path, rel: &Path, entry: &[u8]) -> Result<PathBuf, UnpackError> {
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

fn is_whiteout(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    let (Ok(c), Ok(n)) = (cpath(dir), CString::new(OVERLAY_OPAQUE_XATTR)) else {
        return false;
    };
    let mut v = [0u8; 2];
    // SAFETY: valid NUL-terminated strings; `v` is a live buffer of the length passed.
    let len = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
    len == 1 && v[0] == b'y'
}

/// The layer among `root` (the new layer, which can only hide) and `lowers` whose file
/// overlayfs would show at `target`.
fn find_below<'a>(root: &Path, lowers: &'a [PathBuf], target: &Path) -> Option<&'a Path> {
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

fn xattrs_of(path: &Path) -> Vec<(OsString, Vec<u8>)> {
    let Ok(c) = cpath(path) else {
        return Vec::new();
    };
    let mut names = vec![0u8; 4096];
    // SAFETY: valid path; `names` is a live buffer of the length passed.
    let len = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if len <= 0 {
        return Vec::new();
    }
    names.truncate(len as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(n) = CString::new(name) else { continue };
        let mut value = vec![0u8; 65536];
        // SAFETY: valid strings; `value` is a live buffer of the length passed.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len >= 0 {
            value.truncate(len as usize);
            out.push((OsStr::from_bytes(name).to_owned(), value));
        }
    }
    out
}

/// Copies `target` of `layer` into `root` with the same type, contents, owner, mode,
/// extended attributes and time, making missing parents as they are in `layer`.
fn copy_up(layer: &Path, root: &Path, target: &Path, entry: &[u8]) -> Result<(), UnpackError> {
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

/// Disk usage of a tree as `du` counts it: allocated bytes and inodes, hard links once.
pub fn disk_usage(path: &Path) -> io::Result<(u64, u64)> {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        let m = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        bytes += m.blocks() * 512;
        inodes += 1;
        if m.is_dir() {
            match fs::read_dir(&p) {
                Ok(rd) => {
                    for e in rd {
                        stack.push(e?.path());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok((bytes, inodes))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// Builds tar archives by hand, including entries `tar::Builder` refuses to write.
    pub(crate) struct TarBuilder {
        b: tar::Builder<Vec<u8>>,
    }

    impl TarBuilder {
        pub(crate) fn new() -> Self {
            TarBuilder {
                b: tar::Builder::new(Vec::new()),
            }
        }

        fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_600_000_000);
            h.set_size(0);
            h
        }

        fn raw(&mut self, mut h: tar::Header, name: &str, data: &[u8]) {
            // Write the name bytes directly so `..` and absolute names survive.
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name = [0; 100];
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(data.len() as u64);
            h.set_cksum();
            self.b.append(&h, data).unwrap();
        }

        pub(crate) fn dir(mut self, name: &str, mode: u32) -> Self {
            self.raw(Self::header(tar::EntryType::Directory, mode), name, b"");
            self
        }

        pub(crate) fn file(mut self, name: &str, mode: u32, data: &[u8]) -> Self {
            self.raw(Self::header(tar::EntryType::Regular, mode), name, data);
            self
        }

        pub(crate) fn file_owned(
            mut self,
            name: &str,
            mode: u32,
            uid: u64,
            gid: u64,
            mtime: u64,
            data: &[u8],
        ) -> Self {
            let mut h = Self::header(tar::EntryType::Regular, mode);
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_mtime(mtime);
            self.raw(h, name, data);
            self
        }

        fn link_entry(mut self, kind: tar::EntryType, name: &str, target: &str) -> Self {
            let mut h = Self::header(kind, 0o777);
            let gnu = h.as_gnu_mut().unwrap();
            gnu.linkname = [0; 100];
            gnu.linkname[..target.len()].copy_from_slice(target.as_bytes());
            self.raw(h, name, b"");
            self
        }

        pub(crate) fn symlink(self, name: &str, target: &str) -> Self {
            self.link_entry(tar::EntryType::Symlink, name, target)
        }

        pub(crate) fn hardlink(self, name: &str, target: &str) -> Self {
            self.link_entry(tar::EntryType::Link, name, target)
        }

        pub(crate) fn device(
            mut self,
            name: &str,
            kind: tar::EntryType,
            major: u32,
            minor: u32,
        ) -> Self {
            let mut h = Self::header(kind, 0o620);
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
            self.raw(h, name, b"");
            self
        }

        pub(crate) fn pax_file(mut self, name: &str, pax: &[(&str, &[u8])], data: &[u8]) -> Self {
            self.b
                .append_pax_extensions(pax.iter().map(|(k, v)| (*k, *v)))
                .unwrap();
            self.raw(Self::header(tar::EntryType::Regular, 0o644), name, data);
            self
        }

        pub(crate) fn finish(self) -> Vec<u8> {
            self.b.into_inner().unwrap()
        }
    }

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn unpack(tar: &[u8]) -> (tempfile::TempDir, Result<UnpackSummary, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let r = unpack_layer(tar, dir.path());
        (dir, r)
    }

    /// Unpacks (which must succeed), then links into no lower layer, which must fail.
    fn rejected_below(tar: Vec<u8>, why: &str) {
        let (dir, r) = unpack(&tar);
        let links = r.unwrap().lower_links;
        match link_from_lowers(dir.path(), &[], &links) {
            Err(UnpackError::Invalid(msg)) => assert!(msg.contains(why), "{msg:?} lacks {why:?}"),
            other => panic!("expected rejection ({why}), got {other:?}"),
        }
    }

    #[test]
    fn hard_links_into_lower_layers_copy_up_the_target() {
        use std::os::unix::fs::MetadataExt;
        let (base, r) = unpack(
            &TarBuilder::new()
                .dir("bin/", 0o711)
                .file("bin/busybox", 0o4755, b"the binary")
                .file("etc/gone", 0o644, b"x")
                .finish(),
        );
        r.unwrap();
        // A middle layer deletes etc/gone.
        let (mid, r) = unpack(&TarBuilder::new().file("etc/.wh.gone", 0o644, b"").finish());
        r.unwrap();
        let (top, r) = unpack(
            &TarBuilder::new()
                .hardlink("usr/sh", "bin/busybox")
                .file("other", 0o644, b"o")
                .finish(),
        );
        let links = r.unwrap().lower_links;
        assert_eq!(links, vec![("usr/sh".into(), "bin/busybox".into())]);
        let lowers = [mid.path().to_owned(), base.path().to_owned()];
        link_from_lowers(top.path(), &lowers, &links).unwrap();
        let up = fs::symlink_metadata(top.path().join("bin/busybox")).unwrap();
        let link = fs::symlink_metadata(top.path().join("usr/sh")).unwrap();
        assert_eq!(up.ino(), link.ino());
        assert_eq!(up.mode() & 0o7777, 0o4755);
        assert_eq!(fs::read(top.path().join("usr/sh")).unwrap(), b"the binary");
        // The copied-up parent keeps the lower directory's mode.
        let bin = fs::symlink_metadata(top.path().join("bin")).unwrap();
        assert_eq!(bin.mode() & 0o7777, 0o711);
        // A whited-out file is in no layer.
        let (top2, r) = unpack(&TarBuilder::new().hardlink("h", "etc/gone").finish());
        let links = r.unwrap().lower_links;
        let e = link_from_lowers(top2.path(), &lowers, &links).unwrap_err();
        assert!(e.to_string().contains("in no layer"), "{e}");
        // A later entry of the same name replaces the pending link.
        let (top3, r) = unpack(
            &TarBuilder::new()
                .hardlink("h", "bin/busybox")
                .file("h", 0o644, b"own")
                .finish(),
        );
        assert!(r.unwrap().lower_links.is_empty());
        assert_eq!(fs::read(top3.path().join("h")).unwrap(), b"own");
    }

    fn rejected(tar: Vec<u8>, why: &str) {
        let (dir, r) = unpack(&tar);
        match r {
            Err(UnpackError::Invalid(msg)) => assert!(msg.contains(why), "{msg:?} lacks {why:?}"),
            other => panic!("expected rejection ({why}), got {other:?}"),
        }
        drop(dir);
    }

    fn sha(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    #[test]
    fn unpacks_files_dirs_links_and_metadata() {
        let tar = TarBuilder::new()
            .dir("./", 0o755)
            .dir("./etc/", 0o750)
            .file_owned(
                "./etc/passwd",
                0o644,
                1000,
                2000,
                1_500_000_000,
                b"root:x:0:0\n",
            )
            .file("bin/su", 0o4755, b"#!suid")
            .symlink("bin/sh", "/bin/busybox")
            .symlink("usr/lib/rel", "../../etc/passwd")
            .hardlink("bin/su2", "bin/su")
            .device("dev/null", tar::EntryType::Char, 1, 3)
            .device("dev/fifo", tar::EntryType::Fifo, 0, 0)
            .file("deep/a/b/c", 0o600, b"implicit parents")
            .finish();
        let (dir, r) = unpack(&tar);
        let s = r.unwrap();
        assert_eq!(s.diff_id, sha(&tar));
        assert_eq!(s.entries, 10);
        let root = dir.path();
        assert_eq!(fs::read(root.join("etc/passwd")).unwrap(), b"root:x:0:0\n");
        let m = fs::symlink_metadata(root.join("etc/passwd")).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777, m.mtime()),
            (1000, 2000, 0o644, 1_500_000_000)
        );
        let m = fs::metadata(root.join("etc")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.mtime()), (0o750, 1_600_000_000));
        let su = fs::metadata(root.join("bin/su")).unwrap();
        assert_eq!(su.mode() & 0o7777, 0o4755, "setuid kept");
        assert_eq!(su.nlink(), 2);
        assert_eq!(fs::metadata(root.join("bin/su2")).unwrap().ino(), su.ino());
        assert_eq!(
            fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert_eq!(
            fs::read_link(root.join("usr/lib/rel")).unwrap(),
            Path::new("../../etc/passwd")
        );
        let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), libc::makedev(1, 3));
        assert!(
            fs::symlink_metadata(root.join("dev/fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert_eq!(
            fs::read(root.join("deep/a/b/c")).unwrap(),
            b"implicit parents"
        );
        assert_eq!(
            fs::metadata(root.join("deep/a")).unwrap().mode() & 0o7777,
            0o755
        );
    }

    #[test]
    fn decompresses_gzip_and_zstd() {
        let tar = TarBuilder::new().file("a", 0o644, b"hello").finish();
        for blob in [
            gzip(&tar),
            zstd::encode_all(&tar[..], 3).unwrap(),
            tar.clone(),
        ] {
            let (dir, r) = unpack(&blob);
            assert_eq!(r.unwrap().diff_id, sha(&tar));
            assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"hello");
        }
    }

    /// Larger than the pieces passed between the two threads, with entries after the bulk.
    fn big_tar() -> Vec<u8> {
        let bulk: Vec<u8> = (0..3 * CHUNK as u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut t = TarBuilder::new()
            .dir("bin/", 0o755)
            .file("bin/big", 0o755, &bulk);
        for i in 0..50 {
            t = t.symlink(&format!("bin/l{i}"), "big");
        }
        t.finish()
    }

    #[test]
    fn streams_larger_than_a_piece_unpack_whole() {
        let tar = big_tar();
        let (dir, r) = unpack(&gzip(&tar));
        let s = r.unwrap();
        assert_eq!(s.diff_id, sha(&tar));
        assert_eq!(s.entries, 52);
        assert_eq!(
            fs::metadata(dir.path().join("bin/big")).unwrap().len(),
            3 * CHUNK as u64
        );
        assert_eq!(
            fs::read_link(dir.path().join("bin/l49")).unwrap(),
            Path::new("big")
        );
    }

    #[test]
    fn a_truncated_stream_is_a_read_error() {
        let gz = gzip(&big_tar());
        let (_dir, r) = unpack(&gz[..gz.len() / 2]);
        assert!(matches!(r, Err(UnpackError::Read(_))), "{r:?}");
    }

    #[test]
    fn a_rejected_entry_stops_the_decompressor() {
        // The escape comes first; megabytes of stream follow it.
        let mut t = TarBuilder::new().symlink("evil", "../../outside");
        let bulk = vec![1u8; 4 * CHUNK * CHUNKS_IN_FLIGHT];
        t = t.file("after", 0o644, &bulk);
        let (_dir, r) = unpack(&gzip(&t.finish()));
        assert!(matches!(r, Err(UnpackError::Invalid(_))), "{r:?}");
    }

    #[test]
    fn xattrs_and_pax_overrides() {
        let tar = TarBuilder::new()
            .pax_file(
                "f",
                &[
                    ("SCHILY.xattr.user.color", b"blue"),
                    ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
                    ("uid", b"3000000"),
                    ("mtime", b"1234567890.5"),
                ],
                b"x",
            )
            .finish();
        let (dir, r) = unpack(&tar);
        r.unwrap();
        let f = dir.path().join("f");
        assert_eq!(
            get_xattr(&f, "user.color").unwrap().as_deref(),
            Some(&b"blue"[..])
        );
        assert_eq!(
            get_xattr(&f, "trusted.overlay.opaque").unwrap(),
            None,
            "overlay xattrs filtered"
        );
        let m = fs::metadata(&f).unwrap();
        assert_eq!(m.uid(), 3_000_000);
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_234_567_890, 500_000_000));
    }

    #[test]
    fn whiteouts_become_overlay_form() {
        let tar = TarBuilder::new()
            .dir("etc/", 0o755)
            .file("etc/.wh.hosts", 0o644, b"")
            .dir("var/cache/", 0o755)
            .file("var/cache/.wh..wh..opq", 0o644, b"")
            .file("var/cache/new", 0o644, b"new")
            .file("opt/.wh..wh.plnk", 0o644, b"")
            .finish();
        let (dir, r) = unpack(&tar);
        r.unwrap();
        let wh = fs::symlink_metadata(dir.path().join("etc/hosts")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        assert!(!dir.path().join("etc/.wh.hosts").exists());
        let cache = dir.path().join("var/cache");
        assert_eq!(
            get_xattr(&cache, OVERLAY_OPAQUE_XATTR).unwrap().as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(fs::read(cache.join("new")).unwrap(), b"new");
        assert!(!cache.join(".wh..wh..opq").exists());
        assert_eq!(fs::read_dir(dir.path().join("opt")).unwrap().count(), 0);
    }

    #[test]
    fn later_entries_replace_earlier_ones_without_following() {
        let tar = TarBuilder::new()
            .symlink("x", "/etc/shadow")
            .file("x", 0o644, b"replaced")
            .dir("d/", 0o755)
            .file("d/f", 0o644, b"f")
            .file("d", 0o644, b"now a file")
            .finish();
        let (dir, r) = unpack(&tar);
        r.unwrap();
        assert_eq!(fs::read(dir.path().join("x")).unwrap(), b"replaced");
        assert_eq!(fs::read(dir.path().join("d")).unwrap(), b"now a file");
    }

    #[test]
    fn rejects_every_escape() {
        rejected(
            TarBuilder::new().file("../evil", 0o644, b"x").finish(),
            "'..'",
        );
        rejected(
            TarBuilder::new().file("a/../../evil", 0o644, b"x").finish(),
            "'..'",
        );
        rejected(
            TarBuilder::new().file("/etc/evil", 0o644, b"x").finish(),
            "absolute path",
        );
        rejected(
            TarBuilder::new()
                .symlink("link", "/tmp")
                .file("link/evil", 0o644, b"x")
                .finish(),
            "parent directory is a symlink",
        );
        rejected(
            TarBuilder::new()
                .symlink("link", ".")
                .file("link/evil", 0o644, b"x")
                .finish(),
            "parent directory is a symlink",
        );
        rejected(
            TarBuilder::new().symlink("a/link", "../../etc").finish(),
            "points outside",
        );
        rejected(
            TarBuilder::new().hardlink("h", "../../etc/passwd").finish(),
            "'..'",
        );
        rejected(
            TarBuilder::new().hardlink("h", "/etc/passwd").finish(),
            "absolute path",
        );
        // Targets not in the layer are looked for in the lower layers (none here).
        rejected_below(
            TarBuilder::new().hardlink("h", "missing").finish(),
            "in no layer",
        );
        rejected_below(
            TarBuilder::new()
                .symlink("l", "/etc")
                .hardlink("h", "l/passwd")
                .finish(),
            "not a directory",
        );
        rejected(
            TarBuilder::new().file("a/.wh...", 0o644, b"").finish(),
            "invalid name",
        );
        rejected(
            TarBuilder::new().file("a/.wh..", 0o644, b"").finish(),
            "invalid name",
        );
        rejected(
            b"this is not a tar archive at all, just some bytes".repeat(20),
            "malformed",
        );
    }

    #[test]
    fn outside_stays_untouched() {
        // A victim outside the snapshot, reachable only by following the symlink.
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"safe").unwrap();
        let tar = TarBuilder::new()
            .symlink("link", outside.path().to_str().unwrap())
            .file("link/victim", 0o644, b"pwned")
            .finish();
        let (_dir, r) = unpack(&tar);
        assert!(r.is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"safe");
    }

    #[test]
    fn symlink_target_depth() {
        assert!(check_symlink_target(2, b"../../x").is_ok());
        assert!(check_symlink_target(2, b"../../../x").is_err());
        assert!(check_symlink_target(0, b"a/../../x").is_err());
        assert!(check_symlink_target(0, b"/anything/../../x").is_ok());
        assert!(check_symlink_target(1, b"./.././x").is_ok());
    }

    fn unpack_limited(
        blob: &[u8],
        limits: LayerLimits,
    ) -> (tempfile::TempDir, Result<UnpackSummary, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let r = unpack_layer_with(blob, dir.path(), &limits);
        (dir, r)
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_byte_budget() {
        // 64 MiB of zeros gzip to about 64 KiB.
        let zeros = vec![0u8; 64 << 20];
        let bomb = gzip(&TarBuilder::new().file("zeros", 0o644, &zeros).finish());
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let limits = LayerLimits {
            max_bytes: 4 << 20,
            ..LayerLimits::default()
        };
        let (dir, r) = unpack_limited(&bomb, limits);
        match r {
            Err(UnpackError::Invalid(m)) => assert!(
                m.contains("layer budget of 4194304 bytes") && m.contains("max_layer_bytes"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        let written = fs::metadata(dir.path().join("zeros")).map_or(0, |m| m.len());
        assert!(written <= 4 << 20, "{written}");
        // The same layer within a budget that fits it unpacks.
        let (_dir, r) = unpack_limited(
            &bomb,
            LayerLimits {
                max_bytes: 65 << 20,
                ..LayerLimits::default()
            },
        );
        r.unwrap();
    }

    #[test]
    fn the_entry_budget_is_enforced() {
        let mut t = TarBuilder::new();
        for i in 0..5 {
            t = t.file(&format!("f{i}"), 0o644, b"");
        }
        let tar = t.finish();
        let limits = |n| LayerLimits {
            max_entries: n,
            ..LayerLimits::default()
        };
        let (_d, r) = unpack_limited(&tar, limits(4));
        match r {
            Err(UnpackError::Invalid(m)) => {
                assert!(
                    m.contains("layer budget of 4 (image.max_layer_entries)"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        let (_d, r) = unpack_limited(&tar, limits(5));
        assert_eq!(r.unwrap().entries, 5);
    }

    /// A raw ustar header block with `size` in its size field.
    fn raw_header(name: &str, typeflag: u8, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_size(size);
        h.as_mut_bytes()[156] = typeflag;
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn pad(mut v: Vec<u8>) -> Vec<u8> {
        v.resize(v.len().div_ceil(512) * 512, 0);
        v
    }

    #[test]
    fn cve_2025_62518_a_pax_size_hides_no_entry() {
        // The nested archive a reader using the ustar size (0) would see as entries.
        let nested = [
            raw_header("etc/berth-smuggled", b'0', 6),
            pad(b"owned\n".to_vec()),
        ]
        .concat();
        let body = format!("size={}\n", nested.len());
        let record = format!("{} {body}", body.len() + 3);
        assert!(
            record.starts_with(&format!("{} ", record.len())),
            "{record}"
        );
        let tar = [
            raw_header("PaxHeaders/outer", b'x', record.len() as u64),
            pad(record.into_bytes()),
            raw_header("outer", b'0', 0),
            nested.clone(),
            raw_header("after", b'0', 0),
            vec![0; 1024],
        ]
        .concat();
        let (dir, r) = unpack(&tar);
        assert_eq!(r.unwrap().entries, 2);
        assert_eq!(fs::read(dir.path().join("outer")).unwrap(), nested);
        assert!(dir.path().join("after").exists());
        assert!(!dir.path().join("etc").exists(), "no smuggled entry");
    }

    #[test]
    fn a_pax_header_claiming_a_gibibyte_is_refused_unread() {
        let tar = [raw_header("PaxHeaders/x", b'x', 1 << 30), vec![b'9'; 4096]].concat();
        let (_d, r) = unpack(&gzip(&tar));
        match r {
            Err(UnpackError::Invalid(m)) => assert!(
                m.contains("PAX extended header of 1073741824 bytes")
                    && m.contains("limit of 1048576 bytes"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn disk_usage_counts_hardlinks_once() {
        let tar = TarBuilder::new()
            .file("a", 0o644, &[1u8; 10000])
            .hardlink("b", "a")
            .finish();
        let (dir, r) = unpack(&tar);
        r.unwrap();
        let (bytes, inodes) = disk_usage(dir.path()).unwrap();
        assert_eq!(inodes, 2, "the root and one file");
        assert!(bytes >= 10000, "{bytes}");
    }
}
