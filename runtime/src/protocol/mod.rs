//! What crosses the process boundary between the daemon and a pod's `berth-monitor`, version
//! [`PROTOCOL_VERSION`].
//!
//! A connection to `<state>/pods/<id>/monitor.sock` carries frames ([`framing`]), each a
//! 4-byte big-endian length and that many bytes of JSON. The daemon sends a [`Request`]; the
//! monitor answers with one [`Response`] ([`messages`]). File descriptors (an exec's stdout
//! and stderr) travel as `SCM_RIGHTS` with the request's first bytes ([`fds`]). After
//! `subscribe` the connection stays open and the monitor pushes a `Response::Event` frame per
//! container exit. A daemon checks the version with `hello` when it adopts a monitor; an
//! unknown `op` is answered with an error, so a newer daemon can probe for features. A
//! `create` carries the planned container ([`spec`]).

pub mod fds;
mod framing;
mod messages;
pub mod spec;

pub use framing::*;
pub use messages::*;
