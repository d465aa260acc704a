//! The decompressing thread: sniffs the compression from the first bytes, inflates the
//! stream within the byte budget, hashes the tar stream for the diff ID and hands it in
//! pieces to the unpacking thread.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

/// Size of the pieces of the tar stream passed from the decompressing thread to the
/// unpacking one, and how many may wait between them.
pub(super) const CHUNK: usize = 128 << 10;
pub(super) const CHUNKS_IN_FLIGHT: usize = 16;

/// A piece of the tar stream, or the error that ended it.
pub(super) type Piece = io::Result<Vec<u8>>;

/// Why the decompressing thread stopped early.
pub(super) enum Stopped {
    /// Reading or decompressing the source failed.
    Read(io::Error),
    /// The layer went over its budget of uncompressed bytes (the reason says so).
    OverBudget(String),
    /// The unpacking thread gave up (its error says why).
    Unpacker,
}

/// The decompressing thread: `source` → tar stream pieces on `tx`; returns the diff ID.
pub(super) fn decompress(
    source: impl Read,
    tx: mpsc::SyncSender<Piece>,
    max_bytes: u64,
) -> Result<String, Stopped> {
    let mut raw = BufReader::with_capacity(256 << 10, source);
    let mut hasher = Sha256::new();
    let magic = raw.fill_buf().map_err(Stopped::Read)?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        forward(
            flate2::read::MultiGzDecoder::new(&mut raw),
            &mut hasher,
            &tx,
            max_bytes,
        )?;
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let d = zstd::stream::read::Decoder::with_buffer(&mut raw).map_err(Stopped::Read)?;
        forward(d, &mut hasher, &tx, max_bytes)?;
    } else {
        forward(&mut raw, &mut hasher, &tx, max_bytes)?;
    }
    // Consume whatever follows the compressed stream, so a caller's digest of the blob
    // covers every byte.
    io::copy(&mut raw, &mut io::sink()).map_err(Stopped::Read)?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Hashes everything `tar_stream` yields (the end-of-archive padding belongs to the diff
/// ID too) and passes it on; stops a stream that inflates past `max_bytes`.
pub(super) fn forward(
    mut tar_stream: impl Read,
    hasher: &mut Sha256,
    tx: &mpsc::SyncSender<Piece>,
    max_bytes: u64,
) -> Result<(), Stopped> {
    let mut total: u64 = 0;
    loop {
        let mut buf = vec![0; CHUNK];
        let n = match tar_stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // The unpacker sees a failed read; the caller gets this error.
                let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                return Err(Stopped::Read(e));
            }
        };
        buf.truncate(n);
        total += n as u64;
        if total > max_bytes {
            let _ = tx.send(Err(io::Error::other("over budget")));
            return Err(Stopped::OverBudget(format!(
                "uncompressed size exceeds the layer budget of {max_bytes} bytes (image.max_layer_bytes)"
            )));
        }
        hasher.update(&buf);
        tx.send(Ok(buf)).map_err(|_| Stopped::Unpacker)?;
    }
}

/// The unpacking thread's end of the tar stream.
pub(super) struct PieceReader {
    pub(super) rx: mpsc::Receiver<Piece>,
    pub(super) cur: Vec<u8>,
    pub(super) pos: usize,
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(piece) => {
                    self.cur = piece?;
                    self.pos = 0;
                }
                // The decompressor is done.
                Err(mpsc::RecvError) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
