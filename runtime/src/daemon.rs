//! The daemon's side of the runtime: the [`Runtime`](runtime::Runtime) that serves CRI's
//! pod and container calls, its records, the plan of each container, cgroups, and the client
//! side of each pod's `berth-monitor` (launching it, talking to it, streaming through it).
//!
//! Plain data and pure decisions (unit-tested) sit beside the code that drives them:
//! `plan`, `command`, `user`, `userns`, `security` and `lsm` decide what a container gets;
//! `cgroups` places and limits it; `store` keeps the records.
//!
//! [`Runtime`](runtime::Runtime)'s methods are split by concern: the handle, lookups, events
//! and exits in `runtime`, reconciliation at start in `runtime/reconcile`, pods in `pod`,
//! containers in `container`, ExecSync and what every exec shares in `exec`, streaming exec
//! and attach in `stream`, stats in `usage`. `launch` starts a pod's monitor and `client`
//! talks to it.

// Plain data and pure decisions, unit-tested.
pub mod cdi;
pub mod cgroups;
pub mod command;
pub mod image;
pub mod lsm;
pub mod plan;
pub mod podfiles;
pub mod security;
pub mod status;
pub mod usage;
pub mod user;
pub mod userns;

// State and the monitor's client.
pub(crate) mod bundle;
pub(crate) mod client;
pub(crate) mod container;
pub(crate) mod exec;
pub(crate) mod launch;
pub(crate) mod pod;
pub(crate) mod runtime;
pub(crate) mod store;
pub(crate) mod stream;
