//! The harness's one error type.

use std::path::PathBuf;
use std::process::ExitStatus;

/// Everything that can go wrong while setting up or driving an end-to-end run.
#[derive(thiserror::Error)]
pub enum Error {
    /// The test runs outside the harness, or the harness's environment is broken.
    #[error("{0}")]
    Environment(String),
    /// A file system or process call failed.
    #[error("{what}")]
    Io {
        /// What was being done, naming the object.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A system call through nix failed.
    #[error("{what}")]
    Sys {
        /// What was being done, naming the object.
        what: String,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// A helper program (ip, ldd, ...) failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// An HTTP exchange with the registry failed at the transport level.
    #[error("http {method} {url}")]
    Http {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The registry answered with an unexpected status.
    #[error("registry answered {status} to {method} {url}: {body}")]
    Registry {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// HTTP status code.
        status: u16,
        /// Response body (truncated).
        body: String,
    },
    /// JSON (de)serialization failed.
    #[error("json for {what}")]
    Json {
        /// What was being (de)serialized.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A TOML document could not be parsed or written.
    #[error("toml for {what}: {message}")]
    Toml {
        /// What was being parsed.
        what: String,
        /// The parser's message.
        message: String,
    },
    /// The gRPC channel to the daemon could not be built.
    #[error("connect to {socket}")]
    Connect {
        /// The CRI socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// A CRI call failed.
    #[error("cri call {rpc}")]
    Grpc {
        /// The RPC name.
        rpc: String,
        /// The status returned.
        #[source]
        source: tonic::Status,
    },
    /// The daemon exited while we waited for it to serve.
    #[error("berth exited ({status}) before serving; log {log}:\n{tail}")]
    DaemonExited {
        /// How it ended.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {seconds}s waiting for {what}")]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long we waited.
        seconds: u64,
    },
    /// Bad input to the image writer or a broken image catalog.
    #[error("image: {0}")]
    Image(String),
}

/// Debug prints the message and its causes, so that a test's `.expect()` reads well.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")?;
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// Result with the harness error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a description to an io error.
pub(crate) trait IoContext<T> {
    /// Wraps the error as [`Error::Io`] with `what`.
    fn io_context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn io_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Sys {
            what: what(),
            source,
        })
    }
}
