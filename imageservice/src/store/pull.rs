//! A pull: resolve the reference, fetch and verify the manifest and config, then stream
//! every layer (download, digest, decompress and unpack at once) and record the image.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Buf, Bytes};
use tokio::sync::{mpsc, watch};

use super::{ImageStore, Pulled, blocking, join_error, layer_error};
use crate::content::BlobWriter;
use crate::error::Error;
use crate::manifest::{
    Descriptor, ImageConfiguration, ImageManifest, ManifestDoc, chain_ids, parse_config,
    parse_manifest, platform_name, select_platform,
};
use crate::records::{self, Image, ImageRecord, LayerRecord};
use crate::reference::Reference;
use crate::registry::{Credentials, FetchedManifest, Source, verify};
use crate::snapshot::TempSnapshot;
use crate::unpack::{UnpackSummary, unpack_layer_with};

/// Messages from the downloader to the unpacking thread.
enum Chunk {
    Data(Bytes),
    End,
    Failed,
}

/// The unpacking thread's view of a download: every byte it reads is also written to
/// the blob's temporary file (which hashes it), verified and fsynced at its end.
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
                Some(Chunk::End) => {
                    // The whole blob is here: verify and fsync it now, while the unpacking
                    // thread still creates files, rather than after it.
                    if let Err(e) = self.writer.finish() {
                        self.write_error = Some(e);
                        return Err(io::Error::other("storing the blob failed"));
                    }
                    self.eof = true;
                }
                Some(Chunk::Failed) | None => return Err(io::Error::other("download interrupted")),
            }
        }
    }
}

/// A blob being stored in the background.
type PendingWrite = tokio::task::JoinHandle<Result<(), Error>>;

/// How one layer of a pull went.
#[derive(Clone, Copy, Debug, Default)]
struct LayerOutcome {
    downloaded: u64,
}

impl ImageStore {
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
        // Blobs and snapshots came (even a failed pull leaves some until GC).
        self.changed();
        if result.is_ok() {
            // Usage figures and durability of the new snapshots, off the pull's path.
            let (snaps, changes) = (self.snapshots.clone(), self.changes.clone());
            tokio::task::spawn_blocking(move || match snaps.sync() {
                // Their usage files are new: cached usage figures are stale.
                Ok(n) if n > 0 => {
                    changes.fetch_add(1, Ordering::Release);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "making snapshots durable"),
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
                        platform: platform_name(&self.platform),
                        available,
                    }
                })?;
                let body = self.manifest_blob(&mut src, desc).await?;
                let media = Some(desc.media_type().as_ref()).filter(|m| !m.is_empty());
                match parse_manifest(media, &body).map_err(invalid)? {
                    ManifestDoc::Manifest(m) => (
                        Some(top.digest.clone()),
                        m,
                        desc.size(),
                        desc.digest().to_string(),
                    ),
                    ManifestDoc::Index(_) => {
                        return Err(invalid("an index inside an index".into()));
                    }
                }
            }
        };
        // The top document is stored while the layers come (it is known to be new only
        // now, and nothing reads it before the record exists).
        let top_write = (!self.content.has(&top.digest)).then(|| {
            let (content, digest, body) = (self.content.clone(), top.digest.clone(), top.body);
            tokio::task::spawn_blocking(move || content.write_all(&digest, &body))
        });
        let ids = (index_digest, manifest_digest, manifest_desc_size);
        let (result, config_write) = match self.config_blob(&src, manifest.config()).await {
            Ok((blob, write)) => {
                let result = self.layers_and_record(r, &src, &manifest, &blob, ids).await;
                (result, write)
            }
            Err(e) => (Err(e), None),
        };
        // Awaited whatever happened, so a failed pull leaves no write running behind it.
        let mut write_error = None;
        for w in [config_write, top_write].into_iter().flatten() {
            if let Err(e) = w.await.map_err(join_error).and_then(|r| r) {
                write_error.get_or_insert(e);
            }
        }
        let (record, downloaded) = result?;
        if let Some(e) = write_error {
            return Err(e);
        }
        let mut names = vec![r.with_digest(&top.digest).to_string()];
        if r.tag().is_some() {
            names.push(r.to_string());
        }
        let db = self.db.clone();
        let layers = manifest.layers().len();
        let image = blocking(move || records::commit_pull(&db, record, &names)).await?;
        Ok((image, downloaded, layers))
    }

    /// Fetches or reuses every layer of `manifest` and builds the image's record.
    async fn layers_and_record(
        &self,
        r: &Reference,
        src: &Source,
        manifest: &ImageManifest,
        config_blob: &[u8],
        // The index's digest if any, the manifest's digest and size.
        ids: (Option<String>, String, u64),
    ) -> Result<(ImageRecord, u64), Error> {
        let invalid = |reason: String| Error::InvalidImage {
            reference: r.to_string(),
            reason,
        };
        let config = parse_config(config_blob, manifest.layers().len()).map_err(invalid)?;
        let chain = chain_ids(config.rootfs().diff_ids());

        // Layers in parallel; the first failure stops the others, and every layer's
        // blocking work is awaited so a failed pull returns with its leftovers removed.
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let results = futures::future::join_all(
            manifest
                .layers()
                .iter()
                .zip(config.rootfs().diff_ids())
                .zip(&chain)
                .enumerate()
                .map(|(i, ((layer, diff_id), chain_id))| {
                    let (cancel_tx, cancel) = (&cancel_tx, cancel_rx.clone());
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
        let (index_digest, manifest_digest, manifest_desc_size) = ids;
        let record = self.record(
            manifest,
            &config,
            &chain,
            index_digest,
            manifest_digest,
            manifest_desc_size,
        );
        Ok((record, downloaded))
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        manifest: &ImageManifest,
        config: &ImageConfiguration,
        chain: &[String],
        index_digest: Option<String>,
        manifest_digest: String,
        manifest_size: u64,
    ) -> ImageRecord {
        let layers: Vec<LayerRecord> = manifest
            .layers()
            .iter()
            .zip(config.rootfs().diff_ids())
            .zip(chain)
            .map(|((l, diff_id), chain_id)| LayerRecord {
                digest: l.digest().to_string(),
                size: l.size(),
                media_type: l.media_type().to_string(),
                diff_id: diff_id.clone(),
                chain_id: chain_id.clone(),
            })
            .collect();
        let size =
            manifest_size + manifest.config().size() + layers.iter().map(|l| l.size).sum::<u64>();
        ImageRecord {
            image: Image {
                id: manifest.config().digest().to_string(),
                repo_tags: Vec::new(),
                repo_digests: Vec::new(),
                size,
                user: config
                    .config()
                    .as_ref()
                    .and_then(|c| c.user().clone())
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

    /// A platform's manifest of an index, by digest: from the store, or fetched once
    /// however many pulls ask, verified and stored.
    async fn manifest_blob(&self, src: &mut Source, desc: &Descriptor) -> Result<Vec<u8>, Error> {
        let _one = self.blob_locks.lock(desc.digest().as_ref()).await;
        if self.content.has(desc.digest().as_ref()) {
            return self.read_blob(desc.digest().as_ref()).await;
        }
        let m = self
            .registry
            .fetch_manifest(src, desc.digest().as_ref())
            .await?;
        verify(desc.digest().as_ref(), desc.size(), &m.body)?;
        let body = m.body;
        let (content, digest, data) = (
            self.content.clone(),
            desc.digest().to_string(),
            body.clone(),
        );
        blocking(move || content.write_all(&digest, &data)).await?;
        Ok(body)
    }

    /// The image's config: from the store, or fetched once however many pulls ask and
    /// verified; then also the write that stores it, still under the blob's lock (so no
    /// other pull fetches it again), to be awaited before the image is recorded.
    async fn config_blob(
        &self,
        src: &Source,
        desc: &Descriptor,
    ) -> Result<(Vec<u8>, Option<PendingWrite>), Error> {
        let one = self.blob_locks.lock(desc.digest().as_ref()).await;
        if self.content.has(desc.digest().as_ref()) {
            return Ok((self.read_blob(desc.digest().as_ref()).await?, None));
        }
        let body = self
            .registry
            .fetch_blob(src, desc.digest().as_ref(), desc.size())
            .await?;
        let (content, digest, data) = (
            self.content.clone(),
            desc.digest().to_string(),
            body.clone(),
        );
        let write = tokio::task::spawn_blocking(move || {
            let _one = one;
            content.write_all(&digest, &data)
        });
        Ok((body, Some(write)))
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
            tracing::debug!(layer = %layer.digest(), "layer already unpacked");
            return Ok(LayerOutcome::default());
        }
        let _permit = or_cancel(self.layer_permits.acquire(), &mut cancel)
            .await?
            .map_err(|_| Error::Db("store closed".into()))?;
        let blob_lock =
            or_cancel(self.blob_locks.lock(layer.digest().as_ref()), &mut cancel).await?;
        let started = Instant::now();
        let digest = layer.digest().to_string();
        let tmp = self.snapshots.prepare(chain_id)?;
        let fs_dir = tmp.fs();
        let limits = self.layer_limits;

        let mut blob_lock = Some(blob_lock);
        let (summary, writer, downloaded) = if self.content.has(layer.digest().as_ref()) {
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
            let writer = self.content.writer(layer.digest().as_ref(), layer.size())?;
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
            (summary, Some(writer), layer.size())
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
            layer = %layer.digest(), bytes = downloaded, entries = summary.entries,
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
        let mut stream = self
            .registry
            .blob_stream(src, layer.digest().as_ref(), layer.size());
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
pub(super) async fn commit(writer: Option<BlobWriter>, tmp: TempSnapshot) -> Result<(), Error> {
    blocking(move || {
        if let Some(w) = writer {
            w.commit()?;
        }
        tmp.commit()
    })
    .await
}
