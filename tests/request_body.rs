//! Request bodies and their limits through HTTP/3, HTTP/2 and HTTP/1.1: a route's
//! `max_request_body` (413 by `content-length` before anything is read, or as the body
//! streams), `Expect: 100-continue`, and request trailers.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::backend::Backend;
use support::proxy::{Proxy, pipeline_with};
use support::tcp::{Sender, body};
use support::{TempDir, TestCert, connect};

fn routes(backend: &Backend) -> String {
    format!(
        r#"
[[routes]]
name = "small"
match = {{ path_prefix = "/sum/small" }}
upstream = "app"
max_request_body = "1KiB"

[[routes]]
name = "any"
match = {{ path_prefix = "/" }}
upstream = "app"

[upstreams.app]
backends = [ {{ url = "http://{}" }} ]
"#,
        backend.addr
    )
}

/// One POST over `proto`: status, `proxy-status`, body.
async fn post(
    proto: &str,
    proxy: &Proxy,
    cert: &TestCert,
    path: &str,
    payload: Bytes,
    content_length: bool,
) -> (u16, String, String) {
    let mut req = Request::post(format!("https://localhost{path}"));
    if content_length {
        req = req.header("content-length", payload.len());
    }
    if proto == "h3" {
        let conn = connect(&cert.client(), proxy).await;
        let r = conn
            .request(req.body(()).expect("request"), Some(payload))
            .await
            .expect("h3 response");
        let ps = r
            .headers
            .get("proxy-status")
            .map_or(String::new(), |v| v.to_str().unwrap_or("").to_string());
        return (
            r.status.as_u16(),
            ps,
            String::from_utf8_lossy(&r.body).into_owned(),
        );
    }
    let alpn: &[u8] = if proto == "h2" { b"h2" } else { b"http/1.1" };
    let mut s = Sender::connect(
        proxy.tcp_addr.expect("tcp"),
        std::slice::from_ref(&cert.der),
        alpn,
    )
    .await;
    let r = s.send(req.body(Full::new(payload)).expect("request")).await;
    let status = r.status().as_u16();
    let ps = r
        .headers()
        .get("proxy-status")
        .map_or(String::new(), |v| v.to_str().unwrap_or("").to_string());
    let (bytes, _) = body(r).await;
    (status, ps, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_request_body_answers_413_by_content_length_and_as_the_body_streams() {
    let backend = Backend::start().await;
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &cert.toml(),
        &routes(&backend),
    ));
    let kib = Bytes::from(vec![b'x'; 1024]);
    let over = Bytes::from(vec![b'x'; 1025]);
    for proto in ["h3", "h2", "http1"] {
        let (status, _, text) = post(proto, &proxy, &cert, "/sum/small", kib.clone(), true).await;
        assert_eq!(
            (status, text.as_str()),
            (200, "sum 1024 expect= trailers=\n"),
            "{proto}: at the limit"
        );
        let seen = backend.state.seen.load(std::sync::atomic::Ordering::SeqCst);
        let (status, ps, text) = post(proto, &proxy, &cert, "/sum/small", over.clone(), true).await;
        assert_eq!(status, 413, "{proto}: {text}");
        assert!(ps.contains("request_body_too_large"), "{proto}: {ps}");
        assert_eq!(
            backend.state.seen.load(std::sync::atomic::Ordering::SeqCst),
            seen,
            "{proto}: refused by content-length, never sent upstream"
        );
        let big = Bytes::from(vec![b'y'; 64 * 1024]);
        let (status, _, text) = post(proto, &proxy, &cert, "/sum/other", big, true).await;
        assert_eq!(
            (status, text.as_str()),
            (200, "sum 65536 expect= trailers=\n"),
            "{proto}: other routes have no limit"
        );
    }
    // HTTP/3 without content-length: counted as it streams.
    let (status, ps, _) = post(
        "h3",
        &proxy,
        &cert,
        "/sum/small",
        Bytes::from(vec![b'z'; 4096]),
        false,
    )
    .await;
    assert_eq!(status, 413);
    assert!(ps.contains("request_body_too_large"), "{ps}");
    let (status, _, text) = post("h3", &proxy, &cert, "/sum/small", kib.clone(), false).await;
    assert_eq!(
        (status, text.as_str()),
        (200, "sum 1024 expect= trailers=\n")
    );
    assert_eq!(proxy.rejected("route", "request_body_too_large").await, 3.0);
    assert_eq!(
        proxy.rejected("dispatch", "request_body_too_large").await,
        1.0
    );
    proxy.assert_caps_zero().await;
}

/// A raw HTTP/1.1 client on a plaintext listener: what is sent and answered, byte for byte.
struct Raw(TcpStream);

impl Raw {
    async fn open(proxy: &Proxy) -> Raw {
        Raw(TcpStream::connect(proxy.tcp_addr.expect("tcp"))
            .await
            .expect("connect"))
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).await.expect("write");
    }

    /// Reads until `pattern` has been read (bounded: 10 s); returns everything read.
    async fn read_until(&mut self, pattern: &str) -> String {
        let mut got = Vec::new();
        let read = async {
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains(pattern) {
                let n = self.0.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
        String::from_utf8_lossy(&got).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_and_chunked_limits_over_http1() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&pipeline_with(
        r#"["http1"]"#,
        "tls = \"off\"",
        &routes(&backend),
    ));
    // Too large by content-length: 413 at once, no 100, so the client never sends the body.
    let mut c = Raw::open(&proxy).await;
    c.send(b"POST /sum/small HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let answer = c.read_until("\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");

    // Within the limit: 100 Continue, then the body, then the backend's answer.
    let mut c = Raw::open(&proxy).await;
    c.send(b"POST /sum/small HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let interim = c.read_until("\r\n\r\n").await;
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    c.send(b"0123456789").await;
    let answer = c.read_until("trailers=").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("sum 10 expect= "),
        "Spooky answered the expectation; the backend is not asked again: {answer}"
    );

    // Chunked past the limit: 413 as it streams.
    let mut c = Raw::open(&proxy).await;
    c.send(b"POST /sum/small HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    let chunk = format!("320\r\n{}\r\n", "c".repeat(0x320));
    c.send(chunk.as_bytes()).await;
    c.send(chunk.as_bytes()).await;
    let answer = c.read_until("\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");

    // An expectation Spooky cannot meet.
    let mut c = Raw::open(&proxy).await;
    c.send(
        b"POST /sum/other HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: teapot\r\n\r\nabc",
    )
    .await;
    let answer = c.read_until("\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 417 "), "{answer}");

    // Trailers after a chunked body reach the backend.
    let mut c = Raw::open(&proxy).await;
    c.send(b"POST /sum/other HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n3\r\nabc\r\n0\r\nx-checksum: 42\r\n\r\n")
        .await;
    let answer = c.read_until("trailers=x-checksum=42\n").await;
    assert!(
        answer.contains("sum 3 expect= trailers=x-checksum=42\n"),
        "{answer}"
    );
}
