//! `GET /metrics` as a dashboard and an alert need it, from the real binary: every family has
//! `# HELP` and `# TYPE`, families and series come in a stable sorted order, the refusals and
//! reloads alerts watch exist at zero before the first one (and no placeholder series), a
//! failed connect is counted at dispatch where it happened, idle stages read zero inflight,
//! per-route counters and latency histograms, upstream connection gauges, handshakes by
//! protocol, build and process metrics, buckets up to 30 s — and every metric the shipped
//! Grafana dashboard queries is one the proxy exports.

mod support;

use std::collections::BTreeSet;

use support::backend::Backend;
use support::named::Client;
use support::proxy::{Proxy, pipeline_with, sample};
use support::{TempDir, TestCert, dead_addr, url};

fn config(backend: &Backend) -> String {
    format!(
        r#"
[[routes]]
name = "dead"
match = {{ path_prefix = "/dead" }}
upstream = "dead"

[[routes]]
name = "app"
match = {{ path_prefix = "/" }}
upstream = "app"

[upstreams.app]
backends = [ {{ url = "{}" }} ]

[upstreams.dead]
backends = [ {{ url = "http://{}" }} ]
"#,
        backend.url(),
        dead_addr()
    )
}

/// The families (`# TYPE` names) of a scrape, in order.
fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap_or("").to_string())
        .collect()
}

/// The series (sample lines without their values), in order.
fn series(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').map_or(l, |(s, _)| s).to_string())
        .collect()
}

fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_a_dashboard_needs() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &cert.toml(),
        &config(&backend),
    ));
    // Before any request: the refusals and reloads an alert watches are there, at zero.
    let (status, before) = proxy.admin_get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        r#"spooky_stage_rejected_total{pipeline="test",stage="dispatch",reason="upstream_connect"} 0"#,
        r#"spooky_stage_rejected_total{pipeline="test",stage="admission",reason="admission_full"} 0"#,
        r#"spooky_stage_rejected_total{pipeline="test",stage="queue",reason="queue_deadline"} 0"#,
        r#"spooky_config_reloads_total{trigger="file",outcome="failed"} 0"#,
        r#"spooky_access_log_dropped_total 0"#,
        r#"spooky_route_requests_total{route="app",class="5xx"} 0"#,
    ] {
        assert!(has(&before, line), "missing at start: {line}");
    }
    assert!(!before.contains(r#"reason="none""#), "a placeholder series");

    for proto in ["h3", "h2", "http1"] {
        let mut c = Client::open(proto, &proxy, &cert).await;
        assert_eq!(c.send("GET", &url("/ok"), &[]).await.status, 200);
        assert_eq!(c.send("GET", &url("/dead"), &[]).await.status, 502);
    }
    proxy.assert_caps_zero().await;
    let (_, text) = proxy.admin_get("/metrics").await;

    // HELP and TYPE for every family; families sorted; series sorted within each.
    let fams = families(&text);
    assert!(fams.len() > 40, "{fams:?}");
    for f in &fams {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("# HELP {f} "))),
            "{f} has no # HELP"
        );
    }
    let mut sorted = fams.clone();
    sorted.sort();
    assert_eq!(fams, sorted, "families out of order");
    // Stable: a second scrape lists the same series in the same order.
    let (_, again) = proxy.admin_get("/metrics").await;
    assert_eq!(series(&text), series(&again));

    // A failed connect counted where it happened.
    let p = [("pipeline", "test")];
    let rejected = |stage: &str, reason: &str| {
        sample(
            &text,
            "spooky_stage_rejected_total",
            &[p[0], ("stage", stage), ("reason", reason)],
        )
    };
    assert_eq!(rejected("dispatch", "upstream_connect"), 3.0);
    assert_eq!(rejected("select", "upstream_connect"), 0.0);
    assert_eq!(rejected("hedge-retry", "upstream_connect"), 0.0);
    // Idle stages hold nothing.
    for stage in ["select", "dispatch", "egress"] {
        assert_eq!(
            sample(&text, "spooky_stage_inflight", &[("stage", stage)]),
            0.0,
            "{stage}"
        );
    }
    // Per route: status classes, reasons, latency.
    assert_eq!(
        sample(
            &text,
            "spooky_route_requests_total",
            &[("route", "app"), ("class", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "spooky_route_refused_total",
            &[("route", "dead"), ("reason", "upstream_connect")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "spooky_route_ttfb_seconds_count",
            &[("route", "app")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "spooky_route_duration_seconds_count",
            &[("route", "dead")]
        ),
        3.0
    );
    assert!(
        text.lines().any(|l| l.starts_with("spooky_route_ttfb_seconds_bucket{") && l.contains(r#"le="30""#)),
        "buckets reach 30 s"
    );
    assert!(text.contains(r#"le="15""#) && text.contains(r#"le="0.001""#));
    // Upstream connections: open ones pooled, connects by result.
    let app = [("upstream", "app")];
    let open = sample(&text, "spooky_upstream_connections", &app);
    assert!(open >= 1.0);
    // Idle: nothing in flight now, so every open connection is idle; one held request holds
    // one of them.
    assert_eq!(
        sample(&text, "spooky_upstream_connections_idle", &app),
        open
    );
    let mut holder = Client::open("h2", &proxy, &cert).await;
    let held = tokio::spawn(async move { holder.send("GET", &url("/hold/m"), &[]).await.status });
    backend.state.wait_held(1).await;
    let (_, during) = proxy.admin_get("/metrics").await;
    let open_now = sample(&during, "spooky_upstream_connections", &app);
    assert_eq!(
        sample(&during, "spooky_upstream_connections_idle", &app),
        open_now - 1.0,
        "{open_now} open, one busy"
    );
    backend.state.release(1);
    assert_eq!(held.await.expect("held"), 200);
    assert!(
        sample(
            &text,
            "spooky_upstream_connects_total",
            &[app[0], ("result", "ok")]
        ) >= 1.0
    );
    assert!(
        sample(
            &text,
            "spooky_upstream_connects_total",
            &[("upstream", "dead"), ("result", "failed")]
        ) >= 3.0
    );
    // Handshakes and connections by protocol.
    assert!(
        sample(
            &text,
            "spooky_listener_handshakes_total",
            &[("protocol", "quic"), ("result", "ok")]
        ) >= 1.0
    );
    assert!(
        sample(
            &text,
            "spooky_listener_handshakes_total",
            &[("protocol", "tcp"), ("result", "ok")]
        ) >= 2.0
    );
    // Build and process.
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        has(
            &text,
            &format!(r#"spooky_build_info{{version="{version}"}} 1"#)
        ),
        "build info"
    );
    assert!(sample(&text, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(sample(&text, "process_cpu_seconds_total", &[]) > 0.0);

    // Every metric the Grafana dashboard queries is exported.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/grafana/spooky.json"
    ))
    .expect("dashboard");
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let exprs: Vec<String> = json["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() > 20);
    let exported: BTreeSet<&str> = fams.iter().map(String::as_str).collect();
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !(word.starts_with("spooky_") || word.starts_with("process_")) {
                continue;
            }
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .unwrap_or(word);
            assert!(
                exported.contains(base),
                "the dashboard queries {word}, which is not exported"
            );
        }
    }
}
