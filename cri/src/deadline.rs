//! Client deadlines answered as gRPC says: a call whose `grpc-timeout` passes ends with
//! `DeadlineExceeded`, as Go's gRPC server (containerd, CRI-O) answers and critest checks.
//! tonic enforces the header itself but answers `Cancelled`; this layer sits inside tonic's
//! timer and fires just before it.

use std::task::{Context, Poll};
use std::time::Duration;

use hyper::{Request, Response};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

/// How much earlier than tonic's own timer ours fires (tokio's timers tick in milliseconds).
const MARGIN: Duration = Duration::from_millis(2);

/// Wraps services in [`Deadline`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// Ends a call with `DeadlineExceeded` when its `grpc-timeout` passes.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Deadline<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let timeout = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let method = req.uri().path().to_string();
        let call = self.inner.call(req);
        Box::pin(async move {
            let Some(timeout) = timeout else {
                return call.await;
            };
            match tokio::time::timeout(timeout.saturating_sub(MARGIN), call).await {
                Ok(r) => r,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "{method}: the client's deadline of {timeout:?} passed"
                ))
                .into_http()),
            }
        })
    }
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_as_grpc_writes_them() {
        assert_eq!(parse_grpc_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(parse_grpc_timeout("30S"), Some(Duration::from_secs(30)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_grpc_timeout("999999u"),
            Some(Duration::from_micros(999_999))
        );
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789S", "1x", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_passed_deadline_is_deadline_exceeded() {
        let slow = tower::service_fn(|_req: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        });
        let mut svc = DeadlineLayer.layer(slow);
        let req = Request::builder()
            .uri("/runtime.v1.ImageService/PullImage")
            .header("grpc-timeout", "1m")
            .body(())
            .unwrap();
        let resp = svc.call(req).await.unwrap();
        let status = Status::from_header_map(resp.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);

        let req = Request::builder().uri("/x").body(()).unwrap();
        let fast = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        });
        let resp = DeadlineLayer.layer(fast).call(req).await.unwrap();
        assert!(Status::from_header_map(resp.headers()).is_none());
    }
}
