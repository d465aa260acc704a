//! The containers' writable layers' usage, measured once for both readers (`ImageFsInfo`
//! sums it, container stats report each layer) and never on a call's path.
//!
//! Measuring a layer is a walk of its overlay upper dir: about 60 µs for a `sleep`
//! container's near-empty layer, so 30 ms for a node of 500, and unbounded for a container
//! that fills its layer with files. So a call answers with each layer's last measure and,
//! when a layer it reports has none yet or one older than the freshness, starts one
//! background refresh: a single blocking thread that walks the layers due, never-measured
//! ones first then oldest first, one at a time with no lock held, storing each measure as
//! it is taken (so a huge layer delays only the layers after it, never a call). containerd's
//! CRI plugin likewise answers from usage its snapshot syncer collects every 10 s. Nothing
//! runs between calls: an idle node is never woken.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How old a layer's measure may be before a call starts a new one: kubelet reads stats
/// and `ImageFsInfo` every 10 s, so at that cadence each answer is the measure the
/// previous call started.
pub const FRESHNESS: Duration = Duration::from_secs(10);

/// One measure of a writable layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measure {
    /// When it was taken, in ns since the epoch (what stats report as its timestamp).
    pub timestamp: i64,
    /// Bytes the layer's files take on disk.
    pub bytes: u64,
    /// Inodes the layer holds, its top directory included.
    pub inodes: u64,
}

struct Layer {
    dir: PathBuf,
    /// The last successful measure.
    measure: Option<Measure>,
    /// When the last measure was tried (a failed walk is not retried until it is stale).
    tried: Option<Instant>,
    /// Which `track` call last saw the container: older ones are gone.
    seen: u64,
}

impl Layer {
    fn due(&self, freshness: Duration) -> bool {
        self.tried.is_none_or(|t| t.elapsed() >= freshness)
    }
}

#[derive(Default)]
struct State {
    layers: HashMap<String, Layer>,
    /// The number of the latest `track` call.
    generation: u64,
    /// A background refresh runs (it takes every layer due, until none is).
    refreshing: bool,
}

/// Every container's writable layer and its last measure.
pub struct WritableUsage {
    freshness: Duration,
    state: Mutex<State>,
}

impl WritableUsage {
    /// Layers remeasured when a call finds their measure older than `freshness`.
    pub fn new(freshness: Duration) -> WritableUsage {
        WritableUsage {
            freshness,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the containers whose layers are tracked to `containers` (id, upper dir): every
    /// container of the node. New ones are measured soon, gone ones forgotten; when any is
    /// due, a background refresh starts (unless one runs). Costs a map lookup per
    /// container; nothing is read from disk here.
    pub fn track<'a>(self: &Arc<Self>, containers: impl IntoIterator<Item = (&'a str, &'a Path)>) {
        let start = {
            let mut s = self.state();
            s.generation += 1;
            let generation = s.generation;
            let mut due = false;
            for (id, dir) in containers {
                let layer = match s.layers.get_mut(id) {
                    Some(l) if l.dir == dir => l,
                    // New, or an id now naming another layer (never in practice: ids are
                    // unique): measured afresh.
                    _ => {
                        s.layers.insert(
                            id.to_owned(),
                            Layer {
                                dir: dir.to_owned(),
                                measure: None,
                                tried: None,
                                seen: generation,
                            },
                        );
                        due = true;
                        continue;
                    }
                };
                layer.seen = generation;
                due |= layer.due(self.freshness);
            }
            s.layers.retain(|_, l| l.seen == generation);
            let start = due && !s.refreshing;
            s.refreshing |= start;
            start
        };
        if start {
            let me = Arc::clone(self);
            tokio::task::spawn_blocking(move || me.refresh());
        }
    }

    /// The last measure of container `id`'s layer; `None` before its first.
    pub fn get(&self, id: &str) -> Option<Measure> {
        self.state().layers.get(id).and_then(|l| l.measure)
    }

    /// Bytes and inodes of every tracked layer's last measure.
    pub fn total(&self) -> (u64, u64) {
        self.state()
            .layers
            .values()
            .filter_map(|l| l.measure)
            .fold((0, 0), |(b, i), m| (b + m.bytes, i + m.inodes))
    }

    /// Whether `l` is due in a refresh that began at `began`: each layer is measured at
    /// most once per refresh.
    fn due_in(&self, l: &Layer, began: Instant) -> bool {
        l.due(self.freshness) && l.tried.is_none_or(|t| t < began)
    }

    /// The layers due now: never-measured ones first, then the oldest measures.
    fn due(&self, began: Instant) -> Vec<(String, PathBuf)> {
        let s = self.state();
        let mut due: Vec<(Option<Instant>, &String, &Layer)> = s
            .layers
            .iter()
            .filter(|(_, l)| self.due_in(l, began))
            .map(|(id, l)| (l.tried, id, l))
            .collect();
        // `None` (never tried) sorts first.
        due.sort_by_key(|(tried, _, _)| *tried);
        due.into_iter()
            .map(|(_, id, l)| (id.clone(), l.dir.clone()))
            .collect()
    }

    /// Measures every layer due, one at a time, until none is; blocking.
    fn refresh(&self) {
        let began = Instant::now();
        loop {
            let due = self.due(began);
            if due.is_empty() {
                let mut s = self.state();
                // A `track` between `due` and this lock saw `refreshing` and left its new
                // layers to this thread: look once more under the lock.
                let more = s.layers.values().any(|l| self.due_in(l, began));
                if !more {
                    s.refreshing = false;
                    return;
                }
                continue;
            }
            for (id, dir) in due {
                let tried = Instant::now();
                let measured = measure(&dir);
                let mut s = self.state();
                // Gone meanwhile, or replaced: its measure is of no use.
                let Some(layer) = s.layers.get_mut(&id).filter(|l| l.dir == dir) else {
                    continue;
                };
                layer.tried = Some(tried);
                match measured {
                    Ok(m) => layer.measure = Some(m),
                    // The last measure stays; the layer is tried again once stale.
                    Err(e) => tracing::warn!(
                        container = %id,
                        error = %e,
                        "measuring a writable layer"
                    ),
                }
            }
        }
    }
}

fn measure(dir: &Path) -> std::io::Result<Measure> {
    let timestamp = berth_runtime::sys::now_ns();
    let (bytes, inodes) = berth_imageservice::unpack::disk_usage(dir)?;
    Ok(Measure {
        timestamp,
        bytes,
        inodes,
    })
}

#[cfg(test)]
mod tests;
