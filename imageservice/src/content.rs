//! The content store: blobs by digest under `content/blobs/sha256/<hex>`, written to a
//! temporary file, verified, fsynced and renamed, so no reader sees a partial blob.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::error::Error;

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A name unique within this process and across restarts (pid + sequence + time).
pub(crate) fn unique_suffix() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{}-{}-{t}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The hex part of a `sha256:` digest (validated by the caller).
pub(crate) fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Blobs by digest.
#[derive(Debug)]
pub(crate) struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens `dir` (`root/content`), creating it, and drops leftovers of interrupted writes.
    pub(crate) fn open(dir: &Path) -> Result<ContentStore, Error> {
        let blobs = dir.join("blobs").join("sha256");
        let ingest = dir.join("ingest");
        fs::create_dir_all(&blobs).map_err(Error::io("create", &blobs))?;
        // A partial download from before a crash is never resumed: remove them all.
        if ingest.exists() {
            fs::remove_dir_all(&ingest).map_err(Error::io("remove", &ingest))?;
        }
        fs::create_dir_all(&ingest).map_err(Error::io("create", &ingest))?;
        Ok(ContentStore { blobs, ingest })
    }

    /// Where blob `digest` lives once complete.
    pub(crate) fn path(&self, digest: &str) -> PathBuf {
        self.blobs.join(hex_of(digest))
    }

    /// Whether blob `digest` is complete in the store.
    pub(crate) fn has(&self, digest: &str) -> bool {
        self.path(digest).is_file()
    }

    /// Reads a complete blob.
    pub(crate) fn read(&self, digest: &str) -> Result<Vec<u8>, Error> {
        let p = self.path(digest);
        fs::read(&p).map_err(Error::io("read", p))
    }

    /// Starts writing blob `digest` of `size` bytes.
    pub(crate) fn writer(&self, digest: &str, size: u64) -> Result<BlobWriter, Error> {
        let tmp = self
            .ingest
            .join(format!("{}-{}", hex_of(digest), unique_suffix()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(Error::io("create", &tmp))?;
        Ok(BlobWriter {
            file: Some(file),
            tmp,
            dest: self.path(digest),
            digest: digest.to_owned(),
            size,
            written: 0,
            hasher: Sha256::new(),
            synced: false,
        })
    }

    /// Writes a whole blob already in memory (verified again here).
    pub(crate) fn write_all(&self, digest: &str, data: &[u8]) -> Result<(), Error> {
        if self.has(digest) {
            return Ok(());
        }
        let mut w = self.writer(digest, data.len() as u64)?;
        w.write_chunk(data)?;
        w.commit()
    }

    /// Digests of every complete blob.
    pub(crate) fn list(&self) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.blobs).map_err(Error::io("list", &self.blobs))? {
            let e = e.map_err(Error::io("list", &self.blobs))?;
            if let Some(name) = e.file_name().to_str() {
                out.push(format!("sha256:{name}"));
            }
        }
        Ok(out)
    }

    /// Removes blob `digest` (absent is fine).
    pub(crate) fn remove(&self, digest: &str) -> Result<(), Error> {
        let p = self.path(digest);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", p)(e)),
            _ => Ok(()),
        }
    }

    /// The directory counted as content by `fs_usage`.
    pub(crate) fn dir(&self) -> &Path {
        self.blobs
            .parent()
            .and_then(Path::parent)
            .unwrap_or(&self.blobs)
    }
}

/// A blob being written; removed on drop unless committed.
pub(crate) struct BlobWriter {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    digest: String,
    size: u64,
    written: u64,
    hasher: Sha256,
    /// Verified and fsynced: nothing was written since.
    synced: bool,
}

impl BlobWriter {
    /// Appends bytes, refusing more than the descriptor's size.
    pub(crate) fn write_chunk(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.written + data.len() as u64 > self.size {
            return Err(self.mismatch("more bytes than the descriptor's size".into()));
        }
        self.hasher.update(data);
        self.written += data.len() as u64;
        self.synced = false;
        let f = self.file.as_mut().expect("file present until commit");
        f.write_all(data).map_err(Error::io("write", &self.tmp))
    }

    fn mismatch(&self, actual: String) -> Error {
        Error::DigestMismatch {
            expected: format!("{} ({} bytes)", self.digest, self.size),
            actual,
        }
    }

    /// Checks size and digest and fsyncs; the blob is not visible yet. Once done, a
    /// second call (from [`BlobWriter::commit`]) costs nothing.
    pub(crate) fn finish(&mut self) -> Result<(), Error> {
        if self.synced {
            return Ok(());
        }
        if self.written != self.size {
            return Err(self.mismatch(format!("{} bytes", self.written)));
        }
        let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        if actual != self.digest {
            return Err(self.mismatch(actual));
        }
        let f = self.file.as_mut().expect("file present until commit");
        f.sync_all().map_err(Error::io("fsync", &self.tmp))?;
        self.synced = true;
        Ok(())
    }

    /// Verifies, then makes the blob visible under its digest (rename, then fsync of
    /// the directory).
    pub(crate) fn commit(mut self) -> Result<(), Error> {
        self.finish()?;
        self.file = None;
        fs::rename(&self.tmp, &self.dest).map_err(Error::io("rename", &self.dest))?;
        sync_dir(self.dest.parent().unwrap_or(Path::new("/")))?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// fsyncs a directory so a rename in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync", dir))
}

/// Writes `data` to `path` through a temporary file, fsynced and renamed into place.
pub(crate) fn write_durably(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", unique_suffix()));
    let result = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            f.sync_all()
        })
        .map_err(Error::io("write", &tmp))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(Error::io("rename", path)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_dir(path.parent().unwrap_or(Path::new("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A content store in a fresh temporary directory.
    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        (dir, cs)
    }

    /// Blobs being written in the store under `dir`.
    fn ingesting(dir: &tempfile::TempDir) -> usize {
        fs::read_dir(dir.path().join("ingest")).unwrap().count()
    }

    fn digest(d: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(d)))
    }

    #[test]
    fn commit_verifies_and_renames() {
        let (dir, cs) = store();
        let d = digest(b"hello");
        let mut w = cs.writer(&d, 5).unwrap();
        w.write_chunk(b"hel").unwrap();
        assert!(!cs.has(&d), "partial blob invisible");
        w.write_chunk(b"lo").unwrap();
        w.commit().unwrap();
        assert_eq!(cs.read(&d).unwrap(), b"hello");
        assert_eq!(cs.list().unwrap(), vec![d.clone()]);
        assert_eq!(ingesting(&dir), 0);
        cs.remove(&d).unwrap();
        assert!(!cs.has(&d));
    }

    #[test]
    fn bad_content_leaves_nothing() {
        let (dir, cs) = store();
        let d = digest(b"hello");
        let mut w = cs.writer(&d, 5).unwrap();
        w.write_chunk(b"jello").unwrap();
        assert!(matches!(w.commit(), Err(Error::DigestMismatch { .. })));
        let mut w = cs.writer(&d, 5).unwrap();
        assert!(w.write_chunk(b"hello!").is_err());
        drop(w);
        let w = cs.writer(&d, 5).unwrap();
        assert!(w.commit().is_err(), "short blob");
        assert!(!cs.has(&d));
        assert_eq!(ingesting(&dir), 0);
    }

    #[test]
    fn open_drops_interrupted_writes() {
        let (dir, cs) = store();
        let w = cs.writer(&digest(b"x"), 1).unwrap();
        std::mem::forget(w); // a crash mid-write
        assert_eq!(ingesting(&dir), 1);
        ContentStore::open(dir.path()).unwrap();
        assert_eq!(ingesting(&dir), 0);
    }
}
