//! Slow and idle TCP connections are closed by their timers whatever ALPN said, so idle sockets
//! cannot hold `max_connections`: trickled and missing heads get `408` within
//! `header_timeout` (+1 s), silent TCP sockets that never handshake are dropped by then, HTTP/2
//! connections with no stream get GOAWAY, keep-alive connections close after `idle_timeout`,
//! and `max_connections_per_client` refuses one address's extra connections.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::proxy::{Proxy, pipeline_with};
use support::tcp::{Sender, body, client_config, tls_connect};
use support::{TempDir, TestCert};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

const HEADER: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(2);
/// What the issue allows beyond a timeout.
const SLACK: Duration = Duration::from_secs(1);

/// One worker: these tests hold slots with raw TCP connections and count on the order they were
/// made, which only one accept queue keeps (with several workers, connections waiting in
/// different queues are accepted in no global order; `tests/workers.rs` checks the limit there).
fn one_worker(toml: String) -> String {
    toml.replacen("[pipeline]\n", "[pipeline]\nworkers = 1\n", 1)
}

fn start(cert: &TestCert, listener_extra: &str) -> Proxy {
    Proxy::start(&one_worker(pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &format!("{}\nidle_timeout = \"2s\"\n{listener_extra}", cert.toml()),
        r#"
[stages.ingress]
header_timeout = "1s"

[[routes]]
name = "hello"
match = { path_prefix = "/" }
respond = { status = 200, body = "hello\n" }
"#,
    )))
}

fn get() -> Request<Full<Bytes>> {
    Request::get("https://localhost/hello")
        .body(Full::new(Bytes::new()))
        .expect("req")
}

/// Reads until the peer closes (bounded: 10 s); what it sent.
async fn read_to_close(io: &mut (impl AsyncRead + Unpin)) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&seen).into_owned(),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!("connection still open after 10 s"),
        }
    }
}

fn assert_within(elapsed: Duration, timeout: Duration, what: &str) {
    assert!(
        elapsed + Duration::from_millis(100) >= timeout && elapsed <= timeout + SLACK,
        "{what}: closed after {elapsed:?}, expected {timeout:?} (+{SLACK:?})"
    );
}

/// A normal HTTP/2 client is answered.
async fn served(tcp: SocketAddr, cert: &TestCert) {
    let mut s = Sender::connect(tcp, std::slice::from_ref(&cert.der), b"h2").await;
    let resp = s.send(get()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body(resp).await.0, "hello\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_trickled_heads_get_408_within_header_timeout_with_h2_enabled() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = start(&cert, "");
    let tcp = proxy.tcp_addr.expect("tcp");
    let roots = [cert.der.clone()];
    // ALPN http/1.1, and no ALPN at all: both are HTTP/1.1 with its timer.
    for alpn in [&[b"http/1.1".as_slice()][..], &[]] {
        let start = Instant::now();
        let (mut silent, _) = tls_connect(tcp, "localhost", client_config(&roots, alpn))
            .await
            .expect("tls");
        let seen = read_to_close(&mut silent).await;
        assert!(
            seen.starts_with("HTTP/1.1 408"),
            "silent {alpn:?}: {seen:?}"
        );
        assert_within(start.elapsed(), HEADER, "silent TLS connection");

        let start = Instant::now();
        let (tls, _) = tls_connect(tcp, "localhost", client_config(&roots, alpn))
            .await
            .expect("tls");
        let (mut rd, mut wr) = tokio::io::split(tls);
        let trickle = tokio::spawn(async move {
            // One byte every 100 ms, never finishing the head (bounded: at most 100 bytes).
            for b in b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ".repeat(3) {
                if wr.write_all(&[b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let seen = read_to_close(&mut rd).await;
        assert!(
            seen.starts_with("HTTP/1.1 408"),
            "trickled {alpn:?}: {seen:?}"
        );
        assert_within(start.elapsed(), HEADER, "trickled head");
        trickle.abort();
    }
    // A connection that never starts its TLS handshake.
    let start = Instant::now();
    let mut raw = tokio::net::TcpStream::connect(tcp).await.expect("tcp");
    assert_eq!(read_to_close(&mut raw).await, "");
    assert_within(start.elapsed(), HEADER, "no handshake");
    // A normal client is served all along.
    served(tcp, &cert).await;
    assert!(
        proxy
            .metric(
                "spooky_listener_timeouts_total",
                &[("listener", "edge"), ("kind", "header")]
            )
            .await
            >= 4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_head_is_timed_from_its_first_byte_and_keep_alive_from_the_last_response() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = start(&cert, "");
    let tcp = proxy.tcp_addr.expect("tcp");
    let roots = [cert.der.clone()];
    let req = b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n";

    // Keep-alive: one answered request, then nothing: closed after idle_timeout, no 408.
    let (mut tls, _) = tls_connect(tcp, "localhost", client_config(&roots, &[b"http/1.1"]))
        .await
        .expect("tls");
    tls.write_all(req).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.expect("read");
    let answered = Instant::now();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert_eq!(
        read_to_close(&mut tls).await,
        "",
        "idle close sends nothing"
    );
    assert_within(answered.elapsed(), IDLE, "keep-alive idle");

    // A second head started after a pause is given header_timeout from its first byte.
    let (mut tls, _) = tls_connect(tcp, "localhost", client_config(&roots, &[b"http/1.1"]))
        .await
        .expect("tls");
    tls.write_all(req).await.expect("write");
    let n = tls.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    tls.write_all(b"GET /hello HTTP/1.1\r\n")
        .await
        .expect("write");
    let seen = read_to_close(&mut tls).await;
    assert!(seen.starts_with("HTTP/1.1 408"), "{seen:?}");
    assert_within(started.elapsed(), HEADER, "second head");
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_without_streams_get_goaway() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = start(&cert, "");
    let tcp = proxy.tcp_addr.expect("tcp");
    let roots = [cert.der.clone()];

    // Never a request: closed within header_timeout.
    let start = Instant::now();
    let (tls, _) = tls_connect(tcp, "localhost", client_config(&roots, &[b"h2"]))
        .await
        .expect("tls");
    let io = hyper_util::rt::TokioIo::new(tls);
    let (_send, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        io,
    )
    .await
    .expect("h2");
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("closed")
        .expect("a clean GOAWAY");
    assert_within(start.elapsed(), HEADER, "h2 without a request");

    // After a request: closed idle_timeout after its response.
    let (tls, _) = tls_connect(tcp, "localhost", client_config(&roots, &[b"h2"]))
        .await
        .expect("tls");
    let io = hyper_util::rt::TokioIo::new(tls);
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .expect("h2");
    let conn = tokio::spawn(conn);
    let resp = send.send_request(get()).await.expect("request");
    assert_eq!(body(resp).await.0, "hello\n");
    let answered = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("closed")
        .expect("join")
        .expect("a clean GOAWAY");
    assert_within(answered.elapsed(), IDLE, "idle h2");
    assert!(
        proxy
            .metric(
                "spooky_listener_timeouts_total",
                &[("listener", "edge"), ("kind", "idle")]
            )
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_hold_max_connections_no_longer_than_header_timeout() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = start(&cert, "max_connections = 4");
    let tcp = proxy.tcp_addr.expect("tcp");
    let start = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(tcp).await.expect("tcp"));
    }
    // Every slot is held: the next connection is closed at once.
    let mut extra = tokio::net::TcpStream::connect(tcp).await.expect("tcp");
    assert_eq!(read_to_close(&mut extra).await, "");
    assert!(start.elapsed() < HEADER, "refused at once");
    // The idle ones are dropped by header_timeout, and a client is served after that.
    for mut s in idle {
        assert_eq!(read_to_close(&mut s).await, "");
    }
    assert_within(start.elapsed(), HEADER, "idle sockets");
    served(tcp, &cert).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_client_refuses_one_address_beyond_its_share() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = Proxy::start(&one_worker(pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &format!("{}\nmax_connections_per_client = 2", cert.toml()),
        r#"
[[routes]]
name = "hello"
match = { path_prefix = "/" }
respond = { status = 200, body = "hello\n" }
"#,
    )));
    let tcp = proxy.tcp_addr.expect("tcp");
    let mut a = Sender::connect(tcp, std::slice::from_ref(&cert.der), b"h2").await;
    let held = tokio::net::TcpStream::connect(tcp).await.expect("tcp");
    // The third connection from 127.0.0.1 is closed before any handshake (header_timeout is
    // the default 10 s, so only the limit can close it this soon).
    let start = Instant::now();
    let mut third = tokio::net::TcpStream::connect(tcp).await.expect("tcp");
    assert_eq!(read_to_close(&mut third).await, "");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(
        a.send(get()).await.status(),
        StatusCode::OK,
        "the first two stay"
    );
    assert_eq!(
        proxy
            .metric(
                "spooky_listener_handshakes_total",
                &[("listener", "edge"), ("result", "per_client_limit")]
            )
            .await,
        1.0
    );
    // A slot comes back with its connection (its handshake fails on the close).
    drop(held);
    proxy
        .wait_metric(
            "spooky_listener_handshakes_total",
            &[("listener", "edge"), ("result", "error")],
            |v| v >= 1.0,
        )
        .await;
    let mut b = Sender::connect(tcp, std::slice::from_ref(&cert.der), b"h2").await;
    assert_eq!(b.send(get()).await.status(), StatusCode::OK);
}
