//! Hedge-retry's attempt loop with request bodies: an idempotent request whose first backend
//! cannot be reached is sent to another backend *with its body* (kept for replay up to
//! `replay_body_limit`), and a body that outgrows the bound while forwarded is counted.

mod support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use support::backend::Backend;
use support::proxy::{Proxy, pipeline};
use support::{TempDir, TestCert, connect, dead_addr, url};

fn body(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_is_retried_on_another_backend_with_its_whole_body() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let dead = dead_addr();
    let rest = format!(
        r#"
[stages.hedge-retry]
retries = 1
replay_body_limit = "16KiB"

[[routes]]
name = "app"
match = {{ path_prefix = "/" }}
upstream = "app"

[upstreams.app]
backends = [ {{ url = "http://{dead}" }}, {{ url = "{}" }} ]
"#,
        backend.url()
    );
    let proxy = Proxy::start(&pipeline(&cert.toml(), &rest));
    let client = cert.client();
    let conn = connect(&client, &proxy).await;
    let conn = &conn;
    let put = |n: usize| async move {
        let req = Request::builder()
            .method(Method::PUT)
            .uri(url("/echo/put"))
            .header("content-length", n)
            .body(())
            .expect("req");
        (n, conn.request(req, Some(body(n))).await.expect("PUT"))
    };
    // Round-robin starts at the dead backend: the first PUT fails to connect there and is
    // sent again, body and all, to the live one.
    let (n, r) = put(10 * 1024).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, body(n), "the retried PUT carried its whole body");
    assert_eq!(
        proxy
            .metric(
                "spooky_upstream_requests_total",
                &[("upstream", "app"), ("class", "connect_error")],
            )
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric("spooky_request_body_replay_overflow_total", &[])
            .await,
        0.0
    );
    // A body larger than the bound is forwarded as usual; it could not be sent again, and
    // the metric says so.
    let (n, r) = put(40 * 1024).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, body(n));
    assert_eq!(
        proxy
            .metric("spooky_request_body_replay_overflow_total", &[])
            .await,
        1.0
    );
    // A POST is not idempotent: its connect failure is final (502), whatever its body.
    let post = Request::builder()
        .method(Method::POST)
        .uri(url("/echo/post"))
        .body(())
        .expect("req");
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let r = conn
            .request(post.clone_head(), Some(Bytes::from_static(b"data")))
            .await
            .expect("POST");
        statuses.push(r.status);
    }
    statuses.sort();
    assert_eq!(statuses, vec![StatusCode::OK, StatusCode::BAD_GATEWAY]);
    proxy.assert_caps_zero().await;
}

trait CloneHead {
    fn clone_head(&self) -> Request<()>;
}

impl CloneHead for Request<()> {
    fn clone_head(&self) -> Request<()> {
        let mut r = Request::new(());
        *r.method_mut() = self.method().clone();
        *r.uri_mut() = self.uri().clone();
        *r.headers_mut() = self.headers().clone();
        r
    }
}
