//! Parsers for the kernel's cgroup and proc stat files (pure functions over file text).

/// Returns the value of `key` in a flat-keyed file (`key value` per line), such as v2
/// `memory.events`, `memory.stat`, `cpu.stat` or v1 `memory.oom_control`.
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        (it.next()? == key).then_some(())?;
        it.next()?.parse().ok()
    })
}

/// The values of several `keys` of a flat-keyed file in one pass over its lines (v1
/// `memory.stat` has some forty lines, and stats need four of them).
pub fn keyed_values<const N: usize>(text: &str, keys: [&str; N]) -> [Option<u64>; N] {
    let mut out = [None; N];
    let mut left = N;
    for line in text.lines() {
        let Some((key, v)) = line.split_once(' ') else {
            continue;
        };
        if let Some(i) = keys.iter().position(|k| *k == key)
            && out[i].is_none()
        {
            out[i] = v.trim().parse().ok();
            left -= 1;
            if left == 0 {
                break;
            }
        }
    }
    out
}

/// The OOM kill count of a cgroup: `oom_kill` in v2 `memory.events` or v1
/// `memory.oom_control` (both use the same key).
pub fn oom_kills(text: &str) -> u64 {
    keyed_value(text, "oom_kill").unwrap_or(0)
}

/// Receive and transmit counters of one interface, from `/proc/<pid>/net/dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDev {
    /// Interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Transmit errors.
    pub tx_errors: u64,
}

/// Parses `/proc/<pid>/net/dev`; lines that do not parse are skipped.
pub fn net_dev(text: &str) -> Vec<NetDev> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            (f.len() >= 16).then(|| NetDev {
                name: name.trim().to_owned(),
                rx_bytes: f[0],
                rx_errors: f[2],
                tx_bytes: f[8],
                tx_errors: f[10],
            })
        })
        .collect()
}

/// Parses a limit file (`memory.max`, `pids.max`): `max` is `None`.
pub fn limit(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        v => v.parse().ok(),
    }
}

/// One cgroup hierarchy mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// Where the hierarchy is mounted.
    pub mount_point: String,
    /// `true` for a cgroup2 (unified) hierarchy.
    pub v2: bool,
    /// For v1: the controllers bound to the hierarchy (`cpu`, `cpuacct`, `name=systemd`, ...).
    pub controllers: Vec<String>,
}

/// Lists the cgroup and cgroup2 mounts in `/proc/self/mountinfo` text.
pub fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = pre.split(' ').nth(4)?.to_owned();
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let opts = post.nth(1).unwrap_or("");
            match fstype {
                "cgroup2" => Some(CgroupMount {
                    mount_point,
                    v2: true,
                    controllers: Vec::new(),
                }),
                "cgroup" => {
                    let known = [
                        "cpu",
                        "cpuacct",
                        "cpuset",
                        "memory",
                        "pids",
                        "blkio",
                        "devices",
                        "freezer",
                        "net_cls",
                        "net_prio",
                        "perf_event",
                        "hugetlb",
                        "rdma",
                        "misc",
                    ];
                    let controllers = opts
                        .split(',')
                        .filter(|o| known.contains(o) || o.starts_with("name="))
                        .map(str::to_owned)
                        .collect();
                    Some(CgroupMount {
                        mount_point,
                        v2: false,
                        controllers,
                    })
                }
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oom_kill_from_v2_and_v1_files() {
        let v2 = "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kills(v2), 1);
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(oom_kills(v1), 3);
        assert_eq!(oom_kills(""), 0);
        assert_eq!(
            keyed_value("usage_usec 1234\nuser_usec 1000\n", "usage_usec"),
            Some(1234)
        );
        assert_eq!(keyed_value("usage_usec x\n", "usage_usec"), None);
    }

    #[test]
    fn reads_several_keys_in_one_pass() {
        let stat = "cache 10\nrss 20\ntotal_rss 200\ntotal_inactive_file 30\nbad x\n";
        assert_eq!(
            keyed_values(stat, ["total_inactive_file", "total_rss", "missing", "bad"]),
            [Some(30), Some(200), None, None]
        );
        // A key that only prefixes another is not it.
        assert_eq!(keyed_values("total_rss_huge 5\n", ["total_rss"]), [None]);
        assert_eq!(keyed_values("", ["a"]), [None]);
    }

    #[test]
    fn parses_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n  eth0: 5000 10 1 0 0 0 0 0 7000 12 2 0 0 0 0 0\nbroken: 1 2\n";
        let devs = net_dev(text);
        assert_eq!(devs.len(), 2);
        assert_eq!(
            devs[1],
            NetDev {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_errors: 1,
                tx_bytes: 7000,
                tx_errors: 2
            }
        );
    }

    #[test]
    fn parses_limits() {
        assert_eq!(limit("max\n"), None);
        assert_eq!(limit("104857600\n"), Some(104_857_600));
        assert_eq!(limit("junk"), None);
    }
    #[test]
    fn finds_cgroup_mounts() {
        let text = "30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n\
31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw shared:10 - cgroup cgroup rw,cpu,cpuacct\n\
32 25 0:28 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,xattr,name=systemd\n\
33 25 0:29 / /proc rw - proc proc rw\n";
        let m = cgroup_mounts(text);
        assert_eq!(m.len(), 3);
        assert!(m[0].v2 && m[0].mount_point == "/sys/fs/cgroup/unified");
        assert_eq!(m[1].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(m[2].controllers, vec!["name=systemd"]);
    }
}
