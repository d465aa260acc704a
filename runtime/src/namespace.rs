//! The kinds of Linux namespace a pod can own, as the pod records, the protocol and the
//! pod's `ns/` directory name them.

use serde::{Deserialize, Serialize};

/// One kind of namespace. Its serde name (`"net"`, `"ipc"`, ...) is the name records and the
/// protocol have always held, and the file name under `/proc/PID/ns/` and the pod's `ns/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    /// The network namespace.
    Net,
    /// The System V IPC and POSIX message queue namespace.
    Ipc,
    /// The hostname namespace.
    Uts,
    /// The PID namespace.
    Pid,
    /// The user namespace.
    User,
}

impl Namespace {
    /// Every kind, in the order a pod's namespace mounts are released.
    pub const ALL: [Namespace; 5] = [
        Namespace::Net,
        Namespace::Ipc,
        Namespace::Uts,
        Namespace::Pid,
        Namespace::User,
    ];

    /// The name under `/proc/PID/ns/` and in the pod's `ns/` directory.
    pub fn name(self) -> &'static str {
        match self {
            Namespace::Net => "net",
            Namespace::Ipc => "ipc",
            Namespace::Uts => "uts",
            Namespace::Pid => "pid",
            Namespace::User => "user",
        }
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The clone flags that create the namespaces a pod owns besides its user namespace (a
/// pod's user namespace is made from its mappings, never by these flags).
pub fn unshare_flags(namespaces: &[Namespace]) -> libc::c_int {
    namespaces.iter().fold(0, |f, ns| {
        f | match ns {
            Namespace::Net => libc::CLONE_NEWNET,
            Namespace::Ipc => libc::CLONE_NEWIPC,
            Namespace::Uts => libc::CLONE_NEWUTS,
            Namespace::Pid => libc::CLONE_NEWPID,
            Namespace::User => 0,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_records_and_the_wire_hold_still_parse() {
        let old: Vec<Namespace> =
            serde_json::from_str(r#"["net","ipc","uts","pid","user"]"#).unwrap();
        assert_eq!(old, Namespace::ALL);
        assert_eq!(
            serde_json::to_string(&Namespace::ALL).unwrap(),
            r#"["net","ipc","uts","pid","user"]"#
        );
        for ns in Namespace::ALL {
            assert_eq!(serde_json::to_value(ns).unwrap(), ns.name());
        }
        assert!(serde_json::from_str::<Namespace>(r#""mnt""#).is_err());
    }

    #[test]
    fn a_pod_unshares_its_own_namespaces_but_never_a_user_namespace() {
        assert_eq!(
            unshare_flags(&[
                Namespace::Net,
                Namespace::Uts,
                Namespace::Ipc,
                Namespace::Pid
            ]),
            libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWPID
        );
        assert_eq!(unshare_flags(&[Namespace::User]), 0);
        assert_eq!(unshare_flags(&[]), 0);
    }
}
