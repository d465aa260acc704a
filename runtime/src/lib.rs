//! Pod sandboxes and containers: records and their state machine, the plan of each container
//! (mounts, argv, ids), the pod monitor and Berth's own container executor.
//!
//! The daemon holds a [`Runtime`]; each pod is one `berth-monitor` process (see [`monitor`])
//! that holds the pod's namespaces and creates, reaps and logs its containers. The monitor
//! binary reaches only `monitor`, `protocol`, `spec`, `crilog`, `sysctl` and `sys`: no async runtime.

// Plain data and pure decisions, unit-tested.
pub mod cgroups;
pub mod command;
pub mod crilog;
pub mod error;
pub mod image;
pub mod lsm;
pub mod oci;
pub mod plan;
pub mod podfiles;
pub mod protocol;
pub mod seccomp;
pub mod security;
/// The planned container, which crosses the protocol: see [`protocol::spec`].
pub use protocol::spec;
pub mod status;
pub mod sysctl;
pub mod usage;
pub mod user;
pub mod userns;

// Kernel and process code.
pub mod monitor;
pub mod sys;

// The daemon's side.
mod client;
mod container;
mod launch;
mod pod;
mod runtime;
mod store;
mod stream;

pub use cgroups::{CgroupManager, NoCgroups};
pub use container::MAX_EXEC_OUTPUT;
pub use error::{Class, Classify, Error, ErrorClass, Result};
pub use image::{ImageConfig, ImageInfo};
pub use pod::{PodCreated, PodStopped};
pub use runtime::{Census, FILES_LOST, ReconcileReport, Runtime, RuntimeOptions};
pub use store::{ContainerPhase, ContainerRecord, ImageRecord, PodPhase, PodRecord};
pub use stream::{AttachSession, ExecSession, StreamTarget};
pub use usage::{ContainerTarget, PodTarget};
