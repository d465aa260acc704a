//! Tests of `registry`.

use super::auth::{Challenge, parse_challenges, parse_params};
use super::*;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderValue, WWW_AUTHENTICATE};

#[test]
fn endpoint_schemes() {
    let e = Endpoint::parse("127.0.0.1:5000").unwrap();
    assert_eq!(e.to_string(), "http://127.0.0.1:5000");
    assert_eq!(e.host, "127.0.0.1:5000");
    assert_eq!(
        Endpoint::parse("localhost").unwrap().to_string(),
        "http://localhost"
    );
    assert_eq!(
        Endpoint::parse("[::1]:5000").unwrap().to_string(),
        "http://[::1]:5000"
    );
    assert_eq!(
        Endpoint::parse("registry.k8s.io").unwrap().to_string(),
        "https://registry.k8s.io"
    );
    let e = Endpoint::parse("http://mirror.example:8080/v2/").unwrap();
    assert_eq!(
        e.url("library/busybox", "manifests/latest"),
        "http://mirror.example:8080/v2/library/busybox/manifests/latest"
    );
    let e = Endpoint::parse("https://mirror.example/prefix").unwrap();
    assert_eq!(
        e.url("a/b", "blobs/x"),
        "https://mirror.example/prefix/v2/a/b/blobs/x"
    );
    assert!(Endpoint::parse("ftp://x").is_err());
}

#[test]
fn mirrors_then_origin() {
    let mut config = RegistryConfig::default();
    config.mirrors.insert(
        "docker.io".into(),
        crate::config::MirrorConfig {
            endpoints: vec!["http://127.0.0.1:1".into(), "127.0.0.1:5000".into()],
        },
    );
    let c = RegistryClient::new(config, RetryPolicy::default());
    let r = Reference::parse("busybox").unwrap();
    let s = c.source(&r, None).unwrap();
    let eps: Vec<String> = s.endpoints.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        eps,
        [
            "http://127.0.0.1:1",
            "http://127.0.0.1:5000",
            "https://registry-1.docker.io"
        ]
    );
    let r = Reference::parse("quay.io/a/b").unwrap();
    let s = c.source(&r, None).unwrap();
    assert_eq!(s.endpoints.len(), 1);
    assert_eq!(s.endpoints[0].to_string(), "https://quay.io");
}

#[test]
fn challenges() {
    let mut h = HeaderMap::new();
    h.append(
        WWW_AUTHENTICATE,
        HeaderValue::from_static(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        ),
    );
    assert_eq!(
        parse_challenges(&h),
        Some(Challenge::Bearer {
            realm: "https://auth.docker.io/token".into(),
            service: Some("registry.docker.io".into()),
            scope: Some("repository:library/busybox:pull".into()),
        })
    );
    let mut h = HeaderMap::new();
    h.append(
        WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Basic realm="Registry Realm""#),
    );
    assert_eq!(parse_challenges(&h), Some(Challenge::Basic));
    let p = parse_params(r#"realm="a\"b", service=svc , scope="x,y""#);
    assert_eq!(p["realm"], "a\"b");
    assert_eq!(p["service"], "svc");
    assert_eq!(p["scope"], "x,y");
}

fn client_with(configs: &[(&str, HostConfig)], mirrors: &[(&str, &[&str])]) -> RegistryClient {
    let mut config = RegistryConfig::default();
    for (h, c) in configs {
        config.configs.insert((*h).into(), c.clone());
    }
    for (h, eps) in mirrors {
        config.mirrors.insert(
            (*h).into(),
            crate::config::MirrorConfig {
                endpoints: eps.iter().map(|e| (*e).into()).collect(),
            },
        );
    }
    RegistryClient::new(config, RetryPolicy::default())
}

/// A client for the origin at port 5000 with its mirror at port 6000, and `configs`.
fn with_mirror(configs: &[(&str, HostConfig)]) -> RegistryClient {
    client_with(configs, &[("127.0.0.1:5000", &["http://127.0.0.1:6000"])])
}

fn user(name: &str) -> HostConfig {
    HostConfig {
        username: Some(name.into()),
        password: Some("secret".into()),
        ..Default::default()
    }
}

/// Who gets which user name, endpoint by endpoint.
fn sent(c: &RegistryClient, image: &str, creds: Option<Credentials>) -> Vec<(String, String)> {
    let src = c.source(&Reference::parse(image).unwrap(), creds).unwrap();
    src.endpoints
        .iter()
        .map(|ep| {
            let u = c
                .creds_for(&src, ep)
                .map(|c| c.username)
                .unwrap_or_default();
            (ep.host.clone(), u)
        })
        .collect()
}

/// What the mirror at port 6000, then the origin at port 5000, were sent.
fn mirror_then_origin(mirror: &str, origin: &str) -> [(String, String); 2] {
    [
        pair("127.0.0.1:6000", mirror),
        pair("127.0.0.1:5000", origin),
    ]
}

fn pair(h: &str, u: &str) -> (String, String) {
    (h.into(), u.into())
}

#[test]
fn credentials_go_only_to_the_host_they_were_given_for() {
    let kubelet = |server: &str| Credentials {
        username: "kubelet".into(),
        password: "pw".into(),
        server_address: server.into(),
        ..Default::default()
    };
    let c = with_mirror(&[("127.0.0.1:5000", user("origin-user"))]);
    let image = "127.0.0.1:5000/app:1";
    // Kubelet's credentials, with or without server_address: the origin only.
    for server in ["", "127.0.0.1:5000", "http://127.0.0.1:5000/v2/"] {
        assert_eq!(
            sent(&c, image, Some(kubelet(server))),
            mirror_then_origin("", "kubelet"),
            "server_address {server:?}"
        );
    }
    // Configured credentials of the origin: the origin only.
    assert_eq!(sent(&c, image, None), mirror_then_origin("", "origin-user"));
    // Credentials given for the mirror's own host go to it.
    assert_eq!(
        sent(&c, image, Some(kubelet("127.0.0.1:6000"))),
        mirror_then_origin("kubelet", "origin-user")
    );
    // A mirror with its own configured credentials gets those.
    let c = with_mirror(&[
        ("127.0.0.1:5000", user("origin-user")),
        ("127.0.0.1:6000", user("mirror-user")),
    ]);
    assert_eq!(
        sent(&c, image, Some(kubelet(""))),
        mirror_then_origin("mirror-user", "kubelet")
    );
    // A bare host's entry is not another port's credentials.
    let c = with_mirror(&[("127.0.0.1", user("bare"))]);
    assert_eq!(sent(&c, image, None), mirror_then_origin("", ""));
    // The operator may let a mirror have them.
    let c = with_mirror(&[
        ("127.0.0.1:5000", user("origin-user")),
        (
            "127.0.0.1:6000",
            HostConfig {
                forward_credentials: true,
                ..Default::default()
            },
        ),
    ]);
    assert_eq!(
        sent(&c, image, Some(kubelet(""))),
        mirror_then_origin("kubelet", "kubelet")
    );
    assert_eq!(
        sent(&c, image, None),
        mirror_then_origin("origin-user", "origin-user")
    );
    // Kubelet's credentials for another registry go nowhere.
    assert_eq!(
        sent(&c, image, Some(kubelet("quay.io"))),
        mirror_then_origin("origin-user", "origin-user")
    );
    // Docker Hub's names are one registry.
    let c = client_with(
        &[("docker.io", user("hub"))],
        &[("docker.io", &["http://127.0.0.1:6000"])],
    );
    assert_eq!(
        sent(&c, "busybox", Some(kubelet("https://index.docker.io/v1/"))),
        [
            pair("127.0.0.1:6000", ""),
            pair("registry-1.docker.io", "kubelet")
        ]
    );
    assert_eq!(
        sent(&c, "busybox", None),
        [
            pair("127.0.0.1:6000", ""),
            pair("registry-1.docker.io", "hub")
        ]
    );
}

#[test]
fn plain_http_token_realms_get_credentials_only_when_trusted() {
    let c = client_with(
        &[(
            "127.0.0.1:7000",
            HostConfig {
                insecure: true,
                ..Default::default()
            },
        )],
        &[],
    );
    let ep = Endpoint::parse("127.0.0.1:5000").unwrap();
    let ok = |realm: &str| c.realm_may_get_credentials(&Url::parse(realm).unwrap(), &ep);
    assert!(ok("https://auth.example/token"));
    assert!(ok("https://127.0.0.1:9000/token"));
    assert!(
        ok("http://127.0.0.1:5000/token"),
        "the endpoint's own origin"
    );
    assert!(!ok("http://127.0.0.1:5001/token"), "another loopback port");
    assert!(!ok("http://localhost:5000/token"), "another name");
    assert!(!ok("http://auth.example/token"));
    assert!(ok("http://127.0.0.1:7000/token"), "configured insecure");
    let https_ep = Endpoint::parse("https://registry.example").unwrap();
    let ok = |realm: &str| c.realm_may_get_credentials(&Url::parse(realm).unwrap(), &https_ep);
    assert!(!ok("http://registry.example/token"), "a downgrade");
    assert!(ok("https://registry.example/token"));
}

/// Serves one response to every connection: `head` then `len` bytes of `x`.
async fn serve_body(len: usize, announce: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf).await;
            let head = if announce {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
            } else {
                "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned()
            };
            let _ = c.write_all(head.as_bytes()).await;
            let chunk = vec![b'x'; 64 << 10];
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len());
                if c.write_all(&chunk[..n]).await.is_err() {
                    break;
                }
                left -= n;
            }
        }
    });
    format!("http://{addr}/")
}

#[tokio::test]
async fn bodies_read_into_memory_are_capped() {
    let client = reqwest::Client::new();
    for announce in [true, false] {
        let url = serve_body(1 << 20, announce).await;
        let resp = client.get(&url).send().await.unwrap();
        match read_limited(resp, 64 << 10, "token response").await {
            Err(EpError::Fatal(m)) => assert_eq!(
                m, "token response larger than the limit of 65536 bytes",
                "announced {announce}"
            ),
            other => panic!("{other:?}"),
        }
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(
            read_limited(resp, 1 << 20, "x").await.unwrap().len(),
            1 << 20
        );
    }
}

#[test]
fn credentials() {
    let c = Credentials {
        auth: "dXNlcjpwYTpzcw==".into(),
        ..Default::default()
    };
    assert_eq!(c.user_pass(), Some(("user".into(), "pa:ss".into())));
    let c = Credentials {
        username: "u".into(),
        password: "p".into(),
        ..Default::default()
    };
    assert_eq!(c.user_pass(), Some(("u".into(), "p".into())));
    assert!(c.applies_to("anything:5000"));
    let c = Credentials {
        server_address: "https://index.docker.io/v1/".into(),
        ..c
    };
    assert!(c.applies_to("docker.io"));
    assert!(c.applies_to("registry-1.docker.io"));
    assert!(!c.applies_to("quay.io"));
    assert!(
        !format!("{c:?}").contains("\"p\""),
        "password never printed"
    );
}
