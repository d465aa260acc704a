//! What a run left behind: processes it started, mounts under its workdir, network
//! namespaces and links, cgroups. The harness snapshots a [`Baseline`] before the tests,
//! [`check`]s after them, fails the run on any [`Leak`], and then [`clean`]s them up.
//!
//! The host is read the way `berth debug leaks` reads it (`berth_cri::leaks::host`: the
//! mount table, cgroup hierarchies, links); what is here is what only a test run has: its
//! baseline, the processes it started, its namespaces and cgroup parents, and the clean-up.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

pub use berth_cri::leaks::host::{Mount, cgroup_roots, mounts, mounts_under, parse_mountinfo};

use berth_cri::leaks::host;

use crate::env::NETNS_PREFIX;
use crate::netns::{self, NodeNetns};
use crate::process::{self, ProcInfo};

/// Every cgroup directory whose name starts with `berth`, and everything below those, in
/// every hierarchy.
pub fn berth_cgroups() -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for root in cgroup_roots() {
        walk_cgroups(&root, 0, false, &mut out);
    }
    out
}

fn walk_cgroups(dir: &Path, depth: u32, inside: bool, out: &mut BTreeSet<PathBuf>) {
    if depth > 12 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        let ours = inside || e.file_name().to_string_lossy().starts_with("berth");
        if ours {
            out.insert(path.clone());
        }
        walk_cgroups(&path, depth + 1, ours, out);
    }
}

/// Global state before the run, to tell new objects from old ones.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    /// Names under /run/netns.
    pub netns: BTreeSet<String>,
    /// Links in the host network namespace.
    pub host_links: BTreeSet<String>,
    /// `berth*` cgroups.
    pub cgroups: BTreeSet<PathBuf>,
}

impl Baseline {
    /// Takes the snapshot (from the host network namespace).
    pub fn take() -> Baseline {
        Baseline {
            netns: netns::named_namespaces().into_iter().collect(),
            host_links: host::links().unwrap_or_default().into_iter().collect(),
            cgroups: berth_cgroups(),
        }
    }
}

/// Something a run left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leak {
    /// A process the run started that still runs.
    Process(ProcInfo),
    /// A mount below the run's workdir.
    Mount(Mount),
    /// A network namespace of this run other than the node netns.
    Netns(String),
    /// A link left in the node netns (anything but `lo`).
    Link(String),
    /// A cgroup created below one of this run's cgroup parents.
    Cgroup(PathBuf),
}

impl fmt::Display for Leak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Leak::Process(p) => write!(
                f,
                "process {} ({}): {}",
                p.pid,
                p.exe
                    .as_deref()
                    .map_or("?".into(), |e| e.display().to_string()),
                p.cmdline
            ),
            Leak::Mount(m) => write!(
                f,
                "mount {} ({} from {})",
                m.mount_point.display(),
                m.fstype,
                m.source
            ),
            Leak::Netns(n) => write!(f, "network namespace {n}"),
            Leak::Link(l) => write!(f, "link {l} in the node netns"),
            Leak::Cgroup(c) => write!(f, "cgroup {}", c.display()),
        }
    }
}

/// What belongs to a run.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    /// The run id.
    pub run_id: &'a str,
    /// The run's workdir.
    pub workdir: &'a Path,
    /// The harness's pid (a child subreaper: everything the run started descends from it).
    pub harness_pid: i32,
    /// Descendants that are expected to live (the registry).
    pub expected_pids: Vec<i32>,
    /// The node network namespace.
    pub node_netns: &'a NodeNetns,
}

/// The result of a check: leaks fail the run, warnings are printed.
#[derive(Debug, Default)]
pub struct Report {
    /// Objects the run left behind.
    pub leaks: Vec<Leak>,
    /// New objects that look like berth's but cannot be attributed to this run (another
    /// developer's daemon or harness may have made them).
    pub warnings: Vec<String>,
}

/// Whether `path` is a cgroup of this run's cgroup parents (`/berth-e2e-<id>-*`), and
/// whether it is one of those parents itself.
fn run_cgroup(path: &Path, run_id: &str) -> Option<bool> {
    let prefix = format!("{NETNS_PREFIX}{run_id}");
    let comps: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let pos = comps.iter().position(|c| c.starts_with(&prefix))?;
    Some(pos + 1 == comps.len())
}

/// Lists what the run left behind.
pub fn check(scope: &Scope<'_>, baseline: &Baseline) -> Report {
    let mut r = Report::default();
    let procs = process::all_processes();
    for p in process::descendants(&procs, scope.harness_pid) {
        if !scope.expected_pids.contains(&p.pid) && p.state != 'Z' {
            r.leaks.push(Leak::Process(p));
        }
    }
    for m in mounts_under(scope.workdir) {
        r.leaks.push(Leak::Mount(m));
    }
    let ours = format!("{NETNS_PREFIX}{}", scope.run_id);
    for n in netns::named_namespaces() {
        if n == scope.node_netns.name() {
            continue;
        }
        if n.starts_with(&ours) {
            r.leaks.push(Leak::Netns(n));
        } else if n.starts_with("berth")
            && !n.starts_with(NETNS_PREFIX)
            && !baseline.netns.contains(&n)
        {
            r.warnings.push(format!("new network namespace {n}"));
        }
    }
    match scope.node_netns.links() {
        Ok(links) => {
            for l in links.into_iter().filter(|l| l != "lo") {
                r.leaks.push(Leak::Link(l));
            }
        }
        Err(e) => r
            .warnings
            .push(format!("cannot list node netns links: {e}")),
    }
    for l in host::links().unwrap_or_default() {
        if !baseline.host_links.contains(&l) {
            r.warnings
                .push(format!("new link {l} in the host network namespace"));
        }
    }
    for c in berth_cgroups() {
        match run_cgroup(&c, scope.run_id) {
            Some(false) => r.leaks.push(Leak::Cgroup(c)),
            Some(true) => {}
            None => {
                let other_run = c
                    .components()
                    .any(|n| n.as_os_str().to_string_lossy().starts_with(NETNS_PREFIX));
                if !baseline.cgroups.contains(&c) && !other_run {
                    r.warnings.push(format!("new cgroup {}", c.display()));
                }
            }
        }
    }
    r
}

/// Kills `pids` (SIGTERM, SIGKILL after 5 s) and reaps those that are our children.
pub fn kill_processes(pids: &[i32]) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .as_deref()
            .and_then(process::parse_stat)
            .is_some_and(|(state, _)| state != 'Z')
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
        reap_zombies(&[]);
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in pids {
        if alive(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    reap_zombies(&[]);
}

/// Reaps our zombie children (orphans reparented to us as subreaper), except `keep`.
pub fn reap_zombies(keep: &[i32]) {
    let me = std::process::id() as i32;
    for p in process::all_processes() {
        if p.ppid == me && p.state == 'Z' && !keep.contains(&p.pid) {
            let _ = waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// Removes what `leaks` lists: kills processes, detaches mounts, deletes namespaces,
/// removes cgroups (deepest first). Returns what could not be removed.
pub fn clean(leaks: &[Leak]) -> Vec<String> {
    let mut errors = Vec::new();
    let pids: Vec<i32> = leaks
        .iter()
        .filter_map(|l| match l {
            Leak::Process(p) => Some(p.pid),
            _ => None,
        })
        .collect();
    kill_processes(&pids);
    for l in leaks {
        match l {
            Leak::Mount(m) => {
                if let Err(e) = umount2(&m.mount_point, MntFlags::MNT_DETACH) {
                    errors.push(format!("umount {}: {e}", m.mount_point.display()));
                }
            }
            Leak::Netns(n) => {
                if let Err(e) = process::run("ip", &["netns", "delete", n]) {
                    errors.push(e.to_string());
                }
            }
            _ => {}
        }
    }
    let mut cgroups: Vec<&PathBuf> = leaks
        .iter()
        .filter_map(|l| match l {
            Leak::Cgroup(c) => Some(c),
            _ => None,
        })
        .collect();
    cgroups.sort_by_key(|c| std::cmp::Reverse(c.components().count()));
    for c in cgroups {
        if let Err(e) = remove_cgroup(c) {
            errors.push(format!("rmdir {}: {e}", c.display()));
        }
    }
    errors
}

/// Removes a cgroup directory and its child cgroups, deepest first.
pub fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup(&e.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

/// Removes this run's cgroup parents (`/berth-e2e-<id>-*` in every hierarchy) once they
/// are empty. Returns what could not be removed.
pub fn remove_run_cgroup_parents(run_id: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for c in berth_cgroups() {
        if run_cgroup(&c, run_id) == Some(true)
            && let Err(e) = remove_cgroup(&c)
        {
            errors.push(format!("rmdir {}: {e}", c.display()));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_inside_run_parents_are_leaks_and_parents_are_not() {
        let id = "ab12cd";
        let parent = Path::new("/sys/fs/cgroup/memory/berth-e2e-ab12cd-pods");
        assert_eq!(run_cgroup(parent, id), Some(true));
        assert_eq!(run_cgroup(&parent.join("pod1"), id), Some(false));
        assert_eq!(
            run_cgroup(Path::new("/sys/fs/cgroup/memory/berth-e2e-ffffff-x/p"), id),
            None
        );
        assert_eq!(
            run_cgroup(Path::new("/sys/fs/cgroup/memory/berth"), id),
            None
        );
    }
}
