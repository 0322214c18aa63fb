//! HTTP/3 client → Spooky (all eight stages) → hyper HTTP/1.1 backend, and back.

mod support;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, StatusCode};
use support::backend::Backend;
use support::proxy::{Proxy, pipeline};
use support::{TempDir, TestCert, connect, url};

/// The eight stages of the test pipeline's chain.
const STAGES: [&str; 8] = [
    "ingress",
    "admission",
    "route",
    "queue",
    "select",
    "hedge-retry",
    "dispatch",
    "egress",
];

fn routes(backend: &Backend) -> String {
    format!(
        r#"
[[routes]]
name = "hello"
match = {{ path_prefix = "/hello" }}
respond = {{ status = 200, body = "hello from spooky\n" }}

[[routes]]
name = "app"
match = {{ path_prefix = "/", methods = ["GET", "POST"] }}
upstream = "app"

[upstreams.app]
backends = [ {{ url = "{}" }} ]
"#,
        backend.url()
    )
}

async fn setup() -> (TempDir, TestCert, Backend, Proxy) {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let proxy = Proxy::start(&pipeline(&cert.toml(), &routes(&backend)));
    (dir, cert, backend, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_through_every_stage_with_forwarding_headers() {
    let (_d, cert, _backend, proxy) = setup().await;
    let client = cert.client();
    let conn = connect(&client, &proxy).await;
    let resp = conn.get(&url("/app/page?q=1")).await.expect("GET");
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(&resp.body[..], b"backend /app/page\n");
    let seen = resp
        .headers
        .get("x-seen")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert_eq!(
        seen, "host=localhost via=3 spooky xff=127.0.0.1 xfp=https te=trailers",
        "request headers the backend saw"
    );
    // Hop-by-hop headers and the ones `Connection` names stay on the upstream hop.
    assert!(resp.headers.get("connection").is_none());
    assert!(resp.headers.get("x-hop").is_none());
    assert_eq!(
        resp.headers.get("via").map(|v| v.as_bytes()),
        Some(&b"1.1 spooky"[..])
    );
    for stage in STAGES {
        let n = proxy
            .metric("spooky_stage_emitted_total", &[("stage", stage)])
            .await;
        assert_eq!(n, 1.0, "stage {stage} emitted");
    }
    assert_eq!(
        proxy
            .metric("spooky_requests_total", &[("class", "2xx")])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_response_and_no_route() {
    let (_d, cert, backend, proxy) = setup().await;
    let client = cert.client();
    let conn = connect(&client, &proxy).await;
    let hello = conn.get(&url("/hello")).await.expect("GET /hello");
    assert_eq!(hello.status, StatusCode::OK);
    assert_eq!(&hello.body[..], b"hello from spooky\n");
    // The app route takes only GET and POST: a DELETE matches nothing.
    let req = Request::builder()
        .method(Method::DELETE)
        .uri(url("/app"))
        .body(())
        .expect("req");
    let none = conn.request(req, None).await.expect("DELETE");
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert_eq!(
        none.headers.get("proxy-status").map(|v| v.as_bytes()),
        Some(&br#"spooky; error=destination_not_found; details="no_route""#[..])
    );
    assert!(
        hello.headers.get("proxy-status").is_none(),
        "a route's own response is not a refusal"
    );
    assert_eq!(proxy.rejected("route", "no_route").await, 1.0);
    assert_eq!(
        backend.state.seen.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_4mib_streams_both_ways_byte_for_byte() {
    let (_d, cert, _backend, proxy) = setup().await;
    let client = cert.client();
    let conn = connect(&client, &proxy).await;
    let body: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let req = Request::builder()
        .method(Method::POST)
        .uri(url("/echo"))
        .body(())
        .expect("req");
    let mut send = conn.send.clone();
    let stream = send.send_request(req).await.expect("send_request");
    let (mut tx, mut rx) = stream.split();
    let chunk = 64 * 1024;
    // Send the first chunk only and read part of its echo back before sending anything else:
    // this only works if neither the proxy nor the backend waits for the whole body.
    tx.send_data(Bytes::copy_from_slice(&body[..chunk]))
        .await
        .expect("first chunk");
    let resp = rx.recv_response().await.expect("response head");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut got = BytesMut::new();
    let first = rx
        .recv_data()
        .await
        .expect("recv")
        .expect("first echoed bytes");
    got.extend_from_slice(first.chunk());
    assert!(!got.is_empty());
    let writer = {
        let body = body.clone();
        tokio::spawn(async move {
            for c in body[chunk..].chunks(chunk) {
                tx.send_data(Bytes::copy_from_slice(c))
                    .await
                    .expect("send chunk");
            }
            tx.finish().await.expect("finish");
        })
    };
    while let Some(mut b) = rx.recv_data().await.expect("recv") {
        while b.has_remaining() {
            let n = b.chunk().len();
            got.extend_from_slice(b.chunk());
            b.advance(n);
        }
    }
    writer.await.expect("writer");
    assert_eq!(got.len(), body.len());
    assert!(got[..] == body[..], "echoed body differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_trailers_arrive() {
    let (_d, cert, _backend, proxy) = setup().await;
    let client = cert.client();
    let conn = connect(&client, &proxy).await;
    let resp = conn.get(&url("/trailers")).await.expect("GET");
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(&resp.body[..], b"body before trailers\n");
    let trailers = resp.trailers.expect("trailers");
    assert_eq!(
        trailers.get("x-checksum").map(|v| v.as_bytes()),
        Some(&b"abc123"[..])
    );
}

async fn burst(conns: &[spooky::h3client::H3Conn], total: usize) -> usize {
    let mut tasks = Vec::new();
    for i in 0..total {
        let send = conns[i % conns.len()].send.clone();
        tasks.push(tokio::spawn(async move {
            let mut send = send;
            let req = Request::get(url(&format!("/r/{i}"))).body(()).expect("req");
            let mut s = send.send_request(req).await.expect("send");
            let _ = s.finish().await;
            let resp = s.recv_response().await.expect("resp");
            let mut body = Vec::new();
            while let Some(mut b) = s.recv_data().await.expect("data") {
                while b.has_remaining() {
                    let n = b.chunk().len();
                    body.extend_from_slice(b.chunk());
                    b.advance(n);
                }
            }
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(body, format!("backend /r/{i}\n").into_bytes());
        }));
    }
    let mut ok = 0;
    for t in tasks {
        t.await.expect("request task");
        ok += 1;
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_on_one_and_on_twenty_connections() {
    let (_d, cert, backend, proxy) = setup().await;
    let client = cert.client();
    let one = vec![connect(&client, &proxy).await];
    assert_eq!(burst(&one, 200).await, 200);
    let mut twenty = Vec::new();
    for _ in 0..20 {
        twenty.push(connect(&client, &proxy).await);
    }
    assert_eq!(burst(&twenty, 200).await, 200);
    assert_eq!(
        backend.state.seen.load(std::sync::atomic::Ordering::SeqCst),
        400
    );
    assert_eq!(
        proxy
            .metric("spooky_requests_total", &[("class", "2xx")])
            .await,
        400.0
    );
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_is_502_and_retry_goes_to_another_backend() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let dead = support::dead_addr();
    let rest = format!(
        r#"
[[routes]]
name = "both"
match = {{ path_prefix = "/" }}
upstream = "both"

[[routes]]
name = "down"
match = {{ path_prefix = "/down" }}
upstream = "down"

[upstreams.both]
backends = [ {{ url = "http://{dead}" }}, {{ url = "{}" }} ]

[upstreams.down]
backends = [ {{ url = "http://{dead}" }} ]
"#,
        backend.url()
    );
    let proxy = Proxy::start(&pipeline(&cert.toml(), &rest));
    let client = cert.client();
    let conn = connect(&client, &proxy).await;
    // Round-robin starts at the dead backend for one of two GETs; both must succeed.
    for _ in 0..2 {
        let r = conn.get(&url("/x")).await.expect("GET");
        assert_eq!(r.status, StatusCode::OK);
    }
    let connect_errors = proxy
        .metric(
            "spooky_upstream_requests_total",
            &[("upstream", "both"), ("class", "connect_error")],
        )
        .await;
    assert!(
        connect_errors >= 1.0,
        "an attempt hit the dead backend and was retried"
    );
    assert_eq!(
        backend.state.seen.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    let down = conn.get(&url("/down")).await.expect("GET /down");
    assert_eq!(down.status, StatusCode::BAD_GATEWAY);
    // A POST with a body is not retried.
    let post = Request::builder()
        .method(Method::POST)
        .uri(url("/down"))
        .body(())
        .expect("req");
    let r = conn
        .request(post, Some(Bytes::from_static(b"data")))
        .await
        .expect("POST");
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_exports_the_common_stage_metrics() {
    let (_d, cert, _backend, proxy) = setup().await;
    let client = cert.client();
    let conn = connect(&client, &proxy).await;
    assert_eq!(
        conn.get(&url("/m")).await.expect("GET").status,
        StatusCode::OK
    );
    let (_, text) = proxy.admin_get("/metrics").await;
    for stage in STAGES {
        for family in [
            "spooky_stage_received_total",
            "spooky_stage_emitted_total",
            "spooky_stage_rejected_total",
            "spooky_stage_queue_depth",
            "spooky_stage_inflight",
            "spooky_stage_processing_seconds_count",
        ] {
            let needle = format!("stage=\"{stage}\"");
            assert!(
                text.lines().any(|l| l.starts_with(family)
                    && l.contains(&needle)
                    && l.contains("pipeline=\"test\"")),
                "no {family} for stage {stage}"
            );
        }
    }
    // Only stages with an inlet wait in a queue: dispatch is the one in this chain.
    assert!(
        text.lines()
            .any(|l| l.starts_with("spooky_stage_queue_wait_seconds_count")
                && l.contains("stage=\"dispatch\""))
    );
    assert!(text.contains("spooky_upstream_response_seconds_count{upstream=\"app\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_get_400_or_431_and_the_connection_keeps_serving() {
    let (_d, cert, backend, proxy) = setup().await;
    let client = cert.client();
    let conn = connect(&client, &proxy).await;
    let mut many = Request::get(url("/a"));
    for i in 0..101 {
        many = many.header(format!("x-h{i}"), "v");
    }
    let r = conn
        .request(many.body(()).expect("req"), None)
        .await
        .expect("many headers");
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let two_lengths = Request::post(url("/a"))
        .header("content-length", "3")
        .header("content-length", "4")
        .body(())
        .expect("req");
    let r = conn
        .request(two_lengths, Some(Bytes::from_static(b"abc")))
        .await
        .expect("two lengths");
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(proxy.rejected("ingress", "header_count").await, 1.0);
    assert_eq!(proxy.rejected("ingress", "bad_content_length").await, 1.0);
    assert_eq!(
        backend.state.seen.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // (Host ≠ :authority is refused by the h3 client itself; ingress unit tests cover it.)
    // The same connection, and everyone else, are still served.
    assert_eq!(
        conn.get(&url("/after")).await.expect("GET").status,
        StatusCode::OK
    );
    let other = connect(&client, &proxy).await;
    assert_eq!(
        other.get(&url("/other")).await.expect("GET").status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_and_a_full_backend_is_503() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let rest = format!(
        r#"
[stages.dispatch]
response_timeout = "200ms"

# A full backend is refused at once (the default waits up to the queue deadline).
[stages.select]
when_full = "shed"

[[routes]]
name = "app"
match = {{ path_prefix = "/" }}
upstream = "app"

[upstreams.app]
backends = [ {{ url = "{}", max_inflight = 1 }} ]
"#,
        backend.url()
    );
    let proxy = Proxy::start(&pipeline(&cert.toml(), &rest));
    let client = cert.client();
    let conn = std::sync::Arc::new(connect(&client, &proxy).await);
    let slow = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.get(&url("/hold/slow")).await.expect("slow") })
    };
    backend.state.wait_held(1).await;
    // The only backend is at its cap: nothing to select.
    let full = conn.get(&url("/x")).await.expect("GET");
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(proxy.rejected("select", "no_backend").await, 1.0);
    let timed_out = slow.await.expect("task");
    assert_eq!(timed_out.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        proxy
            .metric("spooky_upstream_requests_total", &[("class", "timeout")])
            .await,
        1.0
    );
    proxy.assert_caps_zero().await;
    backend.state.release(1);
}
