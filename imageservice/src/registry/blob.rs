//! Blob downloads: streams that resume after a dropped connection, small blobs read into
//! memory, and the digest check of what arrived.

use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use sha2::{Digest, Sha256};

use super::endpoint::{Endpoint, EpError, from_reqwest, status_error};
use super::{RegistryClient, Source};
use crate::error::Error;
use crate::manifest::MAX_MANIFEST_SIZE;

impl RegistryClient {
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
pub(super) async fn read_limited(
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
                    Err(e) => Err(EpError::Transient(berth_db::commit::chain(&e))),
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
