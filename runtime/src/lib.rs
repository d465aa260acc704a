//! Pod sandboxes and containers, laid out by the process each piece runs in:
//!
//! - [`daemon`]: what runs in the `berth` daemon: the [`Runtime`] and its records, the plan
//!   of each container (mounts, argv, ids), cgroups, and the client side of each pod's monitor.
//! - [`monitor`]: the `berth-monitor` process, one per pod, which holds the pod's namespaces
//!   and creates, reaps and logs its containers. It runs no async runtime.
//! - [`protocol`] and [`spec`]: what the two processes say to each other.
//! - Shared by both: [`sys`] (system calls), [`namespace`] (the namespace kinds), [`error`],
//!   [`hooks`] (running a container's OCI hooks), [`resident`] (dropping clean file pages);
//!   and three kernel-facing formats: [`crilog`] (the monitor writes CRI logs, the daemon
//!   checks log directories), [`sysctl`] (the daemon validates, the monitor sets) and
//!   [`seccomp`] (the daemon compiles profiles, the monitor loads the filter).
//! - [`oci`]: the bundle the daemon writes for an OCI handler runtime.
//!
//! The daemon's modules are re-exported at the crate root (`berth_runtime::plan`, ...): the
//! paths `cri`, the tests and the monitor's imports of plain data (the security settings,
//! user and user namespace it is sent) name.

pub mod daemon;

// The pod monitor process.
pub mod monitor;

// The protocol between daemon and monitor.
pub mod protocol;
/// The planned container, which crosses the protocol: see [`protocol::spec`].
pub use protocol::spec;

// Shared by both processes.
pub mod crilog;
pub mod error;
pub mod hooks;
pub mod namespace;
pub mod resident;
pub mod seccomp;
pub mod sys;
pub mod sysctl;

// The OCI bundle for handler runtimes (daemon side).
pub mod oci;

pub use daemon::{
    cdi, cgroups, command, image, lsm, plan, podfiles, security, status, usage, user, userns,
};

pub use cgroups::{CgroupManager, NoCgroups};
pub use daemon::exec::MAX_EXEC_OUTPUT;
pub use daemon::pod::{PodCreated, PodStopped};
pub use daemon::runtime::{Census, FILES_LOST, ReconcileReport, Runtime, RuntimeOptions};
pub use daemon::store::{ContainerPhase, ContainerRecord, ImageRecord, PodPhase, PodRecord};
pub use daemon::stream::{AttachSession, ExecSession, StreamTarget};
pub use error::{Class, Classify, Error, Result};
pub use image::{ImageConfig, ImageInfo};
pub use usage::{ContainerTarget, PodTarget};
