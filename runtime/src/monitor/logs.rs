//! A container's output: the streams the monitor reads (pipes or a pty master), its CRI log
//! file, and the copy of each chunk to its attachers.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::attach::send_tagged;
use super::{Container, Failure, Monitor, sys_err};
use crate::crilog::{IOVECS_PER_RECORD, LineFramer, Stream, now_rfc3339_nano};
use crate::protocol::AttachStream;

/// Bytes read from a container's output at a time: a default pipe's whole capacity.
const READ_CHUNK: usize = 64 * 1024;
/// Reads of one output per poll wake-up (so at most 256 KiB, the pipe's enlarged
/// capacity, before others get a turn).
const MAX_READS_PER_WAKE: usize = 4;
/// Capacity asked for a container's stdout and stderr pipes: a flood fills a bigger pipe
/// before its writer blocks, so the monitor wakes and reads (64 KiB at a time) less often.
const PIPE_SIZE: usize = 256 * 1024;
/// Bytes of records gathered before they are written: the framer's iovecs are copied into
/// one buffer and written with one `write` of up to this much (plus one step's records).
/// The kernel copies a contiguous buffer into the page cache far faster than the same
/// records as a `writev` of two iovecs a line (each iovec a separate user copy): on this
/// machine's ext4, 0.50 against 0.80 CPU s per GiB of 100-byte lines, the user-space copy
/// included.
const LOG_FLUSH: usize = 128 * 1024;
/// Iovecs framed per step before they are copied out: with at most 16 records of
/// [`crate::crilog::MAX_LINE`] per step, the buffer never holds much more than
/// [`LOG_FLUSH`], however the output is cut (a flood of empty lines grows 41 times).
const IOV_STEP: usize = 64;

/// One stream the monitor reads: a pipe end or a pty master.
pub(crate) struct Output {
    /// The read end.
    pub fd: OwnedFd,
    framer: LineFramer,
    stream: Stream,
}

impl Output {
    /// Reads `fd` as `stream` (a tty's output is stdout).
    pub fn new(fd: OwnedFd, stream: Stream, _tty: bool) -> Self {
        Output {
            fd,
            framer: LineFramer::new(stream),
            stream,
        }
    }

    /// The stream this output is.
    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// A `File` view of the fd for reading, without taking ownership.
    pub fn file(&self) -> ManuallyDrop<File> {
        // SAFETY: the File never closes the fd (ManuallyDrop); the fd outlives the view.
        ManuallyDrop::new(unsafe { File::from_raw_fd(self.fd.as_raw_fd()) })
    }

    /// Stamps the records framed from now on with the current time (once per wake-up).
    pub fn stamp(&mut self) {
        let mut ts = Vec::with_capacity(40);
        now_rfc3339_nano(&mut ts);
        self.framer.stamp(&ts);
    }

    /// Frames bytes read from the stream into records appended to `out`, written to `log`
    /// whenever `out` passes [`LOG_FLUSH`]; the caller writes the rest with [`flush_log`]
    /// before it waits again. Without a log nothing is gathered.
    pub fn log(&mut self, mut data: &[u8], mut log: Option<&mut File>, out: &mut Vec<u8>) {
        while !data.is_empty() {
            let mut iov = [IoSlice::new(&[]); IOV_STEP];
            let (n, used) = self.framer.frame(data, &mut iov);
            if let Some(f) = log.as_deref_mut() {
                for s in &iov[..n] {
                    out.extend_from_slice(s);
                }
                if out.len() >= LOG_FLUSH {
                    flush_log(Some(f), out);
                }
            }
            data = &data[used..];
        }
    }

    /// Appends a partial line held back at end of stream to `out`.
    pub fn finish(&mut self, log: Option<&mut File>, out: &mut Vec<u8>) {
        self.stamp();
        let mut iov = [IoSlice::new(&[]); IOVECS_PER_RECORD];
        let n = self.framer.finish_into(&mut iov);
        if log.is_some() {
            for s in &iov[..n] {
                out.extend_from_slice(s);
            }
        }
    }
}

/// Writes the records gathered in `out` to `log` and empties it, resuming after a partial
/// write; a failure is reported and the records dropped (the container is never blocked
/// on its log).
pub(super) fn flush_log(log: Option<&mut File>, out: &mut Vec<u8>) {
    if let Some(f) = log {
        let mut rest = &out[..];
        while !rest.is_empty() {
            match f.write(rest) {
                Ok(0) => {
                    eprintln!("berth-monitor: write log: wrote nothing");
                    break;
                }
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("berth-monitor: write log: {e}");
                    break;
                }
            }
        }
    }
    out.clear();
}

/// Enlarges a container's output pipe to [`PIPE_SIZE`], or to the node's
/// `/proc/sys/fs/pipe-max-size` if that is lower. Failing soft: a pipe left at its
/// default size still works, only with more wake-ups under a flood.
pub(super) fn enlarge_pipe(fd: RawFd) {
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(PIPE_SIZE);
    let size = PIPE_SIZE.min(max) as libc::c_int;
    // SAFETY: fcntl on a pipe fd we hold; F_SETPIPE_SZ only resizes its buffer.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size) };
}

/// Mode of a new CRI log file: containerd's (kubelet and log agents read it as root or
/// through the group).
const LOG_MODE: u32 = 0o640;
/// Mode of a log directory the monitor has to create (kubelet normally made it already).
const LOG_DIR_MODE: u32 = 0o755;

/// Opens (creating it and its directory) a CRI log file for appending. The last component
/// is never followed if it is a symlink (`O_NOFOLLOW`), and only a regular file is
/// accepted: the monitor writes as root, so a planted link or FIFO must not redirect or
/// block it. The fd is close-on-exec, so no container inherits it.
pub(crate) fn open_log(path: &Path) -> std::io::Result<File> {
    // O_NONBLOCK: opening a planted FIFO fails (ENXIO) instead of hanging the monitor; it
    // changes nothing for a regular file.
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let create = || {
        std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(LOG_MODE)
            .custom_flags(flags)
            .open(path)
    };
    // The directory is there but for a container's first log: made only when missing.
    let created = match create() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                create_log_dirs(dir)?;
            }
            create()
        }
        other => other,
    };
    match created {
        // O_EXCL made it: a new regular file. It gets exactly LOG_MODE, whatever the
        // umask (077).
        Ok(f) => {
            f.set_permissions(std::fs::Permissions::from_mode(LOG_MODE))?;
            Ok(f)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let file = std::fs::OpenOptions::new()
                .append(true)
                .custom_flags(flags)
                .open(path)?;
            if !file.metadata()?.is_file() {
                return Err(std::io::Error::other("not a regular file"));
            }
            Ok(file)
        }
        Err(e) => Err(e),
    }
}

/// Creates the missing directories of `dir` with mode 0755, as containerd does, whatever
/// the umask.
fn create_log_dirs(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.as_os_str().is_empty() && std::fs::symlink_metadata(cur).is_err() {
        missing.push(cur);
        match cur.parent() {
            Some(p) => cur = p,
            None => break,
        }
    }
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(LOG_DIR_MODE))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The read ends a container's output is logged from, non-blocking for the poll loop: a
/// tty container's pty master (its pipes are not used), else its stdout and stderr pipes.
pub(super) fn container_outputs(
    tty_master: Option<OwnedFd>,
    out_r: OwnedFd,
    err_r: OwnedFd,
) -> Vec<Output> {
    let outputs = match tty_master {
        Some(master) => vec![Output::new(master, Stream::Stdout, true)],
        None => vec![
            Output::new(out_r, Stream::Stdout, false),
            Output::new(err_r, Stream::Stderr, false),
        ],
    };
    for o in &outputs {
        set_nonblocking(o.fd.as_raw_fd());
    }
    outputs
}

/// Makes `fd` non-blocking, for the poll loop.
pub(super) fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we hold.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

impl Monitor {
    /// Reopens a container's log file (after kubelet rotated it): the file the daemon
    /// opened and passed along (by [`open_log`] too), or, without one, opened here.
    pub(super) fn reopen_log(&mut self, id: &str, opened: Option<OwnedFd>) -> Result<(), Failure> {
        let c = self.container(id)?;
        let Some(path) = c.log_path.clone() else {
            return Ok(());
        };
        let f = match opened {
            Some(fd) => {
                let f = File::from(fd);
                // Only a regular file: whoever passed the fd, the monitor appends to it.
                match f.metadata() {
                    Ok(m) if m.is_file() => f,
                    Ok(_) => return Err(sys_err("reopen log file", "not a regular file")),
                    Err(e) => return Err(sys_err("reopen log file", e)),
                }
            }
            None => open_log(&path)
                .map_err(|e| sys_err(&format!("reopen log file {}", path.display()), e))?,
        };
        c.log = Some(f);
        Ok(())
    }

    /// Frees the read and log buffers (a flood touched all of them); the next read
    /// allocates them again. Called with the resident-set trim.
    pub(super) fn release_buffers(&mut self) {
        self.readbuf = Vec::new();
        self.logbuf = Vec::new();
    }

    /// Reads what a container wrote on `fd` into its log and its attachers.
    pub(super) fn read_output(&mut self, fd: RawFd) {
        let Some(ci) = self
            .containers
            .iter()
            .position(|c| c.outputs.iter().any(|o| o.fd.as_raw_fd() == fd))
        else {
            return;
        };
        if self.readbuf.is_empty() {
            // Zero pages from the kernel: only what reads fill becomes resident.
            self.readbuf = vec![0u8; READ_CHUNK];
        }
        let buf = &mut self.readbuf[..];
        let out = &mut self.logbuf;
        let c = &mut self.containers[ci];
        let oi = c
            .outputs
            .iter()
            .position(|o| o.fd.as_raw_fd() == fd)
            .unwrap_or(0);
        read_into_log(c, oi, buf, out);
        // Every record read so far is in the file (only an unfinished line is held back):
        // a reopen or the container's exit comes later and finds them there.
        flush_log(c.log.as_mut(), out);
    }
}

/// Up to [`MAX_READS_PER_WAKE`] reads of `c`'s output `oi` framed into `out` (written as it
/// fills); the output is dropped at its end.
fn read_into_log(c: &mut Container, oi: usize, buf: &mut [u8], out: &mut Vec<u8>) {
    // A bounded number of reads per wake-up: a container that writes without pause must
    // not starve the daemon's calls or the other containers.
    c.outputs[oi].stamp();
    for _ in 0..MAX_READS_PER_WAKE {
        let o = &mut c.outputs[oi];
        let r = o.file().read(buf);
        match r {
            Ok(0) => {
                o.finish(c.log.as_mut(), out);
                c.outputs.remove(oi);
                return;
            }
            Ok(n) => {
                o.log(&buf[..n], c.log.as_mut(), out);
                if !c.attachers.is_empty() {
                    let tag = match o.stream() {
                        Stream::Stdout => AttachStream::Stdout,
                        Stream::Stderr => AttachStream::Stderr,
                    };
                    // An attacher that cannot keep up loses its attachment, never
                    // the pod's log: the monitor does not block on it.
                    c.attachers.retain(|a| send_tagged(a, tag as u8, &buf[..n]));
                }
                if n < buf.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                // EIO: the pty's last holder closed it.
                o.finish(c.log.as_mut(), out);
                c.outputs.remove(oi);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_log_gets_containerds_modes_whatever_the_umask() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("pod/c/0.log");
        let mut f = open_log(&path).unwrap();
        f.write_all(b"one\n").unwrap();
        assert_eq!(mode(&path), LOG_MODE);
        assert_eq!(mode(&d.path().join("pod/c")), LOG_DIR_MODE);
        assert_eq!(mode(&d.path().join("pod")), LOG_DIR_MODE);
        // Reopened (kubelet rotated nothing): appended, mode kept.
        drop(f);
        open_log(&path).unwrap().write_all(b"two\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\n");
        // The fd is close-on-exec: no container inherits the log.
        let f = open_log(&path).unwrap();
        // SAFETY: F_GETFD on an fd we own.
        let fd_flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
    }

    /// Frames `chunks` as the poll loop does (stamp, reads gathered, one flush) into a log
    /// file; returns the file's bytes and the largest the buffer grew.
    fn logged(chunks: &[&[u8]]) -> (Vec<u8>, usize) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("c.log");
        let mut log = open_log(&path).unwrap();
        let (r, _w) = crate::sys::pipe().unwrap();
        let mut o = Output::new(r, Stream::Stdout, false);
        o.stamp();
        let (mut out, mut most) = (Vec::new(), 0);
        for c in chunks {
            o.log(c, Some(&mut log), &mut out);
            most = most.max(out.len());
        }
        flush_log(Some(&mut log), &mut out);
        assert!(out.is_empty());
        (std::fs::read(&path).unwrap(), most)
    }

    /// What the framer alone makes of `chunks` with the timestamp `logged` stamped.
    fn framed(chunks: &[&[u8]], written: &[u8]) -> Vec<u8> {
        let ts = written.split(|&b| b == b' ').next().unwrap();
        let mut f = LineFramer::new(Stream::Stdout);
        let mut want = Vec::new();
        for c in chunks {
            f.feed(c, ts, &mut want);
        }
        want
    }

    #[test]
    fn gathered_records_are_the_framers_and_the_buffer_stays_bounded() {
        // The worst growth: empty lines, each a whole record.
        let empty = vec![b'\n'; READ_CHUNK];
        let long = vec![b'x'; 3 * crate::crilog::MAX_LINE + 10];
        let lines: Vec<u8> = (0..5000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        for chunks in [
            vec![&empty[..], &empty[..]],
            vec![&long[..], b"\n", &lines[..7], &lines[7..]],
            vec![&lines[..], &lines[..]],
        ] {
            let (written, most) = logged(&chunks);
            assert_eq!(written, framed(&chunks, &written));
            // One step past the threshold at most: 16 records of a full line.
            let step = 16 * (crate::crilog::MAX_LINE + 64);
            assert!(most < LOG_FLUSH + step, "the buffer grew to {most}");
        }
    }

    #[test]
    fn without_a_log_nothing_is_gathered() {
        let (r, _w) = crate::sys::pipe().unwrap();
        let mut o = Output::new(r, Stream::Stderr, false);
        o.stamp();
        let mut out = Vec::new();
        o.log(b"one\ntwo", None, &mut out);
        o.finish(None, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"node file\n").unwrap();
        let path = d.path().join("c.log");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let err = open_log(&path).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        // A dangling link is not created through either.
        let dangling = d.path().join("d.log");
        std::os::unix::fs::symlink(d.path().join("new-node-file"), &dangling).unwrap();
        assert!(open_log(&dangling).is_err());
        assert!(!d.path().join("new-node-file").exists());
        assert_eq!(std::fs::read(&victim).unwrap(), b"node file\n");
    }

    #[test]
    fn a_planted_fifo_neither_blocks_nor_is_used() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("c.log");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = open_log(&path).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENXIO), "{err}");
    }
}
