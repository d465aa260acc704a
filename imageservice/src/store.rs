//! The image store: pulls (resolve, fetch, verify, unpack, record), lookups, removal,
//! leases, garbage collection and usage figures.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use berth_db::Db;
use bytes::{Buf, Bytes};
use tokio::sync::{OwnedMutexGuard, RwLock, Semaphore, mpsc, watch};

use crate::config::RegistryConfig;
use crate::content::{BlobWriter, ContentStore};
use crate::error::Error;
use crate::manifest::{
    self, Descriptor, Manifest, ManifestDoc, Platform, chain_ids, parse_config, parse_manifest,
    select_platform,
};
use crate::records::{self, Image, ImageRecord, LayerRecord, Lease};
use crate::reference::Reference;
use crate::registry::{Credentials, FetchedManifest, RegistryClient, RetryPolicy, Source, verify};
use crate::snapshot::{Snapshots, TempSnapshot};
use crate::unpack::{LayerLimits, UnpackError, UnpackSummary, disk_usage, unpack_layer_with};

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
            platform: Platform::host(),
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
}

/// Messages from the downloader to the unpacking thread.
enum Chunk {
    Data(Bytes),
    End,
    Failed,
}

/// The unpacking thread's view of a download: every byte it reads is also written to
/// the blob's temporary file (which hashes it).
struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    cur: Bytes,
    writer: BlobWriter,
    eof: bool,
    write_error: Option<Error>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.cur.is_empty() {
                let n = buf.len().min(self.cur.len());
                buf[..n].copy_from_slice(&self.cur[..n]);
                self.cur.advance(n);
                return Ok(n);
            }
            if self.eof {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(b)) => {
                    if let Err(e) = self.writer.write_chunk(&b) {
                        self.write_error = Some(e);
                        return Err(io::Error::other("storing the blob failed"));
                    }
                    self.cur = b;
                }
                Some(Chunk::End) => self.eof = true,
                Some(Chunk::Failed) | None => return Err(io::Error::other("download interrupted")),
            }
        }
    }
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

/// How one layer of a pull went.
#[derive(Clone, Copy, Debug, Default)]
struct LayerOutcome {
    downloaded: u64,
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
        };
        // Half-unpacked layers were moved to the trash by `Snapshots::open`; free the
        // space without delaying the daemon's start.
        let snaps = store.snapshots.clone();
        std::thread::Builder::new()
            .name("berth-image-trash".into())
            .spawn(move || {
                if let Err(e) = snaps.empty_trash() {
                    tracing::warn!(error = %e, "emptying the snapshot trash");
                }
            })
            .map_err(Error::io("spawn trash thread", root))?;
        Ok(Arc::new(store))
    }

    /// At start-up: after a reboot, discards the snapshots that were never made durable and
    /// unpacks them again from the content store (blobs are fsynced when stored); otherwise
    /// makes pending snapshots durable. Returns how many snapshots were restored.
    pub async fn recover(&self) -> Result<usize, Error> {
        let _exclusive = self.gc_lock.write().await;
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

    /// Pulls `reference` (tag or digest; normalised like containerd) and returns the image.
    /// Concurrent pulls share downloads: each blob is fetched and each layer unpacked once.
    pub async fn pull(&self, reference: &str, creds: Option<Credentials>) -> Result<Image, Error> {
        self.pull_measured(reference, creds).await.map(|p| p.image)
    }

    /// [`ImageStore::pull`], also telling how much this pull downloaded.
    pub async fn pull_measured(
        &self,
        reference: &str,
        creds: Option<Credentials>,
    ) -> Result<Pulled, Error> {
        let r = Reference::parse(reference)?;
        let started = Instant::now();
        let result = {
            let _shared = self.gc_lock.read().await;
            self.pull_locked(&r, creds).await
        };
        match &result {
            Ok((image, downloaded, layers)) => tracing::info!(
                image = %r, id = %image.id, layers, bytes = downloaded,
                ms = started.elapsed().as_millis() as u64, "image pulled"
            ),
            Err(e) => tracing::warn!(image = %r, error = %e, "image pull failed"),
        }
        if result.is_ok() {
            // Durability of the new snapshots, off the pull's path.
            let snaps = self.snapshots.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = snaps.sync() {
                    tracing::warn!(error = %e, "making snapshots durable");
                }
            });
        }
        if result.is_err() || self.gc_pending.load(Ordering::Relaxed) {
            // Drop what the failed pull left (blobs and layers of no image), unless
            // other pulls are running; then a later pull or GC does it.
            self.gc_if_idle().await;
        }
        result.map(|(image, downloaded, layers)| Pulled {
            image,
            downloaded,
            layers,
        })
    }

    async fn pull_locked(
        &self,
        r: &Reference,
        creds: Option<Credentials>,
    ) -> Result<(Image, u64, usize), Error> {
        let mut src = self.registry.source(r, creds)?;
        let invalid = |reason: String| Error::InvalidImage {
            reference: r.to_string(),
            reason,
        };

        let top = match r.digest() {
            // Content addressed and already here: no need to ask the registry.
            Some(d) if self.content.has(d) => FetchedManifest {
                body: self.read_blob(d).await?,
                digest: d.to_owned(),
                content_type: None,
            },
            _ => self.registry.fetch_manifest(&mut src, r.object()).await?,
        };
        let top_doc = parse_manifest(top.content_type.as_deref(), &top.body).map_err(invalid)?;
        let (index_digest, manifest, manifest_desc_size, manifest_digest) = match top_doc {
            ManifestDoc::Manifest(m) => (None, m, top.body.len() as u64, top.digest.clone()),
            ManifestDoc::Index(index) => {
                let desc = select_platform(&index, &self.platform).map_err(|available| {
                    Error::NoMatchingPlatform {
                        reference: r.to_string(),
                        platform: self.platform.to_string(),
                        available,
                    }
                })?;
                let body = self.small_blob(&mut src, desc, true).await?;
                let media = (!desc.media_type.is_empty()).then_some(desc.media_type.as_str());
                match parse_manifest(media, &body).map_err(invalid)? {
                    ManifestDoc::Manifest(m) => {
                        (Some(top.digest.clone()), m, desc.size, desc.digest.clone())
                    }
                    ManifestDoc::Index(_) => {
                        return Err(invalid("an index inside an index".into()));
                    }
                }
            }
        };
        let config = self.small_blob(&mut src, &manifest.config, false).await?;
        let summary = parse_config(&config, manifest.layers.len()).map_err(invalid)?;
        let chain = chain_ids(&summary.rootfs.diff_ids);

        // Layers in parallel; the first failure stops the others, and every layer's
        // blocking work is awaited so a failed pull returns with its leftovers removed.
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let results = futures::future::join_all(
            manifest
                .layers
                .iter()
                .zip(&summary.rootfs.diff_ids)
                .zip(&chain)
                .enumerate()
                .map(|(i, ((layer, diff_id), chain_id))| {
                    let (cancel_tx, cancel, src) = (&cancel_tx, cancel_rx.clone(), &src);
                    let lowers: Vec<String> = chain[..i].iter().rev().cloned().collect();
                    async move {
                        let r = self
                            .ensure_layer(src, layer, diff_id, chain_id, &lowers, cancel)
                            .await;
                        if r.is_err() {
                            cancel_tx.send_replace(true);
                        }
                        r
                    }
                }),
        )
        .await;
        let mut outcomes = Vec::with_capacity(results.len());
        let mut first_error = None;
        for r in results {
            match r {
                Ok(o) => outcomes.push(o),
                Err(Error::Cancelled) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let downloaded: u64 = outcomes.iter().map(|o| o.downloaded).sum();

        // The top document: the index, or the manifest itself.
        if !self.content.has(&top.digest) {
            let (content, digest, body) = (self.content.clone(), top.digest.clone(), top.body);
            blocking(move || content.write_all(&digest, &body)).await?;
        }

        let record = self.record(
            &manifest,
            &summary,
            &chain,
            index_digest,
            manifest_digest,
            manifest_desc_size,
        );
        let mut names = vec![r.with_digest(&top.digest).to_string()];
        if r.tag().is_some() {
            names.push(r.to_string());
        }
        let db = self.db.clone();
        let image = blocking(move || records::commit_pull(&db, record, &names)).await?;
        Ok((image, downloaded, manifest.layers.len()))
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        manifest: &Manifest,
        summary: &manifest::ConfigSummary,
        chain: &[String],
        index_digest: Option<String>,
        manifest_digest: String,
        manifest_size: u64,
    ) -> ImageRecord {
        let layers: Vec<LayerRecord> = manifest
            .layers
            .iter()
            .zip(&summary.rootfs.diff_ids)
            .zip(chain)
            .map(|((l, diff_id), chain_id)| LayerRecord {
                digest: l.digest.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
                diff_id: diff_id.clone(),
                chain_id: chain_id.clone(),
            })
            .collect();
        let size =
            manifest_size + manifest.config.size + layers.iter().map(|l| l.size).sum::<u64>();
        ImageRecord {
            image: Image {
                id: manifest.config.digest.clone(),
                repo_tags: Vec::new(),
                repo_digests: Vec::new(),
                size,
                user: summary
                    .config
                    .as_ref()
                    .and_then(|c| c.user.clone())
                    .unwrap_or_default(),
                pinned: false,
            },
            index_digest,
            manifest_digest,
            layers,
        }
    }

    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, Error> {
        let (content, digest) = (self.content.clone(), digest.to_owned());
        blocking(move || content.read(&digest)).await
    }

    /// A manifest or config by digest: from the store, or fetched once however many
    /// pulls ask, verified and stored.
    async fn small_blob(
        &self,
        src: &mut Source,
        desc: &Descriptor,
        is_manifest: bool,
    ) -> Result<Vec<u8>, Error> {
        let _one = self.blob_locks.lock(&desc.digest).await;
        if self.content.has(&desc.digest) {
            return self.read_blob(&desc.digest).await;
        }
        let body = if is_manifest {
            let m = self.registry.fetch_manifest(src, &desc.digest).await?;
            verify(&desc.digest, desc.size, &m.body)?;
            m.body
        } else {
            self.registry
                .fetch_blob(src, &desc.digest, desc.size)
                .await?
        };
        let (content, digest, data) = (self.content.clone(), desc.digest.clone(), body.clone());
        blocking(move || content.write_all(&digest, &data)).await?;
        Ok(body)
    }

    /// Makes sure the snapshot `chain_id` exists: unpacked from the stored blob, or
    /// streamed from the registry (download, digest, decompress and unpack at once).
    async fn ensure_layer(
        &self,
        src: &Source,
        layer: &Descriptor,
        diff_id: &str,
        chain_id: &str,
        lowers: &[String],
        mut cancel: watch::Receiver<bool>,
    ) -> Result<LayerOutcome, Error> {
        let _snapshot = or_cancel(self.snapshot_locks.lock(chain_id), &mut cancel).await?;
        if self.snapshots.exists(chain_id) {
            tracing::debug!(layer = %layer.digest, "layer already unpacked");
            return Ok(LayerOutcome::default());
        }
        let _permit = or_cancel(self.layer_permits.acquire(), &mut cancel)
            .await?
            .map_err(|_| Error::Db("store closed".into()))?;
        let blob_lock = or_cancel(self.blob_locks.lock(&layer.digest), &mut cancel).await?;
        let started = Instant::now();
        let digest = layer.digest.clone();
        let tmp = self.snapshots.prepare(chain_id)?;
        let fs_dir = tmp.fs();
        let limits = self.layer_limits;

        let mut blob_lock = Some(blob_lock);
        let (summary, writer, downloaded) = if self.content.has(&layer.digest) {
            blob_lock = None;
            let path = self.content.path(&digest);
            let d = digest.clone();
            let summary = blocking(move || {
                let f = File::open(&path).map_err(Error::io("open", &path))?;
                unpack_layer_with(f, &fs_dir, &limits).map_err(|e| layer_error(&d, e))
            })
            .await?;
            (summary, None, 0)
        } else {
            let writer = self.content.writer(&layer.digest, layer.size)?;
            let (tx, rx) = mpsc::channel(64);
            let d = digest.clone();
            let unpacker = tokio::task::spawn_blocking(
                move || -> Result<(UnpackSummary, BlobWriter), Error> {
                    let mut reader = ChannelReader {
                        rx,
                        cur: Bytes::new(),
                        writer,
                        eof: false,
                        write_error: None,
                    };
                    let result = unpack_layer_with(&mut reader, &fs_dir, &limits);
                    if let Some(e) = reader.write_error.take() {
                        return Err(e);
                    }
                    let summary = result.map_err(|e| layer_error(&d, e))?;
                    let mut writer = reader.writer;
                    writer.finish()?;
                    Ok((summary, writer))
                },
            );
            let download = self.download(src, layer, tx, cancel.clone()).await;
            let unpacked = unpacker.await.map_err(join_error)?;
            // A failed download explains a failed unpack, not the reverse.
            download?;
            let (summary, writer) = unpacked?;
            (summary, Some(writer), layer.size)
        };
        if summary.diff_id != diff_id {
            return Err(Error::InvalidLayer {
                digest,
                reason: format!(
                    "uncompressed content hashes to {}, the config says {diff_id}",
                    summary.diff_id
                ),
            });
        }
        if !summary.lower_links.is_empty() {
            // Hard links into lower layers need those unpacked: wait for them without
            // holding a permit they may need.
            drop(_permit);
            self.link_from_lowers(&digest, &tmp.fs(), lowers, summary.lower_links, &mut cancel)
                .await?;
        }
        commit(writer, tmp).await?;
        // Only now may a waiter for the same blob look for it in the store.
        drop(blob_lock);
        tracing::debug!(
            layer = %layer.digest, bytes = downloaded, entries = summary.entries,
            ms = started.elapsed().as_millis() as u64, "layer unpacked"
        );
        Ok(LayerOutcome { downloaded })
    }

    /// Makes a layer's hard links to files of its lower layers (`lowers`, chain IDs
    /// topmost first), once those are unpacked.
    async fn link_from_lowers(
        &self,
        digest: &str,
        fs_dir: &Path,
        lowers: &[String],
        links: Vec<(PathBuf, PathBuf)>,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let mut dirs = Vec::with_capacity(lowers.len());
        for c in lowers {
            // The lower layer's pull holds this lock until its snapshot is committed.
            drop(or_cancel(self.snapshot_locks.lock(c), cancel).await?);
            if !self.snapshots.exists(c) {
                return Err(Error::Cancelled);
            }
            dirs.push(self.snapshots.fs_path(c));
        }
        let (root, d) = (fs_dir.to_owned(), digest.to_owned());
        blocking(move || {
            crate::unpack::link_from_lowers(&root, &dirs, &links).map_err(|e| layer_error(&d, e))
        })
        .await
    }

    /// Streams a blob to the unpacking thread; says `Failed` to it on error.
    async fn download(
        &self,
        src: &Source,
        layer: &Descriptor,
        tx: mpsc::Sender<Chunk>,
        mut cancel: watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let mut stream = self.registry.blob_stream(src, &layer.digest, layer.size);
        loop {
            let next = or_cancel(stream.next(), &mut cancel).await.and_then(|r| r);
            match next {
                Ok(Some(chunk)) => {
                    if tx.send(Chunk::Data(chunk)).await.is_err() {
                        // The unpacker stopped; its error tells why.
                        return Ok(());
                    }
                }
                Ok(None) => {
                    let _ = tx.send(Chunk::End).await;
                    return Ok(());
                }
                Err(e) => {
                    let _ = tx.send(Chunk::Failed).await;
                    return Err(e);
                }
            }
        }
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

    /// Removes blobs and snapshots that no image and no lease references. Waits for
    /// running pulls to finish.
    pub async fn gc(&self) -> Result<GcReport, Error> {
        let report = {
            let _exclusive = self.gc_lock.write().await;
            self.gc_locked()?
        };
        let snaps = self.snapshots.clone();
        blocking(move || snaps.empty_trash()).await?;
        Ok(report)
    }

    /// GC now if no pull runs, else leave it to the last pull to finish.
    async fn gc_if_idle(&self) {
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

/// Runs `fut` unless the pull is cancelled first.
async fn or_cancel<T>(
    fut: impl std::future::Future<Output = T>,
    cancel: &mut watch::Receiver<bool>,
) -> Result<T, Error> {
    tokio::select! {
        v = fut => Ok(v),
        _ = cancel.wait_for(|c| *c) => Err(Error::Cancelled),
    }
}

/// Makes a layer visible: the blob first, then the snapshot.
async fn commit(writer: Option<BlobWriter>, tmp: TempSnapshot) -> Result<(), Error> {
    blocking(move || {
        if let Some(w) = writer {
            w.commit()?;
        }
        tmp.commit()
    })
    .await
}
