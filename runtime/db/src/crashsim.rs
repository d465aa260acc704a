//! Power-loss simulation for tests: a redb storage backend on a real file that records
//! every write and every `fsync` (`sync_data`), and rebuilds what a disk could hold after a
//! power loss at any moment: everything written before the last completed sync, plus any
//! subset of the 4 KiB sectors written since (a disk may have written some, in any order).
//! This kernel has no device-mapper (`dm-flakey`, `dm-log-writes`), so the test replays
//! the store's own writes instead of a block device's.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use redb::StorageBackend;

const SECTOR: u64 = 4096;

/// One recorded operation.
#[derive(Debug, Clone)]
enum Op {
    /// At most one sector of data.
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    SetLen(u64),
    Sync,
}

/// The log of a store's writes, shared by its backend and the test.
#[derive(Debug)]
pub struct Recorder {
    file: File,
    log: Mutex<Vec<Op>>,
}

impl Recorder {
    /// Records a store kept in `path` (created or truncated).
    pub fn create(path: &std::path::Path) -> io::Result<Arc<Recorder>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Arc::new(Recorder {
            file,
            log: Mutex::new(Vec::new()),
        }))
    }

    /// The backend to open the database on.
    pub fn backend(self: &Arc<Self>) -> RecordingBackend {
        RecordingBackend(self.clone())
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The position in the log now: a power loss "at" it loses nothing synced before it.
    pub fn mark(&self) -> usize {
        self.log().len()
    }

    /// Positions just before each sync, and the end of the log: the moments at which a
    /// power loss leaves the most unsynced writes in doubt.
    pub fn crash_points(&self) -> Vec<usize> {
        let log = self.log();
        let mut points: Vec<usize> = log
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op, Op::Sync))
            .map(|(i, _)| i)
            .collect();
        points.push(log.len());
        points
    }

    /// How many operations after the last sync before `at` are in doubt at `at`.
    pub fn in_doubt(&self, at: usize) -> usize {
        let log = self.log();
        let synced = last_sync(&log[..at]);
        at - synced
    }

    /// The bytes a power loss at `at` can leave: every operation up to the last sync before
    /// `at`, then those of the `in_doubt(at)` later ones that `keep(i)` (i from 0) selects.
    pub fn image_at(&self, at: usize, mut keep: impl FnMut(usize) -> bool) -> Vec<u8> {
        let log = self.log();
        let synced = last_sync(&log[..at]);
        let mut image = Vec::new();
        for (i, op) in log[..at].iter().enumerate() {
            if i >= synced && !keep(i - synced) {
                continue;
            }
            match op {
                Op::Write { offset, data } => {
                    let end = *offset as usize + data.len();
                    if image.len() < end {
                        image.resize(end, 0);
                    }
                    image[*offset as usize..end].copy_from_slice(data);
                }
                Op::SetLen(len) => image.resize(*len as usize, 0),
                Op::Sync => {}
            }
        }
        image
    }
}

impl Recorder {
    /// Calls `f(at, kept, image)` for every crash point `at` with the three kinds of
    /// image a power loss there can leave: none of the writes in doubt kept, all of them,
    /// and a pseudo-random subset (`seed` makes it repeatable).
    pub fn for_each_crash(&self, mut seed: u64, mut f: impl FnMut(usize, &str, Vec<u8>)) {
        for at in self.crash_points() {
            f(at, "none", self.image_at(at, |_| false));
            f(at, "all", self.image_at(at, |_| true));
            let some = self.image_at(at, |_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed & 1 == 0
            });
            f(at, "some", some);
        }
    }
}

/// The index just after the last sync in `log` (0 without one).
fn last_sync(log: &[Op]) -> usize {
    log.iter()
        .rposition(|op| matches!(op, Op::Sync))
        .map_or(0, |i| i + 1)
}

/// The [`StorageBackend`] of a [`Recorder`].
#[derive(Debug)]
pub struct RecordingBackend(Arc<Recorder>);

impl StorageBackend for RecordingBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.file.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.file.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.file.set_len(len)?;
        self.0.log().push(Op::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.file.sync_data()?;
        self.0.log().push(Op::Sync);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.file.write_all_at(data, offset)?;
        let mut log = self.0.log();
        let mut at = 0usize;
        while at < data.len() {
            // Split at sector boundaries: each sector may or may not reach the disk.
            let pos = offset + at as u64;
            let room = (SECTOR - pos % SECTOR) as usize;
            let n = room.min(data.len() - at);
            log.push(Op::Write {
                offset: pos,
                data: data[at..at + n].to_vec(),
            });
            at += n;
        }
        Ok(())
    }
}

/// An in-memory backend holding one rebuilt image, to open it as redb would after a reboot.
#[derive(Debug)]
pub struct ImageBackend(Mutex<Vec<u8>>);

impl ImageBackend {
    /// A backend whose storage starts as `image`.
    pub fn new(image: Vec<u8>) -> ImageBackend {
        ImageBackend(Mutex::new(image))
    }

    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StorageBackend for ImageBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes().len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let b = self.bytes();
        let start = offset as usize;
        let end = start + out.len();
        if end > b.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        out.copy_from_slice(&b[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.bytes().resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut b = self.bytes();
        let end = offset as usize + data.len();
        if b.len() < end {
            b.resize(end, 0);
        }
        b[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, TableDefinition};

    use super::*;
    use crate::Db;

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    #[derive(Debug)]
    struct E;
    impl From<crate::Error> for E {
        fn from(_: crate::Error) -> E {
            E
        }
    }

    /// The loop's acknowledged writes survive every power loss the log allows.
    #[test]
    fn every_acknowledged_write_survives_a_power_loss_at_any_sync() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::create(&dir.path().join("db")).unwrap();
        let db = redb::Builder::new()
            .create_with_backend(rec.backend())
            .unwrap();
        let db = Db::new(Arc::new(db)).unwrap();
        let mut acked = Vec::new();
        for k in 0..40u64 {
            let pending: Vec<_> = (0..3)
                .map(|j| {
                    let key = k * 3 + j;
                    db.write(move |tx: &redb::WriteTransaction| {
                        tx.open_table(T).unwrap().insert(key, key + 1).unwrap();
                        Ok::<(), E>(())
                    })
                })
                .collect();
            for (j, p) in pending.into_iter().enumerate() {
                p.wait().unwrap();
                acked.push((rec.mark(), k * 3 + j as u64));
            }
        }
        rec.for_each_crash(0x1234_5678, |at, kept, image| {
            if !acked.iter().any(|&(when, _)| when <= at) {
                // Nothing was acknowledged yet: the file may not even be a database.
                return;
            }
            let reopened = redb::Builder::new()
                .create_with_backend(ImageBackend::new(image))
                .unwrap();
            let tx = reopened.begin_read().unwrap();
            for &(when, key) in &acked {
                if when > at {
                    continue;
                }
                let t = tx.open_table(T).unwrap();
                assert_eq!(
                    t.get(key).unwrap().map(|v| v.value()),
                    Some(key + 1),
                    "crash at {at} ({kept} of the writes in doubt kept) lost acknowledged key {key}"
                );
            }
        });
    }
}
