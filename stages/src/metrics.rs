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

/// Buckets for every `_seconds` histogram: few and deliberate, 100 µs to 10 s.
pub const SECONDS_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 10.0,
];

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
        let m = StageMetrics {
            received: counter!(STAGE_RECEIVED, "pipeline" => p.clone(), "stage" => stage),
            emitted: counter!(STAGE_EMITTED, "pipeline" => p.clone(), "stage" => stage),
            queue_depth: gauge!(STAGE_QUEUE_DEPTH, "pipeline" => p.clone(), "stage" => stage),
            inflight: gauge!(STAGE_INFLIGHT, "pipeline" => p.clone(), "stage" => stage),
            queue_wait: histogram!(STAGE_QUEUE_WAIT, "pipeline" => p.clone(), "stage" => stage),
            processing: histogram!(STAGE_PROCESSING, "pipeline" => p.clone(), "stage" => stage),
            pipeline: p,
            stage,
        };
        // Present from the start, so dashboards and tests see zeros rather than nothing.
        m.rejected("none").increment(0);
        m
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
    pub fn record(&self, status: http::StatusCode, started: std::time::Instant) {
        self.by_class[class_index(status)].increment(1);
        self.duration.record(started.elapsed().as_secs_f64());
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
