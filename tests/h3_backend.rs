//! HTTP/3 to backends (`protocol = "h3"`): a quinn + h3 backend behind Spooky from every
//! downstream protocol, 1 MiB each way, gRPC with trailers, one multiplexed connection per
//! worker, verification and client certificates as for HTTPS backends, a reconnect after the
//! backend closes the connection, and a client that gives up mid-upload resetting the
//! backend's stream rather than handing it a truncated body.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::h3_backend::H3Backend;
use support::named::Client;
use support::proxy::{Proxy, pipeline_with};
use support::tcp::{Sender, body};
use support::tls_backend::Ca;
use support::{TempDir, TestCert, connect, url};

fn config(tls: &str, backend: std::net::SocketAddr) -> String {
    format!(
        r#"
[[routes]]
name = "app"
match = {{ path_prefix = "/" }}
upstream = "app"

[upstreams.app]
tls = {{ {tls} }}
backends = [ {{ url = "https://{backend}", protocol = "h3" }} ]
"#
    )
}

const MIB: usize = 1024 * 1024;

/// Waits (bounded) until `cond` holds, polling what has no signal of its own.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut f = vec![0u8];
    f.extend_from_slice(&u32::try_from(msg.len()).expect("len").to_be_bytes());
    f.extend_from_slice(msg);
    Bytes::from(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h3_backend_serves_every_downstream_protocol_with_large_bodies_and_grpc() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let ca = Ca::new("spooky test CA");
    let ca_file = dir.0.join("ca.pem");
    ca.write(&ca_file);
    let leaf = ca.issue(&dir, "backend", &["backend.internal"]);
    let backend = H3Backend::start(&leaf, None).await;
    let tls = format!(
        "ca_file = \"{}\", server_name = \"backend.internal\"",
        ca_file.display()
    );
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &cert.toml(),
        &config(&tls, backend.addr),
    ));
    let big = Bytes::from(
        (0..MIB)
            .map(|i| u8::try_from(i % 251).expect("byte"))
            .collect::<Vec<_>>(),
    );
    for proto in ["h3", "h2", "http1"] {
        let mut c = Client::open(proto, &proxy, &cert).await;
        let got = c.send("GET", &url("/v?q=1"), &[]).await;
        assert_eq!(got.status, 200, "{proto}: {}", proxy.log());
        assert_eq!(got.header("x-method"), "GET", "{proto}");
        assert_eq!(got.header("x-path"), "/v", "{proto}");
        // The client's authority travels as :authority; no Host field beside it.
        assert_eq!(got.header("x-authority"), "localhost", "{proto}");
        assert_eq!(got.header("x-host"), "", "{proto}");
        assert_eq!(got.header("x-forwarded-for"), "127.0.0.1", "{proto}");
        let got = c.send("GET", &url(&format!("/big/{MIB}")), &[]).await;
        assert_eq!(got.status, 200, "{proto}");
        assert_eq!(got.body.len(), MIB, "{proto}: a 1 MiB download");
        assert!(got.body.bytes().all(|b| b == b'b'), "{proto}");
    }
    // 1 MiB up (echoed back, so 1 MiB down as well), over each protocol.
    let conn = connect(&cert.client(), &proxy).await;
    let r = conn
        .request(
            Request::post(url("/echo")).body(()).expect("request"),
            Some(big.clone()),
        )
        .await
        .expect("h3 POST");
    assert_eq!(r.status, StatusCode::OK, "{}", proxy.log());
    assert_eq!(r.headers["x-body-len"], MIB.to_string().as_str());
    assert!(r.body == big, "h3: the echo differs from what was sent");
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let mut s = Sender::connect(
            proxy.tcp_addr.expect("tcp"),
            std::slice::from_ref(&cert.der),
            alpn,
        )
        .await;
        let resp = s
            .send(
                Request::post(url("/echo"))
                    .body(Full::new(big.clone()))
                    .expect("request"),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-body-len"], MIB.to_string().as_str());
        let (got, _) = body(resp).await;
        assert!(got == big, "{alpn:?}: the echo differs from what was sent");
    }
    // gRPC: messages there and back, the status in trailers, from HTTP/2 and HTTP/3 clients.
    let msg = grpc_frame(b"hello over h3");
    let grpc = || {
        Request::post(url("/t.Echo/Unary"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
    };
    let mut s = Sender::connect(
        proxy.tcp_addr.expect("tcp"),
        std::slice::from_ref(&cert.der),
        b"h2",
    )
    .await;
    let resp = s
        .send(grpc().body(Full::new(msg.clone())).expect("request"))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let (got, trailers) = body(resp).await;
    assert_eq!(got, msg);
    let trailers = trailers.expect("h2: gRPC trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-h3-trailer"], "yes");
    let r = conn
        .request(grpc().body(()).expect("request"), Some(msg.clone()))
        .await
        .expect("h3 gRPC");
    assert_eq!(r.body, msg);
    let trailers = r.trailers.expect("h3: gRPC trailers");
    assert_eq!(trailers["grpc-status"], "0");
    // Many requests, few connections: one multiplexed connection per worker at most.
    let mut calls = Vec::new();
    for i in 0..32 {
        // A connection each: the proxy spreads them over its workers.
        let c = connect(&cert.client(), &proxy).await;
        calls.push(tokio::spawn(async move {
            c.get(&url(&format!("/many/{i}")))
                .await
                .expect("GET")
                .status
        }));
    }
    for c in calls {
        assert_eq!(c.await.expect("task"), StatusCode::OK);
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let made = backend.connections.load(Ordering::SeqCst);
    assert!(
        (1..=workers).contains(&made),
        "{made} QUIC connections to the backend for {} requests ({workers} workers)",
        backend.answered.load(Ordering::SeqCst)
    );
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h3_backend_is_verified_and_gets_the_client_certificate() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let ca = Ca::new("spooky test CA");
    let ca_file = dir.0.join("ca.pem");
    ca.write(&ca_file);
    let ca_pem = std::fs::read_to_string(&ca_file).expect("ca pem");
    let leaf = ca.issue(&dir, "backend", &["127.0.0.1"]);
    let client_leaf = ca.issue(&dir, "spooky-client", &["spooky.internal"]);
    let plain = H3Backend::start(&leaf, None).await;
    let mtls = H3Backend::start(&leaf, Some(&ca_pem)).await;
    let client = cert.client();
    let get = |proxy: &Proxy| {
        let proxy_addr = proxy.h3_addr;
        let client = &client;
        async move {
            let conn = client
                .connect(proxy_addr, "localhost")
                .await
                .expect("connect");
            conn.get(&url("/v")).await.expect("GET").status
        }
    };
    // The bundled public roots do not know this CA.
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &cert.toml(),
        &config("", plain.addr),
    ));
    assert_eq!(get(&proxy).await, StatusCode::BAD_GATEWAY);
    assert!(
        proxy.log().contains("upstream connect failed") && proxy.log().contains("UnknownIssuer"),
        "{}",
        proxy.log()
    );
    // A server_name the certificate lacks.
    let tls = format!(
        "ca_file = \"{}\", server_name = \"other.internal\"",
        ca_file.display()
    );
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &cert.toml(),
        &config(&tls, plain.addr),
    ));
    assert_eq!(get(&proxy).await, StatusCode::BAD_GATEWAY);
    assert!(proxy.log().contains("other.internal"), "{}", proxy.log());
    // A backend that asks for a client certificate: refused without one, served with it.
    let trusted = format!("ca_file = \"{}\"", ca_file.display());
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &cert.toml(),
        &config(&trusted, mtls.addr),
    ));
    assert_eq!(get(&proxy).await, StatusCode::BAD_GATEWAY);
    assert_eq!(mtls.answered.load(Ordering::SeqCst), 0);
    let with_cert = format!(
        "ca_file = \"{}\", client_cert = \"{}\", client_key = \"{}\"",
        ca_file.display(),
        client_leaf.cert_path.display(),
        client_leaf.key_path.display()
    );
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &cert.toml(),
        &config(&with_cert, mtls.addr),
    ));
    assert_eq!(get(&proxy).await, StatusCode::OK, "{}", proxy.log());
    assert_eq!(mtls.answered.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_h3_backend_connection_is_made_again() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let ca = Ca::new("spooky test CA");
    let ca_file = dir.0.join("ca.pem");
    ca.write(&ca_file);
    let leaf = ca.issue(&dir, "backend", &["127.0.0.1"]);
    let backend = H3Backend::start(&leaf, None).await;
    let tls = format!("ca_file = \"{}\"", ca_file.display());
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &cert.toml(),
        &config(&tls, backend.addr),
    ));
    let conn = connect(&cert.client(), &proxy).await;
    assert_eq!(
        conn.get(&url("/a")).await.expect("GET").status,
        StatusCode::OK
    );
    let before = backend.connections.load(Ordering::SeqCst);
    backend.close_all();
    // Spooky notices the close (its open-connection gauge falls to zero)...
    let open = || {
        let proxy = &proxy;
        async move {
            let (_, metrics) = proxy.admin_get("/metrics").await;
            metrics
                .lines()
                .find(|l| l.starts_with("spooky_upstream_connections{"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        }
    };
    let until = Instant::now() + Duration::from_secs(10);
    while open().await != Some(0.0) {
        assert!(
            Instant::now() < until,
            "the closed connection is still counted open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and the next request makes a new connection.
    assert_eq!(
        conn.get(&url("/b")).await.expect("GET").status,
        StatusCode::OK
    );
    assert_eq!(backend.connections.load(Ordering::SeqCst), before + 1);
    assert_eq!(open().await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_mid_upload_resets_the_backend_stream() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let ca = Ca::new("spooky test CA");
    let ca_file = dir.0.join("ca.pem");
    ca.write(&ca_file);
    let leaf = ca.issue(&dir, "backend", &["127.0.0.1"]);
    let backend = H3Backend::start(&leaf, None).await;
    let tls = format!("ca_file = \"{}\"", ca_file.display());
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &cert.toml(),
        &config(&tls, backend.addr),
    ));
    let conn = connect(&cert.client(), &proxy).await;
    let mut send = conn.send.clone();
    let mut stream = send
        .send_request(
            // No content-length: only the stream's end says where the body ends, so a cut
            // body passed on as ended would look whole.
            Request::post(url("/echo")).body(()).expect("request"),
        )
        .await
        .expect("request stream");
    stream
        .send_data(Bytes::from(vec![b'x'; 100_000]))
        .await
        .expect("part of the body");
    eventually("the upload to reach the backend", || {
        backend.started.load(Ordering::SeqCst) == 1
    })
    .await;
    stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
    drop(stream);
    eventually("the backend's stream to be reset", || {
        backend.reset.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(
        backend.whole_bodies.load(Ordering::SeqCst),
        0,
        "the backend took a cut body for a whole one"
    );
    assert_eq!(backend.answered.load(Ordering::SeqCst), 0);
    // Everyone else is still served.
    assert_eq!(
        conn.get(&url("/after")).await.expect("GET").status,
        StatusCode::OK
    );
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_reach_an_h3_backend() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let ca = Ca::new("spooky test CA");
    let ca_file = dir.0.join("ca.pem");
    ca.write(&ca_file);
    let leaf = ca.issue(&dir, "backend", &["127.0.0.1"]);
    let backend = H3Backend::start(&leaf, None).await;
    let tls = format!("ca_file = \"{}\"", ca_file.display());
    let toml = config(&tls, backend.addr).replace(
        "[upstreams.app]\n",
        "[upstreams.app]\nhealth = { path = \"/health\", interval = \"50ms\", jitter = \"10ms\", timeout = \"1s\", healthy = 1, unhealthy = 2 }\n",
    );
    let proxy = Proxy::start(&pipeline_with(r#"["h3"]"#, &cert.toml(), &toml));
    let passes = || {
        let proxy = &proxy;
        async move {
            let (_, metrics) = proxy.admin_get("/metrics").await;
            metrics
                .lines()
                .find(|l| {
                    l.starts_with("spooky_health_checks_total{") && l.contains("result=\"pass\"")
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        }
    };
    let until = Instant::now() + Duration::from_secs(10);
    while passes().await < 3.0 {
        assert!(
            Instant::now() < until,
            "no passing HTTP/3 health checks: {}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The checks share one connection of their own.
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
    let conn = connect(&cert.client(), &proxy).await;
    assert_eq!(
        conn.get(&url("/v")).await.expect("GET").status,
        StatusCode::OK
    );
    assert_eq!(backend.connections.load(Ordering::SeqCst), 2);
}
