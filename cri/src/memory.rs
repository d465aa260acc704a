//! Giving memory back after a burst of calls. glibc keeps what the daemon freed for reuse,
//! in one heap arena per thread that allocated: after a hundred pods came and went, an idle
//! daemon held twice the resident memory it started with, for ever. Two arenas (the
//! daemon has two workers) and a `malloc_trim` once the calls stop bring it back near its
//! start-up size (elsewhere than glibc both are no-ops). The code and read-only data those
//! calls ran stay mapped too (7 MiB of the binary after a hundred pods): the same trim drops
//! those clean file pages (`berth_runtime::resident`), which fault back in from the page
//! cache on the next call.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long without a new call before the daemon counts as idle.
const QUIET: Duration = Duration::from_secs(2);

static EPOCH: OnceLock<Instant> = OnceLock::new();
/// Milliseconds since [`EPOCH`] at the last call's start.
static LAST_CALL_MS: AtomicU64 = AtomicU64::new(0);
/// A call came since the last trim.
static BUSY: AtomicBool = AtomicBool::new(false);

fn now_ms() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Caps glibc's heap arenas at two. Call before any thread starts.
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt changes allocator tuning; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Notes that a call started (cheap: two relaxed stores).
pub fn note_call() {
    LAST_CALL_MS.store(now_ms(), Ordering::Relaxed);
    BUSY.store(true, Ordering::Relaxed);
}

/// Whether a trim is due at `now` (ms): calls came, and none for [`QUIET`].
fn trim_due(busy: bool, last_call_ms: u64, now: u64) -> bool {
    busy && now.saturating_sub(last_call_ms) >= QUIET.as_millis() as u64
}

/// Trims the heap once after each burst of calls, for as long as the daemon runs.
pub async fn trim_when_idle() {
    let mut tick = tokio::time::interval(QUIET);
    loop {
        tick.tick().await;
        if trim_due(
            BUSY.load(Ordering::Relaxed),
            LAST_CALL_MS.load(Ordering::Relaxed),
            now_ms(),
        ) {
            BUSY.store(false, Ordering::Relaxed);
            // It walks the heap: off the workers.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// Gives freed heap memory back now, off the workers: for when the node just went idle
/// (its last pod removed), so what the pods' calls used is free at once, not only after
/// [`QUIET`].
pub fn trim_now() {
    drop(tokio::task::spawn_blocking(trim));
}

fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    let mappings = berth_runtime::resident::own_mappings();
    berth_runtime::resident::drop_file_pages(&mappings.clean_files);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_follows_a_burst_once_it_is_quiet() {
        assert!(
            !trim_due(false, 0, 60_000),
            "no calls, nothing to give back"
        );
        assert!(!trim_due(true, 10_000, 11_000), "calls still coming");
        assert!(trim_due(true, 10_000, 12_000));
    }

    #[test]
    fn trimming_keeps_the_heap_usable() {
        limit_arenas();
        let v: Vec<Vec<u8>> = (0..1000).map(|i| vec![i as u8; 4096]).collect();
        drop(v);
        trim();
        let w = vec![7u8; 1 << 20];
        assert_eq!(w[12345], 7);
    }
}
