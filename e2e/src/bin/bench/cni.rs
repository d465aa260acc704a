//! Berth in its CNI mode, the third runtime of the comparison: the same conflist and
//! Debian plugins containerd runs with (`containerd::write_conflist`), so each network
//! figure exists like for like, beside Berth's built-in network.

use anyhow::Context;
use berth_e2e::{Daemon, DaemonDir};

use crate::containerd::{delete_bridge, write_conflist};
use crate::measure::{Runtime, berth_runtime};

/// The name of its column in the report and its key in the JSON.
pub(crate) const BERTH_CNI: &str = "berth (cni)";

/// A Berth daemon with `[network] mode = "cni"`; the plugins' bridge is deleted on drop.
pub(crate) struct BerthCni {
    pub(crate) daemon: Daemon,
    bridge: String,
}

impl BerthCni {
    /// Writes the conflist into a new daemon directory and starts the daemon on it.
    pub(crate) async fn start() -> anyhow::Result<BerthCni> {
        let dir = DaemonDir::new()?;
        let conf_dir = dir.path().join("net.d");
        let bridge = format!("bcberth{}", dir.number());
        write_conflist(&conf_dir, &bridge, 67, dir.number(), dir.path())?;
        let config = format!(
            "[log]\nlevel = \"warn\"\n[network]\nmode = \"cni\"\ncni_conf_dir = \"{}\"\n\
             cni_bin_dirs = [\"/usr/lib/cni\"]\n",
            conf_dir.display()
        );
        let daemon = Daemon::builder()
            .dir(dir)
            .config(&config)
            .start()
            .await
            .context("start berth in CNI mode")?;
        Ok(BerthCni { daemon, bridge })
    }

    /// The runtime under test, named [`BERTH_CNI`].
    pub(crate) fn runtime(&self) -> anyhow::Result<Runtime> {
        Ok(Runtime {
            name: BERTH_CNI,
            ..berth_runtime(&self.daemon)?
        })
    }
}

impl Drop for BerthCni {
    fn drop(&mut self) {
        delete_bridge(&self.bridge);
    }
}
