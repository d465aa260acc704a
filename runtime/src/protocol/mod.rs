//! What crosses the process boundary between the daemon and a pod's `berth-monitor`: the
//! wire messages and their framing ([`messages`]) and the planned container ([`spec`]).

mod messages;
pub mod spec;

pub use messages::*;
