//! Tests of `tarstream`.

use super::*;

/// A raw header block: `name`, typeflag, size field as given (octal), ustar magic.
pub(crate) fn header(name: &[u8], typeflag: u8, size: u64) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..name.len()].copy_from_slice(name);
    b[100..107].copy_from_slice(b"0000644");
    b[108..115].copy_from_slice(b"0000000");
    b[116..123].copy_from_slice(b"0000000");
    b[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    b[136..147].copy_from_slice(b"13767620000");
    b[156] = typeflag;
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    seal(&mut b);
    b
}

/// Writes the checksum of a block.
pub(crate) fn seal(b: &mut [u8; 512]) {
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|c| u32::from(*c)).sum();
    b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = [key.as_bytes(), b"=", value, b"\n"].concat();
    let mut len = body.len() + 2;
    while format!("{len} ").len() + body.len() != len {
        len += 1;
    }
    [format!("{len} ").as_bytes(), &body].concat()
}

/// A PAX extended header block (named `p`) carrying `records`, padded.
fn pax_header(records: &[u8]) -> Vec<u8> {
    [
        header(b"p", b'x', records.len() as u64).to_vec(),
        padded(records),
    ]
    .concat()
}

/// `headers`, then an empty file entry `f` they apply to.
fn before_file(headers: Vec<u8>) -> Vec<u8> {
    [headers, header(b"f", b'0', 0).to_vec()].concat()
}

fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(512) * 512, 0);
    v
}

fn read_all(tar: &[u8]) -> Result<Vec<(Entry, Vec<u8>)>, TarError> {
    let mut r = TarReader::new(tar);
    let mut out = Vec::new();
    while let Some(e) = r.next_entry()? {
        let mut data = Vec::new();
        r.data().read_to_end(&mut data).map_err(TarError::Read)?;
        out.push((e, data));
    }
    Ok(out)
}

/// CVE-2025-62518's archive: the header of `outer` says 0 bytes, its PAX record the
/// length of the nested archive that follows (a header for `etc/berth-smuggled` and its
/// data), then comes `after`. The archive and its nested part.
pub(crate) fn smuggling_archive() -> (Vec<u8>, Vec<u8>) {
    let nested = [
        header(b"etc/berth-smuggled", b'0', 5).to_vec(),
        padded(b"owned"),
    ]
    .concat();
    let record = pax_record("size", nested.len().to_string().as_bytes());
    let tar = [
        pax_header(&record),
        header(b"outer", b'0', 0).to_vec(),
        nested.clone(),
        header(b"after", b'0', 0).to_vec(),
        vec![0; 1024],
    ]
    .concat();
    (tar, nested)
}

#[test]
fn pax_size_overrides_the_header_size() {
    // CVE-2025-62518: the header says 0, PAX says N; the N bytes hold a nested header.
    let (tar, inner) = smuggling_archive();
    let entries = read_all(&tar).unwrap();
    let names: Vec<_> = entries.iter().map(|(e, _)| e.name.clone()).collect();
    assert_eq!(names, [b"outer".to_vec(), b"after".to_vec()]);
    assert_eq!(entries[0].1, inner, "the nested header is file content");
}

#[test]
fn header_only_types_have_no_data() {
    // A directory claiming 512 bytes: Go reads the next header right after it.
    let tar = [
        header(b"d/", b'5', 512).to_vec(),
        header(b"f", b'0', 1).to_vec(),
        padded(b"x"),
        vec![0; 1024],
    ]
    .concat();
    let entries = read_all(&tar).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].0.name, b"f");
    assert_eq!(entries[1].1, b"x");
}

#[test]
fn oversized_special_headers_are_refused_before_reading() {
    for (flag, what) in [
        (b'x', "PAX extended"),
        (b'L', "GNU long name"),
        (b'K', "GNU long link"),
        (b'g', "PAX global"),
    ] {
        // Claims 1 GiB; the stream holds none of it.
        let tar = header(b"big", flag, 1 << 30).to_vec();
        match read_all(&tar) {
            Err(TarError::Invalid(m)) => {
                assert!(m.contains(what) && m.contains("1048576"), "{m}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // Exactly at the limit is fine.
    let name = vec![b'a'; MAX_SPECIAL_HEADER as usize];
    let tar = [
        header(b"././@LongLink", b'L', name.len() as u64).to_vec(),
        padded(&name),
        header(b"short", b'0', 0).to_vec(),
    ]
    .concat();
    assert_eq!(read_all(&tar).unwrap()[0].0.name, name);
}

#[test]
fn pax_records_merge_as_go_does() {
    let pax = [
        pax_record("path", b"first"),
        pax_record("path", b"second"),
        pax_record("uid", b"3000000"),
        pax_record("gid", b""),
        pax_record("mtime", b"-1.5"),
        pax_record("SCHILY.xattr.user.a", b"1"),
        pax_record("SCHILY.xattr.user.empty", b""),
    ]
    .concat();
    let mut h = header(b"ustar-name", b'0', 0);
    h[116..123].copy_from_slice(b"0000007");
    seal(&mut h);
    let tar = [pax_header(&pax), h.to_vec()].concat();
    let e = read_all(&tar).unwrap().remove(0).0;
    assert_eq!(e.name, b"second", "the last record wins");
    assert_eq!(
        (e.uid, e.gid),
        (3_000_000, 7),
        "an empty value keeps the header's"
    );
    assert_eq!(e.mtime, (-2, 500_000_000));
    assert_eq!(e.xattrs.len(), 1);
    // A GNU long name wins over PAX path.
    let tar = [
        pax_header(&pax),
        header(b"././@LongLink", b'L', 5).to_vec(),
        padded(b"long\0"),
        header(b"x", b'0', 0).to_vec(),
    ]
    .concat();
    assert_eq!(read_all(&tar).unwrap()[0].0.name, b"long");
}

#[test]
fn refuses_what_readers_disagree_on() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "bad PAX size",
            before_file(pax_header(&pax_record("size", b"12x"))),
            "bad numeric PAX record size",
        ),
        (
            "malformed record",
            before_file(pax_header(b"99 a=b")),
            "malformed PAX record",
        ),
        (
            "two PAX headers",
            {
                let p = pax_record("path", b"a");
                [
                    pax_header(&p),
                    pax_header(&p),
                    header(b"f", b'0', 0).to_vec(),
                ]
                .concat()
            },
            "two PAX extended headers",
        ),
        (
            "data after the end marker",
            [vec![0; 512], header(b"hidden", b'0', 0).to_vec()].concat(),
            "after the end-of-archive",
        ),
        (
            "sparse",
            [header(b"s", b'S', 0).to_vec()].concat(),
            "sparse",
        ),
        (
            "PAX sparse",
            before_file(pax_header(&pax_record("GNU.sparse.map", b"0,1"))),
            "sparse",
        ),
        (
            "dangling extension header",
            pax_header(&pax_record("path", b"a")),
            "at the end of the archive",
        ),
        (
            "bad checksum",
            {
                let mut h = header(b"f", b'0', 0);
                h[0] = b'g';
                h.to_vec()
            },
            "checksum",
        ),
    ];
    for (what, tar, why) in cases {
        match read_all(&tar) {
            Err(TarError::Invalid(m)) => assert!(m.contains(why), "{what}: {m}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn typeflag_nul_with_a_slash_is_a_directory_and_end_is_tolerant() {
    let tar = [header(b"d/", 0, 0).to_vec(), header(b"f", 0, 0).to_vec()].concat();
    // No end marker at all, then one zero block only: both end cleanly.
    for t in [tar.clone(), [tar.clone(), vec![0; 512]].concat()] {
        let kinds: Vec<_> = read_all(&t).unwrap().iter().map(|(e, _)| e.kind).collect();
        assert_eq!(kinds, [tar::EntryType::Directory, tar::EntryType::Regular]);
    }
    // A truncated data section is a read error.
    let t = [header(b"f", b'0', 100).to_vec(), vec![1; 10]].concat();
    assert!(matches!(read_all(&t), Err(TarError::Read(_))));
}

#[test]
fn numeric_fields() {
    assert_eq!(numeric(b"0000644 ", "m").unwrap(), 0o644);
    assert_eq!(numeric(b"  644\0\0", "m").unwrap(), 0o644);
    assert_eq!(numeric(b"\0\0\0\0", "m").unwrap(), 0);
    assert!(numeric(b"0000648", "m").is_err());
    assert_eq!(
        numeric(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], "size").unwrap(),
        1 << 32
    );
    assert_eq!(numeric(&[0xff, 0xff, 0xff, 0xfe], "x").unwrap(), -2);
    assert!(numeric(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "size").is_err());
}

#[test]
fn reads_what_the_tar_crate_writes() {
    let mut b = tar::Builder::new(Vec::new());
    let long = "d/".repeat(80) + "file";
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o4755);
    b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
    b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "s", "target").unwrap();
    let tar = b.into_inner().unwrap();
    let entries = read_all(&tar).unwrap();
    assert_eq!(entries[0].0.name, long.as_bytes());
    assert_eq!(entries[0].0.mode, 0o4755);
    assert_eq!(entries[0].1, b"abc");
    assert_eq!(entries[1].0.kind, tar::EntryType::Symlink);
    assert_eq!(entries[1].0.link, b"target");
    assert_eq!(entries[1].0.xattrs[&b"user.k".to_vec()], b"v");
}
