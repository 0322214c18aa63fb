//! Active and passive health against real hyper backends: a backend whose health endpoint
//! fails (or hangs past the timeout) leaves balancing and comes back; checks of one backend
//! never wait for another's; with every backend down, health is ignored rather than refusing
//! all. Consecutive 5xx or connect failures eject a backend for a time, never the whole
//! upstream.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::proxy::{Proxy, pipeline_with};
use support::{TempDir, TestCert, connect, spooky};

/// `/health` answers the status set in `health` (0: never answers); anything else is
/// answered `status` (200 unless set) with body `NAME`, counted in `served`.
struct Fleet {
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    status: Arc<AtomicU16>,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fleet {
    async fn start(name: &'static str) -> Fleet {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let health = Arc::new(AtomicU16::new(200));
        let status = Arc::new(AtomicU16::new(200));
        let served = Arc::new(AtomicUsize::new(0));
        let (h, st, s) = (health.clone(), status.clone(), served.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (h, st, s) = (h.clone(), st.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (h, st, s) = (h.clone(), st.clone(), s.clone());
                        async move {
                            if req.uri().path() == "/health" {
                                let status = h.load(Ordering::SeqCst);
                                if status == 0 {
                                    std::future::pending::<()>().await;
                                }
                                let resp = Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .expect("response");
                                return Ok::<_, Infallible>(resp);
                            }
                            s.fetch_add(1, Ordering::SeqCst);
                            let resp = Response::builder()
                                .status(st.load(Ordering::SeqCst))
                                .body(Full::new(Bytes::from(name)))
                                .expect("response");
                            Ok(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Fleet {
            addr,
            health,
            status,
            served,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

fn config(a: &Fleet, b: &Fleet, health: &str) -> String {
    format!(
        "[[routes]]\nname = \"app\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n\n[upstreams.app]\nhealth = {health}\nbackends = [ {{ url = \"{}\" }}, {{ url = \"{}\" }} ]\n",
        a.url(),
        b.url()
    )
}

const FAST: &str = r#"{ path = "/health", interval = "50ms", jitter = "10ms", timeout = "200ms", healthy = 2, unhealthy = 2 }"#;

async fn gauge(proxy: &Proxy, backend: &Fleet, want: f64) {
    proxy
        .wait_metric(
            "spooky_backend_healthy",
            &[("backend", &backend.url())],
            |v| v == want,
        )
        .await;
}

async fn send(proxy: &Proxy, cert: &TestCert, n: usize) {
    let conn = connect(&cert.client(), proxy).await;
    for _ in 0..n {
        let r = conn.get("https://localhost/work").await.expect("response");
        assert_eq!(r.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_leaves_balancing_and_comes_back() {
    let (a, b) = (Fleet::start("a").await, Fleet::start("b").await);
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &cert.toml(),
        &config(&a, &b, FAST),
    ));
    // Both healthy: round-robin shares the traffic.
    send(&proxy, &cert, 10).await;
    assert_eq!((a.served(), b.served()), (5, 5));
    // b's health endpoint fails: after two failed checks it is out, and gets nothing.
    b.health.store(503, Ordering::SeqCst);
    gauge(&proxy, &b, 0.0).await;
    send(&proxy, &cert, 20).await;
    assert_eq!((a.served(), b.served()), (25, 5));
    assert!(
        proxy
            .metric(
                "spooky_health_checks_total",
                &[("backend", &b.url()), ("result", "fail")]
            )
            .await
            >= 2.0
    );
    // Healthy again: after two passing checks it is back in.
    b.health.store(200, Ordering::SeqCst);
    gauge(&proxy, &b, 1.0).await;
    send(&proxy, &cert, 20).await;
    assert_eq!((a.served(), b.served()), (35, 15));
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_check_fails_by_its_timeout_without_delaying_the_others() {
    let (a, b) = (Fleet::start("a").await, Fleet::start("b").await);
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &cert.toml(),
        &config(&a, &b, FAST),
    ));
    let count = |backend: &Fleet, result: &'static str| {
        let url = backend.url();
        let proxy = &proxy;
        async move {
            proxy
                .metric(
                    "spooky_health_checks_total",
                    &[("backend", &url), ("result", result)],
                )
                .await
        }
    };
    // b never answers its checks: the 200 ms timeout fails them, and takes it out.
    let a_before = count(&a, "pass").await;
    let b_before = count(&b, "fail").await;
    b.health.store(0, Ordering::SeqCst);
    proxy
        .wait_metric(
            "spooky_health_checks_total",
            &[("backend", &b.url()), ("result", "fail")],
            |v| v >= b_before + 3.0,
        )
        .await;
    gauge(&proxy, &b, 0.0).await;
    // Each of b's failed checks took 250 ms or more (interval + timeout); a's checks went on
    // every 50-60 ms meanwhile. Checks run one after another would have given a about as
    // many passes as b has failures.
    let a_passes = count(&a, "pass").await - a_before;
    assert!(
        a_passes >= 6.0,
        "a passed only {a_passes} checks while b failed 3"
    );
    send(&proxy, &cert, 10).await;
    assert_eq!(b.served(), 0);
    assert_eq!(a.served(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_backend_down_health_is_ignored() {
    let (a, b) = (Fleet::start("a").await, Fleet::start("b").await);
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    a.health.store(500, Ordering::SeqCst);
    b.health.store(500, Ordering::SeqCst);
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &cert.toml(),
        &config(&a, &b, FAST),
    ));
    gauge(&proxy, &a, 0.0).await;
    gauge(&proxy, &b, 0.0).await;
    // A health endpoint that lies must not take the whole upstream down.
    send(&proxy, &cert, 10).await;
    assert_eq!((a.served(), b.served()), (5, 5));
}

/// Sends `n` GETs; returns how many were answered 200.
async fn statuses(proxy: &Proxy, cert: &TestCert, n: usize) -> usize {
    let conn = connect(&cert.client(), proxy).await;
    let mut ok = 0;
    for _ in 0..n {
        let r = conn.get("https://localhost/work").await.expect("response");
        ok += usize::from(r.status == 200);
    }
    ok
}

fn passive(a: &str, b: &str, outlier: &str) -> String {
    format!(
        "[[routes]]\nname = \"app\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n\n[upstreams.app]\noutlier = {outlier}\nbackends = [ {{ url = \"{a}\" }}, {{ url = \"{b}\" }} ]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_eject_a_backend_until_its_time_is_up() {
    let (a, b) = (Fleet::start("a").await, Fleet::start("b").await);
    b.status.store(500, Ordering::SeqCst);
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let outlier = r#"{ consecutive_5xx = 3, base_ejection = "500ms", max_ejected_percent = 50 }"#;
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &cert.toml(),
        &passive(&a.url(), &b.url(), outlier),
    ));
    // Round-robin: b answers 500 three times in six requests, and is out.
    assert_eq!(statuses(&proxy, &cert, 6).await, 3);
    assert_eq!(b.served(), 3);
    gauge_of(&proxy, "spooky_backend_ejected", &b, 1.0).await;
    // While out, it gets nothing.
    assert_eq!(statuses(&proxy, &cert, 10).await, 10);
    assert_eq!((a.served(), b.served()), (13, 3));
    assert_eq!(
        proxy
            .metric("spooky_outlier_ejections_total", &[("backend", &b.url())])
            .await,
        1.0
    );
    // It comes back by itself when its time is up (the timer is the behaviour under test).
    b.status.store(200, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(statuses(&proxy, &cert, 10).await, 10);
    assert!(b.served() > 3, "b is back in balancing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_never_empties_an_upstream() {
    let (a, b) = (Fleet::start("a").await, Fleet::start("b").await);
    a.status.store(503, Ordering::SeqCst);
    b.status.store(503, Ordering::SeqCst);
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let outlier = r#"{ consecutive_5xx = 2, base_ejection = "30s", max_ejected_percent = 100 }"#;
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &cert.toml(),
        &passive(&a.url(), &b.url(), outlier),
    ));
    statuses(&proxy, &cert, 20).await;
    // One of them was ejected; the other keeps serving (503s and all): never both out.
    let ejections = proxy
        .metric("spooky_outlier_ejections_total", &[("backend", &a.url())])
        .await
        + proxy
            .metric("spooky_outlier_ejections_total", &[("backend", &b.url())])
            .await;
    assert_eq!(ejections, 1.0);
    assert_eq!(a.served() + b.served(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_refusing_connections_is_ejected_and_no_longer_tried() {
    let a = Fleet::start("a").await;
    let dead = format!("http://{}", support::dead_addr());
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let outlier = r#"{ consecutive_failures = 2, base_ejection = "30s" }"#;
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &cert.toml(),
        &passive(&a.url(), &dead, outlier),
    ));
    // Connect failures are retried on a (hedge-retry), so every request succeeds.
    assert_eq!(statuses(&proxy, &cert, 10).await, 10);
    let labels = [("backend", dead.as_str()), ("class", "connect_error")];
    let refused = || proxy.metric("spooky_upstream_requests_total", &labels);
    assert_eq!(refused().await, 2.0, "tried twice, then ejected");
    assert_eq!(statuses(&proxy, &cert, 10).await, 10);
    assert_eq!(refused().await, 2.0, "not tried while ejected");
    assert_eq!(a.served(), 20);
}

async fn gauge_of(proxy: &Proxy, name: &str, backend: &Fleet, want: f64) {
    proxy
        .wait_metric(name, &[("backend", &backend.url())], |v| v == want)
        .await;
}

#[test]
fn bad_health_settings_are_errors_with_their_key() {
    let dir = TempDir::new();
    let file = dir.0.join("p.toml");
    let text = pipeline_with(
        r#"["h3"]"#,
        "",
        "[[routes]]\nname = \"app\"\nupstream = \"app\"\n\n[upstreams.app]\nhealth = { path = \"health\", method = \"get\", unhealthy = 0, expect = [999] }\noutlier = { max_ejected_percent = 101 }\nbackends = [ { url = \"http://127.0.0.1:1\" } ]\n",
    );
    std::fs::write(&file, text).expect("write");
    let (code, _, err) = spooky(&["check", &file.display().to_string()]);
    assert_eq!(code, 64, "{err}");
    for (key, message) in [
        ("upstreams.app.health.path", "is not a path"),
        ("upstreams.app.health.method", "is not an HTTP method"),
        ("upstreams.app.health.unhealthy", "expected 1 or more"),
        ("upstreams.app.health.expect", "999 is not a status code"),
        (
            "upstreams.app.outlier.max_ejected_percent",
            "expected 0..=100",
        ),
    ] {
        assert!(
            err.contains(&format!(": {key}: ")) && err.contains(message),
            "{key}: {err}"
        );
    }
}
