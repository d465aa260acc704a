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

/// The sysctl's file under `/proc/sys`. kubelet sends names with `.` between components;
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

/// Checks a pod's sysctls against its namespaces; the error names the first one refused.
pub fn validate(sysctls: &[(String, String)], pod: PodIsolation) -> Result<()> {
    for (name, value) in sysctls {
        let path = proc_path(name);
        if path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
            || name.contains('\0')
            || value.contains('\0')
        {
            return Err(Error::InvalidArgument(format!(
                "sysctl {name:?} is not a valid sysctl name"
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
            assert_eq!(e.class(), crate::ErrorClass::InvalidArgument);
            assert!(e.to_string().contains(name), "{e}");
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
