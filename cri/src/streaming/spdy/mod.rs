//! SPDY/3.1 as Kubernetes streaming uses it: framing, header compression and sessions of
//! multiplexed streams over one upgraded HTTP/1.1 connection. No maintained crate speaks it,
//! so this is a small implementation of just what the protocol needs.

pub mod frame;
pub mod headers;
pub mod session;

pub use headers::{Headers, get as header};
pub use session::{Incoming, OpenError, Role, Session, SessionConfig, Stream};

/// The `Upgrade` token of SPDY/3.1.
pub const UPGRADE_TOKEN: &str = "SPDY/3.1";
