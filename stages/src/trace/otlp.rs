//! The OTLP/gRPC exporter: finished exchanges' spans go through a bounded channel to one
//! thread per collector, which sends them in batches (up to 512 spans, at least every
//! second). The data path only converts and `try_send`s.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use tokio::sync::mpsc;

use super::Config;
use crate::by_key::ByKey;
use crate::contract::record::{Outcome, Record};
use crate::http::trace_context::new_span_id;
use crate::metrics::OTLP_SPANS;

/// Spans per export request.
const BATCH: usize = 512;
/// Longest wait before a partial batch goes.
const EVERY: Duration = Duration::from_secs(1);

/// The sending end of one collector's exporter thread.
pub struct Exporter {
    tx: mpsc::Sender<Vec<Span>>,
    queued: metrics::Counter,
    dropped: metrics::Counter,
}

/// The running exporters, by collector and service name.
static LIVE: ByKey<(String, String), Exporter> = ByKey::new();

impl Exporter {
    /// The exporter for `config`'s collector and service: the running one (shared by workers
    /// and generations), or a new thread.
    pub fn open(config: &Config) -> Arc<Exporter> {
        let key = (config.otlp_endpoint.clone(), config.service_name.clone());
        let Ok(e) = LIVE.get_or_make(&key, || {
            for outcome in ["queued", "dropped", "exported", "failed"] {
                metrics::counter!(OTLP_SPANS, "outcome" => outcome).increment(0);
            }
            // Exchanges (each a handful of spans) waiting for the thread.
            let (tx, rx) = mpsc::channel(config.buffer.get());
            let (endpoint, service) = key.clone();
            let spawned = std::thread::Builder::new()
                .name("spooky-otlp".into())
                .spawn(move || run(rx, endpoint, service));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "tracing: cannot start the OTLP exporter thread");
            }
            Ok::<_, std::convert::Infallible>(Arc::new(Exporter {
                tx,
                queued: metrics::counter!(OTLP_SPANS, "outcome" => "queued"),
                dropped: metrics::counter!(OTLP_SPANS, "outcome" => "dropped"),
            }))
        });
        e
    }

    /// Hands a traced exchange's spans to the thread, or drops and counts them.
    pub fn export(&self, r: &Record) {
        let spans = spans(r);
        let n = spans.len() as u64;
        match self.tx.try_send(spans) {
            Ok(()) => self.queued.increment(n),
            Err(_) => self.dropped.increment(n),
        }
    }
}

/// The thread: batches and sends until every sender is gone.
fn run(mut rx: mpsc::Receiver<Vec<Span>>, endpoint: String, service: String) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "tracing: cannot start the OTLP exporter's runtime");
            return;
        }
    };
    let exported = metrics::counter!(OTLP_SPANS, "outcome" => "exported");
    let failed = metrics::counter!(OTLP_SPANS, "outcome" => "failed");
    rt.block_on(async move {
        let mut client: Option<TraceServiceClient<tonic::transport::Channel>> = None;
        let mut reported = false;
        loop {
            let Some(first) = rx.recv().await else { break };
            let mut batch = first;
            let deadline = tokio::time::Instant::now() + EVERY;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(more)) => batch.extend(more),
                    Ok(None) | Err(_) => break,
                }
            }
            let n = batch.len() as u64;
            if client.is_none() {
                client = TraceServiceClient::connect(endpoint.clone()).await.ok();
            }
            let sent = match client.as_mut() {
                Some(c) => c
                    .export(request(&service, batch))
                    .await
                    .map_err(|e| e.to_string()),
                None => Err(format!("cannot connect to {endpoint}")),
            };
            match sent {
                Ok(_) => {
                    exported.increment(n);
                    reported = false;
                }
                Err(e) => {
                    failed.increment(n);
                    client = None;
                    if !reported {
                        tracing::warn!(error = %e, "tracing: OTLP export failed (spans dropped)");
                        reported = true;
                    }
                }
            }
        }
    });
}

fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "spooky".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn kv(key: &str, value: impl Into<Val>) -> KeyValue {
    let value = match value.into() {
        Val::S(s) => any_value::Value::StringValue(s),
        Val::I(i) => any_value::Value::IntValue(i),
    };
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// An attribute value.
enum Val {
    S(String),
    I(i64),
}

impl From<&str> for Val {
    fn from(s: &str) -> Val {
        Val::S(s.to_string())
    }
}

impl From<i64> for Val {
    fn from(i: i64) -> Val {
        Val::I(i)
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The exchange's spans: the exchange (server), one per stage it left, one per attempt
/// (client), all in the exchange's trace.
fn spans(r: &Record) -> Vec<Span> {
    let Some(t) = r.trace.as_deref() else {
        return Vec::new();
    };
    let start = r.wall_start();
    let at = |d: Duration| nanos(start + d);
    let end = at(r.duration());
    let d = r.details.as_deref();
    let route = r.route.as_deref().map(|x| x.name.as_str());
    let method = d.map_or("", |d| d.method.as_str());
    let failed = r.failed();
    let mut attrs = vec![
        kv("http.request.method", method),
        kv("network.protocol.name", "http"),
        kv("network.protocol.version", r.protocol.via_version()),
        kv("spooky.exchange_id", r.id as i64),
        kv(
            "spooky.outcome",
            r.outcome.unwrap_or(Outcome::Cancelled).label(),
        ),
    ];
    if let Some(d) = d {
        attrs.push(kv("url.path", d.path()));
        attrs.push(kv("client.address", d.client_ip.to_string().as_str()));
        if let Some(a) = d.authority() {
            attrs.push(kv("server.address", a));
        }
    }
    if let Some(s) = r.status {
        attrs.push(kv("http.response.status_code", i64::from(s.as_u16())));
    }
    if let Some(route) = route {
        attrs.push(kv("http.route", route));
    }
    if let Some(u) = r.upstream.as_deref() {
        attrs.push(kv("spooky.upstream", u.name.as_str()));
    }
    if let Some(reason) = r.reason {
        attrs.push(kv("spooky.reason", reason.label()));
    }
    if let Some(id) = r.request_id.as_ref().and_then(|v| v.to_str().ok()) {
        attrs.push(kv("spooky.request_id", id));
    }
    let status = |error: bool, message: &str| {
        Some(Status {
            code: if error {
                StatusCode::Error
            } else {
                StatusCode::Unset
            } as i32,
            message: message.into(),
        })
    };
    let child = |name: String, kind: SpanKind, from: Duration, to: Duration| Span {
        trace_id: t.trace_id.to_vec(),
        span_id: new_span_id().to_vec(),
        parent_span_id: t.span_id.to_vec(),
        name,
        kind: kind as i32,
        start_time_unix_nano: at(from),
        end_time_unix_nano: at(to),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(1 + r.marks.len() + t.attempts.len());
    out.push(Span {
        trace_id: t.trace_id.to_vec(),
        span_id: t.span_id.to_vec(),
        parent_span_id: t.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: match route {
            Some(route) => format!("{method} {route}"),
            None => method.to_string(),
        },
        kind: SpanKind::Server as i32,
        start_time_unix_nano: nanos(start),
        end_time_unix_nano: end,
        attributes: attrs,
        status: status(failed, r.reason.map_or("", |x| x.label())),
        ..Default::default()
    });
    let mut last = Duration::ZERO;
    for (stage, mark) in &r.marks {
        out.push(child((*stage).to_string(), SpanKind::Internal, last, *mark));
        last = *mark;
    }
    let upstream = r.upstream.as_deref();
    for a in &t.attempts {
        let backend = upstream
            .and_then(|u| u.backend_name(a.backend))
            .unwrap_or("");
        let mut span = child(
            format!("{method} {backend}"),
            SpanKind::Client,
            a.start,
            a.end.unwrap_or_else(|| r.duration()),
        );
        span.span_id = a.span_id.to_vec();
        span.attributes = vec![
            kv("server.address", backend),
            kv("spooky.attempt.outcome", a.outcome),
        ];
        if let Some(s) = a.status {
            span.attributes
                .push(kv("http.response.status_code", i64::from(s)));
        }
        span.status = status(
            a.outcome != "response" || a.status.is_some_and(|s| s >= 500),
            a.outcome,
        );
        out.push(span);
    }
    out
}
