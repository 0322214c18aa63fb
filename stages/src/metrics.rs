//! Every metric name Spooky exports, in one place, and the per-stage handles.
//!
//! Names follow `spooky_<subsystem>_<name>_<unit>[_total]`; label values are bounded (pipeline,
//! stage, upstream and backend names from config, reasons from a fixed set, status classes).

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

pub const STAGE_RECEIVED: &str = "spooky_stage_received_total";
/// 1 while a backend is in balancing by its health checks, 0 while out.
pub const BACKEND_HEALTHY: &str = "spooky_backend_healthy";
/// Health checks by result (`pass`, `fail`).
pub const HEALTH_CHECKS: &str = "spooky_health_checks_total";
/// 1 while a backend is ejected as an outlier (passive health), 0 while in.
pub const BACKEND_EJECTED: &str = "spooky_backend_ejected";
/// Outlier ejections.
pub const OUTLIER_EJECTIONS: &str = "spooky_outlier_ejections_total";
/// A backend's circuit breaker: 0 closed, 1 open, 2 half-open.
pub const BACKEND_BREAKER: &str = "spooky_backend_breaker_state";
/// Breaker transitions, by the state entered (`open`, `half_open`, `closed`).
pub const BREAKER_TRANSITIONS: &str = "spooky_breaker_transitions_total";
/// Retries sent, by upstream, the backend whose attempt failed, and the `retry_on` entry.
pub const RETRIES: &str = "spooky_retries_total";
/// Brownout depth: how many priority classes are shed now (0: none).
pub const BROWNOUT: &str = "spooky_brownout_level";
/// Hedged attempts sent, by upstream and the backend they went to.
pub const HEDGES: &str = "spooky_hedges_total";
/// Hedged attempts whose response head came first.
pub const HEDGES_WON: &str = "spooky_hedges_won_total";
/// Streamed responses cut (all pipelines) by `reason`: `idle` (the backend paused longer than
/// `response_body_idle`) or `total` (the route's total timeout).
pub const RESPONSE_BODY_CUT: &str = "spooky_response_body_cut_total";
/// Tunnels (WebSocket) ended, by how (`closed`, `client_gone`, `upstream_failed`, `idle`,
/// `lifetime`, `draining`).
pub const TUNNELS_ENDED: &str = "spooky_tunnels_ended_total";
/// Tunnels open now.
pub const TUNNELS_OPEN: &str = "spooky_tunnels_open";
/// Requests a route's rate limit answered 429.
pub const RATE_LIMITED: &str = "spooky_rate_limited_total";
/// Retries the budget refused (the failure went to the client).
pub const RETRY_BUDGET_EXHAUSTED: &str = "spooky_retry_budget_exhausted_total";
pub const STAGE_EMITTED: &str = "spooky_stage_emitted_total";
pub const STAGE_REJECTED: &str = "spooky_stage_rejected_total";
pub const STAGE_QUEUE_DEPTH: &str = "spooky_stage_queue_depth";
pub const STAGE_QUEUE_WAIT: &str = "spooky_stage_queue_wait_seconds";
pub const STAGE_PROCESSING: &str = "spooky_stage_processing_seconds";
pub const REQUESTS: &str = "spooky_requests_total";
pub const REQUEST_DURATION: &str = "spooky_request_duration_seconds";
pub const UPSTREAM_REQUESTS: &str = "spooky_upstream_requests_total";
pub const UPSTREAM_LATENCY: &str = "spooky_upstream_response_seconds";
pub const UPSTREAM_INFLIGHT: &str = "spooky_upstream_inflight";
/// Connections open to a backend (all workers' pools).
pub const UPSTREAM_CONNECTIONS: &str = "spooky_upstream_connections";
/// Connections open to a backend and carrying no request (open minus attempts in flight).
pub const UPSTREAM_CONNECTIONS_IDLE: &str = "spooky_upstream_connections_idle";
/// Connections made to a backend, by `result`: `ok`, `failed`, `timeout`.
pub const UPSTREAM_CONNECTS: &str = "spooky_upstream_connects_total";
/// An upstream's inflight cap: the smaller of its `max_inflight` and its bulkhead share.
pub const UPSTREAM_LIMIT: &str = "spooky_upstream_inflight_limit";
pub const BACKEND_INFLIGHT: &str = "spooky_backend_inflight";
pub const ADMISSION_INFLIGHT: &str = "spooky_admission_inflight";
/// The admission cap's limit now (adaptive admission moves it).
pub const ADMISSION_LIMIT: &str = "spooky_admission_limit";
pub const ADMISSION_WAITING: &str = "spooky_admission_waiting";
pub const STAGE_INFLIGHT: &str = "spooky_stage_inflight";
pub const ROUTE_QUEUE_WAITING: &str = "spooky_route_queue_waiting";
pub const EXCHANGES_LIVE: &str = "spooky_exchanges_live";
pub const LISTENER_CONNECTIONS: &str = "spooky_listener_connections";
pub const LISTENER_CONNECTIONS_TOTAL: &str = "spooky_listener_connections_total";
pub const LISTENER_HANDSHAKES: &str = "spooky_listener_handshakes_total";
/// Connections (QUIC and TCP) served by each worker: how evenly `SO_REUSEPORT` spreads them.
pub const WORKER_CONNECTIONS: &str = "spooky_worker_connections_total";
/// TCP connections closed by a timer (`kind`: `header` — a head awaited, `idle` — no request).
pub const LISTENER_TIMEOUTS: &str = "spooky_listener_timeouts_total";
/// HTTP/1.1 request heads refused for ambiguous framing, by listener and reason.
pub const HTTP1_REFUSED: &str = "spooky_http1_refused_total";
/// HTTP/3 request heads refused for pseudo-header order or repeats, by listener and reason.
pub const HTTP3_REFUSED: &str = "spooky_h3_refused_total";
/// Certificate reloads, by `kind` (`certs`) and `result`.
pub const CONTROL_RELOADS: &str = "spooky_control_reloads_total";
/// gRPC responses cut short by the client's deadline after their head was sent.
pub const GRPC_DEADLINE_CUT: &str = "spooky_grpc_deadline_cut_total";
/// Request bodies too large to keep for another attempt (`replay_body_limit`).
pub const BODY_REPLAY_OVERFLOW: &str = "spooky_request_body_replay_overflow_total";
/// Exchanges ended, by how (`complete`, `cancelled`, `upstream_failed`, `reset`): one count
/// per end-of-exchange record, so it equals the exchanges started.
pub const EXCHANGES_ENDED: &str = "spooky_exchanges_ended_total";

/// Access-log lines handed to the writer.
pub const ACCESS_LOG_LINES: &str = "spooky_access_log_lines_total";
/// Access-log lines dropped because the writer was behind (the data path never waits).
pub const ACCESS_LOG_DROPPED: &str = "spooky_access_log_dropped_total";
/// Access-log files reopened (SIGUSR1).
pub const ACCESS_LOG_REOPENS: &str = "spooky_access_log_reopens_total";
/// Access-log writes, flushes or reopens that failed.
pub const ACCESS_LOG_ERRORS: &str = "spooky_access_log_errors_total";

/// Buckets for every `_seconds` histogram: sub-millisecond for the stages' own work, then 1 ms
/// to 30 s without a gap (a 10 s response timeout and a 30 s total are both resolved).
pub const SECONDS_BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 15.0, 20.0, 30.0,
];

/// Spans of traced exchanges, by `outcome`: `queued`, `dropped` (the exporter was behind),
/// `exported`, `failed` (the collector refused or could not be reached).
pub const OTLP_SPANS: &str = "spooky_otlp_spans_total";
/// Routes' requests by status class (`1xx`…`5xx`).
pub const ROUTE_REQUESTS: &str = "spooky_route_requests_total";
/// Routes' exchanges Spooky refused or abandoned, by reason.
pub const ROUTE_REFUSED: &str = "spooky_route_refused_total";
/// Routes' time to the response head.
pub const ROUTE_TTFB: &str = "spooky_route_ttfb_seconds";
/// Routes' whole-exchange time.
pub const ROUTE_DURATION: &str = "spooky_route_duration_seconds";
/// 1, labelled with the version.
pub const BUILD_INFO: &str = "spooky_build_info";
/// Configuration generations served, by `trigger` and `outcome`.
pub const CONFIG_RELOADS: &str = "spooky_config_reloads_total";
/// The generation serving new exchanges.
pub const CONFIG_GENERATION: &str = "spooky_config_generation";
/// DNS refreshes of upstreams, by `outcome`.
pub const DNS_REFRESHES: &str = "spooky_dns_refreshes_total";

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric Spooky exports, its kind and its `# HELP` text.
pub const HELP: &[(&str, Kind, &str)] = &[
    (
        ACCESS_LOG_DROPPED,
        Kind::Counter,
        "Access-log lines dropped because the writer was behind (requests never wait for it).",
    ),
    (
        ACCESS_LOG_ERRORS,
        Kind::Counter,
        "Access-log writes, flushes or reopens that failed.",
    ),
    (
        ACCESS_LOG_LINES,
        Kind::Counter,
        "Access-log lines handed to the writer.",
    ),
    (
        ACCESS_LOG_REOPENS,
        Kind::Counter,
        "Access-log files reopened (SIGUSR1).",
    ),
    (
        ADMISSION_INFLIGHT,
        Kind::Gauge,
        "Exchanges holding an admission permit.",
    ),
    (
        ADMISSION_LIMIT,
        Kind::Gauge,
        "The admission cap now (adaptive admission moves it).",
    ),
    (
        ADMISSION_WAITING,
        Kind::Gauge,
        "Exchanges waiting for an admission permit.",
    ),
    (
        BACKEND_BREAKER,
        Kind::Gauge,
        "A backend's circuit breaker: 0 closed, 1 open, 2 half-open.",
    ),
    (
        BACKEND_EJECTED,
        Kind::Gauge,
        "1 while a backend is ejected as an outlier.",
    ),
    (
        BACKEND_HEALTHY,
        Kind::Gauge,
        "1 while a backend's active health checks keep it in balancing.",
    ),
    (
        BACKEND_INFLIGHT,
        Kind::Gauge,
        "Attempts in flight to a backend.",
    ),
    (
        BODY_REPLAY_OVERFLOW,
        Kind::Counter,
        "Request bodies too large to keep for another attempt.",
    ),
    (
        BREAKER_TRANSITIONS,
        Kind::Counter,
        "Circuit-breaker transitions, by the state entered.",
    ),
    (
        BROWNOUT,
        Kind::Gauge,
        "Priority classes shed now by brownout (0: none).",
    ),
    (
        BUILD_INFO,
        Kind::Gauge,
        "Always 1; the version is in the label.",
    ),
    (
        CONFIG_GENERATION,
        Kind::Gauge,
        "The configuration generation serving new exchanges.",
    ),
    (
        CONFIG_RELOADS,
        Kind::Counter,
        "Configuration generations tried, by trigger (file, api, dns, restart) and outcome (ok, invalid, failed).",
    ),
    (
        CONTROL_RELOADS,
        Kind::Counter,
        "Certificate reloads, by result.",
    ),
    (
        DNS_REFRESHES,
        Kind::Counter,
        "Upstream DNS refreshes, by outcome (changed, unchanged, failed).",
    ),
    (
        EXCHANGES_ENDED,
        Kind::Counter,
        "Exchanges ended, by outcome (complete, cancelled, upstream_failed, reset).",
    ),
    (
        EXCHANGES_LIVE,
        Kind::Gauge,
        "Exchanges alive now (any stage, or streaming their response).",
    ),
    (
        GRPC_DEADLINE_CUT,
        Kind::Counter,
        "gRPC responses cut by the client's deadline after their head was sent.",
    ),
    (
        HEALTH_CHECKS,
        Kind::Counter,
        "Active health checks, by result (pass, fail).",
    ),
    (
        HEDGES,
        Kind::Counter,
        "Hedged attempts sent, by the backend they went to.",
    ),
    (
        HEDGES_WON,
        Kind::Counter,
        "Hedged attempts whose response head came first.",
    ),
    (
        HTTP1_REFUSED,
        Kind::Counter,
        "HTTP/1.1 request heads refused for ambiguous framing, by reason.",
    ),
    (
        HTTP3_REFUSED,
        Kind::Counter,
        "HTTP/3 request heads refused for pseudo-header order or repeats, by reason.",
    ),
    (
        LISTENER_CONNECTIONS,
        Kind::Gauge,
        "Client connections open, by listener and protocol (quic, tcp).",
    ),
    (
        LISTENER_CONNECTIONS_TOTAL,
        Kind::Counter,
        "Client connections accepted, by listener and protocol.",
    ),
    (
        LISTENER_HANDSHAKES,
        Kind::Counter,
        "Client handshakes, by listener, protocol (quic, tcp) and result (ok, error, timeout, refused, per_client_limit, proxy_protocol: a bad or missing PROXY header, plain_http: plain HTTP sent to a TLS port, answered 400).",
    ),
    (
        LISTENER_TIMEOUTS,
        Kind::Counter,
        "TCP connections closed by a timer (header, idle).",
    ),
    (
        OTLP_SPANS,
        Kind::Counter,
        "Trace spans, by outcome (queued, dropped, exported, failed).",
    ),
    (
        OUTLIER_EJECTIONS,
        Kind::Counter,
        "Outlier ejections of a backend.",
    ),
    (
        RATE_LIMITED,
        Kind::Counter,
        "Requests a route's rate limit answered 429.",
    ),
    (
        REQUESTS,
        Kind::Counter,
        "Responses sent to clients, by status class.",
    ),
    (
        REQUEST_DURATION,
        Kind::Histogram,
        "Whole-exchange time of responses sent to clients.",
    ),
    (
        RESPONSE_BODY_CUT,
        Kind::Counter,
        "Streamed responses cut, by reason (idle, total).",
    ),
    (
        TUNNELS_ENDED,
        Kind::Counter,
        "Tunnels (WebSocket) ended, by how: closed (both sides), client_gone, upstream_failed, idle, lifetime, draining.",
    ),
    (TUNNELS_OPEN, Kind::Gauge, "Tunnels (WebSocket) open now."),
    (
        RETRIES,
        Kind::Counter,
        "Retries sent, by the backend whose attempt failed and the retry_on entry.",
    ),
    (
        RETRY_BUDGET_EXHAUSTED,
        Kind::Counter,
        "Retries the retry budget refused.",
    ),
    (
        ROUTE_DURATION,
        Kind::Histogram,
        "Whole-exchange time, by route.",
    ),
    (
        ROUTE_QUEUE_WAITING,
        Kind::Gauge,
        "Exchanges of a route waiting in the queue stage.",
    ),
    (
        ROUTE_REFUSED,
        Kind::Counter,
        "Exchanges Spooky refused or abandoned, by route and reason.",
    ),
    (
        ROUTE_REQUESTS,
        Kind::Counter,
        "Responses sent to clients, by route and status class.",
    ),
    (
        ROUTE_TTFB,
        Kind::Histogram,
        "Time to the response head, by route.",
    ),
    (
        STAGE_EMITTED,
        Kind::Counter,
        "Exchanges a stage passed on or answered.",
    ),
    (STAGE_INFLIGHT, Kind::Gauge, "Exchanges in a stage now."),
    (
        STAGE_PROCESSING,
        Kind::Histogram,
        "Time an exchange spent in a stage.",
    ),
    (
        STAGE_QUEUE_DEPTH,
        Kind::Gauge,
        "Exchanges waiting in a stage's inlet.",
    ),
    (
        STAGE_QUEUE_WAIT,
        Kind::Histogram,
        "Time exchanges waited in a stage's inlet.",
    ),
    (
        STAGE_RECEIVED,
        Kind::Counter,
        "Exchanges that reached a stage.",
    ),
    (
        STAGE_REJECTED,
        Kind::Counter,
        "Exchanges a stage refused, by reason.",
    ),
    (
        UPSTREAM_CONNECTIONS,
        Kind::Gauge,
        "Connections open to a backend.",
    ),
    (
        UPSTREAM_CONNECTIONS_IDLE,
        Kind::Gauge,
        "Connections open to a backend and carrying no request (exact for HTTP/1.1, a lower bound for HTTP/2).",
    ),
    (
        UPSTREAM_CONNECTS,
        Kind::Counter,
        "Connections made to a backend, by result (ok, failed, timeout).",
    ),
    (
        UPSTREAM_INFLIGHT,
        Kind::Gauge,
        "Exchanges past the queue stage for an upstream.",
    ),
    (
        UPSTREAM_LATENCY,
        Kind::Histogram,
        "Time from sending an attempt to its response head, by backend.",
    ),
    (
        UPSTREAM_LIMIT,
        Kind::Gauge,
        "An upstream's inflight cap (max_inflight or its bulkhead share).",
    ),
    (
        UPSTREAM_REQUESTS,
        Kind::Counter,
        "Attempts to a backend, by status class or failure (connect_error, reset, timeout).",
    ),
    (
        WORKER_CONNECTIONS,
        Kind::Counter,
        "Client connections served by each worker.",
    ),
];

/// Gives every metric its `# HELP` (call once the recorder is installed).
pub fn describe() {
    for (name, kind, help) in HELP {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
}

/// Per-route request metrics, registered when the route is built.
pub struct RouteMetrics {
    route: String,
    by_class: [Counter; 5],
    ttfb: Histogram,
    duration: Histogram,
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        let r = route.to_string();
        RouteMetrics {
            by_class: CLASSES.map(|c| counter!(ROUTE_REQUESTS, "route" => r.clone(), "class" => c)),
            ttfb: histogram!(ROUTE_TTFB, "route" => r.clone()),
            duration: histogram!(ROUTE_DURATION, "route" => r.clone()),
            route: r,
        }
    }

    /// One exchange of the route ended: its status (if a response went), Spooky's reason (if
    /// it refused or abandoned it), its time to first byte and its whole time.
    pub fn record(
        &self,
        status: Option<http::StatusCode>,
        reason: Option<&'static str>,
        ttfb: Option<std::time::Duration>,
        total: std::time::Duration,
    ) {
        if let Some(s) = status {
            self.by_class[class_index(s)].increment(1);
        }
        if let Some(t) = ttfb {
            self.ttfb.record(t.as_secs_f64());
        }
        self.duration.record(total.as_secs_f64());
        if let Some(reason) = reason {
            counter!(ROUTE_REFUSED, "route" => self.route.clone(), "reason" => reason).increment(1);
        }
    }
}

/// The metrics every stage exports, registered once when the pipeline is built.
#[derive(Clone)]
pub struct StageMetrics {
    pipeline: String,
    stage: &'static str,
    pub received: Counter,
    pub emitted: Counter,
    pub queue_depth: Gauge,
    pub queue_wait: Histogram,
    /// Exchanges in the stage (sampled at scrape time).
    pub inflight: Gauge,
    pub processing: Histogram,
}

impl StageMetrics {
    pub fn new(pipeline: &str, stage: &'static str) -> Self {
        let p = pipeline.to_string();
        StageMetrics {
            received: counter!(STAGE_RECEIVED, "pipeline" => p.clone(), "stage" => stage),
            emitted: counter!(STAGE_EMITTED, "pipeline" => p.clone(), "stage" => stage),
            queue_depth: gauge!(STAGE_QUEUE_DEPTH, "pipeline" => p.clone(), "stage" => stage),
            inflight: gauge!(STAGE_INFLIGHT, "pipeline" => p.clone(), "stage" => stage),
            queue_wait: histogram!(STAGE_QUEUE_WAIT, "pipeline" => p.clone(), "stage" => stage),
            processing: histogram!(STAGE_PROCESSING, "pipeline" => p.clone(), "stage" => stage),
            pipeline: p,
            stage,
        }
    }

    /// The rejection counter for one reason.
    pub fn rejected(&self, reason: &'static str) -> Counter {
        counter!(STAGE_REJECTED, "pipeline" => self.pipeline.clone(), "stage" => self.stage, "reason" => reason)
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index of `1xx`..`5xx` for a status.
fn class_index(status: http::StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, 5) - 1
}

/// `1xx`..`5xx`.
pub fn status_class(status: http::StatusCode) -> &'static str {
    CLASSES[class_index(status)]
}

/// Finished requests by status class, and their duration; registered once per pipeline so
/// the hot path only touches handles.
pub struct RequestMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
}

impl RequestMetrics {
    pub fn new(pipeline: &str) -> Self {
        RequestMetrics {
            by_class: CLASSES
                .map(|c| counter!(REQUESTS, "pipeline" => pipeline.to_string(), "class" => c)),
            duration: histogram!(REQUEST_DURATION, "pipeline" => pipeline.to_string()),
        }
    }

    /// Counts one finished request.
    pub fn record(&self, status: http::StatusCode, took: std::time::Duration) {
        self.by_class[class_index(status)].increment(1);
        self.duration.record(took.as_secs_f64());
    }
}

/// What happened to the attempts sent to one backend.
pub struct BackendMetrics {
    by_class: [Counter; 5],
    pub connect_error: Counter,
    pub reset: Counter,
    pub timeout: Counter,
    latency: Histogram,
}

impl BackendMetrics {
    pub fn new(upstream: &str, backend: &str) -> Self {
        let c = |class: &'static str| counter!(UPSTREAM_REQUESTS, "upstream" => upstream.to_string(), "backend" => backend.to_string(), "class" => class);
        BackendMetrics {
            by_class: CLASSES.map(c),
            connect_error: c("connect_error"),
            reset: c("reset"),
            timeout: c("timeout"),
            latency: histogram!(UPSTREAM_LATENCY, "upstream" => upstream.to_string(), "backend" => backend.to_string()),
        }
    }

    /// A response head arrived after `elapsed`.
    pub fn response(&self, status: http::StatusCode, elapsed: std::time::Duration) {
        self.by_class[class_index(status)].increment(1);
        self.latency.record(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_named_here_has_help() {
        let source = include_str!("metrics.rs");
        let names: Vec<&str> = source
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter_map(|l| l.split_once(": &str = \""))
            .map(|(_, v)| v.trim_end_matches("\";"))
            .collect();
        assert!(names.len() > 50, "{names:?}");
        for n in &names {
            assert!(HELP.iter().any(|(h, _, _)| h == n), "{n} has no # HELP");
        }
        for (name, kind, help) in HELP {
            assert!(!help.is_empty());
            let counter = name.ends_with("_total");
            assert_eq!(
                counter,
                *kind == Kind::Counter,
                "{name}: counters end in _total"
            );
            if name.ends_with("_seconds") {
                assert_eq!(*kind, Kind::Histogram, "{name}");
            }
        }
    }
}
