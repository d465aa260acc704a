//! Image references, normalised as containerd and kubelet do
//! (`busybox` -> `docker.io/library/busybox:latest`).
//!
//! Why not `oci_spec::distribution::Reference`: it shares the docker.io default, the
//! `library/` prefix, the `latest` tag, `host:port` and `localhost` registries and the
//! refusal of upper-case repositories, but it differs where Berth relies on Docker's and
//! containerd's behaviour (`ours_and_oci_specs_parser_side_by_side` runs both parsers and
//! shows each difference):
//! - a reference with a tag and a digest keeps both there; containerd (and Berth) keep the
//!   digest only, which names the content the tag would;
//! - bracketed IPv6 registry hosts (`[::1]:5000/app`), which Docker's grammar accepts, are
//!   refused there;
//! - an upper-case first component (`Foo/bar`) is a registry host for Docker; there it
//!   becomes the repository `docker.io/Foo/bar`, which no registry can hold;
//! - a 64-character hexadecimal string, an image id to Docker and kubelet, is read there as
//!   a `docker.io/library/` repository;
//! - digests: there upper-case hex and `sha384`/`sha512` pass; Berth's content store takes
//!   lower-case `sha256` only, so it refuses them here, while parsing;
//! - tags: its `\w` is Unicode, so `busybox:été` passes there; Docker's is ASCII;
//! - the 255-character limit: Docker applies it to the normalised name (`docker.io/...`),
//!   that parser to the repository path only;
//! - registry hosts: it takes `ho_st.io` or a port of any length; Berth refuses a host that
//!   is not a host name and a port longer than five digits (Docker accepts the long port).

use std::fmt;

use crate::error::Error;

/// The default registry of unqualified names.
pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A normalised image reference: registry host, repository path, and a tag or a digest
/// (never both: a digest wins over a tag).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses and normalises `s`. Errors name the reason (`InvalidArgument` class).
    pub fn parse(s: &str) -> Result<Reference, Error> {
        let bad = |reason: &str| Error::InvalidReference {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(bad("empty reference"));
        }
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                "a 64-character hexadecimal string is an image id, not a reference",
            ));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                validate_digest(d).map_err(|r| bad(&r))?;
                (n, Some(d.to_owned()))
            }
            None => (s, None),
        };
        let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&name_tag[..i], Some(&name_tag[i + 1..]))
            }
            None => (name_tag, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|r| bad(&r))?;
        }
        if name.is_empty() {
            return Err(bad("empty repository name"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(bad("repository name longer than 255 characters"));
        }
        let (domain, path) = split_domain(name);
        validate_domain(domain).map_err(|r| bad(&r))?;
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("repository name must be lowercase"));
        }
        for component in path.split('/') {
            validate_component(component).map_err(|r| bad(&r))?;
        }
        let domain = if domain == LEGACY_DEFAULT_DOMAIN {
            DEFAULT_DOMAIN
        } else {
            domain
        };
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        // The limit holds for the normalised name too, as Docker's reference library checks:
        // a short name can grow past it with `docker.io/library/`.
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(bad("repository name longer than 255 characters"));
        }
        let tag = match (&digest, tag) {
            (Some(_), _) => None,
            (None, Some(t)) => Some(t.to_owned()),
            (None, None) => Some("latest".to_owned()),
        };
        Ok(Reference {
            domain: domain.to_owned(),
            path,
            tag,
            digest,
        })
    }

    /// Builds a digest reference to `digest` in the same repository.
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: Some(digest.to_owned()),
        }
    }

    /// The registry host (`docker.io`, `localhost:5000`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry (`library/busybox`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The repository name, `domain/path`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The tag, when the reference names one and no digest.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, when the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// What to ask the registry for: the digest, else the tag.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(d) = &self.digest {
            write!(f, "@{d}")
        } else if let Some(t) = &self.tag {
            write!(f, ":{t}")
        } else {
            Ok(())
        }
    }
}

/// Splits the registry host from the path as docker does: the first component is a host
/// only if it has a `.` or `:`, is `localhost`, or has upper-case letters.
fn split_domain(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DEFAULT_DOMAIN, name),
    }
}

fn validate_domain(domain: &str) -> Result<(), String> {
    let port = if let Some(rest) = domain.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or("unterminated IPv6 address in registry host")?;
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("invalid IPv6 address {ip:?} in registry host"));
        }
        match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("garbage after IPv6 registry host")?,
            ),
        }
    } else {
        let (host, port) = match domain.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (domain, None),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return Err(format!("invalid registry host {host:?}"));
        }
        port
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("invalid port {port:?} in registry host"));
    }
    Ok(())
}

/// A path component: `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn validate_component(c: &str) -> Result<(), String> {
    let err = || Err(format!("invalid repository path component {c:?}"));
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return err();
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return err();
        }
    }
    Ok(())
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid tag {tag:?}"))
    }
}

/// Checks `d` is `sha256:<64 lower-case hex>`, the only digest algorithm registries use.
pub fn validate_digest(d: &str) -> Result<(), String> {
    let (alg, hex) = d
        .split_once(':')
        .ok_or_else(|| format!("invalid digest {d:?}"))?;
    if alg != "sha256" {
        return Err(format!("unsupported digest algorithm {alg:?} in {d:?}"));
    }
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("invalid sha256 digest {d:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Class, Classify};

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digest_wins_over_tag() {
        let r = Reference::parse(&format!("busybox:1.28@{D}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(D));
        assert_eq!(r.object(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        assert_eq!(r.name(), "docker.io/library/busybox");
    }

    #[test]
    fn parts() {
        let r = Reference::parse("localhost:5000/team/app:v2").unwrap();
        assert_eq!(r.domain(), "localhost:5000");
        assert_eq!(r.path(), "team/app");
        assert_eq!(r.tag(), Some("v2"));
        assert_eq!(
            r.with_digest(D).to_string(),
            format!("localhost:5000/team/app@{D}")
        );
    }

    #[test]
    fn rejects_invalid_with_reason() {
        for (s, why) in [
            ("", "empty"),
            ("Busybox", "lowercase"),
            ("docker.io/Library/busybox", "lowercase"),
            ("busybox:", "invalid tag"),
            ("busybox:-x", "invalid tag"),
            ("busybox@sha256:abc", "invalid sha256"),
            ("busybox@md5:0123", "unsupported digest algorithm"),
            ("busybox@", "invalid digest"),
            ("a//b", "component"),
            ("-a", "component"),
            ("a-", "component"),
            ("a..b", "component"),
            ("a___b", "component"),
            ("host:99x/app", "port"),
            ("ho_st.io/app", "registry host"),
            (
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "image id",
            ),
        ] {
            let e = Reference::parse(s).unwrap_err();
            assert_eq!(e.class(), Class::InvalidArgument, "{s}");
            assert!(e.to_string().contains(why), "{s:?}: {e}");
        }
        let long = format!("a/{}", "b".repeat(300));
        assert!(Reference::parse(&long).is_err());
        // Short as typed, too long once `docker.io/library/` is added (found by fuzzing).
        let grows = "b".repeat(250);
        assert!(grows.len() <= 255 && Reference::parse(&grows).is_err());
        let long_tag = format!("a:{}", "b".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
    }

    /// How a reference reads after normalisation, or `None` where the parser refuses it.
    fn ours(s: &str) -> Option<String> {
        Reference::parse(s).ok().map(|r| r.to_string())
    }

    fn oci_specs(s: &str) -> Option<String> {
        s.parse::<oci_spec::distribution::Reference>()
            .ok()
            .map(|r| r.whole())
    }

    /// Inputs both parsers read alike (`None`: both refuse).
    const AGREE: &[(&str, Option<&str>)] = &[
        ("busybox", Some("docker.io/library/busybox:latest")),
        ("busybox:1.28", Some("docker.io/library/busybox:1.28")),
        ("library/busybox", Some("docker.io/library/busybox:latest")),
        (
            "docker.io/busybox",
            Some("docker.io/library/busybox:latest"),
        ),
        (
            "index.docker.io/library/busybox",
            Some("docker.io/library/busybox:latest"),
        ),
        ("user/app:v1", Some("docker.io/user/app:v1")),
        (
            "registry.k8s.io/e2e/busybox:1.29-2",
            Some("registry.k8s.io/e2e/busybox:1.29-2"),
        ),
        ("localhost/app", Some("localhost/app:latest")),
        ("localhost:5000/a/b/c", Some("localhost:5000/a/b/c:latest")),
        ("127.0.0.1:5000/app:x", Some("127.0.0.1:5000/app:x")),
        ("Host.io/app", Some("Host.io/app:latest")),
        ("test.com:5000", Some("docker.io/library/test.com:5000")),
        (
            "a__b/c-----d/e.f_g",
            Some("docker.io/a__b/c-----d/e.f_g:latest"),
        ),
        ("Busybox", None),
        ("docker.io/Library/busybox", None),
        ("busybox:", None),
        ("busybox:-x", None),
        ("busybox@md5:0123", None),
        ("busybox@sha256:abc", None),
        ("a//b", None),
        ("-a", None),
        ("a..b", None),
        ("a___b", None),
        ("host:99x/app", None),
    ];

    /// Inputs they read differently: (input, ours, oci-spec's).
    const DIFFER: &[(&str, Option<&str>, Option<&str>)] = &[
        ("[::1]:5000/app", Some("[::1]:5000/app:latest"), None),
        (
            "Foo/bar",
            Some("Foo/bar:latest"),
            Some("docker.io/Foo/bar:latest"),
        ),
        (
            "busybox:\u{e9}t\u{e9}",
            None,
            Some("docker.io/library/busybox:\u{e9}t\u{e9}"),
        ),
        ("host:999999/app", None, Some("host:999999/app:latest")),
        ("ho_st.io/app", None, Some("ho_st.io/app:latest")),
    ];

    /// Both parsers over the same inputs: ours normalises as containerd does, oci-spec's
    /// agrees on most, and each place it differs is shown (the module doc lists the
    /// differences and why ours is kept).
    #[test]
    fn ours_and_oci_specs_parser_side_by_side() {
        let check = |input: &str, want_ours: Option<&str>, want_oci: Option<&str>| {
            assert_eq!(ours(input).as_deref(), want_ours, "ours: {input:?}");
            assert_eq!(oci_specs(input).as_deref(), want_oci, "oci-spec: {input:?}");
        };
        for (input, both) in AGREE {
            check(input, *both, *both);
        }
        for (input, want_ours, want_oci) in DIFFER {
            check(input, *want_ours, *want_oci);
        }
        let digested = format!("docker.io/library/busybox@{D}");
        check(&format!("busybox@{D}"), Some(&digested), Some(&digested));
        check(&format!("busybox:{}", "t".repeat(129)), None, None);
        check(&format!("a/{}", "b".repeat(300)), None, None);
        check(&"b".repeat(250), None, None);
        // Ours keeps the digest alone, as containerd does; oci-spec keeps the tag too.
        let both = format!("docker.io/library/busybox:1.28@{D}");
        check(&format!("busybox:1.28@{D}"), Some(&digested), Some(&both));
        // An image id, which ours refuses; a repository to oci-spec.
        let id = "0123456789abcdef".repeat(4);
        check(&id, None, Some(&format!("docker.io/library/{id}:latest")));
        // Digests Berth's content store does not take: upper-case hex, sha512.
        for digest in [
            format!("sha256:{}", D[7..].to_ascii_uppercase()),
            format!("sha512:{}", "ab".repeat(64)),
        ] {
            let theirs = format!("docker.io/library/busybox@{digest}");
            check(&format!("busybox@{digest}"), None, Some(&theirs));
        }
        // Short enough as a path, too long once `docker.io/` is added.
        let long = format!("a/{}", "b".repeat(246));
        check(&long, None, Some(&format!("docker.io/{long}:latest")));
    }
}
