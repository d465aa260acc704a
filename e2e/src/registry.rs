//! The loopback registry: Debian's `docker-registry` run inside the node netns with its
//! storage in the run's temp dir, and a push client for the registry HTTP API v2.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Error, IoContext, Result};
use crate::http;
use crate::netns::NodeNetns;

/// Where Debian's package installs the registry server.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// The registry's address inside the node netns.
pub const REGISTRY_ADDR: &str = "127.0.0.1:5000";

/// A `docker-registry` process this harness started; stopped by its PID on drop.
#[derive(Debug)]
pub struct RegistryServer {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
}

impl RegistryServer {
    /// Starts the registry inside `netns` listening on [`REGISTRY_ADDR`], with its
    /// configuration, storage and log under `dir`.
    pub fn start(dir: &Path, netns: &NodeNetns) -> Result<RegistryServer> {
        if !Path::new(REGISTRY_BIN).exists() {
            return Err(Error::Environment(format!(
                "{REGISTRY_BIN} is missing: apt-get install docker-registry"
            )));
        }
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).io_context(|| format!("create {}", storage.display()))?;
        let config = dir.join("config.yml");
        std::fs::write(&config, config_yaml(&storage, REGISTRY_ADDR))
            .io_context(|| format!("write {}", config.display()))?;
        let log = dir.join("registry.log");
        let out = std::fs::File::create(&log).io_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone().io_context(|| "dup registry log".into())?;
        let ns = netns.open()?;
        let mut cmd = Command::new(REGISTRY_BIN);
        cmd.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env_remove("REGISTRY_HTTP_ADDR");
        let ns_fd = ns.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls setns(2),
        // which is async-signal-safe; `ns` outlives the spawn call.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().io_context(|| format!("spawn {REGISTRY_BIN}"))?;
        drop(ns);
        Ok(RegistryServer {
            child: Some(child),
            dir: dir.to_path_buf(),
            log,
        })
    }

    /// The registry's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The registry's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The registry's directory (config, storage, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits until the registry answers `GET /v2/`; must be called from inside the netns.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let client = RegistryClient::new(REGISTRY_ADDR)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(Error::Environment(format!(
                    "docker-registry exited ({status}) before serving:\n{log}"
                )));
            }
            if client.ping().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("docker-registry on {REGISTRY_ADDR}"),
                    seconds: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the registry (SIGTERM, then SIGKILL after 5 s) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The registry configuration: filesystem storage under `storage`, deletes allowed, no auth.
pub fn config_yaml(storage: &Path, addr: &str) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: error\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n  secret: berth-e2e-{}\n",
        storage.display(),
        std::process::id()
    )
}

/// Media types a manifest GET accepts.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// A client for the registry HTTP API v2 (plain HTTP, no auth).
#[derive(Debug, Clone)]
pub struct RegistryClient {
    addr: SocketAddr,
}

impl RegistryClient {
    /// A client for the registry at `addr` (`ip:port`).
    pub fn new(addr: &str) -> Result<RegistryClient> {
        let addr = addr
            .parse()
            .map_err(|_| Error::Environment(format!("registry address {addr} is not ip:port")))?;
        Ok(RegistryClient { addr })
    }

    async fn call(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        ok: &[u16],
    ) -> Result<http::Response> {
        let resp = http::send(self.addr, method, target, headers, body).await?;
        if !ok.contains(&resp.status) {
            let mut body = String::from_utf8_lossy(&resp.body).into_owned();
            body.truncate(500);
            return Err(Error::Registry {
                method: method.to_string(),
                url: format!("http://{}{target}", self.addr),
                status: resp.status,
                body,
            });
        }
        Ok(resp)
    }

    /// `GET /v2/`: succeeds when the registry serves the v2 API.
    pub async fn ping(&self) -> Result<()> {
        self.call("GET", "/v2/", &[], Bytes::new(), &[200])
            .await
            .map(|_| ())
    }

    /// Whether `repo` already holds the blob `digest`.
    pub async fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool> {
        let r = self
            .call(
                "HEAD",
                &format!("/v2/{repo}/blobs/{digest}"),
                &[],
                Bytes::new(),
                &[200, 404],
            )
            .await?;
        Ok(r.status == 200)
    }

    /// Uploads a blob to `repo` (POST, then one monolithic PUT). Uploading a blob the
    /// registry has is harmless; callers skip repeats to save time.
    pub async fn push_blob(&self, repo: &str, digest: &str, data: Bytes) -> Result<()> {
        let start = self
            .call(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                Bytes::new(),
                &[202],
            )
            .await?;
        let location = start.header("location").ok_or_else(|| Error::Registry {
            method: "POST".into(),
            url: format!("/v2/{repo}/blobs/uploads/"),
            status: start.status,
            body: "no Location header".into(),
        })?;
        let mut target = strip_origin(location).to_string();
        target.push(if target.contains('?') { '&' } else { '?' });
        target.push_str("digest=");
        target.push_str(digest);
        self.call(
            "PUT",
            &target,
            &[("content-type", "application/octet-stream")],
            data,
            &[201],
        )
        .await
        .map(|_| ())
    }

    /// Puts a manifest (or index) under `reference` (a tag or digest) and returns the
    /// digest the registry computed.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        data: Bytes,
    ) -> Result<String> {
        let r = self
            .call(
                "PUT",
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("content-type", media_type)],
                data,
                &[201],
            )
            .await?;
        Ok(r.header("docker-content-digest")
            .unwrap_or_default()
            .to_string())
    }

    /// Fetches a manifest: (media type, bytes).
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<(String, Bytes)> {
        let r = self
            .call(
                "GET",
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("accept", MANIFEST_ACCEPT)],
                Bytes::new(),
                &[200],
            )
            .await?;
        Ok((
            r.header("content-type").unwrap_or_default().to_string(),
            r.body,
        ))
    }
}

/// `http://host:port/v2/...` -> `/v2/...`; relative locations pass through.
fn strip_origin(location: &str) -> &str {
    match location
        .strip_prefix("http://")
        .or_else(|| location.strip_prefix("https://"))
    {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => location,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_locations_become_targets() {
        assert_eq!(
            strip_origin("http://127.0.0.1:5000/v2/a/b/blobs/uploads/x?_state=y"),
            "/v2/a/b/blobs/uploads/x?_state=y"
        );
        assert_eq!(
            strip_origin("/v2/a/blobs/uploads/x"),
            "/v2/a/blobs/uploads/x"
        );
    }

    #[test]
    fn registry_config_names_storage_and_address() {
        let y = config_yaml(Path::new("/tmp/x/storage"), "127.0.0.1:5000");
        assert!(y.contains("rootdirectory: /tmp/x/storage\n"));
        assert!(y.contains("addr: 127.0.0.1:5000\n"));
    }
}
