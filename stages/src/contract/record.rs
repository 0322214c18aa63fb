//! The end-of-exchange record: what happened to one exchange — stage timing marks, status,
//! bytes in and out, route, upstream, backend, attempts, reason, protocol — collected as it
//! flows and emitted **exactly once** when it ends, wherever it ends.
//!
//! Exactly once is by construction: the record is a guard that rides with the exchange (and,
//! once the response is handed over, inside the response body), and it is emitted from its
//! `Drop`, which runs once. Whoever ends the exchange only says how (`ended`); an exchange
//! dropped without a word (a closed inlet, a panic unwinding, a client that left) is recorded
//! as `cancelled`. The pipeline's [`RecordSink`] turns records into request metrics today, and
//! will feed the access log, passive health and latency-aware balancing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use smallvec::SmallVec;

use crate::body::BytesIn;
use crate::contract::exchange::{Attempt, ClientProtocol};
use crate::contract::reason::Reason;
use crate::contract::route::Route;
use crate::upstreams::Upstream;

/// How an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole response went out (proxied, direct or a refusal).
    Complete,
    /// The exchange ended before its response was complete: the client left, or the exchange
    /// was dropped (shutdown, an inlet closed).
    Cancelled,
    /// The backend's response body failed mid-stream; the client's stream was cut.
    UpstreamFailed,
    /// The proxy reset the request stream instead of answering (a malformed HTTP/3 head).
    Reset,
}

impl Outcome {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::Cancelled => "cancelled",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::Reset => "reset",
        }
    }
}

/// Where records go: the pipeline's, set when it is built.
pub trait RecordSink: Send + Sync + 'static {
    fn emit(&self, record: &Record);
}

/// What happened to one exchange.
pub struct Record {
    pub id: u64,
    pub protocol: ClientProtocol,
    pub started: Instant,
    /// Each stage the exchange left, and when (since `started`).
    pub marks: SmallVec<[(&'static str, Duration); 8]>,
    /// The response status, once a response was handed to the client.
    pub status: Option<StatusCode>,
    /// Why the proxy refused or abandoned it.
    pub reason: Option<Reason>,
    pub route: Option<Arc<Route>>,
    pub upstream: Option<Arc<Upstream>>,
    /// The backend of the last attempt (an index into `upstream`'s backends).
    pub backend: Option<usize>,
    /// Attempts sent to backends.
    pub attempts: u32,
    /// Request-body bytes read from the client (made when a body is forwarded: a bodyless
    /// request allocates nothing for it).
    pub bytes_in: Option<BytesIn>,
    /// Response-body bytes handed to the client.
    pub bytes_out: u64,
    pub outcome: Option<Outcome>,
    /// When the response head was handed to the client (time to first byte).
    pub head_at: Option<Duration>,
    /// The request's `x-request-id` (taken or made by ingress).
    pub request_id: Option<http::HeaderValue>,
    /// The client and request facts the access log prints: taken only when a log is on, so
    /// a proxy without one copies nothing.
    pub details: Option<Box<Details>>,
    /// The failed attempts, in order (with `details` only).
    pub failed: SmallVec<[Attempt; 2]>,
    /// The exchange's trace, when it is sampled for tracing (`[tracing]`).
    pub trace: Option<Box<Trace>>,
    sink: Option<Arc<dyn RecordSink>>,
}

/// A sampled exchange's trace: its ids, and one span per attempt sent to a backend.
pub struct Trace {
    pub trace_id: [u8; 16],
    /// The exchange's own span.
    pub span_id: [u8; 8],
    /// The client's span (its `traceparent`), when it sent one.
    pub parent: Option<[u8; 8]>,
    pub attempts: SmallVec<[AttemptSpan; 2]>,
}

/// One attempt to a backend, as a span: its id went to the backend in `traceparent`.
pub struct AttemptSpan {
    pub span_id: [u8; 8],
    /// An index into the record's upstream's backends.
    pub backend: usize,
    /// Since the exchange started.
    pub start: Duration,
    pub end: Option<Duration>,
    /// `response` with its status, or why it failed.
    pub outcome: &'static str,
    pub status: Option<u16>,
}

impl Trace {
    /// Ends the attempts still open at `at` with `outcome` (the attempt loop's result).
    pub fn close_attempts(&mut self, at: Duration, outcome: &'static str, status: Option<u16>) {
        for a in self.attempts.iter_mut().filter(|a| a.end.is_none()) {
            a.end = Some(at);
            a.outcome = outcome;
            a.status = status;
        }
    }
}

/// Who asked and what, as the client sent it (before any rewrite).
pub struct Details {
    pub client: std::net::SocketAddr,
    /// The client as believed (a trusted proxy's `X-Forwarded-For`).
    pub client_ip: std::net::IpAddr,
    /// `TLSv1.2`, `TLSv1.3`; none on plain TCP.
    pub tls: Option<&'static str>,
    pub sni: Option<Arc<str>>,
    pub identity: Option<Arc<crate::tls::identity::ClientIdentity>>,
    pub method: http::Method,
    pub uri: http::Uri,
    pub host: Option<http::HeaderValue>,
}

impl Details {
    /// `:authority`, or `Host`.
    pub fn authority(&self) -> Option<&str> {
        match self.uri.authority() {
            Some(a) => Some(a.as_str()),
            None => self.host.as_ref().and_then(|h| h.to_str().ok()),
        }
    }

    /// The request target's path and query.
    pub fn path(&self) -> &str {
        self.uri
            .path_and_query()
            .map_or(self.uri.path(), |p| p.as_str())
    }
}

impl Record {
    pub fn new(id: u64, protocol: ClientProtocol, started: Instant) -> Record {
        Record {
            id,
            protocol,
            started,
            marks: SmallVec::new(),
            status: None,
            reason: None,
            route: None,
            upstream: None,
            backend: None,
            attempts: 0,
            bytes_in: None,
            bytes_out: 0,
            outcome: None,
            head_at: None,
            request_id: None,
            details: None,
            failed: SmallVec::new(),
            trace: None,
            sink: None,
        }
    }

    /// The counter a forwarded request body adds its bytes to.
    pub fn bytes_in_counter(&mut self) -> BytesIn {
        self.bytes_in.get_or_insert_with(BytesIn::default).clone()
    }

    /// Request-body bytes read so far.
    pub fn bytes_in_total(&self) -> u64 {
        self.bytes_in.as_ref().map_or(0, BytesIn::get)
    }

    /// Where the record is emitted (the pipeline running the exchange).
    pub fn emit_to(&mut self, sink: Arc<dyn RecordSink>) {
        self.sink = Some(sink);
    }

    /// A stage finished with the exchange.
    pub fn mark(&mut self, stage: &'static str) {
        self.mark_at(stage, Instant::now());
    }

    /// A stage finished with the exchange at `at` (a clock read the caller already made).
    pub fn mark_at(&mut self, stage: &'static str, at: Instant) {
        self.marks
            .push((stage, at.saturating_duration_since(self.started)));
    }

    /// Says how the exchange ended; the first word counts.
    pub fn ended(&mut self, outcome: Outcome) {
        self.outcome.get_or_insert(outcome);
    }

    /// The backend's name, when one was chosen.
    pub fn backend_name(&self) -> Option<&str> {
        self.upstream.as_ref()?.backend_name(self.backend?)
    }

    /// When the exchange started, by the wall clock.
    pub fn wall_start(&self) -> std::time::SystemTime {
        std::time::SystemTime::now() - self.started.elapsed()
    }

    /// Refused, failed or cut: a Spooky reason, a 5xx, or an ending other than complete
    /// (always logged, whatever the sample; an error span in traces).
    pub fn failed(&self) -> bool {
        self.reason.is_some()
            || self.status.is_some_and(|s| s.is_server_error())
            || self.outcome != Some(Outcome::Complete)
    }

    /// How long the exchange took.
    pub fn duration(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.outcome.get_or_insert(Outcome::Cancelled);
        if let Some(sink) = self.sink.take() {
            sink.emit(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<(u64, Outcome)>>);

    impl RecordSink for Seen {
        fn emit(&self, r: &Record) {
            if let (Ok(mut seen), Some(o)) = (self.0.lock(), r.outcome) {
                seen.push((r.id, o));
            }
        }
    }

    #[test]
    fn emitted_once_with_the_first_outcome_or_cancelled() {
        let seen = Arc::new(Seen::default());
        let mut a = Record::new(1, ClientProtocol::H3, Instant::now());
        a.emit_to(seen.clone());
        a.ended(Outcome::Complete);
        a.ended(Outcome::Cancelled);
        drop(a);
        let mut b = Record::new(2, ClientProtocol::H2, Instant::now());
        b.emit_to(seen.clone());
        drop(b);
        let seen = seen.0.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(seen, vec![(1, Outcome::Complete), (2, Outcome::Cancelled)]);
    }
}
