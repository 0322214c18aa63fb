//! Graceful drain: SIGTERM during a slow response lets it finish, refuses new work, exits 0.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::StatusCode;
use support::backend::Backend;
use support::proxy::{Proxy, app_upstream, pipeline};
use support::{TempDir, TestCert, connect, url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_refuses_new_and_exits_0() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let rest = app_upstream(&backend.url());
    let mut proxy = Proxy::start(&pipeline(&cert.toml(), &rest));
    let client = cert.client();
    let conn = Arc::new(connect(&client, &proxy).await);
    let slow = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.get(&url("/hold/slow")).await.expect("slow request") })
    };
    backend.state.wait_held(1).await;
    assert_eq!(proxy.admin_get("/ready").await.0, 200);

    proxy.sigterm();
    proxy.wait_until_not_ready().await;
    // New work is refused: a new connection fails, and a new request on the old connection
    // does not reach the backend.
    let fresh = client.connect(proxy.h3_addr, "localhost").await;
    assert!(
        fresh.is_err(),
        "a new connection was accepted while draining"
    );
    let late = conn.get(&url("/late")).await;
    // Either a 503 from the proxy or a rejection at the HTTP/3 layer (after GOAWAY).
    if let Ok(r) = late {
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        backend.state.seen.load(Ordering::SeqCst),
        1,
        "nothing new reached the backend"
    );
    assert!(!slow.is_finished());

    // The in-flight response completes in full, then the daemon exits 0.
    backend.state.release(1);
    let resp = slow.await.expect("task");
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(&resp.body[..], b"released /hold/slow\n");
    let status = tokio::task::spawn_blocking(move || proxy.wait_exit())
        .await
        .expect("join");
    assert_eq!(status.code(), Some(0));
}

/// Draining waits for a TCP request in flight however long it takes within `drain_timeout`:
/// the connection's head timer must not cut it (it bounded the wait once, cutting at 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_tcp_request_outlive_header_timeout() {
    use support::tcp::{Sender, body};
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let rest = format!(
        "[stages.ingress]\nheader_timeout = \"1s\"\n\n{}",
        app_upstream(&backend.url())
    );
    let mut proxy = Proxy::start(&support::proxy::pipeline_with(
        r#"["h3", "h2"]"#,
        &cert.toml(),
        &rest,
    ));
    let tcp = proxy.tcp_addr.expect("tcp");
    let mut sender = Sender::connect(tcp, std::slice::from_ref(&cert.der), b"h2").await;
    let slow = tokio::spawn(async move {
        let req = http::Request::get(url("/hold/slow"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("req");
        let resp = sender.send(req).await;
        (resp.status(), body(resp).await.0)
    });
    backend.state.wait_held(1).await;
    proxy.sigterm();
    proxy.wait_until_not_ready().await;
    // Time passes beyond header_timeout with the request still held: that is the point.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(!slow.is_finished(), "the held request is still in flight");
    backend.state.release(1);
    let (status, answer) = slow.await.expect("task");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&answer[..], b"released /hold/slow\n");
    let status = tokio::task::spawn_blocking(move || proxy.wait_exit())
        .await
        .expect("join");
    assert_eq!(status.code(), Some(0));
}
