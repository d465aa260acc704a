//! Hostile images and registries: tar headers, layer bombs, credentials.
//!
//! Each test builds the hostile layer or server it needs: layers are raw tar bytes pushed
//! to the harness's loopback registry; registries that demand credentials, record the
//! `Authorization` headers they receive or hand out tokens are small HTTP servers on
//! other loopback ports, in front of that registry.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use berth_e2e::fixtures::{
    assert_refused, container_config, daemon_with, exec_sync, image_spec, log_dir, pod_config,
    remove_pod, run_pod, start_container, stored,
};
use berth_e2e::http::{AcceptTask, RequestHead, basic_auth, loopback_listener};
use berth_e2e::images::{self, HostBusybox};
use berth_e2e::oci::{self, Blob, Compression, Layer, RunConfig};
use berth_e2e::{Daemon, Env};
use k8s_cri::v1::{AuthConfig, ImageSpec, PullImageRequest, RemoveImageRequest};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic::Code;

/// The peak RSS a hostile layer may leave the daemon with.
const MAX_DAEMON_HWM_KIB: u64 = 64 << 10;

// ---- building hostile layers ----------------------------------------------------------

/// A raw ustar header block: `name`, typeflag, the size field as given, mode 0644.
fn header(name: &str, typeflag: u8, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(oci::FIXED_MTIME);
    h.set_size(size);
    h.as_mut_bytes()[156] = typeflag;
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// `data` padded to whole 512-byte blocks.
fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(512) * 512, 0);
    v
}

/// One PAX record, `"<len> key=value\n"`, its length counting itself.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!("{key}={value}\n");
    let mut len = body.len() + 2;
    while format!("{len} {body}").len() != len {
        len += 1;
    }
    format!("{len} {body}")
}

fn gzip_member(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A gzip blob whose stream is `head`, then `zero_mib` MiB of zeros, then `tail`, built
/// from concatenated gzip members (a valid gzip file) so a GiB costs a MiB; returns the blob
/// and the digest of what it inflates to (the layer's diff ID).
fn inflating(head: &[u8], zero_mib: usize, tail: &[u8]) -> (Vec<u8>, String) {
    let mib = vec![0u8; 1 << 20];
    let zeros = gzip_member(&mib);
    let mut blob = gzip_member(head);
    let mut diff = Sha256::new();
    diff.update(head);
    for _ in 0..zero_mib {
        blob.extend_from_slice(&zeros);
        diff.update(&mib);
    }
    blob.extend_from_slice(&gzip_member(tail));
    diff.update(tail);
    (blob, format!("sha256:{}", hex::encode(diff.finalize())))
}

/// The gzip layer of [`inflating`]: `head`, `zero_mib` MiB of zeros, then `tail`.
fn inflating_layer(head: &[u8], zero_mib: usize, tail: &[u8]) -> Layer {
    let (blob, diff_id) = inflating(head, zero_mib, tail);
    let size = (head.len() + (zero_mib << 20) + tail.len()) as u64;
    gzip_layer(blob, diff_id, size)
}

fn gzip_layer(blob: Vec<u8>, diff_id: String, uncompressed_size: u64) -> Layer {
    Layer {
        blob: Blob::new(Compression::Gzip.oci_media_type(), blob),
        diff_id,
        compression: Compression::Gzip,
        uncompressed_size,
    }
}

fn tar_layer(tar: &[u8]) -> Layer {
    gzip_layer(
        oci::compress(tar, Compression::Gzip).unwrap(),
        oci::digest(tar),
        tar.len() as u64,
    )
}

/// The busybox root file system as a layer, to run containers on top of hostile ones.
fn busybox_layer() -> Layer {
    let host = HostBusybox::find().expect("host busybox");
    images::busybox_rootfs(&host)
        .expect("busybox rootfs")
        .build(Compression::Gzip)
        .expect("busybox layer")
}

/// Pushes an image of `layers` (bottom first) to the harness registry as `repo:1`;
/// returns the reference to pull (straight from the registry, no mirror).
async fn push(repo: &str, layers: Vec<Layer>) -> String {
    let run = RunConfig {
        env: vec![images::PATH_ENV.into()],
        ..RunConfig::default()
    };
    images::push_layers(repo, layers, &run)
        .await
        .expect("push the image")
}

// ---- what the daemon shows ------------------------------------------------------------

async fn pull(d: &Daemon, image: &str, auth: Option<AuthConfig>) -> Result<String, tonic::Status> {
    d.images()
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn remove(d: &Daemon, image: &str) {
    d.images()
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("RemoveImage {image}: {e}"));
}

/// The daemon's peak resident set size (`VmHWM`), in KiB.
fn vm_hwm_kib(d: &Daemon) -> u64 {
    let pid = d.pid().expect("daemon pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

fn auth(user: &str, pass: &str, server: &str) -> Option<AuthConfig> {
    Some(AuthConfig {
        username: user.into(),
        password: pass.into(),
        server_address: server.into(),
        ..Default::default()
    })
}

/// Asserts that a pull failed on the layer `digest` (FailedPrecondition, a message naming
/// the layer and `reason`).
fn assert_layer_refused(err: &tonic::Status, digest: &str, reason: &str) {
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    for part in [digest, reason] {
        assert!(
            err.message().contains(part),
            "{part:?} in {}",
            err.message()
        );
    }
}

// ---- layer bombs ----------------------------------------------------------------------

#[tokio::test]
async fn a_pax_header_claiming_a_gibibyte_is_refused_without_raising_memory() {
    // The PAX header's data is really there: 1 GiB of zeros, gzipped to about 1 MiB. A
    // reader that buffers extended headers whole holds a GiB before it parses a record.
    const GIB_IN_MIB: usize = 1024;
    let head = header("PaxHeaders/bomb", b'x', (GIB_IN_MIB as u64) << 20);
    let tail = [header("bomb", b'0', 0), vec![0; 1024]].concat();
    let layer = inflating_layer(&head, GIB_IN_MIB, &tail);
    let small = layer.blob.data.len();
    assert!(small < 4 << 20, "the bomb is small: {small}");
    let digest = layer.blob.digest.clone();
    let image = push("berth-e2e/escapes-pax-bomb", vec![layer]).await;

    let d = Daemon::start().await.expect("daemon");
    let before = vm_hwm_kib(&d);
    let err = pull(&d, &image, None).await.expect_err("a PAX bomb");
    let after = vm_hwm_kib(&d);
    eprintln!("daemon VmHWM: {before} KiB before the pull, {after} KiB after");
    assert!(
        err.message().contains("rejected"),
        "rejected in {}",
        err.message()
    );
    assert_layer_refused(
        &err,
        &digest,
        "PAX extended header of 1073741824 bytes is larger than the limit of 1048576 bytes",
    );
    assert!(
        after < MAX_DAEMON_HWM_KIB,
        "daemon VmHWM {after} KiB after the pull (limit {MAX_DAEMON_HWM_KIB} KiB)"
    );
    assert_eq!(stored(&d), (vec![], vec![]), "nothing left");
}

#[tokio::test]
async fn a_gzip_bomb_is_refused_at_the_configured_layer_budget() {
    // 256 MiB of zeros in one file, gzipped to well under 1 MiB; the budget is 16 MiB.
    const BUDGET: u64 = 16 << 20;
    const ZEROS_MIB: usize = 256;
    let head = header("zeros", b'0', (ZEROS_MIB as u64) << 20);
    let tail = vec![0; 1024];
    let layer = inflating_layer(&head, ZEROS_MIB, &tail);
    let small = layer.blob.data.len();
    assert!(small < 1 << 20, "the bomb is small: {small}");
    let digest = layer.blob.digest.clone();
    let image = push("berth-e2e/escapes-gzip-bomb", vec![layer]).await;

    let d = daemon_with(&format!("[image]\nmax_layer_bytes = {BUDGET}\n")).await;
    let before = vm_hwm_kib(&d);
    let err = pull(&d, &image, None).await.expect_err("a gzip bomb");
    let hwm = vm_hwm_kib(&d);
    eprintln!("daemon VmHWM: {before} KiB before the gzip bomb, {hwm} KiB after");
    assert_layer_refused(
        &err,
        &digest,
        "uncompressed size exceeds the layer budget of 16777216 bytes (image.max_layer_bytes)",
    );
    assert!(hwm < MAX_DAEMON_HWM_KIB, "daemon VmHWM {hwm} KiB");
    assert_eq!(stored(&d), (vec![], vec![]), "nothing left");
    // The budget refuses the bomb, not every image: busybox fits in it.
    pull(&d, images::BUSYBOX, None)
        .await
        .expect("busybox within the budget");
}

#[tokio::test]
async fn too_many_entries_are_refused_at_the_configured_budget() {
    let mut tar = Vec::new();
    for i in 0..50 {
        tar.extend(header(&format!("f{i}"), b'0', 0));
    }
    tar.extend([0u8; 1024]);
    let layer = tar_layer(&tar);
    let digest = layer.blob.digest.clone();
    let image = push("berth-e2e/escapes-many-entries", vec![layer]).await;
    let d = daemon_with("[image]\nmax_layer_entries = 10\n").await;
    let err = pull(&d, &image, None).await.expect_err("too many entries");
    assert_layer_refused(
        &err,
        &digest,
        "more entries than the layer budget of 10 (image.max_layer_entries)",
    );
    assert_eq!(stored(&d), (vec![], vec![]), "nothing left");
}

// ---- parser differentials --------------------------------------------------------------

/// Runs a container of `image` (busybox on top) that sleeps; returns (pod, container).
async fn run_sleeper(d: &Daemon, image: &str, name: &str) -> (String, String) {
    let config = pod_config(name, &log_dir(d));
    let pod = run_pod(d, &config).await;
    let mut c = container_config("c", &["/bin/sleep", "3600"]);
    c.image = image_spec(image);
    let id = start_container(d, &pod, &config, c).await;
    (pod, id)
}

/// Pushes busybox with the tar archive `hostile` as a layer on top to
/// `berth-e2e/escapes-NAME`, pulls it into a fresh daemon (which must accept it: the archive
/// is valid tar), and runs a sleeper of it; returns the daemon, the pod and the container.
async fn run_hostile(name: &str, hostile: &[u8]) -> (Daemon, String, String) {
    let image = push(
        &format!("berth-e2e/escapes-{name}"),
        vec![busybox_layer(), tar_layer(hostile)],
    )
    .await;
    let d = Daemon::start().await.expect("daemon");
    pull(&d, &image, None)
        .await
        .unwrap_or_else(|e| panic!("{name}: the layer is valid tar: {e}"));
    let (pod, c) = run_sleeper(&d, &image, name).await;
    (d, pod, c)
}

#[tokio::test]
async fn cve_2025_62518_pax_size_cannot_smuggle_entries() {
    // TARmageddon: the ustar header of /etc/berth-outer says 0 bytes, its PAX record says
    // N. The N bytes hold a complete tar header for /etc/berth-smuggled and its data. Go's
    // archive/tar (Docker, containerd) follows the PAX size: berth-outer is an N-byte file
    // whose content is that header, and there is no berth-smuggled. A reader that used the
    // ustar size would unpack the nested entry instead.
    let nested = [header("etc/berth-smuggled", b'0', 9), padded(b"smuggled\n")].concat();
    let record = pax_record("size", &nested.len().to_string());
    let hostile = [
        header("PaxHeaders/berth-outer", b'x', record.len() as u64),
        padded(record.as_bytes()),
        header("etc/berth-outer", b'0', 0),
        nested.clone(),
        header("etc/berth-after", b'0', 0),
        vec![0; 1024],
    ]
    .concat();
    let (d, pod, c) = run_hostile("paxsize", &hostile).await;

    let (out, err, code) = exec_sync(&d, &c, &["/bin/ls", "/etc"]).await;
    assert_eq!(code, 0, "{err}");
    let listed: Vec<&str> = out.split_whitespace().collect();
    assert!(
        listed.contains(&"berth-outer") && listed.contains(&"berth-after"),
        "{listed:?}"
    );
    assert!(
        !listed.contains(&"berth-smuggled"),
        "smuggled entry unpacked: {listed:?}"
    );
    let (out, _, code) = exec_sync(&d, &c, &["/bin/cat", "/etc/berth-outer"]).await;
    assert_eq!(code, 0);
    assert!(nested.is_ascii());
    assert_eq!(
        out.as_bytes(),
        &nested[..],
        "berth-outer holds the nested header as its content"
    );
    let (_, _, code) = exec_sync(&d, &c, &["/bin/cat", "/etc/berth-smuggled"]).await;
    assert_ne!(code, 0, "/etc/berth-smuggled exists");
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn header_only_entries_carry_no_data_as_in_go() {
    // A directory whose size field claims 1024 bytes, followed directly by the next
    // header: Go reads no data for header-only types, so /etc/berth-hidden is an entry; a
    // reader that skipped 1024 bytes would not see it (nor anything it shadows).
    let hostile = [
        header("etc/berth-dir/", b'5', 1024),
        header("etc/berth-hidden", b'0', 6),
        padded(b"found\n"),
        vec![0; 1024],
    ]
    .concat();
    let (d, pod, c) = run_hostile("headeronly", &hostile).await;
    let (out, err, code) = exec_sync(&d, &c, &["/bin/cat", "/etc/berth-hidden"]).await;
    assert_eq!((out.as_str(), code), ("found\n", 0), "{err}");
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn device_nodes_from_an_image_give_no_access_to_the_nodes_devices() {
    // An image may carry device nodes (containerd unpacks them too); the container may not
    // use them: /dev/mem of the node and its first disk, planted outside /dev.
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let disk = ["/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/xvda"]
        .into_iter()
        .find_map(|p| {
            std::fs::metadata(p)
                .ok()
                .filter(|m| m.file_type().is_block_device())
        })
        .map(|m| (libc::major(m.rdev()), libc::minor(m.rdev())))
        .expect("a disk on the node");
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, (major, minor)) in [
        ("srv/mem", tar::EntryType::Char, (1, 1)),
        ("srv/disk", tar::EntryType::Block, disk),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(kind);
        h.set_mode(0o666);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(oci::FIXED_MTIME);
        h.set_size(0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
    }
    let hostile = b.into_inner().unwrap();
    let (d, pod, c) = run_hostile("devices", &hostile).await;
    for node in ["/srv/mem", "/srv/disk"] {
        let (out, err, code) = exec_sync(
            &d,
            &c,
            &[
                "/bin/dd",
                &format!("if={node}"),
                "of=/dev/null",
                "bs=512",
                "count=1",
            ],
        )
        .await;
        assert_ne!(code, 0, "{node} readable: {out} {err}");
        assert!(err.contains("Operation not permitted"), "{node}: {err}");
    }
    remove_pod(&d, &pod).await;
}

#[tokio::test]
async fn a_setuid_binary_of_an_image_is_out_of_reach_of_node_users() {
    // A setuid-root shell in a layer: inside the container it is the image's business, but
    // a node user must not reach it through the unpacked snapshot on the node.
    let host = HostBusybox::find().expect("host busybox");
    let busybox = std::fs::read(&host.binary).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("bin/id").unwrap();
    h.set_mode(0o4755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(oci::FIXED_MTIME);
    h.set_size(busybox.len() as u64);
    h.set_cksum();
    b.append(&h, &busybox[..]).unwrap();
    let layer = tar_layer(&b.into_inner().unwrap());
    let chain = layer.diff_id.clone();
    let image = push("berth-e2e/escapes-setuid", vec![layer]).await;
    let d = Daemon::start().await.expect("daemon");
    pull(&d, &image, None).await.expect("pull");
    // The harness's directories above the daemon's root are not the defence under test:
    // let node users through them, for the duration of the test.
    let _open = Traversable::new(&d.dir().root());
    let fs = d
        .dir()
        .root()
        .join("snapshots")
        .join(&chain["sha256:".len()..])
        .join("fs/bin/id");
    let m = std::fs::metadata(&fs).expect("the snapshot holds the setuid binary");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(m.permissions().mode() & 0o7777, 0o4755);
    // As a node user's shell would (setpriv's own exec right after its setresuid was seen
    // to pass a 0700 directory on these machines; a process that is the user does not).
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["/bin/sh", "-c", "\"$0\" -u", fs.to_str().unwrap()])
        .output()
        .expect("setpriv");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !out.status.success() && stdout.is_empty(),
        "a node user ran the image's setuid binary: {stdout}"
    );
    assert!(stderr.contains("Permission denied"), "{stderr}");
}

/// Adds `o+x` to the harness's directories above a daemon's root (not to the root itself)
/// and restores their modes on drop.
struct Traversable(Vec<(std::path::PathBuf, u32)>);

impl Traversable {
    fn new(root: &Path) -> Traversable {
        use std::os::unix::fs::PermissionsExt;
        let workdir = &Env::get().workdir;
        let mut changed = Vec::new();
        for dir in root.ancestors().skip(1) {
            if !dir.starts_with(workdir) {
                break;
            }
            let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o7777;
            if mode & 0o001 == 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))
                    .unwrap();
                changed.push((dir.to_owned(), mode));
            }
        }
        Traversable(changed)
    }
}

impl Drop for Traversable {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        for (dir, mode) in &self.0 {
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(*mode));
        }
    }
}

// ---- registries ------------------------------------------------------------------------

/// What one of the servers below does with a request.
#[derive(Clone)]
enum Role {
    /// A registry (or mirror) demanding basic auth `user:pass`; forwards to the harness
    /// registry once given them.
    Basic(&'static str, &'static str),
    /// A registry demanding a bearer token from `realm`, one of `tokens`.
    Bearer {
        realm: String,
        tokens: Arc<Mutex<HashSet<String>>>,
    },
    /// A token service: a token for basic auth `user:pass`, added to `tokens`.
    Token {
        user: &'static str,
        pass: &'static str,
        tokens: Arc<Mutex<HashSet<String>>>,
    },
}

/// An HTTP/1.1 server on a loopback port (one request per connection) that records the
/// path and the `Authorization` header of every request.
struct Server {
    addr: SocketAddr,
    seen: Mutex<Vec<(String, Option<String>)>>,
    role: Role,
    task: AcceptTask,
}

impl Server {
    async fn start(role: Role) -> Arc<Server> {
        let (listener, addr) = loopback_listener().await;
        let server = Arc::new(Server {
            addr,
            seen: Mutex::default(),
            role,
            task: AcceptTask::default(),
        });
        server.task.start(listener, &server, Server::serve);
        server
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The `Authorization` headers received.
    fn authorizations(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, a)| a.clone())
            .collect()
    }

    async fn serve(self: Arc<Self>, mut client: TcpStream) {
        let Some(head) = RequestHead::read(&mut client).await else {
            return;
        };
        let authorization = head.header("authorization").map(str::to_owned);
        let path = head.path().to_owned();
        self.seen
            .lock()
            .unwrap()
            .push((path, authorization.clone()));
        let reply = |status: &str, extra: &str, body: &str| {
            format!(
                "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        let challenge = match &self.role {
            Role::Token { user, pass, tokens } => {
                let resp = if authorization.as_deref() == Some(basic_auth(user, pass).as_str()) {
                    let mut t = tokens.lock().unwrap();
                    let tok = format!("token-{}", t.len());
                    t.insert(tok.clone());
                    reply(
                        "200 OK",
                        "",
                        &format!("{{\"token\":\"{tok}\",\"expires_in\":300}}"),
                    )
                } else {
                    reply("401 Unauthorized", "", "{}")
                };
                let _ = client.write_all(resp.as_bytes()).await;
                return;
            }
            Role::Basic(user, pass) => (authorization.as_deref()
                != Some(basic_auth(user, pass).as_str()))
            .then(|| "Basic realm=\"berth-escapes\"".to_owned()),
            Role::Bearer { realm, tokens } => {
                let ok = authorization
                    .as_deref()
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .is_some_and(|t| tokens.lock().unwrap().contains(t));
                (!ok).then(|| format!("Bearer realm=\"{realm}\",service=\"berth-escapes\""))
            }
        };
        if let Some(c) = challenge {
            let resp = reply(
                "401 Unauthorized",
                &format!("WWW-Authenticate: {c}\r\n"),
                "{}",
            );
            let _ = client.write_all(resp.as_bytes()).await;
            return;
        }
        // Forward to the harness registry, without our Authorization.
        let Some(resp) = head.forward_without_credentials(&Env::get().registry).await else {
            return;
        };
        let _ = client.write_all(&resp).await;
        let _ = client.shutdown().await;
    }
}

#[tokio::test]
async fn pull_credentials_never_reach_a_mirror_of_another_host() {
    // The image's registry (origin) wants alice's credentials; its mirror, on another
    // loopback port, asks for basic auth too and records what it gets: it must get none,
    // whether the credentials come from kubelet (with or without server_address) or from
    // the origin's [registry.configs] entry. The pull falls through to the origin.
    let origin = Server::start(Role::Basic("alice", "wonderland")).await;
    let mirror = Server::start(Role::Basic("alice", "wonderland")).await;
    let image = format!("{}/library/busybox:1.28", origin.host());
    let mirrors = format!(
        "[registry.mirrors.\"{}\"]\nendpoints = [\"http://{}\"]\n",
        origin.host(),
        mirror.host()
    );
    let d = daemon_with(&mirrors).await;
    let id = images::info(images::BUSYBOX).unwrap().config_digest;
    for server in [
        "",
        origin.host().as_str(),
        &format!("http://{}/v2/", origin.host()),
    ] {
        let got = pull(&d, &image, auth("alice", "wonderland", server)).await;
        assert_eq!(
            got.expect("pull through the origin"),
            id,
            "server_address {server:?}"
        );
        remove(&d, &image).await;
    }
    drop(d);
    let configured = format!(
        "{mirrors}[registry.configs.\"{}\"]\nusername = \"alice\"\npassword = \"wonderland\"\n",
        origin.host()
    );
    let d = daemon_with(&configured).await;
    assert_eq!(
        pull(&d, &image, None)
            .await
            .expect("configured credentials"),
        id
    );
    drop(d);
    assert!(mirror.requests() >= 4, "the mirror was asked first");
    assert_eq!(
        mirror.authorizations(),
        Vec::<String>::new(),
        "the mirror got credentials"
    );
    assert!(
        origin
            .authorizations()
            .contains(&basic_auth("alice", "wonderland")),
        "the origin got them"
    );

    // Only when the operator says so for the mirror's host does it get them.
    let before = mirror.requests();
    let forwarding = format!(
        "{mirrors}[registry.configs.\"{}\"]\nforward_credentials = true\n",
        mirror.host()
    );
    let d = daemon_with(&forwarding).await;
    assert_eq!(
        pull(&d, &image, auth("alice", "wonderland", ""))
            .await
            .unwrap(),
        id
    );
    assert!(mirror.requests() > before);
    assert!(
        mirror
            .authorizations()
            .contains(&basic_auth("alice", "wonderland")),
        "forward_credentials lets the mirror have them"
    );
}

#[tokio::test]
async fn a_plain_http_token_realm_on_another_host_gets_no_credentials() {
    // The registry sends the client to a token service over plain http on another port.
    // Basic credentials sent there would cross the network in the clear (and any local
    // user can listen on a loopback port): they are withheld, the token asked for
    // anonymously, and the pull fails saying why.
    let tokens: Arc<Mutex<HashSet<String>>> = Arc::default();
    let realm = Server::start(Role::Token {
        user: "bob",
        pass: "builder",
        tokens: tokens.clone(),
    })
    .await;
    let registry = Server::start(Role::Bearer {
        realm: format!("http://{}/token", realm.host()),
        tokens,
    })
    .await;
    let image = format!("{}/library/busybox:1.28", registry.host());
    let d = Daemon::start().await.expect("daemon");
    let err = pull(&d, &image, auth("bob", "builder", ""))
        .await
        .expect_err("credentials withheld");
    assert_refused(
        &err,
        Code::PermissionDenied,
        &format!(
            "credentials withheld from the plain-http token realm http://{}/token",
            realm.host()
        ),
    );
    assert!(realm.requests() >= 1, "the token was asked for");
    assert_eq!(
        realm.authorizations(),
        Vec::<String>::new(),
        "the realm got credentials"
    );
    drop(d);

    // Marked insecure, the realm's host is trusted with them.
    let d = daemon_with(&format!(
        "[registry.configs.\"{}\"]\ninsecure = true\n",
        realm.host()
    ))
    .await;
    pull(&d, &image, auth("bob", "builder", ""))
        .await
        .expect("pull with the realm trusted");
    assert!(
        realm
            .authorizations()
            .contains(&basic_auth("bob", "builder"))
    );
}
