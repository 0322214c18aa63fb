//! Retries, retry budgets and circuit breakers against the fault backend (real hyper
//! backends on 127.0.0.1, a real HTTP/3 client): which backend received what, which status
//! the client got, which metric moved, and that every cap is back to zero afterwards.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use support::fault::{Fault, Mode};
use support::proxy::{Proxy, pipeline, pipeline_with};
use support::{TempDir, TestCert, connect, spooky, url};

/// Route `app` (with `route_extra`) to upstream `app` (with `upstream_extra`) over `backends`.
fn config(backends: &[&Fault], upstream_extra: &str, route_extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ url = \"{}\" }}", b.url()))
        .collect();
    format!(
        "[[routes]]\nname = \"app\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n{route_extra}\n\n[upstreams.app]\n{upstream_extra}\nbackends = [ {} ]\n",
        list.join(", ")
    )
}

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

async fn breaker_state(proxy: &Proxy, backend: &Fault, want: f64) {
    proxy
        .wait_metric(
            "spooky_backend_breaker_state",
            &[("backend", &backend.url())],
            |v| v == want,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_lets_exactly_one_probe_through_and_closes() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let a = Fault::start("a", Mode::status(500)).await;
    let breaker = r#"breaker = { failure_rate = 0.0, consecutive_failures = 2, open_for = "300ms", half_open_probes = 1 }"#;
    let proxy = Proxy::start(&pipeline(&cert.toml(), &config(&[&a], breaker, "")));
    let conn = connect(&cert.client(), &proxy).await;
    for _ in 0..2 {
        assert_eq!(conn.get(&url("/x")).await.expect("response").status, 500);
    }
    breaker_state(&proxy, &a, 1.0).await;
    // Open: answered at once by Spooky, the backend is not asked.
    let r = conn.get(&url("/x")).await.expect("response");
    assert_eq!(r.status, 503);
    assert_eq!(
        r.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_eq!(a.received(), 2);
    assert_eq!(proxy.rejected("select", "breaker_open").await, 1.0);
    // After `open_for` (the sleep is the breaker's own timer running out), half-open: of
    // three concurrent requests exactly one reaches the backend — which holds it until the
    // other two were refused — and its success closes the breaker.
    a.set(Mode::Gated);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let conn = std::sync::Arc::new(conn);
    let three: Vec<_> = (0..3)
        .map(|_| {
            let c = conn.clone();
            tokio::spawn(async move { c.get(&url("/x")).await.expect("response").status })
        })
        .collect();
    proxy
        .wait_metric(
            "spooky_stage_rejected_total",
            &[("stage", "select"), ("reason", "breaker_open")],
            |v| v == 3.0,
        )
        .await;
    a.wait("the probe at the backend", |r, _| r == 3).await;
    a.release(1);
    let mut statuses = Vec::new();
    for t in three {
        statuses.push(t.await.expect("task").as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 503, 503]);
    assert_eq!(a.received(), 3, "exactly one probe");
    breaker_state(&proxy, &a, 0.0).await;
    a.set(Mode::OK);
    for _ in 0..3 {
        assert_eq!(conn.get(&url("/x")).await.expect("response").status, 200);
    }
    for (to, n) in [("open", 1.0), ("half_open", 1.0), ("closed", 1.0)] {
        assert_eq!(
            proxy
                .metric("spooky_breaker_transitions_total", &[("to", to)])
                .await,
            n,
            "{to}"
        );
    }
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_reopens_the_breaker() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let a = Fault::start("a", Mode::Reset).await;
    let b = Fault::start("b", Mode::OK).await;
    let extra = r#"breaker = { failure_rate = 0.0, consecutive_failures = 1, open_for = "200ms" }"#;
    let proxy = Proxy::start(&pipeline(&cert.toml(), &config(&[&a, &b], extra, "")));
    let conn = connect(&cert.client(), &proxy).await;
    // `a` fails once and is skipped while open: everything goes to `b`.
    assert_eq!(conn.get(&url("/x")).await.expect("response").status, 502);
    breaker_state(&proxy, &a, 1.0).await;
    for _ in 0..4 {
        assert_eq!(conn.get(&url("/x")).await.expect("response").status, 200);
    }
    assert_eq!(a.received(), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // The probe goes to `a` when round-robin reaches it; it fails and reopens the breaker.
    for _ in 0..2 {
        conn.get(&url("/x")).await.expect("response");
    }
    assert_eq!(a.received(), 2);
    breaker_state(&proxy, &a, 1.0).await;
    assert_eq!(
        proxy
            .metric("spooky_breaker_transitions_total", &[("to", "open")])
            .await,
        2.0
    );
    proxy.assert_caps_zero().await;
}

#[test]
fn bad_retry_and_breaker_settings_are_errors_with_their_key() {
    let dir = TempDir::new();
    let file = dir.0.join("p.toml");
    let text = pipeline_with(
        r#"["h3"]"#,
        "",
        "[[routes]]\nname = \"app\"\nupstream = \"app\"\nrate_limit = { rate = 1, per = \"0s\", key = \"bogus\" }\n\n[upstreams.app]\nretry = { attempts = 11, per_try_timeout = \"0s\", budget = { ratio = 1.5 } }\nbreaker = { failure_rate = 2.0, half_open_probes = 0, open_for = \"0s\" }\nbackends = [ { url = \"http://127.0.0.1:1\" } ]\n\n[upstreams.other]\nretry = { retry_on = [\"sometimes\"] }\nbackends = [ { url = \"http://127.0.0.1:1\" } ]\n",
    );
    std::fs::write(&file, text).expect("write");
    let (code, _, err) = spooky(&["check", &file.display().to_string()]);
    assert_eq!(code, 64, "{err}");
    for (key, message) in [
        ("upstreams.app.retry.attempts", "expected 1..=10"),
        ("upstreams.app.retry.per_try_timeout", "above 0"),
        ("upstreams.app.retry.budget", "ratio: expected 0.0..=1.0"),
        ("upstreams.app.breaker.failure_rate", "expected 0.0..=1.0"),
        ("upstreams.app.breaker.half_open_probes", "at least 1"),
        ("upstreams.app.breaker.open_for", "above 0"),
        ("upstreams.other.retry", "retry_on: unknown `sometimes`"),
        ("routes[0].rate_limit.key", "is not a request key"),
        ("routes[0].rate_limit.per", "above 0"),
    ] {
        assert!(
            err.contains(&format!(": {key}: ")) && err.contains(message),
            "{key}: {err}"
        );
    }
    assert!(err.contains("p.toml:"), "names the file and line: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_upstream_does_not_hold_up_another() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let slow = Fault::start("slow", Mode::Hang).await;
    let fast = Fault::start("fast", Mode::OK).await;
    // Dispatch runs 8 attempts at once; each of the two upstreams may hold half of that.
    let rest = format!(
        r#"
[stages.dispatch]
concurrency = 8

[stages.queue]
deadline = "30s"

[[routes]]
name = "slow"
match = {{ path_prefix = "/slow" }}
upstream = "slow"

[[routes]]
name = "fast"
match = {{ path_prefix = "/fast" }}
upstream = "fast"

[upstreams.slow]
backends = [ {{ url = "{}" }} ]

[upstreams.fast]
backends = [ {{ url = "{}" }} ]
"#,
        slow.url(),
        fast.url()
    );
    let proxy = Proxy::start(&pipeline(&cert.toml(), &rest));
    assert_eq!(
        proxy
            .metric("spooky_upstream_inflight_limit", &[("upstream", "slow")])
            .await,
        4.0
    );
    let stuck = connect(&cert.client(), &proxy).await;
    let stuck = std::sync::Arc::new(stuck);
    let hanging: Vec<_> = (0..12)
        .map(|_| {
            let c = stuck.clone();
            tokio::spawn(async move { c.get(&url("/slow")).await })
        })
        .collect();
    // The slow upstream has its share in flight (the backend never answers them); the other
    // eight wait in the route's queue, not in dispatch.
    slow.wait("the slow upstream's share in flight", |r, _| r == 4)
        .await;
    proxy
        .wait_metric("spooky_route_queue_waiting", &[("route", "slow")], |v| {
            v == 8.0
        })
        .await;
    // A request to the other upstream goes straight through. Without the bulkhead it would
    // wait in dispatch behind the slow ones until they time out.
    let conn = connect(&cert.client(), &proxy).await;
    for _ in 0..3 {
        let r = tokio::time::timeout(Duration::from_secs(10), conn.get(&url("/fast")))
            .await
            .expect("the fast upstream answers while the slow one is saturated")
            .expect("response");
        assert_eq!(r.status, 200);
    }
    assert_eq!(slow.received(), 4);
    for h in hanging {
        h.abort();
    }
    drop(stuck);
    slow.wait("every hanging request given up", |_, c| c == 4)
        .await;
    proxy.assert_caps_zero().await;
}

fn limited(upstream: &Fault, rate_limit: &str) -> String {
    format!(
        "[[routes]]\nname = \"app\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\nrate_limit = {rate_limit}\n\n[upstreams.app]\nbackends = [ {{ url = \"{}\" }} ]\n",
        upstream.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_answers_429_at_the_configured_rate() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let app = Fault::start("app", Mode::OK).await;
    let proxy = Proxy::start(&pipeline(
        &cert.toml(),
        &limited(
            &app,
            r#"{ rate = 20, per = "1s", burst = 5, key = "client-ip" }"#,
        ),
    ));
    let conn = connect(&cert.client(), &proxy).await;
    // As fast as one connection goes, for a bounded second: the burst, then 20 a second.
    let started = std::time::Instant::now();
    let (mut ok, mut refused) = (0u32, 0u32);
    while started.elapsed() < Duration::from_secs(1) && ok + refused < 5_000 {
        let r = conn.get(&url("/x")).await.expect("response");
        match r.status.as_u16() {
            200 => ok += 1,
            429 => {
                refused += 1;
                let h = |n: &str| {
                    r.headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                assert_eq!(h("retry-after"), "1");
                assert_eq!(h("ratelimit-limit"), "5");
                assert_eq!(h("ratelimit-remaining"), "0");
                assert!(
                    h("proxy-status").contains("rate_limited"),
                    "{:?}",
                    r.headers
                );
            }
            s => panic!("unexpected status {s}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = 5.0 + 20.0 * elapsed;
    assert!(
        (f64::from(ok) - expected).abs() <= 2.0,
        "{ok} passed in {elapsed:.3} s: expected about {expected:.1}"
    );
    assert!(refused > 0);
    assert_eq!(app.received(), ok as usize);
    assert_eq!(
        proxy
            .metric("spooky_rate_limited_total", &[("route", "app")])
            .await,
        f64::from(refused)
    );
    assert_eq!(
        proxy.rejected("route", "rate_limited").await,
        f64::from(refused)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_has_its_own_bucket() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let app = Fault::start("app", Mode::OK).await;
    let proxy = Proxy::start(&pipeline(
        &cert.toml(),
        &limited(&app, r#"{ rate = 2, per = "1m", key = "header:x-user" }"#),
    ));
    let conn = connect(&cert.client(), &proxy).await;
    let get = |user: Option<&'static str>| {
        let mut b = Request::builder().uri(url("/x"));
        if let Some(u) = user {
            b = b.header("x-user", u);
        }
        conn.request(b.body(()).expect("request"), None)
    };
    let mut statuses = Vec::new();
    for user in [
        Some("ann"),
        Some("ann"),
        Some("ann"),
        Some("bob"),
        None,
        None,
        None,
    ] {
        statuses.push(get(user).await.expect("response").status.as_u16());
    }
    // Ann's third is refused; Bob has his own two; requests without the header share one
    // bucket (leaving the header out is no way around the limit).
    assert_eq!(statuses, vec![200, 200, 429, 200, 200, 200, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brownout_sheds_background_then_normal_and_never_critical() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let stuck = Fault::start("stuck", Mode::Hang).await;
    let app = Fault::start("app", Mode::OK).await;
    // Cap 10: background is shed from 5 in flight until below 2; normal from 7.5 until
    // below 4.5.
    let route = |name: &str, priority: &str, upstream: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"/{name}\" }}\nupstream = \"{upstream}\"\npriority = \"{priority}\"\n\n"
        )
    };
    let rest = format!(
        "[stages.admission]\nmax_inflight = 10\nbrownout = {{ enter = 0.5, exit = 0.2, shed = [\"background\", \"normal\"] }}\n\n{}{}{}{}[upstreams.stuck]\nbackends = [ {{ url = \"{}\" }} ]\n\n[upstreams.app]\nbackends = [ {{ url = \"{}\" }} ]\n",
        route("hold", "critical", "stuck"),
        route("bg", "background", "app"),
        route("norm", "normal", "app"),
        route("crit", "critical", "app"),
        stuck.url(),
        app.url()
    );
    let proxy = Proxy::start(&pipeline(&cert.toml(), &rest));
    // Each held request on its own connection: aborting its task closes the connection,
    // which is how the proxy learns the client left.
    let client = cert.client();
    let mut held = Vec::new();
    for _ in 0..7 {
        let c = connect(&client, &proxy).await;
        held.push(c);
    }
    let mut conns = held.into_iter();
    let mut held = Vec::new();
    let mut hold = |n: usize| {
        for c in conns.by_ref().take(n) {
            held.push(tokio::spawn(async move { c.get(&url("/hold")).await }));
        }
    };
    let conn = connect(&cert.client(), &proxy).await;
    let status = |path: &'static str| {
        let conn = &conn;
        async move {
            conn.get(&url(path))
                .await
                .expect("response")
                .status
                .as_u16()
        }
    };
    let inflight = |n: f64| proxy.wait_metric("spooky_admission_inflight", &[], move |v| v == n);
    assert_eq!(status("/bg").await, 200);
    hold(5);
    stuck.wait("five held", |r, _| r == 5).await;
    // 6 of 10 with the probe itself: background is shed, normal passes.
    assert_eq!(status("/bg").await, 503);
    assert_eq!(status("/norm").await, 200);
    hold(2);
    stuck.wait("seven held", |r, _| r == 7).await;
    // 8 of 10: normal is shed too; critical never is.
    assert_eq!(status("/norm").await, 503);
    assert_eq!(status("/bg").await, 503);
    assert_eq!(status("/crit").await, 200);
    assert_eq!(proxy.metric("spooky_brownout_level", &[]).await, 2.0);
    // Down to 4 held (5 with the probe): still above normal's way out (4.5).
    for h in held.drain(4..) {
        h.abort();
    }
    inflight(4.0).await;
    assert_eq!(status("/norm").await, 503);
    // 3 held: normal passes again, background stays shed until below 2.
    held.pop().expect("held").abort();
    inflight(3.0).await;
    assert_eq!(status("/norm").await, 200);
    assert_eq!(status("/bg").await, 503);
    for h in held.drain(..) {
        h.abort();
    }
    inflight(0.0).await;
    assert_eq!(status("/bg").await, 200);
    assert_eq!(proxy.metric("spooky_brownout_level", &[]).await, 0.0);
    assert_eq!(proxy.rejected("route", "brownout").await, 5.0);
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
    // Enough quick answers for a percentile (20 at least).
    for _ in 0..30 {
        assert_eq!(conn.get(&url("/x")).await.expect("response").status, 200);
    }
    assert_eq!(
        proxy
            .metric("spooky_hedges_total", &[("upstream", "app")])
            .await,
        0.0
    );
    // Now `a` hangs: the next request it gets is hedged to `b` after about the p90.
    a.set(Mode::Hang);
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let r = tokio::time::timeout(Duration::from_secs(10), conn.get(&url("/x")))
            .await
            .expect("answered")
            .expect("response");
        assert_eq!(r.status, 200);
        bodies.push(r.body);
    }
    assert_eq!(
        bodies,
        vec![Bytes::from_static(b"b"), Bytes::from_static(b"b")]
    );
    a.wait("the hung attempt cancelled", |_, c| c == 1).await;
    assert_eq!(
        proxy
            .metric("spooky_hedges_won_total", &[("upstream", "app")])
            .await,
        1.0
    );
    proxy.assert_caps_zero().await;
}

/// A TCP listener that accepts and never speaks: a TLS handshake to it never completes.
async fn mute_listener() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_timeout_answers_with_its_own_status_and_reason() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let hang = Fault::start("hang", Mode::Hang).await;
    let slow = Fault::start("slow", Mode::slow(Duration::from_secs(5))).await;
    let stall = Fault::start("stall", Mode::StallBody).await;
    let echo = Fault::start("echo", Mode::OK).await;
    let (mute, _mute) = mute_listener().await;
    let route = |name: &str, upstream: &str, extra: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"/{name}\" }}\nupstream = \"{upstream}\"\n{extra}\n\n"
        )
    };
    let upstream = |name: &str, url: &str| {
        format!("[upstreams.{name}]\nbackends = [ {{ url = \"{url}\" }} ]\n\n")
    };
    let rest = [
        "[stages.dispatch]\nconnect_timeout = \"300ms\"\n\n".to_string(),
        route("connect", "mute", ""),
        route("head", "hang", "timeouts = { response_head = \"200ms\" }"),
        route("total", "slow", "timeouts = { total = \"300ms\" }"),
        route("cut", "stall", "timeouts = { total = \"300ms\" }"),
        route(
            "idle",
            "stall",
            "timeouts = { response_body_idle = \"200ms\" }",
        ),
        route(
            "upload",
            "echo",
            "timeouts = { request_body_idle = \"200ms\" }",
        ),
        upstream("mute", &format!("https://{mute}")),
        upstream("hang", &hang.url()),
        upstream("slow", &slow.url()),
        upstream("stall", &stall.url()),
        upstream("echo", &echo.url()),
    ]
    .concat();
    let proxy = Proxy::start(&support::proxy::pipeline_with(
        r#"["h3", "http1"]"#,
        &cert.toml(),
        &rest,
    ));
    let conn = connect(&cert.client(), &proxy).await;
    let get = |path: &'static str| {
        let conn = &conn;
        async move {
            tokio::time::timeout(Duration::from_secs(10), conn.get(&url(path)))
                .await
                .expect("answered in time")
        }
    };
    let status_of = |r: &spooky::h3client::Response| r.status.as_u16();
    // TLS to the backend never completes: connect timeout, 504 (the stage-wide policy would
    // retry it, but select has no other backend and reports it).
    assert_eq!(status_of(&get("/connect").await.expect("response")), 504);
    assert_eq!(proxy.rejected("select", "connect_timeout").await, 1.0);
    // No head within the route's response_head: 504 upstream_timeout.
    assert_eq!(status_of(&get("/head").await.expect("response")), 504);
    assert_eq!(proxy.rejected("hedge-retry", "upstream_timeout").await, 1.0);
    // The route's total passes before the head: 504 total_timeout.
    assert_eq!(status_of(&get("/total").await.expect("response")), 504);
    assert_eq!(proxy.rejected("dispatch", "total_timeout").await, 1.0);
    // The total passes while the body streams: the head came, the body is cut.
    let cut = get("/cut").await;
    assert!(
        cut.is_err(),
        "a cut body is not a complete response: {cut:?}"
    );
    proxy
        .wait_metric(
            "spooky_response_body_cut_total",
            &[("reason", "total")],
            |v| v == 1.0,
        )
        .await;
    // The backend pauses its body longer than response_body_idle: cut.
    let idle = get("/idle").await;
    assert!(idle.is_err(), "{idle:?}");
    proxy
        .wait_metric(
            "spooky_response_body_cut_total",
            &[("reason", "idle")],
            |v| v == 1.0,
        )
        .await;
    // A client that pauses its request body past request_body_idle: 408 (HTTP/1.1 closes).
    let tcp = proxy.tcp_addr.expect("tcp listener");
    let (mut tls, _) = support::tcp::tls_connect(
        tcp,
        "localhost",
        support::tcp::client_config(std::slice::from_ref(&cert.der), &[b"http/1.1"]),
    )
    .await
    .expect("tls");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(
        b"POST /upload HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\nonly ten b",
    )
    .await
    .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .ok();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_body_timeout"), "{answer}");
    assert_eq!(
        echo.received(),
        1,
        "the backend had the request until the client stalled"
    );
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gradient2_limit_falls_when_latency_rises_and_recovers() {
    adaptive_limit_follows_latency(
        r#"{ algorithm = "gradient2", min_limit = 2, initial_limit = 16, long_window = 50, queue_size = 1.0 }"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vegas_limit_falls_when_latency_rises_and_recovers() {
    adaptive_limit_follows_latency(r#"{ algorithm = "vegas", min_limit = 2, initial_limit = 16 }"#)
        .await;
}

async fn adaptive_limit_follows_latency(adaptive: &str) {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let app = Fault::start("app", Mode::slow(Duration::from_millis(5))).await;
    let rest = format!(
        "[stages.admission]\nmax_inflight = 64\nadaptive = {adaptive}\n\n{}",
        config(&[&app], "", "")
    );
    let proxy = Proxy::start(&pipeline(&cert.toml(), &rest));
    let limit = || proxy.metric("spooky_admission_limit", &[]);
    assert_eq!(limit().await, 16.0);
    // Sixteen clients, each sending one request after another (bounded), until told to stop;
    // a refused one waits a little, as a client honouring Retry-After would (a tight loop
    // of refusals would only burn the CPU the proxy needs).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..16 {
        let conn = connect(&cert.client(), &proxy).await;
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            for _ in 0..20_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                if conn.get(&url("/x")).await.map_or(true, |r| r.status != 200) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    // At the usual latency, in use: it grows.
    let steady = proxy
        .wait_metric("spooky_admission_limit", &[], |v| v > 16.0)
        .await;
    // Twenty times slower: it falls to half or less.
    app.set(Mode::slow(Duration::from_millis(100)));
    let low = proxy
        .wait_metric("spooky_admission_limit", &[], |v| v <= steady / 2.0)
        .await;
    // Fast again: it recovers, to twice that or more.
    app.set(Mode::slow(Duration::from_millis(5)));
    proxy
        .wait_metric("spooky_admission_limit", &[], |v| v >= 2.0 * low.max(2.0))
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.expect("load task");
    }
    assert!(steady > 16.0);
    // Refusals beyond the limit were 503 admission_full.
    assert!(proxy.rejected("admission", "admission_full").await > 0.0);
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_queue_serves_in_arrival_order() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    // The backend answers only when the test lets it: nothing leaves the queue before all
    // six are in (a fixed delay here raced the test on a loaded machine).
    let app = Fault::start("app", Mode::Gated).await;
    let rest = format!(
        "[stages.queue]\ncapacity = 8\ndeadline = \"30s\"\n\n{}",
        config(&[&app], "max_inflight = 1", "")
    );
    let proxy = Proxy::start(&pipeline(&cert.toml(), &rest));
    let conn = std::sync::Arc::new(connect(&cert.client(), &proxy).await);
    let send = |path: String| {
        let conn = conn.clone();
        tokio::spawn(async move { conn.get(&url(&path)).await.expect("response").status })
    };
    // The first holds the upstream's only slot; the others queue one after another (each is
    // seen waiting before the next is sent).
    let mut all = vec![send("/0".into())];
    app.wait("the first in flight", |r, _| r == 1).await;
    for i in 1..=5 {
        all.push(send(format!("/{i}")));
        proxy
            .wait_metric("spooky_route_queue_waiting", &[("route", "app")], |v| {
                v == i as f64
            })
            .await;
    }
    app.release(6);
    for h in all {
        assert_eq!(h.await.expect("task"), 200);
    }
    assert_eq!(app.paths(), vec!["/0", "/1", "/2", "/3", "/4", "/5"]);
    proxy.assert_caps_zero().await;
}

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
