//! The daemon's side of the monitor protocol: one connection per call, and one long-lived
//! subscription per pod for exit events.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr, connect, socket};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use crate::error::{Class, Error, Result};
use crate::protocol::fds::{recv_with_fds, send_with_fds};
use crate::protocol::{FrameReader, Request, Response, encode_frame};

/// How long an ordinary call may take (create waits for the container's setup).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(90);

/// How far [`MonitorClient::send_now`] got.
enum Sent {
    /// The whole frame went.
    All,
    /// Connected; this many bytes went (the fds with the first of them).
    Part(std::os::unix::net::UnixStream, usize),
}

/// Talks to one pod's monitor.
#[derive(Debug, Clone)]
pub(crate) struct MonitorClient {
    pub pod_id: String,
    pub socket: PathBuf,
}

/// An open subscription: exit events arrive on it.
pub(crate) struct Subscription {
    stream: UnixStream,
    reader: FrameReader,
}

impl Subscription {
    /// The next pushed frame; `None` when the monitor closed the connection (it exited).
    pub async fn next(&mut self) -> Option<Response> {
        read_frame(&mut self.stream, &mut self.reader)
            .await
            .ok()
            .flatten()
    }
}

async fn read_frame(
    stream: &mut UnixStream,
    reader: &mut FrameReader,
) -> std::io::Result<Option<Response>> {
    let mut buf = [0u8; 8192];
    loop {
        match reader.next_message::<Response>() {
            Ok(Some(r)) => return Ok(Some(r)),
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        reader.push(&buf[..n]);
    }
}

/// A call that stays open: several answers may arrive on it, with fds passed alongside, and
/// dropping it closes the connection (the monitor then kills an exec it was running).
pub(crate) struct OpenCall {
    client: MonitorClient,
    stream: UnixStream,
    reader: FrameReader,
    fds: VecDeque<OwnedFd>,
}

impl OpenCall {
    /// The next answer, with the fds that came with it; `Error` answers become errors.
    pub async fn next(&mut self) -> Result<(Response, Vec<OwnedFd>)> {
        let mut buf = [0u8; 8192];
        loop {
            match self.reader.next_message::<Response>() {
                Ok(Some(Response::Error { class, message })) => {
                    return Err(self.client.failed(message, class));
                }
                Ok(Some(r)) => return Ok((r, self.fds.drain(..).collect())),
                Ok(None) => {}
                Err(e) => {
                    return Err(self
                        .client
                        .failed(format!("bad answer: {e}"), Class::Internal));
                }
            }
            let fds = &mut self.fds;
            let stream = &self.stream;
            let n = stream
                .async_io(Interest::READABLE, || {
                    recv_with_fds(stream.as_raw_fd(), &mut buf, fds, MsgFlags::MSG_DONTWAIT)
                })
                .await
                .map_err(|e| self.client.gone(e))?;
            if n == 0 {
                return Err(self.client.gone("connection closed before the answer"));
            }
            self.reader.push(&buf[..n]);
        }
    }
}

impl MonitorClient {
    fn gone(&self, e: impl std::fmt::Display) -> Error {
        Error::MonitorGone {
            pod: self.pod_id.clone(),
            message: e.to_string(),
        }
    }

    fn failed(&self, message: impl Into<String>, class: Class) -> Error {
        Error::Monitor {
            pod: self.pod_id.clone(),
            message: message.into(),
            class,
        }
    }

    async fn connect(&self) -> Result<UnixStream> {
        let (_dirfd, path) = crate::sys::socket_path(&self.socket).map_err(|e| self.gone(e))?;
        UnixStream::connect(&path).await.map_err(|e| self.gone(e))
    }

    /// Sends `req` (with `fds` passed alongside) and returns the open connection for its
    /// answers.
    pub async fn open_call(&self, req: &Request, fds: &[RawFd]) -> Result<OpenCall> {
        let mut stream = self.connect().await?;
        self.send(&mut stream, req, fds).await?;
        Ok(OpenCall {
            client: self.clone(),
            stream,
            reader: FrameReader::default(),
            fds: VecDeque::new(),
        })
    }

    async fn send(&self, stream: &mut UnixStream, req: &Request, fds: &[RawFd]) -> Result<()> {
        let frame = encode_frame(req);
        let mut sent = 0;
        if !fds.is_empty() {
            sent = stream
                .async_io(Interest::WRITABLE, || {
                    let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
                    send_with_fds(stream.as_raw_fd(), &frame, fds, flags)
                })
                .await
                .map_err(|e| self.gone(e))?;
        }
        stream
            .write_all(&frame[sent..])
            .await
            .map_err(|e| self.gone(e))
    }

    /// Sends one request (with `fds` passed alongside) and waits for its answer.
    pub async fn call_with(
        &self,
        req: &Request,
        fds: &[RawFd],
        timeout: Duration,
    ) -> Result<Response> {
        let work = async {
            let mut stream = self.connect().await?;
            self.send(&mut stream, req, fds).await?;
            let mut reader = FrameReader::default();
            match read_frame(&mut stream, &mut reader).await {
                Ok(Some(Response::Error { class, message })) => Err(self.failed(message, class)),
                Ok(Some(r)) => Ok(r),
                Ok(None) => Err(self.gone("connection closed before the answer")),
                Err(e) => Err(self.failed(format!("bad answer: {e}"), Class::Internal)),
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(self.failed(
                format!("no answer within {timeout:?}"),
                Class::DeadlineExceeded,
            )),
        }
    }

    /// Sends one request and waits for its answer.
    pub async fn call(&self, req: &Request) -> Result<Response> {
        self.call_with(req, &[], CALL_TIMEOUT).await
    }

    /// Sends `req` (with `fds` passed alongside) and closes the connection without waiting
    /// for the answer: the monitor still reads and runs a request its caller left.
    ///
    /// Connected and sent without the reactor: a unix socket connects at once (or fails,
    /// its backlog full, as tokio's connect did) and a fresh socket's buffer takes a small
    /// frame whole. tokio's `connect` waits for the new socket's first readiness event, a
    /// round trip through the I/O driver, often on the other worker, for a socket that is
    /// ready already.
    pub async fn send_only(&self, req: &Request, fds: &[RawFd]) -> Result<()> {
        let frame = encode_frame(req);
        let (stream, sent) = match self.send_now(&frame, fds)? {
            Sent::All => return Ok(()),
            Sent::Part(stream, sent) => (stream, sent),
        };
        // The rest (never seen in practice) waits for room like any call.
        let mut stream = UnixStream::from_std(stream).map_err(|e| self.gone(e))?;
        if sent == 0 {
            return self.send(&mut stream, req, fds).await;
        }
        stream
            .write_all(&frame[sent..])
            .await
            .map_err(|e| self.gone(e))
    }

    /// Connects and sends `frame` (with `fds`) without blocking, as far as the kernel takes
    /// it at once.
    fn send_now(&self, frame: &[u8], fds: &[RawFd]) -> Result<Sent> {
        let (_dirfd, path) = crate::sys::socket_path(&self.socket).map_err(|e| self.gone(e))?;
        let sock = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| self.gone(e))?;
        let addr = UnixAddr::new(&path).map_err(|e| self.gone(e))?;
        // EAGAIN (the monitor's backlog is full) fails as tokio's connect did.
        connect(sock.as_raw_fd(), &addr).map_err(|e| self.gone(e))?;
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        let sent = match send_with_fds(sock.as_raw_fd(), frame, fds, flags) {
            Ok(n) if n == frame.len() => return Ok(Sent::All),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(self.gone(e)),
        };
        Ok(Sent::Part(std::os::unix::net::UnixStream::from(sock), sent))
    }

    /// Sends a request that must be answered with `Ok`.
    pub async fn call_ok(&self, req: &Request) -> Result<()> {
        match self.call(req).await? {
            Response::Ok => Ok(()),
            other => Err(self.failed(format!("unexpected answer {other:?}"), Class::Internal)),
        }
    }

    /// Opens the event subscription.
    pub async fn subscribe(&self) -> Result<Subscription> {
        let mut stream = self.connect().await?;
        stream
            .write_all(&encode_frame(&Request::Subscribe))
            .await
            .map_err(|e| self.gone(e))?;
        let mut reader = FrameReader::default();
        match read_frame(&mut stream, &mut reader).await {
            Ok(Some(Response::Ok)) => Ok(Subscription { stream, reader }),
            Ok(other) => Err(self.failed(
                format!("unexpected answer to subscribe: {other:?}"),
                Class::Internal,
            )),
            Err(e) => Err(self.gone(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::{UnixListener, UnixStream as StdStream};

    /// Reads one request and the fds passed with it from an accepted connection.
    fn received(conn: &StdStream) -> (Request, VecDeque<OwnedFd>) {
        let (mut reader, mut fds, mut buf) = (FrameReader::default(), VecDeque::new(), [0u8; 512]);
        loop {
            if let Some(r) = reader.next_message::<Request>().unwrap() {
                return (r, fds);
            }
            let n = recv_with_fds(conn.as_raw_fd(), &mut buf, &mut fds, MsgFlags::empty()).unwrap();
            assert_ne!(n, 0, "closed before a whole request");
            reader.push(&buf[..n]);
        }
    }

    fn client(socket: PathBuf) -> MonitorClient {
        MonitorClient {
            pod_id: "p".into(),
            socket,
        }
    }

    #[tokio::test]
    async fn a_request_sent_without_waiting_arrives_with_its_fd() {
        let d = tempfile::tempdir().unwrap();
        let socket = d.path().join("monitor.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let file = d.path().join("new.log");
        let f = std::fs::File::create(&file).unwrap();
        let req = Request::ReopenLog { id: "c1".into() };
        client(socket)
            .send_only(&req, &[f.as_raw_fd()])
            .await
            .unwrap();
        drop(f);
        let (conn, _) = listener.accept().unwrap();
        let (got, mut fds) = received(&conn);
        assert_eq!(got, req);
        // The fd that came is the file the daemon opened.
        let mut passed = std::fs::File::from(fds.pop_front().expect("an fd"));
        passed.write_all(b"through the fd\n").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"through the fd\n");
    }
}
