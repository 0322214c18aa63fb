//! OTLP traces (the `otlp` feature: `cargo test --features otlp --test otlp`), against an
//! in-process collector stub: a sampled exchange is one server span with a child span per
//! stage and per attempt, all in one trace; a client's `traceparent` is continued (its span is
//! the exchange span's parent) and each attempt sends the backend a `traceparent` naming the
//! attempt's span; an unsampled client trace passes through untouched and exports nothing.
#![cfg(feature = "otlp")]

mod support;

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use support::backend::Backend;
use support::named::Client;
use support::proxy::{Proxy, app_upstream, pipeline_with};
use support::{TempDir, TestCert, url};
use tokio::sync::Notify;

/// The collector stub: keeps every span it is sent.
#[derive(Default)]
struct Collector {
    spans: Mutex<Vec<Span>>,
    services: Mutex<Vec<String>>,
    changed: Notify,
}

struct Stub(Arc<Collector>);

#[tonic::async_trait]
impl TraceService for Stub {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in req.into_inner().resource_spans {
            if let Some(r) = &rs.resource {
                for kv in &r.attributes {
                    if kv.key == "service.name" {
                        let v = format!("{:?}", kv.value);
                        self.0.services.lock().expect("lock").push(v);
                    }
                }
            }
            for ss in rs.scope_spans {
                self.0.spans.lock().expect("lock").extend(ss.spans);
            }
        }
        self.0.changed.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn collector() -> (std::net::SocketAddr, Arc<Collector>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let c = Arc::new(Collector::default());
    let svc = TraceServiceServer::new(Stub(c.clone()));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .serve_with_incoming(svc, tonic::transport::server::TcpIncoming::from(listener))
            .await
            .expect("collector");
    });
    (addr, c)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The spans of one trace, once its server span and `at_least` spans in all arrived (bounded).
async fn trace(c: &Collector, trace_id: &str, at_least: usize) -> Vec<Span> {
    support::wait_until(
        &c.changed,
        &format!("{at_least} spans of trace {trace_id}"),
        || {
            let spans = c.spans.lock().expect("lock");
            spans
                .iter()
                .filter(|s| hex(&s.trace_id) == trace_id)
                .count()
                >= at_least
        },
    )
    .await;
    let spans = c.spans.lock().expect("lock");
    spans
        .iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .cloned()
        .collect()
}

/// The `traceparent` the backend received (its `/headers` answer lists them).
fn forwarded_traceparent(body: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_exchanges_become_spans_with_correct_parents() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let (addr, c) = collector().await;
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &cert.toml(),
        &format!(
            "[tracing]\notlp_endpoint = \"http://{addr}\"\nsample_ratio = 0.0\nservice_name = \"edge-test\"\n\n{}",
            app_upstream(&backend.url())
        ),
    ));
    for proto in ["h3", "h2", "http1"] {
        let mut client = Client::open(proto, &proxy, &cert).await;
        // A client trace, sampled: continued.
        let trace_id = fastrand_hex(32);
        let client_span = fastrand_hex(16);
        let tp = format!("00-{trace_id}-{client_span}-01");
        let got = client
            .send(
                "GET",
                &url("/headers"),
                &[("traceparent", &tp), ("tracestate", "vendor=1")],
            )
            .await;
        assert_eq!(got.status, 200, "{proto}");
        let sent = forwarded_traceparent(&got.body);
        let parts: Vec<&str> = sent.split('-').collect();
        assert_eq!(parts.len(), 4, "{proto}: the backend got {sent:?}");
        assert_eq!(
            (parts[0], parts[1], parts[3]),
            ("00", trace_id.as_str(), "01"),
            "{proto}"
        );
        assert_ne!(
            parts[2], client_span,
            "{proto}: the backend's parent is Spooky's attempt span"
        );
        assert!(
            got.body.contains("tracestate: vendor=1"),
            "{proto}: tracestate passes through"
        );

        // ingress … egress (8 stages) + the exchange + one attempt.
        let spans = trace(&c, &trace_id, 10).await;
        let server: Vec<&Span> = spans.iter().filter(|s| s.kind == 2).collect();
        assert_eq!(server.len(), 1, "{proto}: one exchange span");
        let ex = server[0];
        assert_eq!(
            hex(&ex.parent_span_id),
            client_span,
            "{proto}: continues the client's span"
        );
        assert_eq!(ex.name, "GET app");
        assert!(ex.start_time_unix_nano <= ex.end_time_unix_nano);
        let children: Vec<&Span> = spans.iter().filter(|s| s.span_id != ex.span_id).collect();
        for s in &children {
            assert_eq!(
                s.parent_span_id, ex.span_id,
                "{proto}: {} is the exchange's child",
                s.name
            );
            assert!(
                s.start_time_unix_nano >= ex.start_time_unix_nano,
                "{}",
                s.name
            );
            assert!(
                s.end_time_unix_nano <= ex.end_time_unix_nano + 1_000,
                "{}",
                s.name
            );
        }
        for stage in [
            "ingress",
            "admission",
            "route",
            "queue",
            "select",
            "dispatch",
            "egress",
        ] {
            assert!(
                children.iter().any(|s| s.name == stage && s.kind == 1),
                "{proto}: stage span {stage}"
            );
        }
        let attempts: Vec<&&Span> = children.iter().filter(|s| s.kind == 3).collect();
        assert_eq!(attempts.len(), 1, "{proto}: one attempt span");
        assert_eq!(
            hex(&attempts[0].span_id),
            parts[2],
            "{proto}: the attempt span is the backend's parent"
        );

        // No traceparent, ratio 0: not traced, nothing added.
        let got = client.send("GET", &url("/headers"), &[]).await;
        assert_eq!(forwarded_traceparent(&got.body), "", "{proto}");
        // An unsampled client trace passes through untouched and is not exported.
        let quiet = format!("00-{}-{}-00", fastrand_hex(32), fastrand_hex(16));
        let got = client
            .send("GET", &url("/headers"), &[("traceparent", &quiet)])
            .await;
        assert_eq!(forwarded_traceparent(&got.body), quiet, "{proto}");
    }
    // Exported: 3 traced exchanges of 10 spans; nothing else.
    proxy
        .wait_metric("spooky_otlp_spans_total", &[("outcome", "exported")], |v| {
            v >= 30.0
        })
        .await;
    assert_eq!(c.spans.lock().expect("lock").len(), 30);
    assert_eq!(
        proxy
            .metric("spooky_otlp_spans_total", &[("outcome", "dropped")])
            .await,
        0.0
    );
    assert!(
        c.services
            .lock()
            .expect("lock")
            .iter()
            .all(|s| s.contains("edge-test"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_traces_start_at_the_sample_ratio() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let (addr, c) = collector().await;
    let proxy = Proxy::start(&pipeline_with(
        r#"["h2"]"#,
        &cert.toml(),
        &format!(
            "[tracing]\notlp_endpoint = \"http://{addr}\"\nsample_ratio = 1.0\n\n{}",
            app_upstream(&backend.url())
        ),
    ));
    let mut client = Client::open("h2", &proxy, &cert).await;
    let got = client.send("GET", &url("/headers"), &[]).await;
    let sent = forwarded_traceparent(&got.body);
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "a new trace goes to the backend: {sent:?}");
    let spans = trace(&c, parts[1], 10).await;
    let root = spans.iter().find(|s| s.kind == 2).expect("exchange span");
    assert!(
        root.parent_span_id.is_empty(),
        "a new trace's exchange span is a root"
    );
}

fn fastrand_hex(len: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    while out.len() < len {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(out.len());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out.truncate(len);
    out
}
