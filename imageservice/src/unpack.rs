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

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use crate::tarstream::TarError;

mod entries;
mod fsops;
mod lowers;
mod stream;
mod usage;

pub use fsops::get_xattr;
pub use lowers::link_from_lowers;
pub use usage::{WalkLimits, disk_usage, disk_usage_within};

use entries::unpack_tar;
use stream::{CHUNKS_IN_FLIGHT, Piece, PieceReader, Stopped, decompress};

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

#[cfg(test)]
pub(crate) mod tests;
