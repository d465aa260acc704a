//! Which pod sysctls a pod may set: only those its own namespaces isolate, as runc and
//! kubelet's safe/unsafe lists agree (IPC ones in its own IPC namespace, `net.*` in its own
//! network namespace, `kernel.domainname` in its own UTS namespace). Anything else would
//! change the node for every pod.

use crate::error::{Error, Result};

/// The namespaces a pod owns, as far as sysctls care.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodIsolation {
    /// The pod has its own network (and UTS) namespace: not hostNetwork.
    pub own_net: bool,
    /// The pod has its own IPC namespace: not hostIPC.
    pub own_ipc: bool,
}

/// The IPC-namespaced sysctls that are not under `fs.mqueue.`.
fn is_ipc(name: &str) -> bool {
    name == "kernel.sem"
        || name == "kernel.sem_next_id"
        || name.starts_with("kernel.shm")
        || name.starts_with("kernel.msg")
        || name.starts_with("fs.mqueue.")
}

/// The sysctl's file under `/proc/sys`, for a name [`validate`] accepted. kubelet sends names with `.` between components;
/// a component holding a dot itself (an interface `eth0.100`) arrives with `/` instead, so
/// the two swap.
pub fn proc_path(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            c => c,
        })
        .collect()
}

/// The longest sysctl name kubelet admits (a DNS subdomain's length).
const MAX_NAME: usize = 253;
/// The longest value: the kernel reads at most a page from a write to `/proc/sys`.
const MAX_VALUE: usize = 4096;

/// Whether `name` has kubelet's form: segments of `[a-z0-9]`, `-` and `_` that start and
/// end with a letter or digit, separated by `.` or `/`. Nothing else reaches a path.
fn valid_name(name: &str) -> bool {
    let segment_ok = |s: &str| {
        let b = s.as_bytes();
        let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        !b.is_empty()
            && b.first().is_some_and(edge)
            && b.last().is_some_and(edge)
            && b.iter().all(|c| edge(c) || *c == b'-' || *c == b'_')
    };
    name.len() <= MAX_NAME && name.split(['.', '/']).all(segment_ok)
}

/// Why `value` cannot be written to a sysctl, if it cannot. `+` and `=` are refused
/// (CVE-2022-0811: CRI-O's pinns read `k=v+k2=v2`, so a value could carry a second,
/// node-wide sysctl such as `kernel.core_pattern`); so are control characters (a newline
/// is a record separator to every tool that writes `k=v` lines) and values longer than
/// the kernel reads. Spaces and tabs stay: multi-field sysctls are written with them.
fn value_problem(value: &str) -> Option<&'static str> {
    if value.len() > MAX_VALUE {
        Some("it is longer than 4096 bytes")
    } else if value.contains(['+', '=']) {
        Some("it contains '+' or '=', which could smuggle another sysctl")
    } else if value.chars().any(|c| c.is_control() && c != '\t') {
        Some("it contains a control character (a newline, NUL, ...)")
    } else {
        None
    }
}

/// Checks a pod's sysctls against its namespaces; the error names the first one refused.
pub fn validate(sysctls: &[(String, String)], pod: PodIsolation) -> Result<()> {
    for (name, value) in sysctls {
        if !valid_name(name) {
            return Err(Error::InvalidArgument(format!(
                "sysctl {name:?} is not a valid sysctl name"
            )));
        }
        if let Some(why) = value_problem(value) {
            return Err(Error::InvalidArgument(format!(
                "sysctl {name:?} has an invalid value {value:?}: {why}"
            )));
        }
        let refused = if is_ipc(name) {
            (!pod.own_ipc).then_some("it would change the node's IPC namespace (hostIPC pod)")
        } else if name.starts_with("net.") {
            (!pod.own_net)
                .then_some("it would change the node's network namespace (hostNetwork pod)")
        } else if name == "kernel.domainname" {
            (!pod.own_net).then_some("it would change the node's UTS namespace (hostNetwork pod)")
        } else if name == "kernel.hostname" {
            Some("the pod's hostname is set by its hostname field")
        } else {
            Some("it is not isolated by a namespace of the pod and would change the whole node")
        };
        if let Some(why) = refused {
            return Err(Error::InvalidArgument(format!(
                "sysctl {name:?} is not allowed: {why}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Classify;

    fn one(name: &str, own_net: bool, own_ipc: bool) -> Result<()> {
        validate(
            &[(name.to_string(), "1".to_string())],
            PodIsolation { own_net, own_ipc },
        )
    }

    #[test]
    fn namespaced_ones_pass_in_their_own_namespace() {
        for name in [
            "kernel.shmmax",
            "kernel.shm_rmid_forced",
            "kernel.msgmax",
            "kernel.sem",
            "fs.mqueue.msg_max",
            "net.ipv4.ip_unprivileged_port_start",
            "net.ipv4.conf.eth0/100.rp_filter",
            "kernel.domainname",
        ] {
            one(name, true, true).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn host_namespaces_and_node_wide_ones_are_refused() {
        for (name, net, ipc) in [
            ("net.ipv4.ip_forward", false, true),
            ("kernel.domainname", false, true),
            ("kernel.shmmax", true, false),
            ("fs.mqueue.msg_max", true, false),
            ("vm.swappiness", true, true),
            ("kernel.pid_max", true, true),
            ("kernel.hostname", true, true),
            ("kernel.semx", true, true),
            ("fs.file-max", true, true),
        ] {
            let e = one(name, net, ipc).expect_err(name);
            assert_eq!(e.class(), crate::Class::InvalidArgument);
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    fn with_value(name: &str, value: &str) -> Result<()> {
        validate(
            &[(name.to_string(), value.to_string())],
            PodIsolation {
                own_net: true,
                own_ipc: true,
            },
        )
    }

    #[test]
    fn cve_2022_0811_values_cannot_carry_another_sysctl() {
        for value in [
            "1+kernel.core_pattern=|/x",
            "1 +kernel.core_pattern=|/x",
            "kernel.core_pattern=|/x",
            "1\nkernel.core_pattern=|/x",
            "1\rkernel.core_pattern=|/x",
            "1\0",
            "1\u{1b}[2J",
            &"1".repeat(4097),
        ] {
            let e = with_value("net.ipv4.ip_unprivileged_port_start", value).expect_err(value);
            assert_eq!(e.class(), crate::Class::InvalidArgument);
            let msg = e.to_string();
            assert!(
                msg.contains("net.ipv4.ip_unprivileged_port_start") && msg.contains("value"),
                "{msg}"
            );
        }
        // Multi-field values are written with spaces and tabs.
        for (name, value) in [
            ("net.ipv4.ip_local_port_range", "32768 60999"),
            ("net.ipv4.ping_group_range", "0\t2147483647"),
            ("kernel.sem", "250 32000 32 128"),
            ("net.ipv4.tcp_congestion_control", "cubic"),
            ("net.ipv6.conf.all.stable_secret", "2001:db8::1"),
            ("kernel.domainname", "example.com"),
        ] {
            with_value(name, value).unwrap_or_else(|e| panic!("{name}={value}: {e}"));
        }
    }

    #[test]
    fn names_have_kubelets_form() {
        for name in [
            "net.ipv4.ip_forward ",
            "net.ipv4.ip_forward\nkernel.core_pattern",
            "net.ipv4.IP_forward",
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.eth0+x.rp_filter",
            "net.ipv4.conf.-eth0.rp_filter",
            "net.ipv4.conf.eth0_.rp_filter",
            "net.ipv4.conf.eth0.rp filter",
            "net.ipv4.conf.et*.rp_filter",
            "",
            &format!("net.{}", "a".repeat(250)),
        ] {
            let e = one(name, true, true).expect_err(name);
            assert!(e.to_string().contains("not a valid sysctl name"), "{e}");
        }
    }

    #[test]
    fn names_cannot_leave_proc_sys() {
        for name in [
            "net.ipv4..x",
            "net/../../../etc/passwd",
            "net.",
            ".net.ipv4",
            "net.ipv4.conf/..",
        ] {
            assert!(one(name, true, true).is_err(), "{name}");
        }
        // `/` inside a component is a dot in the file name, never a directory separator.
        assert_eq!(
            proc_path("net.ipv4.conf.eth0/100.rp_filter"),
            "net/ipv4/conf/eth0.100/rp_filter"
        );
    }
}
