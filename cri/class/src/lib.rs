//! The gRPC status classes of Berth's errors.
//!
//! Every library whose errors reach kubelet (the runtime, the image service, the network)
//! implements [`Classify`] for its error type, and the CRI turns any classified error into
//! a `tonic::Status` in one place (`berth_cri::status::status`). This crate has no
//! dependencies, so the libraries say their class without depending on gRPC; with the
//! `serde` feature a class crosses the daemon <-> pod monitor wire under the names
//! `invalid_argument`, `not_found`, ... (snake case of the variant).

/// The gRPC status class of an error: which `tonic::Code` kubelet sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Class {
    /// The request itself is wrong (missing metadata, a bad reference, a bad pod CIDR).
    InvalidArgument,
    /// The named pod, container, image or network namespace does not exist.
    NotFound,
    /// An object with the same name exists.
    AlreadyExists,
    /// A registry refused the credentials, or there were none.
    PermissionDenied,
    /// The object or the node is not in a state that allows the call (start of a running
    /// container, network not ready, an unusable image).
    FailedPrecondition,
    /// A resource ran out: the pod network's addresses, the image store's disk.
    ResourceExhausted,
    /// The call did not finish in the time allowed (ExecSync, a CNI plugin).
    DeadlineExceeded,
    /// A remote (a registry) could not be reached or misbehaved; a retry may succeed.
    Unavailable,
    /// Berth, the kernel or the disk failed.
    Internal,
}

/// An error that knows its gRPC status class.
pub trait Classify {
    /// The class kubelet should see this error as.
    fn class(&self) -> Class;
}
