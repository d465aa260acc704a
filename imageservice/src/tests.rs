//! Pull, lookup, removal and GC against the in-process test registry.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{HostConfig, MirrorConfig, RegistryConfig};
use crate::error::{Class, Classify, Error};
use crate::registry::{Credentials, RetryPolicy};
use crate::store::{ImageStore, StoreOptions};
use crate::testregistry::{Auth, Drop, TestImage, TestRegistry, build_image, sha};
use crate::unpack::get_xattr;
use crate::unpack::tests::{TarBuilder, gzip};

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

struct Env {
    dir: tempfile::TempDir,
    reg: Arc<TestRegistry>,
    store: Arc<ImageStore>,
}

impl Env {
    async fn new(auth: Auth) -> Env {
        Env::with_config(auth, |_| RegistryConfig::default()).await
    }

    async fn with_config(auth: Auth, config: impl FnOnce(&str) -> RegistryConfig) -> Env {
        let reg = TestRegistry::start(auth).await;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), config(&reg.host()));
        Env { dir, reg, store }
    }

    /// A registry asking for `auth` and serving the two-layer amd64 image as
    /// `team/app:v1`.
    async fn with_app(auth: Auth) -> (Env, TestImage) {
        let env = Env::new(auth).await;
        let (img, blobs) = two_layers("amd64");
        env.reg.push("team/app", "v1", &img, blobs);
        (env, img)
    }

    /// Pulls `repo_tag` of the test registry without credentials.
    async fn pull(&self, repo_tag: &str) -> Result<crate::Image, Error> {
        self.pull_as(repo_tag, None).await
    }

    /// Pulls `repo_tag` of the test registry with `creds`.
    async fn pull_as(
        &self,
        repo_tag: &str,
        creds: Option<Credentials>,
    ) -> Result<crate::Image, Error> {
        self.store.pull(&self.r(repo_tag), creds).await
    }

    /// Makes the registry cut the connection 50 kB into the big layer of `img`, `times`
    /// times; that layer's digest.
    fn cut_big_layer<'a>(&self, img: &'a TestImage, times: usize) -> &'a String {
        let big = &img.layer_digests[1];
        let after = 50_000;
        self.reg.set_drop(big, Some(Drop { after, times }));
        big
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn r(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.reg.host())
    }

    /// Files in the content store and snapshot directories other than the fixed ones.
    fn stored(&self) -> (Vec<String>, Vec<String>) {
        let names = |p: &Path| -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".trash")
                .collect();
            v.sort();
            v
        };
        let mut blobs = names(&self.root().join("content/blobs/sha256"));
        blobs.extend(names(&self.root().join("content/ingest")));
        let mut snaps = names(&self.root().join("snapshots"));
        snaps.extend(names(&self.root().join("snapshots/.trash")));
        (blobs, snaps)
    }
}

/// Credentials as kubelet sends a user name and password.
fn login(username: &str, password: &str) -> Credentials {
    Credentials {
        username: username.into(),
        password: password.into(),
        ..Default::default()
    }
}

fn open(root: &Path, config: RegistryConfig) -> Arc<ImageStore> {
    let db = berth_db::Db::create(root.join("berth.db")).unwrap();
    let options = StoreOptions {
        retry: RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(10),
        },
        ..StoreOptions::default()
    };
    ImageStore::open_with(root, db, config, options).unwrap()
}

fn layer1() -> Vec<u8> {
    TarBuilder::new()
        .dir("etc/", 0o755)
        .file("etc/hosts", 0o644, b"127.0.0.1 localhost\n")
        .file("etc/keep", 0o644, b"keep")
        .dir("var/cache/", 0o755)
        .file("var/cache/old", 0o644, b"old")
        .finish()
}

fn layer2() -> Vec<u8> {
    TarBuilder::new()
        .file("etc/.wh.hosts", 0o644, b"")
        .file("var/cache/.wh..wh..opq", 0o644, b"")
        .file("var/cache/new", 0o644, b"new")
        .file_owned("bin/app", 0o4755, 1000, 1000, 1_650_000_000, &app_bytes())
        .finish()
}

/// 100 kB that compress badly, so the layer blob is big enough to cut.
fn app_bytes() -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A two-layer image (gzip, then zstd) with `USER 1000`.
fn two_layers(arch: &str) -> (TestImage, Vec<(String, Vec<u8>)>) {
    let (t1, t2) = (layer1(), layer2());
    build_image(
        &[
            (gzip(&t1), GZIP),
            (zstd::encode_all(&t2[..], 3).unwrap(), ZSTD),
        ],
        &[t1, t2],
        "1000",
        arch,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_and_digest() {
    let (env, img) = Env::with_app(Auth::None).await;

    let image = env.pull("team/app:v1").await.unwrap();
    assert_eq!(image.id, img.config_digest);
    assert_eq!(image.repo_tags, vec![env.r("team/app:v1")]);
    assert_eq!(
        image.repo_digests,
        vec![format!("{}@{}", env.r("team/app"), img.manifest_digest)]
    );
    assert_eq!(image.user, "1000");
    assert!(image.size > 100, "{}", image.size);

    // Every way of naming it finds it.
    let hex = &image.id["sha256:".len()..];
    for name in [
        image.id.clone(),
        hex.to_owned(),
        hex[..12].to_owned(),
        env.r("team/app:v1"),
        format!("{}@{}", env.r("team/app"), img.manifest_digest),
    ] {
        assert_eq!(
            env.store.get(&name).unwrap().as_ref(),
            Some(&image),
            "{name}"
        );
    }
    assert_eq!(env.store.get(&env.r("team/app:v2")).unwrap(), None);
    assert_eq!(env.store.get("not a reference!").unwrap(), None);
    assert_eq!(env.store.list().unwrap(), vec![image.clone()]);

    // The layers: topmost first, whiteouts in overlay form, modes and owners kept.
    let layers = env.store.rootfs_layers(&image.id).unwrap();
    assert_eq!(layers.len(), 2);
    let (top, bottom) = (&layers[0], &layers[1]);
    assert_eq!(
        fs::read(bottom.join("etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
    let wh = fs::symlink_metadata(top.join("etc/hosts")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is a 0/0 char device"
    );
    assert_eq!(
        get_xattr(&top.join("var/cache"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    let app = fs::metadata(top.join("bin/app")).unwrap();
    assert_eq!(
        (app.mode() & 0o7777, app.uid(), app.len()),
        (0o4755, 1000, 100_000)
    );

    let config = env.store.image_config(&image.id).unwrap();
    assert_eq!(
        config.config().as_ref().unwrap().user().as_deref(),
        Some("1000")
    );

    // By digest: the same image, no new tag, and no registry traffic for blobs.
    let by_digest = format!("{}@{}", env.r("team/app"), img.manifest_digest);
    let again = env.store.pull(&by_digest, None).await.unwrap();
    assert_eq!(again.id, image.id);
    assert_eq!(again.repo_tags, image.repo_tags);
    for d in &img.layer_digests {
        assert_eq!(env.reg.blob_requests("team/app", d), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_measured_pull_counts_the_layer_bytes_it_downloaded() {
    let env = Env::new(Auth::None).await;
    let (img, blobs) = two_layers("amd64");
    let layer_bytes: u64 = blobs
        .iter()
        .filter(|(digest, _)| img.layer_digests.contains(digest))
        .map(|(_, body)| body.len() as u64)
        .sum();
    env.reg.push("team/app", "v1", &img, blobs);

    let first = env
        .store
        .pull_measured(&env.r("team/app:v1"), None)
        .await
        .unwrap();
    assert_eq!(first.image.id, img.config_digest);
    assert_eq!((first.downloaded, first.layers), (layer_bytes, 2));
    let again = env
        .store
        .pull_measured(&env.r("team/app:v1"), None)
        .await
        .unwrap();
    assert_eq!(
        (again.downloaded, again.layers),
        (0, 2),
        "stored layers are not downloaded again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_download_each_blob_once() {
    let (env, img) = Env::with_app(Auth::None).await;
    // Slow blobs so the pulls really overlap.
    env.reg.set_blob_delay(Duration::from_millis(20));
    let r = env.r("team/app:v1");
    let pulls = (0..10).map(|_| {
        let (store, r) = (env.store.clone(), r.clone());
        tokio::spawn(async move { store.pull(&r, None).await })
    });
    let results = futures::future::join_all(pulls).await;
    for res in results {
        assert_eq!(res.unwrap().unwrap().id, img.config_digest);
    }
    assert_eq!(env.reg.blob_requests("team/app", &img.config_digest), 1);
    for d in &img.layer_digests {
        assert_eq!(env.reg.blob_requests("team/app", d), 1, "layer {d}");
    }
    assert_eq!(env.store.list().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_blob_leaves_nothing_and_retry_succeeds() {
    let (env, img) = Env::with_app(Auth::None).await;
    let big = env.cut_big_layer(&img, usize::MAX);

    let err = env.pull("team/app:v1").await.unwrap_err();
    assert_eq!(err.class(), Class::Unavailable, "{err}");
    assert!(env.reg.blob_requests("team/app", big) >= 3, "retried");
    assert_eq!(
        env.stored(),
        (vec![], vec![]),
        "no blob, no snapshot, no temp file"
    );
    assert!(env.store.list().unwrap().is_empty());

    env.reg.set_drop(big, None);
    let image = env.pull("team/app:v1").await.unwrap();
    let top = &env.store.rootfs_layers(&image.id).unwrap()[0];
    assert_eq!(fs::read(top.join("bin/app")).unwrap(), app_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_resumes_with_range() {
    let (env, img) = Env::with_app(Auth::None).await;
    let big = env.cut_big_layer(&img, 2);
    let image = env.pull("team/app:v1").await.unwrap();
    assert_eq!(env.reg.blob_requests("team/app", big), 3);
    let stored = fs::read(
        env.root()
            .join("content/blobs/sha256")
            .join(&big["sha256:".len()..]),
    )
    .unwrap();
    assert_eq!(sha(&stored), *big);
    assert_eq!(image.id, img.config_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth() {
    let (env, img) = Env::with_app(Auth::Basic {
        user: "alice".into(),
        pass: "s3cret".into(),
    })
    .await;

    let err = env.pull_as("team/app:v1", None).await.unwrap_err();
    assert_eq!(err.class(), Class::PermissionDenied, "{err}");
    let wrong = login("alice", "nope");
    let err = env.pull_as("team/app:v1", Some(wrong)).await.unwrap_err();
    assert_eq!(err.class(), Class::PermissionDenied, "{err}");
    assert!(err.to_string().contains("credentials rejected"), "{err}");
    assert!(env.store.list().unwrap().is_empty());

    // The CRI `auth` field form.
    let right = Credentials {
        auth: "YWxpY2U6czNjcmV0".into(),
        ..Default::default()
    };
    assert_eq!(
        env.pull_as("team/app:v1", Some(right)).await.unwrap().id,
        img.config_digest
    );

    // What those credentials opened stays theirs: a later pull without them, or with wrong
    // ones, is refused again (as kubelet's "pull from private registry without secret"
    // spec expects after another pod pulled the image with its secret).
    let err = env.pull_as("team/app:v1", None).await.unwrap_err();
    assert_eq!(err.class(), Class::PermissionDenied, "{err}");
    let err = env
        .pull_as("team/app:v1", Some(login("alice", "nope")))
        .await
        .unwrap_err();
    assert_eq!(err.class(), Class::PermissionDenied, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_config() {
    let env = Env::with_config(
        Auth::Basic {
            user: "bob".into(),
            pass: "pw".into(),
        },
        |host| RegistryConfig {
            configs: BTreeMap::from([(
                host.to_owned(),
                HostConfig {
                    username: Some("bob".into()),
                    password: Some("pw".into()),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        },
    )
    .await;
    let (img, blobs) = two_layers("amd64");
    env.reg.push("team/app", "v1", &img, blobs);
    assert_eq!(env.pull("team/app:v1").await.unwrap().id, img.config_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow() {
    let (env, img) = Env::with_app(Auth::Bearer {
        user: "carol".into(),
        pass: "tok-pw".into(),
    })
    .await;

    let wrong = login("carol", "bad");
    let err = env.pull_as("team/app:v1", Some(wrong)).await.unwrap_err();
    assert_eq!(err.class(), Class::PermissionDenied, "{err}");

    let right = login("carol", "tok-pw");
    let image = env.pull_as("team/app:v1", Some(right)).await.unwrap();
    assert_eq!(image.id, img.config_digest);
    // One token for the pull, reused for every blob.
    assert_eq!(env.reg.count("/token"), 2, "one failed, one granted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_used_and_dead_mirror_skipped() {
    let env = Env::with_config(Auth::None, |host| RegistryConfig {
        mirrors: BTreeMap::from([(
            "docker.io".to_owned(),
            MirrorConfig {
                endpoints: vec!["http://127.0.0.1:1".into(), format!("http://{host}")],
            },
        )]),
        ..Default::default()
    })
    .await;
    let (img, blobs) = two_layers("amd64");
    env.reg.push("library/busybox", "1.28", &img, blobs);
    let image = env.store.pull("busybox:1.28", None).await.unwrap();
    assert_eq!(
        image.repo_tags,
        vec!["docker.io/library/busybox:1.28".to_owned()]
    );
    assert_eq!(
        image.repo_digests,
        vec![format!("docker.io/library/busybox@{}", img.manifest_digest)]
    );
    assert_eq!(
        env.store.get("busybox:1.28").unwrap().unwrap().id,
        img.config_digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_index() {
    let env = Env::new(Auth::None).await;
    let (amd, amd_blobs) = two_layers("amd64");
    let t = TarBuilder::new().file("arm", 0o644, b"arm").finish();
    let (arm, arm_blobs) = build_image(
        &[(t.clone(), "application/vnd.oci.image.layer.v1.tar")],
        &[t],
        "",
        "arm64",
    );
    env.reg.push("multi/app", "amd-only-tag", &amd, amd_blobs);
    env.reg.push("multi/app", "arm-only-tag", &arm, arm_blobs);
    let index = env.reg.push_index(
        "multi/app",
        "v1",
        &[
            (
                serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
                &arm,
            ),
            (
                serde_json::json!({"os": "linux", "architecture": "amd64"}),
                &amd,
            ),
        ],
    );
    let image = env.pull("multi/app:v1").await.unwrap();
    assert_eq!(image.id, amd.config_digest, "linux/amd64 chosen");
    assert_eq!(
        image.repo_digests,
        vec![format!("{}@{index}", env.r("multi/app"))]
    );
    assert_eq!(env.reg.blob_requests("multi/app", &arm.config_digest), 0);

    env.reg.push_index(
        "multi/app",
        "arm",
        &[(
            serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
            &arm,
        )],
    );
    let err = env.pull("multi/app:arm").await.unwrap_err();
    assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{err}");
    assert_eq!(err.class(), Class::NotFound);
    assert!(err.to_string().contains("linux/arm64/v8"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layer_rejected_with_nothing_left() {
    let env = Env::new(Auth::None).await;
    let good = layer1();
    for (name, evil) in [
        (
            "dotdot",
            TarBuilder::new().file("../../escape", 0o644, b"x").finish(),
        ),
        (
            "absolute",
            TarBuilder::new().file("/etc/escape", 0o644, b"x").finish(),
        ),
        (
            "symlink-parent",
            TarBuilder::new()
                .symlink("l", "/tmp")
                .file("l/escape", 0o644, b"x")
                .finish(),
        ),
        (
            "hardlink-out",
            TarBuilder::new().hardlink("h", "../../etc/passwd").finish(),
        ),
        (
            "symlink-out",
            TarBuilder::new().symlink("s", "../../../etc").finish(),
        ),
    ] {
        let (img, blobs) = build_image(
            &[(gzip(&good), GZIP), (gzip(&evil), GZIP)],
            &[good.clone(), evil.clone()],
            "",
            "amd64",
        );
        env.reg.push("evil/app", name, &img, blobs);
        let err = env.pull(&format!("evil/app:{name}")).await.unwrap_err();
        assert!(matches!(err, Error::InvalidLayer { .. }), "{name}: {err}");
        assert_eq!(err.class(), Class::FailedPrecondition);
        assert_eq!(env.stored(), (vec![], vec![]), "{name}: nothing left");
    }
    assert!(!Path::new("/tmp/escape").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_diff_id_rejected() {
    let env = Env::new(Auth::None).await;
    let t = layer1();
    let (img, blobs) = build_image(&[(gzip(&t), GZIP)], &[layer2()], "", "amd64");
    env.reg.push("team/app", "v1", &img, blobs);
    let err = env.pull("team/app:v1").await.unwrap_err();
    assert!(err.to_string().contains("the config says"), "{err}");
    assert_eq!(env.stored(), (vec![], vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_rejected() {
    let (env, img) = Env::with_app(Auth::None).await;
    let d = &img.layer_digests[0];
    // Same size, other bytes.
    let mut bad = gzip(&layer1());
    let n = bad.len();
    bad[n - 5] ^= 0xff;
    env.reg.put_blob(d, bad);
    let err = env.pull("team/app:v1").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::DigestMismatch { .. } | Error::InvalidLayer { .. }
        ),
        "{err}"
    );
    assert_eq!(env.stored(), (vec![], vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_classes() {
    let env = Env::new(Auth::None).await;
    let err = env.store.pull("Busybox", None).await.unwrap_err();
    assert_eq!(err.class(), Class::InvalidArgument);
    let err = env.pull("no/such:tag").await.unwrap_err();
    assert_eq!(err.class(), Class::NotFound, "{err}");
    let err = env.store.pull("127.0.0.1:1/x/y:z", None).await.unwrap_err();
    assert_eq!(err.class(), Class::Unavailable, "{err}");
    assert_eq!(
        env.store.image_config("sha256:00").unwrap_err().class(),
        Class::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_tags_leases_and_gc() {
    let env = Env::new(Auth::None).await;
    let (img, blobs) = two_layers("amd64");
    env.reg.push("team/app", "v1", &img, blobs.clone());
    env.reg.push("team/app", "v2", &img, blobs);
    let a = env.r("team/app:v1");
    let b = env.r("team/app:v2");
    env.store.pull(&a, None).await.unwrap();
    let image = env.store.pull(&b, None).await.unwrap();
    assert_eq!(image.repo_tags, vec![a.clone(), b.clone()]);

    // One tag of two: the image stays.
    env.store.remove(&a).await.unwrap();
    let left = env.store.get(&image.id).unwrap().unwrap();
    assert_eq!(left.repo_tags, vec![b.clone()]);
    assert_eq!(env.store.get(&a).unwrap(), None);
    assert_eq!(env.stored().1.len(), 2, "both snapshots kept");

    // A container holds the image; removing the image keeps its snapshots.
    env.store.add_lease("ctr1", &image.id).unwrap();
    assert_eq!(
        env.store.leases().unwrap(),
        vec![("ctr1".to_owned(), image.id.clone())]
    );
    let layers = env.store.rootfs_layers(&image.id).unwrap();
    env.store.remove(&b).await.unwrap();
    assert_eq!(env.store.get(&image.id).unwrap(), None);
    assert!(env.store.list().unwrap().is_empty());
    assert!(
        layers.iter().all(|l| l.is_dir()),
        "leased snapshots survive"
    );
    assert!(env.stored().0.is_empty(), "blobs of removed images go");

    env.store.remove_lease("ctr1").unwrap();
    let report = env.store.gc().await.unwrap();
    assert_eq!(report.snapshots_removed, 2);
    assert_eq!(env.stored(), (vec![], vec![]));
    // Unknown images are fine.
    env.store.remove("nothing:here").await.unwrap();
    env.store.remove(&image.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retagging_moves_the_tag() {
    let env = Env::new(Auth::None).await;
    let (old, old_blobs) = two_layers("amd64");
    env.reg.push("team/app", "latest", &old, old_blobs);
    let r = env.r("team/app:latest");
    let first = env.store.pull(&r, None).await.unwrap();
    let t = TarBuilder::new().file("new", 0o644, b"new").finish();
    let (new, new_blobs) = build_image(&[(gzip(&t), GZIP)], &[t], "", "amd64");
    env.reg.push("team/app", "latest", &new, new_blobs);
    let second = env.store.pull(&r, None).await.unwrap();
    assert_ne!(first.id, second.id);
    assert_eq!(env.store.get(&r).unwrap().unwrap().id, second.id);
    let old_rec = env.store.get(&first.id).unwrap().unwrap();
    assert!(
        old_rec.repo_tags.is_empty(),
        "the old image lost the tag, kept its digest"
    );
    assert_eq!(old_rec.repo_digests.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_usage_matches_du() {
    let (env, _) = Env::with_app(Auth::None).await;
    let empty = env.store.fs_usage().unwrap();
    let image = env.pull("team/app:v1").await.unwrap();
    let u = env.store.fs_usage().unwrap();
    assert_eq!(u.mountpoint, env.root());
    assert!(
        u.used_bytes > empty.used_bytes + 100_000,
        "{u:?} vs {empty:?}"
    );
    let du = |args: &[&str]| -> u64 {
        let out = std::process::Command::new("du")
            .args(args)
            .arg(env.root().join("content"))
            .arg(env.root().join("snapshots"))
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split_whitespace().next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    // The new snapshots' usage is recorded in the background, as they are made durable:
    // once that is done the figures match du's.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut u = u;
    while (u.used_bytes, u.inodes_used) != (du(&["-s", "-B1"]), du(&["-s", "--inodes"]))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        u = env.store.fs_usage().unwrap();
    }
    assert_eq!(u.used_bytes, du(&["-s", "-B1"]));
    assert_eq!(u.inodes_used, du(&["-s", "--inodes"]));
    // Cached between changes, measured again after the removal and its GC.
    assert_eq!(env.store.cached_fs_usage(), Some(u.clone()));
    env.store.remove(&image.id).await.unwrap();
    let gone = env.store.fs_usage().unwrap();
    assert_eq!(gone.used_bytes, du(&["-s", "-B1"]));
    assert_eq!(gone.inodes_used, du(&["-s", "--inodes"]));
    assert!(
        gone.used_bytes + 100_000 < u.used_bytes,
        "{gone:?} vs {u:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_images() {
    let (env, _) = Env::with_app(Auth::None).await;
    let image = env.pull("team/app:v1").await.unwrap();
    let Env {
        dir,
        reg: _reg,
        store,
    } = env;
    drop(store);
    let store = open(dir.path(), RegistryConfig::default());
    assert_eq!(store.get(&image.id).unwrap(), Some(image.clone()));
    assert_eq!(store.rootfs_layers(&image.id).unwrap().len(), 2);
    assert_eq!(store.gc().await.unwrap(), Default::default());
}

fn xattr_of(dir: &Path) -> Option<()> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings; a size query with no buffer.
    let rc = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"user.berth.unsynced".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    (rc >= 0).then_some(())
}

fn mark(dir: &Path) {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings and a one-byte value.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"user.berth.unsynced".as_ptr(),
            b"1".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(rc, 0);
}

#[tokio::test]
async fn snapshots_become_durable_and_are_restored_after_a_reboot() {
    let (env, _) = Env::with_app(Auth::None).await;
    let image = env.pull("team/app:v1").await.unwrap();
    let layers = env.store.rootfs_layers(&image.id).unwrap();
    // The background sync, or the start-up one, makes them durable.
    env.store.recover().await.unwrap();
    let marked = |l: &Path| xattr_of(l.parent().unwrap()).is_some();
    for l in &layers {
        assert!(!marked(l), "{}", l.display());
    }
    let files = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before: Vec<Vec<String>> = layers.iter().map(|l| files(l)).collect();
    // A power loss before the sync: the top snapshot is marked and lost its files; the
    // machine booted again (another boot id).
    let top = &layers[0];
    mark(top.parent().unwrap());
    for f in files(top) {
        let p = top.join(f);
        if p.is_dir() {
            fs::remove_dir_all(p).unwrap();
        } else {
            fs::remove_file(p).unwrap();
        }
    }
    fs::write(env.root().join("snapshots.boot_id"), "another boot").unwrap();
    assert_eq!(env.store.recover().await.unwrap(), 1);
    let after: Vec<Vec<String>> = layers.iter().map(|l| files(l)).collect();
    assert_eq!(after, before);
    assert!(!marked(top));
    // Same boot: nothing is discarded, pending snapshots are only synced.
    mark(top.parent().unwrap());
    assert_eq!(env.store.recover().await.unwrap(), 0);
    assert_eq!(files(top), before[0]);
    assert!(!marked(top));
    assert_eq!(env.store.gc().await.unwrap(), Default::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links_into_lower_layers_are_made_as_overlayfs_would() {
    let env = Env::new(Auth::None).await;
    let (t1, t2) = (
        layer1(),
        TarBuilder::new()
            .hardlink("etc/keep2", "etc/keep")
            .hardlink("etc/hosts2", "etc/hosts")
            .finish(),
    );
    // Layers unpack in parallel: the top one waits for the bottom one to link.
    let (img, blobs) = build_image(
        &[(gzip(&t1), GZIP), (gzip(&t2), GZIP)],
        &[t1, t2],
        "0",
        "amd64",
    );
    env.reg.push("team/links", "v1", &img, blobs);
    let image = env.pull("team/links:v1").await.unwrap();
    let top = &env.store.rootfs_layers(&image.id).unwrap()[0];
    assert_eq!(fs::read(top.join("etc/keep2")).unwrap(), b"keep");
    assert_eq!(fs::read(top.join("etc/keep")).unwrap(), b"keep");
    assert_eq!(
        fs::read(top.join("etc/hosts2")).unwrap(),
        b"127.0.0.1 localhost\n"
    );

    // A link to a file a lower layer deleted is refused, and leaves nothing.
    let t3 = TarBuilder::new().hardlink("x", "etc/hosts").finish();
    let (t1, t2) = (layer1(), layer2());
    let (img, blobs) = build_image(
        &[(gzip(&t1), GZIP), (gzip(&t2), GZIP), (gzip(&t3), GZIP)],
        &[t1, t2, t3],
        "0",
        "amd64",
    );
    env.reg.push("team/bad", "v1", &img, blobs);
    let e = env.pull("team/bad:v1").await.unwrap_err();
    assert!(e.to_string().contains("in no layer"), "{e}");
}
