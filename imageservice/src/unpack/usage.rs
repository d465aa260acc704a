//! Disk usage of a tree as `du` counts it, walked by file descriptor.
//!
//! The trees measured include containers' writable layers, which the container changes
//! while they are walked. A walk by path (stat a name, then list it) could be made to count
//! a host tree: between the two steps the container swaps a directory for a symlink to `/`.
//! So each directory is opened relative to its parent's descriptor with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`,
//! `O_NOFOLLOW`), each entry is stated with `fstatat(AT_SYMLINK_NOFOLLOW)` on that
//! descriptor, no symlink is ever followed, and a swapped entry is counted as whatever was
//! there when it was stated. Depth and entry count are bounded, so a hostile tree cannot
//! exhaust descriptors or run the walk forever.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::dir::{Dir, OwningIter};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

/// The bounds of one walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkLimits {
    /// How deep below the root directories are entered (one descriptor open per level).
    pub max_depth: usize,
    /// Entries stated, the root included.
    pub max_entries: u64,
}

impl Default for WalkLimits {
    /// Deeper than any real image or container layer; entries as twice an image layer's
    /// budget ([`super::DEFAULT_MAX_LAYER_ENTRIES`]).
    fn default() -> Self {
        WalkLimits {
            max_depth: 512,
            max_entries: 2 * super::DEFAULT_MAX_LAYER_ENTRIES,
        }
    }
}

/// How many times a lookup the kernel asked to retry (`EAGAIN`: a rename or mount elsewhere
/// raced a `RESOLVE_BENEATH` lookup) is tried.
const OPEN_ATTEMPTS: u32 = 32;

/// Disk usage of the tree at `path` as `du` counts it: allocated bytes and inodes, hard
/// links once, within [`WalkLimits::default`]. A missing tree uses nothing.
pub fn disk_usage(path: &Path) -> io::Result<(u64, u64)> {
    disk_usage_within(path, &WalkLimits::default())
}

/// [`disk_usage`] within `limits`: a tree deeper or with more entries is an error, not
/// a figure that leaves part of it out.
pub fn disk_usage_within(path: &Path, limits: &WalkLimits) -> io::Result<(u64, u64)> {
    let mut total = Totals::default();
    let root = match nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok((0, 0)),
        // A file or a symlink: itself only.
        Err(Errno::ENOTDIR | Errno::ELOOP) => {
            let st = nix::sys::stat::lstat(path).map_err(io::Error::from)?;
            total.add(&st);
            return Ok((total.bytes, total.inodes));
        }
        Err(e) => return Err(e.into()),
    };
    total.entries = 1;
    total.add(&fstat(&root).map_err(io::Error::from)?);
    let mut stack: Vec<OwningIter> = vec![Dir::from_fd(root).map_err(io::Error::from)?.into_iter()];
    while let Some(dir) = stack.last_mut() {
        let Some(entry) = dir.next() else {
            stack.pop();
            continue;
        };
        let entry = entry.map_err(io::Error::from)?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        total.entries += 1;
        if total.entries > limits.max_entries {
            return Err(io::Error::other(format!(
                "{}: more than {} entries",
                path.display(),
                limits.max_entries
            )));
        }
        // SAFETY: the descriptor belongs to `dir`, which outlives this borrow.
        let parent = unsafe { BorrowedFd::borrow_raw(dir.as_raw_fd()) };
        let st = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Removed since it was listed.
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        if !total.add(&st) || !is_dir(&st) {
            continue;
        }
        if stack.len() > limits.max_depth {
            return Err(io::Error::other(format!(
                "{}: deeper than {} directories",
                path.display(),
                limits.max_depth
            )));
        }
        let Some(child) = open_beneath(parent, name)? else {
            // No longer a directory (swapped for a symlink or a file since it was
            // stated), or another mount: counted as stated, not entered.
            continue;
        };
        stack.push(Dir::from_fd(child).map_err(io::Error::from)?.into_iter());
    }
    Ok((total.bytes, total.inodes))
}

/// What a walk counted so far.
#[derive(Default)]
struct Totals {
    bytes: u64,
    inodes: u64,
    entries: u64,
    /// Files with more than one link already counted.
    seen: HashSet<(u64, u64)>,
}

impl Totals {
    /// Counts `st` unless it is a hard link counted before; says whether it counted.
    fn add(&mut self, st: &FileStat) -> bool {
        if st.st_nlink > 1 && !is_dir(st) && !self.seen.insert((st.st_dev, st.st_ino)) {
            return false;
        }
        self.bytes += (st.st_blocks as u64) * 512;
        self.inodes += 1;
        true
    }
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// Opens the directory `name` of `parent`, never leaving it: `None` when what is there now
/// is not a directory of the same mount.
fn open_beneath(parent: BorrowedFd<'_>, name: &std::ffi::CStr) -> io::Result<Option<OwnedFd>> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let mut attempt = 1;
    loop {
        match nix::fcntl::openat2(parent, name, how) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::EAGAIN) if attempt < OPEN_ATTEMPTS => attempt += 1,
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests;
