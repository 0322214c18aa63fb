//! gRPC through Spooky with tonic at both ends: a tonic server (tonic's own HTTP/2 server,
//! plaintext h2c) behind the proxy, and tonic clients in front of it over HTTP/2 (tonic's own
//! TLS channel, and tonic's client on a hyper HTTP/2 connection) and over HTTP/3 (tonic's
//! client on h3 request streams). Unary, server, client and bidirectional streaming, errors
//! with metadata (trailers-only and after messages), and deadlines — before the response and
//! while it streams.
//!
//! The service is written as tonic's code generator would write it (a `NamedService` that
//! dispatches on the path to `tonic::server::Grpc`), with the message derived by prost, so the
//! tests need no `protoc`.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use support::proxy::{Proxy, pipeline_with};
use support::tcp::{client_config, tls_connect};
use support::{TempDir, TestCert, connect};
use tokio::sync::{Notify, mpsc};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
}

fn msg(text: impl Into<String>) -> Msg {
    Msg { text: text.into() }
}

type Codec = tonic_prost::ProstCodec<Msg, Msg>;

// ---------------------------------------------------------------------------------------------
// The server.

/// One handler as a tower service (tonic's `*Service` traits are implemented for those).
#[derive(Clone)]
struct Handler<F>(F);

impl<F, Req, Resp, Fut> Service<tonic::Request<Req>> for Handler<F>
where
    F: FnMut(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    type Response = tonic::Response<Resp>;
    type Error = Status;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, r: tonic::Request<Req>) -> Fut {
        (self.0)(r)
    }
}

/// What the server saw, for assertions.
#[derive(Default)]
struct Seen {
    /// `grpc-timeout` of the last call that had one.
    timeout: std::sync::Mutex<Option<String>>,
    /// Streams of `Stall` dropped by the server (the proxy reset them).
    stalls_dropped: AtomicUsize,
    stall_dropped: Notify,
}

/// A response stream that counts being dropped.
struct Counted {
    inner: BoxStream<'static, Result<Msg, Status>>,
    seen: Arc<Seen>,
}

impl futures::Stream for Counted {
    type Item = Result<Msg, Status>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.seen.stalls_dropped.fetch_add(1, Ordering::SeqCst);
        self.seen.stall_dropped.notify_waiters();
    }
}

/// `test.Echo`: what tonic-build would generate for the service, by hand.
#[derive(Clone)]
struct Echo(Arc<Seen>);

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

impl Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let seen = self.0.clone();
        if let Some(t) = req.headers().get("grpc-timeout") {
            *seen.timeout.lock().expect("lock") = t.to_str().ok().map(str::to_string);
        }
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(Codec::default());
            let path = req.uri().path().to_string();
            Ok(match path.as_str() {
                // Echoes the message; request metadata `x-req` comes back as `x-resp`.
                "/test.Echo/Unary" => {
                    let h = Handler(|r: tonic::Request<Msg>| async move {
                        let echo = r.metadata().get("x-req").cloned();
                        let mut resp = tonic::Response::new(r.into_inner());
                        if let Some(v) = echo {
                            resp.metadata_mut().insert("x-resp", v);
                        }
                        Ok(resp)
                    });
                    grpc.unary(h, req).await
                }
                // An error before any message: tonic sends it trailers-only.
                "/test.Echo/Fail" => {
                    let h = Handler(|_: tonic::Request<Msg>| async move {
                        let mut md = MetadataMap::new();
                        md.insert("x-detail", MetadataValue::from_static("d1"));
                        md.insert_bin("x-blob-bin", MetadataValue::from_bytes(&[0, 1, 2, 255]));
                        Err::<tonic::Response<Msg>, _>(Status::with_metadata(
                            Code::InvalidArgument,
                            "bad input: ünïcode",
                            md,
                        ))
                    });
                    grpc.unary(h, req).await
                }
                // `n` messages "0".."n-1"; with text "fail:n", then an error with metadata.
                "/test.Echo/ServerStream" => {
                    let h = Handler(|r: tonic::Request<Msg>| async move {
                        let text = r.into_inner().text;
                        let (fail, n) = match text.strip_prefix("fail:") {
                            Some(n) => (true, n),
                            None => (false, text.as_str()),
                        };
                        let n: usize = n.parse().map_err(|_| Status::invalid_argument("n"))?;
                        let mut items: Vec<Result<Msg, Status>> =
                            (0..n).map(|i| Ok(msg(i.to_string()))).collect();
                        if fail {
                            let mut md = MetadataMap::new();
                            md.insert("x-why", MetadataValue::from_static("because"));
                            items.push(Err(Status::with_metadata(
                                Code::Aborted,
                                "late failure",
                                md,
                            )));
                        }
                        let s: BoxStream<'static, Result<Msg, Status>> =
                            stream::iter(items).boxed();
                        Ok(tonic::Response::new(s))
                    });
                    grpc.server_streaming(h, req).await
                }
                // Joins every message it was sent.
                "/test.Echo/ClientStream" => {
                    let h = Handler(|r: tonic::Request<tonic::Streaming<Msg>>| async move {
                        let mut s = r.into_inner();
                        let mut all = Vec::new();
                        while let Some(m) = s.message().await? {
                            all.push(m.text);
                        }
                        Ok(tonic::Response::new(msg(all.join(","))))
                    });
                    grpc.client_streaming(h, req).await
                }
                // Answers each message as it comes: "re:<text>".
                "/test.Echo/Chat" => {
                    let h = Handler(|r: tonic::Request<tonic::Streaming<Msg>>| async move {
                        let s: BoxStream<'static, Result<Msg, Status>> = r
                            .into_inner()
                            .map(|m| m.map(|m| msg(format!("re:{}", m.text))))
                            .boxed();
                        Ok(tonic::Response::new(s))
                    });
                    grpc.streaming(h, req).await
                }
                // One message, then nothing, ever: only a deadline ends it.
                "/test.Echo/Stall" => {
                    let h = Handler(move |_: tonic::Request<Msg>| {
                        let seen = seen.clone();
                        async move {
                            let inner = stream::once(async { Ok(msg("first")) })
                                .chain(stream::pending())
                                .boxed();
                            Ok(tonic::Response::new(Counted { inner, seen }))
                        }
                    });
                    grpc.server_streaming(h, req).await
                }
                // Messages without end, as fast as they can go.
                "/test.Echo/Flood" => {
                    let h = Handler(|_: tonic::Request<Msg>| async move {
                        let s: BoxStream<'static, Result<Msg, Status>> =
                            stream::repeat_with(|| Ok(msg("more"))).boxed();
                        Ok(tonic::Response::new(s))
                    });
                    grpc.server_streaming(h, req).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A tonic server (h2c) on an OS-picked loopback port.
async fn tonic_backend() -> (std::net::SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let svc = Echo(seen.clone());
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tonic::transport::Server::builder()
            .serve_with_incoming(svc, incoming)
            .await
            .expect("tonic server");
    });
    (addr, seen)
}

/// A backend that accepts connections and never answers.
async fn silent_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// Client transports for tonic's client.

/// tonic's client on one hyper HTTP/2 connection over TLS (no client-side deadline timer, so
/// what ends a call at its deadline is the proxy).
#[derive(Clone)]
struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = BoxFuture<'static, Result<Self::Response, hyper::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

async fn h2_transport(proxy: &Proxy, cert: &TestCert) -> H2 {
    let cfg = client_config(std::slice::from_ref(&cert.der), &[b"h2"]);
    let (tls, _) = tls_connect(proxy.tcp_addr.expect("tcp"), "localhost", cfg)
        .await
        .expect("tls");
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2");
    tokio::spawn(conn);
    H2(send)
}

type H3Body = BoxBody<Bytes, BoxError>;

/// tonic's client on HTTP/3: each call is an h3 request stream; the request body is pumped
/// as tonic produces it and the response body is read as it arrives (both stream).
#[derive(Clone)]
struct H3(h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>);

impl Service<http::Request<tonic::body::Body>> for H3 {
    type Response = http::Response<H3Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let mut send = self.0.clone();
        Box::pin(async move {
            let (parts, mut body) = req.into_parts();
            let stream = send
                .send_request(http::Request::from_parts(parts, ()))
                .await?;
            let (mut tx, mut rx) = stream.split();
            tokio::spawn(async move {
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data()
                        && tx.send_data(data).await.is_err()
                    {
                        return;
                    }
                }
                let _ = tx.finish().await;
            });
            let head = rx.recv_response().await?;
            let frames = stream::unfold(Some(rx), |rx| async move {
                let mut rx = rx?;
                let item: Result<Frame<Bytes>, BoxError> = match rx.recv_data().await {
                    Ok(Some(mut chunk)) => {
                        let data = chunk.copy_to_bytes(chunk.remaining());
                        return Some((Ok(Frame::data(data)), Some(rx)));
                    }
                    Ok(None) => match rx.recv_trailers().await {
                        Ok(Some(t)) => Ok(Frame::trailers(t)),
                        Ok(None) => return None,
                        Err(e) => Err(e.into()),
                    },
                    Err(e) => Err(e.into()),
                };
                Some((item, None))
            });
            Ok(head.map(|()| BoxBody::new(StreamBody::new(frames))))
        })
    }
}

async fn h3_transport(proxy: &Proxy, cert: &TestCert) -> (H3, spooky::h3client::H3Conn) {
    let conn = connect(&cert.client(), proxy).await;
    (H3(conn.send.clone()), conn)
}

fn client<T>(transport: T) -> tonic::client::Grpc<T> {
    tonic::client::Grpc::with_origin(transport, "https://localhost".parse().expect("origin"))
}

async fn ready<T>(c: &mut tonic::client::Grpc<T>)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
{
    let r: Result<(), BoxError> = c.ready().await.map_err(Into::into);
    r.expect("transport ready");
}

fn path(p: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(p)
}

// ---------------------------------------------------------------------------------------------
// The calls.

/// Every kind of call, through one client; `via` names the client in failures.
async fn calls<T>(mut c: tonic::client::Grpc<T>, via: &str)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError>,
{
    // Unary, with request metadata passed to the server and response metadata back.
    let mut req = tonic::Request::new(msg("ping"));
    req.metadata_mut()
        .insert("x-req", MetadataValue::from_static("r1"));
    ready(&mut c).await;
    let resp = c
        .unary(req, path("/test.Echo/Unary"), Codec::default())
        .await
        .unwrap_or_else(|s| panic!("{via}: unary failed: {s:?}"));
    assert_eq!(
        resp.metadata().get("x-resp").map(|v| v.as_bytes()),
        Some(&b"r1"[..]),
        "{via}"
    );
    assert_eq!(resp.into_inner(), msg("ping"), "{via}");

    // Trailers-only error with text and binary metadata.
    ready(&mut c).await;
    let err = c
        .unary(
            tonic::Request::new(msg("?")),
            path("/test.Echo/Fail"),
            Codec::default(),
        )
        .await
        .expect_err("Fail fails");
    assert_eq!(err.code(), Code::InvalidArgument, "{via}: {err:?}");
    assert_eq!(err.message(), "bad input: ünïcode", "{via}");
    assert_eq!(
        err.metadata().get("x-detail").map(|v| v.as_bytes()),
        Some(&b"d1"[..]),
        "{via}"
    );
    assert_eq!(
        err.metadata()
            .get_bin("x-blob-bin")
            .and_then(|v| v.to_bytes().ok()),
        Some(Bytes::from_static(&[0, 1, 2, 255])),
        "{via}"
    );

    // Server streaming.
    ready(&mut c).await;
    let mut s = c
        .server_streaming(
            tonic::Request::new(msg("5")),
            path("/test.Echo/ServerStream"),
            Codec::default(),
        )
        .await
        .expect("server streaming")
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = s.message().await.expect("message") {
        got.push(m.text);
    }
    assert_eq!(got, ["0", "1", "2", "3", "4"], "{via}");

    // Server streaming that fails after two messages: status and metadata come in trailers.
    ready(&mut c).await;
    let mut s = c
        .server_streaming(
            tonic::Request::new(msg("fail:2")),
            path("/test.Echo/ServerStream"),
            Codec::default(),
        )
        .await
        .expect("server streaming")
        .into_inner();
    assert_eq!(s.message().await.expect("0"), Some(msg("0")), "{via}");
    assert_eq!(s.message().await.expect("1"), Some(msg("1")), "{via}");
    let err = s.message().await.expect_err("then the failure");
    assert_eq!(
        (err.code(), err.message()),
        (Code::Aborted, "late failure"),
        "{via}"
    );
    assert_eq!(
        err.metadata().get("x-why").map(|v| v.as_bytes()),
        Some(&b"because"[..]),
        "{via}"
    );

    // Client streaming.
    ready(&mut c).await;
    let items = ["a", "b", "c", "d", "e"].map(msg);
    let resp = c
        .client_streaming(
            tonic::Request::new(stream::iter(items)),
            path("/test.Echo/ClientStream"),
            Codec::default(),
        )
        .await
        .unwrap_or_else(|s| panic!("{via}: client streaming failed: {s:?}"));
    assert_eq!(resp.into_inner(), msg("a,b,c,d,e"), "{via}");

    // Bidirectional: each message is sent only after the answer to the previous one came
    // back, so this passes only if the proxy streams both ways without waiting for the end.
    let (tx, rx) = mpsc::channel::<Msg>(1);
    let outgoing =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    tx.send(msg("one")).await.expect("send");
    ready(&mut c).await;
    let mut answers = c
        .streaming(
            tonic::Request::new(outgoing),
            path("/test.Echo/Chat"),
            Codec::default(),
        )
        .await
        .expect("chat")
        .into_inner();
    for (i, next) in ["two", "three"].into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(10), answers.message())
            .await
            .unwrap_or_else(|_| panic!("{via}: answer {i} did not stream back"))
            .expect("answer");
        assert!(got.is_some(), "{via}");
        tx.send(msg(next)).await.expect("send");
    }
    let last = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .expect("last answer")
        .expect("answer");
    assert_eq!(last, Some(msg("re:three")), "{via}");
    drop(tx);
    assert_eq!(answers.message().await.expect("end"), None, "{via}");
}

/// A unary call to a backend that never answers ends at the client's deadline, with the
/// proxy's DEADLINE_EXCEEDED; a stream that stalls after its first message is cut at the
/// deadline with DEADLINE_EXCEEDED in trailers, and the backend's stream is reset.
async fn deadlines<T>(mut c: tonic::client::Grpc<T>, seen: &Seen, via: &str)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError>,
{
    let mut req = tonic::Request::new(msg("?"));
    req.set_timeout(Duration::from_millis(300));
    let before = Instant::now();
    ready(&mut c).await;
    let err = c
        .unary(req, path("/test.Silent/Call"), Codec::default())
        .await
        .expect_err("no answer");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{via}: {err:?}");
    assert!(err.message().starts_with("spooky:"), "{via}: {err:?}");
    assert!(
        before.elapsed() < Duration::from_secs(5),
        "{via}: the deadline, not the 30 s response timeout, ended the call"
    );

    let dropped = seen.stalls_dropped.load(Ordering::SeqCst);
    let mut req = tonic::Request::new(msg("?"));
    req.set_timeout(Duration::from_millis(400));
    ready(&mut c).await;
    let mut s = c
        .server_streaming(req, path("/test.Echo/Stall"), Codec::default())
        .await
        .expect("stall")
        .into_inner();
    assert_eq!(
        s.message().await.expect("first"),
        Some(msg("first")),
        "{via}"
    );
    let err = tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .unwrap_or_else(|_| panic!("{via}: the deadline did not end the stream"))
        .expect_err("cut at the deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{via}: {err:?}");
    assert!(err.message().starts_with("spooky:"), "{via}: {err:?}");
    // The proxy reset the backend's stream, so the server dropped it.
    support::wait_until(
        &seen.stall_dropped,
        &format!("{via}: the backend's stalled stream to be reset"),
        || seen.stalls_dropped.load(Ordering::SeqCst) != dropped,
    )
    .await;
    // A backend that never stops sending is cut at the deadline too.
    let mut req = tonic::Request::new(msg("?"));
    req.set_timeout(Duration::from_millis(300));
    ready(&mut c).await;
    let mut s = c
        .server_streaming(req, path("/test.Echo/Flood"), Codec::default())
        .await
        .expect("flood")
        .into_inner();
    let mut got = 0u64;
    let err = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.message().await {
                Ok(Some(_)) => got += 1,
                Ok(None) => panic!("{via}: the flood ended by itself"),
                Err(e) => return e,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{via}: the deadline did not cut the flood"));
    assert_eq!(err.code(), Code::DeadlineExceeded, "{via}: {err:?}");
    assert!(got > 0, "{via}: messages flowed before the deadline");

    // What the backend was told was what remained of the client's deadline.
    let forwarded = seen
        .timeout
        .lock()
        .expect("lock")
        .clone()
        .expect("forwarded");
    let ms: u64 = forwarded
        .strip_suffix('m')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{via}: grpc-timeout {forwarded:?}"));
    assert!((1..=400).contains(&ms), "{via}: forwarded {forwarded}");
}

fn grpc_pipeline(
    cert: &TestCert,
    backend: std::net::SocketAddr,
    silent: std::net::SocketAddr,
) -> String {
    let rest = format!(
        r#"
[[routes]]
name = "echo"
match = {{ path_prefix = "/test.Echo/" }}
upstream = "echo"

[[routes]]
name = "silent"
match = {{ path_prefix = "/test.Silent/" }}
upstream = "silent"

[upstreams.echo]
backends = [ {{ url = "http://{backend}", protocol = "h2c" }} ]

[upstreams.silent]
backends = [ {{ url = "http://{silent}", protocol = "h2c" }} ]
"#
    );
    pipeline_with(r#"["h3", "h2"]"#, &cert.toml(), &rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_over_http2_ingress() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let (backend, seen) = tonic_backend().await;
    let proxy = Proxy::start(&grpc_pipeline(&cert, backend, silent_backend().await));

    // tonic's own channel: TLS with ALPN h2, verified against the proxy's certificate.
    let pem = std::fs::read(&cert.cert_path).expect("pem");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "https://{}",
        proxy.tcp_addr.expect("tcp")
    ))
    .expect("endpoint")
    .tls_config(tls)
    .expect("tls")
    .connect()
    .await
    .unwrap_or_else(|e| panic!("tonic channel: {e:?}\n{}", proxy.log()));
    calls(client(channel), "tonic channel (HTTP/2)").await;

    deadlines(client(h2_transport(&proxy, &cert).await), &seen, "HTTP/2").await;
    proxy
        .wait_metric("spooky_grpc_deadline_cut_total", &[], |v| v >= 1.0)
        .await;
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_over_http3_ingress() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let (backend, seen) = tonic_backend().await;
    let proxy = Proxy::start(&grpc_pipeline(&cert, backend, silent_backend().await));

    let (h3, _conn) = h3_transport(&proxy, &cert).await;
    calls(client(h3.clone()), "HTTP/3").await;
    deadlines(client(h3), &seen, "HTTP/3").await;
    proxy
        .wait_metric("spooky_grpc_deadline_cut_total", &[], |v| v >= 1.0)
        .await;
    proxy.assert_caps_zero().await;
}
