//! Sessions against each other over an in-memory pipe: streams, flow control, resets,
//! pings, idle and graceful ends.

use super::*;
use crate::streaming::spdy::headers::get;

fn pair(config: SessionConfig) -> ((Session, Incoming), (Session, Incoming)) {
    let (a, b) = tokio::io::duplex(8 * 1024);
    let client = Session::start(
        a,
        Role::Client,
        SessionConfig {
            announce_window: true,
            ..config.clone()
        },
    );
    let server = Session::start(b, Role::Server, config);
    (client, server)
}

/// Opens a stdout stream (this side sends nothing) in the background; the task also hands
/// back the session, which must outlive the stream.
fn open_stdout(client: Session) -> tokio::task::JoinHandle<(Session, Stream)> {
    tokio::spawn(async move {
        let s = client
            .open(hdr("streamtype", "stdout"), true)
            .await
            .unwrap();
        (client, s)
    })
}

fn hdr(name: &str, value: &str) -> Headers {
    vec![(name.to_string(), value.to_string())]
}

#[tokio::test]
async fn streams_carry_bytes_both_ways_with_half_close() {
    let ((client, _), (_server, mut incoming)) = pair(SessionConfig::default());
    let server_task = tokio::spawn(async move {
        let mut s = incoming.accept().await.unwrap();
        assert_eq!(get(&s.headers, "streamType"), Some("stdin"));
        s.reply();
        let got = s.reader.read_to_end(1 << 20).await;
        s.writer.send(Bytes::from(got.clone())).await.unwrap();
        s.writer.finish();
        got.len()
    });
    let mut s = client
        .open(hdr("streamtype", "stdin"), false)
        .await
        .unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut w = s.writer;
        let p = payload.clone();
        tokio::spawn(async move {
            w.send(Bytes::from(p)).await.unwrap();
            w.finish();
        })
    };
    let echoed = s.reader.read_to_end(1 << 20).await;
    writer.await.unwrap();
    assert_eq!(server_task.await.unwrap(), payload.len());
    assert_eq!(echoed, payload);
}

#[tokio::test]
async fn flow_control_holds_data_until_the_reader_consumes() {
    let ((client, _), (_server, mut incoming)) = pair(SessionConfig::default());
    let opener = open_stdout(client);
    let s = incoming.accept().await.unwrap();
    s.reply();
    let (client, mut cs) = opener.await.unwrap();
    // The client announced a 64 KiB window and reads nothing yet: the server's send of
    // 200 KiB cannot complete.
    let mut w = s.writer;
    let sender = tokio::spawn(async move {
        w.send(Bytes::from(vec![1u8; 200 * 1024])).await.unwrap();
        w.finish();
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!sender.is_finished(), "sent past the peer's window");
    let got = cs.reader.read_to_end(1 << 20).await;
    assert_eq!(got.len(), 200 * 1024);
    sender.await.unwrap();
    drop(client);
}

#[tokio::test]
async fn reset_stream_ends_reader_and_fails_writer() {
    let ((client, _), (_server, mut incoming)) = pair(SessionConfig::default());
    let opener = tokio::spawn(async move {
        let s = client.open(hdr("streamtype", "data"), false).await.unwrap();
        (client, s)
    });
    let mut s = incoming.accept().await.unwrap();
    s.reply();
    let (_client, mut cs) = opener.await.unwrap();
    s.writer.reset(rst::CANCEL);
    assert_eq!(cs.reader.recv().await, None);
    // The client learns of the reset asynchronously.
    let mut failed = false;
    for _ in 0..50 {
        if cs.writer.send(Bytes::from_static(b"x")).await.is_err() {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(failed, "writes to a reset stream keep succeeding");
}

#[tokio::test]
async fn refused_and_invalid_streams() {
    let config = SessionConfig {
        max_streams: 1,
        ..SessionConfig::default()
    };
    let ((client, _), (_server, mut incoming)) = pair(config);
    let opener = tokio::spawn(async move {
        let first = client.open(hdr("n", "1"), false).await.unwrap();
        let second = client.open(hdr("n", "2"), false).await;
        (client, first, second.err())
    });
    let s = incoming.accept().await.unwrap();
    s.reply();
    let (_client, _first, second) = opener.await.unwrap();
    assert_eq!(second, Some(OpenError::Reset(rst::REFUSED_STREAM)));
}

#[tokio::test]
async fn ping_is_echoed_and_disconnect_closes_everything() {
    let ((client, _), (server, mut incoming)) = pair(SessionConfig::default());
    client.ping(Duration::from_secs(5)).await.unwrap();
    server.ping(Duration::from_secs(5)).await.unwrap();
    let opener = tokio::spawn(async move {
        let s = client.open(hdr("n", "1"), false).await.unwrap();
        (client, s)
    });
    let mut s = incoming.accept().await.unwrap();
    s.reply();
    let (client, cs) = opener.await.unwrap();
    let closed = server.closed();
    drop(client);
    drop(cs);
    tokio::time::timeout(Duration::from_secs(5), closed.cancelled())
        .await
        .unwrap();
    assert_eq!(s.reader.recv().await, None);
    assert!(s.writer.send(Bytes::from_static(b"x")).await.is_err());
    assert!(incoming.accept().await.is_none());
}

#[tokio::test]
async fn idle_sessions_close() {
    let config = SessionConfig {
        idle_timeout: Duration::from_millis(100),
        ..SessionConfig::default()
    };
    let ((client, _), (server, _)) = pair(config);
    let closed = server.closed();
    tokio::time::timeout(Duration::from_secs(5), closed.cancelled())
        .await
        .unwrap();
    drop(client);
}

#[tokio::test]
async fn graceful_shutdown_delivers_everything_before_goaway() {
    let ((client, _), (server, mut incoming)) = pair(SessionConfig::default());
    let opener = open_stdout(client);
    let mut s = incoming.accept().await.unwrap();
    s.reply();
    let (client, mut cs) = opener.await.unwrap();
    s.writer.send(Bytes::from(vec![9u8; 50_000])).await.unwrap();
    s.writer.finish();
    let reader = tokio::spawn(async move { cs.reader.read_to_end(1 << 20).await });
    let shutdown = tokio::spawn(async move { server.shutdown(Duration::from_secs(5)).await });
    assert_eq!(reader.await.unwrap().len(), 50_000);
    // The client closing its end lets the server's linger end early.
    drop(client);
    tokio::time::timeout(Duration::from_secs(2), shutdown)
        .await
        .unwrap()
        .unwrap();
}
