//! Authentication: the credentials each endpoint may get, `WWW-Authenticate` challenges,
//! the bearer token flow and the per-repository cache of what was granted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::{AUTHORIZATION, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{StatusCode, Url};

use super::blob::read_limited;
use super::endpoint::{Endpoint, EpError, from_reqwest, status_error};
use super::{RegistryClient, Source};
use crate::config::HostConfig;
use crate::reference::DEFAULT_DOMAIN;

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
    pub(super) fn user_pass(&self) -> Option<(String, String)> {
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
    pub(super) fn applies_to(&self, host: &str) -> bool {
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
pub(super) fn same_registry(a: &str, b: &str) -> bool {
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

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Parses `WWW-Authenticate` values; prefers a Bearer challenge.
pub(super) fn parse_challenges(headers: &HeaderMap) -> Option<Challenge> {
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
pub(super) fn parse_params(s: &str) -> HashMap<String, String> {
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

/// What a granted Authorization header is cached under: the endpoint, the repository and a
/// digest of the credentials that earned it (empty for none). A header earned with one
/// pull's credentials (a pod's pull secret) must never serve a pull without them, or any
/// pod could pull a private image another pod's secret opened.
pub(crate) type AuthKey = (String, String, String);

/// The credential part of an [`AuthKey`]: a SHA-256 of every secret field, so the cache
/// holds no secret in the clear.
fn creds_fingerprint(creds: Option<&Credentials>) -> String {
    use sha2::{Digest, Sha256};
    let Some(c) = creds else {
        return String::new();
    };
    let mut h = Sha256::new();
    for field in [
        &c.username,
        &c.password,
        &c.auth,
        &c.identity_token,
        &c.registry_token,
    ] {
        h.update(field.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

pub(super) struct CachedAuth {
    header: String,
    expires: Instant,
}

impl RegistryClient {
    /// The credentials endpoint `ep` gets in this pull. Kubelet's credentials and the
    /// configured ones of the image's registry go to that registry only, and to a mirror
    /// only when the mirror's entry sets `forward_credentials`; a mirror otherwise gets
    /// its own configured credentials (as containerd's hosts.toml gives each host its
    /// own), or none.
    pub(super) fn creds_for(&self, src: &Source, ep: &Endpoint) -> Option<Credentials> {
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
    pub(super) fn realm_may_get_credentials(&self, realm: &Url, ep: &Endpoint) -> bool {
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
    pub(super) async fn send(
        &self,
        src: &Source,
        ep: &Endpoint,
        build: &(dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Sync),
    ) -> Result<reqwest::Response, EpError> {
        let client = self.client(ep)?;
        let repo = src.reference.path();
        let creds = self.creds_for(src, ep);
        let key = (
            ep.base.to_string(),
            repo.to_owned(),
            creds_fingerprint(creds.as_ref()),
        );
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
}
