//! The image store: opening and crash recovery, lookups, removal and leases. Pulls
//! (resolve, fetch, verify, unpack, record) are in [`pull`], garbage collection and usage
//! figures in [`gc`].

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use berth_db::Db;
use tokio::sync::{OwnedMutexGuard, RwLock, Semaphore};

use crate::config::RegistryConfig;
use crate::content::ContentStore;
use crate::error::Error;
use crate::manifest::{Platform, host_platform};
use crate::records::{self, Image, ImageRecord, LayerRecord, Lease};
use crate::reference::Reference;
use crate::registry::{RegistryClient, RetryPolicy};
use crate::snapshot::Snapshots;
use crate::unpack::{LayerLimits, UnpackError, unpack_layer_with};

mod gc;
mod pull;

use pull::commit;

/// Usage of the image filesystem, for `ImageFsInfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsUsage {
    /// The directory holding content and snapshots (the store's root).
    pub mountpoint: PathBuf,
    /// Bytes allocated to blobs and snapshots, as `du` counts them.
    pub used_bytes: u64,
    /// Inodes used by blobs and snapshots.
    pub inodes_used: u64,
}

/// What a garbage collection removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs no image references.
    pub blobs_removed: usize,
    /// Snapshots no image or lease references.
    pub snapshots_removed: usize,
}

/// Tuning knobs; `Default` is what the daemon uses.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The platform chosen from multi-arch indexes.
    pub platform: Platform,
    /// Retries of transient registry failures.
    pub retry: RetryPolicy,
    /// Layers downloaded and unpacked at once, across all pulls.
    pub max_parallel_layers: usize,
    /// The budget of each layer: a layer over it is refused.
    pub layer_limits: LayerLimits,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            platform: host_platform(),
            retry: RetryPolicy::default(),
            max_parallel_layers: 6,
            layer_limits: LayerLimits::default(),
        }
    }
}

/// Async mutexes by key: one holder per digest or chain ID at a time.
#[derive(Default)]
struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_owned(), Arc::downgrade(&m));
                    m
                }
            }
        };
        m.lock_owned().await
    }
}

/// The image store. Open one per daemon and share the `Arc`.
pub struct ImageStore {
    root: PathBuf,
    db: Db,
    registry: RegistryClient,
    content: Arc<ContentStore>,
    snapshots: Arc<Snapshots>,
    platform: Platform,
    blob_locks: KeyedLocks,
    snapshot_locks: KeyedLocks,
    /// Pulls hold it shared; GC holds it exclusively, so GC never sees a pull's content
    /// before its record exists.
    gc_lock: RwLock<()>,
    /// Set when a GC was skipped because pulls were running.
    gc_pending: AtomicBool,
    layer_permits: Semaphore,
    layer_limits: LayerLimits,
    /// Counts the changes to what [`ImageStore::fs_usage`] measures (pulls, GC, the trash
    /// emptied): its cached figures are reused while the count stands still.
    changes: Arc<AtomicU64>,
    /// The last figures of [`ImageStore::fs_usage`] and the change count they were taken at.
    usage: Mutex<Option<(u64, FsUsage)>>,
}

fn layer_error(digest: &str, e: UnpackError) -> Error {
    match e {
        UnpackError::Invalid(reason) => Error::InvalidLayer {
            digest: digest.to_owned(),
            reason,
        },
        UnpackError::Io { op, path, source } => Error::Io { op, path, source },
        // Writing the blob beside the unpack can fail under the reader: a full disk is not
        // a bad layer.
        UnpackError::Read(e) if crate::error::is_disk_full(&e) => Error::Io {
            op: "store layer",
            path: PathBuf::from(digest),
            source: e,
        },
        UnpackError::Read(e) => Error::InvalidLayer {
            digest: digest.to_owned(),
            reason: format!("cannot decompress: {e}"),
        },
    }
}

fn join_error(e: tokio::task::JoinError) -> Error {
    Error::Io {
        op: "run blocking task",
        path: PathBuf::new(),
        source: io::Error::other(e.to_string()),
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(join_error)?
}

/// A finished pull: the image, and what this pull fetched for it.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The pulled image.
    pub image: Image,
    /// Layer bytes (compressed, as sent) this pull downloaded from the registry; layers
    /// already stored, or fetched by a concurrent pull of the same content, are not counted.
    pub downloaded: u64,
    /// Layers of the image.
    pub layers: usize,
}

impl ImageStore {
    /// Opens the store under `root` (`root/content`, `root/snapshots`) with its tables in
    /// `db`. Incomplete downloads and snapshots from before a crash are discarded.
    pub fn open(root: &Path, db: Db, config: RegistryConfig) -> Result<Arc<ImageStore>, Error> {
        ImageStore::open_with(root, db, config, StoreOptions::default())
    }

    /// [`ImageStore::open`] with explicit options (tests, benchmarks).
    pub fn open_with(
        root: &Path,
        db: Db,
        config: RegistryConfig,
        options: StoreOptions,
    ) -> Result<Arc<ImageStore>, Error> {
        records::init(&db)?;
        let content = ContentStore::open(&root.join("content"))?;
        let snapshots = Snapshots::open(&root.join("snapshots"))?;
        let store = ImageStore {
            root: root.to_owned(),
            db,
            registry: RegistryClient::new(config, options.retry),
            content: Arc::new(content),
            snapshots: Arc::new(snapshots),
            platform: options.platform,
            blob_locks: KeyedLocks::default(),
            snapshot_locks: KeyedLocks::default(),
            gc_lock: RwLock::new(()),
            gc_pending: AtomicBool::new(false),
            layer_permits: Semaphore::new(options.max_parallel_layers.max(1)),
            layer_limits: options.layer_limits,
            changes: Arc::default(),
            usage: Mutex::new(None),
        };
        // Half-unpacked layers were moved to the trash by `Snapshots::open`; free the
        // space without delaying the daemon's start.
        let snaps = store.snapshots.clone();
        let changes = store.changes.clone();
        std::thread::Builder::new()
            .name("berth-image-trash".into())
            .spawn(move || {
                if let Err(e) = snaps.empty_trash() {
                    tracing::warn!(error = %e, "emptying the snapshot trash");
                }
                changes.fetch_add(1, Ordering::Release);
            })
            .map_err(Error::io("spawn trash thread", root))?;
        Ok(Arc::new(store))
    }

    /// At start-up: after a reboot, discards the snapshots that were never made durable and
    /// unpacks them again from the content store (blobs are fsynced when stored); otherwise
    /// makes pending snapshots durable. Returns how many snapshots were restored.
    pub async fn recover(&self) -> Result<usize, Error> {
        let _exclusive = self.gc_lock.write().await;
        // Beside the recovery: what the daemon's first pull would otherwise wait for.
        let roots = tokio::task::spawn_blocking(crate::registry::prewarm_tls_roots);
        let snaps = self.snapshots.clone();
        let boot_file = self.root.join("snapshots.boot_id");
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .to_owned();
        // A missing file with pending snapshots cannot tell: assume the worst.
        let rebooted = std::fs::read_to_string(&boot_file)
            .map(|old| old.trim() != boot_id)
            .unwrap_or(true);
        let mut restored = 0;
        if rebooted {
            let discarded = blocking({
                let snaps = snaps.clone();
                move || snaps.discard_unsynced()
            })
            .await?;
            if !discarded.is_empty() {
                tracing::warn!(
                    snapshots = discarded.len(),
                    "snapshots not made durable before a reboot: unpacking them again"
                );
            }
            for rec in records::all(&self.db)? {
                for (i, l) in rec.layers.iter().enumerate() {
                    if discarded.contains(&l.chain_id) && !self.snapshots.exists(&l.chain_id) {
                        let lowers: Vec<PathBuf> = rec.layers[..i]
                            .iter()
                            .rev()
                            .map(|l| self.snapshots.fs_path(&l.chain_id))
                            .collect();
                        match self.restore_layer(l, lowers).await {
                            Ok(()) => restored += 1,
                            Err(e) => tracing::warn!(
                                layer = %l.digest, error = %e,
                                "cannot unpack the layer again; pull the image again"
                            ),
                        }
                    }
                }
            }
        }
        blocking(move || {
            snaps.sync()?;
            if rebooted {
                crate::content::write_durably(&boot_file, boot_id.as_bytes())?;
            }
            Ok(())
        })
        .await?;
        self.changed();
        // Awaited so the start-up's memory trim follows it; pulls need not wait for it
        // here (the first one's client waits for the same load if it is still running).
        drop(_exclusive);
        let _ = roots.await;
        Ok(restored)
    }

    /// Unpacks a layer of a known image from its stored blob.
    async fn restore_layer(&self, l: &LayerRecord, lowers: Vec<PathBuf>) -> Result<(), Error> {
        if !self.content.has(&l.digest) {
            return Err(Error::Db(format!(
                "blob {} is not in the content store",
                l.digest
            )));
        }
        let tmp = self.snapshots.prepare(&l.chain_id)?;
        let (path, fs_dir, digest) = (self.content.path(&l.digest), tmp.fs(), l.digest.clone());
        let limits = self.layer_limits;
        let summary = blocking(move || {
            let f = File::open(&path).map_err(Error::io("open", &path))?;
            let summary =
                unpack_layer_with(f, &fs_dir, &limits).map_err(|e| layer_error(&digest, e))?;
            crate::unpack::link_from_lowers(&fs_dir, &lowers, &summary.lower_links)
                .map_err(|e| layer_error(&digest, e))?;
            Ok(summary)
        })
        .await?;
        if summary.diff_id != l.diff_id {
            return Err(Error::InvalidLayer {
                digest: l.digest.clone(),
                reason: format!(
                    "stored blob hashes to {}, not {}",
                    summary.diff_id, l.diff_id
                ),
            });
        }
        commit(None, tmp).await
    }

    /// Every image.
    pub fn list(&self) -> Result<Vec<Image>, Error> {
        Ok(records::all(&self.db)?
            .into_iter()
            .map(|r| r.image)
            .collect())
    }

    /// The image `reference_or_id` names: a full ID (with or without `sha256:`), a tag,
    /// a digest reference, or a unique ID prefix. `None` when nothing matches (also for
    /// text that is no reference at all, as containerd answers).
    pub fn get(&self, reference_or_id: &str) -> Result<Option<Image>, Error> {
        Ok(self.resolve(reference_or_id)?.map(|(r, _)| r.image))
    }

    /// The record and, when matched by a tag, that tag.
    fn resolve(&self, s: &str) -> Result<Option<(ImageRecord, Option<String>)>, Error> {
        let s = s.trim();
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        let is_hex = !hex.is_empty()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if is_hex && hex.len() == 64 {
            return Ok(records::get(&self.db, &format!("sha256:{hex}"))?.map(|r| (r, None)));
        }
        if let Ok(r) = Reference::parse(s) {
            let name = r.to_string();
            if let Some(id) = records::lookup_name(&self.db, &name)?
                && let Some(rec) = records::get(&self.db, &id)?
            {
                return Ok(Some((rec, r.tag().map(|_| name))));
            }
        }
        if is_hex {
            let mut found: Vec<ImageRecord> = records::all(&self.db)?
                .into_iter()
                .filter(|r| r.image.id["sha256:".len()..].starts_with(hex))
                .collect();
            return match found.len() {
                0 => Ok(None),
                1 => Ok(found.pop().map(|r| (r, None))),
                _ => Err(Error::InvalidReference {
                    reference: s.to_owned(),
                    reason: "ambiguous image id prefix".into(),
                }),
            };
        }
        Ok(None)
    }

    fn resolve_required(&self, reference_or_id: &str) -> Result<ImageRecord, Error> {
        self.resolve(reference_or_id)?
            .map(|(r, _)| r)
            .ok_or_else(|| Error::ImageNotFound(reference_or_id.to_owned()))
    }

    /// Removes an image: by tag when it has other tags only that tag goes; otherwise the
    /// image and all its names, then its blobs and layers unless other images or leases
    /// use them. Unknown images are not an error.
    pub async fn remove(&self, reference_or_id: &str) -> Result<(), Error> {
        let Some((rec, tag)) = self.resolve(reference_or_id)? else {
            return Ok(());
        };
        let untag = tag.filter(|_| rec.image.repo_tags.len() > 1);
        let (db, id) = (self.db.clone(), rec.image.id.clone());
        let untag2 = untag.clone();
        blocking(move || records::remove(&db, &id, untag2.as_deref())).await?;
        if untag.is_none() {
            tracing::info!(id = %rec.image.id, "image removed");
            self.gc_pending.store(true, Ordering::Relaxed);
            self.gc_if_idle().await;
        }
        Ok(())
    }

    /// Sets the pinned flag of an image.
    pub fn set_pinned(&self, reference_or_id: &str, pinned: bool) -> Result<(), Error> {
        let rec = self.resolve_required(reference_or_id)?;
        records::set_pinned(&self.db, &rec.image.id, pinned)
    }

    /// The image's OCI configuration (entrypoint, env, user, ...).
    pub fn image_config(
        &self,
        reference_or_id: &str,
    ) -> Result<oci_spec::image::ImageConfiguration, Error> {
        let rec = self.resolve_required(reference_or_id)?;
        let body = self.content.read(&rec.image.id)?;
        serde_json::from_slice(&body).map_err(|e| Error::InvalidImage {
            reference: rec.image.id.clone(),
            reason: format!("config: {e}"),
        })
    }

    /// The image's snapshot directories, topmost first, as overlayfs `lowerdir=` wants.
    pub fn rootfs_layers(&self, reference_or_id: &str) -> Result<Vec<PathBuf>, Error> {
        let rec = self.resolve_required(reference_or_id)?;
        let mut out = Vec::with_capacity(rec.layers.len());
        for l in rec.layers.iter().rev() {
            let p = self.snapshots.fs_path(&l.chain_id);
            if !p.is_dir() {
                return Err(Error::InvalidImage {
                    reference: rec.image.id.clone(),
                    reason: format!(
                        "snapshot of layer {} is missing; pull the image again",
                        l.digest
                    ),
                });
            }
            out.push(p);
        }
        Ok(out)
    }

    /// Keeps the snapshots of `image_id` from GC while `holder` (a container) uses them,
    /// even if the image is removed. Call before mounting; replaces `holder`'s lease.
    pub fn add_lease(&self, holder: &str, image_id: &str) -> Result<(), Error> {
        let rec = self.resolve_required(image_id)?;
        let lease = Lease {
            image_id: rec.image.id.clone(),
            chain_ids: rec.layers.iter().map(|l| l.chain_id.clone()).collect(),
        };
        records::put_lease(&self.db, holder, &lease)
    }

    /// Ends `holder`'s lease (unknown holders are fine). The snapshots go at the next GC.
    pub fn remove_lease(&self, holder: &str) -> Result<(), Error> {
        records::remove_lease(&self.db, holder)?;
        self.gc_pending.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The end of `holder`'s lease as a write to commit with another crate's (RemoveContainer
    /// hands it to the runtime, whose removal intent it joins: one `fsync` for both).
    pub fn lease_release(&self, holder: &str) -> berth_db::Write {
        self.gc_pending.store(true, Ordering::Relaxed);
        records::lease_removal(holder)
    }

    /// Every lease as `(holder, image ID)`, for reconciliation at start.
    pub fn leases(&self) -> Result<Vec<(String, String)>, Error> {
        Ok(records::leases(&self.db)?
            .into_iter()
            .map(|(h, l)| (h, l.image_id))
            .collect())
    }
}
