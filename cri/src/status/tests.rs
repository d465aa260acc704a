//! Every library error maps to the code kubelet has always seen for it, and the message
//! names the object and carries the cause chain once.

use std::io;

use super::*;

fn io_err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// Each error of `table` becomes a status with its code, and a message that starts with
/// the object named.
fn check<E: Classify + Error>(table: Vec<(E, Code)>) {
    for (error, want) in table {
        let s = status("the object", &error);
        assert_eq!(s.code(), want, "{error}");
        assert!(s.message().starts_with("the object: "), "{}", s.message());
    }
}

#[test]
fn runtime_errors_keep_their_codes() {
    use berth_runtime::Error as E;
    let corrupt = serde_json::from_str::<u8>("x").unwrap_err();
    // A monitor's error keeps the class the monitor gave it.
    let monitor = |class| E::Monitor {
        pod: "p1".into(),
        message: "m".into(),
        class,
    };
    check(vec![
        (
            E::InvalidArgument("no metadata".into()),
            Code::InvalidArgument,
        ),
        (
            E::NotFound {
                kind: "container",
                id: "c1".into(),
            },
            Code::NotFound,
        ),
        (
            E::AlreadyExists {
                kind: "pod sandbox",
                name: "n".into(),
                holder: "p1".into(),
            },
            Code::AlreadyExists,
        ),
        (
            E::FailedPrecondition("running".into()),
            Code::FailedPrecondition,
        ),
        (
            E::DeadlineExceeded("timeout".into()),
            Code::DeadlineExceeded,
        ),
        (
            E::Io {
                op: "open",
                path: "/x".into(),
                source: io_err(libc::ENOENT),
            },
            Code::Internal,
        ),
        (E::Sys("mount".into(), io_err(libc::EPERM)), Code::Internal),
        (E::Db("closed".into()), Code::Internal),
        (E::Corrupt("pod p1".into(), corrupt), Code::Internal),
        (
            E::MonitorGone {
                pod: "p1".into(),
                message: "refused".into(),
            },
            Code::FailedPrecondition,
        ),
        (
            E::MonitorStart {
                path: "/bin/berth-monitor".into(),
                message: "exec".into(),
            },
            Code::Internal,
        ),
        (
            E::Systemd(
                "StartTransientUnit".into(),
                berth_runtime::cgroups::dbus::BusError::Io(io_err(libc::EPIPE)),
            ),
            Code::Internal,
        ),
        (E::Internal("bug".into()), Code::Internal),
        (monitor(Class::InvalidArgument), Code::InvalidArgument),
        (monitor(Class::NotFound), Code::NotFound),
        (monitor(Class::FailedPrecondition), Code::FailedPrecondition),
        (monitor(Class::DeadlineExceeded), Code::DeadlineExceeded),
        (monitor(Class::Internal), Code::Internal),
    ]);
}

#[test]
fn image_errors_keep_their_codes() {
    use berth_imageservice::Error as E;
    let io = |errno| E::Io {
        op: "write",
        path: "/var/lib/berth/content".into(),
        source: io_err(errno),
    };
    check(vec![
        (
            E::InvalidReference {
                reference: "UPPER".into(),
                reason: "upper case".into(),
            },
            Code::InvalidArgument,
        ),
        (E::ImageNotFound("busybox".into()), Code::NotFound),
        (
            E::ManifestNotFound {
                reference: "docker.io/library/busybox:latest".into(),
                endpoints: "https://registry-1.docker.io".into(),
            },
            Code::NotFound,
        ),
        (
            E::NoMatchingPlatform {
                reference: "r".into(),
                platform: "linux/amd64".into(),
                available: "linux/arm64".into(),
            },
            Code::NotFound,
        ),
        (
            E::Unauthorized {
                endpoint: "https://r".into(),
                repository: "a/b".into(),
                reason: "401".into(),
            },
            Code::PermissionDenied,
        ),
        (
            E::Registry {
                reference: "r".into(),
                message: "connection refused".into(),
            },
            Code::Unavailable,
        ),
        (
            E::DigestMismatch {
                expected: "sha256:aa".into(),
                actual: "sha256:bb".into(),
            },
            Code::Unavailable,
        ),
        (E::Cancelled, Code::Unavailable),
        (
            E::InvalidImage {
                reference: "r".into(),
                reason: "no layers".into(),
            },
            Code::FailedPrecondition,
        ),
        (
            E::InvalidLayer {
                digest: "sha256:aa".into(),
                reason: "../escape".into(),
            },
            Code::FailedPrecondition,
        ),
        (io(libc::ENOSPC), Code::ResourceExhausted),
        (io(libc::EDQUOT), Code::ResourceExhausted),
        (io(libc::EIO), Code::Internal),
        (E::Db("closed".into()), Code::Internal),
    ]);
}

#[test]
fn network_errors_keep_their_codes() {
    use berth_cni::{Cidr, Error as E, NetlinkError};
    let cidr: Cidr = "10.0.0.0/24".parse().unwrap();
    let bad_cidr = "10.0.0.0/99".parse::<Cidr>().unwrap_err();
    let corrupt = serde_json::from_str::<u8>("x").unwrap_err();
    let netns = |kind: io::ErrorKind| E::Netns {
        pod_id: "p1".into(),
        path: "/run/netns/p1".into(),
        source: kind.into(),
    };
    let plugin = || ("bridge".to_owned(), "ADD".to_owned());
    check(vec![
        (
            E::InvalidRequest("no pod CIDR".into()),
            Code::InvalidArgument,
        ),
        (E::InvalidCidr(bad_cidr), Code::InvalidArgument),
        (E::CidrTooSmall(cidr), Code::InvalidArgument),
        (netns(io::ErrorKind::NotFound), Code::NotFound),
        (
            netns(io::ErrorKind::PermissionDenied),
            Code::FailedPrecondition,
        ),
        (E::Exhausted(cidr), Code::ResourceExhausted),
        (
            E::Netlink {
                op: "add link".into(),
                source: NetlinkError::Kernel {
                    errno: libc::EEXIST,
                    message: None,
                },
            },
            Code::Internal,
        ),
        (
            E::Io {
                what: "write".into(),
                source: io_err(libc::EIO),
            },
            Code::Internal,
        ),
        (E::from(redb::Error::DatabaseAlreadyOpen), Code::Internal),
        (
            E::Corrupt {
                key: "p1".into(),
                source: corrupt,
            },
            Code::Internal,
        ),
        (
            E::NotReady("no CNI config".into()),
            Code::FailedPrecondition,
        ),
        (
            E::CniConfig {
                path: "/etc/cni/net.d".into(),
                reason: "empty".into(),
            },
            Code::FailedPrecondition,
        ),
        (
            E::CniPluginNotFound {
                plugin: "bridge".into(),
                dirs: vec!["/opt/cni/bin".into()],
            },
            Code::FailedPrecondition,
        ),
        (
            E::CniPlugin {
                plugin: plugin().0,
                command: plugin().1,
                code: 11,
                msg: "boom".into(),
                details: String::new(),
            },
            Code::Internal,
        ),
        (
            E::CniTimeout {
                plugin: plugin().0,
                command: plugin().1,
                seconds: 1,
            },
            Code::DeadlineExceeded,
        ),
        (
            E::CniResult {
                plugin: plugin().0,
                command: plugin().1,
                reason: "not JSON".into(),
            },
            Code::Internal,
        ),
    ]);
}

#[derive(Debug, thiserror::Error)]
#[error("outer")]
struct Outer(#[source] io::Error);

impl Classify for Outer {
    fn class(&self) -> Class {
        Class::Unavailable
    }
}

#[derive(Debug, thiserror::Error)]
#[error("create {0}")]
struct Embeds(String, #[source] io::Error);

impl Classify for Embeds {
    fn class(&self) -> Class {
        Class::Internal
    }
}

#[test]
fn message_names_the_object_and_carries_the_chain() {
    let s = status("pod p1", &Outer(io::Error::other("inner cause")));
    assert_eq!(s.code(), Code::Unavailable);
    assert_eq!(s.message(), "pod p1: outer: inner cause");
    // A message that already ends with its cause's text does not repeat it.
    let s = status(
        "CreateContainer",
        &Embeds("x: disk on fire".into(), io::Error::other("disk on fire")),
    );
    assert_eq!(s.message(), "CreateContainer: create x: disk on fire");
}
