//! A small in-process OCI registry for unit tests: serves manifests and blobs over plain
//! HTTP/1.1 on 127.0.0.1, counts requests, speaks basic or bearer auth, honours `Range`,
//! and can cut a blob download short on purpose.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::manifest::{OCI_INDEX, OCI_MANIFEST};

/// How the registry authenticates clients.
#[derive(Clone, Debug)]
pub(crate) enum Auth {
    None,
    Basic { user: String, pass: String },
    Bearer { user: String, pass: String },
}

/// A fault to inject into blob downloads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Drop {
    /// Offset in the blob at which the connection is closed.
    pub after: usize,
    /// How many downloads to cut (`usize::MAX`: all).
    pub times: usize,
}

#[derive(Default)]
struct State {
    manifests: HashMap<(String, String), (String, Vec<u8>)>,
    blobs: HashMap<String, Vec<u8>>,
    requests: HashMap<String, usize>,
    drops: HashMap<String, Drop>,
    tokens: HashSet<String>,
    blob_delay: Duration,
}

pub(crate) struct TestRegistry {
    pub addr: SocketAddr,
    auth: Auth,
    state: Mutex<State>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::ops::Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }
}

pub(crate) fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An image built for the test registry.
#[derive(Clone, Debug)]
pub(crate) struct TestImage {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
}

/// Builds config and manifest for `layers` (blobs as served; `diff_tars` uncompressed).
pub(crate) fn build_image(
    layers: &[(Vec<u8>, &str)],
    diff_tars: &[Vec<u8>],
    user: &str,
    arch: &str,
) -> (TestImage, Vec<(String, Vec<u8>)>) {
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"User": user, "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_tars.iter().map(|t| sha(t)).collect::<Vec<_>>()},
    })
    .to_string()
    .into_bytes();
    let mut blobs = vec![(sha(&config), config.clone())];
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|(blob, media)| {
            blobs.push((sha(blob), blob.clone()));
            serde_json::json!({"mediaType": media, "digest": sha(blob), "size": blob.len()})
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": layer_descs,
    })
    .to_string()
    .into_bytes();
    let img = TestImage {
        manifest_digest: sha(&manifest),
        manifest: manifest.clone(),
        config_digest: sha(&config),
        layer_digests: layers.iter().map(|(b, _)| sha(b)).collect(),
    };
    (img, blobs)
}

impl TestRegistry {
    pub(crate) async fn start(auth: Auth) -> Arc<TestRegistry> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let reg = Arc::new(TestRegistry {
            addr: listener.local_addr().unwrap(),
            auth,
            state: Mutex::default(),
            task: Mutex::new(None),
        });
        let weak = Arc::downgrade(&reg);
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let Some(reg) = weak.upgrade() else { return };
                tokio::spawn(async move { reg.serve(conn).await });
            }
        });
        *reg.task.lock().unwrap() = Some(task);
        reg
    }

    pub(crate) fn host(&self) -> String {
        self.addr.to_string()
    }

    pub(crate) fn push(
        &self,
        repo: &str,
        tag: &str,
        image: &TestImage,
        blobs: Vec<(String, Vec<u8>)>,
    ) {
        let mut s = self.state.lock().unwrap();
        for (d, b) in blobs {
            s.blobs.insert(d, b);
        }
        let entry = (OCI_MANIFEST.to_owned(), image.manifest.clone());
        s.manifests.insert((repo.into(), tag.into()), entry.clone());
        s.manifests
            .insert((repo.into(), image.manifest_digest.clone()), entry);
    }

    /// Pushes an index of `(platform json, image)` under `tag`; returns its digest.
    pub(crate) fn push_index(
        &self,
        repo: &str,
        tag: &str,
        entries: &[(serde_json::Value, &TestImage)],
    ) -> String {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": entries.iter().map(|(p, img)| serde_json::json!({
                "mediaType": OCI_MANIFEST, "digest": img.manifest_digest, "size": img.manifest.len(), "platform": p,
            })).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes();
        let d = sha(&index);
        let mut s = self.state.lock().unwrap();
        for (_, img) in entries {
            s.manifests.insert(
                (repo.into(), img.manifest_digest.clone()),
                (OCI_MANIFEST.into(), img.manifest.clone()),
            );
        }
        s.manifests
            .insert((repo.into(), tag.into()), (OCI_INDEX.into(), index.clone()));
        s.manifests
            .insert((repo.into(), d.clone()), (OCI_INDEX.into(), index));
        d
    }

    pub(crate) fn put_blob(&self, digest: &str, data: Vec<u8>) {
        self.state.lock().unwrap().blobs.insert(digest.into(), data);
    }

    /// Requests served for a path (`/v2/<repo>/blobs/<digest>`, `/token`).
    pub(crate) fn count(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .requests
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn blob_requests(&self, repo: &str, digest: &str) -> usize {
        self.count(&format!("/v2/{repo}/blobs/{digest}"))
    }

    pub(crate) fn set_drop(&self, digest: &str, d: Option<Drop>) {
        let mut s = self.state.lock().unwrap();
        match d {
            Some(d) => s.drops.insert(digest.into(), d),
            None => s.drops.remove(digest),
        };
    }

    pub(crate) fn set_blob_delay(&self, d: Duration) {
        self.state.lock().unwrap().blob_delay = d;
    }

    async fn serve(self: Arc<Self>, mut conn: TcpStream) {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            match conn.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
            if buf.len() > 65536 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        self.state
            .lock()
            .unwrap()
            .requests
            .entry(path.to_owned())
            .and_modify(|n| *n += 1)
            .or_insert(1);
        let resp = self.route(&method, path, query, &headers);
        let _ = self.respond(&mut conn, resp).await;
    }

    fn check_basic(&self, headers: &HashMap<String, String>, user: &str, pass: &str) -> bool {
        let want = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        headers
            .get("authorization")
            .is_some_and(|h| *h == format!("Basic {want}"))
    }

    fn route(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &HashMap<String, String>,
    ) -> Response {
        if path == "/token" {
            return match &self.auth {
                Auth::Bearer { user, pass } if self.check_basic(headers, user, pass) => {
                    assert!(
                        query.contains("scope=repository"),
                        "token request carries a scope: {query}"
                    );
                    let mut s = self.state.lock().unwrap();
                    let tok = format!("tok{}", s.tokens.len());
                    s.tokens.insert(tok.clone());
                    Response::ok(
                        "application/json",
                        serde_json::json!({"token": tok, "expires_in": 300})
                            .to_string()
                            .into_bytes(),
                    )
                }
                _ => Response::status(401, vec![]),
            };
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return Response::status(404, vec![]);
        };
        let repo_of = |p: &str| -> String {
            p.rfind("/manifests/")
                .or_else(|| p.rfind("/blobs/"))
                .map(|i| p[..i].to_owned())
                .unwrap_or_default()
        };
        let repo = repo_of(rest);
        match &self.auth {
            Auth::None => {}
            Auth::Basic { user, pass } => {
                if !self.check_basic(headers, user, pass) {
                    return Response::status(
                        401,
                        vec![("WWW-Authenticate".into(), "Basic realm=\"test\"".into())],
                    );
                }
            }
            Auth::Bearer { .. } => {
                let ok = headers
                    .get("authorization")
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .is_some_and(|t| self.state.lock().unwrap().tokens.contains(t));
                if !ok {
                    let challenge = format!(
                        "Bearer realm=\"http://{}/token\",service=\"test\",scope=\"repository:{repo}:pull\"",
                        self.addr
                    );
                    return Response::status(401, vec![("WWW-Authenticate".into(), challenge)]);
                }
            }
        }
        if method != "GET" {
            return Response::status(405, vec![]);
        }
        if let Some(i) = rest.rfind("/manifests/") {
            let reference = &rest[i + "/manifests/".len()..];
            let s = self.state.lock().unwrap();
            return match s.manifests.get(&(repo.clone(), reference.to_owned())) {
                Some((ct, body)) => {
                    let mut r = Response::ok(ct, body.clone());
                    r.headers.push(("Docker-Content-Digest".into(), sha(body)));
                    r
                }
                None => Response::status(404, vec![]),
            };
        }
        if let Some(i) = rest.rfind("/blobs/") {
            let digest = &rest[i + "/blobs/".len()..];
            let mut s = self.state.lock().unwrap();
            let Some(body) = s.blobs.get(digest).cloned() else {
                return Response::status(404, vec![]);
            };
            let mut resp = Response::ok("application/octet-stream", body);
            let mut start_at = 0;
            if let Some(start) = headers
                .get("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|r| r.parse::<usize>().ok())
            {
                let total = resp.body.len();
                resp.code = 206;
                resp.headers.push((
                    "Content-Range".into(),
                    format!("bytes {start}-{}/{total}", total - 1),
                ));
                resp.body = resp.body[start.min(total)..].to_vec();
                start_at = start;
            }
            if let Some(d) = s.drops.get_mut(digest)
                && d.times > 0
            {
                if d.times != usize::MAX {
                    d.times -= 1;
                }
                // The cut is at an offset of the blob, so resuming past it fails too.
                resp.cut_after = Some(d.after.saturating_sub(start_at));
            }
            resp.delay = s.blob_delay;
            return resp;
        }
        Response::status(404, vec![])
    }

    async fn respond(&self, conn: &mut TcpStream, r: Response) -> std::io::Result<()> {
        let reason = match r.code {
            200 => "OK",
            206 => "Partial Content",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Other",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
            r.code,
            r.body.len()
        );
        if let Some(ct) = &r.content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        for (k, v) in &r.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        conn.write_all(head.as_bytes()).await?;
        let body = match r.cut_after {
            Some(n) => &r.body[..n.min(r.body.len())],
            None => &r.body[..],
        };
        for chunk in body.chunks(16 << 10) {
            if !r.delay.is_zero() {
                tokio::time::sleep(r.delay).await;
            }
            conn.write_all(chunk).await?;
        }
        conn.flush().await?;
        conn.shutdown().await
    }
}

struct Response {
    code: u16,
    content_type: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    cut_after: Option<usize>,
    delay: Duration,
}

impl Response {
    fn ok(ct: &str, body: Vec<u8>) -> Response {
        Response {
            code: 200,
            content_type: Some(ct.into()),
            headers: vec![],
            body,
            cut_after: None,
            delay: Duration::ZERO,
        }
    }

    fn status(code: u16, headers: Vec<(String, String)>) -> Response {
        Response {
            code,
            content_type: None,
            headers,
            body: vec![],
            cut_after: None,
            delay: Duration::ZERO,
        }
    }
}
