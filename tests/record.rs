//! The end-of-exchange record is emitted exactly once for every way an exchange ends, on
//! HTTP/3, HTTP/2 and HTTP/1.1: a proxied response, a direct response, a refusal, a backend
//! body that breaks mid-response, a client that leaves mid-body, and a client that leaves
//! while the backend holds the head. Each record counts once in
//! `spooky_exchanges_ended_total{outcome}`; once every cap is back to zero every exchange has
//! ended, so the counts must equal the exchanges made — a record emitted twice, or never,
//! would show.

mod support;

use bytes::Buf;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use support::backend::Backend;
use support::proxy::{Proxy, hello_and_app, pipeline_with};
use support::tcp::{Sender, get};
use support::{TempDir, TestCert, connect, url};

const ENDED: &str = "spooky_exchanges_ended_total";

struct Setup {
    proxy: Proxy,
    backend: Backend,
    cert: TestCert,
    _dir: TempDir,
}

async fn ended(proxy: &Proxy, outcome: &str) -> f64 {
    proxy.metric(ENDED, &[("outcome", outcome)]).await
}

/// After the six endings of one protocol: every cap back to zero, then exactly
/// `complete`/`upstream_failed`/`cancelled` records more than `before`, and nothing else.
async fn assert_recorded(s: &Setup, before: [f64; 4], want: [f64; 4], what: &str) {
    s.proxy.assert_caps_zero().await;
    let outcomes = ["complete", "upstream_failed", "cancelled", "reset"];
    for (i, o) in outcomes.iter().enumerate() {
        let target = before[i] + want[i];
        let got = s
            .proxy
            .wait_metric(ENDED, &[("outcome", o)], |v| v >= target)
            .await;
        assert_eq!(got, target, "{what}: {o} records");
    }
}

async fn snapshot(proxy: &Proxy) -> [f64; 4] {
    [
        ended(proxy, "complete").await,
        ended(proxy, "upstream_failed").await,
        ended(proxy, "cancelled").await,
        ended(proxy, "reset").await,
    ]
}

async fn setup() -> Setup {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &cert.toml(),
        &hello_and_app(&backend.url()),
    ));
    Setup {
        proxy,
        backend,
        cert,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ending_is_recorded_exactly_once_over_h2_and_http1() {
    let s = setup().await;
    let tcp = s.proxy.tcp_addr.expect("tcp listener");
    let roots = [s.cert.der.clone()];
    let mut held = 0;
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let what = String::from_utf8_lossy(alpn).into_owned();
        let before = snapshot(&s.proxy).await;
        // Proxied, direct, refused (a NUL in the path): each a whole response.
        for (path, status) in [
            ("/ok", StatusCode::OK),
            ("/hello", StatusCode::OK),
            ("/bad%00", StatusCode::BAD_REQUEST),
        ] {
            let mut c = Sender::connect(tcp, &roots, alpn).await;
            let resp = c.send(get(path)).await;
            assert_eq!(resp.status(), status, "{what} {path}");
            resp.into_body().collect().await.expect("body");
        }
        // The backend's body breaks after its first chunk.
        let mut c = Sender::connect(tcp, &roots, alpn).await;
        let mut resp = c.send(get("/broken")).await;
        assert_eq!(resp.status(), StatusCode::OK, "{what} /broken");
        resp.body_mut()
            .frame()
            .await
            .expect("frame")
            .expect("first chunk");
        s.backend.state.release(1);
        assert!(
            resp.into_body().collect().await.is_err(),
            "{what}: cut short"
        );
        // The client leaves mid-body.
        let mut c = Sender::connect(tcp, &roots, alpn).await;
        let mut resp = c.send(get("/drip/record")).await;
        let first = resp.body_mut().frame().await.expect("frame").expect("data");
        assert_eq!(
            first.into_data().ok().as_deref(),
            Some(&b"first chunk\n"[..])
        );
        drop((resp, c));
        held += 1;
        s.backend.state.wait_finished(held).await;
        // The client leaves while the backend holds the head.
        let mut c = Sender::connect(tcp, &roots, alpn).await;
        let pending = tokio::spawn(async move {
            let _ = c.try_send(get("/hold/record")).await;
        });
        held += 1;
        s.backend.state.wait_held(held).await;
        pending.abort();
        let _ = pending.await;
        s.backend.state.wait_finished(held).await;
        assert_recorded(&s, before, [3.0, 1.0, 2.0, 0.0], &what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ending_is_recorded_exactly_once_over_h3() {
    let s = setup().await;
    let client = s.cert.client();
    let before = snapshot(&s.proxy).await;
    let conn = connect(&client, &s.proxy).await;
    for (path, status) in [
        ("/ok", StatusCode::OK),
        ("/hello", StatusCode::OK),
        ("/bad%00", StatusCode::BAD_REQUEST),
    ] {
        let resp = conn.get(&url(path)).await.expect(path);
        assert_eq!(resp.status, status, "{path}");
    }
    // The backend's body breaks: the client's stream is reset after the head.
    let mut send = conn.send.clone();
    let mut st = send
        .send_request(Request::get(url("/broken")).body(()).expect("req"))
        .await
        .expect("send");
    let _ = st.finish().await;
    assert_eq!(
        st.recv_response().await.expect("head").status(),
        StatusCode::OK
    );
    st.recv_data().await.expect("data").expect("first chunk");
    s.backend.state.release(1);
    let mut cut = false;
    for _ in 0..4 {
        match st.recv_data().await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "a cut response is not a complete one");
    // A malformed head (a connection-specific field) is reset, not answered.
    let mut send = conn.send.clone();
    let mut req = Request::get(url("/ok")).body(()).expect("req");
    req.headers_mut()
        .insert("connection", http::HeaderValue::from_static("close"));
    let mut st = send.send_request(req).await.expect("send");
    let _ = st.finish().await;
    assert!(st.recv_response().await.is_err(), "malformed head is reset");
    // The client leaves mid-body (its connection closes).
    let dripping = connect(&client, &s.proxy).await;
    let mut send = dripping.send.clone();
    let mut st = send
        .send_request(Request::get(url("/drip/record")).body(()).expect("req"))
        .await
        .expect("send");
    let _ = st.finish().await;
    st.recv_response().await.expect("head");
    let first = st.recv_data().await.expect("data").expect("first chunk");
    assert_eq!(first.chunk(), b"first chunk\n");
    dripping.close();
    s.backend.state.wait_finished(1).await;
    // The client leaves while the backend holds the head.
    let holding = connect(&client, &s.proxy).await;
    let mut send = holding.send.clone();
    let pending = tokio::spawn(async move {
        let mut st = send
            .send_request(Request::get(url("/hold/record")).body(()).expect("req"))
            .await
            .expect("send");
        let _ = st.finish().await;
        let _ = st.recv_response().await;
    });
    s.backend.state.wait_held(2).await;
    holding.close();
    let _ = pending.await;
    s.backend.state.wait_finished(2).await;
    assert_recorded(&s, before, [3.0, 1.0, 2.0, 1.0], "h3").await;
}
