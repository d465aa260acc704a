//! Reaping: the monitor is the pod's child subreaper; SIGCHLD on its signalfd makes it reap
//! every exited child, record a container's exit (exit file, subscribers' events) or answer
//! an exec's caller. Also SIGTERM and `Shutdown`: kill everything and wait for it.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use super::dispatch::send_frame;
use super::{Monitor, oci};
use crate::protocol::{ExitStatus, Response, encode_frame};
use crate::sys;

impl Monitor {
    /// Kills every container and exec and waits (up to 10 s) until they are reaped, then
    /// logs what they wrote last and deletes the handlers' containers.
    pub(super) fn kill_all(&mut self) {
        for c in &mut self.containers {
            if c.exit.is_none() {
                c.sync = None;
                let _ = sys::pidfd_send_signal(&c.pidfd, libc::SIGKILL);
            }
        }
        for e in &self.execs {
            // SAFETY: our unreaped child.
            unsafe { libc::kill(e.pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && (self.containers.iter().any(|c| c.exit.is_none()) || !self.execs.is_empty())
        {
            let mut pfd = libc::pollfd {
                fd: self.sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polling one pollfd we own.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            self.handle_signals();
        }
        let fds: Vec<RawFd> = self
            .containers
            .iter()
            .flat_map(|c| c.outputs.iter().map(|o| o.fd.as_raw_fd()))
            .collect();
        for fd in fds {
            self.read_output(fd);
        }
        // Before the daemon hears that the pod is down and removes the bundles.
        for c in &self.containers {
            if let Some(rt) = &c.oci {
                oci::delete(rt, &c.id);
            }
        }
    }

    /// Reads the signalfd: reaps every exited child; SIGTERM stops the pod.
    pub(super) fn handle_signals(&mut self) {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        let mut terminate = false;
        loop {
            // SAFETY: reading whole siginfo records into our buffer.
            let n =
                unsafe { libc::read(self.sigfd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
            if n <= 0 {
                break;
            }
            // SAFETY: the kernel wrote a complete signalfd_siginfo.
            let si: libc::signalfd_siginfo =
                unsafe { std::ptr::read_unaligned(info.as_ptr().cast()) };
            if si.ssi_signo == libc::SIGTERM as u32 {
                terminate = true;
            }
        }
        loop {
            let mut status = 0;
            // SAFETY: reaping any child without blocking.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            self.reaped(pid, status);
        }
        if terminate && !self.shutdown {
            self.kill_all();
            self.shutdown = true;
        }
    }

    /// Records the exit of the child `pid`: a container's, or an exec's (answered).
    pub(super) fn reaped(&mut self, pid: i32, status: libc::c_int) {
        let exit = wait_status(status);
        if let Some(i) = self
            .containers
            .iter()
            .position(|c| c.pid == pid && c.exit.is_none())
        {
            // Write what the container printed before it died ahead of the exit record.
            let fds: Vec<RawFd> = self.containers[i]
                .outputs
                .iter()
                .map(|o| o.fd.as_raw_fd())
                .collect();
            for fd in fds {
                self.read_output(fd);
            }
            let c = &mut self.containers[i];
            c.exit = Some(exit);
            c.sync = None;
            // Attachers see EOF: the container is gone.
            c.attachers.clear();
            if let Ok(json) = serde_json::to_vec(&exit)
                && let Err(e) = sys::write_atomic(&c.exit_file, &json)
            {
                eprintln!("berth-monitor: write {}: {e}", c.exit_file.display());
            }
            let ev = encode_frame(&Response::Event {
                id: c.id.clone(),
                exit,
            });
            for cl in self
                .clients
                .iter_mut()
                .filter(|c| c.subscribed && !c.closed)
            {
                if send_frame(&cl.stream, &ev, &[]).is_err() {
                    cl.closed = true;
                }
            }
        } else if let Some(i) = self.execs.iter().position(|e| e.pid == pid) {
            let e = self.execs.remove(i);
            let resp = Response::ExecExited {
                exit,
                timed_out: e.timed_out,
            };
            self.reply(e.client, &resp);
        }
    }
}

/// How a process ended, from its `waitpid` status.
pub(super) fn wait_status(status: libc::c_int) -> ExitStatus {
    let finished_at = sys::now_ns();
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        ExitStatus {
            exit_code: 128 + sig,
            signal: Some(sig),
            finished_at,
        }
    } else {
        ExitStatus {
            exit_code: libc::WEXITSTATUS(status),
            signal: None,
            finished_at,
        }
    }
}

/// Waits for the child `pid` (one the monitor has just killed or that failed to set up).
pub(super) fn reap_now(pid: i32) {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}
