//! Quiet turns: before a runtime's turn, every runtime's deferred work is done (written
//! back to disk, directories deleted, shims gone, garbage collection settled), so what one
//! runtime does after its answers never lands in another's timing.

use std::time::{Duration, Instant};

use crate::cold::settle_disk;
use crate::measure::{Backlog, Runtime};

/// How long a runtime may stay busy before the benchmark goes on anyway (and says so).
const QUIET_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a backlog's churn must stay unchanged to count as settled.
const QUIET_STEP: Duration = Duration::from_millis(100);

/// Whether the runtimes, read `before` and then `after` one [`QUIET_STEP`] apart, have
/// nothing pending and nothing moving.
fn is_quiet(before: &[Backlog], after: &[Backlog]) -> bool {
    before.len() == after.len()
        && before
            .iter()
            .zip(after)
            .all(|(b, a)| a.pending == 0 && a.churn == b.churn)
}

/// Writes back dirty pages (`sync`) and waits until no runtime of `rts` has deferred work
/// left; after [`QUIET_TIMEOUT`] it warns and returns, since a figure taken then is still
/// worth more than none.
pub(crate) async fn quiet<'a>(rts: impl IntoIterator<Item = &'a Runtime>) {
    let rts: Vec<&Runtime> = rts.into_iter().collect();
    let read = || rts.iter().map(|rt| (rt.backlog)()).collect::<Vec<_>>();
    settle_disk();
    let t = Instant::now();
    let mut before = read();
    loop {
        tokio::time::sleep(QUIET_STEP).await;
        let after = read();
        if is_quiet(&before, &after) {
            break;
        }
        if t.elapsed() > QUIET_TIMEOUT {
            let names: Vec<&str> = rts.iter().map(|rt| rt.name).collect();
            eprintln!(
                "bench: {names:?} still busy after {} s ({after:?}); going on",
                QUIET_TIMEOUT.as_secs()
            );
            break;
        }
        before = after;
    }
    // What the deferred work itself wrote.
    settle_disk();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(pending: usize, churn: usize) -> Backlog {
        Backlog { pending, churn }
    }

    #[test]
    fn quiet_needs_nothing_pending_and_no_churn() {
        assert!(is_quiet(&[b(0, 5), b(0, 7)], &[b(0, 5), b(0, 7)]));
        // A directory still being deleted.
        assert!(!is_quiet(&[b(1, 5)], &[b(1, 5)]));
        // Garbage collection still removing snapshots.
        assert!(!is_quiet(&[b(0, 9), b(0, 7)], &[b(0, 8), b(0, 7)]));
        assert!(!is_quiet(&[b(0, 5)], &[b(0, 5), b(0, 5)]));
    }
}
