//! The image service's error type and the gRPC [`Class`] of each error.

use std::path::PathBuf;

pub use berth_class::{Class, Classify};

/// Everything that can go wrong in the image service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image reference cannot be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it is invalid.
        reason: String,
    },
    /// No local image matches.
    #[error("image {0:?} not found")]
    ImageNotFound(String),
    /// The registry (and every mirror) answered that the manifest does not exist.
    #[error("image {reference} not found in any registry endpoint ({endpoints})")]
    ManifestNotFound {
        /// The normalised reference.
        reference: String,
        /// The endpoints tried, comma separated.
        endpoints: String,
    },
    /// The image index lists no manifest for this node's platform.
    #[error("image {reference} has no manifest for platform {platform} (available: {available})")]
    NoMatchingPlatform {
        /// The normalised reference.
        reference: String,
        /// The node platform, `os/arch[/variant]`.
        platform: String,
        /// The platforms the index offers, comma separated.
        available: String,
    },
    /// The registry rejected our credentials or we had none.
    #[error("registry {endpoint} denied access to {repository}: {reason}")]
    Unauthorized {
        /// The endpoint base URL.
        endpoint: String,
        /// The repository.
        repository: String,
        /// What the registry said.
        reason: String,
    },
    /// The registry could not be reached, or failed on every endpoint.
    #[error("pulling {reference}: {message}")]
    Registry {
        /// The normalised reference (or blob digest).
        reference: String,
        /// What went wrong on each endpoint.
        message: String,
    },
    /// Downloaded bytes do not hash to the expected digest.
    #[error("content {expected} failed verification: got {actual}")]
    DigestMismatch {
        /// The digest the descriptor promised.
        expected: String,
        /// What the bytes hash to (or the size difference).
        actual: String,
    },
    /// A manifest or index or config could not be understood.
    #[error("invalid image {reference}: {reason}")]
    InvalidImage {
        /// The normalised reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// A layer archive is malformed or tries to escape its snapshot.
    #[error("layer {digest} rejected: {reason}")]
    InvalidLayer {
        /// The layer blob digest.
        digest: String,
        /// Which entry and why.
        reason: String,
    },
    /// The work stopped because another part of the same pull failed.
    #[error("cancelled")]
    Cancelled,
    /// A local file operation failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done (`create`, `rename`, ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The metadata database failed.
    #[error("image metadata: {0}")]
    Db(String),
}

impl Classify for Error {
    fn class(&self) -> Class {
        match self {
            Error::InvalidReference { .. } => Class::InvalidArgument,
            Error::ImageNotFound(_)
            | Error::ManifestNotFound { .. }
            | Error::NoMatchingPlatform { .. } => Class::NotFound,
            Error::Unauthorized { .. } => Class::PermissionDenied,
            Error::InvalidImage { .. } | Error::InvalidLayer { .. } => Class::FailedPrecondition,
            Error::Registry { .. } | Error::DigestMismatch { .. } | Error::Cancelled => {
                Class::Unavailable
            }
            Error::Io { source, .. } if is_disk_full(source) => Class::ResourceExhausted,
            Error::Io { .. } | Error::Db(_) => Class::Internal,
        }
    }
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    pub(crate) fn db(e: impl std::fmt::Display) -> Error {
        Error::Db(e.to_string())
    }
}

/// The disk (or the quota) is full: `ENOSPC`, `EDQUOT`.
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}
