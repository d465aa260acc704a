//! Code Berth's tests share and the product does not ship: the client end of the streaming
//! protocols, which cri's streaming tests and the e2e suite drive the server with.
//!
//! It depends on `berth-cri` for the protocol codecs the server uses too (SPDY sessions,
//! WebSocket framing, the remotecommand channels), so cri uses it only from its
//! integration tests (`cri/tests/`), where both see the one `berth_cri` library. The
//! expected metric families are plain data, which cri's unit tests read too.

pub mod metrics;
pub mod streaming_client;
