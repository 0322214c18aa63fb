//! Retries, retry budgets and hedging against the fault backend (real hyper backends on
//! 127.0.0.1, a real HTTP/3 client): which backend received what, which status the client
//! got, which metric moved, and that every cap is back to zero afterwards.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use support::fault::{Fault, Mode, config};
use support::proxy::{Proxy, pipeline};
use support::{TempDir, TestCert, connect, url};

async fn retries(proxy: &Proxy, on: &str) -> f64 {
    proxy
        .metric("spooky_retries_total", &[("upstream", "app"), ("on", on)])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_on_the_other_backend() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let a = Fault::start("a", Mode::status(503)).await;
    let b = Fault::start("b", Mode::OK).await;
    let retry =
        r#"retry = { attempts = 2, retry_on = ["503"], backoff = { base = "1ms", max = "5ms" } }"#;
    let proxy = Proxy::start(&pipeline(&cert.toml(), &config(&[&a, &b], retry, "")));
    let conn = connect(&cert.client(), &proxy).await;
    for _ in 0..4 {
        let r = conn.get(&url("/x")).await.expect("response");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, Bytes::from_static(b"b"));
    }
    // Round-robin sent two of the four first attempts to `a`; each went on to `b`.
    assert_eq!(a.received(), 2);
    assert_eq!(b.received(), 4);
    assert_eq!(retries(&proxy, "503").await, 2.0);
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_attempt_is_answered_503_the_client_gets_the_backends_answer() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let a = Fault::start("a", Mode::status(503)).await;
    let b = Fault::start("b", Mode::status(503)).await;
    let retry = r#"retry = { attempts = 3, retry_on = ["gateway-error"], backoff = { base = "1ms", max = "5ms" } }"#;
    let proxy = Proxy::start(&pipeline(&cert.toml(), &config(&[&a, &b], retry, "")));
    let conn = connect(&cert.client(), &proxy).await;
    let r = conn.get(&url("/x")).await.expect("response");
    // Three attempts: a, b, then a again (no untried backend is left); the last answer is
    // the backend's own 503, not one Spooky made.
    assert_eq!(r.status, 503);
    assert!(r.headers.get("proxy-status").is_none(), "{:?}", r.headers);
    assert_eq!(a.received() + b.received(), 3);
    assert_eq!(retries(&proxy, "gateway-error").await, 2.0);
    proxy.assert_caps_zero().await;
}

async fn post(conn: &spooky::h3client::H3Conn) -> spooky::h3client::Response {
    let req = Request::builder()
        .method(Method::POST)
        .uri(url("/orders"))
        .header("content-length", "5")
        .body(())
        .expect("request");
    conn.request(req, Some(Bytes::from_static(b"order")))
        .await
        .expect("response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_retried_only_where_the_route_opts_in() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let a = Fault::start("a", Mode::status(503)).await;
    let b = Fault::start("b", Mode::OK).await;
    let retry =
        r#"retry = { attempts = 2, retry_on = ["503"], backoff = { base = "1ms", max = "5ms" } }"#;
    {
        let proxy = Proxy::start(&pipeline(&cert.toml(), &config(&[&a, &b], retry, "")));
        let conn = connect(&cert.client(), &proxy).await;
        let r = post(&conn).await;
        assert_eq!(
            r.status, 503,
            "a POST that reached a backend is not sent twice"
        );
        assert_eq!((a.received(), b.received()), (1, 0));
    }
    let proxy = Proxy::start(&pipeline(
        &cert.toml(),
        &config(&[&a, &b], retry, "retry_non_idempotent = true"),
    ));
    let conn = connect(&cert.client(), &proxy).await;
    let r = post(&conn).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, Bytes::from_static(b"b"));
    assert_eq!((a.received(), b.received()), (2, 1));
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_backend_is_given_up_after_the_per_try_timeout_and_sees_it() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let a = Fault::start("a", Mode::Hang).await;
    let b = Fault::start("b", Mode::OK).await;
    let retry = r#"retry = { attempts = 2, retry_on = ["timeout"], per_try_timeout = "200ms" }"#;
    let proxy = Proxy::start(&pipeline(&cert.toml(), &config(&[&a, &b], retry, "")));
    let conn = connect(&cert.client(), &proxy).await;
    let r = conn.get(&url("/x")).await.expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, Bytes::from_static(b"b"));
    // The hanging backend's request was given up, and it saw that.
    a.wait("the hanging backend sees the cancellation", |_, c| c == 1)
        .await;
    assert_eq!(retries(&proxy, "timeout").await, 1.0);
    // Without "timeout" in retry_on, the per-try timeout answers 504.
    drop(proxy);
    let retry = r#"retry = { attempts = 2, retry_on = ["503"], per_try_timeout = "200ms" }"#;
    let proxy = Proxy::start(&pipeline(&cert.toml(), &config(&[&a], retry, "")));
    let conn = connect(&cert.client(), &proxy).await;
    let r = conn.get(&url("/x")).await.expect("response");
    assert_eq!(r.status, 504);
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_retried_when_asked() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let a = Fault::start("a", Mode::Reset).await;
    let b = Fault::start("b", Mode::OK).await;
    let retry = r#"retry = { attempts = 2, retry_on = ["reset"], backoff = { base = "1ms", max = "5ms" } }"#;
    let proxy = Proxy::start(&pipeline(&cert.toml(), &config(&[&a, &b], retry, "")));
    let conn = connect(&cert.client(), &proxy).await;
    for _ in 0..2 {
        let r = conn.get(&url("/x")).await.expect("response");
        assert_eq!(r.status, 200);
    }
    assert_eq!(a.received(), 1);
    assert_eq!(retries(&proxy, "reset").await, 1.0);
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_budget_stops_retries() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let a = Fault::start("a", Mode::status(503)).await;
    let b = Fault::start("b", Mode::status(503)).await;
    // 10 % of requests, no floor: the tenth request is the first to earn a retry.
    let retry = r#"retry = { attempts = 2, retry_on = ["503"], backoff = { base = "1ms", max = "1ms" }, budget = { ratio = 0.1, min_per_second = 0, window = "60s" } }"#;
    let proxy = Proxy::start(&pipeline(&cert.toml(), &config(&[&a, &b], retry, "")));
    let conn = connect(&cert.client(), &proxy).await;
    for _ in 0..10 {
        let r = conn.get(&url("/x")).await.expect("response");
        assert_eq!(r.status, 503);
    }
    assert_eq!(retries(&proxy, "503").await, 1.0);
    assert_eq!(
        proxy
            .metric(
                "spooky_retry_budget_exhausted_total",
                &[("upstream", "app")]
            )
            .await,
        9.0
    );
    assert_eq!(a.received() + b.received(), 11);
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_wins_against_a_slow_backend_which_sees_the_cancellation() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let slow = Fault::start("slow", Mode::Hang).await;
    let fast = Fault::start("fast", Mode::OK).await;
    let proxy = Proxy::start(&pipeline(
        &cert.toml(),
        &config(&[&slow, &fast], "", r#"hedge = { delay = "50ms" }"#),
    ));
    let conn = connect(&cert.client(), &proxy).await;
    // Round-robin sends the first request to the hanging backend: the hedge to the other
    // one answers, and the hanging attempt is cancelled.
    let r = tokio::time::timeout(Duration::from_secs(10), conn.get(&url("/x")))
        .await
        .expect("the hedge answers")
        .expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, Bytes::from_static(b"fast"));
    slow.wait("the losing attempt is cancelled at the backend", |r, c| {
        r == 1 && c == 1
    })
    .await;
    let hedges = |name: &'static str| {
        let proxy = &proxy;
        let fast = fast.url();
        async move {
            proxy
                .metric(name, &[("upstream", "app"), ("backend", &fast)])
                .await
        }
    };
    assert_eq!(hedges("spooky_hedges_total").await, 1.0);
    assert_eq!(hedges("spooky_hedges_won_total").await, 1.0);
    // The next request goes to the fast backend first and is answered before any hedge.
    let r = conn.get(&url("/x")).await.expect("response");
    assert_eq!(r.body, Bytes::from_static(b"fast"));
    assert_eq!(hedges("spooky_hedges_total").await, 1.0);
    proxy.assert_caps_zero().await;
    assert_eq!(slow.received(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percentile_hedge_waits_for_enough_samples_then_follows_the_latency() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let a = Fault::start("a", Mode::OK).await;
    let b = Fault::start("b", Mode::OK).await;
    let proxy = Proxy::start(&pipeline(
        &cert.toml(),
        &config(&[&a, &b], "", r#"hedge = { delay = "p90" }"#),
    ));
    let conn = connect(&cert.client(), &proxy).await;
    let hedges = |name: &'static str| {
        let proxy = &proxy;
        async move { proxy.metric(name, &[("upstream", "app")]).await }
    };
    // Fewer than 20 answers: no percentile yet, so never a hedge.
    for _ in 0..19 {
        assert_eq!(conn.get(&url("/x")).await.expect("response").status, 200);
    }
    assert_eq!(hedges("spooky_hedges_total").await, 0.0);
    // Enough for a percentile. From here a quick request slower than the p90 may be hedged
    // (one in ten is, by definition), so what follows is counted from a baseline.
    for _ in 0..11 {
        assert_eq!(conn.get(&url("/x")).await.expect("response").status, 200);
    }
    proxy.assert_caps_zero().await;
    let (won, cancelled) = (hedges("spooky_hedges_won_total").await, a.cancelled());
    // Now `a` hangs. Round-robin sends the 31st request to `a` (hedges do not take turns):
    // it is hedged to `b` after about the p90, and `b` answers.
    a.set(Mode::Hang);
    let r = tokio::time::timeout(Duration::from_secs(10), conn.get(&url("/x")))
        .await
        .expect("answered")
        .expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, Bytes::from_static(b"b"));
    a.wait("the hung attempt cancelled", |_, c| c == cancelled + 1)
        .await;
    assert_eq!(hedges("spooky_hedges_won_total").await, won + 1.0);
    proxy.assert_caps_zero().await;
}

/// A TCP listener that accepts and never speaks: a TLS handshake to it never completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_takes_from_the_retry_budget_and_none_is_sent_without_one() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let slow = Fault::start("slow", Mode::slow(Duration::from_millis(300))).await;
    let fast = Fault::start("fast", Mode::OK).await;
    // No budget at all: the hedge is refused, the slow answer is the answer.
    let budget = r#"retry = { attempts = 1, budget = { ratio = 0.0, min_per_second = 0 } }"#;
    let proxy = Proxy::start(&pipeline(
        &cert.toml(),
        &config(&[&slow, &fast], budget, r#"hedge = { delay = "20ms" }"#),
    ));
    let conn = connect(&cert.client(), &proxy).await;
    let r = conn.get(&url("/x")).await.expect("response");
    assert_eq!(r.body, Bytes::from_static(b"slow"));
    assert_eq!(fast.received(), 0);
    assert_eq!(
        proxy
            .metric("spooky_hedges_total", &[("upstream", "app")])
            .await,
        0.0
    );
    assert_eq!(
        proxy
            .metric(
                "spooky_retry_budget_exhausted_total",
                &[("upstream", "app")]
            )
            .await,
        1.0
    );
    proxy.assert_caps_zero().await;
}
