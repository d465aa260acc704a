//! A container's output streams and its CRI log file.

use std::fs::File;
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::crilog::{LineFramer, Stream, now_rfc3339_nano};

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

    /// Frames bytes read from the stream into `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let mut ts = Vec::with_capacity(40);
        now_rfc3339_nano(&mut ts);
        self.framer.feed(data, &ts, out);
    }

    /// Flushes a partial line at end of stream.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let mut ts = Vec::with_capacity(40);
        now_rfc3339_nano(&mut ts);
        self.framer.finish(&ts, out);
    }
}

/// Opens (creating it and its directory) a CRI log file for appending.
pub(crate) fn open_log(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Writes framed records to the log (or drops them without one) and empties `buf`.
pub(crate) fn write_log(log: Option<&mut File>, buf: &mut Vec<u8>) {
    if let Some(f) = log
        && !buf.is_empty()
        && let Err(e) = f.write_all(buf)
    {
        eprintln!("berth-monitor: write log: {e}");
    }
    buf.clear();
    if buf.capacity() > 8 * 1024 {
        *buf = Vec::new();
    }
}
