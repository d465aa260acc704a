//! What the harness tells the tests: environment variable names and their parsed form.
//!
//! The harness runner (`src/bin/harness.rs`) sets these before it runs the test command
//! inside the node network namespace; the tests read them with [`Env::get`].

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Short random id of this run; names of everything the run creates contain it.
pub const RUN_ID: &str = "BERTH_E2E_RUN_ID";
/// Name of the node network namespace (under /run/netns) the tests run in.
pub const NETNS: &str = "BERTH_E2E_NETNS";
/// The run's private temp directory; daemons get their directories below it.
pub const WORKDIR: &str = "BERTH_E2E_WORKDIR";
/// Directory holding the `berth` and `berth-monitor` binaries under test.
pub const BIN_DIR: &str = "BERTH_E2E_BIN_DIR";
/// `host:port` of the loopback registry inside the node netns.
pub const REGISTRY: &str = "BERTH_E2E_REGISTRY";
/// JSON file describing every pushed test image (see [`crate::images::info`]).
pub const IMAGES: &str = "BERTH_E2E_IMAGES";

/// Prefix of every node network namespace the harness creates.
pub const NETNS_PREFIX: &str = "berth-e2e-";

/// The harness's environment as seen by a test.
#[derive(Debug, Clone)]
pub struct Env {
    /// Short random id of this run.
    pub run_id: String,
    /// Name of the node network namespace.
    pub netns: String,
    /// The run's private temp directory.
    pub workdir: PathBuf,
    /// Directory holding `berth` and `berth-monitor`.
    pub bin_dir: PathBuf,
    /// `host:port` of the loopback registry.
    pub registry: String,
    /// The image catalog JSON file.
    pub images_file: PathBuf,
}

const HOW_TO_RUN: &str = "berth's end-to-end tests need the e2e harness (a node netns, a \
    loopback registry and the test images) and root: run them with `scripts/test.sh` as \
    root, or `cargo build --workspace --bins && sudo target/debug/harness -- cargo test -p \
    berth-e2e`";

impl Env {
    /// The harness's environment; panics with instructions when the test runs outside it.
    pub fn get() -> &'static Env {
        match Self::try_get() {
            Ok(env) => env,
            Err(e) => panic!("{e}"),
        }
    }

    /// The harness's environment, or an error that says how to run the tests.
    pub fn try_get() -> Result<&'static Env> {
        static ENV: OnceLock<std::result::Result<Env, String>> = OnceLock::new();
        ENV.get_or_init(|| Self::from_process().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|m| Error::Environment(m.clone()))
    }

    fn from_process() -> Result<Env> {
        let env = Self::from_vars(|name| std::env::var(name).ok())?;
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::Environment(format!(
                "not running as root. {HOW_TO_RUN}"
            )));
        }
        env.check_netns()?;
        Ok(env)
    }

    /// Reads the variables through `var`; a missing one is an error saying how to run.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Env> {
        let var = |name: &str| {
            var(name).ok_or_else(|| Error::Environment(format!("{name} is not set. {HOW_TO_RUN}")))
        };
        Ok(Env {
            run_id: var(RUN_ID)?,
            netns: var(NETNS)?,
            workdir: var(WORKDIR)?.into(),
            bin_dir: var(BIN_DIR)?.into(),
            registry: var(REGISTRY)?,
            images_file: var(IMAGES)?.into(),
        })
    }

    /// Fails unless this process runs in the node network namespace.
    fn check_netns(&self) -> Result<()> {
        let ours = std::fs::metadata("/proc/self/ns/net");
        let node = std::fs::metadata(Path::new("/run/netns").join(&self.netns));
        match (ours, node) {
            (Ok(a), Ok(b)) if a.ino() == b.ino() && a.dev() == b.dev() => Ok(()),
            _ => Err(Error::Environment(format!(
                "this process is not in the node network namespace {}. {HOW_TO_RUN}",
                self.netns
            ))),
        }
    }

    /// Path of the `berth` binary under test.
    pub fn berth_bin(&self) -> PathBuf {
        self.bin_dir.join("berth")
    }

    /// `http://host:port` of the loopback registry.
    pub fn registry_url(&self) -> String {
        format!("http://{}", self.registry)
    }

    /// A cgroupfs parent for pod configs (`LinuxPodSandboxConfig.cgroup_parent`), as kubelet
    /// would send `/kubepods/...`: a top-level cgroup unique to this run and `tag`. The
    /// harness removes these parents at the end; anything left inside them is a leak.
    pub fn cgroup_parent(&self, tag: &str) -> String {
        format!("/{NETNS_PREFIX}{}-{tag}", self.run_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_variables_say_how_to_run_the_tests() {
        let err = Env::from_vars(|_| None).unwrap_err().to_string();
        assert!(err.contains(RUN_ID), "{err}");
        assert!(err.contains("scripts/test.sh"), "{err}");
        assert!(err.contains("root"), "{err}");
        let env = Env::from_vars(|n| Some(format!("/x/{n}"))).unwrap();
        assert_eq!(
            env.berth_bin(),
            PathBuf::from(format!("/x/{BIN_DIR}/berth"))
        );
    }
}
