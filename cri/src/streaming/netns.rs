//! Connecting to a port on localhost inside a pod's network namespace, without forking: a
//! short-lived thread joins the namespace with setns(2), creates and connects the socket, and
//! exits. A socket stays in the namespace it was created in, so the daemon then uses it from
//! any thread. The thread is never reused (a pooled thread would stay in the pod's namespace).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpStream;

/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The namespace file could not be opened or joined.
    #[error("cannot enter network namespace {path}")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Neither 127.0.0.1 nor ::1 accepted the connection.
    #[error(
        "failed to connect to localhost:{port} inside the pod's network namespace: IPv4: {v4}; IPv6: {v6}"
    )]
    Refused {
        /// The port.
        port: u16,
        /// The IPv4 attempt's error.
        v4: io::Error,
        /// The IPv6 attempt's error.
        v6: io::Error,
    },
    /// The helper thread could not be started or died.
    #[error("cannot run the connecting thread")]
    Thread(#[source] io::Error),
}

/// Connects to `localhost:port`, IPv4 first then IPv6, inside the network namespace at
/// `netns` (`None`: the daemon's own namespace, for pods on the host network).
pub async fn dial_localhost(netns: Option<&Path>, port: u16) -> Result<TcpStream, DialError> {
    let Some(netns) = netns else {
        return dial_here(port).await;
    };
    let path = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("berth-netns-dial".into())
        .spawn(move || {
            let _ = tx.send(dial_in_thread(&path, port));
        })
        .map_err(DialError::Thread)?;
    let stream = rx
        .await
        .map_err(|_| DialError::Thread(io::Error::other("connecting thread died")))??;
    stream.set_nonblocking(true).map_err(DialError::Thread)?;
    TcpStream::from_std(stream).map_err(DialError::Thread)
}

async fn dial_here(port: u16) -> Result<TcpStream, DialError> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let e4 = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(v4)).await {
        Ok(Ok(s)) => return Ok(s),
        Ok(Err(e)) => e,
        Err(_) => io::Error::from(io::ErrorKind::TimedOut),
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(v6)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e6)) => Err(DialError::Refused {
            port,
            v4: e4,
            v6: e6,
        }),
        Err(_) => Err(DialError::Refused {
            port,
            v4: e4,
            v6: io::Error::from(io::ErrorKind::TimedOut),
        }),
    }
}

/// Runs on a dedicated thread that exits right after: it changes the thread's namespace.
fn dial_in_thread(netns: &Path, port: u16) -> Result<std::net::TcpStream, DialError> {
    let netns_err = |source| DialError::Netns {
        path: netns.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(netns).map_err(netns_err)?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| netns_err(io::Error::from(e)))?;
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let e4 = match std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|e6| DialError::Refused {
        port,
        v4: e4,
        v6: e6,
    })
}

/// Binds a TCP listener on `addr` inside the network namespace at `netns`, from a thread
/// that exits right after. Tests use it to serve inside a namespace they made.
pub async fn bind_in_netns(netns: &Path, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let path = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("berth-netns-bind".into())
        .spawn(move || {
            let result = (|| {
                let file = std::fs::File::open(&path)?;
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                std::net::TcpListener::bind(addr)
            })();
            let _ = tx.send(result);
        })?;
    let listener = rx
        .await
        .map_err(|_| io::Error::other("binding thread died"))??;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_reports_both_families() {
        // Bind then drop to find a port nothing listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = dial_localhost(None, port).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("localhost:{port}")), "{text}");
        assert!(text.contains("IPv4") && text.contains("IPv6"), "{text}");
    }

    #[tokio::test]
    async fn a_missing_namespace_is_an_error_not_a_panic() {
        let err = dial_localhost(Some(Path::new("/nonexistent/netns")), 80)
            .await
            .unwrap_err();
        assert!(matches!(err, DialError::Netns { .. }), "{err}");
    }
}
