//! The CRI log format kubelet reads: `<RFC3339Nano> stdout|stderr F|P <content>\n`.
//!
//! Framing follows containerd: a line is written with tag `F` when its newline arrives;
//! a line longer than [`MAX_LINE`] is cut into `P` records of that size; data still pending
//! at end of stream is written as a `P` record. Only `\n` ends a line (a `\r` is content).

/// Longest line content in one record (containerd's `max_container_log_line_size`).
pub const MAX_LINE: usize = 16 * 1024;

/// Which output stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The container's stdout (and a tty's output).
    Stdout,
    /// The container's stderr.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static [u8] {
        match self {
            Stream::Stdout => b"stdout",
            Stream::Stderr => b"stderr",
        }
    }
}

/// Splits one stream's bytes into CRI log records, keeping a partial line between reads.
#[derive(Debug)]
pub struct LineFramer {
    stream: Stream,
    partial: Vec<u8>,
    /// `<ts> <stream> F ` of the current feed: the prefix of every full line it frames,
    /// built once per feed rather than piece by piece for each line.
    full: Vec<u8>,
}

impl LineFramer {
    /// A framer for `stream`.
    pub fn new(stream: Stream) -> Self {
        LineFramer {
            stream,
            partial: Vec::new(),
            full: Vec::new(),
        }
    }

    /// Bytes of an unfinished line held back.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    fn record(&self, ts: &[u8], tag: u8, parts: [&[u8]; 2], out: &mut Vec<u8>) {
        out.extend_from_slice(ts);
        out.push(b' ');
        out.extend_from_slice(self.stream.name());
        out.push(b' ');
        out.push(tag);
        out.push(b' ');
        out.extend_from_slice(parts[0]);
        out.extend_from_slice(parts[1]);
        out.push(b'\n');
    }

    /// Frames `data`, appending finished records (stamped `ts`) to `out`.
    pub fn feed(&mut self, mut data: &[u8], ts: &[u8], out: &mut Vec<u8>) {
        self.full.clear();
        self.full.extend_from_slice(ts);
        self.full.push(b' ');
        self.full.extend_from_slice(self.stream.name());
        self.full.extend_from_slice(b" F ");
        while !data.is_empty() {
            let room = MAX_LINE - self.partial.len();
            match memchr::memchr(b'\n', data) {
                // The common case, a whole line in this read: one copy of the prefix, one
                // of the line with its newline.
                Some(nl) if nl <= room && self.partial.is_empty() => {
                    out.extend_from_slice(&self.full);
                    out.extend_from_slice(&data[..=nl]);
                    data = &data[nl + 1..];
                }
                Some(nl) if nl <= room => {
                    out.extend_from_slice(&self.full);
                    out.extend_from_slice(&self.partial);
                    out.extend_from_slice(&data[..=nl]);
                    self.partial.clear();
                    data = &data[nl + 1..];
                }
                _ if data.len() > room => {
                    let partial = std::mem::take(&mut self.partial);
                    self.record(ts, b'P', [&partial, &data[..room]], out);
                    self.partial = partial;
                    self.partial.clear();
                    data = &data[room..];
                }
                _ => {
                    self.partial.extend_from_slice(data);
                    data = &[];
                }
            }
        }
        if self.partial.is_empty() && self.partial.capacity() > 4096 {
            self.partial = Vec::new();
        }
    }

    /// Ends the stream: a pending partial line is written as a `P` record.
    pub fn finish(&mut self, ts: &[u8], out: &mut Vec<u8>) {
        if !self.partial.is_empty() {
            let partial = std::mem::take(&mut self.partial);
            self.record(ts, b'P', [&partial, &[]], out);
        }
    }
}

/// Why a log location kubelet sent is refused. The monitor writes the log as root, so a
/// path that leaves the pod's log directory would let a pod spec write anywhere on the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogPathError {
    /// `log_directory` must be absolute: it is kubelet's `/var/log/pods/<pod>`.
    #[error("log_directory {0:?} is not an absolute path")]
    DirectoryNotAbsolute(String),
    /// `log_path` is joined to the pod's log directory, so it must be relative.
    #[error("log_path {0:?} is absolute; it must be relative to the pod's log directory")]
    Absolute(String),
    /// A `..` component would climb out of the pod's log directory.
    #[error("log_path {0:?} has a \"..\" component")]
    ParentComponent(String),
    /// The path must end in a file name (`c/0.log`), not a directory.
    #[error("log_path {0:?} does not name a file")]
    NotAFile(String),
    /// The kernel would cut the path at the NUL: what is opened is not what was checked.
    #[error("{field} contains a NUL byte")]
    Nul {
        /// `log_path` or `log_directory`.
        field: &'static str,
    },
}

/// Checks a container's `log_path`: empty (no log), or a relative path inside the pod's log
/// directory without `..` components, naming a file.
pub fn check_log_path(path: &str) -> Result<(), LogPathError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.contains('\0') {
        return Err(LogPathError::Nul { field: "log_path" });
    }
    if path.starts_with('/') {
        return Err(LogPathError::Absolute(path.to_owned()));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(LogPathError::ParentComponent(path.to_owned()));
    }
    match path.rsplit('/').next() {
        Some("" | ".") | None => Err(LogPathError::NotAFile(path.to_owned())),
        Some(_) => Ok(()),
    }
}

/// Checks a pod's `log_directory`: empty (no logs) or an absolute path.
pub fn check_log_directory(dir: &str) -> Result<(), LogPathError> {
    if dir.is_empty() {
        return Ok(());
    }
    if dir.contains('\0') {
        return Err(LogPathError::Nul {
            field: "log_directory",
        });
    }
    if !dir.starts_with('/') {
        return Err(LogPathError::DirectoryNotAbsolute(dir.to_owned()));
    }
    Ok(())
}

/// Formats a UTC time as Go's RFC3339Nano does (trailing fractional zeros trimmed).
/// Digits are written by hand: this runs for every log record, and `core::fmt` would keep
/// a large part of the monitor's code resident.
pub fn rfc3339_nano(secs: i64, nanos: u32, out: &mut Vec<u8>) {
    fn digits(out: &mut Vec<u8>, v: u64, width: usize) {
        let mut buf = [b'0'; 20];
        let mut v = v;
        let mut i = buf.len();
        while v > 0 || buf.len() - i < width {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&buf[i..]);
    }
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u64;
    let (y, m, d) = civil_from_days(days);
    if y < 0 {
        out.push(b'-');
    }
    digits(out, y.unsigned_abs(), 4);
    out.push(b'-');
    digits(out, m as u64, 2);
    out.push(b'-');
    digits(out, d as u64, 2);
    out.push(b'T');
    digits(out, rem / 3600, 2);
    out.push(b':');
    digits(out, (rem / 60) % 60, 2);
    out.push(b':');
    digits(out, rem % 60, 2);
    if nanos > 0 {
        let mut frac = nanos.min(999_999_999);
        let mut width = 9;
        while frac.is_multiple_of(10) {
            frac /= 10;
            width -= 1;
        }
        out.push(b'.');
        digits(out, frac as u64, width);
    }
    out.push(b'Z');
}

/// The current time as an RFC3339Nano timestamp.
pub fn now_rfc3339_nano(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339_nano(now.as_secs() as i64, now.subsec_nanos(), out);
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(chunks: &[&[u8]], eof: bool) -> String {
        let mut f = LineFramer::new(Stream::Stderr);
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, b"T", &mut out);
        }
        if eof {
            f.finish(b"T", &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn full_and_partial_lines() {
        assert_eq!(frame(&[b"a\nb"], false), "T stderr F a\n");
        assert_eq!(
            frame(&[b"a\nb", b"c\n"], false),
            "T stderr F a\nT stderr F bc\n"
        );
        assert_eq!(frame(&[b"a\nb"], true), "T stderr F a\nT stderr P b\n");
        assert_eq!(frame(&[b"\n\n"], true), "T stderr F \nT stderr F \n");
        assert_eq!(frame(&[b"cr\r\n"], true), "T stderr F cr\r\n");
        assert_eq!(frame(&[], true), "");
    }

    #[test]
    fn any_split_of_the_input_frames_the_same_lines() {
        let text: &[u8] = b"one\ntwo two\n\nthree-and-more\nfour";
        let whole = frame(&[text], true);
        assert_eq!(
            whole,
            "T stderr F one\nT stderr F two two\nT stderr F \nT stderr F three-and-more\n\
             T stderr P four\n"
        );
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                let pieces = [&text[..cut], &text[cut..cut2], &text[cut2..]];
                assert_eq!(frame(&pieces, true), whole, "cut at {cut} and {cut2}");
            }
        }
    }

    #[test]
    fn long_lines_split_with_p() {
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let mut data = long.clone();
        data.push(b'\n');
        let out = frame(&[&data[..100], &data[100..]], false);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), "T stderr P ".len() + MAX_LINE);
        assert!(lines[0].starts_with("T stderr P x"));
        assert!(lines[1].starts_with("T stderr P x"));
        assert_eq!(lines[2], "T stderr F xxxxx");
        // exactly MAX_LINE then newline is one full record
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        let out = frame(&[&exact], false);
        assert_eq!(out.lines().count(), 1);
        assert!(out.starts_with("T stderr F y"));
    }

    #[test]
    fn log_paths_stay_inside_the_log_directory() {
        for ok in [
            "",
            "c.log",
            "c/0.log",
            "./c/0.log",
            "a/b/c.log",
            "..c.log",
            "c..log",
        ] {
            assert_eq!(check_log_path(ok), Ok(()), "{ok:?}");
        }
        for parent in ["../../x", "c/../../x.log", "c/.."] {
            assert_eq!(
                check_log_path(parent),
                Err(LogPathError::ParentComponent(parent.into()))
            );
        }
        assert_eq!(
            check_log_path("/etc/shadow"),
            Err(LogPathError::Absolute("/etc/shadow".into()))
        );
        assert_eq!(
            check_log_path("c.log\0x"),
            Err(LogPathError::Nul { field: "log_path" })
        );
        for dir in ["c/", "."] {
            assert_eq!(check_log_path(dir), Err(LogPathError::NotAFile(dir.into())));
        }
        let e = check_log_path("../../x").unwrap_err().to_string();
        assert_eq!(e, "log_path \"../../x\" has a \"..\" component");
    }

    #[test]
    fn log_directories_are_absolute() {
        assert_eq!(check_log_directory(""), Ok(()));
        assert_eq!(check_log_directory("/var/log/pods/ns_p_uid"), Ok(()));
        assert_eq!(
            check_log_directory("var/log/pods"),
            Err(LogPathError::DirectoryNotAbsolute("var/log/pods".into()))
        );
        assert_eq!(
            check_log_directory("/var/log\0/x"),
            Err(LogPathError::Nul {
                field: "log_directory"
            })
        );
    }

    #[test]
    fn timestamps_like_go() {
        let mut out = Vec::new();
        rfc3339_nano(0, 0, &mut out);
        assert_eq!(out, b"1970-01-01T00:00:00Z");
        out.clear();
        rfc3339_nano(1_700_000_000, 120_000_000, &mut out);
        assert_eq!(out, b"2023-11-14T22:13:20.12Z");
        out.clear();
        rfc3339_nano(951_782_400, 5, &mut out); // 2000-02-29
        assert_eq!(out, b"2000-02-29T00:00:00.000000005Z");
    }
}
