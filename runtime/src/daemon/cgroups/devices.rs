//! The device cgroup: which device nodes a container may open or create. Without it a
//! container holding CAP_MKNOD (in the default set) could `mknod` the node's disk and read
//! it. Every container starts from "deny all" and gets the same defaults as containerd's
//! (runc's): `mknod` of any node, the pseudo devices, ttys and ptys, and `/dev/net/tun`; then
//! the devices its config names. Privileged containers get everything.

use super::DeviceRule;

fn rule(kind: char, major: Option<u64>, minor: Option<u64>, access: &str) -> DeviceRule {
    DeviceRule {
        kind,
        major,
        minor,
        access: access.to_owned(),
    }
}

/// The devices every container may use.
pub fn default_rules() -> Vec<DeviceRule> {
    vec![
        rule('c', None, None, "m"),
        rule('b', None, None, "m"),
        rule('c', Some(1), Some(3), "rwm"),    // null
        rule('c', Some(1), Some(5), "rwm"),    // zero
        rule('c', Some(1), Some(7), "rwm"),    // full
        rule('c', Some(1), Some(8), "rwm"),    // random
        rule('c', Some(1), Some(9), "rwm"),    // urandom
        rule('c', Some(5), Some(0), "rwm"),    // tty
        rule('c', Some(5), Some(1), "rwm"),    // console
        rule('c', Some(5), Some(2), "rwm"),    // ptmx
        rule('c', Some(136), None, "rwm"),     // pts
        rule('c', Some(10), Some(200), "rwm"), // net/tun
    ]
}

/// A rule as `devices.allow` takes it: `c 1:3 rwm`, `a *:* rwm`.
pub fn v1_line(r: &DeviceRule) -> String {
    let n = |v: Option<u64>| v.map_or_else(|| "*".to_owned(), |v| v.to_string());
    format!("{} {}:{} {}", r.kind, n(r.major), n(r.minor), r.access)
}

/// The rule for a host device node of the given `st_mode` and `st_rdev`, or `None` when it
/// is neither a character nor a block device.
pub fn rule_for_node(mode: u32, rdev: u64, access: &str) -> Option<DeviceRule> {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        _ => return None,
    };
    rule_for_kind(
        kind,
        libc::major(rdev) as u64,
        libc::minor(rdev) as u64,
        access,
    )
}

/// The rule for a node of kind `c` or `b` and the given numbers, or `None` for any other
/// kind (a fifo needs no rule).
pub fn rule_for_kind(kind: char, major: u64, minor: u64, access: &str) -> Option<DeviceRule> {
    if kind != 'c' && kind != 'b' {
        return None;
    }
    let access: String = access.chars().filter(|c| "rwm".contains(*c)).collect();
    let access = if access.is_empty() {
        "rwm".to_owned()
    } else {
        access
    };
    Some(rule(kind, Some(major), Some(minor), &access))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_what_the_kernel_takes() {
        let lines: Vec<String> = default_rules().iter().map(v1_line).collect();
        assert_eq!(lines[0], "c *:* m");
        assert!(lines.contains(&"c 1:3 rwm".to_owned()));
        assert!(lines.contains(&"c 136:* rwm".to_owned()));
        assert_eq!(v1_line(&rule('a', None, None, "rwm")), "a *:* rwm");
    }

    #[test]
    fn host_nodes_become_rules() {
        let r = rule_for_node(libc::S_IFCHR | 0o666, libc::makedev(1, 3), "rw").unwrap();
        assert_eq!(v1_line(&r), "c 1:3 rw");
        let r = rule_for_node(libc::S_IFBLK | 0o660, libc::makedev(8, 1), "").unwrap();
        assert_eq!(v1_line(&r), "b 8:1 rwm");
        assert!(rule_for_node(libc::S_IFREG | 0o644, 0, "rwm").is_none());
    }
}
