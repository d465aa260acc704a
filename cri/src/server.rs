//! The daemon's life: lock the state directory, open the store, serve CRI on the unix
//! socket, reconcile in the background, and shut down gracefully on SIGTERM or SIGINT.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::lock::DaemonLock;
use crate::metrics::http::MetricsServer;
use crate::node::Node;
use crate::service::CriService;
use crate::store::Store;

/// The largest CRI message accepted or sent, as kubelet's own limit.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How long in-flight calls may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Permissions of the CRI socket: root and the socket's group.
const SOCKET_MODE: u32 = 0o660;
/// Mode of `root` and `state`: others may pass through to the CRI socket (whose group
/// decides), but not list or read anything.
const TOP_DIR_MODE: u32 = 0o711;
/// Mode of what holds pod data (environments, Secrets, writable layers, bundles, images).
const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the daemon's own files (the metadata database holds every container's config).
const PRIVATE_FILE_MODE: u32 = 0o600;

/// What a path in the daemon's layout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A directory, created when missing.
    Dir,
    /// A file, tightened when it exists (its owner creates it).
    File,
}

/// Every path the daemon keeps private, with its kind and mode, children after parents.
/// Only these are touched, never whatever else an operator keeps beside them. Below them
/// the closed parents keep node users out; what containers see (the writable layer, the
/// pod's hosts files, image layers) is reached by the node's root and gets its own mode.
fn private_layout(root: &Path, state: &Path) -> Vec<(PathBuf, Kind, u32)> {
    let dir = |p: PathBuf, mode| (p, Kind::Dir, mode);
    let file = |p: PathBuf| (p, Kind::File, PRIVATE_FILE_MODE);
    vec![
        dir(root.to_owned(), TOP_DIR_MODE),
        dir(state.to_owned(), TOP_DIR_MODE),
        file(root.join(crate::store::DB_FILE)),
        dir(root.join("containers"), PRIVATE_DIR_MODE),
        dir(root.join("content"), PRIVATE_DIR_MODE),
        dir(root.join("snapshots"), PRIVATE_DIR_MODE),
        file(state.join(crate::lock::LOCK_FILE)),
        file(state.join("boot_id")),
        dir(state.join("pods"), PRIVATE_DIR_MODE),
        dir(state.join("containers"), PRIVATE_DIR_MODE),
        dir(state.join("runtimes"), PRIVATE_DIR_MODE),
    ]
}

/// Creates the daemon's directories and gives each path of [`private_layout`] its mode,
/// also tightening what an older version made under the node's umask.
fn secure_layout(root: &Path, state: &Path) -> anyhow::Result<()> {
    for (path, kind, mode) in private_layout(root, state) {
        if kind == Kind::Dir {
            std::fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        // Through a symlink too: an operator may keep root or snapshots on another disk
        // (only the node's root can write these directories).
        match std::fs::metadata(&path) {
            Ok(meta) if meta.permissions().mode() & 0o7777 == mode => {}
            Ok(_) => std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot set the mode of {}", path.display()))?,
            Err(e) if kind == Kind::File && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
        }
    }
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT; returns once in-flight calls have finished.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let launched = Instant::now();
    let _lock = DaemonLock::acquire(&config.state)?;
    secure_layout(&config.root, &config.state)?;
    crate::node::check_runtime_handlers(&config)?;
    let socket = config.grpc.socket.clone();
    let listener = bind_socket(&socket)?;
    let store = Store::open(&config.root)?;
    let node = Node::new(config, store)?;
    let _streaming = node.streaming.start(&node.config.streaming).await?;
    let _metrics = start_metrics(&node).await?;
    let service = CriService::new(node.clone());
    tokio::spawn(crate::memory::trim_when_idle());

    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();

    let server = tonic::transport::Server::builder()
        .layer(crate::deadline::DeadlineLayer)
        .add_service(
            RuntimeServiceServer::new(service.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ImageServiceServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    let mut server = tokio::spawn(server);
    tracing::info!(
        socket = %socket.display(),
        version = env!("CARGO_PKG_VERSION"),
        micros = launched.elapsed().as_micros() as u64,
        "serving CRI"
    );
    notify_ready();
    spawn_reconcile(node.clone());

    let signal_name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
        result = &mut server => {
            remove_socket(&socket);
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e).context("CRI server failed"),
                Err(e) => Err(e).context("CRI server task failed"),
            };
        }
    };
    tracing::info!(
        signal = signal_name,
        "shutting down: finishing in-flight calls"
    );
    let _ = stop_tx.send(());
    // Long-lived calls (GetContainerEvents streams) would hold shutdown open forever.
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
        Ok(_) => tracing::info!("stopped; pods keep running"),
        Err(_) => tracing::warn!(
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "calls still open at the deadline, stopping anyway"
        ),
    }
    remove_socket(&socket);
    Ok(())
}

/// Binds the CRI socket with mode 0660 from its first instant (see
/// [`berth_runtime::sys::bind_unix`]), replacing a stale socket a dead daemon left behind.
/// The caller holds the daemon lock, so no live daemon can own that socket; no other thread
/// creates files yet.
fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create socket directory {}", parent.display()))?;
        // The socket's group must be able to pass through; the umask made it 0700.
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(TOP_DIR_MODE))
            .with_context(|| format!("cannot set the mode of {}", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            tracing::info!(socket = %path.display(), "replacing a stale socket");
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    let listen = || -> std::io::Result<UnixListener> {
        let listener = berth_runtime::sys::bind_unix(path, SOCKET_MODE)?;
        listener.set_nonblocking(true)?;
        UnixListener::from_std(listener)
    };
    listen().with_context(|| format!("cannot listen on {}", path.display()))
}

fn remove_socket(path: &PathBuf) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(socket = %path.display(), error = %e, "cannot remove socket");
    }
}

/// Serves `[metrics] address` when it is set.
async fn start_metrics(node: &Arc<Node>) -> anyhow::Result<Option<MetricsServer>> {
    let address = &node.config.metrics.address;
    if address.is_empty() {
        return Ok(None);
    }
    let scraped = node.clone();
    let render = Arc::new(move || scraped.render_metrics());
    Ok(Some(crate::metrics::http::start(address, render).await?))
}

fn spawn_reconcile(node: Arc<Node>) {
    tokio::spawn(async move {
        node.reconcile().await;
        // Start-up ran code no call needs again (recovery, the servers' set-up): the node
        // idles without it.
        crate::memory::trim_now();
    });
}

/// Tells systemd (`Type=notify`) that the socket serves, when it started us.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = notify(&path, b"READY=1");
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

fn notify(path: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
        None => SocketAddr::from_pathname(Path::new(path))?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(message, &addr).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_socket_is_replaced_and_mode_is_0660() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/berth.sock");
        drop(bind_socket(&path).unwrap());
        assert!(
            path.exists(),
            "a dropped listener leaves its socket file, as a crash does"
        );
        let _listener = bind_socket(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn an_old_install_is_tightened_and_a_new_one_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let (root, state) = (dir.path().join("root"), dir.path().join("state"));
        // What an older version left under umask 022.
        for d in [&root, &state, &root.join("containers"), &state.join("pods")] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(root.join("berth.db"), b"db").unwrap();
        std::fs::set_permissions(
            root.join("berth.db"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        // What containers see keeps its mode: only its parents close.
        let upper = root.join("containers/c1/upper");
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(0o755)).unwrap();
        // An operator's file beside them is not the daemon's.
        std::fs::write(root.join("notes"), b"mine").unwrap();
        std::fs::set_permissions(root.join("notes"), std::fs::Permissions::from_mode(0o644))
            .unwrap();

        secure_layout(&root, &state).unwrap();
        assert_eq!(mode(&root), 0o711);
        assert_eq!(mode(&state), 0o711);
        assert_eq!(mode(&root.join("berth.db")), 0o600);
        for d in ["containers", "content", "snapshots"] {
            assert_eq!(mode(&root.join(d)), 0o700, "root/{d}");
        }
        for d in ["pods", "containers", "runtimes"] {
            assert_eq!(mode(&state.join(d)), 0o700, "state/{d}");
        }
        assert_eq!(mode(&upper), 0o755);
        assert_eq!(mode(&root.join("notes")), 0o644);
        assert!(!state.join("boot_id").exists(), "files are not created");
        // Idempotent.
        secure_layout(&root, &state).unwrap();
        assert_eq!(mode(&root.join("berth.db")), 0o600);
    }

    #[test]
    fn a_root_on_another_disk_through_a_symlink_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        std::fs::create_dir_all(disk.join("snapshots")).unwrap();
        std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (root, state) = (dir.path().join("root"), dir.path().join("state"));
        std::os::unix::fs::symlink(&disk, &root).unwrap();
        secure_layout(&root, &state).unwrap();
        assert_eq!(mode(&disk), 0o711);
        assert_eq!(mode(&disk.join("snapshots")), 0o700);
        assert!(
            std::fs::symlink_metadata(&root)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[tokio::test]
    async fn a_new_socket_directory_lets_the_group_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock-dir/berth.sock");
        let _listener = berth_runtime::sys::with_umask(0o077, || bind_socket(&path)).unwrap();
        assert_eq!(mode(&dir.path().join("sock-dir")), 0o711);
        assert_eq!(mode(&path), 0o660);
    }

    #[tokio::test]
    async fn a_regular_file_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.sock");
        std::fs::write(&path, b"data").unwrap();
        let err = bind_socket(&path).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[test]
    fn notify_sends_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        notify(path.as_os_str(), b"READY=1").unwrap();
        let mut buf = [0u8; 16];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
