//! The runtime's error type, and the gRPC [`Class`] each error belongs to.

use std::path::PathBuf;

pub use berth_class::{Class, Classify};

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad request: the message names the field and what was wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// An unknown pod or container id.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// "pod sandbox" or "container".
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The metadata is already used by another pod or container.
    #[error("{kind} name {name:?} is reserved by {holder}")]
    AlreadyExists {
        /// "pod sandbox" or "container".
        kind: &'static str,
        /// The name built from the metadata.
        name: String,
        /// The id of the object holding the name.
        holder: String,
    },
    /// The object's state forbids the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A deadline passed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A file system operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done ("create", "write", ...).
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{0}")]
    Sys(String, #[source] std::io::Error),
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Db(String),
    /// A record in the database could not be decoded.
    #[error("corrupt record {0}")]
    Corrupt(String, #[source] serde_json::Error),
    /// The pod monitor could not be reached or answered with an error.
    #[error("pod monitor of {pod}: {message}")]
    Monitor {
        /// The pod.
        pod: String,
        /// What went wrong.
        message: String,
        /// The class the monitor gave its error.
        class: Class,
    },
    /// The pod monitor is not running (the pod was stopped, or the monitor died).
    #[error("pod monitor of {pod} is not reachable: {message}")]
    MonitorGone {
        /// The pod.
        pod: String,
        /// Why.
        message: String,
    },
    /// The pod monitor did not start.
    #[error("cannot start pod monitor {path}: {message}")]
    MonitorStart {
        /// The monitor binary.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// systemd refused a call of the systemd cgroup driver, or could not be reached.
    #[error("systemd: {0}")]
    Systemd(String, #[source] crate::cgroups::dbus::BusError),
    /// Anything else that is the runtime's fault.
    #[error("{0}")]
    Internal(String),
}

impl Classify for Error {
    fn class(&self) -> Class {
        match self {
            Error::InvalidArgument(_) => Class::InvalidArgument,
            Error::NotFound { .. } => Class::NotFound,
            Error::AlreadyExists { .. } => Class::AlreadyExists,
            Error::FailedPrecondition(_) => Class::FailedPrecondition,
            Error::DeadlineExceeded(_) => Class::DeadlineExceeded,
            Error::Monitor { class, .. } => *class,
            Error::MonitorGone { .. } => Class::FailedPrecondition,
            Error::Io { .. }
            | Error::Sys(..)
            | Error::Db(_)
            | Error::Corrupt(..)
            | Error::MonitorStart { .. }
            | Error::Systemd(..)
            | Error::Internal(_) => Class::Internal,
        }
    }
}

impl Error {
    /// The message with its chain of causes, for logs and container records.
    pub fn full_message(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            out.push_str(": ");
            out.push_str(&cause.to_string());
            source = cause.source();
        }
        out
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn db(e: impl std::fmt::Display) -> Self {
        Error::Db(e.to_string())
    }

    pub(crate) fn pod_not_found(id: &str) -> Self {
        Error::NotFound {
            kind: "pod sandbox",
            id: id.to_owned(),
        }
    }

    pub(crate) fn container_not_found(id: &str) -> Self {
        Error::NotFound {
            kind: "container",
            id: id.to_owned(),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_chain() {
        let e = Error::io(
            "open",
            "/x",
            std::io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(e.class(), Class::Internal);
        assert!(
            e.full_message().starts_with("open /x: "),
            "{}",
            e.full_message()
        );
        assert_eq!(Error::container_not_found("abc").class(), Class::NotFound);
        assert_eq!(
            Error::container_not_found("abc").to_string(),
            "container \"abc\" not found"
        );
        let m = Error::Monitor {
            pod: "p".into(),
            message: "m".into(),
            class: Class::DeadlineExceeded,
        };
        assert_eq!(m.class(), Class::DeadlineExceeded);
    }

    /// A pod monitor of the previous version (whose wire class was its own enum) still
    /// talks to this daemon: every class it sent decodes to the same class, and the
    /// daemon's classes encode under the same names.
    #[test]
    fn monitor_error_classes_keep_their_wire_names() {
        use crate::protocol::Response;
        for (name, class) in [
            ("invalid_argument", Class::InvalidArgument),
            ("not_found", Class::NotFound),
            ("failed_precondition", Class::FailedPrecondition),
            ("deadline_exceeded", Class::DeadlineExceeded),
            ("internal", Class::Internal),
        ] {
            let frame = format!(r#"{{"r":"error","class":"{name}","message":"m"}}"#);
            let decoded: Response = serde_json::from_str(&frame).unwrap();
            assert_eq!(
                decoded,
                Response::Error {
                    class,
                    message: "m".into()
                }
            );
            assert_eq!(serde_json::to_string(&decoded).unwrap(), frame);
        }
    }
}
