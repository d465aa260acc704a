//! Reads a layer's tar stream entry by entry, as Go's `archive/tar` does (the reader
//! Docker and containerd unpack with), so that no archive shows Berth other files than
//! it shows them, and with every header that is buffered bounded in size.
//!
//! What makes two tar readers disagree, and what this one does:
//! - a PAX `size` record overrides the header's size field (CVE-2025-62518, where a
//!   reader that used the header's size read the hidden archive inside a file's data as
//!   entries); an invalid numeric PAX record is an error, never a silent fallback;
//! - header-only types (hard link, symlink, devices, directory, FIFO) carry no data,
//!   whatever their size field says;
//! - the last of duplicate PAX records wins, an empty PAX value keeps the header's, and a
//!   GNU long name or link wins over PAX `path` and `linkpath`;
//! - one zero block then a non-zero block is an error, not "skip and go on";
//! - typeflag NUL is a directory when the name ends in `/`.
//!
//! Where Go would accept something this reader cannot reproduce exactly (sparse files,
//! two extension headers of a kind for one entry), it refuses the layer instead.

use std::collections::BTreeMap;
use std::io::{self, Read};

/// The largest PAX extended header and GNU long name or long link accepted, in bytes: Go's
/// `archive/tar` limit (`maxSpecialFileSize`). These headers are read into memory.
pub const MAX_SPECIAL_HEADER: u64 = 1 << 20;

const BLOCK: u64 = 512;

/// Why an archive cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// The archive is malformed or refused.
    #[error("{0}")]
    Invalid(String),
    /// Reading the stream failed.
    #[error("reading layer stream")]
    Read(#[source] io::Error),
}

fn invalid(msg: impl Into<String>) -> TarError {
    TarError::Invalid(msg.into())
}

/// One entry of the archive, with its extension headers applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry type (after typeflag NUL became regular file or directory).
    pub kind: tar::EntryType,
    /// Path inside the archive, as stored.
    pub name: Vec<u8>,
    /// Link target of hard and symbolic links.
    pub link: Vec<u8>,
    /// Permission bits and setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time: seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    /// Device numbers of character and block devices.
    pub dev: (u32, u32),
    /// Bytes of data that follow the header (0 for header-only types).
    pub size: u64,
    /// `SCHILY.xattr.` PAX records: extended attribute names and values.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// The reader. [`TarReader::next_entry`] yields entries; [`TarReader::data`] reads the
/// current entry's data (what is left unread is skipped by the next call).
pub struct TarReader<R> {
    r: R,
    /// Data bytes of the current entry not read yet.
    remaining: u64,
    /// Padding after the current entry's data.
    pad: u64,
    done: bool,
}

impl<R: Read> TarReader<R> {
    /// A reader over a plain (decompressed) tar stream.
    pub fn new(r: R) -> Self {
        TarReader {
            r,
            remaining: 0,
            pad: 0,
            done: false,
        }
    }

    /// The data of the entry last returned by [`TarReader::next_entry`].
    pub fn data(&mut self) -> EntryData<'_, R> {
        EntryData { t: self }
    }

    /// Reads `n` bytes and drops them.
    fn skip(&mut self, n: u64) -> Result<(), TarError> {
        let got = io::copy(&mut (&mut self.r).take(n), &mut io::sink()).map_err(TarError::Read)?;
        if got != n {
            return Err(TarError::Read(io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    /// Fills `buf` whole: `Ok(false)` at a clean end of stream (nothing read).
    fn block(&mut self, buf: &mut [u8; BLOCK as usize]) -> Result<bool, TarError> {
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) if n == 0 => return Ok(false),
                Ok(0) => return Err(TarError::Read(io::ErrorKind::UnexpectedEof.into())),
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Read(e)),
            }
        }
        Ok(true)
    }

    /// Reads the data of an extension header (bounded by [`MAX_SPECIAL_HEADER`]).
    fn special(&mut self, what: &str, size: u64) -> Result<Vec<u8>, TarError> {
        if size > MAX_SPECIAL_HEADER {
            return Err(invalid(format!(
                "{what} header of {size} bytes is larger than the limit of {MAX_SPECIAL_HEADER} bytes"
            )));
        }
        let mut buf = Vec::with_capacity(size as usize);
        (&mut self.r)
            .take(size)
            .read_to_end(&mut buf)
            .map_err(TarError::Read)?;
        if buf.len() as u64 != size {
            return Err(TarError::Read(io::ErrorKind::UnexpectedEof.into()));
        }
        self.remaining = 0;
        Ok(buf)
    }

    /// The next entry, `None` at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        if self.done {
            return Ok(None);
        }
        let mut pax: Option<BTreeMap<Vec<u8>, Vec<u8>>> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut blk = [0u8; BLOCK as usize];
        loop {
            let rest = self.remaining + self.pad;
            self.skip(rest)?;
            self.remaining = 0;
            self.pad = 0;
            let pending = pax.is_some() || long_name.is_some() || long_link.is_some();
            if !self.block(&mut blk)? {
                if pending {
                    return Err(invalid("extension header at the end of the archive"));
                }
                self.done = true;
                return Ok(None);
            }
            if blk.iter().all(|b| *b == 0) {
                // The end: a second zero block or the end of the stream must follow.
                if self.block(&mut blk)? && blk.iter().any(|b| *b != 0) {
                    return Err(invalid("a header after the end-of-archive block"));
                }
                if pending {
                    return Err(invalid("extension header at the end of the archive"));
                }
                self.done = true;
                return Ok(None);
            }
            let h = Header::parse(&blk)?;
            let typeflag = blk[156];
            match typeflag {
                b'x' | b'L' | b'K' => {
                    let (what, slot_taken) = match typeflag {
                        b'x' => ("PAX extended", pax.is_some()),
                        b'L' => ("GNU long name", long_name.is_some()),
                        _ => ("GNU long link", long_link.is_some()),
                    };
                    if slot_taken {
                        return Err(invalid(format!("two {what} headers for one entry")));
                    }
                    let data = self.special(what, h.size)?;
                    self.pad = padding(h.size);
                    match typeflag {
                        b'x' => pax = Some(parse_pax(&data)?),
                        b'L' => long_name = Some(cstr(&data).to_vec()),
                        _ => long_link = Some(cstr(&data).to_vec()),
                    }
                    continue;
                }
                b'g' => {
                    if pending {
                        return Err(invalid("a PAX global header between an entry's headers"));
                    }
                    // Global records apply to no entry (as in Go, Docker and containerd);
                    // its data is read like any other, bounded.
                    self.special("PAX global", h.size)?;
                    self.pad = padding(h.size);
                    continue;
                }
                _ => {}
            }
            let mut e = Entry {
                kind: tar::EntryType::new(typeflag),
                name: h.name,
                link: h.link,
                mode: h.mode,
                uid: h.uid,
                gid: h.gid,
                mtime: (h.mtime, 0),
                dev: h.dev,
                size: h.size,
                xattrs: BTreeMap::new(),
            };
            if let Some(records) = pax {
                merge_pax(&mut e, records)?;
            }
            if let Some(n) = long_name {
                e.name = n;
            }
            if let Some(l) = long_link {
                e.link = l;
            }
            if typeflag == 0 {
                e.kind = if e.name.ends_with(b"/") {
                    tar::EntryType::Directory
                } else {
                    tar::EntryType::Regular
                };
            }
            if typeflag == b'S' {
                return Err(invalid("sparse files are not supported"));
            }
            if matches!(typeflag, b'1'..=b'6') {
                e.size = 0;
            }
            self.remaining = e.size;
            self.pad = padding(e.size);
            return Ok(Some(e));
        }
    }
}

/// The current entry's data; reading past what the stream holds is an error.
pub struct EntryData<'a, R> {
    t: &'a mut TarReader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.t.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(self.t.remaining.min(usize::MAX as u64) as usize);
        let n = self.t.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.t.remaining -= n as u64;
        Ok(n)
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// The bytes before the first NUL.
fn cstr(b: &[u8]) -> &[u8] {
    b.iter().position(|c| *c == 0).map_or(b, |i| &b[..i])
}

/// A numeric header field: octal text padded with spaces or NULs, or base-256 when the
/// top bit of the first byte is set (GNU and Go both write it for large values).
fn numeric(field: &[u8], what: &str) -> Result<i64, TarError> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // Big-endian two's complement; the first byte's top bit is the marker and its
        // next bit the sign. A negative value is read inverted (-a-1 == !a).
        let inv: u8 = if field[0] & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, c) in field.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 != 0 {
                return Err(invalid(format!("{what} field overflows")));
            }
            x = (x << 8) | u64::from(c);
        }
        if x >> 63 != 0 {
            return Err(invalid(format!("{what} field overflows")));
        }
        return Ok(if inv == 0xff { !(x as i64) } else { x as i64 });
    }
    let trimmed = {
        let s = field
            .iter()
            .position(|b| *b != b' ' && *b != 0)
            .unwrap_or(field.len());
        let e = field
            .iter()
            .rposition(|b| *b != b' ' && *b != 0)
            .map_or(s, |i| i + 1);
        cstr(&field[s..e.max(s)])
    };
    if trimmed.is_empty() {
        return Ok(0);
    }
    std::str::from_utf8(trimmed)
        .ok()
        .filter(|s| s.bytes().all(|b| (b'0'..=b'7').contains(&b)))
        .and_then(|s| u64::from_str_radix(s, 8).ok())
        .and_then(|v| i64::try_from(v).ok())
        .ok_or_else(|| invalid(format!("bad {what} field in a header")))
}

/// The fields of one 512-byte header block.
struct Header {
    name: Vec<u8>,
    link: Vec<u8>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    size: u64,
    dev: (u32, u32),
}

impl Header {
    fn parse(b: &[u8; BLOCK as usize]) -> Result<Header, TarError> {
        // The checksum as Go checks it: the unsigned or the signed sum of the block with
        // the checksum field read as spaces.
        let stored = numeric(&b[148..156], "checksum")?;
        let (mut unsigned, mut signed) = (0i64, 0i64);
        for (i, c) in b.iter().enumerate() {
            let c = if (148..156).contains(&i) { b' ' } else { *c };
            unsigned += i64::from(c);
            signed += i64::from(c as i8);
        }
        if stored != unsigned && stored != signed {
            return Err(invalid("header checksum mismatch"));
        }
        let magic = &b[257..263];
        let version = &b[263..265];
        let ustar = magic == b"ustar\0" && version == b"00";
        let gnu = magic == b"ustar " && version == b" \0";
        if !(ustar || gnu || magic.iter().all(|c| *c == 0)) {
            return Err(invalid("header of an unknown tar format"));
        }
        let mut name = cstr(&b[0..100]).to_vec();
        if ustar {
            // star keeps times at the end of the prefix field and says so with a trailer.
            let prefix = if &b[508..512] == b"tar\0" {
                &b[345..476]
            } else {
                &b[345..500]
            };
            let prefix = cstr(prefix);
            if !prefix.is_empty() {
                let mut full = prefix.to_vec();
                full.push(b'/');
                full.extend_from_slice(&name);
                name = full;
            }
        }
        let size = numeric(&b[124..136], "size")?;
        let size = u64::try_from(size).map_err(|_| invalid("negative size in a header"))?;
        let id = |v: i64, what: &str| {
            u64::try_from(v).map_err(|_| invalid(format!("negative {what} in a header")))
        };
        let (major, minor) = if ustar || gnu {
            (
                numeric(&b[329..337], "devmajor")?,
                numeric(&b[337..345], "devminor")?,
            )
        } else {
            (0, 0)
        };
        let dev32 = |v: i64| u32::try_from(v).map_err(|_| invalid("device number out of range"));
        Ok(Header {
            name,
            link: cstr(&b[157..257]).to_vec(),
            mode: (numeric(&b[100..108], "mode")? & 0o7777) as u32,
            uid: id(numeric(&b[108..116], "uid")?, "uid")?,
            gid: id(numeric(&b[116..124], "gid")?, "gid")?,
            mtime: numeric(&b[136..148], "mtime")?,
            size,
            dev: (dev32(major)?, dev32(minor)?),
        })
    }
}

/// Parses PAX records (`"<len> <key>=<value>\n"`); later duplicates replace earlier ones.
fn parse_pax(mut buf: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, TarError> {
    let bad = || invalid("malformed PAX record");
    let mut out = BTreeMap::new();
    while !buf.is_empty() {
        let sp = buf.iter().position(|b| *b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&buf[..sp])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= sp + 1 || len > buf.len() || buf[len - 1] != b'\n' {
            return Err(bad());
        }
        let rec = &buf[sp + 1..len - 1];
        let eq = rec.iter().position(|b| *b == b'=').ok_or_else(bad)?;
        let (key, value) = (&rec[..eq], &rec[eq + 1..]);
        if key.is_empty() || key.contains(&0) {
            return Err(bad());
        }
        if key.starts_with(b"GNU.sparse.") {
            return Err(invalid("sparse files are not supported"));
        }
        if matches!(key, b"path" | b"linkpath" | b"uname" | b"gname") && value.contains(&0) {
            return Err(bad());
        }
        out.insert(key.to_vec(), value.to_vec());
        buf = &buf[len..];
    }
    Ok(out)
}

/// Applies PAX records to an entry as Go's `mergePAX` does.
fn merge_pax(e: &mut Entry, records: BTreeMap<Vec<u8>, Vec<u8>>) -> Result<(), TarError> {
    for (k, v) in records {
        if v.is_empty() {
            // An empty value keeps the header's.
            continue;
        }
        let num = || -> Result<i64, TarError> {
            std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| {
                    invalid(format!(
                        "bad numeric PAX record {}",
                        String::from_utf8_lossy(&k)
                    ))
                })
        };
        match k.as_slice() {
            b"path" => e.name = v.clone(),
            b"linkpath" => e.link = v.clone(),
            b"uid" => {
                e.uid = u64::try_from(num()?).map_err(|_| invalid("negative PAX uid"))?;
            }
            b"gid" => {
                e.gid = u64::try_from(num()?).map_err(|_| invalid("negative PAX gid"))?;
            }
            b"size" => {
                e.size = u64::try_from(num()?).map_err(|_| invalid("negative PAX size"))?;
            }
            b"mtime" => {
                e.mtime = std::str::from_utf8(&v)
                    .ok()
                    .and_then(parse_pax_time)
                    .ok_or_else(|| invalid("bad PAX mtime record"))?;
            }
            k if k.starts_with(b"SCHILY.xattr.") => {
                e.xattrs
                    .insert(k[b"SCHILY.xattr.".len()..].to_vec(), v.clone());
            }
            _ => {}
        }
    }
    Ok(())
}

/// `secs[.frac]` (possibly negative) -> seconds and nanoseconds.
fn parse_pax_time(v: &str) -> Option<(i64, u32)> {
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let negative = secs.starts_with('-');
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().take(9).collect();
    let mut nanos = if digits.is_empty() {
        0
    } else {
        digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
    };
    // -1.5 is 1.5 s before the epoch: -2 s + 0.5 s.
    let mut secs = secs;
    if negative && nanos > 0 {
        secs -= 1;
        nanos = 1_000_000_000 - nanos;
    }
    Some((secs, nanos))
}

#[cfg(test)]
pub(crate) mod tests;
