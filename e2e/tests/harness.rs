//! The harness itself: its busybox userland runs, and the registry serves every test
//! image at the digest the catalog records.

use std::os::unix::process::CommandExt;
use std::process::Command;

use berth_e2e::images::{self, Content, HostBusybox};
use berth_e2e::registry::RegistryClient;
use berth_e2e::{Env, oci};

#[test]
fn busybox_rootfs_runs_a_dynamic_userland_in_a_chroot() {
    let env = Env::get();
    let host = HostBusybox::find().expect("host busybox");
    let tar = images::busybox_rootfs(&host)
        .expect("rootfs")
        .tar()
        .expect("tar");
    let dir = tempfile::Builder::new()
        .prefix("chroot-")
        .tempdir_in(&env.workdir)
        .expect("tempdir");
    let mut archive = tar::Archive::new(&tar[..]);
    archive.set_preserve_permissions(true);
    archive.unpack(dir.path()).expect("unpack rootfs");

    let root = dir.path().to_path_buf();
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        "echo hello | cat; /usr/bin/env | grep -c ^PATH=; ls -d /tmp; id -u",
    ])
    .env_clear()
    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    // SAFETY: chroot(2) and chdir(2) are async-signal-safe; the path is owned by the
    // closure.
    unsafe {
        cmd.pre_exec(move || {
            std::os::unix::fs::chroot(&root)?;
            std::env::set_current_dir("/")
        });
    }
    let out = cmd.output().expect("run sh in the chroot");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sh in the busybox rootfs failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "hello\n1\n/tmp\n0\n");
}

#[tokio::test]
async fn registry_serves_every_test_image_at_the_recorded_digest() {
    let env = Env::get();
    let client = RegistryClient::new(&env.registry).expect("registry client");
    for reference in images::ALL {
        let info = images::info(reference).expect("catalog entry");
        let (media_type, body) = client
            .get_manifest(&info.repository, &info.tag)
            .await
            .expect("GET manifest");
        assert_eq!(oci::digest(&body), info.digest, "{reference}");
        assert_eq!(media_type, info.media_type, "{reference}");
        for layer in &info.layers {
            assert!(
                client
                    .blob_exists(&info.repository, &layer.digest)
                    .await
                    .expect("HEAD blob"),
                "{reference}: layer {} missing",
                layer.digest
            );
        }
        let is_index = media_type.contains("index") || media_type.contains("list");
        assert_eq!(is_index, !info.platforms.is_empty(), "{reference}");
    }
    let local = images::info(images::BUSYBOX_LOCAL).expect("local busybox");
    assert_eq!(local.digest, images::info(images::BUSYBOX).unwrap().digest);
}

#[test]
fn multiarch_indexes_list_this_machine_and_arm64_v8() {
    for reference in [images::MULTIARCH, images::MULTIARCH_DOCKER] {
        let info = images::info(reference).expect("catalog entry");
        let archs: Vec<(String, Option<String>)> = info
            .platforms
            .iter()
            .map(|p| (p.architecture.clone(), p.variant.clone()))
            .collect();
        assert_eq!(archs.len(), 2, "{reference}: {archs:?}");
        assert_eq!(archs[0].0, oci::host_arch(), "{reference}");
        assert_eq!(archs[1].0, images::multiarch::other_arch(), "{reference}");
        assert_eq!(info.manifest_digest, info.platforms[0].manifest_digest);
        assert_eq!(
            info.layers.len(),
            2,
            "{reference}: busybox layer plus arch layer"
        );
    }
}

#[test]
fn image_building_is_deterministic() {
    let host = HostBusybox::find().expect("host busybox");
    let a = images::build_all(&host).expect("build");
    let b = images::build_all(&host).expect("build");
    let digests = |v: &[images::TestImage]| -> Vec<String> {
        v.iter()
            .map(|i| match &i.content {
                Content::Single(img) => img.manifest.digest.clone(),
                Content::Index(idx) => idx.blob.digest.clone(),
            })
            .collect()
    };
    assert_eq!(digests(&a), digests(&b));
    // And the same as what the harness pushed in its own run.
    for img in &a {
        assert_eq!(
            images::info_of(img).digest,
            images::info(img.reference).expect("catalog").digest,
            "{}",
            img.reference
        );
    }
}
