//! Single-use tokens: an Exec, Attach or PortForward request is parked under a random token
//! that the returned URL carries, for about a minute, as kubelet's request cache does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_cri::v1::{AttachRequest, ExecRequest, PortForwardRequest};

/// How long a token stays valid, as in kubelet.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Requests parked at once, as in kubelet; more are refused with `ResourceExhausted`.
pub const MAX_IN_FLIGHT: usize = 1000;
/// Random bytes in a token (192 bits).
const TOKEN_BYTES: usize = 24;

/// A request waiting for its client to connect.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamRequest {
    /// `/exec/<token>`.
    Exec(ExecRequest),
    /// `/attach/<token>`.
    Attach(AttachRequest),
    /// `/portforward/<token>`.
    PortForward(PortForwardRequest),
}

/// The cache is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("maximum number of in-flight streaming requests ({0}) exceeded")]
pub struct TooManyRequests(pub usize);

/// Parked requests by token.
pub struct TokenCache {
    ttl: Duration,
    max: usize,
    entries: Mutex<HashMap<String, (Instant, StreamRequest)>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new(TOKEN_TTL, MAX_IN_FLIGHT)
    }
}

impl TokenCache {
    /// A cache whose tokens expire after `ttl`, holding at most `max` requests.
    pub fn new(ttl: Duration, max: usize) -> TokenCache {
        TokenCache {
            ttl,
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Parks `req` and returns its new token (URL-safe).
    pub fn insert(&self, req: StreamRequest) -> Result<String, TooManyRequests> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (expires, _)| *expires > now);
        if entries.len() >= self.max {
            return Err(TooManyRequests(self.max));
        }
        loop {
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(rand::random::<[u8; TOKEN_BYTES]>());
            if !entries.contains_key(&token) {
                entries.insert(token.clone(), (now + self.ttl, req));
                return Ok(token);
            }
        }
    }

    /// Takes the request parked under `token`; `None` if unknown, already used or expired.
    pub fn consume(&self, token: &str) -> Option<StreamRequest> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (expires, req) = entries.remove(token)?;
        (expires > Instant::now()).then_some(req)
    }

    /// Requests parked and not yet expired.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|(expires, _)| *expires > now)
            .count()
    }

    /// Whether no request is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(id: &str) -> StreamRequest {
        StreamRequest::Exec(ExecRequest {
            container_id: id.into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
    }

    #[test]
    fn a_token_is_used_once() {
        let cache = TokenCache::default();
        let token = cache.insert(exec("c1")).unwrap();
        assert_eq!(token.len(), 32);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(cache.consume(&token), Some(exec("c1")));
        assert_eq!(cache.consume(&token), None);
        assert_eq!(cache.consume("never-issued"), None);
    }

    #[test]
    fn tokens_differ_and_map_to_their_own_request() {
        let cache = TokenCache::default();
        let a = cache.insert(exec("a")).unwrap();
        let b = cache.insert(exec("b")).unwrap();
        assert_ne!(a, b);
        assert_eq!(cache.consume(&b), Some(exec("b")));
        assert_eq!(cache.consume(&a), Some(exec("a")));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let cache = TokenCache::new(Duration::from_millis(30), 10);
        let token = cache.insert(exec("c1")).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.consume(&token), None);
    }

    #[test]
    fn the_cache_is_bounded_and_expiry_frees_room() {
        let cache = TokenCache::new(Duration::from_millis(30), 2);
        cache.insert(exec("1")).unwrap();
        cache.insert(exec("2")).unwrap();
        assert_eq!(cache.insert(exec("3")), Err(TooManyRequests(2)));
        assert_eq!(cache.len(), 2);
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.is_empty());
        cache.insert(exec("4")).unwrap();
    }
}
