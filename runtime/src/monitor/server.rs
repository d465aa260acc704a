//! The poll loop: one thread waits on the signalfd, the listening socket, the daemon's
//! connections, the containers' outputs and the attach sockets, and hands each ready fd to
//! its handler; exec deadlines and resident-set trims set the poll's timeout.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use super::{Client, Monitor, memory};
use crate::protocol::FrameReader;
use crate::sys;

/// How long after activity the monitor drops the pages that activity touched.
const TRIM_DELAY: Duration = Duration::from_secs(2);

impl Monitor {
    /// Drops the pages that activity touched once [`TRIM_DELAY`] has passed since the
    /// first activity after the last trim, not after each call: a pod's calls come in
    /// bursts (its start, an exec) that run much of the same code, which a trim between
    /// them would make fault back in.
    pub(super) fn schedule_trim(&mut self) {
        if self.next_trim.is_none() {
            self.next_trim = Some(Instant::now() + TRIM_DELAY);
        }
    }

    /// Serves until `Shutdown` or SIGTERM.
    pub(super) fn serve(&mut self) {
        while !self.shutdown {
            self.build_pollfds();
            let timeout = self.poll_timeout();
            // SAFETY: polling the pollfd array we own.
            let n = unsafe {
                libc::poll(
                    self.pollfds.as_mut_ptr(),
                    self.pollfds.len() as libc::nfds_t,
                    timeout,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                eprintln!("berth-monitor: poll: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            self.handle_timeouts();
            let now = Instant::now();
            if self.next_trim.is_some_and(|t| t <= now) {
                self.next_trim = None;
                self.release_buffers();
                memory::trim_resident();
            }
            if n > 0 {
                self.schedule_trim();
            }
            let ready: Vec<(RawFd, i16)> = self
                .pollfds
                .iter()
                .filter(|p| p.revents != 0)
                .map(|p| (p.fd, p.revents))
                .collect();
            for (fd, revents) in ready {
                if fd == self.sigfd.as_raw_fd() {
                    self.handle_signals();
                } else if fd == self.listener.as_raw_fd() {
                    self.accept();
                } else if let Some(i) = self.clients.iter().position(|c| c.stream.as_raw_fd() == fd)
                {
                    let id = self.clients[i].id;
                    self.read_client(id, revents);
                } else if !self.detach(fd) {
                    self.read_output(fd);
                }
            }
            self.clients.retain(|c| !c.closed);
        }
    }

    /// The fds to wait on: signals, new connections, connections, outputs, attachers.
    fn build_pollfds(&mut self) {
        self.pollfds.clear();
        let pfd = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        self.pollfds.push(pfd(self.sigfd.as_raw_fd()));
        self.pollfds.push(pfd(self.listener.as_raw_fd()));
        for c in &self.clients {
            self.pollfds.push(pfd(c.stream.as_raw_fd()));
        }
        for c in &self.containers {
            for o in &c.outputs {
                self.pollfds.push(pfd(o.fd.as_raw_fd()));
            }
            for a in &c.attachers {
                // No events asked: poll reports the daemon closing its end as POLLHUP.
                self.pollfds.push(libc::pollfd {
                    fd: a.as_raw_fd(),
                    events: 0,
                    revents: 0,
                });
            }
        }
    }

    /// Until the nearest exec deadline or trim, in milliseconds (-1: none).
    fn poll_timeout(&self) -> i32 {
        let now = Instant::now();
        self.execs
            .iter()
            .filter(|e| !e.timed_out)
            .filter_map(|e| e.deadline)
            .chain(self.next_trim)
            .map(|d| {
                d.saturating_duration_since(now)
                    .as_millis()
                    .min(i32::MAX as u128) as i32
                    + 1
            })
            .min()
            .unwrap_or(-1)
    }

    /// Kills the execs whose deadline has passed.
    fn handle_timeouts(&mut self) {
        let now = Instant::now();
        for e in &mut self.execs {
            if !e.timed_out && e.deadline.is_some_and(|d| d <= now) {
                e.timed_out = true;
                // SAFETY: the exec process is our unreaped child, so the PID is still its.
                unsafe { libc::kill(e.pid, libc::SIGKILL) };
            }
        }
    }

    /// Takes every pending connection from the daemon.
    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(true);
                    self.clients.push(Client {
                        id: self.next_client,
                        stream,
                        reader: FrameReader::default(),
                        fds: VecDeque::new(),
                        subscribed: false,
                        closed: false,
                    });
                    self.next_client += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    eprintln!("berth-monitor: accept: {e}");
                    return;
                }
            }
        }
    }

    /// Releases the pod's shm and the socket once the monitor stops serving.
    pub(super) fn cleanup(&mut self) {
        if let Some(_size) = self.cfg.shm_size {
            let _ = sys::umount_quiet(&self.cfg.run_dir.join("shm"));
        }
        let _ = std::fs::remove_file(self.cfg.run_dir.join("monitor.sock"));
        // Answering Shutdown happened before; flush by closing every client.
        self.clients.clear();
    }
}
