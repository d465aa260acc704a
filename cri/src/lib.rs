//! Berth's CRI v1 front: the gRPC services kubelet and crictl talk to, the daemon's
//! configuration, metadata store and lifecycle. The `berth` binary only parses arguments and
//! calls [`server::run`].

pub mod accept;
pub mod config;
pub mod containers;
pub mod deadline;
pub mod images;
pub mod leaks;
pub mod lock;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod pods;
pub mod runtime_info;
pub mod server;
pub mod service;
pub mod stats;
pub mod status;
pub mod store;
pub mod streaming;

/// The answer for an RPC whose capability Berth does not have yet.
pub(crate) fn not_implemented(rpc: &str) -> tonic::Status {
    tonic::Status::unimplemented(format!("berth does not implement {rpc} yet"))
}
