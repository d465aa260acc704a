//! Endpoints (a mirror or the registry host, with the scheme each speaks) and how one
//! endpoint's failure is classed for retrying.

use berth_db::commit::chain;
use reqwest::{StatusCode, Url};

/// One place to fetch from: a mirror or the registry host itself.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Base URL; requests go to `<base>/v2/...`.
    pub(super) base: Url,
    /// `host[:port]`, the key of `[registry.configs]`.
    pub(super) host: String,
}

impl Endpoint {
    pub(super) fn parse(s: &str) -> Result<Endpoint, String> {
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

    pub(super) fn url(&self, repo: &str, tail: &str) -> String {
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
pub(super) enum EpError {
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

pub(super) fn from_reqwest(e: reqwest::Error) -> EpError {
    let msg = chain(&e);
    if e.is_connect() {
        EpError::Connect(msg)
    } else {
        EpError::Transient(msg)
    }
}

pub(super) fn status_error(status: StatusCode) -> EpError {
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
