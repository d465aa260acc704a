//! The streams phase: Exec, Attach and PortForward as kubectl uses them, through each
//! runtime's streaming server, timed from the CRI call to the first byte that comes back,
//! and the port-forward throughput over a 64 MiB download. One pod per runtime serves
//! them; the runtimes alternate round by round.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_e2e::fixtures::container_config;
use berth_test_support::streaming_client::{
    ExecOptions, RemoteCommand, SpdyPortForward, Transport,
};
use bytes::Bytes;
use k8s_cri::v1::*;

use crate::calls::kubelet_pod_config;
use crate::measure::{Figures, Runtime};
use crate::pods::remove_pod;

pub(crate) const EXEC_SPDY: &str = "Exec to first byte (SPDY)";
pub(crate) const EXEC_WS: &str = "Exec to first byte (WebSocket)";
pub(crate) const ATTACH: &str = "Attach to first byte (SPDY)";
pub(crate) const FORWARD_FIRST: &str = "PortForward to first byte (SPDY)";
pub(crate) const FORWARD_BULK: &str = "PortForward 64 MiB download (SPDY)";

/// The size of the file the port-forward throughput downloads.
pub(crate) const BULK_BYTES: usize = 64 << 20;

/// The pod's port its web server listens on.
const PORT: u16 = 80;

/// Every round trip of this phase must end within this; a stuck stream is an error.
const LIMIT: Duration = Duration::from_secs(60);

/// kubectl's exec and attach options without a terminal.
const OUT_ERR: ExecOptions = ExecOptions {
    stdin: false,
    stdout: true,
    stderr: true,
    tty: false,
};

/// A runtime's streaming pod: a web server with a small and a 64 MiB file, and a
/// container that echoes its stdin.
struct StreamPod {
    pod: String,
    web: String,
    echo: String,
}

/// The web container: writes the files, then serves them (listening means they are whole).
fn web_script() -> String {
    format!(
        "mkdir -p /www && echo small > /www/small && head -c {BULK_BYTES} /dev/zero > /www/big \
         && exec httpd -f -p {PORT} -h /www"
    )
}

async fn start_pod(rt: &Runtime) -> anyhow::Result<StreamPod> {
    let mut c = rt.client.runtime();
    let config = kubelet_pod_config(rt, &format!("{}-streams", rt.name));
    let pod = c
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            ..Default::default()
        })
        .await
        .with_context(|| format!("{}: RunPodSandbox", rt.name))?
        .into_inner()
        .pod_sandbox_id;
    let started = async {
        let script = web_script();
        let mut echo = container_config("echo", &["cat"]);
        echo.stdin = true;
        let mut ids = Vec::new();
        for spec in [container_config("web", &["sh", "-c", &script]), echo] {
            let id = c
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(spec),
                    sandbox_config: Some(config.clone()),
                })
                .await?
                .into_inner()
                .container_id;
            c.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
            ids.push(id);
        }
        Ok::<_, tonic::Status>(ids)
    };
    let ids = match started.await {
        Ok(ids) => ids,
        Err(e) => {
            remove_pod(rt, &pod).await.ok();
            return Err(e).with_context(|| format!("{}: start the streaming pod", rt.name));
        }
    };
    let me = StreamPod {
        pod,
        web: ids[0].clone(),
        echo: ids[1].clone(),
    };
    if let Err(e) = serving(rt, &me.web).await {
        remove_pod(rt, &me.pod).await.ok();
        return Err(e);
    }
    Ok(me)
}

/// Waits until the web container listens on its port.
async fn serving(rt: &Runtime, web: &str) -> anyhow::Result<()> {
    let mut c = rt.client.runtime();
    for _ in 0..200 {
        let out = c
            .exec_sync(ExecSyncRequest {
                container_id: web.into(),
                cmd: vec!["netstat".into(), "-ltn".into()],
                timeout: 10,
            })
            .await
            .with_context(|| format!("{}: netstat in the web container", rt.name))?
            .into_inner();
        if String::from_utf8_lossy(&out.stdout).contains(&format!(":{PORT} ")) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{}: the web container never listened on {PORT}", rt.name)
}

/// The phase: `rounds` rounds, each runtime in turn, of every stream measurement. The pods
/// are removed before an error is returned.
pub(crate) async fn streams(runs: &mut [(Runtime, Figures)], rounds: usize) -> anyhow::Result<()> {
    let mut pods = Vec::new();
    let mut result = Ok(());
    for (rt, _) in runs.iter() {
        match start_pod(rt).await {
            Ok(p) => pods.push(p),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        'rounds: for i in 0..rounds {
            for ((rt, f), pod) in runs.iter_mut().zip(&pods) {
                let r = tokio::time::timeout(LIMIT, round(rt, f, pod, i))
                    .await
                    .unwrap_or_else(|_| bail!("{}: a stream round took over {LIMIT:?}", rt.name));
                if let Err(e) = r {
                    result = Err(e);
                    break 'rounds;
                }
            }
        }
    }
    for ((rt, _), pod) in runs.iter().zip(&pods) {
        if let Err(e) = remove_pod(rt, &pod.pod).await {
            result = result.and(Err(e));
        }
    }
    result
}

async fn round(rt: &Runtime, f: &mut Figures, pod: &StreamPod, i: usize) -> anyhow::Result<()> {
    // Both offer v5 first, as kubectl does; containerd 1.6 answers with v4.
    let ws = Transport::WebSocket(vec!["v5.channel.k8s.io".into(), "v4.channel.k8s.io".into()]);
    for (op, transport) in [(EXEC_SPDY, Transport::spdy()), (EXEC_WS, ws)] {
        let d = exec_first_byte(rt, &pod.web, &transport)
            .await
            .with_context(|| format!("{}: {op}", rt.name))?;
        f.op(op).push_ms(d);
    }
    let d = attach_first_byte(rt, &pod.echo, i)
        .await
        .with_context(|| format!("{}: {ATTACH}", rt.name))?;
    f.op(ATTACH).push_ms(d);
    let d = forward(rt, &pod.pod, "/small", b"small\n")
        .await
        .with_context(|| format!("{}: {FORWARD_FIRST}", rt.name))?;
    f.op(FORWARD_FIRST).push_ms(d.0);
    let d = forward(rt, &pod.pod, "/big", &[])
        .await
        .with_context(|| format!("{}: {FORWARD_BULK}", rt.name))?;
    if d.2 != BULK_BYTES {
        bail!(
            "{}: {FORWARD_BULK}: {} bytes, not {BULK_BYTES}",
            rt.name,
            d.2
        );
    }
    f.op(FORWARD_BULK).push_ms(d.1);
    Ok(())
}

/// Exec of `echo` in `container`: from the Exec call to the first byte of its output;
/// then the rest of the session (the output and a success status) is checked.
async fn exec_first_byte(
    rt: &Runtime,
    container: &str,
    transport: &Transport,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let url = rt
        .client
        .runtime()
        .exec(ExecRequest {
            container_id: container.into(),
            cmd: vec!["echo".into(), "streamed".into()],
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .url;
    let mut rc = RemoteCommand::connect(&url, OUT_ERR, transport, None).await?;
    let mut out = rc.take_stdout().context("no stdout stream")?;
    let first = out.recv().await.context("no output")?;
    let elapsed = t.elapsed();
    let mut all = first.to_vec();
    all.extend(out.read_to_end().await);
    let result = rc.wait().await;
    if all != b"streamed\n" || result.status.exit_code() != Some(0) {
        bail!(
            "output {:?}, status {:?}",
            String::from_utf8_lossy(&all),
            result.status
        );
    }
    Ok(elapsed)
}

/// Attach to the `cat` container: from the Attach call to the first byte of the line it
/// echoes back (the line is sent as soon as the streams are open).
async fn attach_first_byte(rt: &Runtime, container: &str, i: usize) -> anyhow::Result<Duration> {
    let opts = ExecOptions {
        stdin: true,
        ..OUT_ERR
    };
    let t = Instant::now();
    let url = rt
        .client
        .runtime()
        .attach(AttachRequest {
            container_id: container.into(),
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        })
        .await?
        .into_inner()
        .url;
    let mut rc = RemoteCommand::connect(&url, opts, &Transport::spdy(), None).await?;
    let mut out = rc.take_stdout().context("no stdout stream")?;
    let line = format!("line{i}\n");
    rc.write_stdin(line.as_bytes()).await?;
    let mut seen = out.recv().await.context("no output")?.to_vec();
    let elapsed = t.elapsed();
    while !seen.ends_with(line.as_bytes()) {
        seen.extend(out.recv().await.context("the echo ended early")?);
    }
    // Detaches: the container keeps running for the next round.
    drop((out, rc));
    Ok(elapsed)
}

/// A port-forwarded `GET path` to the web server: the time from the PortForward call to
/// the first byte of the answer, the time from the request to its last byte, and the
/// body's length. The body must start with `expect`.
async fn forward(
    rt: &Runtime,
    pod: &str,
    path: &str,
    expect: &[u8],
) -> anyhow::Result<(Duration, Duration, usize)> {
    let t = Instant::now();
    let url = rt
        .client
        .runtime()
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.into(),
            port: vec![i32::from(PORT)],
        })
        .await?
        .into_inner()
        .url;
    let mut pf = SpdyPortForward::connect(&url, None).await?;
    let mut conn = pf.open(PORT).await?;
    let asked = Instant::now();
    let get = format!("GET {path} HTTP/1.0\r\n\r\n");
    conn.writer.send(Bytes::from(get)).await?;
    let mut head = conn.reader.recv().await.context("no answer")?.to_vec();
    let first = t.elapsed();
    // Only the headers are kept; the body is counted.
    let start = loop {
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        head.extend(
            conn.reader
                .recv()
                .await
                .context("the headers ended early")?,
        );
    };
    while head.len() < start + expect.len() {
        let more = conn.reader.recv().await.context("the body ended early")?;
        head.extend(more);
    }
    if !head.starts_with(b"HTTP/1.") || !head[start..].starts_with(expect) {
        bail!(
            "answer {:?}",
            String::from_utf8_lossy(&head[..head.len().min(400)])
        );
    }
    let mut body = head.len() - start;
    while let Some(chunk) = conn.reader.recv().await {
        body += chunk.len();
    }
    let all = asked.elapsed();
    let mut error = Vec::new();
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = conn.error.recv().await {
            error.extend_from_slice(&chunk);
        }
    });
    // A server that leaves the error stream open after a clean transfer reported nothing.
    let _ = drained.await;
    pf.close().await;
    if !error.is_empty() {
        bail!("error stream: {}", String::from_utf8_lossy(&error));
    }
    Ok((first, all, body))
}
