//! SPDY/3 header blocks: the name/value block format and its zlib compression, which uses the
//! dictionary defined by the SPDY/3 specification (section 2.6.10.1) and one zlib stream per
//! direction for the whole session.

use std::sync::LazyLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Header names are lower case on the wire; a name may carry several values separated by NUL.
pub type Headers = Vec<(String, String)>;

/// Why a header block could not be compressed or understood. Every variant ends the session:
/// the zlib contexts are out of step after any of them.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// zlib refused the compressed block.
    #[error("cannot decompress header block: {0}")]
    Decompress(String),
    /// zlib failed to compress.
    #[error("cannot compress header block: {0}")]
    Compress(String),
    /// The decompressed block is bigger than this endpoint accepts.
    #[error("header block exceeds {0} bytes")]
    TooLarge(usize),
    /// The decompressed block is not a valid name/value block.
    #[error("malformed header block: {0}")]
    Malformed(&'static str),
}

/// Header names of the dictionary, each stored with a 32-bit big-endian length in front.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The dictionary's tail: common values, stored as one run of bytes without lengths.
const DICTIONARY_TAIL: &str = "100101201202205206300302303304305306307402405406407408409410\
411412413414415416417502504505203 Non-Authoritative Information204 No Content301 Moved \
Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server \
Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov \
Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,\
image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivate\
max-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut dict = Vec::with_capacity(1424);
    for word in DICTIONARY_WORDS {
        dict.extend_from_slice(&(word.len() as u32).to_be_bytes());
        dict.extend_from_slice(word.as_bytes());
    }
    dict.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    dict
});

/// The SPDY/3 header compression dictionary.
pub fn dictionary() -> &'static [u8] {
    &DICTIONARY
}

/// Returns the first value of `name` (compared without case), as Go's `Header.Get` does.
pub fn get<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or(""))
}

/// Serializes a name/value block, uncompressed. Names are lower-cased as SPDY requires.
pub fn encode_block(headers: &Headers) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + headers.len() * 24);
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend(name.bytes().map(|b| b.to_ascii_lowercase()));
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Parses an uncompressed name/value block. Names are lower-cased; non-UTF-8 bytes are
/// replaced rather than rejected, since header values are opaque to SPDY.
pub fn parse_block(mut block: &[u8]) -> Result<Headers, HeaderError> {
    fn take<'a>(block: &mut &'a [u8], n: usize) -> Result<&'a [u8], HeaderError> {
        if block.len() < n {
            return Err(HeaderError::Malformed("truncated"));
        }
        let (head, rest) = block.split_at(n);
        *block = rest;
        Ok(head)
    }
    fn take_u32(block: &mut &[u8]) -> Result<usize, HeaderError> {
        let b = take(block, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let count = take_u32(&mut block)?;
    // Each pair takes at least 8 bytes: a count beyond that is a lie, not an allocation.
    if count > block.len() / 8 {
        return Err(HeaderError::Malformed("pair count exceeds block"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let n = take_u32(&mut block)?;
        let name = take(&mut block, n)?;
        if name.is_empty() {
            return Err(HeaderError::Malformed("empty header name"));
        }
        let n = take_u32(&mut block)?;
        let value = take(&mut block, n)?;
        headers.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    if !block.is_empty() {
        return Err(HeaderError::Malformed("trailing bytes"));
    }
    Ok(headers)
}

/// The sending side's zlib context.
pub struct HeaderCompressor {
    zlib: Compress,
}

impl Default for HeaderCompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderCompressor {
    /// A fresh context primed with the SPDY dictionary.
    pub fn new() -> HeaderCompressor {
        let mut zlib = Compress::new(Compression::default(), true);
        // Setting a dictionary on a fresh zlib stream only fails on allocation failure.
        let _ = zlib.set_dictionary(dictionary());
        HeaderCompressor { zlib }
    }

    /// Compresses one header block, ending it with a sync flush so the peer can decode it
    /// without waiting for more.
    pub fn compress(&mut self, headers: &Headers) -> Result<Vec<u8>, HeaderError> {
        let input = encode_block(headers);
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        let start = self.zlib.total_in();
        loop {
            let consumed = (self.zlib.total_in() - start) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            self.zlib
                .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| HeaderError::Compress(e.to_string()))?;
            let consumed = (self.zlib.total_in() - start) as usize;
            // A sync flush is complete once all input is taken and zlib left room unused.
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The receiving side's zlib context.
pub struct HeaderDecompressor {
    zlib: Decompress,
    limit: usize,
}

impl HeaderDecompressor {
    /// A fresh context; decompressed blocks larger than `limit` bytes are refused.
    pub fn new(limit: usize) -> HeaderDecompressor {
        HeaderDecompressor {
            zlib: Decompress::new(true),
            limit,
        }
    }

    /// Decompresses and parses one header block.
    pub fn decompress(&mut self, block: &[u8]) -> Result<Headers, HeaderError> {
        let mut out: Vec<u8> = Vec::with_capacity(block.len() * 4 + 64);
        let start = self.zlib.total_in();
        loop {
            let consumed = (self.zlib.total_in() - start) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before_out = out.len();
            let status =
                match self
                    .zlib
                    .decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync)
                {
                    Ok(status) => status,
                    Err(e) if e.needs_dictionary().is_some() => {
                        self.zlib
                            .set_dictionary(dictionary())
                            .map_err(|e| HeaderError::Decompress(e.to_string()))?;
                        continue;
                    }
                    Err(e) => return Err(HeaderError::Decompress(e.to_string())),
                };
            if out.len() > self.limit {
                return Err(HeaderError::TooLarge(self.limit));
            }
            let now_consumed = (self.zlib.total_in() - start) as usize;
            if status == Status::StreamEnd {
                return Err(HeaderError::Decompress("peer ended the zlib stream".into()));
            }
            if now_consumed == block.len() && out.len() < out.capacity() {
                break;
            }
            if now_consumed == consumed && out.len() == before_out && status == Status::BufError {
                return Err(HeaderError::Decompress("truncated header block".into()));
            }
        }
        parse_block(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        let dict = dictionary();
        assert_eq!(dict.len(), 1423);
        assert_eq!(&dict[..11], b"\0\0\0\x07options");
        assert!(dict.ends_with(b"utf-,*,enq=0."));
        // Adler-32 of the SPDY/3 dictionary, which zlib writes into the FDICT header.
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in dict {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn compressed_blocks_round_trip_in_one_session() {
        let mut c = HeaderCompressor::new();
        let mut d = HeaderDecompressor::new(1 << 16);
        let blocks = [
            h(&[("streamtype", "error")]),
            h(&[("streamtype", "stdout"), ("port", "8080")]),
            h(&[]),
            h(&[("requestid", "0"), ("x-long", &"v".repeat(5000))]),
            h(&[("streamtype", "error")]),
        ];
        for block in &blocks {
            let wire = c.compress(block).unwrap();
            assert_eq!(&d.decompress(&wire).unwrap(), block);
        }
    }

    #[test]
    fn the_first_block_names_the_dictionary() {
        let mut c = HeaderCompressor::new();
        let wire = c.compress(&h(&[("streamtype", "stdin")])).unwrap();
        // zlib header with FDICT set, then the dictionary's Adler-32.
        assert_eq!(wire[1] & 0x20, 0x20);
        assert_eq!(&wire[2..6], &0xe3c6_a7c2u32.to_be_bytes());
        // A decoder without the dictionary cannot read it.
        let mut plain = Decompress::new(true);
        let mut out = Vec::with_capacity(1024);
        let err = plain
            .decompress_vec(&wire, &mut out, FlushDecompress::Sync)
            .unwrap_err();
        assert!(err.needs_dictionary().is_some());
    }

    #[test]
    fn names_are_lowercased_and_lookup_ignores_case() {
        let mut c = HeaderCompressor::new();
        let mut d = HeaderDecompressor::new(1 << 16);
        let wire = c.compress(&h(&[("streamType", "stdout\0second")])).unwrap();
        let got = d.decompress(&wire).unwrap();
        assert_eq!(got[0].0, "streamtype");
        assert_eq!(get(&got, "StreamType"), Some("stdout"));
        assert_eq!(get(&got, "port"), None);
    }

    #[test]
    fn oversized_and_malformed_blocks_are_refused() {
        let mut c = HeaderCompressor::new();
        let mut d = HeaderDecompressor::new(100);
        let wire = c.compress(&h(&[("x", &"y".repeat(1000))])).unwrap();
        assert!(matches!(
            d.decompress(&wire),
            Err(HeaderError::TooLarge(100))
        ));

        assert!(parse_block(&[0, 0, 0, 1]).is_err());
        assert!(parse_block(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_err());
        assert!(parse_block(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(parse_block(&[0, 0, 0, 0, 1]).is_err());
        let mut fresh = HeaderDecompressor::new(100);
        assert!(fresh.decompress(b"not zlib at all").is_err());
    }
}
