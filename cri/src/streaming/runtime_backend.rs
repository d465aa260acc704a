//! The streaming backend over Berth's runtime: exec processes and attachments whose bytes
//! the daemon moves between the client's streams and the fds the runtime hands over.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use berth_runtime::protocol::AttachStream;
use berth_runtime::{AttachSession, ExecSession, Runtime};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Status;

use super::backend::{OutputWriter, StdinReader, StreamBackend, StreamIo, TerminalSize};
use crate::status::status;

/// How long output may keep flowing after an exec process exited: a background child that
/// inherited its stdout must not hold the stream open forever.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// Streams of the runtime's containers.
pub struct RuntimeBackend {
    runtime: Arc<Runtime>,
}

impl RuntimeBackend {
    /// A backend over `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        RuntimeBackend { runtime }
    }
}

fn container_error(id: &str, e: &berth_runtime::Error) -> Status {
    status(&format!("container {id}"), e)
}

#[async_trait::async_trait]
impl StreamBackend for RuntimeBackend {
    async fn check_exec(&self, container_id: &str) -> Result<(), Status> {
        self.runtime
            .stream_target(container_id)
            .map(|_| ())
            .map_err(|e| container_error(container_id, &e))
    }

    async fn check_attach(&self, container_id: &str, stdin: bool) -> Result<(), Status> {
        let target = self
            .runtime
            .stream_target(container_id)
            .map_err(|e| container_error(container_id, &e))?;
        if stdin && !target.stdin {
            return Err(Status::failed_precondition(format!(
                "container {container_id}: stdin requested but the container was created \
                 without stdin"
            )));
        }
        Ok(())
    }

    async fn exec(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        tty: bool,
        io: StreamIo,
    ) -> Result<i32, Status> {
        let StreamIo {
            stdin,
            stdout,
            stderr,
            resize,
            client_gone,
        } = io;
        let mut session: ExecSession = self
            .runtime
            .exec_stream(container_id, &cmd, tty, stdin.is_some())
            .await
            .map_err(|e| container_error(container_id, &e))?;
        let mut tasks = Tasks::default();
        if let (Some(client), Some(fd)) = (stdin, session.stdin.take()) {
            // With a pipe, the end of the client's stdin closes it: EOF for the process.
            tasks.spawn(pump_stdin(client, fd, None));
        }
        if let (Some(rx), Some(master)) = (resize, session.tty.as_ref()) {
            tasks.spawn(follow_resize(rx, dup(master)?));
        }
        let mut outputs = Tasks::default();
        outputs.spawn(pump_output(dup(&session.stdout)?, stdout));
        if let Some(fd) = session.stderr.as_ref() {
            outputs.spawn(pump_output(dup(fd)?, stderr));
        }
        // A pipe reaches EOF when the process's side closes, a pty master reports EIO when
        // its last slave holder goes: the fds the session still holds change neither.
        let exit = tokio::select! {
            r = session.wait() => r.map_err(|e| container_error(container_id, &e))?,
            _ = client_gone.cancelled() => {
                // Dropping the session closes the monitor connection: the process is killed.
                drop(session);
                return Err(Status::cancelled("the client went away"));
            }
        };
        drop(session);
        outputs.join_within(OUTPUT_GRACE).await;
        Ok(exit.exit_code)
    }

    async fn attach(&self, container_id: &str, _tty: bool, io: StreamIo) -> Result<(), Status> {
        let target = self
            .runtime
            .stream_target(container_id)
            .map_err(|e| container_error(container_id, &e))?;
        let session: AttachSession = self
            .runtime
            .attach(container_id, io.stdin.is_some())
            .await
            .map_err(|e| container_error(container_id, &e))?;
        let mut tasks = Tasks::default();
        if let Some(fd) = session.stdin {
            if let (true, Some(rx)) = (target.tty, io.resize) {
                tasks.spawn(follow_resize(rx, dup(&fd)?));
            }
            if let Some(client) = io.stdin {
                let close = (target.stdin_once && !target.tty)
                    .then(|| (self.runtime.clone(), container_id.to_string()));
                tasks.spawn(pump_stdin(client, fd, close));
            }
        }
        let output = pump_attach_output(session.output, io.stdout, io.stderr);
        tokio::select! {
            r = output => r.map_err(|e| Status::internal(format!(
                "attach to container {container_id}: {e}"
            ))),
            // Detaching leaves the container running.
            _ = io.client_gone.cancelled() => Ok(()),
        }
    }

    async fn pod_netns(&self, pod_id: &str) -> Result<Option<PathBuf>, Status> {
        self.runtime
            .pod_netns(pod_id)
            .map_err(|e| status(&format!("pod sandbox {pod_id}"), &e))
    }
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, Status> {
    fd.try_clone()
        .map_err(|e| Status::internal(format!("duplicate a stream fd: {e}")))
}

/// Background tasks aborted when dropped, so no pump outlives its stream.
#[derive(Default)]
struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    fn spawn(&mut self, f: impl Future<Output = ()> + Send + 'static) {
        self.0.push(tokio::spawn(f));
    }

    /// Waits for every task, at most `grace` in all; the rest are aborted on drop.
    async fn join_within(&mut self, grace: Duration) {
        let all = async {
            for t in &mut self.0 {
                let _ = t.await;
            }
        };
        let _ = tokio::time::timeout(grace, all).await;
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Copies the client's stdin into `fd` until either side ends; then, when `close_after`
/// names a container, closes that container's stdin for good (`stdin_once`).
async fn pump_stdin(
    mut client: StdinReader,
    fd: OwnedFd,
    close_after: Option<(Arc<Runtime>, String)>,
) {
    if let Ok(mut w) = FdStream::new(fd) {
        let _ = tokio::io::copy(&mut client, &mut w).await;
    }
    if let Some((runtime, id)) = close_after
        && let Err(e) = runtime.close_stdin(&id).await
    {
        tracing::debug!(container = %id, error = %e, "close stdin after attach");
    }
}

/// Copies a process's output to the client's stream (or drains it when the client did not
/// ask for it, so the process never blocks on a full pipe); closes the client's stream at
/// the end.
async fn pump_output(fd: OwnedFd, mut client: Option<OutputWriter>) {
    let Ok(mut r) = FdStream::new(fd) else { return };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(w) = client.as_mut()
                    && w.write_all(&buf[..n]).await.is_err()
                {
                    client = None;
                }
            }
        }
    }
    if let Some(mut w) = client {
        let _ = w.shutdown().await;
    }
}

/// Applies each terminal size the client sends to the pty.
async fn follow_resize(mut rx: mpsc::Receiver<TerminalSize>, master: OwnedFd) {
    while let Some(size) = rx.recv().await {
        if let Err(e) = set_window_size(&master, size) {
            tracing::debug!(error = %e, "resize terminal");
        }
    }
}

fn set_window_size(master: &OwnedFd, size: TerminalSize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from our local.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the container's output from the monitor's attach socket to the client until the
/// container exits (EOF on the socket).
async fn pump_attach_output(
    socket: OwnedFd,
    mut stdout: Option<OutputWriter>,
    mut stderr: Option<OutputWriter>,
) -> io::Result<()> {
    let mut r = FdStream::new(socket)?;
    // One message is a tag byte and at most one read of the monitor's.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let target = match AttachStream::from_byte(buf[0]) {
            Some(AttachStream::Stdout) => &mut stdout,
            Some(AttachStream::Stderr) => &mut stderr,
            None => continue,
        };
        if let Some(w) = target.as_mut()
            && w.write_all(&buf[1..n]).await.is_err()
        {
            *target = None;
        }
    }
    for w in [stdout, stderr].into_iter().flatten() {
        let mut w = w;
        let _ = w.shutdown().await;
    }
    Ok(())
}

/// A non-blocking fd (pipe, pty master or socket) as an async reader and writer. A pty
/// master's EIO (its last slave holder closed it) reads as EOF.
struct FdStream {
    fd: AsyncFd<OwnedFd>,
}

impl FdStream {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: fcntl on an fd we own.
        unsafe {
            let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if fl < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open, unchanged, for
        // its whole life.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(FdStream { fd })
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let res = guard.try_io(|inner| {
                // SAFETY: reading into the initialized, unfilled part of the buffer.
                let n = unsafe {
                    libc::read(
                        inner.as_raw_fd(),
                        unfilled.as_mut_ptr().cast(),
                        unfilled.len(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            let res = guard.try_io(|inner| {
                // SAFETY: writing from the caller's buffer.
                let n = unsafe { libc::write(inner.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fd_stream_moves_bytes_and_ends_at_eof() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut w = FdStream::new(w).unwrap();
        let mut r = FdStream::new(r).unwrap();
        w.write_all(b"hello").await.unwrap();
        drop(w);
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
    }

    #[tokio::test]
    async fn output_is_drained_without_a_client() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let pump = tokio::spawn(pump_output(r, None));
        let mut w = FdStream::new(w).unwrap();
        // More than a pipe holds: the pump must keep reading for the writer to finish.
        w.write_all(&vec![7u8; 256 * 1024]).await.unwrap();
        drop(w);
        pump.await.unwrap();
    }

    #[tokio::test]
    async fn attach_messages_go_to_their_stream() {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (out_w, mut out_r) = tokio::io::duplex(1024);
        let (err_w, mut err_r) = tokio::io::duplex(1024);
        for msg in [
            &[AttachStream::Stdout as u8, b'o', b'1'][..],
            &[AttachStream::Stderr as u8, b'e'],
            &[9, b'x'],
            &[AttachStream::Stdout as u8, b'2'],
        ] {
            nix::unistd::write(&a, msg).unwrap();
        }
        // The monitor closing its end is EOF after the queued messages.
        drop(a);
        pump_attach_output(b, Some(Box::pin(out_w)), Some(Box::pin(err_w)))
            .await
            .unwrap();
        let (mut o, mut e) = (Vec::new(), Vec::new());
        out_r.read_to_end(&mut o).await.unwrap();
        err_r.read_to_end(&mut e).await.unwrap();
        assert_eq!(o, b"o12");
        assert_eq!(e, b"e");
    }
}
