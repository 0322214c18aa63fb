//! Upstream TLS and HTTP/2: verified against a private CA (ca_file, ca_dir), ALPN h2 or
//! http/1.1 per backend, h2c, mixed protocols in one upstream, untrusted certificate → 502.

mod support;

use http::StatusCode;
use support::proxy::{Proxy, pipeline};
use support::tls_backend::{Ca, h2c_backend, https_backend};
use support::{TempDir, TestCert, connect, url};

fn upstream(tls: &str, backends: &str) -> String {
    format!(
        r#"
[[routes]]
name = "app"
match = {{ path_prefix = "/" }}
upstream = "app"

[upstreams.app]
tls = {{ {tls} }}
backends = [ {backends} ]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_backends_verified_by_ca_file_and_ca_dir_with_alpn() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let ca = Ca::new("spooky test CA");
    let ca_dir = dir.0.join("cas");
    std::fs::create_dir_all(&ca_dir).expect("mkdir");
    ca.write(&ca_dir.join("ca.pem"));
    let ca_file = dir.0.join("ca-file.pem");
    ca.write(&ca_file);
    let leaf = ca.issue(&dir, "backend", &["backend.internal", "127.0.0.1"]);
    let both = https_backend(&leaf, &[b"h2", b"http/1.1"]).await;

    for (tls, protocol, want) in [
        (
            format!("ca_file = \"{}\"", ca_file.display()),
            "auto",
            "HTTP/2.0",
        ),
        (
            format!("ca_dir = \"{}\"", ca_dir.display()),
            "http1",
            "HTTP/1.1",
        ),
        (
            format!(
                "ca_file = \"{}\", server_name = \"backend.internal\"",
                ca_file.display()
            ),
            "h2",
            "HTTP/2.0",
        ),
    ] {
        let backends = format!("{{ url = \"https://{both}\", protocol = \"{protocol}\" }}");
        let proxy = Proxy::start(&pipeline(&cert.toml(), &upstream(&tls, &backends)));
        let client = cert.client();
        let conn = connect(&client, &proxy).await;
        let r = conn.get(&url("/v")).await.expect("GET");
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{tls} {protocol}: {}",
            proxy.log()
        );
        let body = String::from_utf8_lossy(&r.body).to_string();
        assert!(
            body.starts_with(&format!("tls-backend {want} /v host=localhost")),
            "{tls} {protocol}: {body}"
        );
        proxy.assert_caps_zero().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_backend_certificate_is_502_with_the_reason_logged() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let ca = Ca::new("unknown CA");
    let leaf = ca.issue(&dir, "backend", &["127.0.0.1"]);
    let backend = https_backend(&leaf, &[b"h2", b"http/1.1"]).await;
    // No ca_file: the bundled public roots, which do not know this CA.
    let proxy = Proxy::start(&pipeline(
        &cert.toml(),
        &upstream("", &format!("{{ url = \"https://{backend}\" }}")),
    ));
    let client = cert.client();
    let conn = connect(&client, &proxy).await;
    let r = conn.get(&url("/v")).await.expect("GET");
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let log = proxy.log();
    assert!(
        log.contains("upstream connect failed") && log.contains("UnknownIssuer"),
        "{log}"
    );
    // With the name checked against a server_name the certificate lacks: also refused.
    let trusted = dir.0.join("ca.pem");
    ca.write(&trusted);
    let tls = format!(
        "ca_file = \"{}\", server_name = \"other.internal\"",
        trusted.display()
    );
    let proxy = Proxy::start(&pipeline(
        &cert.toml(),
        &upstream(&tls, &format!("{{ url = \"https://{backend}\" }}")),
    ));
    let conn = connect(&client, &proxy).await;
    assert_eq!(
        conn.get(&url("/v")).await.expect("GET").status,
        StatusCode::BAD_GATEWAY
    );
    assert!(
        proxy
            .log()
            .contains("not valid for name \"other.internal\""),
        "{}",
        proxy.log()
    );
    // verify = "off" is an explicit opt-out, and says so.
    let proxy = Proxy::start(&pipeline(
        &cert.toml(),
        &upstream(
            "verify = \"off\"",
            &format!("{{ url = \"https://{backend}\" }}"),
        ),
    ));
    let conn = connect(&client, &proxy).await;
    assert_eq!(
        conn.get(&url("/v")).await.expect("GET").status,
        StatusCode::OK
    );
    assert!(
        proxy
            .log()
            .contains("TLS verification of this upstream's backends is OFF")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_mixed_protocols_in_one_upstream() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let ca = Ca::new("spooky test CA");
    let ca_file = dir.0.join("ca.pem");
    ca.write(&ca_file);
    let leaf = ca.issue(&dir, "backend", &["127.0.0.1"]);
    let h1_only = https_backend(&leaf, &[b"http/1.1"]).await;
    let h2c = h2c_backend().await;
    let backends = format!(
        "{{ url = \"https://{h1_only}\" }}, {{ url = \"http://{h2c}\", protocol = \"h2c\" }}"
    );
    let proxy = Proxy::start(&pipeline(
        &cert.toml(),
        &upstream(&format!("ca_file = \"{}\"", ca_file.display()), &backends),
    ));
    let client = cert.client();
    let conn = connect(&client, &proxy).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = conn.get(&url("/m")).await.expect("GET");
        assert_eq!(r.status, StatusCode::OK, "{}", proxy.log());
        seen.push(
            String::from_utf8_lossy(&r.body)
                .split(' ')
                .nth(1)
                .unwrap_or("")
                .to_string(),
        );
    }
    seen.sort();
    assert_eq!(
        seen,
        vec!["HTTP/1.1", "HTTP/1.1", "HTTP/2.0", "HTTP/2.0"],
        "round-robin over an h1 and an h2c backend"
    );
    proxy.assert_caps_zero().await;
}
