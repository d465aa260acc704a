//! What the host shows of the objects a leak check looks for, read one way for both leak
//! checks: `berth debug leaks` (this crate's [`account`](super::account)) and the e2e
//! harness, which looks for what a test run left behind. The mount table, the cgroup
//! hierarchies and the network interfaces of the caller's namespace.

use std::path::{Path, PathBuf};

use berth_runtime::sys::unescape_mountinfo;

/// One mount as `/proc/self/mountinfo` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// File system type.
    pub fstype: String,
    /// Mount source.
    pub source: String,
}

/// Parses mountinfo text (octal escapes such as `\040` decoded).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = unescape_mountinfo(left.split_whitespace().nth(4)?);
            let mut r = right.split_whitespace();
            let fstype = r.next()?.to_string();
            let source = unescape_mountinfo(r.next().unwrap_or(""));
            Some(Mount {
                mount_point: mount_point.into(),
                fstype,
                source,
            })
        })
        .collect()
}

/// The mounts of this process's mount namespace.
pub fn mounts() -> Vec<Mount> {
    parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// Mounts at or below `dir`, deepest first (the order to unmount them in).
pub fn mounts_under(dir: &Path) -> Vec<Mount> {
    let mut v: Vec<Mount> = mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    v
}

/// Mount points of the cgroup hierarchies (v1 controllers and v2).
pub fn cgroup_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = mounts()
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| m.mount_point)
        .collect();
    roots.sort();
    roots.dedup();
    roots
}

/// The interface names in a `/proc/net/dev` table, sorted.
pub fn parse_net_dev(dev: &str) -> Vec<String> {
    let mut names: Vec<String> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names
}

/// The network interfaces of the calling thread's network namespace (`/proc/thread-self`:
/// `/sys/class/net` shows the namespace sysfs was mounted in, which may be another, and a
/// thread may have entered a namespace its process has not).
pub fn links() -> std::io::Result<Vec<String>> {
    std::fs::read_to_string("/proc/thread-self/net/dev").map(|dev| parse_net_dev(&dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let text = "36 35 98:0 /mnt1 /tmp/be-1/a\\040b rw,noatime master:1 - overlay overlay rw\n\
                    37 35 98:0 / /sys/fs/cgroup/memory rw shared:9 - cgroup cgroup rw,memory\n";
        let m = parse_mountinfo(text);
        assert_eq!(m[0].mount_point, PathBuf::from("/tmp/be-1/a b"));
        assert_eq!(m[0].fstype, "overlay");
        assert_eq!(m[1].fstype, "cgroup");
        assert_eq!(m[1].mount_point, PathBuf::from("/sys/fs/cgroup/memory"));
    }

    #[test]
    fn net_dev_names_are_the_interfaces() {
        let dev = "Inter-|   Receive\n face |bytes packets\n    lo: 1 2 3\nberth0: 4 5 6\n";
        assert_eq!(parse_net_dev(dev), vec!["berth0", "lo"]);
    }
}
