//! Port forwarding: over SPDY (`portforward.k8s.io`), each forwarded connection is a pair of
//! streams (`data` and `error`) sharing a `requestID`, for any port the client names; over
//! WebSocket, each port of the request gets two channels (data `2n`, error `2n+1`), each
//! starting with the port as a little-endian u16. Both connect to localhost inside the pod's
//! network namespace.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::backend::StreamBackend;
use super::netns::dial_localhost;
use super::remotecommand::{LINGER, STREAM_CREATION_TIMEOUT};
use super::spdy::session::{StreamReader, StreamWriter};
use super::spdy::{self, Role, Session, SessionConfig, frame::rst};
use super::websocket::{self, ChannelCodec, WsConfig, WsConn, WsRole, WsSender};

/// The SPDY subprotocol of port forwarding.
pub const SPDY_PROTOCOLS: &[&str] = &["portforward.k8s.io"];
/// WebSocket subprotocols of port forwarding (`""`: the client asked for none).
pub const WS_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "v4.base64.channel.k8s.io", ""];

/// After the pod's side of a connection ended, how long client data may still flow. SPDY
/// clients only close their side once the error stream ends, and WebSocket clients cannot
/// close it at all.
const AFTER_POD_EOF: Duration = Duration::from_secs(1);
/// Concurrent forwarded connections on one SPDY session (two streams each).
const MAX_PAIRS: usize = 128;

/// What the SPDY error stream carries, as current kubelets write it.
#[derive(Debug, Serialize)]
struct ErrorResponse {
    /// Whether the client should give up the whole session.
    #[serde(rename = "closeConnection", skip_serializing_if = "std::ops::Not::not")]
    close_connection: bool,
    /// What happened.
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
}

/// How one forwarded connection ended.
enum Outcome {
    /// Both sides finished.
    Done,
    /// The client went away: nothing to report.
    ClientGone,
    /// The pod's side failed or could not be reached.
    Failed {
        message: String,
        /// A reset or broken pipe from the pod: the session stays usable.
        transient: bool,
    },
}

/// Serves port forwarding over an upgraded SPDY connection for `pod_id`.
pub async fn serve_spdy<IO>(io: IO, pod_id: String, backend: Arc<dyn StreamBackend>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (session, mut incoming) = Session::start(
        io,
        Role::Server,
        SessionConfig {
            max_streams: MAX_PAIRS * 2,
            ..SessionConfig::default()
        },
    );
    let closed = session.closed();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            s = incoming.accept() => {
                let Some(stream) = s else { break };
                let Some((kind, port)) = check_stream(&stream.headers) else {
                    stream.refuse(rst::PROTOCOL_ERROR);
                    continue;
                };
                stream.reply();
                let request_id = match spdy::header(&stream.headers, "requestid") {
                    Some(id) if !id.is_empty() => id.to_string(),
                    // Clients older than request ids: pair streams by consecutive ids.
                    _ => match kind {
                        Kind::Error => stream.id.to_string(),
                        Kind::Data => stream.id.saturating_sub(2).to_string(),
                    },
                };
                let pair = pairs.entry(request_id.clone()).or_insert_with(|| Pair {
                    created: Instant::now(),
                    port,
                    data: None,
                    error: None,
                });
                let slot = match kind {
                    Kind::Data => &mut pair.data,
                    Kind::Error => &mut pair.error,
                };
                if slot.is_some() {
                    let what = if kind == Kind::Data { "data" } else { "error" };
                    let msg = format!(
                        "error processing stream for request {request_id}: {what} stream already assigned"
                    );
                    if let Some(err) = pair.error.as_mut() {
                        let _ = err.writer.send(Bytes::from(msg)).await;
                    }
                    continue;
                }
                *slot = Some(stream);
                if pair.data.is_some() && pair.error.is_some()
                    && let Some(pair) = pairs.remove(&request_id)
                    && let (Some(data), Some(error)) = (pair.data, pair.error)
                {
                    let backend = backend.clone();
                    let pod = pod_id.clone();
                    forwards.spawn(forward_spdy(backend, pod, pair.port, data, error));
                }
            }
            _ = tick.tick() => {
                let expired: Vec<String> = pairs
                    .iter()
                    .filter(|(_, p)| p.created.elapsed() >= STREAM_CREATION_TIMEOUT)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    if let Some(mut pair) = pairs.remove(&id)
                        && let Some(err) = pair.error.as_mut()
                    {
                        let msg = format!("(request={id}) timed out waiting for streams");
                        let _ = err.writer.send(Bytes::from(msg)).await;
                    }
                }
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
            _ = closed.cancelled() => break,
        }
    }
    // Dropping the set aborts every forward and closes its connection into the pod.
    forwards.abort_all();
    drop(forwards);
    session.shutdown(LINGER).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Error,
}

struct Pair {
    created: Instant,
    port: u16,
    data: Option<spdy::Stream>,
    error: Option<spdy::Stream>,
}

/// The stream's type and port, if both headers are valid.
fn check_stream(headers: &spdy::Headers) -> Option<(Kind, u16)> {
    let port: u16 = spdy::header(headers, "port")?.parse().ok()?;
    if port == 0 {
        return None;
    }
    let kind = match spdy::header(headers, "streamtype")? {
        "data" => Kind::Data,
        "error" => Kind::Error,
        _ => return None,
    };
    Some((kind, port))
}

async fn forward_spdy(
    backend: Arc<dyn StreamBackend>,
    pod_id: String,
    port: u16,
    data: spdy::Stream,
    error: spdy::Stream,
) {
    let spdy::Stream {
        reader: data_in,
        writer: data_out,
        ..
    } = data;
    let mut error_out = error.writer;
    let outcome = match connect(&*backend, &pod_id, port).await {
        Ok(tcp) => copy_spdy(tcp, data_in, data_out).await,
        Err(message) => Outcome::Failed {
            message,
            transient: false,
        },
    };
    if let Outcome::Failed { message, transient } = outcome {
        let response = ErrorResponse {
            close_connection: !transient,
            message: format!("error forwarding port {port} to pod {pod_id}, uid : {message}"),
        };
        let mut bytes = serde_json::to_vec(&response).unwrap_or_default();
        bytes.push(b'\n');
        let _ = error_out.send(Bytes::from(bytes)).await;
    }
    error_out.finish();
}

async fn connect(
    backend: &dyn StreamBackend,
    pod_id: &str,
    port: u16,
) -> Result<TcpStream, String> {
    let netns = backend
        .pod_netns(pod_id)
        .await
        .map_err(|s| s.message().to_string())?;
    dial_localhost(netns.as_deref(), port)
        .await
        .map_err(|e| berth_db::commit::chain(&e))
}

async fn copy_spdy(
    tcp: TcpStream,
    mut from_client: StreamReader,
    mut to_client: StreamWriter,
) -> Outcome {
    let (mut pod_read, mut pod_write) = tcp.into_split();
    let upstream = async {
        while let Some(bytes) = from_client.recv().await {
            pod_write.write_all(&bytes).await?;
        }
        // The client finished sending: the pod sees EOF but may still answer.
        pod_write.shutdown().await
    };
    let downstream = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = pod_read.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if to_client
                .send(Bytes::copy_from_slice(&buf[..n]))
                .await
                .is_err()
            {
                return Ok(false);
            }
        }
        to_client.finish();
        Ok::<bool, std::io::Error>(true)
    };
    tokio::pin!(upstream, downstream);
    let mut up_done = None;
    let down = tokio::select! {
        d = &mut downstream => d,
        u = &mut upstream => {
            up_done = Some(u);
            (&mut downstream).await
        }
    };
    let up = match up_done {
        Some(u) => Some(u),
        None => tokio::time::timeout(AFTER_POD_EOF, &mut upstream)
            .await
            .ok(),
    };
    match (down, up) {
        (Ok(false), _) => Outcome::ClientGone,
        (Err(e), _) | (_, Some(Err(e))) => Outcome::Failed {
            transient: matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            message: e.to_string(),
        },
        _ => Outcome::Done,
    }
}

/// Serves port forwarding over an upgraded WebSocket connection for `pod_id` and the ports
/// of its request.
pub async fn serve_ws<IO>(
    io: IO,
    protocol: String,
    pod_id: String,
    ports: Vec<u16>,
    backend: Arc<dyn StreamBackend>,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (conn, sender, mut receiver) = WsConn::start(io, WsRole::Server, WsConfig::default());
    let codec = ChannelCodec::for_protocol(&protocol);
    let mut inputs = Vec::with_capacity(ports.len());
    let mut forwards = JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let data_channel = (i * 2) as u8;
        let le = port.to_le_bytes();
        let _ = sender.send(codec.encode(data_channel, &le)).await;
        let _ = sender.send(codec.encode(data_channel + 1, &le)).await;
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        inputs.push(Some(tx));
        forwards.spawn(forward_ws(
            backend.clone(),
            pod_id.clone(),
            port,
            rx,
            sender.clone(),
            codec,
            data_channel,
        ));
    }
    let dispatcher = tokio::spawn(async move {
        while let Some((ch, data)) = receiver.recv_channel(codec).await {
            let (index, is_data) = (usize::from(ch) / 2, ch % 2 == 0);
            if is_data && let Some(slot) = inputs.get_mut(index) {
                websocket::forward(slot, data).await;
            }
        }
    });
    let closed = conn.closed();
    tokio::select! {
        _ = async { while forwards.join_next().await.is_some() {} } => {}
        _ = closed.cancelled() => {}
    }
    forwards.abort_all();
    dispatcher.abort();
    conn.shutdown(1000, LINGER).await;
}

async fn forward_ws(
    backend: Arc<dyn StreamBackend>,
    pod_id: String,
    port: u16,
    mut from_client: mpsc::Receiver<Bytes>,
    sender: WsSender,
    codec: ChannelCodec,
    data_channel: u8,
) {
    let tcp = match connect(&*backend, &pod_id, port).await {
        Ok(tcp) => tcp,
        Err(message) => {
            let text = format!("error forwarding port {port} to pod {pod_id}, uid : {message}");
            let _ = sender
                .send(codec.encode(data_channel + 1, text.as_bytes()))
                .await;
            return;
        }
    };
    let (mut pod_read, mut pod_write) = tcp.into_split();
    let upstream = async {
        while let Some(bytes) = from_client.recv().await {
            if pod_write.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = pod_write.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match pod_read.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    if sender
                        .send(codec.encode(data_channel, &buf[..n]))
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    };
    tokio::pin!(upstream);
    let result = tokio::select! {
        r = downstream => r,
        _ = &mut upstream => Ok(()),
    };
    let _ = tokio::time::timeout(AFTER_POD_EOF, &mut upstream).await;
    if let Err(e) = result {
        let text = format!("error forwarding port {port} to pod {pod_id}, uid : {e}");
        let _ = sender
            .send(codec.encode(data_channel + 1, text.as_bytes()))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> spdy::Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn stream_headers_are_validated_as_kubelet_does() {
        assert_eq!(
            check_stream(&h(&[("port", "8080"), ("streamtype", "data")])),
            Some((Kind::Data, 8080))
        );
        assert_eq!(
            check_stream(&h(&[("port", "1"), ("streamtype", "error")])),
            Some((Kind::Error, 1))
        );
        let rejected: [&[(&str, &str)]; 6] = [
            &[("streamtype", "data")],
            &[("port", "0"), ("streamtype", "data")],
            &[("port", "65536"), ("streamtype", "data")],
            &[("port", "x"), ("streamtype", "data")],
            &[("port", "80"), ("streamtype", "stdin")],
            &[("port", "80")],
        ];
        for headers in rejected {
            assert_eq!(check_stream(&h(headers)), None, "{headers:?}");
        }
    }

    #[test]
    fn error_response_is_kubelets_json() {
        let r = ErrorResponse {
            close_connection: true,
            message: "boom".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"closeConnection":true,"message":"boom"}"#
        );
        let r = ErrorResponse {
            close_connection: false,
            message: "reset".into(),
        };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"message":"reset"}"#);
    }
}
