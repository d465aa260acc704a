//! The daemon's connections: reading request frames (and the fds passed with them),
//! dispatching each request to its handler, and writing the answers.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::socket::MsgFlags;

use super::exec::ExecOptions;
use super::sync::wait_fd;
use super::{Client, Monitor};
use crate::protocol::fds::{recv_with_fds, send_with_fds};
use crate::protocol::*;

/// How long a response write to the daemon may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

impl Monitor {
    /// The connection `id`, if it is still open.
    pub(super) fn client(&mut self, id: u64) -> Option<&mut Client> {
        self.clients.iter_mut().find(|c| c.id == id)
    }

    /// Reads what the connection `id` sent and runs every complete request in it.
    pub(super) fn read_client(&mut self, id: u64, revents: i16) {
        let mut buf = [0u8; 8192];
        let Some(c) = self.client(id) else { return };
        let flags = MsgFlags::MSG_DONTWAIT;
        let n = match recv_with_fds(c.stream.as_raw_fd(), &mut buf, &mut c.fds, flags) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => 0,
        };
        if n == 0 {
            if revents & (libc::POLLHUP | libc::POLLERR | libc::POLLIN) != 0 {
                c.closed = true;
                // An exec whose caller went away is killed: nobody reads its output.
                for e in &mut self.execs {
                    if e.client == id && !e.timed_out {
                        e.timed_out = true;
                        // SAFETY: our unreaped child.
                        unsafe { libc::kill(e.pid, libc::SIGKILL) };
                    }
                }
            }
            return;
        }
        c.reader.push(&buf[..n]);
        loop {
            let Some(c) = self.client(id) else { return };
            match c.reader.next_message::<Request>() {
                Ok(Some(req)) => self.handle(id, req),
                Ok(None) => return,
                Err(e) => {
                    self.reply(
                        id,
                        &Response::Error {
                            class: Class::InvalidArgument,
                            message: e.to_string(),
                        },
                    );
                    if let Some(c) = self.client(id) {
                        c.closed = true;
                    }
                    return;
                }
            }
        }
    }

    /// Answers the connection `id`.
    pub(super) fn reply(&mut self, id: u64, resp: &Response) {
        self.reply_fds(id, resp, &[]);
    }

    /// Answers with `fds` passed alongside the frame's first bytes; a connection that does
    /// not take the answer in time is closed.
    pub(super) fn reply_fds(&mut self, id: u64, resp: &Response, fds: &[RawFd]) {
        let frame = encode_frame(resp);
        let Some(c) = self.client(id) else { return };
        if send_frame(&c.stream, &frame, fds).is_err() {
            c.closed = true;
        }
    }

    /// Runs one request and answers it (exec and attach answer themselves).
    fn handle(&mut self, client: u64, req: Request) {
        let result = match req {
            Request::Hello { .. } => Ok(Some(Response::Hello {
                version: PROTOCOL_VERSION,
                pod_id: self.cfg.pod_id.clone(),
                pid: self.host_pid,
            })),
            Request::Create { spec } => self.create(*spec).map(Some),
            Request::Start { id } => self.start(&id).map(Some),
            Request::Kill { id, signal } => self.kill(&id, signal).map(|_| Some(Response::Ok)),
            Request::Exec {
                id,
                process,
                cgroup_procs,
                timeout_ms,
                stdin,
                tty,
            } => self
                .exec(
                    client,
                    &id,
                    &process,
                    &cgroup_procs,
                    ExecOptions {
                        timeout_ms,
                        stdin,
                        tty,
                    },
                )
                .map(|_| None),
            Request::Attach { id, stdin } => self.attach(client, &id, stdin).map(|_| None),
            Request::CloseStdin { id } => self.container(&id).map(|c| {
                c.stdin = None;
                Some(Response::Ok)
            }),
            Request::State => Ok(Some(Response::State {
                containers: self
                    .containers
                    .iter()
                    .map(|c| ContainerState {
                        id: c.id.clone(),
                        pid: c.host_pid,
                        started_at: c.started_at,
                        exit: c.exit,
                    })
                    .collect(),
            })),
            Request::ReopenLog { id } => {
                let opened = self.client(client).and_then(|c| c.fds.pop_front());
                self.reopen_log(&id, opened).map(|_| Some(Response::Ok))
            }
            Request::Remove { id } => self.remove(&id).map(|_| Some(Response::Ok)),
            Request::Subscribe => {
                if let Some(c) = self.client(client) {
                    c.subscribed = true;
                }
                Ok(Some(Response::Ok))
            }
            Request::Shutdown => {
                self.kill_all();
                self.shutdown = true;
                Ok(Some(Response::Ok))
            }
        };
        match result {
            Ok(Some(r)) => self.reply(client, &r),
            Ok(None) => {}
            Err((class, message)) => self.reply(client, &Response::Error { class, message }),
        }
    }
}

/// Writes all of `frame` to a daemon's connection (non-blocking), with `fds` passed alongside
/// its first bytes, waiting at most [`WRITE_TIMEOUT`] in all for the daemon to read.
pub(super) fn send_frame(
    stream: &UnixStream,
    mut frame: &[u8],
    mut fds: &[RawFd],
) -> io::Result<()> {
    let deadline = Instant::now() + WRITE_TIMEOUT;
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    while !frame.is_empty() {
        match send_with_fds(stream.as_raw_fd(), frame, fds, flags) {
            Ok(n) => {
                frame = &frame[n..];
                fds = &[];
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_fd(stream.as_raw_fd(), libc::POLLOUT, deadline)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
