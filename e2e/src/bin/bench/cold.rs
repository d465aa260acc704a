//! The cold phase: launch to serving and the first pulls, each in a fresh daemon with an
//! empty store, the runtimes alternated round by round.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_e2e::{Daemon, DaemonDir, images};

use crate::Settings;
use crate::containerd::{Containerd, containerd_runtime};
use crate::measure::{
    COLD_PULL, COLD_PULL_LAYERED, Figures, LAUNCH, Runtime, berth_runtime, first_answer,
};
use crate::pods::pull;

/// A fresh Berth daemon (empty root): launch to serving, then the cold pulls. Its root is
/// moved into `held` rather than removed (see [`cold`]).
pub(crate) async fn cold_berth(f: &mut Figures, held: &Path, round: usize) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut d = Daemon::builder()
        .config("[log]\nlevel = \"warn\"")
        .spawn()
        .context("start berth")?;
    // Polled every millisecond, as containerd is (`first_answer`).
    let socket = d.socket().to_path_buf();
    let (_, launch) = first_answer(&socket, t)
        .await
        .context("berth did not serve within 30 s")?;
    f.op(LAUNCH).push_ms(launch);
    d.wait_serving(Duration::from_secs(5)).await?;
    // A pull on a node comes long after start-up: let the start-up reconciliation (which
    // a pull waits for) finish first.
    d.wait_runtime_ready(Duration::from_secs(30)).await?;
    let rt = berth_runtime(&d)?;
    cold_pulls(&rt, f).await?;
    d.stop().await?;
    let root = d.dir().root();
    std::fs::rename(&root, held.join(format!("berth-{round}")))
        .with_context(|| format!("move {}", root.display()))?;
    Ok(())
}

/// A fresh containerd daemon (empty root): launch to serving, then the cold pulls. Returns
/// its directory, to be removed after the phase (see [`cold`]).
pub(crate) async fn cold_containerd(f: &mut Figures) -> anyhow::Result<DaemonDir> {
    let dir = DaemonDir::new()?;
    let (ctd, client, launch) = Containerd::start(&dir).await?;
    f.op(LAUNCH).push_ms(launch);
    let rt = containerd_runtime(&ctd, client, &dir);
    cold_pulls(&rt, f).await?;
    drop(ctd);
    Ok(dir)
}

/// busybox (one layer) first, the daemon's first pull; then [`images::LAYERED`].
pub(crate) async fn cold_pulls(rt: &Runtime, f: &mut Figures) -> anyhow::Result<()> {
    settle_disk();
    let pulled = pull(rt, images::BUSYBOX).await?;
    f.op(COLD_PULL).push_ms(pulled);
    settle_disk();
    let pulled = pull(rt, images::LAYERED).await?;
    f.op(COLD_PULL_LAYERED).push_ms(pulled);
    Ok(())
}

/// How long ext4 without a journal (these machines' root file system) refuses to reuse a
/// deleted inode: until then every inode allocation in the same block group scans past
/// such inodes (`recently_deleted()` in the kernel's `find_inode_bit()`), and creating a
/// file costs up to 0.4 ms instead of 0.02 ms. Whatever deleted many files just before
/// (the benchmark's build, an earlier round's removed root) would slow down the pulls
/// measured right after it, for whichever runtime happened to run then.
pub(crate) const EXT4_RECENTLY_DELETED: Duration = Duration::from_secs(31);

/// The fresh daemons' directories, removed when dropped: at the end of the benchmark, since
/// deleting them would slow down whatever the next 30 s measure (see above).
pub(crate) struct ColdRoots {
    _berth: DaemonDir,
    _containerd: Vec<DaemonDir>,
}

/// Launch and cold pulls, alternated, each in a fresh daemon with an empty root. Runs first,
/// before anything else of the benchmark has deleted files, after the ext4 window above
/// has passed; the rounds' roots are kept until the benchmark ends.
pub(crate) async fn cold(
    settings: &Settings,
    berth: &mut Figures,
    mut containerd: Option<&mut Figures>,
) -> anyhow::Result<ColdRoots> {
    let registry = berth_e2e::registry::RegistryClient::new(berth_e2e::registry::REGISTRY_ADDR)?;
    images::push(&registry, &images::layered()?)
        .await
        .context("push the layered image")?;
    if !settings.smoke {
        eprintln!(
            "bench: waiting {} s for the file system to forget the build's deletions",
            EXT4_RECENTLY_DELETED.as_secs()
        );
        tokio::time::sleep(EXT4_RECENTLY_DELETED).await;
    }
    let held = DaemonDir::new()?;
    let mut containerd_dirs = Vec::new();
    for round in 0..settings.cold {
        cold_berth(berth, held.path(), round).await?;
        if let Some(f) = containerd.as_deref_mut() {
            containerd_dirs.push(cold_containerd(f).await?);
        }
    }
    Ok(ColdRoots {
        _berth: held,
        _containerd: containerd_dirs,
    })
}

/// Writes back what earlier rounds left dirty (the previous daemon's removed root, the other
/// runtime's layers), so that a cold pull's own fsyncs do not pay for it. Both runtimes get
/// the same treatment.
pub(crate) fn settle_disk() {
    // SAFETY: sync has no arguments and cannot fail.
    unsafe { libc::sync() };
}
