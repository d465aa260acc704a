//! Root-only: the per-pod memory of monitors, read from `/proc/<pid>/smaps_rollup` with ten
//! pods each running one container that logs five lines a second (the targets in SPECIFICATION.md: RSS <= 1 MiB, PSS <= 256 KiB).

mod common;

use std::time::Duration;

use common::*;

fn rollup(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field).map(|r| {
                r.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap()
            })
        })
        .unwrap()
}

// A figure, not a behaviour: it holds for the release monitor on a quiet machine, so it is
// not part of the default run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "memory figure of the release monitor: cargo test --release -p berth-runtime --test monitor_memory -- --ignored"]
async fn monitor_rss_and_pss_per_pod() {
    assert!(can_run(), "needs root");
    let env = Env::new();
    let mut pids = Vec::new();
    for i in 0..10 {
        let pc = env.pod_config(&format!("mem-{i}"));
        let pod = env.run_pod(&pc).await;
        let script = "while true; do echo tick; sleep 0.2; done";
        let id = env.run_sh(&pod, &pc, "c", script).await;
        let r = env
            .rt
            .exec_sync(&id, &["true".into()], Duration::from_secs(5))
            .await;
        assert_eq!(r.unwrap().exit_code, 0);
        pids.push(env.monitor_pid(&pod));
    }
    // Measured once the monitors have settled (they trim 2 s after activity), while the
    // containers keep running.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let rss: Vec<u64> = pids.iter().map(|p| rollup(*p, "Rss:")).collect();
    let pss: Vec<u64> = pids.iter().map(|p| rollup(*p, "Pss:")).collect();
    let max_rss = *rss.iter().max().unwrap();
    let mean_pss = pss.iter().sum::<u64>() / pss.len() as u64;
    if std::env::var_os("BERTH_SMAPS").is_some() {
        let worst = pids.iter().max_by_key(|p| rollup(**p, "Rss:")).unwrap();
        let smaps = std::fs::read_to_string(format!("/proc/{worst}/smaps")).unwrap();
        let mut head = String::new();
        for line in smaps.lines() {
            if line.contains('-') && !line.contains(':')
                || line
                    .split_whitespace()
                    .next()
                    .is_some_and(|w| w.contains('-') && w.len() > 20)
            {
                head = line.to_owned();
            } else if let Some(v) = line.strip_prefix("Rss:") {
                println!("{:>8} {head}", v.trim());
            } else if let Some(v) = line.strip_prefix("Private_Dirty:") {
                println!("   dirty {:>8}", v.trim());
            }
        }
    }
    println!("monitor RSS kB per pod: {rss:?} (max {max_rss})");
    println!("monitor PSS kB per pod: {pss:?} (mean {mean_pss})");
    assert!(max_rss <= 1024, "RSS {max_rss} kB over 1 MiB");
    assert!(mean_pss <= 256, "PSS {mean_pss} kB over 256 KiB");
}
