//! Running one CNI plugin binary: environment, stdin, timeout, and its answer.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::error::Error;

/// One invocation of a plugin.
#[derive(Debug, Clone)]
pub(crate) struct Invocation<'a> {
    /// The plugin type (for messages).
    pub plugin: &'a str,
    /// `CNI_COMMAND`.
    pub command: &'a str,
    /// `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS` (unset for STATUS and GC).
    pub container: Option<ContainerEnv<'a>>,
    /// `CNI_PATH`.
    pub cni_path: &'a str,
    /// The JSON written to the plugin's stdin.
    pub stdin: &'a Value,
}

/// The container-specific variables of an invocation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ContainerEnv<'a> {
    /// The sandbox id.
    pub container_id: &'a str,
    /// The network namespace path; empty when it is gone (DEL).
    pub netns: &'a str,
    /// The interface name in the namespace.
    pub ifname: &'a str,
    /// `K=V;K=V` arguments.
    pub args: &'a str,
}

/// The first `dirs` entry holding an executable named `plugin`.
pub(crate) fn find_plugin(dirs: &[PathBuf], plugin: &str) -> Result<PathBuf, Error> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter()
        .map(|d| d.join(plugin))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| Error::CniPluginNotFound {
            plugin: plugin.to_string(),
            dirs: dirs.to_vec(),
        })
}

/// Turns a failed plugin's output into the error kubelet sees, keeping its message.
pub(crate) fn plugin_error(
    plugin: &str,
    command: &str,
    status: &str,
    stdout: &[u8],
    stderr: &[u8],
) -> Error {
    #[derive(serde::Deserialize)]
    struct CniError {
        #[serde(default)]
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    match serde_json::from_slice::<CniError>(stdout) {
        Ok(e) if !e.msg.is_empty() || e.code != 0 => Error::CniPlugin {
            plugin: plugin.to_string(),
            command: command.to_string(),
            code: e.code,
            msg: e.msg,
            details: e.details,
        },
        _ => {
            let text = String::from_utf8_lossy(if stderr.trim_ascii().is_empty() {
                stdout
            } else {
                stderr
            });
            Error::CniPlugin {
                plugin: plugin.to_string(),
                command: command.to_string(),
                code: 0,
                msg: format!("{status}: {}", text.trim()),
                details: String::new(),
            }
        }
    }
}

/// Runs the plugin binary `bin` in the node's network namespace `node_ns` and returns its
/// JSON output (`None` when it printed nothing, as DEL may).
pub(crate) async fn run(
    bin: &Path,
    inv: &Invocation<'_>,
    timeout: Duration,
    node_ns: RawFd,
) -> Result<Option<Value>, Error> {
    let mut cmd = tokio::process::Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CNI_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("CNI_COMMAND", inv.command)
        .env("CNI_PATH", inv.cni_path);
    if let Some(c) = &inv.container {
        cmd.env("CNI_CONTAINERID", c.container_id)
            .env("CNI_NETNS", c.netns)
            .env("CNI_IFNAME", c.ifname)
            .env("CNI_ARGS", c.args);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure only calls setns(2), which is async-signal-safe, on a descriptor
    // the parent keeps open for the lifetime of the network.
    unsafe {
        cmd.pre_exec(move || {
            // Plugins configure the node's namespace whatever thread spawned them.
            if libc::setns(node_ns, libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let stdin = serde_json::to_vec(inv.stdin).expect("JSON values serialize");
    let io_err =
        |what: &str| Error::io(format!("{what} CNI plugin {} {}", inv.plugin, inv.command));
    let work = async {
        let mut child = cmd.spawn().map_err(io_err("start"))?;
        let mut pipe = child.stdin.take().expect("stdin is piped");
        // A plugin may exit without reading its stdin: its error is what matters then.
        let _ = pipe.write_all(&stdin).await;
        drop(pipe);
        child.wait_with_output().await.map_err(io_err("wait for"))
    };
    let output = match tokio::time::timeout(timeout, work).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::CniTimeout {
                plugin: inv.plugin.to_string(),
                command: inv.command.to_string(),
                seconds: timeout.as_secs(),
            });
        }
    };
    if !output.status.success() {
        return Err(plugin_error(
            inv.plugin,
            inv.command,
            &output.status.to_string(),
            &output.stdout,
            &output.stderr,
        ));
    }
    if output.stdout.trim_ascii().is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&output.stdout)
        .map(Some)
        .map_err(|e| Error::CniResult {
            plugin: inv.plugin.to_string(),
            command: inv.command.to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_errors_keep_the_plugin_message() {
        let e = plugin_error(
            "bridge",
            "ADD",
            "exit status: 1",
            br#"{"cniVersion":"1.0.0","code":7,"msg":"bad config","details":"no ipam"}"#,
            b"",
        );
        assert_eq!(
            e.to_string(),
            "CNI plugin bridge ADD failed (code 7): bad config: no ipam"
        );
        let e = plugin_error("x", "DEL", "exit status: 2", b"", b"panic: oops\n");
        assert_eq!(
            e.to_string(),
            "CNI plugin x DEL failed (code 0): exit status: 2: panic: oops"
        );
    }

    #[test]
    fn finds_only_executable_plugins() {
        use std::os::unix::fs::PermissionsExt;
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("bridge"), "").unwrap();
        std::fs::write(b.path().join("bridge"), "").unwrap();
        std::fs::set_permissions(
            b.path().join("bridge"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(
            find_plugin(&dirs, "bridge").unwrap(),
            b.path().join("bridge")
        );
        assert!(matches!(
            find_plugin(&dirs, "ptp"),
            Err(Error::CniPluginNotFound { .. })
        ));
    }
}
