//! Errors of the libraries as the gRPC statuses kubelet acts on: each crate says which
//! class its error is, and the message names the object and carries the whole cause chain.

use std::error::Error;

use tonic::{Code, Status};

/// A status with `code` whose message is `what: error: cause: ...`.
pub fn status(code: Code, what: &str, error: &dyn Error) -> Status {
    let mut message = format!("{what}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // thiserror messages often embed their source already; print each text once.
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    Status::new(code, message)
}

/// A network error as a status.
pub fn network_status(error: &berth_cni::Error, what: &str) -> Status {
    status(Code::from_i32(error.grpc_class() as i32), what, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn message_carries_the_chain() {
        let e = Outer(std::io::Error::other("inner cause"));
        let s = status(Code::Internal, "pod p1", &e);
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(s.message(), "pod p1: outer: inner cause");
    }

    #[test]
    fn network_errors_keep_their_class() {
        let e = berth_cni::Error::InvalidRequest("no pod CIDR given".into());
        assert_eq!(
            network_status(&e, "pod CIDR \"\"").code(),
            Code::InvalidArgument
        );
    }
}
