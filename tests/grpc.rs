//! gRPC through Spooky: HTTP/3 and HTTP/2 clients, an HTTP/2 (h2c) gRPC backend; unary,
//! server streaming, client streaming, trailers-only errors with metadata, deadlines; and
//! the proxy's own failures answered as gRPC statuses.
//!
//! Messages are framed by hand (1-byte flag, 4-byte length, payload), which is all gRPC is on
//! the wire, so the test needs no code generator.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use support::proxy::{Proxy, pipeline_with};
use support::tcp::Sender;
use support::tls_backend::serve_h2c;
use support::{TempDir, TestCert, connect, url};
use tokio::sync::Notify;

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

fn messages(mut b: Bytes) -> Vec<Bytes> {
    let all = b.clone();
    let mut out = Vec::new();
    while b.len() >= 5 {
        b.advance(1);
        let n = b.get_u32() as usize;
        assert!(
            n <= b.len(),
            "not gRPC framing: {:?}",
            String::from_utf8_lossy(&all)
        );
        out.push(b.split_to(n));
    }
    out
}

fn trailers(status: u8, extra: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(u16::from(status)));
    for (k, v) in extra {
        t.insert(*k, HeaderValue::from_static(v));
    }
    t
}

fn grpc_response(frames: Vec<Bytes>, t: HeaderMap) -> Response<Body> {
    let mut items: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> =
        frames.into_iter().map(|f| Ok(Frame::data(f))).collect();
    items.push(Ok(Frame::trailers(t)));
    let mut r = Response::new(BoxBody::new(StreamBody::new(futures::stream::iter(items))));
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    r
}

/// Calls the backend has seen, and a signal on each.
#[derive(Default)]
struct Seen {
    calls: AtomicUsize,
    changed: Notify,
}

async fn service(seen: Arc<Seen>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    seen.changed.notify_waiters();
    let path = req.uri().path().to_string();
    let te = req.headers().get("te").cloned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    assert_eq!(
        te.as_ref().map(|v| v.as_bytes()),
        Some(&b"trailers"[..]),
        "TE: trailers must reach a gRPC backend"
    );
    Ok(match path.as_str() {
        "/t.Echo/Unary" => grpc_response(
            messages(body).into_iter().map(|m| frame(&m)).collect(),
            trailers(0, &[("x-meta", "m1")]),
        ),
        "/t.Echo/ServerStream" => grpc_response(
            vec![frame(b"a"), frame(b"b"), frame(b"c")],
            trailers(0, &[]),
        ),
        "/t.Echo/ClientStream" => {
            let n = messages(body).len().to_string();
            grpc_response(vec![frame(n.as_bytes())], trailers(0, &[]))
        }
        "/t.Echo/Fail" => {
            // Trailers-only: status and metadata in the one HEADERS frame, no body.
            let mut r = Response::new(BoxBody::new(
                Full::new(Bytes::new()).map_err(|e| match e {}),
            ));
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            r.headers_mut()
                .insert("grpc-status", HeaderValue::from_static("3"));
            r.headers_mut()
                .insert("grpc-message", HeaderValue::from_static("bad%20input"));
            r.headers_mut()
                .insert("x-detail", HeaderValue::from_static("d"));
            r
        }
        _ => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            grpc_response(vec![], trailers(0, &[]))
        }
    })
}

async fn h2c_grpc_backend() -> (std::net::SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let addr = serve_h2c(move || {
        let s = s.clone();
        service_fn(move |req| service(s.clone(), req))
    })
    .await;
    (addr, seen)
}

fn grpc_req(path: &str, body: Bytes, timeout: Option<&'static str>) -> Request<Full<Bytes>> {
    let mut b = Request::post(format!("https://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = timeout {
        b = b.header("grpc-timeout", t);
    }
    b.body(Full::new(body)).expect("req")
}

/// (HTTP status, headers, messages, trailers) of a gRPC call over HTTP/2.
async fn call_h2(
    s: &mut Sender,
    path: &str,
    body: Bytes,
    timeout: Option<&'static str>,
) -> (StatusCode, HeaderMap, Vec<Bytes>, Option<HeaderMap>) {
    let resp = s.send(grpc_req(path, body, timeout)).await;
    let (status, headers) = (resp.status(), resp.headers().clone());
    let collected = resp.into_body().collect().await.expect("body");
    let t = collected.trailers().cloned();
    (status, headers, messages(collected.to_bytes()), t)
}

fn status_of(headers: &HeaderMap, trailers: &Option<HeaderMap>) -> Option<String> {
    trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or(headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2_and_h3_with_streaming_trailers_and_errors() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let (backend, seen) = h2c_grpc_backend().await;
    let dead = support::dead_addr();
    let rest = format!(
        r#"
[stages.admission]
max_inflight = 1

[[routes]]
name = "grpc"
match = {{ path_prefix = "/t.Echo" }}
upstream = "grpc"

[[routes]]
name = "down"
match = {{ path_prefix = "/t.Down" }}
upstream = "down"

[upstreams.grpc]
backends = [ {{ url = "http://{backend}", protocol = "h2c" }} ]

[upstreams.down]
backends = [ {{ url = "http://{dead}", protocol = "h2c" }} ]
"#
    );
    let proxy = Arc::new(Proxy::start(&pipeline_with(
        r#"["h3", "h2"]"#,
        &cert.toml(),
        &rest,
    )));
    let mut h2 = Sender::connect(
        proxy.tcp_addr.expect("tcp"),
        std::slice::from_ref(&cert.der),
        b"h2",
    )
    .await;

    // Unary over HTTP/2, with response metadata in trailers.
    let (st, h, msgs, t) = call_h2(&mut h2, "/t.Echo/Unary", frame(b"ping"), None).await;
    assert_eq!(status_of(&h, &t).as_deref(), Some("0"), "{}", proxy.log());
    assert_eq!(st, StatusCode::OK);
    assert_eq!(msgs, vec![Bytes::from_static(b"ping")]);
    assert_eq!(status_of(&h, &t).as_deref(), Some("0"));
    assert_eq!(
        t.as_ref()
            .and_then(|t| t.get("x-meta"))
            .map(|v| v.as_bytes()),
        Some(&b"m1"[..])
    );

    // Client streaming: three messages in, one count out.
    let mut three = BytesMut::new();
    for m in [&b"x"[..], b"y", b"z"] {
        three.extend_from_slice(&frame(m));
    }
    let (_, _, msgs, _) = call_h2(&mut h2, "/t.Echo/ClientStream", three.freeze(), None).await;
    assert_eq!(msgs, vec![Bytes::from_static(b"3")]);

    // Trailers-only error with metadata passes through as it is.
    let (st, h, msgs, t) = call_h2(&mut h2, "/t.Echo/Fail", frame(b"?"), None).await;
    assert_eq!((st, msgs.len()), (StatusCode::OK, 0));
    assert_eq!(status_of(&h, &t).as_deref(), Some("3"));
    assert_eq!(
        h.get("grpc-message").map(|v| v.as_bytes()),
        Some(&b"bad%20input"[..])
    );
    assert_eq!(h.get("x-detail").map(|v| v.as_bytes()), Some(&b"d"[..]));

    // Server streaming over HTTP/3.
    let client = cert.client();
    let conn = connect(&client, &proxy).await;
    let req = Request::post(url("/t.Echo/ServerStream"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("req");
    let r = conn
        .request(req, Some(frame(b"go")))
        .await
        .expect("h3 call");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        messages(r.body.clone()),
        vec![
            Bytes::from_static(b"a"),
            Bytes::from_static(b"b"),
            Bytes::from_static(b"c")
        ]
    );
    assert_eq!(status_of(&r.headers, &r.trailers).as_deref(), Some("0"));

    // The proxy's own failures, as gRPC: no route, upstream down, deadline, overload.
    let (st, h, _, t) = call_h2(&mut h2, "/t.Nothing/Here", frame(b"?"), None).await;
    assert_eq!(
        (st, status_of(&h, &t).as_deref()),
        (StatusCode::OK, Some("12")),
        "no route → UNIMPLEMENTED"
    );
    let (st, h, _, t) = call_h2(&mut h2, "/t.Down/Call", frame(b"?"), None).await;
    assert_eq!(
        (st, status_of(&h, &t).as_deref()),
        (StatusCode::OK, Some("14")),
        "upstream down → UNAVAILABLE"
    );
    let before = std::time::Instant::now();
    let (st, h, _, t) = call_h2(&mut h2, "/t.Echo/Slow", frame(b"?"), Some("200m")).await;
    assert_eq!(
        (st, status_of(&h, &t).as_deref()),
        (StatusCode::OK, Some("4")),
        "grpc-timeout → DEADLINE_EXCEEDED"
    );
    assert!(
        before.elapsed() < Duration::from_secs(3),
        "the deadline cut the wait short"
    );

    // One exchange in flight fills admission (max_inflight = 1): the next is shed as
    // RESOURCE_EXHAUSTED.
    let slow_seen = seen.calls.load(Ordering::SeqCst);
    let mut other = Sender::connect(
        proxy.tcp_addr.expect("tcp"),
        std::slice::from_ref(&cert.der),
        b"h2",
    )
    .await;
    let held = tokio::spawn(async move {
        other
            .send(grpc_req("/t.Echo/Slow", frame(b"?"), None))
            .await
            .status()
    });
    support::wait_until(&seen.changed, "the slow call at the backend", || {
        seen.calls.load(Ordering::SeqCst) > slow_seen
    })
    .await;
    let r = conn
        .request(
            Request::post(url("/t.Echo/Unary"))
                .header("content-type", "application/grpc")
                .body(())
                .expect("req"),
            Some(frame(b"x")),
        )
        .await
        .expect("h3 call");
    assert_eq!(
        (r.status, status_of(&r.headers, &r.trailers).as_deref()),
        (StatusCode::OK, Some("8")),
        "overload → RESOURCE_EXHAUSTED over HTTP/3"
    );
    assert_eq!(held.await.expect("held"), StatusCode::OK);
}
