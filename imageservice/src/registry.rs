//! The registry client: endpoints (mirrors, then the host), TLS per host, authentication
//! (anonymous, bearer token, basic), manifest resolution and blob streams that resume
//! after a dropped connection.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use sha2::{Digest, Sha256};

use crate::config::{HostConfig, RegistryConfig};
use crate::error::Error;
use crate::manifest::{MANIFEST_ACCEPT, MAX_MANIFEST_SIZE};
use crate::reference::{DEFAULT_DOMAIN, Reference};

mod auth;
mod blob;
mod endpoint;
mod roots;

pub use auth::{Credentials, MAX_TOKEN_RESPONSE_SIZE};
pub use blob::{BlobStream, verify};
pub use endpoint::Endpoint;
pub(crate) use roots::prewarm as prewarm_tls_roots;

use auth::{AuthKey, CachedAuth, same_registry};
use blob::read_limited;
use endpoint::{EpError, status_error};

/// How transient failures are retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Consecutive failures tolerated per endpoint before moving on.
    pub attempts: u32,
    /// Delay before the first retry; doubled each time.
    pub base_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(200),
        }
    }
}

/// A manifest (or index) fetched by tag or digest.
#[derive(Debug)]
pub struct FetchedManifest {
    /// The raw bytes (their digest is the manifest's digest).
    pub body: Vec<u8>,
    /// `sha256:` of `body`.
    pub digest: String,
    /// The registry's `Content-Type`.
    pub content_type: Option<String>,
}

/// The registry client. One per image store; cheap to share.
pub struct RegistryClient {
    config: RegistryConfig,
    retry: RetryPolicy,
    clients: Mutex<HashMap<String, reqwest::Client>>,
    auth: Mutex<HashMap<AuthKey, CachedAuth>>,
}

/// The endpoints of one pull, in the order to try, with its credentials.
#[derive(Clone, Debug)]
pub struct Source {
    /// The reference being pulled.
    pub reference: Reference,
    endpoints: Vec<Endpoint>,
    creds: Option<Credentials>,
}

impl Source {
    /// Moves `i` to the front: later fetches start where the manifest was found.
    fn prefer(&mut self, i: usize) {
        let ep = self.endpoints.remove(i);
        self.endpoints.insert(0, ep);
    }
}

impl RegistryClient {
    /// A client for `config`.
    pub fn new(config: RegistryConfig, retry: RetryPolicy) -> RegistryClient {
        RegistryClient {
            config,
            retry,
            clients: Mutex::default(),
            auth: Mutex::default(),
        }
    }

    /// The endpoints for `reference`: its mirrors in order, then the host itself.
    pub fn source(
        &self,
        reference: &Reference,
        creds: Option<Credentials>,
    ) -> Result<Source, Error> {
        let domain = reference.domain();
        let mut endpoints = Vec::new();
        if let Some(m) = self.config.mirrors.get(domain) {
            for e in &m.endpoints {
                match Endpoint::parse(e) {
                    Ok(ep) => endpoints.push(ep),
                    Err(reason) => {
                        tracing::warn!(registry = domain, %reason, "mirror endpoint skipped")
                    }
                }
            }
        }
        let origin = if domain == DEFAULT_DOMAIN {
            "registry-1.docker.io"
        } else {
            domain
        };
        let origin = Endpoint::parse(origin).map_err(|reason| Error::InvalidReference {
            reference: reference.to_string(),
            reason,
        })?;
        if !endpoints.iter().any(|e| e.base == origin.base) {
            endpoints.push(origin);
        }
        let creds = creds.filter(|c| *c != Credentials::default());
        Ok(Source {
            reference: reference.clone(),
            endpoints,
            creds,
        })
    }

    fn client(&self, ep: &Endpoint) -> Result<reqwest::Client, EpError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&ep.host) {
            return Ok(c.clone());
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            // The system's roots, read once per daemon rather than once per host.
            .tls_built_in_native_certs(false);
        for c in roots::native() {
            b = b.add_root_certificate(c.clone());
        }
        if let Some(hc) = self.host_config(&ep.host) {
            if hc.insecure {
                b = b.danger_accept_invalid_certs(true);
            }
            if let Some(ca) = &hc.ca_file {
                let pem = std::fs::read(ca).map_err(|e| {
                    EpError::Fatal(format!("reading CA file {}: {e}", ca.display()))
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| EpError::Fatal(format!("CA file {}: {e}", ca.display())))?;
                for c in certs {
                    b = b.add_root_certificate(c);
                }
            }
        }
        let c = b
            .build()
            .map_err(|e| EpError::Fatal(format!("http client: {}", berth_db::commit::chain(&e))))?;
        clients.insert(ep.host.clone(), c.clone());
        Ok(c)
    }

    /// TLS settings of a host: its `host:port` entry, else its bare host's.
    fn host_config(&self, host: &str) -> Option<&HostConfig> {
        self.config.configs.get(host).or_else(|| {
            let bare = host.rsplit_once(':').map(|(h, _)| h)?;
            self.config.configs.get(bare)
        })
    }

    /// The entry of exactly this registry (`host:port` as written, Docker Hub's names as
    /// one): credentials and the right to forward them are per registry, never shared by
    /// the other ports of a host.
    fn registry_config(&self, host: &str) -> Option<&HostConfig> {
        self.config.configs.get(host).or_else(|| {
            self.config
                .configs
                .iter()
                .find(|(k, _)| same_registry(k, host))
                .map(|(_, c)| c)
        })
    }

    /// Runs `op` on each endpoint in order, retrying transient failures with backoff,
    /// and turns the collected failures into one error.
    async fn each_endpoint<T, F, Fut>(
        &self,
        src: &Source,
        what: &str,
        mut op: F,
    ) -> Result<(usize, T), Error>
    where
        F: FnMut(usize, Endpoint) -> Fut,
        Fut: std::future::Future<Output = Result<T, EpError>>,
    {
        let mut failures: Vec<(String, EpError)> = Vec::new();
        for (i, ep) in src.endpoints.iter().enumerate() {
            let mut delay = self.retry.base_delay;
            let mut attempt = 1;
            loop {
                match op(i, ep.clone()).await {
                    Ok(v) => return Ok((i, v)),
                    Err(EpError::Transient(m)) if attempt < self.retry.attempts => {
                        tracing::debug!(endpoint = %ep, attempt, error = %m, "{what}: retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                        attempt += 1;
                    }
                    Err(e) => {
                        tracing::debug!(endpoint = %ep, error = %e, "{what}: endpoint failed");
                        failures.push((ep.to_string(), e));
                        break;
                    }
                }
            }
        }
        Err(self.combine(src, what, failures))
    }

    fn combine(&self, src: &Source, what: &str, failures: Vec<(String, EpError)>) -> Error {
        let endpoints = failures
            .iter()
            .map(|(e, _)| e.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if failures.iter().all(|(_, e)| matches!(e, EpError::NotFound)) {
            return Error::ManifestNotFound {
                reference: format!("{what} of {}", src.reference),
                endpoints,
            };
        }
        // The origin host's answer decides between "denied" and "unavailable".
        if let Some((ep, EpError::Unauthorized(reason))) = failures.last() {
            return Error::Unauthorized {
                endpoint: ep.clone(),
                repository: src.reference.path().to_owned(),
                reason: reason.clone(),
            };
        }
        let message = failures
            .iter()
            .map(|(ep, e)| format!("{ep}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        Error::Registry {
            reference: src.reference.to_string(),
            message: format!("{what}: {message}"),
        }
    }

    /// Fetches the manifest `object` (a tag or digest) and verifies it when `object` is a
    /// digest. On success the endpoint that answered becomes the source's first.
    pub async fn fetch_manifest(
        &self,
        src: &mut Source,
        object: &str,
    ) -> Result<FetchedManifest, Error> {
        let repo = src.reference.path().to_owned();
        let want_digest = object.starts_with("sha256:").then_some(object);
        let (i, m) = self
            .each_endpoint(src, &format!("manifest {object}"), |_, ep| {
                let url = ep.url(&repo, &format!("manifests/{object}"));
                let src = &*src;
                async move {
                    let build = move |c: &reqwest::Client| {
                        c.get(url.as_str()).header(ACCEPT, MANIFEST_ACCEPT)
                    };
                    let resp = self.send(src, &ep, &build).await?;
                    if !resp.status().is_success() {
                        return Err(status_error(resp.status()));
                    }
                    let content_type = resp
                        .headers()
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(String::from);
                    let header_digest = resp
                        .headers()
                        .get("docker-content-digest")
                        .and_then(|v| v.to_str().ok())
                        .map(String::from);
                    let body = read_limited(resp, MAX_MANIFEST_SIZE, "manifest").await?;
                    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
                    if let Some(w) = want_digest.filter(|w| *w != digest) {
                        return Err(EpError::Fatal(format!(
                            "manifest digest mismatch: want {w}, got {digest}"
                        )));
                    }
                    if let Some(h) =
                        header_digest.filter(|h| h.starts_with("sha256:") && *h != digest)
                    {
                        return Err(EpError::Fatal(format!(
                            "manifest hashes to {digest}, registry says {h}"
                        )));
                    }
                    Ok(FetchedManifest {
                        body,
                        digest,
                        content_type,
                    })
                }
            })
            .await?;
        src.prefer(i);
        Ok(m)
    }
}

#[cfg(test)]
mod tests;
