//! Upstream TLS and HTTP/2: verified against a private CA (ca_file, ca_dir), ALPN h2 or
//! http/1.1 per backend, h2c, mixed protocols in one upstream, untrusted certificate → 502.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::service::service_fn;
use support::proxy::{Proxy, pipeline};
use support::tls_backend::{Ca, h2c_backend, https_backend, serve_h2c};
use support::{TempDir, TestCert, connect, url};
use tokio::sync::{Notify, Semaphore};

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
        // More requests go on the same TLS connection (over HTTP/1.1, Spooky's own client
        // side reads TLS 1.3's session tickets along with the answers).
        for i in 0..4 {
            let r = conn.get(&url(&format!("/w{i}"))).await.expect("GET");
            let body = String::from_utf8_lossy(&r.body).to_string();
            assert!(
                body.starts_with(&format!("tls-backend {want} /w{i} ")),
                "{tls} {protocol}: {body}"
            );
        }
        assert_eq!(
            proxy
                .metric(
                    "spooky_upstream_connects_total",
                    &[("upstream", "app"), ("result", "ok")],
                )
                .await,
            1.0,
            "{tls} {protocol}: one backend connection for five requests"
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

/// An h2c backend that counts connections and requests in flight, and holds every request
/// until the test releases it.
struct Held {
    connections: AtomicUsize,
    inflight: AtomicUsize,
    most: AtomicUsize,
    arrived: Notify,
    release: Semaphore,
}

async fn held_h2c_backend() -> (std::net::SocketAddr, Arc<Held>) {
    let held = Arc::new(Held {
        connections: AtomicUsize::new(0),
        inflight: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
        arrived: Notify::new(),
        release: Semaphore::new(0),
    });
    let h = held.clone();
    let addr = serve_h2c(move || {
        h.connections.fetch_add(1, Ordering::SeqCst);
        let h = h.clone();
        service_fn(move |_req: http::Request<hyper::body::Incoming>| {
            let h = h.clone();
            async move {
                let now = h.inflight.fetch_add(1, Ordering::SeqCst) + 1;
                h.most.fetch_max(now, Ordering::SeqCst);
                h.arrived.notify_waiters();
                if let Ok(p) = h.release.acquire().await {
                    p.forget();
                }
                h.inflight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                    Bytes::from_static(b"held"),
                )))
            }
        })
    })
    .await;
    (addr, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_backend_multiplexes_one_connection_capped_by_max_inflight() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let (addr, backend) = held_h2c_backend().await;
    let rest = format!(
        r#"
[[routes]]
name = "app"
match = {{ path_prefix = "/" }}
upstream = "app"

[upstreams.app]
max_inflight = 4
backends = [ {{ url = "http://{}", protocol = "h2c", max_inflight = 4 }} ]
"#,
        addr
    );
    let proxy = Proxy::start(&pipeline(&cert.toml(), &rest));
    let client = cert.client();
    let conn = Arc::new(connect(&client, &proxy).await);
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let conn = conn.clone();
            tokio::spawn(async move { conn.get(&url("/held")).await.map(|r| r.status) })
        })
        .collect();
    // Four reach the backend at once; the other six wait in the queue stage.
    support::wait_until(
        &backend.arrived,
        "four requests in flight at the backend",
        || backend.inflight.load(Ordering::SeqCst) >= 4,
    )
    .await;
    proxy
        .wait_metric("spooky_route_queue_waiting", &[], |v| v == 6.0)
        .await;
    backend.release.add_permits(10);
    for c in calls {
        assert_eq!(c.await.expect("task").expect("GET"), StatusCode::OK);
    }
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        1,
        "every request went over one multiplexed HTTP/2 connection"
    );
    assert_eq!(
        backend.most.load(Ordering::SeqCst),
        4,
        "never more concurrent streams than max_inflight"
    );
    proxy.assert_caps_zero().await;
}
