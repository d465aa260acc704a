//! Tests of `unpack`.

use std::fs;

use sha2::{Digest, Sha256};

use super::entries::*;
use super::fsops::*;
use super::lowers::*;
use super::stream::*;
use super::*;
use crate::tarstream::tests::{header, smuggling_archive};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Builds tar archives by hand, including entries `tar::Builder` refuses to write.
pub(crate) struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl TarBuilder {
    pub(crate) fn new() -> Self {
        TarBuilder {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        h
    }

    fn raw(&mut self, mut h: tar::Header, name: &str, data: &[u8]) {
        // Write the name bytes directly so `..` and absolute names survive.
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name = [0; 100];
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
    }

    pub(crate) fn dir(mut self, name: &str, mode: u32) -> Self {
        self.raw(Self::header(tar::EntryType::Directory, mode), name, b"");
        self
    }

    pub(crate) fn file(mut self, name: &str, mode: u32, data: &[u8]) -> Self {
        self.raw(Self::header(tar::EntryType::Regular, mode), name, data);
        self
    }

    pub(crate) fn file_owned(
        mut self,
        name: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        data: &[u8],
    ) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        self.raw(h, name, data);
        self
    }

    fn link_entry(mut self, kind: tar::EntryType, name: &str, target: &str) -> Self {
        let mut h = Self::header(kind, 0o777);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.linkname = [0; 100];
        gnu.linkname[..target.len()].copy_from_slice(target.as_bytes());
        self.raw(h, name, b"");
        self
    }

    pub(crate) fn symlink(self, name: &str, target: &str) -> Self {
        self.link_entry(tar::EntryType::Symlink, name, target)
    }

    pub(crate) fn hardlink(self, name: &str, target: &str) -> Self {
        self.link_entry(tar::EntryType::Link, name, target)
    }

    pub(crate) fn device(
        mut self,
        name: &str,
        kind: tar::EntryType,
        major: u32,
        minor: u32,
    ) -> Self {
        let mut h = Self::header(kind, 0o620);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.raw(h, name, b"");
        self
    }

    pub(crate) fn pax_file(mut self, name: &str, pax: &[(&str, &[u8])], data: &[u8]) -> Self {
        self.b
            .append_pax_extensions(pax.iter().map(|(k, v)| (*k, *v)))
            .unwrap();
        self.raw(Self::header(tar::EntryType::Regular, 0o644), name, data);
        self
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn unpack(tar: &[u8]) -> (tempfile::TempDir, Result<UnpackSummary, UnpackError>) {
    let dir = tempfile::tempdir().unwrap();
    let r = unpack_layer(tar, dir.path());
    (dir, r)
}

/// Unpacks (which must succeed), then links into no lower layer, which must fail.
fn rejected_below(tar: Vec<u8>, why: &str) {
    let (dir, r) = unpack(&tar);
    let links = r.unwrap().lower_links;
    match link_from_lowers(dir.path(), &[], &links) {
        Err(UnpackError::Invalid(msg)) => assert!(msg.contains(why), "{msg:?} lacks {why:?}"),
        other => panic!("expected rejection ({why}), got {other:?}"),
    }
}

#[test]
fn hard_links_into_lower_layers_copy_up_the_target() {
    use std::os::unix::fs::MetadataExt;
    let (base, r) = unpack(
        &TarBuilder::new()
            .dir("bin/", 0o711)
            .file("bin/busybox", 0o4755, b"the binary")
            .file("etc/gone", 0o644, b"x")
            .finish(),
    );
    r.unwrap();
    // A middle layer deletes etc/gone.
    let (mid, r) = unpack(&TarBuilder::new().file("etc/.wh.gone", 0o644, b"").finish());
    r.unwrap();
    let (top, r) = unpack(
        &TarBuilder::new()
            .hardlink("usr/sh", "bin/busybox")
            .file("other", 0o644, b"o")
            .finish(),
    );
    let links = r.unwrap().lower_links;
    assert_eq!(links, vec![("usr/sh".into(), "bin/busybox".into())]);
    let lowers = [mid.path().to_owned(), base.path().to_owned()];
    link_from_lowers(top.path(), &lowers, &links).unwrap();
    let up = fs::symlink_metadata(top.path().join("bin/busybox")).unwrap();
    let link = fs::symlink_metadata(top.path().join("usr/sh")).unwrap();
    assert_eq!(up.ino(), link.ino());
    assert_eq!(up.mode() & 0o7777, 0o4755);
    assert_eq!(fs::read(top.path().join("usr/sh")).unwrap(), b"the binary");
    // The copied-up parent keeps the lower directory's mode.
    let bin = fs::symlink_metadata(top.path().join("bin")).unwrap();
    assert_eq!(bin.mode() & 0o7777, 0o711);
    // A whited-out file is in no layer.
    let (top2, r) = unpack(&TarBuilder::new().hardlink("h", "etc/gone").finish());
    let links = r.unwrap().lower_links;
    let e = link_from_lowers(top2.path(), &lowers, &links).unwrap_err();
    assert!(e.to_string().contains("in no layer"), "{e}");
    // A later entry of the same name replaces the pending link.
    let (top3, r) = unpack(
        &TarBuilder::new()
            .hardlink("h", "bin/busybox")
            .file("h", 0o644, b"own")
            .finish(),
    );
    assert!(r.unwrap().lower_links.is_empty());
    assert_eq!(fs::read(top3.path().join("h")).unwrap(), b"own");
}

fn rejected(tar: Vec<u8>, why: &str) {
    let (dir, r) = unpack(&tar);
    match r {
        Err(UnpackError::Invalid(msg)) => assert!(msg.contains(why), "{msg:?} lacks {why:?}"),
        other => panic!("expected rejection ({why}), got {other:?}"),
    }
    drop(dir);
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[test]
fn unpacks_files_dirs_links_and_metadata() {
    let tar = TarBuilder::new()
        .dir("./", 0o755)
        .dir("./etc/", 0o750)
        .file_owned(
            "./etc/passwd",
            0o644,
            1000,
            2000,
            1_500_000_000,
            b"root:x:0:0\n",
        )
        .file("bin/su", 0o4755, b"#!suid")
        .symlink("bin/sh", "/bin/busybox")
        .symlink("usr/lib/rel", "../../etc/passwd")
        .hardlink("bin/su2", "bin/su")
        .device("dev/null", tar::EntryType::Char, 1, 3)
        .device("dev/fifo", tar::EntryType::Fifo, 0, 0)
        .file("deep/a/b/c", 0o600, b"implicit parents")
        .finish();
    let (dir, r) = unpack(&tar);
    let s = r.unwrap();
    assert_eq!(s.diff_id, sha(&tar));
    assert_eq!(s.entries, 10);
    let root = dir.path();
    assert_eq!(fs::read(root.join("etc/passwd")).unwrap(), b"root:x:0:0\n");
    let m = fs::symlink_metadata(root.join("etc/passwd")).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777, m.mtime()),
        (1000, 2000, 0o644, 1_500_000_000)
    );
    let m = fs::metadata(root.join("etc")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.mtime()), (0o750, 1_600_000_000));
    let su = fs::metadata(root.join("bin/su")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(su.nlink(), 2);
    assert_eq!(fs::metadata(root.join("bin/su2")).unwrap().ino(), su.ino());
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        fs::read_link(root.join("usr/lib/rel")).unwrap(),
        Path::new("../../etc/passwd")
    );
    let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert!(
        fs::symlink_metadata(root.join("dev/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(
        fs::read(root.join("deep/a/b/c")).unwrap(),
        b"implicit parents"
    );
    assert_eq!(
        fs::metadata(root.join("deep/a")).unwrap().mode() & 0o7777,
        0o755
    );
}

#[test]
fn decompresses_gzip_and_zstd() {
    let tar = TarBuilder::new().file("a", 0o644, b"hello").finish();
    for blob in [
        gzip(&tar),
        zstd::encode_all(&tar[..], 3).unwrap(),
        tar.clone(),
    ] {
        let (dir, r) = unpack(&blob);
        assert_eq!(r.unwrap().diff_id, sha(&tar));
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"hello");
    }
}

/// Larger than the pieces passed between the two threads, with entries after the bulk.
fn big_tar() -> Vec<u8> {
    let bulk: Vec<u8> = (0..3 * CHUNK as u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut t = TarBuilder::new()
        .dir("bin/", 0o755)
        .file("bin/big", 0o755, &bulk);
    for i in 0..50 {
        t = t.symlink(&format!("bin/l{i}"), "big");
    }
    t.finish()
}

#[test]
fn streams_larger_than_a_piece_unpack_whole() {
    let tar = big_tar();
    let (dir, r) = unpack(&gzip(&tar));
    let s = r.unwrap();
    assert_eq!(s.diff_id, sha(&tar));
    assert_eq!(s.entries, 52);
    assert_eq!(
        fs::metadata(dir.path().join("bin/big")).unwrap().len(),
        3 * CHUNK as u64
    );
    assert_eq!(
        fs::read_link(dir.path().join("bin/l49")).unwrap(),
        Path::new("big")
    );
}

#[test]
fn a_truncated_stream_is_a_read_error() {
    let gz = gzip(&big_tar());
    let (_dir, r) = unpack(&gz[..gz.len() / 2]);
    assert!(matches!(r, Err(UnpackError::Read(_))), "{r:?}");
}

#[test]
fn a_rejected_entry_stops_the_decompressor() {
    // The escape comes first; megabytes of stream follow it.
    let mut t = TarBuilder::new().symlink("evil", "../../outside");
    let bulk = vec![1u8; 4 * CHUNK * CHUNKS_IN_FLIGHT];
    t = t.file("after", 0o644, &bulk);
    let (_dir, r) = unpack(&gzip(&t.finish()));
    assert!(matches!(r, Err(UnpackError::Invalid(_))), "{r:?}");
}

#[test]
fn xattrs_and_pax_overrides() {
    let tar = TarBuilder::new()
        .pax_file(
            "f",
            &[
                ("SCHILY.xattr.user.color", b"blue"),
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
                ("uid", b"3000000"),
                ("mtime", b"1234567890.5"),
            ],
            b"x",
        )
        .finish();
    let (dir, r) = unpack(&tar);
    r.unwrap();
    let f = dir.path().join("f");
    assert_eq!(
        get_xattr(&f, "user.color").unwrap().as_deref(),
        Some(&b"blue"[..])
    );
    assert_eq!(
        get_xattr(&f, "trusted.overlay.opaque").unwrap(),
        None,
        "overlay xattrs filtered"
    );
    let m = fs::metadata(&f).unwrap();
    assert_eq!(m.uid(), 3_000_000);
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_234_567_890, 500_000_000));
}

#[test]
fn whiteouts_become_overlay_form() {
    let tar = TarBuilder::new()
        .dir("etc/", 0o755)
        .file("etc/.wh.hosts", 0o644, b"")
        .dir("var/cache/", 0o755)
        .file("var/cache/.wh..wh..opq", 0o644, b"")
        .file("var/cache/new", 0o644, b"new")
        .file("opt/.wh..wh.plnk", 0o644, b"")
        .finish();
    let (dir, r) = unpack(&tar);
    r.unwrap();
    let wh = fs::symlink_metadata(dir.path().join("etc/hosts")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!dir.path().join("etc/.wh.hosts").exists());
    let cache = dir.path().join("var/cache");
    assert_eq!(
        get_xattr(&cache, OVERLAY_OPAQUE_XATTR).unwrap().as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read(cache.join("new")).unwrap(), b"new");
    assert!(!cache.join(".wh..wh..opq").exists());
    assert_eq!(fs::read_dir(dir.path().join("opt")).unwrap().count(), 0);
}

#[test]
fn later_entries_replace_earlier_ones_without_following() {
    let tar = TarBuilder::new()
        .symlink("x", "/etc/shadow")
        .file("x", 0o644, b"replaced")
        .dir("d/", 0o755)
        .file("d/f", 0o644, b"f")
        .file("d", 0o644, b"now a file")
        .finish();
    let (dir, r) = unpack(&tar);
    r.unwrap();
    assert_eq!(fs::read(dir.path().join("x")).unwrap(), b"replaced");
    assert_eq!(fs::read(dir.path().join("d")).unwrap(), b"now a file");
}

#[test]
fn rejects_every_escape() {
    let t = TarBuilder::new;
    for (tar, why) in [
        (t().file("../evil", 0o644, b"x"), "'..'"),
        (t().file("a/../../evil", 0o644, b"x"), "'..'"),
        (t().file("/etc/evil", 0o644, b"x"), "absolute path"),
        (
            t().symlink("link", "/tmp").file("link/evil", 0o644, b"x"),
            "parent directory is a symlink",
        ),
        (
            t().symlink("link", ".").file("link/evil", 0o644, b"x"),
            "parent directory is a symlink",
        ),
        (t().symlink("a/link", "../../etc"), "points outside"),
        (t().hardlink("h", "../../etc/passwd"), "'..'"),
        (t().hardlink("h", "/etc/passwd"), "absolute path"),
        (t().file("a/.wh...", 0o644, b""), "invalid name"),
        (t().file("a/.wh..", 0o644, b""), "invalid name"),
    ] {
        rejected(tar.finish(), why);
    }
    // Targets not in the layer are looked for in the lower layers (none here).
    rejected_below(t().hardlink("h", "missing").finish(), "in no layer");
    rejected_below(
        t().symlink("l", "/etc").hardlink("h", "l/passwd").finish(),
        "not a directory",
    );
    rejected(
        b"this is not a tar archive at all, just some bytes".repeat(20),
        "malformed",
    );
}

#[test]
fn outside_stays_untouched() {
    // A victim outside the snapshot, reachable only by following the symlink.
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    fs::write(&victim, b"safe").unwrap();
    let tar = TarBuilder::new()
        .symlink("link", outside.path().to_str().unwrap())
        .file("link/victim", 0o644, b"pwned")
        .finish();
    let (_dir, r) = unpack(&tar);
    assert!(r.is_err());
    assert_eq!(fs::read(&victim).unwrap(), b"safe");
}

#[test]
fn symlink_target_depth() {
    assert!(check_symlink_target(2, b"../../x").is_ok());
    assert!(check_symlink_target(2, b"../../../x").is_err());
    assert!(check_symlink_target(0, b"a/../../x").is_err());
    assert!(check_symlink_target(0, b"/anything/../../x").is_ok());
    assert!(check_symlink_target(1, b"./.././x").is_ok());
}

fn unpack_limited(
    blob: &[u8],
    limits: LayerLimits,
) -> (tempfile::TempDir, Result<UnpackSummary, UnpackError>) {
    let dir = tempfile::tempdir().unwrap();
    let r = unpack_layer_with(blob, dir.path(), &limits);
    (dir, r)
}

#[test]
fn a_gzip_bomb_stops_at_the_byte_budget() {
    // 64 MiB of zeros gzip to about 64 KiB.
    let zeros = vec![0u8; 64 << 20];
    let bomb = gzip(&TarBuilder::new().file("zeros", 0o644, &zeros).finish());
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let limits = LayerLimits {
        max_bytes: 4 << 20,
        ..LayerLimits::default()
    };
    let (dir, r) = unpack_limited(&bomb, limits);
    match r {
        Err(UnpackError::Invalid(m)) => assert!(
            m.contains("layer budget of 4194304 bytes") && m.contains("max_layer_bytes"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    let written = fs::metadata(dir.path().join("zeros")).map_or(0, |m| m.len());
    assert!(written <= 4 << 20, "{written}");
    // The same layer within a budget that fits it unpacks.
    let (_dir, r) = unpack_limited(
        &bomb,
        LayerLimits {
            max_bytes: 65 << 20,
            ..LayerLimits::default()
        },
    );
    r.unwrap();
}

#[test]
fn the_entry_budget_is_enforced() {
    let mut t = TarBuilder::new();
    for i in 0..5 {
        t = t.file(&format!("f{i}"), 0o644, b"");
    }
    let tar = t.finish();
    let limits = |n| LayerLimits {
        max_entries: n,
        ..LayerLimits::default()
    };
    let (_d, r) = unpack_limited(&tar, limits(4));
    match r {
        Err(UnpackError::Invalid(m)) => {
            assert!(
                m.contains("layer budget of 4 (image.max_layer_entries)"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    let (_d, r) = unpack_limited(&tar, limits(5));
    assert_eq!(r.unwrap().entries, 5);
}

#[test]
fn cve_2025_62518_a_pax_size_hides_no_entry() {
    // The nested archive a reader using the ustar size (0) would see as entries.
    let (tar, nested) = smuggling_archive();
    let (dir, r) = unpack(&tar);
    assert_eq!(r.unwrap().entries, 2);
    assert_eq!(fs::read(dir.path().join("outer")).unwrap(), nested);
    assert!(dir.path().join("after").exists());
    assert!(!dir.path().join("etc").exists(), "no smuggled entry");
}

#[test]
fn a_pax_header_claiming_a_gibibyte_is_refused_unread() {
    let tar = [
        header(b"PaxHeaders/x", b'x', 1 << 30).to_vec(),
        vec![b'9'; 4096],
    ]
    .concat();
    let (_d, r) = unpack(&gzip(&tar));
    match r {
        Err(UnpackError::Invalid(m)) => assert!(
            m.contains("PAX extended header of 1073741824 bytes")
                && m.contains("limit of 1048576 bytes"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn disk_usage_counts_hardlinks_once() {
    let tar = TarBuilder::new()
        .file("a", 0o644, &[1u8; 10000])
        .hardlink("b", "a")
        .finish();
    let (dir, r) = unpack(&tar);
    r.unwrap();
    let (bytes, inodes) = disk_usage(dir.path()).unwrap();
    assert_eq!(inodes, 2, "the root and one file");
    assert!(bytes >= 10000, "{bytes}");
}
