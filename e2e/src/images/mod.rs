//! The test images: built from Debian's dynamic `busybox` and the host's libc, pushed to
//! the loopback registry under upstream names, and reached by the daemon through
//! `[registry.mirrors]` as a node would.
//!
//! Use the constants ([`BUSYBOX`], [`WHITEOUTS`], ...) in tests, and [`info`] for the
//! digests the harness pushed. The modules [`configured`], [`whiteouts`] and [`multiarch`]
//! describe what those images contain, for assertions.

use crate::env::Env;
use crate::error::{Error, Result};
use crate::oci::{Compression, Format, Image, Index, Layer, LayerBuilder, Platform, RunConfig};
use crate::registry::RegistryClient;

mod busybox;
mod catalog;
mod special;

pub use busybox::{HostBusybox, busybox_rootfs, parse_ldd};
use busybox::{busybox_run, marker};
pub use catalog::{ImageInfo, LayerInfo, PlatformInfo, catalog_json, info, info_of};
pub use special::layered;
use special::{configured_layer, configured_run, multiarch_index, whiteout_layers};

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
        multiarch_index(Format::Oci, &gz, MULTIARCH)?,
    )?);
    out.push(test_image(
        MULTIARCH_DOCKER,
        multiarch_index(Format::Docker, &gz, MULTIARCH_DOCKER)?,
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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
