//! HTTP/1.1 request hygiene at the edge: malformed framing and heads answer 400 and close that
//! connection without affecting other clients; hop-by-hop headers never cross the proxy.

mod support;

use std::time::Duration;

use support::backend::Backend;
use support::proxy::{Proxy, app_upstream, pipeline_with};
use support::tcp::{client_config, tls_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes, returns everything the proxy answered before closing (bounded: 5 s).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn setup() -> (Backend, Proxy) {
    let backend = Backend::start().await;
    let rest = app_upstream(&backend.url());
    let proxy = Proxy::start(&pipeline_with(r#"["http1"]"#, "tls = \"off\"", &rest));
    (backend, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_the_connection_is_closed() {
    let (backend, proxy) = setup().await;
    let addr = proxy.tcp_addr.expect("tcp");
    let cases: [(&str, &[u8]); 9] = [
        (
            "identical content-lengths",
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            "content-length, then transfer-encoding",
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "transfer-encoding, then content-length",
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "content-lengths that differ",
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        ),
        (
            "a content-length list",
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello",
        ),
        (
            "obs-fold",
            b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
        ),
        (
            "chunked not last",
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        ),
        (
            "two Host fields",
            b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ),
        (
            "whitespace before the colon",
            b"GET /x HTTP/1.1\r\nHost : a\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        // A second, valid request pipelined behind the bad one must not be served.
        let mut with_follower = bytes.to_vec();
        with_follower.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n");
        let answer = raw(addr, &with_follower).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "{what}: the connection must close after the 400: {answer}"
        );
    }
    assert_eq!(
        backend.state.seen.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the backend"
    );
    // Everyone else is still served.
    let ok = raw(
        addr,
        b"GET /fine HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_after_the_requests_before_it_on_tls() {
    // One HTTP/1.1-over-TLS connection: two good requests with bodies (chunked, then
    // fixed-length, the first body itself looking like a smuggled head), then
    // Content-Length with Transfer-Encoding, then a request that must never run.
    let backend = Backend::start().await;
    let dir = support::TempDir::new();
    let cert = support::TestCert::generate(&dir);
    let proxy = Proxy::start(&pipeline_with(
        r#"["http1"]"#,
        &cert.toml(),
        &app_upstream(&backend.url()),
    ));
    let cfg = client_config(std::slice::from_ref(&cert.der), &[b"http/1.1"]);
    let (mut tls, _) = tls_connect(proxy.tcp_addr.expect("tcp"), "localhost", cfg)
        .await
        .expect("tls");
    let decoy = "GET /decoy HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
    let mut bytes = format!(
        "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{decoy}\r\n0\r\n\r\n",
        decoy.len()
    );
    bytes.push_str("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok");
    bytes.push_str("POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n");
    bytes.push_str("GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n");
    tls.write_all(bytes.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answer[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "400"], "{answer}");
    assert!(answer.contains(decoy), "the decoy was a body: {answer}");
    assert_eq!(
        backend.state.seen.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "only the two good requests reached the backend"
    );
    proxy
        .wait_metric(
            "spooky_http1_refused_total",
            &[("reason", "content_length_with_transfer_encoding")],
            |v| v == 1.0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_stay_on_their_hop() {
    let (_backend, proxy) = setup().await;
    let addr = proxy.tcp_addr.expect("tcp");
    let answer = raw(
        addr,
        b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: close, x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nUpgrade: websocket\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    for gone in ["x-secret", "keep-alive", "upgrade", "proxy-connection"] {
        assert!(
            !body.contains(&format!("{gone}:")),
            "{gone} crossed the proxy: {body}"
        );
    }
    assert!(body.contains("x-kept: yes"), "{body}");
    assert!(body.contains("host: a"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_never_ends_is_cut_at_the_header_timeout() {
    // The framing guard holds an incomplete head back from hyper; hyper's head timer runs
    // all the same, so a client dripping a head forever (slowloris) is closed in time.
    let backend = Backend::start().await;
    let rest = format!(
        "[stages.ingress]\nheader_timeout = \"300ms\"\n\n{}",
        app_upstream(&backend.url())
    );
    let proxy = Proxy::start(&pipeline_with(r#"["http1"]"#, "tls = \"off\"", &rest));
    let mut s = TcpStream::connect(proxy.tcp_addr.expect("tcp"))
        .await
        .expect("connect");
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "the connection was not closed at the header timeout"
    );
    assert_eq!(
        backend.state.seen.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}
