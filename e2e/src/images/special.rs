//! The images built for one behaviour each: whiteouts, a configured image, the multi-arch
//! indexes and the many-layered image of the cold-pull benchmark.

use std::path::Path;

use super::busybox::{add_host_path, busybox_run};
use super::{
    CONFIGURED, Content, LAYERED, MARKER_FILE, PATH_ENV, TestImage, configured, test_image,
};
use crate::error::{Error, IoContext, Result};
use crate::oci::{Compression, Format, Image, Index, Layer, LayerBuilder, Platform, RunConfig};

pub(super) fn whiteout_layers() -> Result<Vec<LayerBuilder>> {
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

pub(super) fn configured_layer() -> Result<LayerBuilder> {
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

pub(super) fn configured_run() -> RunConfig {
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

pub(super) fn multiarch_index(
    format: Format,
    rootfs_gz: &Layer,
    reference: &'static str,
) -> Result<Content> {
    let c = Compression::Gzip;
    let arch_layer = |arch: &str| -> Result<LayerBuilder> {
        let mut l = LayerBuilder::new();
        l.file(super::multiarch::ARCH_FILE, 0o644, format!("{arch}\n"))?;
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
    let other_arch = super::multiarch::other_arch();
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

/// The packages [`LAYERED`] is made of, one layer each.
pub(super) const LAYERED_PACKAGES: [&str; 4] = ["perl-base", "coreutils", "util-linux", "bash"];

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
