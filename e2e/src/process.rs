//! Helper programs and the process table: running `ip`/`ldd`, finding what a run started.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use crate::error::{Error, IoContext, Result};

/// Runs a helper program to completion and returns its stdout; a non-zero exit is an error
/// carrying its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let line = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .io_context(|| format!("run {line}"))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: line,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One process as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// Target of /proc/PID/exe (None for kernel threads or when unreadable).
    pub exe: Option<PathBuf>,
    /// Command line, arguments joined by spaces.
    pub cmdline: String,
    /// The one-letter state (R, S, Z, ...).
    pub state: char,
}

/// Parses `/proc/PID/stat` into (state, ppid); the command name may hold spaces and
/// parentheses, so the fields are read after the last ')'.
pub fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Every process currently visible in /proc.
pub fn all_processes() -> Vec<ProcInfo> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let base = entry.path();
        let Some((state, ppid)) = std::fs::read_to_string(base.join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        else {
            continue;
        };
        let exe = std::fs::read_link(base.join("exe")).ok();
        let cmdline = std::fs::read(base.join("cmdline"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out.push(ProcInfo {
            pid,
            ppid,
            exe,
            cmdline,
            state,
        });
    }
    out
}

/// The descendants of `ancestor` in `procs` (children, their children, ...), sorted by pid.
pub fn descendants(procs: &[ProcInfo], ancestor: i32) -> Vec<ProcInfo> {
    let mut children: HashMap<i32, Vec<&ProcInfo>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut out = Vec::new();
    let mut stack = vec![ancestor];
    while let Some(pid) = stack.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            if child.pid != ancestor {
                out.push((*child).clone());
                stack.push(child.pid);
            }
        }
    }
    out.sort_by_key(|p| p.pid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name_parses() {
        let stat = "4242 (we (i)rd) name) S 17 4242 4242 0 -1 4194560 0 0";
        assert_eq!(parse_stat(stat), Some(('S', 17)));
        assert_eq!(parse_stat("garbage"), None);
    }

    fn p(pid: i32, ppid: i32) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            exe: None,
            cmdline: String::new(),
            state: 'S',
        }
    }

    #[test]
    fn descendants_follow_the_whole_tree() {
        let procs = vec![p(1, 0), p(10, 1), p(11, 10), p(12, 11), p(20, 1), p(13, 10)];
        let pids: Vec<i32> = descendants(&procs, 10).iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![11, 12, 13]);
        assert!(descendants(&procs, 12).is_empty());
    }
}
