//! Certificate hot reload: POST /certs/reload (token-protected), SIGHUP and file watch. New
//! handshakes see the new certificate, an old connection keeps working, a broken file keeps
//! the old certificate serving.

mod support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use rustls::pki_types::CertificateDer;
use spooky::h3client::{H3Client, Trust};
use support::TempDir;
use support::proxy::{Proxy, pipeline_with};
use support::tcp::{Sender, client_config, tls_connect};

const TOKEN: &str = "s3cret-token-for-tests-0123456789";

/// Writes a fresh self-signed localhost certificate over `cert`/`key`; returns its DER.
fn rotate(cert: &Path, key: &Path) -> CertificateDer<'static> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    // Write to a temp name and rename, as deploy tools do, so a reader never sees half a file.
    let (tc, tk) = (cert.with_extension("tmp1"), key.with_extension("tmp2"));
    std::fs::write(&tc, ck.cert.pem()).expect("write");
    std::fs::write(&tk, ck.signing_key.serialize_pem()).expect("write");
    std::fs::rename(&tk, key).expect("rename");
    std::fs::rename(&tc, cert).expect("rename");
    ck.cert.der().clone()
}

async fn served_tcp(proxy: &Proxy, roots: &[CertificateDer<'static>]) -> CertificateDer<'static> {
    let (_, leaf) = tls_connect(
        proxy.tcp_addr.expect("tcp"),
        "localhost",
        client_config(roots, &[b"h2"]),
    )
    .await
    .expect("handshake");
    leaf
}

async fn served_quic(proxy: &Proxy, roots: &[CertificateDer<'static>]) -> CertificateDer<'static> {
    let client = H3Client::new(Trust::Roots(roots.to_vec())).expect("client");
    let conn = client
        .connect(proxy.h3_addr, "localhost")
        .await
        .expect("quic handshake");
    let ids = conn.conn.peer_identity().expect("identity");
    ids.downcast::<Vec<CertificateDer<'static>>>()
        .expect("certs")[0]
        .clone()
}

/// Polls (bounded: 10 s) until new TCP handshakes see `want`.
async fn until_served(
    proxy: &Proxy,
    roots: &[CertificateDer<'static>],
    want: &CertificateDer<'static>,
) {
    for _ in 0..500 {
        if &served_tcp(proxy, roots).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the new certificate was never served");
}

fn config(dir: &TempDir, watch: bool) -> String {
    let token = dir.0.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\", watch = {watch}, watch_interval = \"50ms\" }}",
        cert.display(),
        key.display()
    );
    pipeline_with(
        r#"["h3", "h2"]"#,
        &tls,
        "[[routes]]\nname = \"hi\"\nrespond = { status = 200, body = \"hi\" }\n",
    )
    .replace(
        "[admin]\nbind = \"127.0.0.1:0\"",
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"{}\"",
            token.display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_endpoint_and_sighup_rotate_certificates_for_new_handshakes_only() {
    let dir = TempDir::new();
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let a = rotate(&cert, &key);
    let proxy = Proxy::start(&config(&dir, false));
    let mut roots = vec![a.clone()];
    assert_eq!(served_tcp(&proxy, &roots).await, a);
    let mut old = Sender::connect(proxy.tcp_addr.expect("tcp"), &roots, b"h2").await;

    // Control endpoints need the token.
    assert_eq!(proxy.admin_post("/certs/reload", None).await.0, 401);
    assert_eq!(
        proxy
            .admin_post("/certs/reload", Some("wrong-token-wrong-token"))
            .await
            .0,
        401
    );

    let b = rotate(&cert, &key);
    roots.push(b.clone());
    let (status, body) = proxy.admin_post("/certs/reload", Some(TOKEN)).await;
    assert_eq!((status, body.trim()), (200, "listener edge: reloaded"));
    assert_eq!(
        served_tcp(&proxy, &roots).await,
        b,
        "new TCP handshakes get the new certificate"
    );
    assert_eq!(
        served_quic(&proxy, &roots).await,
        b,
        "new QUIC handshakes too"
    );
    let req = Request::get("https://localhost/x")
        .body(Full::new(Bytes::new()))
        .expect("req");
    assert_eq!(
        old.send(req).await.status(),
        StatusCode::OK,
        "the old connection goes on"
    );

    // A broken file is refused; B keeps serving.
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let (status, body) = proxy.admin_post("/certs/reload", Some(TOKEN)).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("refused") && body.contains("still serving the previous certificates"),
        "{body}"
    );
    assert_eq!(served_tcp(&proxy, &roots).await, b);
    assert!(
        proxy.log().contains("certificate reload refused"),
        "{}",
        proxy.log()
    );
    // A key that does not match its certificate is refused too.
    let c = rotate(&cert, &key);
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    std::fs::write(&key, other.signing_key.serialize_pem()).expect("write");
    assert_eq!(proxy.admin_post("/certs/reload", Some(TOKEN)).await.0, 500);
    roots.push(c.clone());
    assert_eq!(served_tcp(&proxy, &roots).await, b);

    // SIGHUP reloads too.
    let d = rotate(&cert, &key);
    roots.push(d.clone());
    proxy.sighup();
    until_served(&proxy, &roots, &d).await;
    assert_eq!(
        proxy
            .metric("spooky_control_reloads_total", &[("result", "ok")])
            .await,
        2.0
    );
    assert_eq!(
        proxy
            .metric("spooky_control_reloads_total", &[("result", "error")])
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_files_are_picked_up_when_they_change() {
    let dir = TempDir::new();
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let a = rotate(&cert, &key);
    let proxy = Proxy::start(&config(&dir, true));
    let mut roots = vec![a.clone()];
    assert_eq!(served_tcp(&proxy, &roots).await, a);
    let b = rotate(&cert, &key);
    roots.push(b.clone());
    until_served(&proxy, &roots, &b).await;
    assert_eq!(served_quic(&proxy, &roots).await, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_endpoints_are_off_without_a_token_file() {
    let dir = TempDir::new();
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    rotate(&cert, &key);
    let text = config(&dir, false).replace(
        &format!("token_file = \"{}\"", dir.0.join("token").display()),
        "",
    );
    let proxy = Proxy::start(&text);
    assert_eq!(proxy.admin_post("/certs/reload", Some(TOKEN)).await.0, 403);
    assert_eq!(
        proxy.admin_get("/metrics").await.0,
        200,
        "metrics stay open"
    );
}
