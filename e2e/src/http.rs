//! A minimal plain-HTTP/1.1 client over hyper, enough for the registry API v2.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// A listener on a free loopback port, for a local test server, and its address.
pub async fn loopback_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// The accepting task of a local test server, aborted when dropped (with the server that
/// holds it).
#[derive(Debug, Default)]
pub struct AcceptTask(Mutex<Option<JoinHandle<()>>>);

impl AcceptTask {
    /// Accepts connections on `listener` for as long as `server` lives (it is held
    /// weakly), handing each to `serve` on a task of its own.
    pub fn start<S, F, Fut>(&self, listener: TcpListener, server: &Arc<S>, serve: F)
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<S>, TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let weak = Arc::downgrade(server);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let Some(server) = weak.upgrade() else { return };
                tokio::spawn(serve(server, conn));
            }
        });
        *self.0.lock().unwrap() = Some(task);
    }
}

impl Drop for AcceptTask {
    fn drop(&mut self) {
        if let Some(t) = self.0.lock().unwrap().take() {
            t.abort();
        }
    }
}

/// The `Authorization` value of basic auth for `user` and `pass`. Encoded here rather than
/// with the product's base64 library, so that the tests check the daemon against an
/// encoder of their own.
pub fn basic_auth(user: &str, pass: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let data = format!("{user}:{pass}").into_bytes();
    let mut out = String::from("Basic ");
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// A response read to the end.
#[derive(Debug)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: hyper::HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Response {
    /// A header's value as text, if present and valid.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request to `addr` on a fresh connection and reads the whole response.
/// `target` is the path and query (`/v2/...`).
pub async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Response> {
    let url = format!("http://{addr}{target}");
    let fail = |source: Box<dyn std::error::Error + Send + Sync>| Error::Http {
        method: method.to_string(),
        url: url.clone(),
        source,
    };
    let stream = TcpStream::connect(addr).await.map_err(|e| fail(e.into()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail(e.into()))?;
    let driver = tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(target)
        .header("host", addr.to_string())
        .header("content-length", body.len());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).map_err(|e| fail(e.into()))?;
    let resp = sender.send_request(req).await.map_err(|e| fail(e.into()))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(e.into()))?
        .to_bytes();
    drop(sender);
    driver.abort();
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// The head of one HTTP/1.1 request, as the tests' own small proxies and token servers read
/// it (they answer one request per connection).
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// `GET /v2/... HTTP/1.1`.
    pub request_line: String,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// Reads up to the blank line that ends the head; `None` if the peer closes first.
    pub async fn read<R: AsyncRead + Unpin>(stream: &mut R) -> Option<RequestHead> {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 8192];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            match stream.read(&mut tmp).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_owned();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Some(RequestHead {
            request_line,
            headers,
        })
    }

    /// A header's value (`name` lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The request target's path, without its query.
    pub fn path(&self) -> &str {
        let target = self.request_line.split(' ').nth(1).unwrap_or("/");
        target.split('?').next().unwrap_or("/")
    }

    /// Sends the request to `upstream` (`host:port`) on a new connection without its
    /// `Authorization`, and reads the whole response; `None` if that fails.
    pub async fn forward_without_credentials(&self, upstream: &str) -> Option<Vec<u8>> {
        let mut up = TcpStream::connect(upstream).await.ok()?;
        let mut fwd = format!("{}\r\n", self.request_line);
        for (k, v) in &self.headers {
            if k != "authorization" && k != "connection" {
                fwd.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        fwd.push_str("Connection: close\r\n\r\n");
        up.write_all(fwd.as_bytes()).await.ok()?;
        let mut resp = Vec::new();
        up.read_to_end(&mut resp).await.ok()?;
        Some(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_base64_with_padding() {
        // RFC 7617's example, and no, two and one padding characters.
        assert_eq!(
            basic_auth("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(basic_auth("a", "b"), "Basic YTpi");
        assert_eq!(basic_auth("ab", "c"), "Basic YWI6Yw==");
        assert_eq!(basic_auth("ab", "cd"), "Basic YWI6Y2Q=");
    }
}
