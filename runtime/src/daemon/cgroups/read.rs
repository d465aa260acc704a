//! Reading one cgroup's usage through files opened once: each stat file is opened (an
//! `openat` of a bare file name relative to the cgroup's directory in its hierarchy) the
//! first time a figure needs it, kept open, and read again with `pread` at offset 0, into
//! one buffer the caller reuses across cgroups.
//!
//! A node with hundreds of pods reads a thousand cgroups per stats call, every second when
//! kubelet polls. Opening a cgroupfs file costs a name lookup and dentry revalidation in
//! kernfs; first the path walk through `/sys/fs/cgroup/<controller>/kubepods/...`, then
//! the `openat` per file per read were most of what such a call cost. cgroupfs (kernfs)
//! regenerates a file's content on every read at offset 0, so a kept file never returns a
//! stale value; the directories are `O_PATH` fds that pin no cgroup state either.
//!
//! One reading of a cgroup serves the stats calls of the next [`SHARED_FOR`] (kubelet
//! sends two that both hold every container's stats), and a pod's `/proc/<pid>/net/dev`
//! is kept open the same way ([`KeptFile`]) until the pod stops.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat};
use nix::sys::resource::{Resource, getrlimit};
use nix::sys::stat::Mode;

use super::CgroupUsage;
use super::limits::Version;
use super::parse::{keyed_values, limit, oom_kills};
use crate::daemon::runtime::lock;

/// Which of the figures that cost a read of their own a caller reports; CPU and memory
/// are always read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// `pids.current` (pod stats, metrics).
    pub processes: bool,
    /// The OOM kill count (metrics).
    pub oom_kills: bool,
}

impl Wanted {
    /// Every figure [`CgroupUsage`] holds.
    pub const ALL: Wanted = Wanted {
        processes: true,
        oom_kills: true,
    };
}

/// Where the CPU counter of a cgroup is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CpuSource {
    /// v1 `cpuacct.usage`, nanoseconds.
    Cpuacct,
    /// v2 `cpu.stat` `usage_usec`.
    CpuStat,
}

/// The stat files a cgroup's figures are read from, each a slot of [`CgroupDirs::files`].
#[derive(Debug, Clone, Copy)]
enum StatFile {
    Cpu,
    Pids,
    MemoryUsage,
    MemoryStat,
    Oom,
    MemoryLimit,
    Swap,
}

/// How many [`StatFile`]s there are.
const STAT_FILES: usize = 7;

/// A stat file after its first open.
#[derive(Debug)]
enum Kept {
    /// Open, read again at offset 0.
    Open(File),
    /// Absent from the cgroup (v1 `memory.memsw.*` without swap accounting, v2
    /// `memory.swap.current` without swap): never looked up again, each lookup of a
    /// missing name being as dear as an open.
    Missing,
}

/// Open directories of one cgroup, one per hierarchy stats read from (v1: the cpuacct,
/// memory and pids hierarchies; v2: the unified one, opened once), and the stat files read
/// so far. The default holds none (no cgroups) and is complete.
#[derive(Debug)]
pub struct CgroupDirs {
    dirs: Vec<OwnedFd>,
    cpu: Option<(usize, CpuSource)>,
    memory: Option<(usize, Version)>,
    pids: Option<usize>,
    /// Every hierarchy that holds a controller stats read was opened: worth keeping.
    complete: bool,
    /// Each stat file, opened by the first read that needs its figure.
    files: [OnceLock<Kept>; STAT_FILES],
    /// Files kept open, counted against the node's budget until this set is dropped.
    kept_files: AtomicUsize,
}

impl Default for CgroupDirs {
    fn default() -> Self {
        CgroupDirs {
            dirs: Vec::new(),
            cpu: None,
            memory: None,
            pids: None,
            complete: true,
            files: Default::default(),
            kept_files: AtomicUsize::new(0),
        }
    }
}

impl Drop for CgroupDirs {
    fn drop(&mut self) {
        release(*self.kept_files.get_mut());
    }
}

/// Builds a [`CgroupDirs`], opening each hierarchy's directory once.
pub(super) struct DirsBuilder {
    dirs: CgroupDirs,
    opened: Vec<std::path::PathBuf>,
}

impl DirsBuilder {
    pub(super) fn new() -> Self {
        DirsBuilder {
            dirs: CgroupDirs::default(),
            opened: Vec::new(),
        }
    }

    /// Opens `dir` (or finds it opened already); `None` when it cannot be opened.
    fn index(&mut self, dir: &Path) -> Option<usize> {
        if let Some(i) = self.opened.iter().position(|d| d == dir) {
            return Some(i);
        }
        // O_PATH: no read access is needed on the directory, only a base for openat.
        match open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => {
                self.dirs.dirs.push(fd);
                self.opened.push(dir.to_owned());
                Some(self.dirs.dirs.len() - 1)
            }
            Err(_) => {
                self.dirs.complete = false;
                None
            }
        }
    }

    pub(super) fn cpu(&mut self, dir: &Path, source: CpuSource) {
        self.dirs.cpu = self.index(dir).map(|i| (i, source));
    }

    pub(super) fn memory(&mut self, dir: &Path, version: Version) {
        self.dirs.memory = self.index(dir).map(|i| (i, version));
    }

    pub(super) fn pids(&mut self, dir: &Path) {
        self.dirs.pids = self.index(dir);
    }

    pub(super) fn build(self) -> CgroupDirs {
        self.dirs
    }
}

/// Where each cgroup version keeps the memory figures the two read alike.
struct MemoryNames {
    usage: &'static CStr,
    oom: &'static CStr,
    /// `memory.stat` keys: inactive file pages, anonymous memory, page faults, major ones.
    stat: [&'static str; 4],
}

impl MemoryNames {
    fn of(version: Version) -> Self {
        match version {
            Version::V1 => MemoryNames {
                usage: c"memory.usage_in_bytes",
                oom: c"memory.oom_control",
                stat: [
                    "total_inactive_file",
                    "total_rss",
                    "total_pgfault",
                    "total_pgmajfault",
                ],
            },
            Version::V2 => MemoryNames {
                usage: c"memory.current",
                oom: c"memory.events",
                stat: ["inactive_file", "anon", "pgfault", "pgmajfault"],
            },
        }
    }
}

/// The largest stat file read; v1 `memory.stat`, the largest, is about 2 KiB.
const MAX_STAT_FILE: usize = 1 << 20;

/// Reads all of `file` from offset 0 into `buf` in one `pread`: a cgroupfs file is
/// generated afresh by a read at offset 0 and handed over whole when the buffer holds it
/// (a short read is its end), so one call gives one consistent snapshot even when two
/// stats calls read the same kept file at once. A full buffer is grown and read again.
fn pread_all<'b>(file: &File, buf: &'b mut Vec<u8>) -> Option<&'b str> {
    if buf.len() < 8192 {
        buf.resize(8192, 0);
    }
    loop {
        let n = loop {
            match file.read_at(buf, 0) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        };
        if n < buf.len() {
            return std::str::from_utf8(&buf[..n]).ok();
        }
        if buf.len() >= MAX_STAT_FILE {
            return None;
        }
        let grown = buf.len() * 2;
        buf.resize(grown, 0);
    }
}

impl CgroupDirs {
    /// Whether every hierarchy was opened; an incomplete set is not worth keeping (it is
    /// opened again on the next call, when the cause may be gone).
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Reads stat file `which`, named `name` in directory `dir`, into `buf`: through the
    /// kept file, or opened now and kept when the node's budget of fds allows (else read
    /// and closed, as before files were kept). `None` when it cannot be read.
    fn read<'b>(
        &self,
        dir: usize,
        which: StatFile,
        name: &CStr,
        buf: &'b mut Vec<u8>,
    ) -> Option<&'b str> {
        let slot = &self.files[which as usize];
        if let Some(kept) = slot.get() {
            return match kept {
                Kept::Open(file) => pread_all(file, buf),
                Kept::Missing => None,
            };
        }
        let file = match openat(
            &self.dirs[dir],
            name,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => {
                // The kernel's set of files of a cgroup is fixed when the cgroup is made.
                let _ = slot.set(Kept::Missing);
                return None;
            }
            // Another failure (out of fds, a signal) may pass: tried again next call.
            Err(_) => return None,
        };
        if !reserve(1) {
            return pread_all(&file, buf);
        }
        match slot.set(Kept::Open(file)) {
            Ok(()) => {
                self.kept_files.fetch_add(1, Ordering::SeqCst);
                match slot.get() {
                    Some(Kept::Open(file)) => pread_all(file, buf),
                    _ => None,
                }
            }
            // A concurrent read kept its own meanwhile: this one is read and closed.
            Err(Kept::Open(file)) => {
                release(1);
                pread_all(&file, buf)
            }
            Err(Kept::Missing) => {
                release(1);
                None
            }
        }
    }

    fn read_u64(&self, dir: usize, which: StatFile, name: &CStr, buf: &mut Vec<u8>) -> Option<u64> {
        self.read(dir, which, name, buf)?.trim().parse().ok()
    }

    /// The cgroup's usage now (all its descendants included), read fresh from the kernel.
    /// `buf` is scratch space the caller may reuse across cgroups.
    pub fn usage(&self, want: Wanted, buf: &mut Vec<u8>) -> CgroupUsage {
        use StatFile as F;
        let mut u = CgroupUsage::default();
        if let Some((i, source)) = self.cpu {
            u.cpu_ns = match source {
                CpuSource::Cpuacct => self.read_u64(i, F::Cpu, c"cpuacct.usage", buf),
                CpuSource::CpuStat => self
                    .read(i, F::Cpu, c"cpu.stat", buf)
                    .and_then(|t| keyed_values(t, ["usage_usec"])[0])
                    .map(|us| us.saturating_mul(1000)),
            };
        }
        if want.processes {
            u.processes = self
                .pids
                .and_then(|i| self.read_u64(i, F::Pids, c"pids.current", buf));
        }
        let Some((i, version)) = self.memory else {
            return u;
        };
        let names = MemoryNames::of(version);
        u.memory_usage = self.read_u64(i, F::MemoryUsage, names.usage, buf);
        let [inactive, rss, pgfault, pgmajfault] = self
            .read(i, F::MemoryStat, c"memory.stat", buf)
            .map_or([None; 4], |t| keyed_values(t, names.stat));
        u.working_set = u
            .memory_usage
            .map(|m| m.saturating_sub(inactive.unwrap_or(0)));
        u.rss = rss;
        u.page_faults = pgfault;
        u.major_page_faults = pgmajfault;
        if want.oom_kills {
            u.oom_kills = self.read(i, F::Oom, names.oom, buf).map_or(0, oom_kills);
        }
        match version {
            Version::V1 => {
                // v1 reports "unlimited" as the largest page-aligned i64.
                u.memory_limit = self
                    .read_u64(i, F::MemoryLimit, c"memory.limit_in_bytes", buf)
                    .filter(|l| *l < 1 << 62);
                u.swap_usage = self
                    .read_u64(i, F::Swap, c"memory.memsw.usage_in_bytes", buf)
                    .zip(u.memory_usage)
                    .map(|(sw, m)| sw.saturating_sub(m));
            }
            Version::V2 => {
                u.memory_limit = self
                    .read(i, F::MemoryLimit, c"memory.max", buf)
                    .and_then(limit);
                u.swap_usage = self.read_u64(i, F::Swap, c"memory.swap.current", buf);
            }
        }
        u
    }
}

/// Directory and stat file fds kept by every [`CgroupDirs`] together.
#[cfg(not(test))]
fn kept_count() -> &'static AtomicUsize {
    static KEPT: AtomicUsize = AtomicUsize::new(0);
    &KEPT
}

/// Unit tests run on parallel threads and assert exact counts: each thread counts its own.
#[cfg(test)]
fn kept_count() -> &'static AtomicUsize {
    thread_local!(static KEPT: &'static AtomicUsize = Box::leak(Box::default()));
    KEPT.with(|k| *k)
}

/// How many directory and stat file fds may be kept: half the daemon's soft
/// `RLIMIT_NOFILE`, so that a node past it (or a daemon started with a low limit) never
/// runs out of fds for its other work; its other cgroups' files are opened on each call.
fn keep_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        getrlimit(Resource::RLIMIT_NOFILE).map_or(512, |(soft, _)| (soft / 2) as usize)
    })
}

fn reserve(n: usize) -> bool {
    kept_count()
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| {
            (k + n <= keep_budget()).then_some(k + n)
        })
        .is_ok()
}

fn release(n: usize) {
    kept_count().fetch_sub(n, Ordering::SeqCst);
}

/// How long one reading of a cgroup serves the stats calls that follow it. kubelet (and
/// the benchmark's poll) sends ListContainerStats and ListPodSandboxStats together once a
/// second, and the second holds every container's stats again: one reading serves both.
/// Well under the second between two polls, so each poll reads afresh; every figure
/// carries the time of its reading, not of the call.
pub const SHARED_FOR: Duration = Duration::from_millis(500);

/// One reading of a cgroup's usage, and when it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// The figures read.
    pub usage: CgroupUsage,
    /// When the read began (for rates).
    pub at: Instant,
    /// The same moment, nanoseconds since the epoch (for the figures' timestamps).
    pub timestamp: i64,
    /// What was read: a later call wanting more reads again.
    want: Wanted,
}

impl Reading {
    /// Whether this reading holds every figure `want` asks for.
    fn covers(&self, want: Wanted) -> bool {
        (self.want.processes || !want.processes) && (self.want.oom_kills || !want.oom_kills)
    }
}

/// The directories of one pod's or container's cgroup, kept in its entry between stats
/// calls: opened by the first read, closed when the cgroup is released or the entry goes;
/// and the last reading, which the calls of the next [`SHARED_FOR`] share.
#[derive(Debug, Default)]
pub struct UsageDirs {
    dirs: Mutex<Option<Arc<CgroupDirs>>>,
    last: Mutex<Option<Reading>>,
}

impl UsageDirs {
    /// The kept directories, or those `open` makes now, kept when all opened and within
    /// the node's budget of kept fds. The lock is not held while opening.
    pub fn get_or_open(&self, open: impl FnOnce() -> CgroupDirs) -> Arc<CgroupDirs> {
        if let Some(d) = lock(&self.dirs).as_ref() {
            return Arc::clone(d);
        }
        let d = Arc::new(open());
        let n = d.dirs.len();
        if d.complete() && reserve(n) {
            let mut kept = lock(&self.dirs);
            if kept.is_none() {
                *kept = Some(Arc::clone(&d));
            } else {
                // A concurrent call kept its own meanwhile.
                release(n);
            }
        }
        d
    }

    /// The cgroup's usage with at least the figures `want` asks for: the last reading if
    /// it holds them and was taken at `since` or later, else one read now through the
    /// kept directories (`open` makes them on the first read). `since` is `None` for a
    /// call that must read afresh. No lock is held while reading.
    pub fn reading(
        &self,
        open: impl FnOnce() -> CgroupDirs,
        want: Wanted,
        since: Option<Instant>,
        buf: &mut Vec<u8>,
    ) -> Reading {
        if let Some(since) = since
            && let Some(r) = lock(&self.last).as_ref()
            && r.covers(want)
            && r.at >= since
        {
            return r.clone();
        }
        let dirs = self.get_or_open(open);
        let (at, timestamp) = (Instant::now(), crate::sys::now_ns());
        let r = Reading {
            usage: dirs.usage(want, buf),
            at,
            timestamp,
            want,
        };
        let mut last = lock(&self.last);
        // Two calls that read at once: the later reading stays.
        if last.as_ref().is_none_or(|l| l.at <= at) {
            *last = Some(r.clone());
        }
        r
    }

    /// Closes the kept directories and forgets the last reading (the cgroup is being
    /// removed, or its processes are gone: no later call is served the figures of before).
    pub fn clear(&self) {
        lock(&self.last).take();
        if let Some(d) = lock(&self.dirs).take() {
            release(d.dirs.len());
        }
    }
}

impl Drop for UsageDirs {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A kernel file read again and again, such as a pod's `/proc/<pid>/net/dev`: opened by the
/// first read and kept (counted against the same budget as the cgroup files), then re-read
/// with `pread` at offset 0, which makes procfs and cgroupfs generate it afresh. Closed for
/// good by [`KeptFile::close`]: a kept `net/dev` pins its network namespace, which must go
/// when the pod stops.
#[derive(Debug, Default)]
pub struct KeptFile(Mutex<KeptState>);

#[derive(Debug, Default)]
enum KeptState {
    #[default]
    Unopened,
    Open(Arc<File>),
    Closed,
}

impl KeptFile {
    /// The file's content now, read into `buf`; `None` when it cannot be read or is not
    /// text, or once closed. `path` is opened on the first read (and on every read when
    /// the budget of kept fds is spent).
    pub fn read<'b>(&self, path: &Path, buf: &'b mut Vec<u8>) -> Option<&'b str> {
        let kept = match &*lock(&self.0) {
            KeptState::Open(f) => Some(Arc::clone(f)),
            KeptState::Closed => return None,
            KeptState::Unopened => None,
        };
        let file = match kept {
            Some(f) => f,
            None => {
                let f = Arc::new(File::open(path).ok()?);
                let mut state = lock(&self.0);
                match &*state {
                    // Closed while it was opened: the pod is stopping.
                    KeptState::Closed => return None,
                    // A concurrent call kept its own meanwhile.
                    KeptState::Open(k) => Arc::clone(k),
                    KeptState::Unopened => {
                        if reserve(1) {
                            *state = KeptState::Open(Arc::clone(&f));
                        }
                        f
                    }
                }
            }
        };
        pread_all(&file, buf)
    }

    /// Closes the file, for good: later reads answer `None`. A read under way keeps its
    /// own reference until it ends.
    pub fn close(&self) {
        let was = std::mem::replace(&mut *lock(&self.0), KeptState::Closed);
        if let KeptState::Open(_) = was {
            release(1);
        }
    }

    /// Whether the file is kept open now.
    pub fn is_open(&self) -> bool {
        matches!(*lock(&self.0), KeptState::Open(_))
    }
}

impl Drop for KeptFile {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests;
