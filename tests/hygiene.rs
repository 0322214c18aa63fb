//! HTTP/1.1 request hygiene at the edge: malformed framing and heads answer 400 and close that
//! connection without affecting other clients; hop-by-hop headers never cross the proxy.

mod support;

use std::time::Duration;

use support::backend::Backend;
use support::proxy::{Proxy, app_upstream, pipeline_with};
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
    let cases: [(&str, &[u8]); 6] = [
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
async fn content_length_with_transfer_encoding_is_forwarded_unambiguously() {
    // RFC 9112 §6.3: Transfer-Encoding wins and the intermediary removes Content-Length
    // before forwarding, so the backend can never read the body differently than we did; and
    // (§6.1) the connection is closed after the response, so nothing pipelined behind it runs.
    let (_backend, proxy) = setup().await;
    let addr = proxy.tcp_addr.expect("tcp");
    let answer = raw(
        addr,
        b"POST /headers HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "the connection must close after the response: {answer}"
    );
    assert!(
        !answer.contains("content-length: 40"),
        "the backend saw the client's Content-Length: {answer}"
    );
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
