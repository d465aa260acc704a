//! Garbage collection (blobs and snapshots no image or lease references) and the usage
//! figures of the image filesystem.

use std::collections::HashSet;
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
        blocking(move || snaps.empty_trash()).await
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
        if report != GcReport::default() {
            tracing::info!(
                blobs = report.blobs_removed,
                snapshots = report.snapshots_removed,
                "image gc"
            );
        }
        Ok(report)
    }

    /// Bytes and inodes used by blobs and snapshots, as `du` counts them.
    pub fn fs_usage(&self) -> Result<FsUsage, Error> {
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
