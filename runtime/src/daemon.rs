//! The daemon's side of the runtime: the [`Runtime`](runtime::Runtime) that serves CRI's
//! pod and container calls, its records, the plan of each container, cgroups, and the client
//! side of each pod's `berth-monitor` (launching it, talking to it, streaming through it).
//!
//! Plain data and pure decisions (unit-tested) sit beside the code that drives them:
//! `plan`, `command`, `user`, `userns`, `security` and `lsm` decide what a container gets;
//! `runtime`, `pod`, `container` and `store` keep the state; `launch`, `client` and `stream`
//! reach the monitor.

// Plain data and pure decisions, unit-tested.
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
pub(crate) mod client;
pub(crate) mod container;
pub(crate) mod launch;
pub(crate) mod pod;
pub(crate) mod runtime;
pub(crate) mod store;
pub(crate) mod stream;
