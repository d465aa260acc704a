//! A minimal plain-HTTP/1.1 client over hyper, enough for the registry API v2.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::{Error, Result};

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
