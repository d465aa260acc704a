//! The registry client: endpoints (mirrors, then the host), TLS per host, authentication
//! (anonymous, bearer token, basic), manifest resolution and blob streams that resume
//! after a dropped connection.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, RANGE, WWW_AUTHENTICATE,
};
use reqwest::{StatusCode, Url};
use sha2::{Digest, Sha256};

use crate::config::{HostConfig, RegistryConfig};
use crate::error::Error;
use crate::manifest::{MANIFEST_ACCEPT, MAX_MANIFEST_SIZE};
use crate::reference::{DEFAULT_DOMAIN, Reference};

/// Credentials for a pull, as kubelet sends them in the CRI `AuthConfig`. Empty strings
/// mean "not given".
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User name for basic auth or the token endpoint.
    pub username: String,
    /// Password.
    pub password: String,
    /// `base64(username:password)`; used when `username` is empty.
    pub auth: String,
    /// The registry host these credentials are for; empty means any host.
    pub server_address: String,
    /// OAuth2 refresh token, exchanged at the token endpoint.
    pub identity_token: String,
    /// A bearer token sent to the registry as is.
    pub registry_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log secrets.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("server_address", &self.server_address)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The credentials a host config gives, if any.
    fn from_host_config(c: &HostConfig) -> Option<Credentials> {
        let creds = Credentials {
            username: c.username.clone().unwrap_or_default(),
            password: c.password.clone().unwrap_or_default(),
            auth: c.auth.clone().unwrap_or_default(),
            identity_token: c.identity_token.clone().unwrap_or_default(),
            ..Default::default()
        };
        (creds != Credentials::default()).then_some(creds)
    }

    /// User and password, decoding `auth` when the fields are empty.
    fn user_pass(&self) -> Option<(String, String)> {
        if !self.username.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        if self.auth.is_empty() {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(self.auth.trim())
            .ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        Some((u.to_owned(), p.to_owned()))
    }

    /// Whether these request credentials apply to `host` (containerd's `ParseAuth`): an
    /// empty `server_address` applies to any host, so the caller decides which.
    fn applies_to(&self, host: &str) -> bool {
        if self.server_address.is_empty() {
            return true;
        }
        let addr = self.server_address.as_str();
        let addr = addr.split_once("://").map(|(_, r)| r).unwrap_or(addr);
        let addr = addr.split('/').next().unwrap_or(addr);
        same_registry(addr, host)
    }
}

/// Whether two `host[:port]` names are one registry (Docker Hub has several names).
fn same_registry(a: &str, b: &str) -> bool {
    let canon = |h: &str| -> String {
        match h {
            "index.docker.io" | "registry-1.docker.io" | "docker.io" => DEFAULT_DOMAIN.into(),
            h => h.to_ascii_lowercase(),
        }
    };
    canon(a) == canon(b)
}

/// Says why a pull went without its credentials.
fn withheld_note(realm: &str) -> String {
    format!(
        " (credentials withheld from the plain-http token realm {realm}: set insecure = true for its host in [registry.configs] to send them)"
    )
}

/// The largest token-endpoint answer read into memory (tokens are a few KiB).
pub const MAX_TOKEN_RESPONSE_SIZE: u64 = 256 << 10;

/// One place to fetch from: a mirror or the registry host itself.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Base URL; requests go to `<base>/v2/...`.
    base: Url,
    /// `host[:port]`, the key of `[registry.configs]`.
    host: String,
}

impl Endpoint {
    fn parse(s: &str) -> Result<Endpoint, String> {
        let with_scheme = if s.contains("://") {
            s.to_owned()
        } else {
            let host = s.split('/').next().unwrap_or(s);
            format!("{}://{s}", default_scheme(host))
        };
        let mut base =
            Url::parse(&with_scheme).map_err(|e| format!("invalid endpoint {s:?}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(format!("invalid endpoint {s:?}: need an http or https URL"));
        }
        let path = base
            .path()
            .trim_end_matches('/')
            .trim_end_matches("/v2")
            .to_owned();
        base.set_path(&path);
        let host = match base.port() {
            Some(p) => format!("{}:{p}", base.host_str().unwrap_or_default()),
            None => base.host_str().unwrap_or_default().to_owned(),
        };
        Ok(Endpoint { base, host })
    }

    fn url(&self, repo: &str, tail: &str) -> String {
        format!(
            "{}/v2/{repo}/{tail}",
            self.base.as_str().trim_end_matches('/')
        )
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.base.as_str().trim_end_matches('/'))
    }
}

/// Loopback registries speak plain HTTP by default, as in containerd.
fn default_scheme(host: &str) -> &'static str {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    if name == "localhost" || name == "::1" || name.starts_with("127.") {
        "http"
    } else {
        "https"
    }
}

/// Why one endpoint failed.
#[derive(Debug)]
enum EpError {
    /// Connection refused or DNS failure: try the next endpoint at once.
    Connect(String),
    /// 5xx, 429, timeout, dropped connection: retry with backoff.
    Transient(String),
    /// 404.
    NotFound,
    /// 401 after authenticating, or 403.
    Unauthorized(String),
    /// Any other refusal.
    Fatal(String),
}

impl std::fmt::Display for EpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EpError::Connect(m) | EpError::Transient(m) | EpError::Fatal(m) => f.write_str(m),
            EpError::NotFound => f.write_str("not found"),
            EpError::Unauthorized(m) => write!(f, "unauthorized: {m}"),
        }
    }
}

fn from_reqwest(e: reqwest::Error) -> EpError {
    let msg = error_chain(&e);
    if e.is_connect() {
        EpError::Connect(msg)
    } else {
        EpError::Transient(msg)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn status_error(status: StatusCode) -> EpError {
    match status {
        StatusCode::NOT_FOUND => EpError::NotFound,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            EpError::Unauthorized(format!("registry answered {status}"))
        }
        s if s.is_server_error()
            || s == StatusCode::TOO_MANY_REQUESTS
            || s == StatusCode::REQUEST_TIMEOUT =>
        {
            EpError::Transient(format!("registry answered {status}"))
        }
        s => EpError::Fatal(format!("registry answered {s}")),
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Parses `WWW-Authenticate` values; prefers a Bearer challenge.
fn parse_challenges(headers: &HeaderMap) -> Option<Challenge> {
    let mut basic = false;
    for v in headers.get_all(WWW_AUTHENTICATE) {
        let Ok(v) = v.to_str() else { continue };
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            basic = true;
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let params = parse_params(rest);
            if let Some(realm) = params.get("realm") {
                return Some(Challenge::Bearer {
                    realm: realm.clone(),
                    service: params.get("service").cloned(),
                    scope: params.get("scope").cloned(),
                });
            }
        }
    }
    basic.then_some(Challenge::Basic)
}

/// `key="quoted \" value", key2=token` -> map (keys lower-cased).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    out
}

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

struct CachedAuth {
    header: String,
    expires: Instant,
}

/// The registry client. One per image store; cheap to share.
pub struct RegistryClient {
    config: RegistryConfig,
    retry: RetryPolicy,
    clients: Mutex<HashMap<String, reqwest::Client>>,
    auth: Mutex<HashMap<(String, String), CachedAuth>>,
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
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
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
            .map_err(|e| EpError::Fatal(format!("http client: {}", error_chain(&e))))?;
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

    /// The credentials endpoint `ep` gets in this pull. Kubelet's credentials and the
    /// configured ones of the image's registry go to that registry only, and to a mirror
    /// only when the mirror's entry sets `forward_credentials`; a mirror otherwise gets
    /// its own configured credentials (as containerd's hosts.toml gives each host its
    /// own), or none.
    fn creds_for(&self, src: &Source, ep: &Endpoint) -> Option<Credentials> {
        let registry = src.reference.domain();
        let own_config = self.registry_config(&ep.host);
        let may_forward =
            same_registry(&ep.host, registry) || own_config.is_some_and(|c| c.forward_credentials);
        if let Some(c) = &src.creds {
            // Given for this very host (`server_address`), or for the image's registry.
            let for_this_host = !c.server_address.is_empty() && c.applies_to(&ep.host);
            if for_this_host || (may_forward && c.applies_to(registry)) {
                return Some(c.clone());
            }
        }
        if let Some(c) = own_config.and_then(Credentials::from_host_config) {
            return Some(c);
        }
        if may_forward {
            return self
                .registry_config(registry)
                .and_then(Credentials::from_host_config);
        }
        None
    }

    /// Whether credentials may go to the token realm `realm` that endpoint `ep` named:
    /// over https always (the registry chose its token service, as for Docker Hub's
    /// auth.docker.io); over plain http only back to the endpoint's own origin (the same
    /// plain connection the operator chose for the registry, e.g. a loopback one) or to a
    /// host configured `insecure`. A realm is chosen by the server, not by the operator, so
    /// a loopback realm on another port is not trusted for being loopback: any local user
    /// can listen there.
    fn realm_may_get_credentials(&self, realm: &Url, ep: &Endpoint) -> bool {
        if realm.scheme() == "https" {
            return true;
        }
        let same_origin = realm.scheme() == ep.base.scheme()
            && realm.host_str() == ep.base.host_str()
            && realm.port_or_known_default() == ep.base.port_or_known_default();
        if same_origin {
            return true;
        }
        let host = match (realm.host_str(), realm.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return false,
        };
        self.host_config(&host).is_some_and(|c| c.insecure)
    }

    /// Sends a request, answering one authentication challenge.
    async fn send(
        &self,
        src: &Source,
        ep: &Endpoint,
        build: &(dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Sync),
    ) -> Result<reqwest::Response, EpError> {
        let client = self.client(ep)?;
        let repo = src.reference.path();
        let creds = self.creds_for(src, ep);
        let key = (ep.base.to_string(), repo.to_owned());
        let mut header = match creds.as_ref().filter(|c| !c.registry_token.is_empty()) {
            Some(c) => Some(format!("Bearer {}", c.registry_token)),
            None => {
                let cache = self.auth.lock().unwrap_or_else(|p| p.into_inner());
                cache
                    .get(&key)
                    .filter(|a| a.expires > Instant::now())
                    .map(|a| a.header.clone())
            }
        };
        // Why a second 401 may not mean that the credentials are wrong.
        let mut note = String::new();
        for round in 0..2 {
            let mut rb = build(&client);
            if let Some(h) = &header {
                rb = rb.header(AUTHORIZATION, h);
            }
            let resp = rb.send().await.map_err(from_reqwest)?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            if round == 1 {
                let what = if creds.is_some() && note.is_empty() {
                    "credentials rejected"
                } else {
                    "authentication required"
                };
                return Err(EpError::Unauthorized(format!("{what}{note}")));
            }
            let (h, ttl) = match parse_challenges(resp.headers()) {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope,
                }) => {
                    let scope = scope.unwrap_or_else(|| format!("repository:{repo}:pull"));
                    let (token, ttl, withheld) = self
                        .fetch_token(
                            &client,
                            ep,
                            &realm,
                            service.as_deref(),
                            &scope,
                            creds.as_ref(),
                        )
                        .await?;
                    if withheld {
                        note = withheld_note(&realm);
                    }
                    (format!("Bearer {token}"), ttl)
                }
                Some(Challenge::Basic) => {
                    let (u, p) = creds.as_ref().and_then(|c| c.user_pass()).ok_or_else(|| {
                        EpError::Unauthorized(
                            "registry wants basic auth and no credentials were given".into(),
                        )
                    })?;
                    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                    (format!("Basic {enc}"), Duration::from_secs(3600))
                }
                None => {
                    return Err(EpError::Unauthorized(
                        "401 without a usable WWW-Authenticate challenge".into(),
                    ));
                }
            };
            self.auth.lock().unwrap_or_else(|p| p.into_inner()).insert(
                key.clone(),
                CachedAuth {
                    header: h.clone(),
                    expires: Instant::now() + ttl,
                },
            );
            header = Some(h);
        }
        unreachable!("the loop returns on its second round")
    }

    /// The bearer token flow: GET the realm with our credentials (or POST a refresh token);
    /// anonymously when the realm may not have them.
    async fn fetch_token(
        &self,
        client: &reqwest::Client,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        creds: Option<&Credentials>,
    ) -> Result<(String, Duration, bool), EpError> {
        let realm_url = Url::parse(realm)
            .map_err(|e| EpError::Fatal(format!("bad token realm {realm:?}: {e}")))?;
        if !matches!(realm_url.scheme(), "http" | "https") {
            return Err(EpError::Fatal(format!(
                "bad token realm {realm:?}: need an http or https URL"
            )));
        }
        let withheld = creds.is_some() && !self.realm_may_get_credentials(&realm_url, ep);
        if withheld {
            tracing::warn!(
                endpoint = %ep, realm,
                "credentials withheld from a plain-http token realm; asking for an anonymous token"
            );
        }
        let creds = creds.filter(|_| !withheld);
        let note = if withheld {
            withheld_note(realm)
        } else {
            String::new()
        };
        let mut params: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(s) = service {
            params.push(("service", s));
        }
        let rb = match creds {
            Some(c) if !c.identity_token.is_empty() => {
                params.extend([
                    ("grant_type", "refresh_token"),
                    ("refresh_token", c.identity_token.as_str()),
                    ("client_id", "berth"),
                ]);
                client.post(realm_url).form(&params)
            }
            _ => {
                let rb = client.get(realm_url).query(&params);
                match creds.and_then(|c| c.user_pass()) {
                    Some((u, p)) => rb.basic_auth(u, Some(p)),
                    None => rb,
                }
            }
        };
        let resp = rb.send().await.map_err(from_reqwest)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    EpError::Unauthorized(format!("token endpoint {realm} answered {status}{note}"))
                }
                s => {
                    let mut e = status_error(s);
                    if let EpError::Fatal(m) | EpError::Transient(m) = &mut e {
                        *m = format!("token endpoint {realm}: {m}");
                    }
                    e
                }
            });
        }
        let body = read_limited(resp, MAX_TOKEN_RESPONSE_SIZE, "token response")
            .await
            .map_err(|e| match e {
                EpError::Fatal(m) => EpError::Fatal(format!("token endpoint {realm}: {m}")),
                e => e,
            })?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| EpError::Fatal(format!("token endpoint {realm}: bad response: {e}")))?;
        let token = if t.token.is_empty() {
            t.access_token
        } else {
            t.token
        };
        if token.is_empty() {
            return Err(EpError::Fatal(format!(
                "token endpoint {realm} returned no token"
            )));
        }
        // Refresh a little early; registries default to 60 s.
        let ttl = Duration::from_secs(t.expires_in.unwrap_or(60).max(10) - 5);
        Ok((token, ttl, withheld))
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

    /// Opens a streaming download of blob `digest` of `size` bytes.
    pub fn blob_stream<'a>(&'a self, src: &'a Source, digest: &str, size: u64) -> BlobStream<'a> {
        BlobStream {
            client: self,
            src,
            digest: digest.to_owned(),
            size,
            offset: 0,
            endpoint: 0,
            failures: 0,
            delay: self.retry.base_delay,
            skip: 0,
            resp: None,
            errors: Vec::new(),
        }
    }

    /// Downloads a small blob (a config) into memory, verified.
    pub async fn fetch_blob(
        &self,
        src: &Source,
        digest: &str,
        size: u64,
    ) -> Result<Vec<u8>, Error> {
        if size > MAX_MANIFEST_SIZE {
            return Err(Error::InvalidImage {
                reference: src.reference.to_string(),
                reason: format!(
                    "config blob {digest} is {size} bytes, more than {MAX_MANIFEST_SIZE}"
                ),
            });
        }
        let mut s = self.blob_stream(src, digest, size);
        let mut out = Vec::with_capacity(size as usize);
        while let Some(chunk) = s.next().await? {
            out.extend_from_slice(&chunk);
        }
        verify(digest, size, &out)?;
        Ok(out)
    }
}

/// Checks `data` is `size` bytes hashing to `digest`.
pub fn verify(digest: &str, size: u64, data: &[u8]) -> Result<(), Error> {
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(data)));
    if data.len() as u64 != size || actual != digest {
        return Err(Error::DigestMismatch {
            expected: format!("{digest} ({size} bytes)"),
            actual: format!("{actual} ({} bytes)", data.len()),
        });
    }
    Ok(())
}

/// Reads a response body of at most `limit` bytes into memory; a larger one (announced or
/// not) is an error naming `what` and the limit, read no further.
async fn read_limited(
    mut resp: reqwest::Response,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, EpError> {
    let too_big = || EpError::Fatal(format!("{what} larger than the limit of {limit} bytes"));
    if resp.content_length().is_some_and(|l| l > limit) {
        return Err(too_big());
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(from_reqwest)? {
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(too_big());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A blob download that yields at most `size` bytes, resuming with `Range` requests after
/// a dropped connection and moving to the next endpoint when one keeps failing. The
/// caller verifies the digest of what it received.
pub struct BlobStream<'a> {
    client: &'a RegistryClient,
    src: &'a Source,
    digest: String,
    size: u64,
    offset: u64,
    endpoint: usize,
    failures: u32,
    delay: Duration,
    /// Bytes to drop from the current response (a server that ignored `Range`).
    skip: u64,
    resp: Option<reqwest::Response>,
    errors: Vec<(String, EpError)>,
}

impl BlobStream<'_> {
    /// The next chunk, `None` once `size` bytes have been delivered.
    pub async fn next(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            if self.offset == self.size {
                return Ok(None);
            }
            let Some(ep) = self.src.endpoints.get(self.endpoint).cloned() else {
                let errors = std::mem::take(&mut self.errors);
                return Err(self.client.combine(
                    self.src,
                    &format!("blob {}", self.digest),
                    errors,
                ));
            };
            let step = match self.resp.as_mut() {
                None => self.open(&ep).await.map(|()| None),
                Some(resp) => match resp.chunk().await {
                    Ok(Some(chunk)) => Ok(Some(chunk)),
                    Ok(None) => Err(EpError::Transient(format!(
                        "connection closed at byte {} of {}",
                        self.offset, self.size
                    ))),
                    Err(e) => Err(EpError::Transient(error_chain(&e))),
                },
            };
            match step {
                Ok(None) => {}
                Ok(Some(mut chunk)) => {
                    if self.skip > 0 {
                        let n = self.skip.min(chunk.len() as u64);
                        self.skip -= n;
                        chunk = chunk.slice(n as usize..);
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    if self.offset + chunk.len() as u64 > self.size {
                        return Err(Error::DigestMismatch {
                            expected: format!("{} ({} bytes)", self.digest, self.size),
                            actual: "more bytes than the descriptor's size".into(),
                        });
                    }
                    self.offset += chunk.len() as u64;
                    // Progress resets the failure budget.
                    self.failures = 0;
                    self.delay = self.client.retry.base_delay;
                    return Ok(Some(chunk));
                }
                Err(e) => {
                    self.resp = None;
                    self.failures += 1;
                    let retry = matches!(e, EpError::Transient(_))
                        && self.failures < self.client.retry.attempts;
                    tracing::debug!(blob = %self.digest, endpoint = %ep, offset = self.offset, error = %e, retry, "blob download failed");
                    if retry {
                        tokio::time::sleep(self.delay).await;
                        self.delay *= 2;
                    } else {
                        self.errors.push((ep.to_string(), e));
                        self.endpoint += 1;
                        self.failures = 0;
                        self.delay = self.client.retry.base_delay;
                    }
                }
            }
        }
    }

    async fn open(&mut self, ep: &Endpoint) -> Result<(), EpError> {
        let url = ep.url(self.src.reference.path(), &format!("blobs/{}", self.digest));
        let offset = self.offset;
        let build = move |c: &reqwest::Client| {
            let rb = c.get(url.as_str());
            if offset > 0 {
                rb.header(RANGE, format!("bytes={offset}-"))
            } else {
                rb
            }
        };
        let resp = self.client.send(self.src, ep, &build).await?;
        match resp.status() {
            StatusCode::OK => self.skip = offset,
            StatusCode::PARTIAL_CONTENT => {
                let start = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(offset) {
                    return Err(EpError::Transient(format!(
                        "bad Content-Range for resume at {offset}"
                    )));
                }
                self.skip = 0;
            }
            s => return Err(status_error(s)),
        }
        self.resp = Some(resp);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn endpoint_schemes() {
        let e = Endpoint::parse("127.0.0.1:5000").unwrap();
        assert_eq!(e.to_string(), "http://127.0.0.1:5000");
        assert_eq!(e.host, "127.0.0.1:5000");
        assert_eq!(
            Endpoint::parse("localhost").unwrap().to_string(),
            "http://localhost"
        );
        assert_eq!(
            Endpoint::parse("[::1]:5000").unwrap().to_string(),
            "http://[::1]:5000"
        );
        assert_eq!(
            Endpoint::parse("registry.k8s.io").unwrap().to_string(),
            "https://registry.k8s.io"
        );
        let e = Endpoint::parse("http://mirror.example:8080/v2/").unwrap();
        assert_eq!(
            e.url("library/busybox", "manifests/latest"),
            "http://mirror.example:8080/v2/library/busybox/manifests/latest"
        );
        let e = Endpoint::parse("https://mirror.example/prefix").unwrap();
        assert_eq!(
            e.url("a/b", "blobs/x"),
            "https://mirror.example/prefix/v2/a/b/blobs/x"
        );
        assert!(Endpoint::parse("ftp://x").is_err());
    }

    #[test]
    fn mirrors_then_origin() {
        let mut config = RegistryConfig::default();
        config.mirrors.insert(
            "docker.io".into(),
            crate::config::MirrorConfig {
                endpoints: vec!["http://127.0.0.1:1".into(), "127.0.0.1:5000".into()],
            },
        );
        let c = RegistryClient::new(config, RetryPolicy::default());
        let r = Reference::parse("busybox").unwrap();
        let s = c.source(&r, None).unwrap();
        let eps: Vec<String> = s.endpoints.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            eps,
            [
                "http://127.0.0.1:1",
                "http://127.0.0.1:5000",
                "https://registry-1.docker.io"
            ]
        );
        let r = Reference::parse("quay.io/a/b").unwrap();
        let s = c.source(&r, None).unwrap();
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(s.endpoints[0].to_string(), "https://quay.io");
    }

    #[test]
    fn challenges() {
        let mut h = HeaderMap::new();
        h.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
            ),
        );
        assert_eq!(
            parse_challenges(&h),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        let mut h = HeaderMap::new();
        h.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="Registry Realm""#),
        );
        assert_eq!(parse_challenges(&h), Some(Challenge::Basic));
        let p = parse_params(r#"realm="a\"b", service=svc , scope="x,y""#);
        assert_eq!(p["realm"], "a\"b");
        assert_eq!(p["service"], "svc");
        assert_eq!(p["scope"], "x,y");
    }

    fn client_with(configs: &[(&str, HostConfig)], mirrors: &[(&str, &[&str])]) -> RegistryClient {
        let mut config = RegistryConfig::default();
        for (h, c) in configs {
            config.configs.insert((*h).into(), c.clone());
        }
        for (h, eps) in mirrors {
            config.mirrors.insert(
                (*h).into(),
                crate::config::MirrorConfig {
                    endpoints: eps.iter().map(|e| (*e).into()).collect(),
                },
            );
        }
        RegistryClient::new(config, RetryPolicy::default())
    }

    fn user(name: &str) -> HostConfig {
        HostConfig {
            username: Some(name.into()),
            password: Some("secret".into()),
            ..Default::default()
        }
    }

    /// Who gets which user name, endpoint by endpoint.
    fn sent(c: &RegistryClient, image: &str, creds: Option<Credentials>) -> Vec<(String, String)> {
        let src = c.source(&Reference::parse(image).unwrap(), creds).unwrap();
        src.endpoints
            .iter()
            .map(|ep| {
                let u = c
                    .creds_for(&src, ep)
                    .map(|c| c.username)
                    .unwrap_or_default();
                (ep.host.clone(), u)
            })
            .collect()
    }

    fn pair(h: &str, u: &str) -> (String, String) {
        (h.into(), u.into())
    }

    #[test]
    fn credentials_go_only_to_the_host_they_were_given_for() {
        let kubelet = |server: &str| Credentials {
            username: "kubelet".into(),
            password: "pw".into(),
            server_address: server.into(),
            ..Default::default()
        };
        let c = client_with(
            &[("127.0.0.1:5000", user("origin-user"))],
            &[("127.0.0.1:5000", &["http://127.0.0.1:6000"])],
        );
        let image = "127.0.0.1:5000/app:1";
        // Kubelet's credentials, with or without server_address: the origin only.
        for server in ["", "127.0.0.1:5000", "http://127.0.0.1:5000/v2/"] {
            assert_eq!(
                sent(&c, image, Some(kubelet(server))),
                [
                    pair("127.0.0.1:6000", ""),
                    pair("127.0.0.1:5000", "kubelet")
                ],
                "server_address {server:?}"
            );
        }
        // Configured credentials of the origin: the origin only.
        assert_eq!(
            sent(&c, image, None),
            [
                pair("127.0.0.1:6000", ""),
                pair("127.0.0.1:5000", "origin-user")
            ]
        );
        // Credentials given for the mirror's own host go to it.
        assert_eq!(
            sent(&c, image, Some(kubelet("127.0.0.1:6000"))),
            [
                pair("127.0.0.1:6000", "kubelet"),
                pair("127.0.0.1:5000", "origin-user")
            ]
        );
        // A mirror with its own configured credentials gets those.
        let c = client_with(
            &[
                ("127.0.0.1:5000", user("origin-user")),
                ("127.0.0.1:6000", user("mirror-user")),
            ],
            &[("127.0.0.1:5000", &["http://127.0.0.1:6000"])],
        );
        assert_eq!(
            sent(&c, image, Some(kubelet(""))),
            [
                pair("127.0.0.1:6000", "mirror-user"),
                pair("127.0.0.1:5000", "kubelet")
            ]
        );
        // A bare host's entry is not another port's credentials.
        let c = client_with(
            &[("127.0.0.1", user("bare"))],
            &[("127.0.0.1:5000", &["http://127.0.0.1:6000"])],
        );
        assert_eq!(
            sent(&c, image, None),
            [pair("127.0.0.1:6000", ""), pair("127.0.0.1:5000", "")]
        );
        // The operator may let a mirror have them.
        let c = client_with(
            &[
                ("127.0.0.1:5000", user("origin-user")),
                (
                    "127.0.0.1:6000",
                    HostConfig {
                        forward_credentials: true,
                        ..Default::default()
                    },
                ),
            ],
            &[("127.0.0.1:5000", &["http://127.0.0.1:6000"])],
        );
        assert_eq!(
            sent(&c, image, Some(kubelet(""))),
            [
                pair("127.0.0.1:6000", "kubelet"),
                pair("127.0.0.1:5000", "kubelet")
            ]
        );
        assert_eq!(
            sent(&c, image, None),
            [
                pair("127.0.0.1:6000", "origin-user"),
                pair("127.0.0.1:5000", "origin-user")
            ]
        );
        // Kubelet's credentials for another registry go nowhere.
        assert_eq!(
            sent(&c, image, Some(kubelet("quay.io"))),
            [
                pair("127.0.0.1:6000", "origin-user"),
                pair("127.0.0.1:5000", "origin-user")
            ]
        );
        // Docker Hub's names are one registry.
        let c = client_with(
            &[("docker.io", user("hub"))],
            &[("docker.io", &["http://127.0.0.1:6000"])],
        );
        assert_eq!(
            sent(&c, "busybox", Some(kubelet("https://index.docker.io/v1/"))),
            [
                pair("127.0.0.1:6000", ""),
                pair("registry-1.docker.io", "kubelet")
            ]
        );
        assert_eq!(
            sent(&c, "busybox", None),
            [
                pair("127.0.0.1:6000", ""),
                pair("registry-1.docker.io", "hub")
            ]
        );
    }

    #[test]
    fn plain_http_token_realms_get_credentials_only_when_trusted() {
        let c = client_with(
            &[(
                "127.0.0.1:7000",
                HostConfig {
                    insecure: true,
                    ..Default::default()
                },
            )],
            &[],
        );
        let ep = Endpoint::parse("127.0.0.1:5000").unwrap();
        let ok = |realm: &str| c.realm_may_get_credentials(&Url::parse(realm).unwrap(), &ep);
        assert!(ok("https://auth.example/token"));
        assert!(ok("https://127.0.0.1:9000/token"));
        assert!(
            ok("http://127.0.0.1:5000/token"),
            "the endpoint's own origin"
        );
        assert!(!ok("http://127.0.0.1:5001/token"), "another loopback port");
        assert!(!ok("http://localhost:5000/token"), "another name");
        assert!(!ok("http://auth.example/token"));
        assert!(ok("http://127.0.0.1:7000/token"), "configured insecure");
        let https_ep = Endpoint::parse("https://registry.example").unwrap();
        let ok = |realm: &str| c.realm_may_get_credentials(&Url::parse(realm).unwrap(), &https_ep);
        assert!(!ok("http://registry.example/token"), "a downgrade");
        assert!(ok("https://registry.example/token"));
    }

    /// Serves one response to every connection: `head` then `len` bytes of `x`.
    async fn serve_body(len: usize, announce: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let head = if announce {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
                } else {
                    "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned()
                };
                let _ = c.write_all(head.as_bytes()).await;
                let chunk = vec![b'x'; 64 << 10];
                let mut left = len;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if c.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                    left -= n;
                }
            }
        });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn bodies_read_into_memory_are_capped() {
        let client = reqwest::Client::new();
        for announce in [true, false] {
            let url = serve_body(1 << 20, announce).await;
            let resp = client.get(&url).send().await.unwrap();
            match read_limited(resp, 64 << 10, "token response").await {
                Err(EpError::Fatal(m)) => assert_eq!(
                    m, "token response larger than the limit of 65536 bytes",
                    "announced {announce}"
                ),
                other => panic!("{other:?}"),
            }
            let resp = client.get(&url).send().await.unwrap();
            assert_eq!(
                read_limited(resp, 1 << 20, "x").await.unwrap().len(),
                1 << 20
            );
        }
    }

    #[test]
    fn credentials() {
        let c = Credentials {
            auth: "dXNlcjpwYTpzcw==".into(),
            ..Default::default()
        };
        assert_eq!(c.user_pass(), Some(("user".into(), "pa:ss".into())));
        let c = Credentials {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        assert_eq!(c.user_pass(), Some(("u".into(), "p".into())));
        assert!(c.applies_to("anything:5000"));
        let c = Credentials {
            server_address: "https://index.docker.io/v1/".into(),
            ..c
        };
        assert!(c.applies_to("docker.io"));
        assert!(c.applies_to("registry-1.docker.io"));
        assert!(!c.applies_to("quay.io"));
        assert!(
            !format!("{c:?}").contains("\"p\""),
            "password never printed"
        );
    }
}
