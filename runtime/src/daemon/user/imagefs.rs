//! Reading a file of an image as the container's merged root will show it, from the
//! unpacked layer directories alone and without ever leaving them.
//!
//! A host path join (`layer.join("etc/passwd")`) follows the image's symlinks on the node:
//! an image whose `/etc` is a symlink to `/etc` would have the daemon read the node's
//! `/etc/passwd`, and `etc/passwd -> /etc/shadow` the node's shadow file. Here each path
//! component is looked up in each layer by fd (`openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS`, `O_NOFOLLOW`, one name at a time), the layers merge as overlayfs
//! merges them (the topmost entry wins; a whiteout hides what is below; an opaque
//! directory hides the directories below it; a non-directory above a directory hides
//! it), and an image symlink is resolved again from the image's root (an absolute target
//! starts at the image's `/`, `..` never climbs above it), at most [`MAX_SYMLINKS`] times.
//!
//! Whiteouts are recognised in both forms an unpacked layer may hold them: overlayfs' own
//! (a 0/0 character device, the `trusted.overlay.opaque` xattr set to `y`), which is what
//! the image service writes, and the OCI layer form (`.wh.<name>` files, `.wh..wh..opq`).

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::sys::stat::{SFlag, fstatat};

use crate::sys;

/// How many symlinks one lookup may follow, as the kernel's own limit (`ELOOP`).
pub const MAX_SYMLINKS: usize = 40;

const RESOLVE_NO_XDEV: u64 = 0x01;
const RESOLVE_BENEATH: u64 = 0x08;
/// One name below a directory fd: no symlink, no magic link, no other mount, no `..`.
const ONE_NAME: u64 =
    RESOLVE_BENEATH | sys::RESOLVE_NO_SYMLINKS | sys::RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Why a file of an image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    /// More than [`MAX_SYMLINKS`] symlinks on the way: a loop such as `etc -> /etc`.
    #[error("{path}: more than {MAX_SYMLINKS} symbolic links on the way (a symlink loop)")]
    TooManyLinks {
        /// The path asked for.
        path: String,
    },
    /// The file is larger than the caller's limit.
    #[error("{path}: larger than {limit} bytes")]
    TooLarge {
        /// The path asked for.
        path: String,
        /// The limit.
        limit: u64,
    },
    /// The path names a directory, a device, a FIFO or a socket.
    #[error("{path}: not a regular file")]
    NotAFile {
        /// The path asked for.
        path: String,
    },
    /// A system call on a layer failed.
    #[error("{path}: {op}")]
    Io {
        /// The path asked for.
        path: String,
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// An image's unpacked layers, opened once, topmost first.
pub struct ImageRoot {
    layers: Vec<OwnedFd>,
}

/// One layer's entry for a name.
enum Entry {
    /// Not in this layer: look below.
    Missing,
    /// Deleted by this layer: nothing below counts.
    Whiteout,
    /// A directory, and whether it hides the layers below it.
    Dir(OwnedFd, bool),
    /// A regular file, opened for reading.
    File(OwnedFd),
    /// A symlink and its target.
    Symlink(OsString),
    /// A device, FIFO or socket.
    Other,
}

/// A name looked up through all layers.
enum Merged {
    Missing,
    /// The directory's fd in each layer that shows it, topmost first.
    Dir(Vec<OwnedFd>),
    File(OwnedFd),
    Symlink(OsString),
    Other,
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Whether the directory `fd` is marked opaque by overlayfs' xattr.
fn opaque_xattr(fd: &OwnedFd) -> bool {
    let mut v = [0u8; 2];
    // SAFETY: `fd` is an open directory; the name is NUL-terminated; `v` is a live buffer of
    // the length passed.
    let len = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            c"trusted.overlay.opaque".as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    len == 1 && v[0] == b'y'
}

/// Whether `name` exists in the directory `dir`, as anything, without following it.
fn exists(dir: &OwnedFd, name: &OsStr) -> bool {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
}

/// `name` in the layer directory `dir`.
fn lookup(dir: &OwnedFd, name: &OsStr) -> io::Result<Entry> {
    let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(nix::errno::Errno::ENOENT) => {
            let mut wh = WHITEOUT_PREFIX.to_vec();
            wh.extend_from_slice(name.as_bytes());
            return Ok(if exists(dir, OsStr::from_bytes(&wh)) {
                Entry::Whiteout
            } else {
                Entry::Missing
            });
        }
        Err(e) => return Err(errno(e)),
    };
    let kind = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
    if kind == SFlag::S_IFDIR {
        let fd = sys::openat2(
            dir.as_raw_fd(),
            Path::new(name),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
            ONE_NAME,
        )?;
        let opaque = opaque_xattr(&fd) || exists(&fd, OsStr::new(OPAQUE_MARKER));
        Ok(Entry::Dir(fd, opaque))
    } else if kind == SFlag::S_IFREG {
        // Opening a regular file has no side effects; O_NONBLOCK and the check after the
        // open keep a FIFO swapped in meanwhile from blocking or being read.
        let fd = sys::openat2(
            dir.as_raw_fd(),
            Path::new(name),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
            0,
            ONE_NAME,
        )?;
        let st = nix::sys::stat::fstat(&fd).map_err(errno)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(Entry::Other);
        }
        Ok(Entry::File(fd))
    } else if kind == SFlag::S_IFLNK {
        let target = nix::fcntl::readlinkat(dir, name).map_err(errno)?;
        Ok(Entry::Symlink(target))
    } else if kind == SFlag::S_IFCHR && st.st_rdev == 0 {
        Ok(Entry::Whiteout)
    } else {
        Ok(Entry::Other)
    }
}

/// `name` in the merged directory whose layers are `dirs` (topmost first).
fn lookup_merged(dirs: &[OwnedFd], name: &OsStr) -> io::Result<Merged> {
    let mut found: Vec<OwnedFd> = Vec::new();
    for dir in dirs {
        match lookup(dir, name)? {
            Entry::Missing => continue,
            Entry::Whiteout => break,
            Entry::Dir(fd, opaque) => {
                found.push(fd);
                if opaque {
                    break;
                }
            }
            // The topmost entry is not a directory: it is what the merged view shows.
            Entry::File(fd) if found.is_empty() => return Ok(Merged::File(fd)),
            Entry::Symlink(t) if found.is_empty() => return Ok(Merged::Symlink(t)),
            Entry::Other if found.is_empty() => return Ok(Merged::Other),
            // A non-directory below a directory is hidden, and so is all below it.
            Entry::File(_) | Entry::Symlink(_) | Entry::Other => break,
        }
    }
    Ok(if found.is_empty() {
        Merged::Missing
    } else {
        Merged::Dir(found)
    })
}

/// The components of `path` in order, as bytes.
fn components(path: &OsStr) -> impl DoubleEndedIterator<Item = OsString> + '_ {
    path.as_bytes()
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| OsStr::from_bytes(c).to_owned())
}

impl ImageRoot {
    /// Opens the image whose unpacked layers are `lower_dirs`, topmost first (the daemon's
    /// own snapshot directories).
    pub fn open(lower_dirs: &[PathBuf]) -> io::Result<ImageRoot> {
        let layers = lower_dirs
            .iter()
            .map(|d| sys::openat2(libc::AT_FDCWD, d, libc::O_RDONLY | libc::O_DIRECTORY, 0, 0))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(ImageRoot { layers })
    }

    /// The regular file at `path` (absolute or not, always from the image's root), opened
    /// for reading; `None` if the image has nothing there (or a component on the way is
    /// not a directory), as a read in the container would find nothing.
    pub fn open_file(&self, path: &str) -> Result<Option<OwnedFd>, ImageFileError> {
        let io_err = |op, source| ImageFileError::Io {
            path: path.to_owned(),
            op,
            source,
        };
        // The directories walked so far below the root; `..` pops one (never the root).
        let mut levels: Vec<Vec<OwnedFd>> = Vec::new();
        let mut pending: Vec<OsString> = components(OsStr::new(path)).rev().collect();
        let mut links = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                levels.pop();
                continue;
            }
            let here = levels.last().map_or(&self.layers[..], Vec::as_slice);
            let last = pending.is_empty();
            match lookup_merged(here, &name).map_err(|e| io_err("look up", e))? {
                Merged::Missing => return Ok(None),
                Merged::Dir(_) if last => {
                    return Err(ImageFileError::NotAFile {
                        path: path.to_owned(),
                    });
                }
                Merged::Dir(fds) => levels.push(fds),
                Merged::File(fd) if last => return Ok(Some(fd)),
                Merged::Other if last => {
                    return Err(ImageFileError::NotAFile {
                        path: path.to_owned(),
                    });
                }
                // ENOTDIR in the container: nothing to read.
                Merged::File(_) | Merged::Other => return Ok(None),
                Merged::Symlink(target) => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(ImageFileError::TooManyLinks {
                            path: path.to_owned(),
                        });
                    }
                    if target.as_bytes().starts_with(b"/") {
                        levels.clear();
                    }
                    pending.extend(components(&target).rev());
                }
            }
        }
        // The path was the root itself (or climbed back to it).
        Err(ImageFileError::NotAFile {
            path: path.to_owned(),
        })
    }

    /// The contents of the regular file at `path` (see [`ImageRoot::open_file`]); a file
    /// over `limit` bytes is refused, never truncated (a cut line would read as another
    /// entry).
    pub fn read_file(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, ImageFileError> {
        let Some(fd) = self.open_file(path)? else {
            return Ok(None);
        };
        let too_large = || ImageFileError::TooLarge {
            path: path.to_owned(),
            limit,
        };
        let mut data = Vec::new();
        std::fs::File::from(fd)
            .take(limit.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|source| ImageFileError::Io {
                path: path.to_owned(),
                op: "read",
                source,
            })?;
        if data.len() as u64 > limit {
            return Err(too_large());
        }
        Ok(Some(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Layer directories under a temp dir, topmost first.
    struct Layers {
        _dir: tempfile::TempDir,
        dirs: Vec<PathBuf>,
    }

    impl Layers {
        fn new(n: usize) -> Layers {
            let dir = tempfile::tempdir().unwrap();
            let dirs: Vec<PathBuf> = (0..n).map(|i| dir.path().join(format!("l{i}"))).collect();
            for d in &dirs {
                std::fs::create_dir(d).unwrap();
            }
            Layers { _dir: dir, dirs }
        }

        fn file(&self, layer: usize, rel: &str, data: &str) {
            let p = self.dirs[layer].join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }

        fn dir(&self, layer: usize, rel: &str) {
            std::fs::create_dir_all(self.dirs[layer].join(rel)).unwrap();
        }

        fn link(&self, layer: usize, rel: &str, target: &str) {
            let p = self.dirs[layer].join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            symlink(target, p).unwrap();
        }

        /// overlayfs' whiteout, as the image service unpacks one.
        fn whiteout(&self, layer: usize, rel: &str) {
            let p = sys::cpath(&self.dirs[layer].join(rel)).unwrap();
            // SAFETY: a valid NUL-terminated path; mknod creates a 0/0 character device.
            let rc = unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o600, 0) };
            assert_eq!(rc, 0, "mknod: {}", io::Error::last_os_error());
        }

        /// overlayfs' opaque mark, as the image service unpacks one.
        fn opaque(&self, layer: usize, rel: &str) {
            self.dir(layer, rel);
            let p = sys::cpath(&self.dirs[layer].join(rel)).unwrap();
            // SAFETY: valid NUL-terminated strings; the value is one byte long.
            let rc = unsafe {
                libc::lsetxattr(
                    p.as_ptr(),
                    c"trusted.overlay.opaque".as_ptr(),
                    b"y".as_ptr().cast(),
                    1,
                    0,
                )
            };
            assert_eq!(rc, 0, "setxattr: {}", io::Error::last_os_error());
        }

        fn read(&self, path: &str) -> Result<Option<String>, ImageFileError> {
            ImageRoot::open(&self.dirs)
                .unwrap()
                .read_file(path, 1 << 20)
                .map(|d| d.map(|d| String::from_utf8(d).unwrap()))
        }
    }

    #[test]
    fn an_etc_symlink_to_the_nodes_etc_loops_inside_the_image() {
        let l = Layers::new(2);
        l.link(0, "etc", "/etc");
        // A real etc/passwd below is hidden by the symlink above it.
        l.file(1, "etc/passwd", "lower\n");
        let e = l.read("/etc/passwd").unwrap_err();
        assert!(matches!(e, ImageFileError::TooManyLinks { .. }), "{e}");
        // A symlink to a directory only the node has: nothing in the image.
        let l = Layers::new(1);
        l.link(0, "etc", "/usr/share/base-passwd");
        assert_eq!(l.read("/etc/passwd").unwrap(), None);
        // `..` in a target needs its directories in the image, as in the kernel.
        let l = Layers::new(1);
        l.link(0, "etc", "/usr/../var");
        l.file(0, "var/passwd", "image var\n");
        assert_eq!(l.read("/etc/passwd").unwrap(), None);
        l.dir(0, "usr");
        assert_eq!(
            l.read("/etc/passwd").unwrap().as_deref(),
            Some("image var\n")
        );
    }

    #[test]
    fn a_passwd_symlink_to_shadow_reads_the_images_shadow_or_nothing() {
        let l = Layers::new(1);
        l.link(0, "etc/passwd", "/etc/shadow");
        assert_eq!(l.read("/etc/passwd").unwrap(), None);
        l.file(0, "etc/shadow", "image shadow\n");
        assert_eq!(
            l.read("etc/passwd").unwrap().as_deref(),
            Some("image shadow\n")
        );
        // Relative targets resolve from the symlink's directory.
        let l = Layers::new(1);
        l.link(0, "etc/passwd", "passwd.real");
        l.file(0, "etc/passwd.real", "real\n");
        assert_eq!(l.read("/etc/passwd").unwrap().as_deref(), Some("real\n"));
    }

    #[test]
    fn dotdot_never_climbs_above_the_image_root() {
        let l = Layers::new(1);
        l.link(0, "etc/passwd", "../../../../../../../../etc/hostname");
        l.file(0, "etc/hostname", "image hostname\n");
        assert_eq!(
            l.read("/etc/passwd").unwrap().as_deref(),
            Some("image hostname\n")
        );
        let l = Layers::new(1);
        l.link(0, "etc", "../../..");
        l.file(0, "passwd", "at the image root\n");
        assert_eq!(
            l.read("/etc/passwd").unwrap().as_deref(),
            Some("at the image root\n")
        );
        // The path asked for is clamped too.
        assert_eq!(
            l.read("/../../../passwd").unwrap().as_deref(),
            Some("at the image root\n")
        );
    }

    #[test]
    fn symlink_loops_and_chains_are_bounded() {
        let l = Layers::new(1);
        l.link(0, "etc/a", "b");
        l.link(0, "etc/b", "/etc/a");
        assert!(matches!(
            l.read("/etc/a"),
            Err(ImageFileError::TooManyLinks { .. })
        ));
        // A chain of exactly MAX_SYMLINKS links is followed; one more is refused.
        let l = Layers::new(1);
        l.file(0, "f/end", "end\n");
        for i in 0..=MAX_SYMLINKS {
            let next = if i == 0 {
                "end".to_string()
            } else {
                format!("l{}", i - 1)
            };
            l.link(0, &format!("f/l{i}"), &next);
        }
        let forty = format!("/f/l{}", MAX_SYMLINKS - 1);
        assert_eq!(l.read(&forty).unwrap().as_deref(), Some("end\n"));
        let forty_one = format!("/f/l{MAX_SYMLINKS}");
        assert!(matches!(
            l.read(&forty_one),
            Err(ImageFileError::TooManyLinks { .. })
        ));
    }

    #[test]
    fn whiteouts_hide_what_is_below() {
        let l = Layers::new(3);
        l.dir(0, "etc");
        l.whiteout(0, "etc/passwd");
        l.file(1, "etc/passwd", "middle\n");
        l.file(2, "etc/passwd", "bottom\n");
        l.file(2, "etc/group", "bottom group\n");
        assert_eq!(l.read("/etc/passwd").unwrap(), None);
        assert_eq!(
            l.read("/etc/group").unwrap().as_deref(),
            Some("bottom group\n")
        );
        // The OCI form, and a whited-out directory.
        let l = Layers::new(2);
        l.dir(0, "etc");
        l.file(0, "etc/.wh.group", "");
        l.whiteout(0, "var");
        l.file(1, "etc/group", "hidden\n");
        l.file(1, "var/passwd", "hidden\n");
        assert_eq!(l.read("/etc/group").unwrap(), None);
        assert_eq!(l.read("/var/passwd").unwrap(), None);
    }

    #[test]
    fn opaque_directories_hide_the_layers_below() {
        let l = Layers::new(2);
        l.opaque(0, "etc");
        l.file(0, "etc/group", "top group\n");
        l.file(1, "etc/passwd", "hidden\n");
        assert_eq!(l.read("/etc/passwd").unwrap(), None);
        assert_eq!(
            l.read("/etc/group").unwrap().as_deref(),
            Some("top group\n")
        );
        // The OCI marker form.
        let l = Layers::new(2);
        l.file(0, "etc/.wh..wh..opq", "");
        l.file(1, "etc/passwd", "hidden\n");
        assert_eq!(l.read("/etc/passwd").unwrap(), None);
        // Without the mark, directories merge.
        let l = Layers::new(2);
        l.file(0, "etc/group", "top group\n");
        l.file(1, "etc/passwd", "lower passwd\n");
        assert_eq!(
            l.read("/etc/passwd").unwrap().as_deref(),
            Some("lower passwd\n")
        );
    }

    #[test]
    fn a_link_in_an_upper_layer_reaches_a_file_of_a_lower_one() {
        let l = Layers::new(3);
        l.link(0, "etc/passwd", "/usr/lib/passwd");
        l.dir(1, "usr");
        l.file(2, "usr/lib/passwd", "from the bottom\n");
        assert_eq!(
            l.read("/etc/passwd").unwrap().as_deref(),
            Some("from the bottom\n")
        );
    }

    #[test]
    fn a_file_above_a_directory_hides_it() {
        let l = Layers::new(2);
        l.file(0, "etc", "i am a file\n");
        l.file(1, "etc/passwd", "hidden\n");
        assert_eq!(l.read("/etc/passwd").unwrap(), None);
    }

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let l = Layers::new(1);
        l.dir(0, "etc/passwd");
        assert!(matches!(
            l.read("/etc/passwd"),
            Err(ImageFileError::NotAFile { .. })
        ));
        let l = Layers::new(1);
        l.dir(0, "etc");
        nix::unistd::mkfifo(&l.dirs[0].join("etc/passwd"), nix::sys::stat::Mode::S_IRUSR).unwrap();
        assert!(matches!(
            l.read("/etc/passwd"),
            Err(ImageFileError::NotAFile { .. })
        ));
        let l = Layers::new(1);
        l.file(0, "etc/passwd", &"x".repeat(100));
        let root = ImageRoot::open(&l.dirs).unwrap();
        assert_eq!(
            root.read_file("/etc/passwd", 100).unwrap().unwrap().len(),
            100
        );
        assert!(matches!(
            root.read_file("/etc/passwd", 99),
            Err(ImageFileError::TooLarge { limit: 99, .. })
        ));
    }
}
