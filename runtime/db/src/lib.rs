//! The daemon's metadata database as the crates share it: one redb file, opened by the
//! daemon and handed to each crate as a [`Db`]. Each crate defines and owns its tables;
//! every write goes through one commit loop per database (group commit, see
//! [`commit`]), so an acknowledged change is on disk and calls in flight share one `fsync`.

pub mod commit;
#[cfg(any(test, feature = "crash-sim"))]
pub mod crashsim;

pub use commit::{Commit, CommitStats, Db};

/// A write one crate hands another, to run in the same transaction as the other's own
/// (RemoveContainer's removal intent and the image lease it ends commit as one).
pub type Write = Box<dyn FnMut(&redb::WriteTransaction) -> Result<(), redb::Error> + Send>;

/// Why a write did not reach the disk.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No write transaction could be opened.
    #[error("cannot begin a metadata transaction")]
    Begin(#[source] std::sync::Arc<redb::TransactionError>),
    /// The transaction that held the write could not be made durable.
    #[error("cannot commit metadata")]
    Commit(#[source] std::sync::Arc<redb::CommitError>),
    /// The daemon is shutting down: the commit loop takes no more writes.
    #[error("the metadata commit loop has stopped")]
    Stopped,
}
