use super::*;

async fn settle(u: &WritableUsage) {
    for _ in 0..500 {
        if !u.state().refreshing {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the background refresh never finished");
}

fn layer(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_written_file_shows_up_once_the_measure_is_stale() {
    let root = tempfile::tempdir().unwrap();
    let a = layer(root.path(), "a");
    let u = Arc::new(WritableUsage::new(Duration::ZERO));
    u.track([("a", a.as_path())]);
    // Nothing is measured on the caller's path.
    settle(&u).await;
    let before = u.get("a").expect("measured in the background");
    assert_eq!(before.inodes, 1, "the upper dir itself");
    std::fs::write(a.join("log"), vec![7u8; 256 * 1024]).unwrap();
    // This call still sees the old measure and starts the refresh.
    assert_eq!(u.get("a"), Some(before));
    u.track([("a", a.as_path())]);
    settle(&u).await;
    let after = u.get("a").unwrap();
    assert!(after.bytes >= before.bytes + 256 * 1024, "{after:?}");
    assert_eq!(after.inodes, before.inodes + 1);
    assert!(after.timestamp >= before.timestamp);
    assert_eq!(u.total(), (after.bytes, after.inodes));
}

#[tokio::test]
async fn a_fresh_measure_is_answered_without_a_walk() {
    let root = tempfile::tempdir().unwrap();
    let a = layer(root.path(), "a");
    let u = Arc::new(WritableUsage::new(FRESHNESS));
    u.track([("a", a.as_path())]);
    settle(&u).await;
    let first = u.get("a").unwrap();
    std::fs::write(a.join("log"), vec![7u8; 256 * 1024]).unwrap();
    u.track([("a", a.as_path())]);
    assert!(!u.state().refreshing, "no refresh within the freshness");
    assert_eq!(u.get("a"), Some(first));
}

#[tokio::test]
async fn a_new_container_is_measured_while_the_others_stay_fresh() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (layer(root.path(), "a"), layer(root.path(), "b"));
    std::fs::write(b.join("data"), vec![1u8; 64 * 1024]).unwrap();
    let u = Arc::new(WritableUsage::new(FRESHNESS));
    u.track([("a", a.as_path())]);
    settle(&u).await;
    let a0 = u.get("a").unwrap();
    u.track([("a", a.as_path()), ("b", b.as_path())]);
    settle(&u).await;
    assert_eq!(u.get("a"), Some(a0), "a was fresh: not walked again");
    let b0 = u.get("b").unwrap();
    assert_eq!(b0.inodes, 2);
    assert_eq!(u.total(), (a0.bytes + b0.bytes, a0.inodes + b0.inodes));
}

#[tokio::test]
async fn a_removed_container_is_forgotten() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (layer(root.path(), "a"), layer(root.path(), "b"));
    std::fs::write(b.join("data"), vec![1u8; 64 * 1024]).unwrap();
    let u = Arc::new(WritableUsage::new(FRESHNESS));
    u.track([("a", a.as_path()), ("b", b.as_path())]);
    settle(&u).await;
    assert!(u.get("b").is_some());
    u.track([("a", a.as_path())]);
    assert_eq!(u.get("b"), None);
    let a0 = u.get("a").unwrap();
    assert_eq!(u.total(), (a0.bytes, a0.inodes), "b's bytes left with it");
}

#[test]
fn never_measured_layers_come_first_then_the_oldest() {
    let u = WritableUsage::new(Duration::ZERO);
    let t0 = Instant::now();
    {
        let mut s = u.state();
        for (id, tried) in [
            ("recent", Some(t0)),
            ("new", None),
            ("old", Some(t0 - Duration::from_secs(5))),
        ] {
            s.layers.insert(
                id.to_owned(),
                Layer {
                    dir: PathBuf::from(id),
                    measure: None,
                    tried,
                    seen: 0,
                },
            );
        }
    }
    let order: Vec<String> = u
        .due(t0 + Duration::from_secs(1))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(order, ["new", "old", "recent"]);
    // A layer tried since the refresh began is not measured twice in it.
    let order: Vec<String> = u.due(t0).into_iter().map(|(id, _)| id).collect();
    assert_eq!(order, ["new", "old"]);
}

/// A container controls what its layer holds: a link out of it is counted as a link, never
/// followed into what it points at.
#[tokio::test]
async fn a_link_out_of_the_layer_is_not_followed() {
    let root = tempfile::tempdir().unwrap();
    let outside = layer(root.path(), "outside");
    std::fs::write(outside.join("big"), vec![1u8; 1 << 20]).unwrap();
    let a = layer(root.path(), "a");
    std::os::unix::fs::symlink(&outside, a.join("escape")).unwrap();
    std::os::unix::fs::symlink("/", a.join("root")).unwrap();
    let u = Arc::new(WritableUsage::new(FRESHNESS));
    u.track([("a", a.as_path())]);
    settle(&u).await;
    let m = u.get("a").unwrap();
    assert_eq!(m.inodes, 3, "the dir and its two links");
    assert!(m.bytes < 1 << 20, "{m:?}");
}
