//! The restart phase: a Berth daemon restarted with no pods and with a busy node, timed
//! to RuntimeReady and to a true ListPodSandbox.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_e2e::{Client, Daemon, images};
use k8s_cri::v1::*;

use crate::Settings;
use crate::measure::{Figures, RESTART_BUSY, RESTART_EMPTY, RESTART_LISTED, berth_runtime};
use crate::pods::{pull, remove_pod, run_pod};

/// Stops `d` (SIGTERM: its pods keep running) and launches it again; returns the time from
/// launch to the first `Status` that reports RuntimeReady, and to the first
/// `ListPodSandbox` that lists every pod of `pods` READY: what kubelet waits for after a
/// runtime restart. Both are polled every millisecond, the list right after readiness
/// (Berth answers it only once its pods are checked, so it is true when it comes).
pub(crate) async fn restarted(
    d: &mut Daemon,
    pods: &[String],
) -> anyhow::Result<(Duration, Duration)> {
    d.stop().await?;
    let socket = d.socket().to_path_buf();
    let t = Instant::now();
    d.spawn_again()?;
    let give_up = || -> anyhow::Result<()> {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("berth was not ready within 60 s of its restart");
        }
        Ok(())
    };
    let client = loop {
        if let Ok(client) = Client::connect(&socket).await {
            break client;
        }
        give_up()?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let mut c = client.runtime();
    let ready = loop {
        let ready = c
            .status(StatusRequest { verbose: false })
            .await
            .is_ok_and(|r| {
                r.into_inner().status.is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.r#type == "RuntimeReady" && c.status)
                })
            });
        if ready {
            break t.elapsed();
        }
        give_up()?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let listed = loop {
        let items = c
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .context("ListPodSandbox after a restart")?
            .into_inner()
            .items;
        let all_ready = pods.iter().all(|id| {
            items
                .iter()
                .any(|p| &p.id == id && p.state == PodSandboxState::SandboxReady as i32)
        });
        if all_ready {
            break t.elapsed();
        }
        give_up()?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    d.wait_serving(Duration::from_secs(5)).await?;
    Ok((ready, listed))
}

/// Restart cost as kubelet feels it: a Berth daemon restarted with no pods, then
/// with `restart_pods` running pods (each with a container), timed from launch to
/// RuntimeReady and to the first true ListPodSandbox. Berth only: containerd restarts its
/// CRI plugin with the whole daemon, which this benchmark does not manage.
pub(crate) async fn restart(settings: &Settings, f: &mut Figures) -> anyhow::Result<()> {
    let mut d = Daemon::builder()
        .config("[log]\nlevel = \"warn\"")
        .start()
        .await
        .context("start berth")?;
    let rt = berth_runtime(&d)?;
    std::fs::create_dir_all(&rt.logs)?;
    pull(&rt, images::BUSYBOX).await?;
    for _ in 0..settings.restarts {
        let (ready, _) = restarted(&mut d, &[]).await?;
        f.op(RESTART_EMPTY).push_ms(ready);
    }
    // Ten at a time: the density phase measures a burst; this one only needs them running.
    let rt = berth_runtime(&d)?;
    let mut pods = Vec::new();
    let mut result = Ok(());
    'start: for first in (0..settings.restart_pods).step_by(10) {
        let last = (first + 10).min(settings.restart_pods);
        let started = futures::future::join_all(
            (first..last).map(|i| run_pod(&rt, format!("berth-restart-{i}"))),
        )
        .await;
        for r in started {
            match r {
                Ok(pod) => pods.push(pod),
                Err(e) => result = Err(e),
            }
        }
        if result.is_err() {
            break 'start;
        }
    }
    if result.is_ok() {
        for _ in 0..settings.restarts {
            match restarted(&mut d, &pods).await {
                Ok((ready, listed)) => {
                    f.op(RESTART_BUSY).push_ms(ready);
                    f.op(RESTART_LISTED).push_ms(listed);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    if d.is_running() && d.wait_serving(Duration::from_secs(5)).await.is_ok() {
        let rt = berth_runtime(&d)?;
        let removed = futures::future::join_all(pods.iter().map(|p| remove_pod(&rt, p))).await;
        if let Some(Err(e)) = removed.into_iter().find(Result::is_err) {
            result = result.and(Err(e));
        }
        d.stop().await?;
    }
    result
}
