//! The daemon lock: one daemon per state directory, decided by the kernel, not a pid guess.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// File name of the lock under the state directory.
pub const LOCK_FILE: &str = "berth.lock";

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("another berth daemon is running on state directory {} (it holds {LOCK_FILE} there)", .0.display())]
    Held(PathBuf),
    /// The lock file could not be created or locked.
    #[error("cannot lock {path}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// An exclusive `flock` on `<state>/berth.lock`, released when the process exits (even by
/// SIGKILL), so a crashed daemon never blocks the next one.
pub struct DaemonLock {
    _lock: Flock<File>,
}

impl DaemonLock {
    /// Takes the lock without waiting; fails at once when another daemon holds it.
    pub fn acquire(state: &Path) -> Result<DaemonLock, LockError> {
        let path = state.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state).map_err(io)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(DaemonLock { _lock: lock }),
            Err((_, Errno::EWOULDBLOCK)) => Err(LockError::Held(state.to_owned())),
            Err((_, errno)) => Err(io(errno.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = DaemonLock::acquire(dir.path()).unwrap();
        let err = DaemonLock::acquire(dir.path())
            .err()
            .expect("second lock must fail");
        assert!(err.to_string().contains("another berth daemon"), "{err}");
        drop(first);
        DaemonLock::acquire(dir.path()).unwrap();
    }
}
