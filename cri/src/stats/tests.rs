//! Unit tests of the stats RPCs' figures: CPU rates, memory, metrics.

use super::*;

#[test]
fn nano_cores_need_two_samples_a_window_apart() {
    let cache = CpuSamples::default();
    let t0 = Instant::now();
    assert_eq!(cache.nano_cores("c", 1_000, t0), None);
    // Half a core over two seconds.
    let t1 = t0 + Duration::from_secs(2);
    assert_eq!(
        cache.nano_cores("c", 1_000 + 1_000_000_000, t1),
        Some(500_000_000)
    );
    // A call soon after still measures against the kept sample.
    let t2 = t1 + Duration::from_millis(100);
    assert!(cache.nano_cores("c", 1_000 + 1_000_000_000, t2).is_some());
    cache.retain(&HashSet::new());
    assert_eq!(cache.nano_cores("c", 5, t2), None);
}

#[test]
fn memory_reports_available_against_the_limit() {
    let u = CgroupUsage {
        memory_usage: Some(100),
        working_set: Some(60),
        memory_limit: Some(1000),
        ..Default::default()
    };
    let m = memory(&u, 1).unwrap();
    assert_eq!(m.working_set_bytes, value(60));
    assert_eq!(m.available_bytes, value(940));
    assert!(memory(&CgroupUsage::default(), 1).is_none());
}

#[test]
fn metrics_carry_their_descriptor_labels() {
    let stats = ContainerStats {
        attributes: Some(ContainerAttributes {
            id: "c1".into(),
            metadata: Some(ContainerMetadata {
                name: "web".into(),
                attempt: 0,
            }),
            ..Default::default()
        }),
        cpu: Some(CpuUsage {
            timestamp: 5,
            usage_core_nano_seconds: value(3_500_000_000),
            usage_nano_cores: None,
        }),
        ..Default::default()
    };
    let m = container_metrics(&stats, 2, Some(64), Some(3));
    let cpu = m
        .iter()
        .find(|m| m.name == "container_cpu_usage_seconds_total")
        .unwrap();
    assert_eq!(cpu.value, value(3));
    assert_eq!(cpu.label_values, vec!["c1", "web"]);
    assert_eq!(cpu.metric_type, MetricType::Counter as i32);
    let oom = m
        .iter()
        .find(|m| m.name == "container_oom_events_total")
        .unwrap();
    assert_eq!(oom.value, value(2));
    // Every metric has a descriptor with as many label keys as it has values.
    for metric in &m {
        let d = METRICS.iter().find(|d| d.0 == metric.name).unwrap();
        assert_eq!(
            label_keys(d.3).len(),
            metric.label_values.len(),
            "{}",
            metric.name
        );
    }
}
