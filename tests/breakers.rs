//! Circuit breakers against the fault backend: open on failures, exactly the configured
//! probes when half-open, closed by their success or reopened by their failure; and the
//! errors that bad retry, breaker and rate-limit settings give.

mod support;

use std::time::Duration;

use support::fault::{Fault, Mode, config};
use support::proxy::{Proxy, pipeline, pipeline_with};
use support::{TempDir, TestCert, connect, spooky, url};

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
