//! Images: pulls through mirrors and straight from the loopback registry, by tag
//! and digest, multi-arch indexes, zstd and plain layers, whiteouts in the merged rootfs,
//! basic and bearer auth, dead mirrors, deduplicated concurrent pulls, hostile layers, a
//! registry dying mid-blob, RemoveImage and GC, ImageStatus and ImageFsInfo.
//!
//! Run through the harness: `scripts/test.sh` (as root). Auth, request counting and the
//! mid-blob failure come from a small HTTP proxy in front of the loopback registry,
//! written below; it listens on loopback inside the node netns.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_e2e::fixtures::{
    container_config, dir_names, new_pod, remove_pod, start_container, stored,
};
use berth_e2e::http::{AcceptTask, RequestHead, basic_auth, loopback_listener};
use berth_e2e::images::{self, ImageInfo, whiteouts::Expect};
use berth_e2e::oci::{self, Blob, Compression, Format, Layer, Platform, RunConfig};
use berth_e2e::registry::RegistryClient;
use berth_e2e::{Daemon, Env};
use k8s_cri::v1::{
    AuthConfig, ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest,
    ImageStatusResponse, ListImagesRequest, PullImageRequest, RemoveImageRequest,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic::Code;

// ---- CRI helpers ------------------------------------------------------------------------

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn pull(d: &Daemon, image: &str, auth: Option<AuthConfig>) -> Result<String, tonic::Status> {
    d.images()
        .pull_image(PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn status(d: &Daemon, image: &str, verbose: bool) -> ImageStatusResponse {
    d.images()
        .image_status(ImageStatusRequest {
            image: spec(image),
            verbose,
        })
        .await
        .expect("ImageStatus")
        .into_inner()
}

async fn remove(d: &Daemon, image: &str) {
    d.images()
        .remove_image(RemoveImageRequest { image: spec(image) })
        .await
        .unwrap_or_else(|e| panic!("RemoveImage {image}: {e}"));
}

async fn list(d: &Daemon, filter: Option<&str>) -> Vec<k8s_cri::v1::Image> {
    d.images()
        .list_images(ListImagesRequest {
            filter: filter.map(|f| ImageFilter { image: spec(f) }),
        })
        .await
        .expect("ListImages")
        .into_inner()
        .images
}

fn info(reference: &str) -> ImageInfo {
    images::info(reference).unwrap_or_else(|e| panic!("catalog entry {reference}: {e}"))
}

async fn start() -> Daemon {
    Daemon::start().await.expect("start berth")
}

async fn start_with(config: &str) -> Daemon {
    Daemon::builder()
        .config(config)
        .start()
        .await
        .expect("start berth")
}

// ---- what is on disk --------------------------------------------------------------------

/// Chain IDs of a layer stack, bottom first (the snapshot keys).
fn chain_ids(info: &ImageInfo) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in &info.layers {
        let next = match out.last() {
            None => l.diff_id.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {}", l.diff_id)))
            ),
        };
        out.push(next);
    }
    out
}

/// The snapshot directories of an image, topmost first.
fn snapshot_dirs(d: &Daemon, info: &ImageInfo) -> Vec<PathBuf> {
    let root = d.dir().root();
    chain_ids(info)
        .iter()
        .rev()
        .map(|c| {
            root.join("snapshots")
                .join(&c["sha256:".len()..])
                .join("fs")
        })
        .collect()
}

fn du(args: &[&str], paths: &[PathBuf]) -> u64 {
    let out = std::process::Command::new("du")
        .args(args)
        .args(paths)
        .output()
        .expect("run du");
    assert!(out.status.success(), "du failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A read-only overlay of snapshot dirs, unmounted on drop.
struct Overlay {
    target: PathBuf,
}

impl Overlay {
    fn mount(lowers: &[PathBuf], target: PathBuf) -> Overlay {
        std::fs::create_dir_all(&target).unwrap();
        let lowerdir: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let data = format!("lowerdir={}", lowerdir.join(":"));
        nix::mount::mount(
            Some("overlay"),
            &target,
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(data.as_str()),
        )
        .unwrap_or_else(|e| panic!("mount overlay {data}: {e}"));
        Overlay { target }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("umount {}: {e}", self.target.display());
        }
        let _ = std::fs::remove_dir(&self.target);
    }
}

// ---- a proxy in front of the loopback registry ------------------------------------------

#[derive(Clone, Debug)]
enum ProxyAuth {
    None,
    Basic(&'static str, &'static str),
    Bearer(&'static str, &'static str),
}

#[derive(Default)]
struct ProxyState {
    requests: HashMap<String, usize>,
    /// Blob digest -> offset at which every download of it is cut.
    cut: HashMap<String, usize>,
    tokens: HashSet<String>,
}

/// An HTTP/1.1 proxy (one request per connection) that counts requests by path, demands
/// basic or bearer auth (serving its own `/token` endpoint), and can cut blob downloads
/// at a fixed offset, as a registry dying mid-blob would.
struct Proxy {
    addr: SocketAddr,
    auth: ProxyAuth,
    upstream: String,
    state: Mutex<ProxyState>,
    task: AcceptTask,
}

impl Proxy {
    async fn start(auth: ProxyAuth) -> Arc<Proxy> {
        let (listener, addr) = loopback_listener().await;
        let proxy = Arc::new(Proxy {
            addr,
            auth,
            upstream: Env::get().registry.clone(),
            state: Mutex::default(),
            task: AcceptTask::default(),
        });
        proxy.task.start(listener, &proxy, Proxy::serve);
        proxy
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn count(&self, path: &str) -> usize {
        *self.state.lock().unwrap().requests.get(path).unwrap_or(&0)
    }

    fn cut(&self, digest: &str, at: Option<usize>) {
        let mut s = self.state.lock().unwrap();
        match at {
            Some(at) => s.cut.insert(digest.into(), at),
            None => s.cut.remove(digest),
        };
    }

    async fn serve(self: Arc<Self>, mut client: TcpStream) {
        let Some(head) = RequestHead::read(&mut client).await else {
            return;
        };
        let header = |k: &str| head.header(k);
        let path = head.path().to_owned();
        *self
            .state
            .lock()
            .unwrap()
            .requests
            .entry(path.clone())
            .or_default() += 1;

        let basic_ok =
            |user: &str, pass: &str| header("authorization") == Some(&basic_auth(user, pass));
        if path == "/token" {
            let resp = match self.auth {
                ProxyAuth::Bearer(u, p) if basic_ok(u, p) => {
                    let mut s = self.state.lock().unwrap();
                    let tok = format!("token-{}", s.tokens.len());
                    s.tokens.insert(tok.clone());
                    let body = format!("{{\"token\":\"{tok}\",\"expires_in\":300}}");
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
                _ => "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .into(),
            };
            let _ = client.write_all(resp.as_bytes()).await;
            return;
        }
        let challenge = match self.auth {
            ProxyAuth::None => None,
            ProxyAuth::Basic(u, p) => {
                (!basic_ok(u, p)).then(|| "Basic realm=\"berth-e2e\"".to_owned())
            }
            ProxyAuth::Bearer(..) => {
                let ok = header("authorization")
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .is_some_and(|t| self.state.lock().unwrap().tokens.contains(t));
                (!ok).then(|| {
                    format!(
                        "Bearer realm=\"http://{}/token\",service=\"berth-e2e\",scope=\"repository:x:pull\"",
                        self.addr
                    )
                })
            }
        };
        if let Some(c) = challenge {
            let resp = format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {c}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = client.write_all(resp.as_bytes()).await;
            return;
        }

        // Forward, one request per connection, without our Authorization.
        let Some(mut resp) = head.forward_without_credentials(&self.upstream).await else {
            return;
        };
        let cut = path.rsplit_once("/blobs/").and_then(|(_, d)| {
            let at = *self.state.lock().unwrap().cut.get(d)?;
            let start = header("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
                .unwrap_or(0);
            Some(at.saturating_sub(start))
        });
        if let Some(keep) = cut {
            let body_at = resp
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(resp.len(), |i| i + 4);
            resp.truncate((body_at + keep).min(resp.len()));
        }
        let _ = client.write_all(&resp).await;
        let _ = client.shutdown().await;
    }
}

fn auth(user: &str, pass: &str) -> Option<AuthConfig> {
    Some(AuthConfig {
        username: user.into(),
        password: pass.into(),
        ..Default::default()
    })
}

// ---- tests --------------------------------------------------------------------------------

#[tokio::test]
async fn pull_by_tag_and_digest_returns_the_image_id_and_remove_keeps_shared_tags() {
    let d = start().await;
    let bb = info(images::BUSYBOX);
    let id = pull(&d, images::BUSYBOX, None).await.expect("pull by tag");
    assert_eq!(id, bb.config_digest, "PullImage returns the image id");

    let st = status(&d, images::BUSYBOX, false).await;
    let img = st.image.expect("ImageStatus knows the pulled image");
    assert_eq!(img.id, bb.config_digest);
    assert_eq!(img.repo_tags, vec![images::BUSYBOX.to_owned()]);
    assert_eq!(img.repo_digests, vec![bb.repo_digest()]);
    assert!(
        img.size >= bb.layers_size(),
        "size {} < layers {}",
        img.size,
        bb.layers_size()
    );

    // By digest: same image; short names and IDs resolve too.
    let by_digest = bb.repo_digest();
    assert_eq!(
        pull(&d, &by_digest, None).await.expect("pull by digest"),
        id
    );
    for name in [
        "busybox:1.28",
        &id,
        &id["sha256:".len()..],
        &id[7..19],
        &by_digest,
    ] {
        let got = status(&d, name, false).await.image.map(|i| i.id);
        assert_eq!(got.as_deref(), Some(id.as_str()), "ImageStatus({name})");
    }
    assert_eq!(list(&d, None).await.len(), 1);
    assert_eq!(list(&d, Some("busybox:1.28")).await.len(), 1);
    assert!(list(&d, Some("busybox:9.9")).await.is_empty());

    // The same image straight from the loopback registry, plain HTTP: a second tag.
    assert_eq!(pull(&d, images::BUSYBOX_LOCAL, None).await.unwrap(), id);
    let img = status(&d, &id, false).await.image.unwrap();
    assert_eq!(img.repo_tags.len(), 2, "{:?}", img.repo_tags);

    // Removing one of two tags keeps the image and its files.
    remove(&d, images::BUSYBOX).await;
    let img = status(&d, &id, false).await.image.expect("image kept");
    assert_eq!(img.repo_tags, vec![images::BUSYBOX_LOCAL.to_owned()]);
    assert!(
        snapshot_dirs(&d, &bb)
            .iter()
            .all(|p| p.join("bin/busybox").is_file())
    );

    // The last tag takes the image, its blobs and its snapshots with it.
    remove(&d, images::BUSYBOX_LOCAL).await;
    assert_eq!(status(&d, &id, false).await, ImageStatusResponse::default());
    assert!(list(&d, None).await.is_empty());
    assert_eq!(stored(&d), (vec![], vec![]), "RemoveImage freed the disk");
    // Unknown images are not an error.
    remove(&d, images::BUSYBOX).await;
}

#[tokio::test]
async fn multi_arch_indexes_pick_this_machines_platform() {
    let d = start().await;
    for reference in [images::MULTIARCH, images::MULTIARCH_DOCKER] {
        let i = info(reference);
        let id = pull(&d, reference, None).await.expect("pull index");
        assert_eq!(id, i.config_digest, "{reference}: this platform's config");
        let img = status(&d, reference, false).await.image.unwrap();
        assert_eq!(
            img.repo_digests,
            vec![i.repo_digest()],
            "repo digest is the index's"
        );
        let top = &snapshot_dirs(&d, &i)[0];
        let arch = std::fs::read_to_string(top.join(&images::multiarch::ARCH_FILE[1..])).unwrap();
        assert_eq!(arch.trim(), oci::host_arch(), "{reference}");
    }
}

#[tokio::test]
async fn zstd_and_uncompressed_layers_unpack_like_gzip() {
    let d = start().await;
    let host = std::fs::read(
        snapshot_dirs_of_fresh_pull(&d, images::BUSYBOX).await[0].join("bin/busybox"),
    )
    .unwrap();
    for reference in [images::ZSTD, images::UNCOMPRESSED] {
        let i = info(reference);
        assert_eq!(pull(&d, reference, None).await.unwrap(), i.config_digest);
        let dirs = snapshot_dirs(&d, &i);
        let bottom = dirs.last().unwrap();
        let m = std::fs::metadata(bottom.join("bin/busybox")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o755, "{reference}");
        assert_eq!(
            std::fs::read(bottom.join("bin/busybox")).unwrap(),
            host,
            "{reference}"
        );
        assert_eq!(
            std::fs::read_link(bottom.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert_eq!(
            std::fs::metadata(bottom.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
    }
}

async fn snapshot_dirs_of_fresh_pull(d: &Daemon, reference: &str) -> Vec<PathBuf> {
    pull(d, reference, None).await.expect("pull");
    snapshot_dirs(d, &info(reference))
}

#[tokio::test]
async fn whiteouts_and_opaque_dirs_are_honoured_in_the_merged_rootfs() {
    let d = start().await;
    let i = info(images::WHITEOUTS);
    let id = pull(&d, images::WHITEOUTS, None).await.expect("pull");
    assert_eq!(id, i.config_digest);
    let lowers = snapshot_dirs(&d, &i);
    assert!(lowers.len() >= 2, "{lowers:?}");
    let merged = Overlay::mount(&lowers, d.dir().path().join("merged"));
    let at = |p: &str| merged.target.join(&p[1..]);
    for (path, expect) in images::whiteouts::EXPECTED {
        let p = at(path);
        let meta = std::fs::symlink_metadata(&p);
        match expect {
            Expect::Absent => assert!(meta.is_err(), "{path} should be absent"),
            Expect::Dir => assert!(meta.unwrap().is_dir(), "{path} should be a directory"),
            Expect::File(content) => {
                assert!(meta.unwrap().is_file(), "{path} should be a file");
                assert_eq!(std::fs::read_to_string(&p).unwrap(), *content, "{path}");
            }
            Expect::Symlink(target) => {
                assert!(meta.unwrap().file_type().is_symlink(), "{path}");
                assert_eq!(std::fs::read_link(&p).unwrap(), Path::new(target), "{path}");
            }
        }
    }
    for (dir, listing) in images::whiteouts::LISTINGS {
        assert_eq!(dir_names(&at(dir)), *listing, "ls -A {dir}");
    }
    // Below the merge, a whiteout is overlayfs' 0/0 character device.
    let wh = lowers
        .iter()
        .find_map(|l| {
            std::fs::symlink_metadata(l.join("data/remove.txt"))
                .ok()
                .filter(|m| m.file_type().is_char_device())
        })
        .expect("a whiteout device for data/remove.txt");
    assert_eq!(wh.rdev(), 0);
    drop(merged);
}

#[tokio::test]
async fn basic_auth_with_right_and_wrong_credentials() {
    let proxy = Proxy::start(ProxyAuth::Basic("alice", "wonderland")).await;
    let d = start().await;
    let r = format!("{}/library/busybox:1.28", proxy.host());
    let err = pull(&d, &r, None).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = pull(&d, &r, auth("alice", "looking-glass"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(list(&d, None).await.is_empty());
    let id = pull(&d, &r, auth("alice", "wonderland"))
        .await
        .expect("right credentials");
    assert_eq!(id, info(images::BUSYBOX).config_digest);
    // The header alice's secret won is hers: a pod without a pull secret (or with a wrong
    // one) must not pull the private image on it (the node e2e spec "should not be able
    // to pull from private registry without secret").
    let err = pull(&d, &r, None).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "no secret: {err:?}");
    let err = pull(&d, &r, auth("alice", "looking-glass"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "wrong secret: {err:?}");
}

#[tokio::test]
async fn bearer_token_flow_against_a_token_server() {
    let proxy = Proxy::start(ProxyAuth::Bearer("bob", "builder")).await;
    let d = start().await;
    let r = format!("{}/library/busybox:1.28", proxy.host());
    let err = pull(&d, &r, auth("bob", "wrong")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let id = pull(&d, &r, auth("bob", "builder"))
        .await
        .expect("right credentials");
    assert_eq!(id, info(images::BUSYBOX).config_digest);
    assert!(proxy.count("/token") >= 2, "a token was asked for");
    // The token bob's credentials won is not lent to a pull without them.
    let err = pull(&d, &r, None).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "no secret: {err:?}");
}

#[tokio::test]
async fn mirror_is_used_and_a_dead_mirror_skipped() {
    let proxy = Proxy::start(ProxyAuth::None).await;
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let d = start_with(&format!(
        "[registry.mirrors.\"docker.io\"]\nendpoints = [\"http://{dead}\", \"http://{}\"]\n",
        proxy.host()
    ))
    .await;
    let bb = info(images::BUSYBOX);
    assert_eq!(
        pull(&d, images::BUSYBOX, None).await.unwrap(),
        bb.config_digest
    );
    assert_eq!(proxy.count("/v2/library/busybox/manifests/1.28"), 1);
    for l in &bb.layers {
        assert_eq!(
            proxy.count(&format!("/v2/library/busybox/blobs/{}", l.digest)),
            1
        );
    }
}

#[tokio::test]
async fn ten_concurrent_pulls_download_each_blob_once() {
    let proxy = Proxy::start(ProxyAuth::None).await;
    let d = start_with(&format!(
        "[registry.mirrors.\"registry.k8s.io\"]\nendpoints = [\"http://{}\"]\n",
        proxy.host()
    ))
    .await;
    let i = info(images::BUSYBOX_K8S);
    let client = d.images();
    let pulls: Vec<_> = (0..10)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move {
                c.pull_image(PullImageRequest {
                    image: spec(images::BUSYBOX_K8S),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().image_ref)
            })
        })
        .collect();
    for p in pulls {
        assert_eq!(p.await.unwrap().expect("pull"), i.config_digest);
    }
    let repo = &i.repository;
    assert_eq!(
        proxy.count(&format!("/v2/{repo}/blobs/{}", i.config_digest)),
        1,
        "config"
    );
    for l in &i.layers {
        assert_eq!(
            proxy.count(&format!("/v2/{repo}/blobs/{}", l.digest)),
            1,
            "layer {}",
            l.digest
        );
    }
    assert_eq!(list(&d, None).await.len(), 1);
}

#[tokio::test]
async fn registry_dying_mid_blob_leaves_no_blob_and_a_retry_succeeds() {
    let proxy = Proxy::start(ProxyAuth::None).await;
    let d = start().await;
    let bb = info(images::BUSYBOX);
    let big = bb.layers.iter().max_by_key(|l| l.size).unwrap();
    proxy.cut(&big.digest, Some((big.size / 2) as usize));
    let r = format!("{}/library/busybox:1.28", proxy.host());
    let err = pull(&d, &r, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        proxy.count(&format!("/v2/library/busybox/blobs/{}", big.digest)) > 1,
        "retried"
    );
    assert_eq!(
        stored(&d),
        (vec![], vec![]),
        "no partial blob, no half snapshot"
    );
    assert!(list(&d, None).await.is_empty());

    proxy.cut(&big.digest, None);
    assert_eq!(pull(&d, &r, None).await.expect("retry"), bb.config_digest);
    let blob = d
        .dir()
        .root()
        .join("content/blobs/sha256")
        .join(&big.digest["sha256:".len()..]);
    let data = std::fs::read(blob).unwrap();
    assert_eq!(oci::digest(&data), big.digest);
}

/// A tar with raw entry names (`tar::Builder` refuses `..` and absolute paths).
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(oci::FIXED_MTIME);
        let g = h.as_gnu_mut().unwrap();
        g.name[..name.len()].copy_from_slice(name.as_bytes());
        g.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[tokio::test]
async fn hostile_layers_are_rejected_with_nothing_left() {
    use tar::EntryType::{Link, Regular, Symlink};
    let env = Env::get();
    let registry = RegistryClient::new(&env.registry).unwrap();
    let d = start().await;
    let good = raw_tar(&[("etc/ok", Regular, "", b"fine")]);
    let cases: [(&str, Vec<u8>); 6] = [
        ("dotdot", raw_tar(&[("../../escape", Regular, "", b"x")])),
        ("absolute", raw_tar(&[("/etc/escape", Regular, "", b"x")])),
        (
            "symlink-parent",
            raw_tar(&[("l", Symlink, "/tmp", b""), ("l/escape", Regular, "", b"x")]),
        ),
        (
            "symlink-out",
            raw_tar(&[("s", Symlink, "../../../../etc", b"")]),
        ),
        (
            "hardlink-out",
            raw_tar(&[("h", Link, "../../../../etc/passwd", b"")]),
        ),
        (
            "hardlink-absolute",
            raw_tar(&[("h", Link, "/etc/passwd", b"")]),
        ),
    ];
    let layer = |tar: &[u8]| Layer {
        blob: Blob::new(
            Compression::Gzip.oci_media_type(),
            oci::compress(tar, Compression::Gzip).unwrap(),
        ),
        diff_id: oci::digest(tar),
        compression: Compression::Gzip,
        uncompressed_size: tar.len() as u64,
    };
    for (name, evil) in cases {
        let img = oci::Image::build(
            Format::Oci,
            Platform::host(),
            &RunConfig::default(),
            vec![layer(&good), layer(&evil)],
            name,
        )
        .unwrap();
        let repo = format!("berth-e2e/hostile-{name}");
        for b in img.layers.iter().map(|l| &l.blob).chain([&img.config]) {
            registry
                .push_blob(&repo, &b.digest, b.data.clone())
                .await
                .unwrap();
        }
        registry
            .push_manifest(
                &repo,
                "1",
                &img.manifest.media_type,
                img.manifest.data.clone(),
            )
            .await
            .unwrap();
        let err = pull(&d, &format!("{}/{repo}:1", env.registry), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{name}: {err:?}");
        assert!(
            err.message().contains("rejected"),
            "{name}: {}",
            err.message()
        );
        assert_eq!(stored(&d), (vec![], vec![]), "{name}: nothing left");
    }
    assert!(!Path::new("/tmp/escape").exists() && !Path::new("/etc/escape").exists());
    assert!(list(&d, None).await.is_empty());
}

#[tokio::test]
async fn image_status_reports_user_and_verbose_config() {
    let d = start().await;
    let id = pull(&d, images::CONFIGURED, None).await.unwrap();
    let st = status(&d, images::CONFIGURED, true).await;
    let img = st.image.unwrap();
    assert_eq!(img.id, id);
    assert_eq!(img.username, images::configured::USER);
    assert_eq!(img.uid, None, "a user name is not a uid");
    assert!(!img.pinned);
    let verbose: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    let config = &verbose["imageSpec"]["config"];
    assert_eq!(config["User"], images::configured::USER);
    assert_eq!(config["WorkingDir"], images::configured::WORKDIR);
    assert_eq!(config["StopSignal"], images::configured::STOP_SIGNAL);
    assert_eq!(config["Entrypoint"][0], images::configured::ENTRYPOINT[0]);
    assert_eq!(config["Labels"]["io.berth.e2e.image"], "configured");
    assert!(
        config["ExposedPorts"]
            .get(images::configured::EXPOSED_PORT)
            .is_some()
    );

    pull(&d, images::BUSYBOX_K8S, None).await.unwrap();
    let img = status(&d, images::BUSYBOX_K8S, false).await.image.unwrap();
    assert_eq!((img.uid, img.username.as_str()), (None, ""), "no USER");
    assert!(status(&d, images::BUSYBOX_K8S, false).await.info.is_empty());
    assert_eq!(
        status(&d, "docker.io/library/never-pulled:1", true).await,
        ImageStatusResponse::default()
    );
    let err = d
        .images()
        .pull_image(PullImageRequest {
            image: spec("Invalid//Name"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn image_fs_info_matches_du_and_gc_frees_the_disk() {
    let d = start().await;
    let root = d.dir().root();
    let fs_info = |d: &Daemon| {
        let mut c = d.images();
        async move {
            c.image_fs_info(ImageFsInfoRequest {})
                .await
                .expect("ImageFsInfo")
                .into_inner()
                .image_filesystems
                .remove(0)
        }
    };
    let dirs = [root.join("content"), root.join("snapshots")];
    let empty = fs_info(&d).await;
    pull(&d, images::CONFIGURED, None).await.unwrap();
    pull(&d, images::WHITEOUTS, None).await.unwrap();
    // A pull's snapshots record their usage in the background, as they are made durable:
    // the figures match du's once that is done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut full = fs_info(&d).await;
    while (
        full.used_bytes.unwrap().value,
        full.inodes_used.unwrap().value,
    ) != (du(&["-s", "-B1"], &dirs), du(&["-s", "--inodes"], &dirs))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        full = fs_info(&d).await;
    }
    assert_eq!(full.fs_id.unwrap().mountpoint, root.display().to_string());
    let used = full.used_bytes.unwrap().value;
    let inodes = full.inodes_used.unwrap().value;
    assert_eq!(used, du(&["-s", "-B1"], &dirs), "bytes match du");
    assert_eq!(inodes, du(&["-s", "--inodes"], &dirs), "inodes match du");
    assert!(used > empty.used_bytes.unwrap().value + 500_000, "{used}");

    remove(&d, images::CONFIGURED).await;
    remove(&d, images::WHITEOUTS).await;
    assert_eq!(stored(&d), (vec![], vec![]));
    let after = fs_info(&d).await;
    assert_eq!(after.used_bytes.unwrap().value, du(&["-s", "-B1"], &dirs));
    assert_eq!(
        after.inodes_used, empty.inodes_used,
        "back to the empty store"
    );
}

#[tokio::test]
async fn image_fs_info_counts_the_containers_writable_layers() {
    let d = start().await;
    pull(&d, images::BUSYBOX, None).await.unwrap();
    let writable = |d: &Daemon| {
        let mut c = d.images();
        async move {
            let fs = c
                .image_fs_info(ImageFsInfoRequest {})
                .await
                .expect("ImageFsInfo")
                .into_inner();
            assert_eq!(fs.container_filesystems.len(), 1, "{fs:?}");
            let c = fs.container_filesystems[0].clone();
            assert_eq!(
                c.fs_id, fs.image_filesystems[0].fs_id,
                "one shared filesystem"
            );
            c.used_bytes.unwrap().value
        }
    };
    let before = writable(&d).await;
    let (config, pod_id) = new_pod(&d, "writer").await;
    let id = start_container(
        &d,
        &pod_id,
        &config,
        container_config(
            "writer",
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/blob bs=1M count=4 && sleep 3600",
            ],
        ),
    )
    .await;
    // The writable layers are remeasured in the background once the last measure is 10 s
    // old (README): polled as kubelet does, a write shows up within that and a call more.
    let within = std::time::Duration::from_secs(25);
    let started = std::time::Instant::now();
    let mut grown = 0;
    while started.elapsed() < within {
        grown = writable(&d).await.saturating_sub(before);
        if grown >= 4 << 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        grown >= 4 << 20,
        "container {id} wrote 4 MiB, usage grew {grown}"
    );
    remove_pod(&d, &pod_id).await;
    let started = std::time::Instant::now();
    let mut after = writable(&d).await;
    while after >= 64 << 10 && started.elapsed() < within {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        after = writable(&d).await;
    }
    assert!(
        after < 64 << 10,
        "the layer went with its container: {after} bytes left"
    );
}
