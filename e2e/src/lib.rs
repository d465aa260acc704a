//! Berth's end-to-end harness.
//!
//! The runner (`cargo run -p berth-e2e --bin harness -- <command>`, which `scripts/test.sh`
//! uses) creates a node network namespace, starts Debian's `docker-registry` in it on
//! 127.0.0.1:5000, builds and pushes the test images ([`images`]), runs the command inside
//! the netns with [`mod@env`] variables set, then tears everything down and fails the run if
//! anything is left ([`leaks`]).
//!
//! Conventions for tests:
//! - every test starts its own daemon ([`Daemon::start`], or [`Daemon::builder`] with a
//!   TOML fragment merged over the harness config); its root, state and socket live in a
//!   numbered directory under the run's workdir, its bridge is `berth<N>` and its pod CIDR
//!   `10.<100+N>.0.0/16`, so daemons run side by side in the node netns;
//! - images are named by the constants of [`images`] (upstream names, pulled through the
//!   mirror) and described by [`images::info`];
//! - pod configs use [`Env::cgroup_parent`] as `cgroup_parent`, so the leak check can
//!   attribute cgroups; whatever a test leaves (processes, mounts under the workdir, netns,
//!   links, cgroups) fails the whole run;
//! - the daemon's log is printed when a test panics; `harness --keep` keeps the workdir.
//!
//! A test starts its own daemon and talks CRI to it:
//!
//! ```no_run
//! # async fn t() -> berth_e2e::Result<()> {
//! use berth_e2e::{Daemon, images};
//! let daemon = Daemon::start().await?;
//! let version = daemon.runtime().version(k8s_cri::v1::VersionRequest::default()).await;
//! let busybox = images::info(images::BUSYBOX)?;
//! # Ok(()) }
//! ```

pub mod bench;
pub mod client;
pub mod daemon;
pub mod env;
pub mod error;
pub mod fixtures;
pub mod http;
pub mod images;
pub mod leaks;
pub mod netns;
pub mod nspawn;
pub mod oci;
pub mod process;
pub mod registry;

pub use client::Client;
pub use daemon::{Daemon, DaemonBuilder, DaemonDir, run_berth};
pub use env::Env;
pub use error::{Error, Result};
