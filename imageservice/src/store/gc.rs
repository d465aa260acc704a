//! Garbage collection (blobs and snapshots no image or lease references) and the usage
//! figures of the image filesystem.
//!
//! The figures are measured (a walk of the content store, each snapshot's usage record,
//! the trash) only after what they count changed: pulls, GC and emptying the trash count
//! their changes, and between changes the last figures are reused, so `ImageFsInfo`
//! answers from memory. A pull's blobs count from the pull's end.

use std::collections::HashSet;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use super::{FsUsage, GcReport, ImageStore, blocking};
use crate::error::Error;
use crate::records;
use crate::unpack::disk_usage;

impl ImageStore {
    /// Removes blobs and snapshots that no image and no lease references. Waits for
    /// running pulls to finish.
    pub async fn gc(&self) -> Result<GcReport, Error> {
        let report = self.sweep().await?;
        self.empty_trash().await?;
        Ok(report)
    }

    /// Deletes what [`ImageStore::sweep`] moved into the snapshot trash (the slow half of
    /// [`ImageStore::gc`], on a blocking thread).
    pub async fn empty_trash(&self) -> Result<(), Error> {
        let snaps = self.snapshots.clone();
        let emptied = blocking(move || snaps.empty_trash()).await;
        self.changed();
        emptied
    }

    /// The cheap half of [`ImageStore::gc`]: removes the blobs and moves the snapshots that
    /// no image and no lease references into the trash, without emptying it. Start-up
    /// reconciliation runs it before image calls answer, so that what they report (images,
    /// `ImageFsInfo`, `berth debug leaks`) never counts what a crash left behind.
    pub async fn sweep(&self) -> Result<GcReport, Error> {
        let _exclusive = self.gc_lock.write().await;
        self.gc_locked()
    }

    /// GC now if no pull runs, else leave it to the last pull to finish.
    pub(super) async fn gc_if_idle(&self) {
        let report = match self.gc_lock.try_write() {
            Ok(_exclusive) => self.gc_locked(),
            Err(_) => {
                self.gc_pending.store(true, Ordering::Relaxed);
                return;
            }
        };
        let snaps = self.snapshots.clone();
        let emptied = blocking(move || snaps.empty_trash()).await;
        self.changed();
        if let Err(e) = report.and(emptied) {
            tracing::warn!(error = %e, "image garbage collection");
        }
    }

    fn gc_locked(&self) -> Result<GcReport, Error> {
        self.gc_pending.store(false, Ordering::Relaxed);
        let mut blobs: HashSet<String> = HashSet::new();
        let mut snaps: HashSet<String> = HashSet::new();
        for rec in records::all(&self.db)? {
            blobs.extend(rec.blobs().map(String::from));
            snaps.extend(rec.layers.iter().map(|l| l.chain_id.clone()));
        }
        for (_, lease) in records::leases(&self.db)? {
            snaps.extend(lease.chain_ids);
        }
        let mut report = GcReport::default();
        // Counted even when a removal fails half-way: the figures must be measured again.
        let removed = self.remove_unreferenced(&blobs, &snaps, &mut report);
        if report != GcReport::default() {
            self.changed();
        }
        removed?;
        if report != GcReport::default() {
            tracing::info!(
                blobs = report.blobs_removed,
                snapshots = report.snapshots_removed,
                "image gc"
            );
        }
        Ok(report)
    }

    fn remove_unreferenced(
        &self,
        blobs: &HashSet<String>,
        snaps: &HashSet<String>,
        report: &mut GcReport,
    ) -> Result<(), Error> {
        for d in self.content.list()? {
            if !blobs.contains(&d) {
                self.content.remove(&d)?;
                report.blobs_removed += 1;
            }
        }
        for c in self.snapshots.list()? {
            if !snaps.contains(&c) {
                self.snapshots.remove(&c)?;
                report.snapshots_removed += 1;
            }
        }
        Ok(())
    }

    /// Notes a change to what [`ImageStore::fs_usage`] counts.
    pub(super) fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// The figures of [`ImageStore::fs_usage`] if nothing changed since they were measured:
    /// no disk access, for answering on an async thread.
    pub fn cached_fs_usage(&self) -> Option<FsUsage> {
        let now = self.changes.load(Ordering::Acquire);
        let cached = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        cached
            .as_ref()
            .filter(|(at, _)| *at == now)
            .map(|(_, u)| u.clone())
    }

    /// Bytes and inodes used by blobs and snapshots, as `du` counts them: the cached
    /// figures while nothing changed, else measured again (a walk of the content store).
    pub fn fs_usage(&self) -> Result<FsUsage, Error> {
        if let Some(u) = self.cached_fs_usage() {
            return Ok(u);
        }
        // Read before measuring: a change during the walk leaves the figures stale.
        let at = self.changes.load(Ordering::Acquire);
        let u = self.measure_fs_usage()?;
        *self.usage.lock().unwrap_or_else(PoisonError::into_inner) = Some((at, u.clone()));
        Ok(u)
    }

    fn measure_fs_usage(&self) -> Result<FsUsage, Error> {
        let content_dir = self.content.dir();
        let (cb, ci) = disk_usage(content_dir).map_err(Error::io("measure", content_dir))?;
        let snap_dir = self.snapshots.dir();
        let mut used_bytes = cb;
        let mut inodes_used = ci;
        // The snapshots directory itself and its trash, then each snapshot's recorded usage.
        for p in [snap_dir.to_owned(), snap_dir.join(".trash")] {
            let (b, i) = if p == snap_dir {
                std::fs::symlink_metadata(&p)
                    .map(|m| {
                        use std::os::unix::fs::MetadataExt;
                        (m.blocks() * 512, 1)
                    })
                    .map_err(Error::io("measure", &p))?
            } else {
                disk_usage(&p).map_err(Error::io("measure", &p))?
            };
            used_bytes += b;
            inodes_used += i;
        }
        for c in self.snapshots.list()? {
            let u = self.snapshots.usage(&c);
            used_bytes += u.bytes;
            inodes_used += u.inodes;
        }
        Ok(FsUsage {
            mountpoint: self.root.clone(),
            used_bytes,
            inodes_used,
        })
    }
}
