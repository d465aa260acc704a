//! The image a container runs, as the daemon hands it over: plain data, so that this crate
//! does not depend on the image service.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// An unpacked image ready to be a container's root file system.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The image id (`sha256:<hex>` of its config), reported as `image_id`.
    pub id: String,
    /// The name kubelet asked for, reported in `image`.
    pub name: String,
    /// The reference reported as `image_ref`: a repo digest if known, else empty for the id.
    #[serde(default)]
    pub repo_digest: String,
    /// The layer directories, topmost first, that form the overlay's lower dirs.
    pub lower_dirs: Vec<PathBuf>,
    /// The image's run configuration.
    pub config: ImageConfig,
}

/// The parts of an OCI image configuration that decide how a container runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=value` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// ENTRYPOINT.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// CMD.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// WORKDIR; empty means `/`.
    #[serde(default)]
    pub working_dir: String,
    /// USER: `name`, `uid`, `name:group`, `uid:gid`; empty means root.
    #[serde(default)]
    pub user: String,
    /// STOPSIGNAL, as a name (`SIGQUIT`, `QUIT`) or a number; empty means SIGTERM.
    #[serde(default)]
    pub stop_signal: String,
}

impl ImageInfo {
    /// The `image_ref` kubelet sees: the repo digest when known, else the id.
    pub fn image_ref(&self) -> &str {
        if self.repo_digest.is_empty() {
            &self.id
        } else {
            &self.repo_digest
        }
    }
}

/// Parses a STOPSIGNAL value (`SIGTERM`, `TERM`, `15`, `SIGRTMIN+3`) into a signal number.
pub fn parse_signal(value: &str) -> Option<i32> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if let Ok(n) = v.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = v.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => {
            // Real-time signals: RTMIN+n and RTMAX-n, as the kernel numbers them (34..=64).
            if let Some(rest) = name.strip_prefix("RTMIN") {
                let off = if rest.is_empty() {
                    0
                } else {
                    rest.strip_prefix('+')?.parse::<i32>().ok()?
                };
                34 + off
            } else if let Some(rest) = name.strip_prefix("RTMAX") {
                let off = if rest.is_empty() {
                    0
                } else {
                    rest.strip_prefix('-')?.parse::<i32>().ok()?
                };
                64 - off
            } else {
                return None;
            }
        }
    };
    (1..=64).contains(&n).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("quit"), Some(3));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGRTMIN+3"), Some(37));
        assert_eq!(parse_signal("RTMAX-1"), Some(63));
        assert_eq!(parse_signal(""), None);
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("99"), None);
    }

    #[test]
    fn image_ref_prefers_digest() {
        let mut i = ImageInfo {
            id: "sha256:a".into(),
            ..Default::default()
        };
        assert_eq!(i.image_ref(), "sha256:a");
        i.repo_digest = "r@sha256:b".into();
        assert_eq!(i.image_ref(), "r@sha256:b");
    }
}
