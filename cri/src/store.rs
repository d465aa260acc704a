//! The metadata store: one embedded database file under `root`, shared by every crate.
//!
//! redb is the choice because it is pure Rust (no C library to build or ship), ACID with
//! copy-on-write B-trees (a commit is durable and a crash never leaves a torn record, with no
//! log replay to configure), a single file, and typed tables: each crate declares and owns
//! its own tables (`runtime_*`, `images_*`, `cni_*`) on the one handle the daemon opens here.
//! SQLite would bring a C dependency and a SQL layer the records do not need; sled's on-disk
//! format is unstable. The crates write through the handle's group-commit loop
//! ([`berth_db::Db`]): a change is acknowledged only once it is on disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_db::Db;
use redb::{Database, ReadableTable, TableDefinition};

/// Version of the on-disk schema this build reads and writes. Bump it with a migration.
pub const SCHEMA_VERSION: u64 = 1;

/// File name of the database under `root`.
pub const DB_FILE: &str = "berth.db";

/// The database's page cache. redb's default (1 GiB) keeps every page the daemon ever read or
/// wrote: after a hundred pods came and went that was megabytes resident for good. The
/// records the daemon reads are few (its indexes are in memory), and a page not cached is
/// a `pread` from the kernel's page cache.
const DB_CACHE_BYTES: usize = 1 << 20;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Why the metadata store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The root directory could not be created.
    #[error("cannot create {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The commit loop's thread could not be started.
    #[error("cannot start the metadata commit loop")]
    CommitLoop(#[source] std::io::Error),
    /// The database file could not be opened (locked by another daemon, corrupt, ...).
    #[error("cannot open metadata database {path}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// redb's account.
        #[source]
        source: redb::DatabaseError,
    },
    /// The file was written by a newer Berth.
    #[error(
        "metadata database {path} has schema version {found}, this berth reads up to {SCHEMA_VERSION}"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// The version found in it.
        found: u64,
    },
    /// A read or write failed.
    #[error("metadata database: {0}")]
    Db(String),
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// The daemon's handle on the metadata database.
#[derive(Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// Opens (or creates) `root/berth.db` and checks its schema version.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(root).map_err(|source| StoreError::CreateDir {
            path: root.to_owned(),
            source,
        })?;
        let path = root.join(DB_FILE);
        let db = redb::Builder::new()
            .set_cache_size(DB_CACHE_BYTES)
            .create(&path)
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        let db = Db::new(Arc::new(db)).map_err(StoreError::CommitLoop)?;
        let store = Store { db };
        store.check_schema(&path)?;
        Ok(store)
    }

    /// The shared database handle the crates define their tables on and write through.
    pub fn db(&self) -> Db {
        self.db.clone()
    }

    /// The database itself, for a crate that commits on its own (the network's IPAM).
    pub fn database(&self) -> Arc<Database> {
        self.db.database().clone()
    }

    fn check_schema(&self, path: &Path) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut meta = tx.open_table(META).map_err(db_err)?;
            let found = meta
                .get("schema_version")
                .map_err(db_err)?
                .map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StoreError::TooNew {
                        path: path.to_owned(),
                        found: v,
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)
                        .map_err(db_err)?;
                }
            }
        }
        tx.commit().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use redb::ReadableDatabase;

    use super::*;

    #[test]
    fn schema_version_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let store = Store::open(dir.path()).unwrap();
        let tx = store.db.begin_read().unwrap();
        let meta = tx.open_table(META).unwrap();
        assert_eq!(
            meta.get("schema_version").unwrap().unwrap().value(),
            SCHEMA_VERSION
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let tx = store.db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("schema_version", SCHEMA_VERSION + 1)
                .unwrap();
            tx.commit().unwrap();
        }
        let err = Store::open(dir.path())
            .err()
            .expect("a newer schema must be refused");
        assert!(err.to_string().contains("schema version 2"), "{err}");
    }
}
