//! Errors of the network crate and the gRPC [`Class`] each belongs to.

use std::io;
use std::path::PathBuf;

use crate::cidr::{Cidr, CidrError};
use crate::netlink::NetlinkError;

pub use berth_class::{Class, Classify};

/// What the network operations can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error("invalid pod network request: {0}")]
    InvalidRequest(String),
    /// A pod CIDR could not be parsed.
    #[error("invalid pod CIDR")]
    InvalidCidr(#[from] CidrError),
    /// A pod CIDR has no room for a gateway and pods.
    #[error("pod CIDR {0} is too small for a gateway and pods")]
    CidrTooSmall(Cidr),
    /// The pod's network namespace cannot be used.
    #[error("network namespace {path:?} of pod {pod_id}")]
    Netns {
        /// The pod.
        pod_id: String,
        /// The namespace path it gave.
        path: PathBuf,
        /// Why it cannot be used.
        #[source]
        source: io::Error,
    },
    /// No address is left in a pod network.
    #[error("no free address left in pod network {0}")]
    Exhausted(Cidr),
    /// A netlink operation failed.
    #[error("{op}")]
    Netlink {
        /// What was being done.
        op: String,
        /// The kernel's answer.
        #[source]
        source: NetlinkError,
    },
    /// A file or process operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The metadata store failed.
    #[error("network metadata store")]
    Store(#[source] Box<redb::Error>),
    /// A stored record cannot be read back.
    #[error("corrupt network record {key}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The network cannot serve pods yet.
    #[error("network not ready: {0}")]
    NotReady(String),
    /// The CNI configuration is missing or invalid.
    #[error("CNI config {path:?}: {reason}")]
    CniConfig {
        /// The file (or directory) concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A CNI plugin binary is missing.
    #[error("CNI plugin {plugin:?} not found in {dirs:?}")]
    CniPluginNotFound {
        /// The plugin type.
        plugin: String,
        /// The directories searched.
        dirs: Vec<PathBuf>,
    },
    /// A CNI plugin reported an error.
    #[error("CNI plugin {plugin} {command} failed (code {code}): {msg}{}", if .details.is_empty() { String::new() } else { format!(": {}", .details) })]
    CniPlugin {
        /// The plugin type.
        plugin: String,
        /// ADD, DEL, CHECK, STATUS or GC.
        command: String,
        /// The CNI error code.
        code: u32,
        /// The plugin's message.
        msg: String,
        /// The plugin's details.
        details: String,
    },
    /// A CNI plugin did not finish in time.
    #[error("CNI plugin {plugin} {command} did not finish within {seconds} s")]
    CniTimeout {
        /// The plugin type.
        plugin: String,
        /// The command.
        command: String,
        /// The limit.
        seconds: u64,
    },
    /// A CNI plugin's output is not a CNI result.
    #[error("CNI plugin {plugin} {command} returned an invalid result: {reason}")]
    CniResult {
        /// The plugin type.
        plugin: String,
        /// The command.
        command: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Error {
        Error::Store(Box::new(e))
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::Store(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl Classify for Error {
    fn class(&self) -> Class {
        match self {
            Error::InvalidRequest(_) | Error::InvalidCidr(_) | Error::CidrTooSmall(_) => {
                Class::InvalidArgument
            }
            Error::Netns { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                Class::NotFound
            }
            Error::Netns { .. } => Class::FailedPrecondition,
            Error::Exhausted(_) => Class::ResourceExhausted,
            Error::NotReady(_) | Error::CniConfig { .. } | Error::CniPluginNotFound { .. } => {
                Class::FailedPrecondition
            }
            Error::CniTimeout { .. } => Class::DeadlineExceeded,
            Error::Netlink { .. }
            | Error::Io { .. }
            | Error::Store(_)
            | Error::Corrupt { .. }
            | Error::CniPlugin { .. }
            | Error::CniResult { .. } => Class::Internal,
        }
    }
}

impl Error {
    pub(crate) fn netlink(op: impl Into<String>) -> impl FnOnce(NetlinkError) -> Error {
        move |source| Error::Netlink {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io {
            what: what.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_cause() {
        assert_eq!(
            Error::InvalidRequest("x".into()).class(),
            Class::InvalidArgument
        );
        let nf = Error::Netns {
            pod_id: "p".into(),
            path: "/x".into(),
            source: io::ErrorKind::NotFound.into(),
        };
        assert_eq!(nf.class(), Class::NotFound);
        let t = Error::CniTimeout {
            plugin: "bridge".into(),
            command: "ADD".into(),
            seconds: 1,
        };
        assert_eq!(t.class(), Class::DeadlineExceeded);
        let p = Error::CniPlugin {
            plugin: "bridge".into(),
            command: "ADD".into(),
            code: 11,
            msg: "boom".into(),
            details: "more".into(),
        };
        assert_eq!(
            p.to_string(),
            "CNI plugin bridge ADD failed (code 11): boom: more"
        );
        assert_eq!(p.class(), Class::Internal);
    }
}
