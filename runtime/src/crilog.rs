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

/// Iovecs a record can take: its prefix, the held-back start of its line, the line from
/// the read buffer and, for a `P` record, the newline the content lacks.
pub const IOVECS_PER_RECORD: usize = 4;

/// Splits one stream's bytes into CRI log records, keeping a partial line between reads.
///
/// Records are described as iovecs ([`LineFramer::frame`]) that point into the caller's read
/// buffer, so the payload is never copied before the kernel writes it to the log: only the
/// `<ts> <stream> F ` prefix, built once per wake-up ([`LineFramer::stamp`]), and an
/// unfinished line held back between reads are the framer's own bytes.
#[derive(Debug)]
pub struct LineFramer {
    stream: Stream,
    /// The start of an unfinished line, from earlier reads.
    partial: Vec<u8>,
    /// Set once `partial` went into a record of the last `frame` call: the iovecs still
    /// borrowed it, so it could not be cleared there; the next call clears it.
    partial_sent: bool,
    /// The unfinished end of a `frame` call whose records used `partial`: it becomes
    /// `partial` at the next call.
    next: Vec<u8>,
    /// `<ts> <stream> F `: the prefix of every full line until the next stamp.
    full: Vec<u8>,
    /// `<ts> <stream> P `: the prefix of a cut or unfinished line.
    cut: Vec<u8>,
}

/// The newline a `P` record ends with (its content has none).
const NEWLINE: &[u8] = b"\n";

/// Puts `s` in the next free iovec; an empty piece (no held-back line) takes none.
fn push<'a>(iov: &mut [std::io::IoSlice<'a>], n: &mut usize, s: &'a [u8]) {
    if !s.is_empty() {
        iov[*n] = std::io::IoSlice::new(s);
        *n += 1;
    }
}

impl LineFramer {
    /// A framer for `stream`.
    pub fn new(stream: Stream) -> Self {
        LineFramer {
            stream,
            partial: Vec::new(),
            partial_sent: false,
            next: Vec::new(),
            full: Vec::new(),
            cut: Vec::new(),
        }
    }

    /// Bytes of an unfinished line held back.
    pub fn pending(&self) -> usize {
        if self.partial_sent {
            self.next.len()
        } else {
            self.partial.len()
        }
    }

    /// Sets the timestamp of the records framed from now on: the prefixes are built here,
    /// once, rather than for each record.
    pub fn stamp(&mut self, ts: &[u8]) {
        for (prefix, tag) in [(&mut self.full, b'F'), (&mut self.cut, b'P')] {
            prefix.clear();
            prefix.extend_from_slice(ts);
            prefix.push(b' ');
            prefix.extend_from_slice(self.stream.name());
            prefix.extend_from_slice(&[b' ', tag, b' ']);
        }
    }

    /// Makes `partial` the held-back line again after a call whose records borrowed it.
    fn settle(&mut self) {
        if self.partial_sent {
            self.partial.clear();
            std::mem::swap(&mut self.partial, &mut self.next);
            self.partial_sent = false;
        }
        if self.partial.is_empty() && self.partial.capacity() > 4096 {
            self.partial = Vec::new();
        }
        if self.next.capacity() > 4096 {
            self.next = Vec::new();
        }
    }

    /// Frames the start of `data` into records described by iovecs in `iov`, stamped as
    /// the last [`LineFramer::stamp`] said. Returns how many iovecs were filled and how many
    /// bytes of `data` were consumed; the rest (when `iov` filled up) is for the next call,
    /// after these iovecs were written. An unfinished line at the end is held back.
    pub fn frame<'a>(
        &'a mut self,
        data: &'a [u8],
        iov: &mut [std::io::IoSlice<'a>],
    ) -> (usize, usize) {
        self.settle();
        let room = MAX_LINE - self.partial.len();
        if data.len() <= room && memchr::memchr(b'\n', data).is_none() {
            // No record ends in `data`: the line so far is held back.
            self.partial.extend_from_slice(data);
            return (0, data.len());
        }
        if iov.len() < IOVECS_PER_RECORD {
            return (0, 0);
        }
        // The held-back line goes into the first record; from here on it is borrowed, so
        // what is left unfinished goes to `next`.
        let LineFramer {
            partial,
            partial_sent,
            next,
            full,
            cut,
            ..
        } = self;
        let full: &'a [u8] = full;
        let cut: &'a [u8] = cut;
        let mut held: &'a [u8] = partial;
        *partial_sent = true;
        let mut n = 0;
        let mut rest = data;
        while !rest.is_empty() {
            let room = MAX_LINE - held.len();
            match memchr::memchr(b'\n', &rest[..rest.len().min(room + 1)]) {
                Some(nl) => {
                    push(iov, &mut n, full);
                    push(iov, &mut n, held);
                    push(iov, &mut n, &rest[..=nl]);
                    rest = &rest[nl + 1..];
                }
                None if rest.len() > room => {
                    push(iov, &mut n, cut);
                    push(iov, &mut n, held);
                    push(iov, &mut n, &rest[..room]);
                    push(iov, &mut n, NEWLINE);
                    rest = &rest[room..];
                }
                None => {
                    next.extend_from_slice(rest);
                    rest = &[];
                    break;
                }
            }
            held = &[];
            if iov.len() - n < IOVECS_PER_RECORD {
                break;
            }
        }
        (n, data.len() - rest.len())
    }

    /// Ends the stream: a pending partial line becomes a `P` record, described in `iov`
    /// (at least [`IOVECS_PER_RECORD`] long). Returns how many iovecs were filled.
    pub fn finish_into<'a>(&'a mut self, iov: &mut [std::io::IoSlice<'a>]) -> usize {
        self.settle();
        if self.partial.is_empty() {
            return 0;
        }
        self.partial_sent = true;
        iov[0] = std::io::IoSlice::new(&self.cut);
        iov[1] = std::io::IoSlice::new(&self.partial);
        iov[2] = std::io::IoSlice::new(NEWLINE);
        3
    }

    /// Frames `data` stamped `ts`, appending the records to `out` (a copy of what
    /// [`LineFramer::frame`] describes, for callers that want bytes).
    pub fn feed(&mut self, mut data: &[u8], ts: &[u8], out: &mut Vec<u8>) {
        self.stamp(ts);
        while !data.is_empty() {
            let mut iov = [std::io::IoSlice::new(&[]); 64];
            let (n, used) = self.frame(data, &mut iov);
            for s in &iov[..n] {
                out.extend_from_slice(s);
            }
            data = &data[used..];
        }
    }

    /// Ends the stream: a pending partial line is appended to `out` as a `P` record.
    pub fn finish(&mut self, ts: &[u8], out: &mut Vec<u8>) {
        self.stamp(ts);
        let mut iov = [std::io::IoSlice::new(&[]); IOVECS_PER_RECORD];
        let n = self.finish_into(&mut iov);
        for s in &iov[..n] {
            out.extend_from_slice(s);
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

    /// The format written out by hand, byte by byte: the reference the framer must match.
    fn reference(data: &[u8], eof: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut line = Vec::new();
        for &b in data {
            if b == b'\n' {
                out.extend_from_slice(b"T stderr F ");
                out.extend_from_slice(&line);
                out.push(b'\n');
                line.clear();
                continue;
            }
            if line.len() == MAX_LINE {
                out.extend_from_slice(b"T stderr P ");
                out.extend_from_slice(&line);
                out.push(b'\n');
                line.clear();
            }
            line.push(b);
        }
        if eof && !line.is_empty() {
            out.extend_from_slice(b"T stderr P ");
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
        out
    }

    /// Frames `chunks` through [`LineFramer::frame`] with `iov_len` iovecs per call, as the
    /// monitor's `writev` does, and concatenates what the iovecs point at.
    fn frame_iov(chunks: &[&[u8]], iov_len: usize, eof: bool) -> Vec<u8> {
        let mut f = LineFramer::new(Stream::Stderr);
        f.stamp(b"T");
        let mut out = Vec::new();
        for c in chunks {
            let mut data = *c;
            while !data.is_empty() {
                let mut iov = vec![std::io::IoSlice::new(&[]); iov_len];
                let (n, used) = f.frame(data, &mut iov);
                assert!(used > 0, "no progress with {iov_len} iovecs");
                assert!(iov[..n].iter().all(|s| !s.is_empty()), "an empty iovec");
                for s in &iov[..n] {
                    out.extend_from_slice(s);
                }
                data = &data[used..];
            }
        }
        if eof {
            let mut iov = [std::io::IoSlice::new(&[]); IOVECS_PER_RECORD];
            let n = f.finish_into(&mut iov);
            for s in &iov[..n] {
                out.extend_from_slice(s);
            }
        }
        out
    }

    #[test]
    fn the_iovecs_frame_what_the_reference_frames_for_every_split() {
        let text: &[u8] = b"one\ntwo two\n\n\nthree-and-more\nfour";
        let whole = reference(text, true);
        for iov_len in [IOVECS_PER_RECORD, 5, 7, 1024] {
            for cut in 0..=text.len() {
                for cut2 in cut..=text.len() {
                    let pieces = [&text[..cut], &text[cut..cut2], &text[cut2..]];
                    assert_eq!(
                        frame_iov(&pieces, iov_len, true),
                        whole,
                        "cut at {cut} and {cut2}, {iov_len} iovecs"
                    );
                }
            }
        }
    }

    #[test]
    fn the_iovecs_cut_long_lines_as_the_reference_does() {
        // Lines around the 16 KiB limit, with and without their newline at the cut.
        let mut data = Vec::new();
        for len in [
            MAX_LINE - 1,
            MAX_LINE,
            MAX_LINE + 1,
            2 * MAX_LINE,
            3 * MAX_LINE + 7,
        ] {
            data.extend(std::iter::repeat_n(b'x', len));
            data.push(b'\n');
        }
        data.extend(std::iter::repeat_n(b'y', MAX_LINE + 3));
        for eof in [false, true] {
            let want = reference(&data, eof);
            for step in [1000, 4096, MAX_LINE, MAX_LINE + 1, 64 * 1024] {
                let pieces: Vec<&[u8]> = data.chunks(step).collect();
                for iov_len in [IOVECS_PER_RECORD, 6, 1024] {
                    assert!(
                        frame_iov(&pieces, iov_len, eof) == want,
                        "{step}-byte reads, {iov_len} iovecs, eof {eof}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_flood_of_short_lines_fills_every_iovec_call() {
        let data: Vec<u8> = (0..5000u32)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        assert_eq!(frame_iov(&[&data], 1024, true), reference(&data, true));
        // Each record takes two iovecs; a call stops once fewer are left than a record can
        // take (four), so after 511 records.
        let mut f = LineFramer::new(Stream::Stderr);
        f.stamp(b"T");
        let mut iov = vec![std::io::IoSlice::new(&[]); 1024];
        let (n, used) = f.frame(&data, &mut iov);
        assert_eq!(n, 1022);
        assert_eq!(data[..used].iter().filter(|&&b| b == b'\n').count(), 511);
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
