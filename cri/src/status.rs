//! Errors of the libraries as the gRPC statuses kubelet acts on: each library says which
//! [`Class`] its error is ([`Classify`]), and [`status`] is the one place that turns a
//! classified error into a `tonic::Status` whose message names the object and carries the
//! whole cause chain once.

use std::error::Error;

use berth_class::{Class, Classify};
use tonic::{Code, Status};

/// The status of `error`, met while working on `what` ("StartContainer", "pulling image
/// \"busybox\""): the error's class as the code, `what: error: cause: ...` as the message.
pub fn status<E: Classify + Error>(what: &str, error: &E) -> Status {
    Status::new(code(error.class()), message(what, error))
}

/// The gRPC code kubelet sees for a class.
pub fn code(class: Class) -> Code {
    match class {
        Class::InvalidArgument => Code::InvalidArgument,
        Class::NotFound => Code::NotFound,
        Class::AlreadyExists => Code::AlreadyExists,
        Class::PermissionDenied => Code::PermissionDenied,
        Class::FailedPrecondition => Code::FailedPrecondition,
        Class::ResourceExhausted => Code::ResourceExhausted,
        Class::DeadlineExceeded => Code::DeadlineExceeded,
        Class::Unavailable => Code::Unavailable,
        Class::Internal => Code::Internal,
    }
}

/// `what: error: cause: ...`, each cause's text once.
fn message(what: &str, error: &dyn Error) -> String {
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
    message
}

#[cfg(test)]
mod tests;
