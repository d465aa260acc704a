//! The test images: built from Debian's dynamic `busybox` and the host's libc, pushed to
//! the loopback registry under upstream names, and reached by the daemon through
//! `[registry.mirrors]` as a node would.
//!
//! Use the constants ([`BUSYBOX`], [`WHITEOUTS`], ...) in tests, and [`info`] for the
//! digests the harness pushed. The modules [`configured`], [`whiteouts`] and [`multiarch`]
//! describe what those images contain, for assertions.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::env::Env;
use crate::error::{Error, IoContext, Result};
use crate::oci::{Compression, Format, Image, Index, Layer, LayerBuilder, Platform, RunConfig};
use crate::process::run;
use crate::registry::RegistryClient;

/// Debian's `busybox` (single layer, Docker schema 2 manifest), like upstream's.
pub const BUSYBOX: &str = "docker.io/library/busybox:1.28";
/// The Kubernetes e2e busybox (OCI manifest): the busybox layer plus a marker layer.
pub const BUSYBOX_K8S: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
/// [`BUSYBOX`] named by the loopback registry itself (plain HTTP, no mirror involved).
pub const BUSYBOX_LOCAL: &str = "127.0.0.1:5000/library/busybox:1.28";
/// Layers that delete and replace files and directories (see [`whiteouts`]).
pub const WHITEOUTS: &str = "docker.io/berth-e2e/whiteouts:1";
/// An image with USER, ENTRYPOINT, CMD, ENV, WORKDIR, STOPSIGNAL, labels and an exposed
/// port (see [`configured`]).
pub const CONFIGURED: &str = "docker.io/berth-e2e/configured:1";
/// An OCI index: this machine's platform (busybox) and a tiny other one (see [`multiarch`]).
pub const MULTIARCH: &str = "gcr.io/berth-e2e/multiarch:1";
/// The same two platforms as a Docker manifest list.
pub const MULTIARCH_DOCKER: &str = "gcr.io/berth-e2e/multiarch-docker:1";
/// busybox with zstd-compressed layers.
pub const ZSTD: &str = "quay.io/berth-e2e/zstd:1";
/// busybox with uncompressed tar layers.
pub const UNCOMPRESSED: &str = "quay.io/berth-e2e/uncompressed:1";
/// busybox whose `/proc` and `/sys` are symlinks (to `/tmp` and `/proc`), as an image that
/// tries to redirect the runtime's proc and sysfs mounts would have them (CVE-2019-19921).
pub const PROC_SYMLINK: &str = "docker.io/berth-e2e/proc-symlink:1";
/// A pause image for the runtimes Berth is compared with (containerd's default sandbox
/// image): busybox sleeping for ever. Berth itself needs none.
pub const PAUSE: &str = "registry.k8s.io/pause:3.6";

/// Four layers of Debian packages' files (perl-base, coreutils, util-linux, bash: about
/// 1,300 files and 40 MB), sharing no blob with the other images: the benchmark's
/// multi-layer cold pull. Not in [`ALL`]: the benchmark builds and pushes it with
/// [`layered`] (compressing it takes a second every harness run would pay).
pub const LAYERED: &str = "docker.io/berth-e2e/layered:1";

/// Every image the harness pushes.
pub const ALL: &[&str] = &[
    BUSYBOX,
    BUSYBOX_K8S,
    WHITEOUTS,
    CONFIGURED,
    MULTIARCH,
    MULTIARCH_DOCKER,
    ZSTD,
    UNCOMPRESSED,
    PROC_SYMLINK,
    PAUSE,
];

/// Registry hosts that daemons started by [`crate::daemon`] reach through the mirror.
pub const MIRRORED_HOSTS: &[&str] = &["docker.io", "registry.k8s.io", "gcr.io", "quay.io"];

/// Every image except [`BUSYBOX`] carries this file, holding its reference and a newline.
pub const MARKER_FILE: &str = "/etc/berth-image";

/// `PATH` in every image's environment.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What [`CONFIGURED`] holds.
pub mod configured {
    /// `USER` (a name, resolved through the image's /etc/passwd).
    pub const USER: &str = "berth";
    /// uid of [`USER`].
    pub const UID: u32 = 1000;
    /// Primary gid of [`USER`].
    pub const GID: u32 = 1000;
    /// A supplementary group [`USER`] is a member of in /etc/group (`extra`).
    pub const SUPPLEMENTARY_GID: u32 = 2000;
    /// `ENTRYPOINT`.
    pub const ENTRYPOINT: &[&str] = &["/bin/echo", "entrypoint"];
    /// `CMD`; with the entrypoint the container prints `entrypoint cmd-arg`.
    pub const CMD: &[&str] = &["cmd-arg"];
    /// `ENV` (besides [`super::PATH_ENV`]).
    pub const ENV: &[&str] = &["BERTH_E2E=configured", "GREETING=hello world"];
    /// `WORKDIR` (exists in the image, owned by [`UID`]).
    pub const WORKDIR: &str = "/srv/app";
    /// A file in [`WORKDIR`] and its content.
    pub const WORKDIR_FILE: (&str, &str) = ("/srv/app/hello.txt", "hello from the image\n");
    /// `STOPSIGNAL`.
    pub const STOP_SIGNAL: &str = "SIGUSR1";
    /// `LABEL`s.
    pub const LABELS: &[(&str, &str)] = &[
        ("io.berth.e2e.image", "configured"),
        ("org.opencontainers.image.title", "berth-e2e configured"),
    ];
    /// `EXPOSE`.
    pub const EXPOSED_PORT: &str = "8080/tcp";
}

/// What [`WHITEOUTS`] shows once its layers are stacked (all under /data).
///
/// Layer 1 adds files, directories, a symlink and a hard link; layer 2 replaces
/// `keep.txt`, whites out a file and a directory, makes `opaque/` opaque, turns a file
/// into a directory and a directory into a file; layer 3 re-creates a whited-out file and
/// a whited-out directory.
pub mod whiteouts {
    /// What a path should be in the container's rootfs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Expect {
        /// A regular file with this content.
        File(&'static str),
        /// A directory.
        Dir,
        /// A symlink with this target.
        Symlink(&'static str),
        /// Nothing at this path.
        Absent,
    }

    /// Paths and what each should be.
    pub const EXPECTED: &[(&str, Expect)] = &[
        ("/data/keep.txt", Expect::File("keep v2\n")),
        ("/data/hardlink.txt", Expect::File("keep v1\n")),
        ("/data/link-to-keep", Expect::Symlink("keep.txt")),
        ("/data/remove.txt", Expect::Absent),
        ("/data/removed-dir/a.txt", Expect::Absent),
        ("/data/removed-dir/sub", Expect::Absent),
        ("/data/removed-dir/fresh.txt", Expect::File("fresh\n")),
        ("/data/opaque/old.txt", Expect::Absent),
        ("/data/opaque/sub", Expect::Absent),
        ("/data/opaque/new.txt", Expect::File("new\n")),
        ("/data/file-to-dir", Expect::Dir),
        ("/data/file-to-dir/inner.txt", Expect::File("now a dir\n")),
        ("/data/dir-to-file", Expect::File("now a file\n")),
        ("/data/dir-to-file/child.txt", Expect::Absent),
        ("/data/resurrect.txt", Expect::File("second life\n")),
    ];

    /// Directories and their complete, sorted listing (`ls -A`): no `.wh.` names anywhere.
    pub const LISTINGS: &[(&str, &[&str])] = &[
        (
            "/data",
            &[
                "dir-to-file",
                "file-to-dir",
                "hardlink.txt",
                "keep.txt",
                "link-to-keep",
                "opaque",
                "removed-dir",
                "resurrect.txt",
            ],
        ),
        ("/data/opaque", &["new.txt"]),
        ("/data/removed-dir", &["fresh.txt"]),
        ("/data/file-to-dir", &["inner.txt"]),
    ];
}

/// What [`MULTIARCH`] and [`MULTIARCH_DOCKER`] hold.
pub mod multiarch {
    /// Each platform's image has this file holding its GOARCH name and a newline.
    pub const ARCH_FILE: &str = "/etc/berth-arch";
    /// The other platform: arm64 variant v8 (or amd64 on an arm64 machine); its image has
    /// only [`ARCH_FILE`], no binaries.
    pub fn other_arch() -> &'static str {
        if crate::oci::host_arch() == "arm64" {
            "amd64"
        } else {
            "arm64"
        }
    }
}

/// The host's dynamic busybox and the shared objects it needs.
#[derive(Debug, Clone)]
pub struct HostBusybox {
    /// The busybox executable.
    pub binary: PathBuf,
    /// Absolute paths `ldd` lists for it.
    pub libs: Vec<PathBuf>,
    /// Applet paths relative to the root (`bin/sh`, `usr/bin/env`, ...).
    pub applets: Vec<String>,
}

impl HostBusybox {
    /// Finds Debian's dynamic busybox (package `busybox`) and its libraries.
    pub fn find() -> Result<HostBusybox> {
        let binary = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| {
                Error::Environment("busybox is missing: apt-get install busybox".into())
            })?;
        let ldd = run("ldd", &[&binary.to_string_lossy()]).map_err(|e| {
            Error::Environment(format!(
                "{} is not a dynamic executable ({e}): install Debian's `busybox`, \
                 not `busybox-static`",
                binary.display()
            ))
        })?;
        let libs = parse_ldd(&ldd);
        if libs.is_empty() {
            return Err(Error::Environment(format!(
                "ldd lists no libraries for {}: install Debian's dynamic `busybox`",
                binary.display()
            )));
        }
        let list = run(&binary.to_string_lossy(), &["--list-full"])?;
        let applets = list
            .lines()
            .map(str::trim)
            .filter(|a| a.contains('/') && *a != "bin/busybox")
            .map(str::to_string)
            .collect();
        Ok(HostBusybox {
            binary,
            libs,
            applets,
        })
    }
}

/// The absolute library paths in `ldd` output (`name => /path (addr)` or `/path (addr)`).
pub fn parse_ldd(out: &str) -> Vec<PathBuf> {
    let mut libs: Vec<PathBuf> = out
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => l,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

/// Resolves `.` and `..` lexically.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// Copies the host file `path` into the layer at the same path, reproducing every symlink
/// on the way (so merged-/usr hosts give `lib -> usr/lib` in the image too).
fn add_host_path(layer: &mut LayerBuilder, path: &Path, depth: u32) -> Result<()> {
    if depth > 16 {
        return Err(Error::Image(format!(
            "too many symlinks under {}",
            path.display()
        )));
    }
    let comps: Vec<_> = normalize(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect();
    let mut cur = PathBuf::from("/");
    for (i, comp) in comps.iter().enumerate() {
        let next = cur.join(comp);
        let rel = next.to_string_lossy().trim_start_matches('/').to_string();
        let md =
            std::fs::symlink_metadata(&next).io_context(|| format!("stat {}", next.display()))?;
        let mode = md.permissions().mode() & 0o7777;
        if md.file_type().is_symlink() {
            let target =
                std::fs::read_link(&next).io_context(|| format!("readlink {}", next.display()))?;
            if !layer.contains(&rel) {
                layer.symlink(&rel, &target.to_string_lossy())?;
            }
            let mut resolved = if target.is_absolute() {
                target
            } else {
                cur.join(target)
            };
            for rest in &comps[i + 1..] {
                resolved.push(rest);
            }
            return add_host_path(layer, &resolved, depth + 1);
        } else if md.is_dir() {
            if !layer.contains(&rel) {
                layer.dir(&rel, mode)?;
            }
            cur = next;
        } else if md.is_file() && i + 1 == comps.len() {
            if !layer.contains(&rel) {
                let data =
                    std::fs::read(&next).io_context(|| format!("read {}", next.display()))?;
                layer.file(&rel, mode, data)?;
            }
        } else {
            return Err(Error::Image(format!(
                "unexpected file type at {}",
                next.display()
            )));
        }
    }
    Ok(())
}

/// The busybox root file system: the dynamic busybox, its libraries, applet symlinks, the
/// usual empty directories, and /etc/passwd and /etc/group with root and nobody.
pub fn busybox_rootfs(host: &HostBusybox) -> Result<LayerBuilder> {
    let mut l = LayerBuilder::new();
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "home", "var", "dev", "proc", "sys",
    ] {
        l.dir(d, 0o755)?;
    }
    l.dir("root", 0o700)?;
    l.dir("tmp", 0o1777)?;
    l.dir("var/tmp", 0o1777)?;
    let busybox =
        std::fs::read(&host.binary).io_context(|| format!("read {}", host.binary.display()))?;
    l.file("bin/busybox", 0o755, busybox)?;
    for lib in &host.libs {
        add_host_path(&mut l, lib, 0)?;
    }
    for applet in &host.applets {
        if !l.contains(applet) {
            l.symlink(applet, "/bin/busybox")?;
        }
    }
    l.file(
        "etc/passwd",
        0o644,
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    l.file("etc/group", 0o644, "root:x:0:\nnogroup:x:65534:\n")?;
    Ok(l)
}

fn marker(reference: &str) -> Result<LayerBuilder> {
    let mut l = LayerBuilder::new();
    l.file(MARKER_FILE, 0o644, format!("{reference}\n"))?;
    Ok(l)
}

fn busybox_run() -> RunConfig {
    RunConfig {
        env: vec![PATH_ENV.into()],
        cmd: Some(vec!["sh".into()]),
        ..RunConfig::default()
    }
}

/// A test image's content: one manifest or an index over several.
#[derive(Debug, Clone)]
pub enum Content {
    /// A single-platform image.
    Single(Image),
    /// A multi-platform index.
    Index(Index),
}

/// A test image ready to push.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// Upstream reference the tests use (`docker.io/library/busybox:1.28`).
    pub reference: &'static str,
    /// Repository path in the registry (`library/busybox`).
    pub repository: String,
    /// Tag.
    pub tag: String,
    /// What the tag points at.
    pub content: Content,
}

/// Splits `host/path/name:tag` into (host, repository, tag).
pub fn split_reference(reference: &str) -> Result<(&str, &str, &str)> {
    let bad = || Error::Image(format!("reference {reference} is not host/repo:tag"));
    let (host, rest) = reference.split_once('/').ok_or_else(bad)?;
    let (repo, tag) = rest.rsplit_once(':').ok_or_else(bad)?;
    if repo.is_empty() || tag.is_empty() || repo.contains('@') {
        return Err(bad());
    }
    Ok((host, repo, tag))
}

fn test_image(reference: &'static str, content: Content) -> Result<TestImage> {
    let (_, repo, tag) = split_reference(reference)?;
    Ok(TestImage {
        reference,
        repository: repo.to_string(),
        tag: tag.to_string(),
        content,
    })
}

fn whiteout_layers() -> Result<Vec<LayerBuilder>> {
    let mut l1 = LayerBuilder::new();
    l1.dir("data", 0o755)?;
    l1.file("data/keep.txt", 0o644, "keep v1\n")?;
    l1.hardlink("data/hardlink.txt", "data/keep.txt")?;
    l1.symlink("data/link-to-keep", "keep.txt")?;
    l1.file("data/remove.txt", 0o644, "remove me\n")?;
    l1.file("data/removed-dir/a.txt", 0o644, "a\n")?;
    l1.file("data/removed-dir/sub/b.txt", 0o644, "b\n")?;
    l1.file("data/opaque/old.txt", 0o644, "old\n")?;
    l1.file("data/opaque/sub/old2.txt", 0o644, "old2\n")?;
    l1.file("data/file-to-dir", 0o644, "i was a file\n")?;
    l1.file("data/dir-to-file/child.txt", 0o644, "child\n")?;
    l1.file("data/resurrect.txt", 0o644, "first life\n")?;

    let mut l2 = LayerBuilder::new();
    l2.dir("data", 0o755)?;
    l2.file("data/keep.txt", 0o644, "keep v2\n")?;
    l2.whiteout("data/remove.txt")?;
    l2.whiteout("data/removed-dir")?;
    l2.opaque("data/opaque")?;
    l2.file("data/opaque/new.txt", 0o644, "new\n")?;
    l2.dir("data/file-to-dir", 0o755)?;
    l2.file("data/file-to-dir/inner.txt", 0o644, "now a dir\n")?;
    l2.file("data/dir-to-file", 0o644, "now a file\n")?;
    l2.whiteout("data/resurrect.txt")?;

    let mut l3 = LayerBuilder::new();
    l3.dir("data", 0o755)?;
    l3.file("data/resurrect.txt", 0o644, "second life\n")?;
    l3.file("data/removed-dir/fresh.txt", 0o644, "fresh\n")?;
    Ok(vec![l1, l2, l3])
}

fn configured_layer() -> Result<LayerBuilder> {
    use configured::*;
    let mut l = LayerBuilder::new();
    l.dir("etc", 0o755)?;
    l.file(
        "etc/passwd",
        0o644,
        format!(
            "root:x:0:0:root:/root:/bin/sh\n{USER}:x:{UID}:{GID}:berth e2e user:/home/{USER}:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        ),
    )?;
    l.file(
        "etc/group",
        0o644,
        format!(
            "root:x:0:\n{USER}:x:{GID}:\nextra:x:{SUPPLEMENTARY_GID}:{USER}\nnogroup:x:65534:\n"
        ),
    )?;
    let (uid, gid) = (u64::from(UID), u64::from(GID));
    l.dir_owned(&format!("home/{USER}"), 0o755, uid, gid)?;
    l.dir("srv", 0o755)?;
    l.dir_owned(WORKDIR, 0o755, uid, gid)?;
    l.file_owned(WORKDIR_FILE.0, 0o644, uid, gid, WORKDIR_FILE.1)?;
    l.file(MARKER_FILE, 0o644, format!("{CONFIGURED}\n"))?;
    Ok(l)
}

fn configured_run() -> RunConfig {
    use configured::*;
    let strings = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut env = vec![PATH_ENV.to_string()];
    env.extend(strings(ENV));
    RunConfig {
        user: Some(USER.into()),
        env,
        entrypoint: Some(strings(ENTRYPOINT)),
        cmd: Some(strings(CMD)),
        working_dir: Some(WORKDIR.into()),
        stop_signal: Some(STOP_SIGNAL.into()),
        labels: LABELS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        exposed_ports: vec![EXPOSED_PORT.into()],
        volumes: vec![],
    }
}

fn multiarch(format: Format, rootfs_gz: &Layer, reference: &'static str) -> Result<Content> {
    let c = Compression::Gzip;
    let arch_layer = |arch: &str| -> Result<LayerBuilder> {
        let mut l = LayerBuilder::new();
        l.file(multiarch::ARCH_FILE, 0o644, format!("{arch}\n"))?;
        l.file(MARKER_FILE, 0o644, format!("{reference}\n"))?;
        Ok(l)
    };
    let host = Image::build(
        format,
        Platform::host(),
        &busybox_run(),
        vec![
            rootfs_gz.clone(),
            arch_layer(crate::oci::host_arch())?.build(c)?,
        ],
        reference,
    )?;
    let other_arch = multiarch::other_arch();
    let variant = (other_arch == "arm64").then_some("v8");
    let other = Image::build(
        format,
        Platform::linux(other_arch, variant),
        &RunConfig::default(),
        vec![arch_layer(other_arch)?.build(c)?],
        reference,
    )?;
    Ok(Content::Index(Index::build(format, vec![host, other])?))
}

/// Builds every test image from the host's busybox (deterministic: same host packages,
/// same digests).
pub fn build_all(host: &HostBusybox) -> Result<Vec<TestImage>> {
    let rootfs = busybox_rootfs(host)?;
    let [gz, zst, raw]: [Layer; 3] = rootfs
        .build_many(&[Compression::Gzip, Compression::Zstd, Compression::None])?
        .try_into()
        .map_err(|_| Error::Image("expected three rootfs layers".into()))?;
    let run = busybox_run();
    let single = |format, layers, reference| -> Result<Content> {
        Ok(Content::Single(Image::build(
            format,
            Platform::host(),
            &run,
            layers,
            reference,
        )?))
    };
    let mut out = Vec::new();
    out.push(test_image(
        BUSYBOX,
        single(Format::Docker, vec![gz.clone()], BUSYBOX)?,
    )?);
    out.push(test_image(
        BUSYBOX_K8S,
        single(
            Format::Oci,
            vec![gz.clone(), marker(BUSYBOX_K8S)?.build(Compression::Gzip)?],
            BUSYBOX_K8S,
        )?,
    )?);
    let mut wl = vec![gz.clone()];
    for (i, l) in whiteout_layers()?.iter().enumerate() {
        let mut l = l.clone();
        if i == 2 {
            l.file(MARKER_FILE, 0o644, format!("{WHITEOUTS}\n"))?;
        }
        wl.push(l.build(Compression::Gzip)?);
    }
    out.push(test_image(WHITEOUTS, single(Format::Oci, wl, WHITEOUTS)?)?);
    out.push(test_image(
        CONFIGURED,
        Content::Single(Image::build(
            Format::Oci,
            Platform::host(),
            &configured_run(),
            vec![gz.clone(), configured_layer()?.build(Compression::Gzip)?],
            CONFIGURED,
        )?),
    )?);
    out.push(test_image(
        MULTIARCH,
        multiarch(Format::Oci, &gz, MULTIARCH)?,
    )?);
    out.push(test_image(
        MULTIARCH_DOCKER,
        multiarch(Format::Docker, &gz, MULTIARCH_DOCKER)?,
    )?);
    let mut links = marker(PROC_SYMLINK)?;
    links.symlink("proc", "/tmp")?;
    links.symlink("sys", "/proc")?;
    out.push(test_image(
        PROC_SYMLINK,
        single(
            Format::Oci,
            vec![gz.clone(), links.build(Compression::Gzip)?],
            PROC_SYMLINK,
        )?,
    )?);
    let pause_run = RunConfig {
        entrypoint: Some(vec!["sleep".into(), "2147483647".into()]),
        cmd: None,
        ..busybox_run()
    };
    out.push(test_image(
        PAUSE,
        Content::Single(Image::build(
            Format::Docker,
            Platform::host(),
            &pause_run,
            vec![gz.clone()],
            PAUSE,
        )?),
    )?);
    for (reference, base) in [(ZSTD, zst), (UNCOMPRESSED, raw)] {
        let layers = vec![base.clone(), marker(reference)?.build(base.compression)?];
        out.push(test_image(
            reference,
            single(Format::Oci, layers, reference)?,
        )?);
    }
    Ok(out)
}

/// The packages [`LAYERED`] is made of, one layer each.
const LAYERED_PACKAGES: [&str; 4] = ["perl-base", "coreutils", "util-linux", "bash"];

/// Builds [`LAYERED`] from this machine's installed packages (all four are Essential in
/// Debian, so every machine has them).
pub fn layered() -> Result<TestImage> {
    let mut layers = Vec::new();
    for package in LAYERED_PACKAGES {
        let out = std::process::Command::new("dpkg")
            .args(["-L", package])
            .output()
            .io_context(|| format!("dpkg -L {package}"))?;
        if !out.status.success() {
            return Err(Error::Image(format!("package {package} is not installed")));
        }
        let mut layer = LayerBuilder::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let path = Path::new(line);
            // Directories come with their files; diversions name files that may be gone.
            match std::fs::symlink_metadata(path) {
                Ok(m) if !m.is_dir() => add_host_path(&mut layer, path, 0)?,
                _ => {}
            }
        }
        layers.push(layer.build(Compression::Gzip)?);
    }
    test_image(
        LAYERED,
        Content::Single(Image::build(
            Format::Oci,
            Platform::host(),
            &busybox_run(),
            layers,
            LAYERED,
        )?),
    )
}

/// Builds an image of `layers` (bottom first) with `run` as its config and pushes it to the
/// loopback registry as `<repository>:1`. Returns the reference to pull (the registry's own
/// address: no mirror). For the hostile images of the security tests, which no other test
/// should see.
pub async fn push_layers(repository: &str, layers: Vec<Layer>, run: &RunConfig) -> Result<String> {
    let env = Env::try_get()?;
    let image = TestImage {
        reference: "",
        repository: repository.into(),
        tag: "1".into(),
        content: Content::Single(Image::build(
            Format::Oci,
            Platform::host(),
            run,
            layers,
            repository,
        )?),
    };
    push(&RegistryClient::new(&env.registry)?, &image).await?;
    Ok(format!("{}/{repository}:1", env.registry))
}

/// [`push_layers`] of the busybox rootfs with `extra` on top, with busybox's run config as
/// `run` changes it, as `berth-e2e/<name>:1`.
pub async fn push_busybox_with(
    name: &str,
    extra: &LayerBuilder,
    run: impl FnOnce(&mut RunConfig),
) -> Result<String> {
    let base = busybox_rootfs(&HostBusybox::find()?)?.build(Compression::Gzip)?;
    let mut config = busybox_run();
    run(&mut config);
    let layers = vec![base, extra.build(Compression::Gzip)?];
    push_layers(&format!("berth-e2e/{name}"), layers, &config).await
}

/// Pushes `image` (blobs, then manifests, then the tag).
pub async fn push(client: &RegistryClient, image: &TestImage) -> Result<()> {
    let repo = &image.repository;
    let push_single = |img: &Image, tag: Option<&str>| {
        let img = img.clone();
        let tag = tag.map(str::to_string);
        async move {
            for l in &img.layers {
                client
                    .push_blob(repo, &l.blob.digest, l.blob.data.clone())
                    .await?;
            }
            client
                .push_blob(repo, &img.config.digest, img.config.data.clone())
                .await?;
            let reference = tag.unwrap_or_else(|| img.manifest.digest.clone());
            client
                .push_manifest(
                    repo,
                    &reference,
                    &img.manifest.media_type,
                    img.manifest.data.clone(),
                )
                .await
                .map(|_| ())
        }
    };
    match &image.content {
        Content::Single(img) => push_single(img, Some(&image.tag)).await,
        Content::Index(idx) => {
            for img in &idx.images {
                push_single(img, None).await?;
            }
            client
                .push_manifest(
                    repo,
                    &image.tag,
                    &idx.blob.media_type,
                    idx.blob.data.clone(),
                )
                .await
                .map(|_| ())
        }
    }
}

/// Digests and sizes of one pushed image, as the harness recorded them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Upstream reference (`docker.io/library/busybox:1.28`).
    pub reference: String,
    /// Repository in the registry (`library/busybox`).
    pub repository: String,
    /// Tag.
    pub tag: String,
    /// Digest the tag resolves to (the manifest, or the index for multi-arch images).
    pub digest: String,
    /// Media type of what the tag resolves to.
    pub media_type: String,
    /// Config digest (the image id) of this machine's platform.
    pub config_digest: String,
    /// Manifest digest of this machine's platform.
    pub manifest_digest: String,
    /// Layers of this machine's platform, bottom first.
    pub layers: Vec<LayerInfo>,
    /// Every platform of an index (empty for single manifests).
    pub platforms: Vec<PlatformInfo>,
    /// `USER` of the config, if set.
    pub user: Option<String>,
}

impl ImageInfo {
    /// `name@digest` as CRI `repo_digests` lists it (`docker.io/library/busybox@sha256:..`).
    pub fn repo_digest(&self) -> String {
        let name = self
            .reference
            .rsplit_once(':')
            .map_or(&*self.reference, |(n, _)| n);
        format!("{name}@{}", self.digest)
    }

    /// Sum of the compressed layer sizes of this machine's platform.
    pub fn layers_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// One layer of a pushed image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Blob digest.
    pub digest: String,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// Media type in the manifest.
    pub media_type: String,
    /// Blob size.
    pub size: u64,
    /// Uncompressed tar size.
    pub uncompressed_size: u64,
}

/// One platform entry of an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformInfo {
    /// `linux`.
    pub os: String,
    /// GOARCH name.
    pub architecture: String,
    /// CPU variant.
    pub variant: Option<String>,
    /// Its manifest digest.
    pub manifest_digest: String,
    /// Its config digest.
    pub config_digest: String,
}

/// The catalog entry for a built image.
pub fn info_of(img: &TestImage) -> ImageInfo {
    let (host_img, platforms, digest, media_type) = match &img.content {
        Content::Single(i) => (
            i,
            vec![],
            i.manifest.digest.clone(),
            i.manifest.media_type.clone(),
        ),
        Content::Index(idx) => {
            let host = Platform::host();
            let h = idx
                .images
                .iter()
                .find(|i| i.platform == host)
                .unwrap_or(&idx.images[0]);
            let platforms = idx
                .images
                .iter()
                .map(|i| PlatformInfo {
                    os: i.platform.os.clone(),
                    architecture: i.platform.architecture.clone(),
                    variant: i.platform.variant.clone(),
                    manifest_digest: i.manifest.digest.clone(),
                    config_digest: i.config.digest.clone(),
                })
                .collect();
            (
                h,
                platforms,
                idx.blob.digest.clone(),
                idx.blob.media_type.clone(),
            )
        }
    };
    let config: serde_json::Value =
        serde_json::from_slice(&host_img.config.data).unwrap_or_default();
    ImageInfo {
        reference: img.reference.to_string(),
        repository: img.repository.clone(),
        tag: img.tag.clone(),
        digest,
        media_type,
        config_digest: host_img.config.digest.clone(),
        manifest_digest: host_img.manifest.digest.clone(),
        layers: host_img
            .layers
            .iter()
            .map(|l| LayerInfo {
                digest: l.blob.digest.clone(),
                diff_id: l.diff_id.clone(),
                media_type: l.blob.media_type.clone(),
                size: l.blob.size(),
                uncompressed_size: l.uncompressed_size,
            })
            .collect(),
        platforms,
        user: config["config"]["User"].as_str().map(str::to_string),
    }
}

/// The catalog file's content for `images`: reference -> [`ImageInfo`].
pub fn catalog_json(images: &[TestImage]) -> Result<Vec<u8>> {
    let map: BTreeMap<&str, ImageInfo> = images.iter().map(|i| (i.reference, info_of(i))).collect();
    serde_json::to_vec_pretty(&map).map_err(|source| Error::Json {
        what: "image catalog".into(),
        source,
    })
}

/// What the harness pushed for `reference` (one of the constants of this module).
pub fn info(reference: &str) -> Result<ImageInfo> {
    static CATALOG: OnceLock<std::result::Result<BTreeMap<String, ImageInfo>, String>> =
        OnceLock::new();
    let catalog = CATALOG
        .get_or_init(|| {
            let env = Env::try_get().map_err(|e| e.to_string())?;
            let data = std::fs::read(&env.images_file)
                .map_err(|e| format!("read {}: {e}", env.images_file.display()))?;
            serde_json::from_slice(&data)
                .map_err(|e| format!("parse {}: {e}", env.images_file.display()))
        })
        .as_ref()
        .map_err(|m| Error::Environment(m.clone()))?;
    let key = if reference == BUSYBOX_LOCAL {
        BUSYBOX
    } else {
        reference
    };
    catalog
        .get(key)
        .cloned()
        .ok_or_else(|| Error::Image(format!("{reference} is not a test image")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_yields_absolute_paths() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                   \tlibresolv.so.2 => /lib/x86_64-linux-gnu/libresolv.so.2 (0x1)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        let libs = parse_ldd(out);
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libresolv.so.2"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn references_split_into_host_repo_tag() {
        assert_eq!(
            split_reference(BUSYBOX_K8S).unwrap(),
            ("registry.k8s.io", "e2e-test-images/busybox", "1.29-2")
        );
        assert_eq!(split_reference(BUSYBOX_LOCAL).unwrap().1, "library/busybox");
        assert!(split_reference("busybox").is_err());
        for r in ALL {
            let (host, _, _) = split_reference(r).unwrap();
            assert!(MIRRORED_HOSTS.contains(&host), "{r} is not behind a mirror");
        }
    }

    #[test]
    fn whiteout_expectations_cover_every_layer_path() {
        let layers = whiteout_layers().unwrap();
        let wh: Vec<&str> = layers
            .iter()
            .flat_map(|l| l.entries())
            .map(|e| e.path.as_str())
            .filter(|p| p.contains(".wh."))
            .collect();
        assert_eq!(
            wh,
            [
                "data/.wh.remove.txt",
                "data/.wh.removed-dir",
                "data/opaque/.wh..wh..opq",
                "data/.wh.resurrect.txt"
            ]
        );
        for (dir, names) in whiteouts::LISTINGS {
            let mut sorted = names.to_vec();
            sorted.sort();
            assert_eq!(&sorted, names, "listing of {dir} is not sorted");
        }
    }
}
