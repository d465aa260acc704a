//! Image records, names and leases in the daemon's metadata database (tables `images_*`).
//! Every write goes through the database's commit loop and returns once it is durable.

use berth_db::Db;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Image ID (config digest) -> JSON [`ImageRecord`].
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("images_records");
/// Repo tag or repo digest (`docker.io/library/busybox:latest`) -> image ID.
const NAMES: TableDefinition<&str, &str> = TableDefinition::new("images_names");
/// Lease holder (a container ID) -> JSON [`Lease`].
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("images_leases");

/// A local image, as the CRI reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The image ID: the digest of its config (`sha256:<hex>`).
    pub id: String,
    /// Normalised tags pointing at it (`docker.io/library/busybox:1.36`).
    pub repo_tags: Vec<String>,
    /// Normalised digest references (`docker.io/library/busybox@sha256:...`).
    pub repo_digests: Vec<String>,
    /// Bytes of its content: manifest, config and compressed layers.
    pub size: u64,
    /// The config's `USER` (empty when unset).
    pub user: String,
    /// Pinned images are never garbage-collected by kubelet.
    pub pinned: bool,
}

/// One layer of a stored image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LayerRecord {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub diff_id: String,
    pub chain_id: String,
}

/// What the store keeps per image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub image: Image,
    /// The index the image was chosen from, when the reference named one.
    pub index_digest: Option<String>,
    pub manifest_digest: String,
    /// Bottom first.
    pub layers: Vec<LayerRecord>,
}

impl ImageRecord {
    /// Every blob the image needs.
    pub(crate) fn blobs(&self) -> impl Iterator<Item = &str> {
        self.index_digest
            .iter()
            .map(String::as_str)
            .chain([self.manifest_digest.as_str(), self.image.id.as_str()])
            .chain(self.layers.iter().map(|l| l.digest.as_str()))
    }
}

/// A holder's claim on an image's snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lease {
    pub image_id: String,
    pub chain_ids: Vec<String>,
}

/// Creates the tables (idempotent).
pub(crate) fn init(db: &Db) -> Result<(), Error> {
    db.write(|tx: &WriteTransaction| {
        tx.open_table(RECORDS).map_err(Error::db)?;
        tx.open_table(NAMES).map_err(Error::db)?;
        tx.open_table(LEASES).map_err(Error::db)?;
        Ok(())
    })
    .wait()
}

impl From<berth_db::Error> for Error {
    fn from(e: berth_db::Error) -> Error {
        Error::Db(berth_db::commit::chain(&e))
    }
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Db(format!("corrupt image record: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

/// The record of image `id`.
pub(crate) fn get(db: &Database, id: &str) -> Result<Option<ImageRecord>, Error> {
    let tx = db.begin_read().map_err(Error::db)?;
    let t = tx.open_table(RECORDS).map_err(Error::db)?;
    match t.get(id).map_err(Error::db)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

/// Every image record.
pub(crate) fn all(db: &Database) -> Result<Vec<ImageRecord>, Error> {
    let tx = db.begin_read().map_err(Error::db)?;
    let t = tx.open_table(RECORDS).map_err(Error::db)?;
    let mut out = Vec::new();
    for row in t.iter().map_err(Error::db)? {
        let (_, v) = row.map_err(Error::db)?;
        out.push(decode(v.value())?);
    }
    Ok(out)
}

/// The image a tag or digest reference names.
pub(crate) fn lookup_name(db: &Database, name: &str) -> Result<Option<String>, Error> {
    let tx = db.begin_read().map_err(Error::db)?;
    let t = tx.open_table(NAMES).map_err(Error::db)?;
    Ok(t.get(name)
        .map_err(Error::db)?
        .map(|v| v.value().to_owned()))
}

/// Stores a pulled image and points `names` at it. A tag that named another image moves
/// here; that image keeps its other names (an untagged image stays, as in containerd).
pub(crate) fn commit_pull(db: &Db, rec: ImageRecord, names: &[String]) -> Result<Image, Error> {
    let names = names.to_vec();
    db.write(move |tx: &WriteTransaction| write_pull(tx, rec.clone(), &names))
        .wait()
}

fn write_pull(
    tx: &WriteTransaction,
    mut rec: ImageRecord,
    names: &[String],
) -> Result<Image, Error> {
    {
        let mut records = tx.open_table(RECORDS).map_err(Error::db)?;
        let mut name_table = tx.open_table(NAMES).map_err(Error::db)?;
        let existing: Option<ImageRecord> =
            match records.get(rec.image.id.as_str()).map_err(Error::db)? {
                Some(v) => Some(decode(v.value())?),
                None => None,
            };
        if let Some(old) = existing {
            rec.image.repo_tags = old.image.repo_tags;
            rec.image.repo_digests = old.image.repo_digests;
            rec.image.pinned = old.image.pinned;
            if rec.index_digest.is_none() {
                rec.index_digest = old.index_digest;
            }
        }
        for name in names {
            let previous = name_table
                .get(name.as_str())
                .map_err(Error::db)?
                .map(|v| v.value().to_owned());
            if let Some(prev) = previous.filter(|p| *p != rec.image.id) {
                let prev_rec: Option<ImageRecord> =
                    match records.get(prev.as_str()).map_err(Error::db)? {
                        Some(v) => Some(decode(v.value())?),
                        None => None,
                    };
                if let Some(mut p) = prev_rec {
                    p.image.repo_tags.retain(|t| t != name);
                    p.image.repo_digests.retain(|t| t != name);
                    records
                        .insert(prev.as_str(), encode(&p).as_slice())
                        .map_err(Error::db)?;
                }
            }
            name_table
                .insert(name.as_str(), rec.image.id.as_str())
                .map_err(Error::db)?;
            let list = if name.contains('@') {
                &mut rec.image.repo_digests
            } else {
                &mut rec.image.repo_tags
            };
            if !list.contains(name) {
                list.push(name.clone());
                list.sort();
            }
        }
        records
            .insert(rec.image.id.as_str(), encode(&rec).as_slice())
            .map_err(Error::db)?;
    }
    Ok(rec.image)
}

/// Removes one tag of image `id`, or the whole image (all its names) when `tag` is None.
pub(crate) fn remove(db: &Db, id: &str, tag: Option<&str>) -> Result<(), Error> {
    let (id, tag) = (id.to_owned(), tag.map(str::to_owned));
    db.write(move |tx: &WriteTransaction| write_remove(tx, &id, tag.as_deref()))
        .wait()
}

fn write_remove(tx: &WriteTransaction, id: &str, tag: Option<&str>) -> Result<(), Error> {
    {
        let mut records = tx.open_table(RECORDS).map_err(Error::db)?;
        let mut names = tx.open_table(NAMES).map_err(Error::db)?;
        let rec: Option<ImageRecord> = match records.get(id).map_err(Error::db)? {
            Some(v) => Some(decode(v.value())?),
            None => None,
        };
        if let Some(mut rec) = rec {
            match tag {
                Some(tag) => {
                    rec.image.repo_tags.retain(|t| t != tag);
                    names.remove(tag).map_err(Error::db)?;
                    records
                        .insert(id, encode(&rec).as_slice())
                        .map_err(Error::db)?;
                }
                None => {
                    for n in rec.image.repo_tags.iter().chain(&rec.image.repo_digests) {
                        names.remove(n.as_str()).map_err(Error::db)?;
                    }
                    records.remove(id).map_err(Error::db)?;
                }
            }
        }
    }
    Ok(())
}

/// Sets the pinned flag of image `id` (absent is fine).
pub(crate) fn set_pinned(db: &Db, id: &str, pinned: bool) -> Result<(), Error> {
    let id = id.to_owned();
    db.write(move |tx: &WriteTransaction| write_pinned(tx, &id, pinned))
        .wait()
}

fn write_pinned(tx: &WriteTransaction, id: &str, pinned: bool) -> Result<(), Error> {
    {
        let mut records = tx.open_table(RECORDS).map_err(Error::db)?;
        let rec: Option<ImageRecord> = match records.get(id).map_err(Error::db)? {
            Some(v) => Some(decode(v.value())?),
            None => None,
        };
        if let Some(mut rec) = rec {
            rec.image.pinned = pinned;
            records
                .insert(id, encode(&rec).as_slice())
                .map_err(Error::db)?;
        }
    }
    Ok(())
}

/// Records (or replaces) `holder`'s lease.
pub(crate) fn put_lease(db: &Db, holder: &str, lease: &Lease) -> Result<(), Error> {
    let (holder, bytes) = (holder.to_owned(), encode(lease));
    db.write(move |tx: &WriteTransaction| {
        tx.open_table(LEASES)
            .map_err(Error::db)?
            .insert(holder.as_str(), bytes.as_slice())
            .map_err(Error::db)?;
        Ok(())
    })
    .wait()
}

/// Drops `holder`'s lease (absent is fine), durably. RemoveContainer calls this after the
/// container's removal intent is durable, so a lease never goes before its container.
pub(crate) fn remove_lease(db: &Db, holder: &str) -> Result<(), Error> {
    let holder = holder.to_owned();
    db.write(move |tx: &WriteTransaction| {
        tx.open_table(LEASES)
            .map_err(Error::db)?
            .remove(holder.as_str())
            .map_err(Error::db)?;
        Ok(())
    })
    .wait()
}

/// The deletion of `holder`'s lease as a write for another crate's transaction.
pub(crate) fn lease_removal(holder: &str) -> berth_db::Write {
    let holder = holder.to_owned();
    Box::new(move |tx: &WriteTransaction| {
        tx.open_table(LEASES)?.remove(holder.as_str())?;
        Ok(())
    })
}

/// Every lease, by holder.
pub(crate) fn leases(db: &Database) -> Result<Vec<(String, Lease)>, Error> {
    let tx = db.begin_read().map_err(Error::db)?;
    let t = tx.open_table(LEASES).map_err(Error::db)?;
    let mut out = Vec::new();
    for row in t.iter().map_err(Error::db)? {
        let (k, v) = row.map_err(Error::db)?;
        out.push((k.value().to_owned(), decode(v.value())?));
    }
    Ok(out)
}
