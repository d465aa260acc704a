//! The containers' writable layers' usage for `ImageFsInfo`, measured off the call path.
//!
//! Measuring needs a walk of every writable layer, so a call answers with the last measure
//! and, when that is older than the freshness, starts one remeasure in the background
//! (containerd's CRI plugin likewise answers from usage its snapshot syncer collects every
//! 10 s). Nothing runs between calls: an idle node is never woken. Only the first call
//! measures on its own path.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tonic::Status;

/// How old a measure may be before a call starts a new one: kubelet's image GC and
/// eviction manager read `ImageFsInfo` every 10 s, so with that cadence each answer is
/// the measure the previous call started.
pub const FRESHNESS: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
struct Measure {
    at: Instant,
    bytes: u64,
    inodes: u64,
}

#[derive(Default)]
struct State {
    last: Option<Measure>,
    refreshing: bool,
}

/// The last measure of the writable layers and whether a remeasure is under way.
pub struct WritableUsage {
    dir: PathBuf,
    freshness: Duration,
    state: Mutex<State>,
}

fn measure(dir: &std::path::Path) -> Result<Measure, Status> {
    let at = Instant::now();
    let (bytes, inodes) = berth_imageservice::unpack::disk_usage(dir).map_err(|e| {
        Status::internal(format!(
            "measuring the writable layers under {}: {e}",
            dir.display()
        ))
    })?;
    Ok(Measure { at, bytes, inodes })
}

impl WritableUsage {
    /// Usage of the layers under `dir` (the containers' directory), remeasured when a
    /// call finds the last measure older than `freshness`.
    pub fn new(dir: PathBuf, freshness: Duration) -> WritableUsage {
        WritableUsage {
            dir,
            freshness,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes and inodes of the writable layers: the last measure (the first call measures
    /// now); a stale one also starts a remeasure in the background for the next call.
    pub async fn get(self: &Arc<Self>) -> Result<(u64, u64), Status> {
        let (last, refresh) = {
            let mut s = self.state();
            let stale = s.last.is_some_and(|m| m.at.elapsed() >= self.freshness);
            let refresh = stale && !s.refreshing;
            s.refreshing |= refresh;
            (s.last, refresh)
        };
        let Some(last) = last else {
            let me = self.clone();
            let m = tokio::task::spawn_blocking(move || measure(&me.dir))
                .await
                .map_err(|e| Status::internal(format!("measuring the writable layers: {e}")))??;
            self.state().last.get_or_insert(m);
            return Ok((m.bytes, m.inodes));
        };
        if refresh {
            let me = self.clone();
            tokio::task::spawn_blocking(move || {
                let m = measure(&me.dir);
                let mut s = me.state();
                s.refreshing = false;
                match m {
                    Ok(m) => s.last = Some(m),
                    // The last measure stays; the next stale call tries again.
                    Err(e) => tracing::warn!(error = %e.message(), "image filesystem usage"),
                }
            });
        }
        Ok((last.bytes, last.inodes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn settle(u: &Arc<WritableUsage>) {
        for _ in 0..200 {
            if !u.state().refreshing {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the background remeasure never finished");
    }

    #[tokio::test]
    async fn a_written_file_shows_up_once_the_measure_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let u = Arc::new(WritableUsage::new(dir.path().to_owned(), Duration::ZERO));
        let (bytes, inodes) = u.get().await.unwrap();
        std::fs::write(dir.path().join("log"), vec![7u8; 256 * 1024]).unwrap();
        // This call answers with the old measure and starts the remeasure.
        assert_eq!(u.get().await.unwrap(), (bytes, inodes));
        settle(&u).await;
        let (after, after_inodes) = u.get().await.unwrap();
        assert!(after >= bytes + 256 * 1024, "{after} vs {bytes}");
        assert_eq!(after_inodes, inodes + 1);
    }

    #[tokio::test]
    async fn a_fresh_measure_is_answered_without_a_walk() {
        let dir = tempfile::tempdir().unwrap();
        let u = Arc::new(WritableUsage::new(dir.path().to_owned(), FRESHNESS));
        let first = u.get().await.unwrap();
        std::fs::write(dir.path().join("log"), vec![7u8; 256 * 1024]).unwrap();
        assert_eq!(u.get().await.unwrap(), first);
        assert!(!u.state().refreshing, "no remeasure within the freshness");
    }
}
