//! What the streaming server needs from the runtime: checks at RPC time, and the exec, attach
//! and pod network namespace behind a stream. The server owns the protocols; the backend
//! owns processes.

use std::path::PathBuf;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// A terminal size, as the resize stream carries it: JSON `{"Width":80,"Height":24}`.
/// Field names are matched without regard to case, as Go's JSON decoder does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width", alias = "width", alias = "WIDTH")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height", alias = "height", alias = "HEIGHT")]
    pub height: u16,
}

/// The client's stdin: reads end (EOF) when the client closes it or goes away.
pub type StdinReader = Pin<Box<dyn AsyncRead + Send>>;
/// A client's stdout or stderr. Bytes written are sent in order; shutting it down (or
/// dropping it) closes that stream for the client.
pub type OutputWriter = Pin<Box<dyn AsyncWrite + Send>>;

/// The client's side of an exec or attach. Each stream is present only if the request asked
/// for it; with a TTY there is no stderr (the terminal merges it into stdout).
pub struct StreamIo {
    /// The client's input.
    pub stdin: Option<StdinReader>,
    /// The process's standard output goes here.
    pub stdout: Option<OutputWriter>,
    /// The process's standard error goes here (never with a TTY).
    pub stderr: Option<OutputWriter>,
    /// Terminal size changes (TTY only); the first size arrives right after the client
    /// connects. The sender closes when the client can no longer resize.
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
    /// Cancelled when the client disconnected: the backend must then stop the exec'd process
    /// (attach just detaches) and return promptly. The server stops waiting ten seconds later.
    pub client_gone: CancellationToken,
}

/// The runtime's side of streaming, implemented once the runtime can exec and attach.
///
/// The `check_*` and `pod_netns` methods run at RPC time, so kubelet gets a gRPC error
/// (`NotFound` for an unknown id, `FailedPrecondition` for a container that is not running)
/// instead of a URL that can only fail. The stream methods run when the client connects.
#[async_trait::async_trait]
pub trait StreamBackend: Send + Sync + 'static {
    /// Succeeds if `container_id` exists and is running.
    async fn check_exec(&self, container_id: &str) -> Result<(), Status>;

    /// Succeeds if `container_id` exists and is running, and, when `stdin` is asked for, was
    /// created with `stdin: true`.
    async fn check_attach(&self, container_id: &str, stdin: bool) -> Result<(), Status>;

    /// Runs `cmd` in the container's namespaces, cgroup and security context (with a pty when
    /// `tty`), wired to `io`. Returns the exit code (128 + signal number for a process killed
    /// by a signal) once the process has exited and all its output has been written to
    /// `io`'s writers, which it drops before returning. An `Err` is reported to the client as
    /// an internal error.
    async fn exec(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        tty: bool,
        io: StreamIo,
    ) -> Result<i32, Status>;

    /// Connects `io` to the container's own stdio until the container exits or the client
    /// goes (detaching leaves the container running). Several attachers may read output.
    async fn attach(&self, container_id: &str, tty: bool, io: StreamIo) -> Result<(), Status>;

    /// The pod's network namespace file, or `None` for a pod on the host's network. Fails
    /// with `NotFound` for an unknown pod and `FailedPrecondition` for a pod not ready.
    async fn pod_netns(&self, pod_id: &str) -> Result<Option<PathBuf>, Status>;
}
