//! Group commit: one thread per database commits every write, durably.
//!
//! A caller hands [`Db::write`] a closure that writes its crate's tables into a
//! transaction and gets a [`Commit`] to wait on (blocking) or await. The loop takes every
//! write queued while the previous `fsync` ran, runs them in order in one transaction and
//! commits it with [`redb::Durability::Immediate`]; each caller's [`Commit`] resolves once
//! that commit is on disk. So a lone call pays one `fsync`, and a hundred calls in flight
//! pay a few, not a hundred. Writes are applied in the order they were queued, so two
//! writes of one record queued under that record's lock land in that order; a write is
//! visible to readers only once it is durable, never before.
//!
//! A closure that fails (a corrupt record it read, a table it could not open) has its
//! error returned to its caller alone: the transaction is dropped and the batch runs again
//! without it, so the others' writes are not lost with it.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;

use redb::{Database, Durability, WriteTransaction};

use crate::Error;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One queued write, its type erased for the queue.
trait Job: Send {
    /// Whether it writes anything: a batch of flushes alone needs no commit.
    fn writes(&self) -> bool {
        true
    }
    /// Writes into `tx`; false when the closure failed (its error is kept for its caller).
    fn write(&mut self, tx: &WriteTransaction) -> bool;
    /// Tells the caller how its write ended: `committed` is the fate of the transaction that
    /// held it (a job whose closure failed reports its own error instead).
    fn finish(self: Box<Self>, committed: Result<(), Error>);
}

struct Typed<T, E, F> {
    f: F,
    result: Option<Result<T, E>>,
    slot: Arc<Slot<Result<T, E>>>,
}

impl<T, E, F> Job for Typed<T, E, F>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
    F: FnMut(&WriteTransaction) -> Result<T, E> + Send + 'static,
{
    fn write(&mut self, tx: &WriteTransaction) -> bool {
        let r = (self.f)(tx);
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn finish(mut self: Box<Self>, committed: Result<(), Error>) {
        let out = match (self.result.take(), committed) {
            (Some(Err(e)), _) => Err(e),
            (_, Err(e)) => Err(E::from(e)),
            (Some(Ok(v)), Ok(())) => Ok(v),
            // Never run (the loop stopped before it).
            (None, Ok(())) => Err(E::from(Error::Stopped)),
        };
        self.slot.fill(out);
    }
}

/// [`Db::flush`]'s job: resolves with the batch it lands in.
struct Barrier<E> {
    slot: Arc<Slot<Result<(), E>>>,
}

impl<E: From<Error> + Send + 'static> Job for Barrier<E> {
    fn writes(&self) -> bool {
        false
    }

    fn write(&mut self, _: &WriteTransaction) -> bool {
        true
    }

    fn finish(self: Box<Self>, committed: Result<(), Error>) {
        self.slot.fill(committed.map_err(E::from));
    }
}

/// Where the loop leaves a caller's result.
struct Slot<R> {
    state: Mutex<(Option<R>, Option<Waker>)>,
    ready: Condvar,
}

impl<R> Slot<R> {
    fn new() -> Arc<Slot<R>> {
        Arc::new(Slot {
            state: Mutex::new((None, None)),
            ready: Condvar::new(),
        })
    }

    fn fill(&self, value: R) {
        let waker = {
            let mut s = lock(&self.state);
            s.0 = Some(value);
            s.1.take()
        };
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A queued write: resolves once the transaction holding it is on disk (or failed). Wait
/// with [`Commit::wait`] on a thread that may block, or `.await` it. Dropping it does not
/// cancel the write.
#[must_use = "a write is acknowledged only once its commit is waited for"]
pub struct Commit<R> {
    slot: Arc<Slot<R>>,
}

impl<R> Commit<R> {
    /// A commit that resolves to `value` at once: a write refused before it was queued.
    pub fn ready(value: R) -> Commit<R> {
        let slot = Slot::new();
        slot.fill(value);
        Commit { slot }
    }

    /// Blocks until the write is durable (or failed).
    pub fn wait(self) -> R {
        let mut s = lock(&self.slot.state);
        loop {
            if let Some(v) = s.0.take() {
                return v;
            }
            s = self.slot.ready.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl<R> Future for Commit<R> {
    type Output = R;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<R> {
        let mut s = lock(&self.slot.state);
        match s.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// How much the loop has grouped: `writes / commits` writes shared each `fsync`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Durable transactions committed.
    pub commits: u64,
    /// Writes they held.
    pub writes: u64,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Box<dyn Job>>,
    closed: bool,
}

struct Shared {
    database: Arc<Database>,
    queue: Mutex<Queue>,
    queued: Condvar,
    commits: AtomicU64,
    writes: AtomicU64,
}

/// Stops the loop when the last [`Db`] goes: it commits what is queued, then ends.
struct Owner {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.queued.notify_all();
        if let Some(t) = lock(&self.thread).take()
            && t.thread().id() != std::thread::current().id()
        {
            // The database file is free once this returns (a reopen in the same process).
            let _ = t.join();
        }
    }
}

/// The shared handle on the metadata database: reads go straight to it (it derefs to
/// [`redb::Database`]); writes go through [`Db::write`]. Cloning shares the one loop.
#[derive(Clone)]
pub struct Db {
    owner: Arc<Owner>,
}

impl Db {
    /// Wraps an opened database and starts its commit loop (a thread named `berth-commit`).
    pub fn new(database: Arc<Database>) -> std::io::Result<Db> {
        let shared = Arc::new(Shared {
            database,
            queue: Mutex::new(Queue::default()),
            queued: Condvar::new(),
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("berth-commit".into())
                .spawn(move || run(&shared))?
        };
        Ok(Db {
            owner: Arc::new(Owner {
                shared,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Opens (or creates) a database file and wraps it: for tests and tools.
    pub fn create(path: impl AsRef<std::path::Path>) -> Result<Db, redb::DatabaseError> {
        let database = Database::create(path)?;
        Db::new(Arc::new(database)).map_err(|e| redb::DatabaseError::Storage(e.into()))
    }

    /// The database, for reads (and for crates that do not write through the loop).
    pub fn database(&self) -> &Arc<Database> {
        &self.owner.shared.database
    }

    /// Queues `f`, which writes its crate's tables into the next group transaction. It runs
    /// on the loop's thread, after every write queued before it; it may run more than once
    /// (when another write in its batch fails), so it writes the same thing each time. The
    /// returned [`Commit`] resolves to `f`'s value once the transaction is durable.
    pub fn write<T, E, F>(&self, f: F) -> Commit<Result<T, E>>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, E> + Send + 'static,
    {
        let slot = Slot::new();
        let job = Box::new(Typed {
            f,
            result: None,
            slot: slot.clone(),
        });
        self.queue(job, &slot);
        Commit { slot }
    }

    /// Resolves once every write queued before it is durable: at once (without an `fsync`)
    /// when they were all committed already.
    pub fn flush<E: From<Error> + Send + 'static>(&self) -> Commit<Result<(), E>> {
        let slot = Slot::new();
        self.queue(Box::new(Barrier { slot: slot.clone() }), &slot);
        Commit { slot }
    }

    /// Queues `job`, or answers `slot` with [`Error::Stopped`] once the loop has ended.
    fn queue<R, E: From<Error>>(&self, job: Box<dyn Job>, slot: &Slot<Result<R, E>>) {
        let shared = &self.owner.shared;
        {
            let mut q = lock(&shared.queue);
            if q.closed {
                drop(q);
                slot.fill(Err(E::from(Error::Stopped)));
                return;
            }
            q.jobs.push_back(job);
        }
        shared.queued.notify_one();
    }

    /// How many commits and writes the loop has done.
    pub fn stats(&self) -> CommitStats {
        let s = &self.owner.shared;
        CommitStats {
            commits: s.commits.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
        }
    }
}

impl Deref for Db {
    type Target = Database;

    fn deref(&self) -> &Database {
        &self.owner.shared.database
    }
}

/// The loop: waits for writes, commits each batch, until closed and drained.
fn run(shared: &Shared) {
    loop {
        let batch: Vec<Box<dyn Job>> = {
            let mut q = lock(&shared.queue);
            while q.jobs.is_empty() && !q.closed {
                q = shared.queued.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.jobs.is_empty() {
                return;
            }
            q.jobs.drain(..).collect()
        };
        commit_batch(shared, batch);
    }
}

/// Runs a batch in one durable transaction. A job whose closure fails is answered with its
/// own error and the batch runs again without it, in a fresh transaction.
fn commit_batch(shared: &Shared, mut batch: Vec<Box<dyn Job>>) {
    if batch.iter().all(|j| !j.writes()) {
        // Everything queued before these flushes was in an earlier, finished batch.
        for job in batch {
            job.finish(Ok(()));
        }
        return;
    }
    loop {
        let tx = match shared.database.begin_write() {
            Ok(tx) => tx,
            Err(e) => {
                let e = Error::Begin(Arc::new(e));
                tracing::warn!(error = %chain(&e), writes = batch.len(), "metadata writes failed");
                for job in batch {
                    job.finish(Err(e.clone()));
                }
                return;
            }
        };
        let mut failed = Vec::new();
        for (i, job) in batch.iter_mut().enumerate() {
            if !job.write(&tx) {
                failed.push(i);
            }
        }
        if failed.is_empty() {
            let writes = batch.iter().filter(|j| j.writes()).count();
            let result = commit(tx, shared, writes);
            for job in batch {
                job.finish(result.clone());
            }
            return;
        }
        // Nothing of this transaction reaches the disk; the failed jobs leave the batch.
        drop(tx);
        for i in failed.into_iter().rev() {
            batch.remove(i).finish(Ok(()));
        }
        if batch.is_empty() {
            return;
        }
    }
}

fn commit(mut tx: WriteTransaction, shared: &Shared, writes: usize) -> Result<(), Error> {
    // The default, said explicitly: this is the whole point of the loop.
    if let Err(e) = tx.set_durability(Durability::Immediate) {
        tracing::warn!(error = %e, "cannot ask for a durable commit");
    }
    match tx.commit() {
        Ok(()) => {
            shared.commits.fetch_add(1, Ordering::Relaxed);
            shared.writes.fetch_add(writes as u64, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            let e = Error::Commit(Arc::new(e));
            tracing::warn!(error = %chain(&e), writes, "metadata commit failed");
            Err(e)
        }
    }
}

/// `e` and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use redb::{ReadableDatabase, TableDefinition};

    use super::*;

    const T: TableDefinition<&str, u64> = TableDefinition::new("test");

    #[derive(Debug)]
    enum TestError {
        Db,
        Refused,
    }

    impl From<Error> for TestError {
        fn from(_: Error) -> Self {
            TestError::Db
        }
    }

    fn put(db: &Db, key: &'static str, v: u64) -> Commit<Result<(), TestError>> {
        db.write(move |tx: &WriteTransaction| {
            tx.open_table(T)
                .unwrap()
                .insert(key, v)
                .map_err(|_| TestError::Refused)?;
            Ok(())
        })
    }

    fn get(db: &Db, key: &str) -> Option<u64> {
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(T).ok()?;
        t.get(key).unwrap().map(|v| v.value())
    }

    #[test]
    fn a_write_is_visible_once_acknowledged_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let db = Db::create(&path).unwrap();
            put(&db, "a", 1).wait().unwrap();
            assert_eq!(get(&db, "a"), Some(1));
            assert_eq!(db.stats().writes, 1);
        }
        // The loop ended with the last handle and released the file.
        let db = Db::create(&path).unwrap();
        assert_eq!(get(&db, "a"), Some(1));
    }

    #[test]
    fn writes_in_flight_share_commits_and_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(dir.path().join("db")).unwrap();
        const THREADS: usize = 16;
        const EACH: u64 = 20;
        let start = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|i| {
                let (db, start) = (db.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let key: &'static str = Box::leak(format!("k{i}").into_boxed_str());
                    for v in 1..=EACH {
                        put(&db, key, v).wait().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Writes queued without waiting land in the order they were queued.
        let pending: Vec<_> = (1..=50).map(|v| put(&db, "ordered", v)).collect();
        for p in pending {
            p.wait().unwrap();
        }
        assert_eq!(get(&db, "ordered"), Some(50));
        for i in 0..THREADS {
            assert_eq!(get(&db, &format!("k{i}")), Some(EACH));
        }
        let s = db.stats();
        assert_eq!(s.writes, THREADS as u64 * EACH + 50);
        assert!(s.commits < s.writes, "group commit shared no fsync: {s:?}");
    }

    #[test]
    fn a_failing_write_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(dir.path().join("db")).unwrap();
        // Hold the loop inside a batch so that the next three queue up together.
        let gate = Arc::new(Barrier::new(2));
        let held = {
            // Once: a batch that fails runs again.
            let mut gate = Some(gate.clone());
            db.write(move |_tx: &WriteTransaction| {
                if let Some(g) = gate.take() {
                    g.wait();
                }
                Ok::<(), TestError>(())
            })
        };
        let before = put(&db, "before", 1);
        let bad = db.write(|tx: &WriteTransaction| {
            // Writes something, then fails: none of it may reach the disk.
            tx.open_table(T).unwrap().insert("bad", 9).unwrap();
            Err::<(), _>(TestError::Refused)
        });
        let after = put(&db, "after", 2);
        gate.wait();
        held.wait().unwrap();
        before.wait().unwrap();
        assert!(matches!(bad.wait(), Err(TestError::Refused)));
        after.wait().unwrap();
        assert_eq!(get(&db, "before"), Some(1));
        assert_eq!(get(&db, "after"), Some(2));
        assert_eq!(get(&db, "bad"), None);
    }

    #[test]
    fn a_commit_can_be_awaited() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(dir.path().join("db")).unwrap();
        let c = put(&db, "x", 3);
        // A minimal executor: the waker is a thread unpark.
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut c = Box::pin(c);
        loop {
            match c.as_mut().poll(&mut cx) {
                Poll::Ready(r) => break r.unwrap(),
                Poll::Pending => std::thread::park(),
            }
        }
        assert_eq!(get(&db, "x"), Some(3));
        // Nothing queued since: a flush costs no commit.
        let before = db.stats();
        db.flush::<Error>().wait().unwrap();
        assert_eq!(db.stats(), before);
        // Behind a write, it waits for that write's commit.
        let w = put(&db, "y", 4);
        db.flush::<Error>().wait().unwrap();
        assert_eq!(get(&db, "y"), Some(4));
        w.wait().unwrap();
    }
}
