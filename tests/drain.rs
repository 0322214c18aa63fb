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
    // /ready turning 503 is the signal that draining has begun.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while proxy.admin_get("/ready").await.0 != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never started draining"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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
