//! The messages: a daemon's [`Request`]s, the monitor's [`Response`]s and events, and the
//! [`MonitorConfig`] a new monitor starts from.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::spec::{ContainerSpec, ProcessSpec};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// A call from the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Version check; answered with `Response::Hello`.
    Hello {
        /// The daemon's protocol version.
        version: u32,
    },
    /// Create a container (it waits for `start`); answered with `Response::Created`.
    Create {
        /// The planned container.
        spec: Box<ContainerSpec>,
    },
    /// Let a created container run; answered with `Response::Started` once it has exec'd.
    Start {
        /// Container id.
        id: String,
    },
    /// Signal a container's process; `Ok` also when it has already exited.
    Kill {
        /// Container id.
        id: String,
        /// Signal number.
        signal: i32,
    },
    /// Run a process in a running container; answered with `Response::ExecExited` when it
    /// ends. Without a tty the passed fds become its stdin (when `stdin`), stdout and stderr,
    /// in that order; with `tty` no fd is passed: the process gets a new pty in the
    /// container and the monitor first answers `Response::ExecStarted` carrying its master.
    /// Closing the connection kills the process.
    Exec {
        /// Container id.
        id: String,
        /// The process (argv, env, cwd, ids, security).
        process: Box<ProcessSpec>,
        /// cgroup files the process joins.
        #[serde(default)]
        cgroup_procs: Vec<PathBuf>,
        /// Kill it after this many milliseconds; 0 is no limit.
        #[serde(default)]
        timeout_ms: u64,
        /// A stdin fd is passed (otherwise stdin is /dev/null).
        #[serde(default)]
        stdin: bool,
        /// Run it on a new pty.
        #[serde(default)]
        tty: bool,
    },
    /// Attach to a running container's stdio; answered with `Response::Attached`, which
    /// carries a SOCK_SEQPACKET socket whose messages are the container's output (one
    /// [`AttachStream`] byte, then the bytes), closed when the container exits, and, when
    /// `stdin` is asked for and the container has one, a writable fd of its stdin (the pty
    /// master for a tty container, which also takes the terminal size).
    Attach {
        /// Container id.
        id: String,
        /// Hand over the container's stdin too.
        #[serde(default)]
        stdin: bool,
    },
    /// Close the monitor's end of a container's stdin pipe: the container reads EOF once
    /// no attacher holds it either (`stdin_once`).
    CloseStdin {
        /// Container id.
        id: String,
    },
    /// The state of every container; answered with `Response::State`.
    State,
    /// Reopen a container's log file (after kubelet rotated it).
    ReopenLog {
        /// Container id.
        id: String,
    },
    /// Forget an exited (or never started) container.
    Remove {
        /// Container id.
        id: String,
    },
    /// Keep the connection open and push `Response::Event` frames.
    Subscribe,
    /// Kill every process of the pod, release the pod's shm, exit.
    Shutdown,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, or 128 + signal number for a killed process.
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// When it was reaped, in nanoseconds since the epoch.
    pub finished_at: i64,
}

/// A container as the monitor sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    /// Container id.
    pub id: String,
    /// Host PID of its first process.
    pub pid: i32,
    /// Started, in nanoseconds since the epoch; 0 while only created.
    pub started_at: i64,
    /// Set once it has exited.
    #[serde(default)]
    pub exit: Option<ExitStatus>,
}

/// The first byte of each message on an attach output socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AttachStream {
    /// The container's stdout (or its tty).
    Stdout = 1,
    /// The container's stderr.
    Stderr = 2,
}

impl AttachStream {
    /// The stream a message's first byte names.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(AttachStream::Stdout),
            2 => Some(AttachStream::Stderr),
            _ => None,
        }
    }
}

/// The error classes that cross the wire: the one [`berth_class::Class`], serialised in
/// snake case (`"not_found"`), the names the monitor has always sent.
pub use berth_class::Class;

/// An answer (or, after `subscribe`, an event) from the monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum Response {
    /// Answer to `hello`.
    Hello {
        /// The monitor's protocol version.
        version: u32,
        /// Its pod.
        pod_id: String,
        /// Its host PID.
        pid: i32,
    },
    /// Done.
    Ok,
    /// Answer to `create`.
    Created {
        /// Host PID of the container's first process.
        pid: i32,
    },
    /// Answer to `start`.
    Started {
        /// Nanoseconds since the epoch.
        started_at: i64,
    },
    /// First answer to a `tty` exec, carrying the pty master as `SCM_RIGHTS`.
    ExecStarted,
    /// Answer to `attach`, carrying the output socket (and the stdin fd when given) as
    /// `SCM_RIGHTS`.
    Attached {
        /// A stdin fd follows the output socket.
        stdin: bool,
    },
    /// Answer to `exec`.
    ExecExited {
        /// How the exec process ended.
        exit: ExitStatus,
        /// It was killed because its timeout passed.
        timed_out: bool,
    },
    /// Answer to `state`.
    State {
        /// Every container the monitor holds.
        containers: Vec<ContainerState>,
    },
    /// Pushed after `subscribe`: a container's first process exited.
    Event {
        /// Container id.
        id: String,
        /// How it ended.
        exit: ExitStatus,
    },
    /// The call failed.
    Error {
        /// Its class.
        class: Class,
        /// What went wrong.
        message: String,
    },
}

/// What the daemon tells a new monitor (written as `monitor.json` in the pod's run dir).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MonitorConfig {
    /// Protocol version the daemon speaks.
    pub version: u32,
    /// Pod id.
    pub pod_id: String,
    /// `<state>/pods/<id>`.
    pub run_dir: PathBuf,
    /// `<state>/containers`: exit files go to `<containers_dir>/<id>/exit`.
    pub containers_dir: PathBuf,
    /// Set the UTS namespace's hostname (only when the pod has its own).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Namespaces the daemon unshared for the monitor, bind-mounted under `ns/`.
    pub namespaces: Vec<crate::namespace::Namespace>,
    /// Size in bytes of the pod's /dev/shm tmpfs; `None` when the pod uses the host's IPC.
    #[serde(default)]
    pub shm_size: Option<u64>,
    /// Namespaced sysctls applied in the pod's namespaces (`net.ipv4.ip_forward`, ...).
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
    /// cgroup files the monitor writes itself into.
    #[serde(default)]
    pub cgroup_procs: Vec<PathBuf>,
    /// The pod's own user namespace: the monitor creates it and the namespaces listed in
    /// `namespaces` inside it (the daemon unshares none); `None`: the node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<crate::userns::UsernsSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode_frame;

    #[test]
    fn wire_shape_is_stable() {
        let f = encode_frame(&Request::Start { id: "x".into() });
        assert_eq!(&f[..4], &(f.len() as u32 - 4).to_be_bytes());
        assert_eq!(&f[4..], br#"{"op":"start","id":"x"}"#);
        let r: Response = serde_json::from_str(
            r#"{"r":"event","id":"c","exit":{"exit_code":137,"signal":9,"finished_at":5}}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Response::Event {
                id: "c".into(),
                exit: ExitStatus {
                    exit_code: 137,
                    signal: Some(9),
                    finished_at: 5
                }
            }
        );
        let e: Response =
            serde_json::from_str(r#"{"r":"error","class":"not_found","message":"m"}"#).unwrap();
        assert!(matches!(
            e,
            Response::Error {
                class: Class::NotFound,
                ..
            }
        ));
    }
}
