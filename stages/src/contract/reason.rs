//! Why an exchange was refused or abandoned: one enum, and everything that follows from a
//! reason — its metric label, its status, its gRPC code, `Retry-After`, whether HTTP/1.1
//! closes and whether HTTP/3 resets — decided here, by matching. A reason added later is one
//! new variant, and the compiler lists every place that must decide about it.

use http::StatusCode;

use crate::http::grpc;
use crate::http::path::PathError;

/// The methods Spooky forwards, for `Allow` (405) and `OPTIONS *`.
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE";

/// Why an exchange ended without the backend's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    // The client's request (4xx); HTTP/1.1 closes after them, since nothing after a malformed
    // request on that connection can be trusted.
    /// More than one `content-length`, or one that is not a number (RFC 9110 §8.6).
    BadContentLength,
    /// HTTP/3: a connection-specific field (RFC 9114 §4.2); the stream is reset.
    ConnectionSpecificField,
    /// Two `Host` fields (RFC 9112 §3.2).
    DuplicateHost,
    /// More header fields than `max_header_count`.
    HeaderCount,
    /// A head larger than `max_header_bytes`.
    HeaderBytes,
    /// `Host` is not an authority, or carries userinfo.
    BadHost,
    /// `:authority` and `Host` differ (RFC 9114 §4.3.1).
    AuthorityMismatch,
    /// `:authority` carries userinfo.
    BadAuthority,
    /// HTTP/1.1 without `Host` (RFC 9112 §3.2).
    MissingHost,
    /// Neither `:authority` nor `Host`.
    MissingAuthority,
    /// The path cannot be normalized.
    BadPath(PathError),
    /// `CONNECT`: no tunnels yet (405 with `Allow`).
    ConnectUnsupported,
    /// The request body's framing was bad (HTTP/3: the stream is reset).
    BadRequestBody,
    /// A header Spooky must forward cannot be written (the client's identity, its address).
    Unforwardable,
    /// No route matches (404).
    NoRoute,
    /// The client paused its request body longer than `request_body_idle` (408).
    RequestBodyTimeout,
    /// `Expect` other than `100-continue` (417, RFC 9110 §10.1.1).
    ExpectationFailed,
    /// A WebSocket handshake on a route without `websocket = true` (403).
    WebSocketNotAllowed,
    /// A CONNECT target the route's `connect.allow` does not let through (403).
    ConnectDenied,
    /// A CONNECT target could not be reached (502): refused, timed out, no address.
    ConnectFailed,
    /// The request body is longer than the route's `max_request_body` (413): by its
    /// `content-length` before anything is forwarded, or as it streams.
    RequestBodyTooLarge,
    /// The route's rate limit (429, with `Retry-After` and `RateLimit-*`).
    RateLimited,

    // Overload: 503 with `Retry-After: 1`; gRPC RESOURCE_EXHAUSTED for every one of them.
    /// The global inflight cap (admission, `shed`).
    AdmissionFull,
    /// A fused stage's concurrency (`shed`).
    ConcurrencyFull,
    /// The route's waiting room in the queue stage (`[stages.queue] capacity`) is full.
    QueueFull,
    /// A stage's inlet (its `queue`) is full, with `when_full = "shed"`.
    InletFull,
    /// Upstream capacity did not come within the queue deadline.
    QueueDeadline,
    /// The upstream's inflight cap, without a queue stage.
    UpstreamFull,
    /// Every backend is at its inflight cap.
    NoBackend,
    /// Every candidate backend's circuit breaker is open.
    BreakerOpen,
    /// Brownout: the route's priority class is shed near the admission cap.
    Brownout,
    /// The proxy is draining (503, no `Retry-After`).
    ShuttingDown,

    // The backend side (5xx).
    /// No connection could be made to any backend tried.
    UpstreamConnect,
    /// The backend reset or broke the exchange.
    UpstreamReset,
    /// The response head did not come within `response_timeout`.
    UpstreamTimeout,
    /// No connection (TCP, TLS) to any backend tried within `connect_timeout` (504).
    ConnectTimeout,
    /// The route's `timeouts.total` passed before the response head (504).
    TotalTimeout,
    /// The backend answered 101 to a request without `Upgrade`.
    UpstreamUpgrade,
    /// The gRPC client's deadline passed.
    GrpcDeadline,
    /// The chain reached dispatch without a backend, or egress without a response
    /// (a chain without select, or without dispatch).
    ChainIncomplete,

    // Abandoned: nothing is answered.
    /// The client went away (stream reset, connection closed) while the exchange waited.
    Cancelled,
    /// The client went away while the response was written.
    ClientGone,
    /// The backend's response body failed mid-stream.
    UpstreamBody,
}

impl Reason {
    /// The metric label (`spooky_stage_rejected_total{reason}`): a fixed, bounded set.
    pub fn label(self) -> &'static str {
        match self {
            Reason::BadContentLength => "bad_content_length",
            Reason::ConnectionSpecificField => "connection_specific_field",
            Reason::DuplicateHost => "duplicate_host",
            Reason::HeaderCount => "header_count",
            Reason::HeaderBytes => "header_bytes",
            Reason::BadHost => "bad_host",
            Reason::AuthorityMismatch => "authority_mismatch",
            Reason::BadAuthority => "bad_authority",
            Reason::MissingHost => "missing_host",
            Reason::MissingAuthority => "missing_authority",
            Reason::BadPath(e) => e.reason(),
            Reason::ConnectUnsupported => "connect_unsupported",
            Reason::BadRequestBody => "bad_request_body",
            Reason::Unforwardable => "unforwardable",
            Reason::NoRoute => "no_route",
            Reason::RequestBodyTimeout => "request_body_timeout",
            Reason::RequestBodyTooLarge => "request_body_too_large",
            Reason::ExpectationFailed => "expectation_failed",
            Reason::WebSocketNotAllowed => "websocket_not_allowed",
            Reason::ConnectDenied => "connect_denied",
            Reason::ConnectFailed => "connect_failed",
            Reason::RateLimited => "rate_limited",
            Reason::AdmissionFull => "admission_full",
            Reason::ConcurrencyFull => "concurrency_full",
            Reason::QueueFull => "queue_full",
            Reason::InletFull => "inlet_full",
            Reason::QueueDeadline => "queue_deadline",
            Reason::UpstreamFull => "upstream_full",
            Reason::NoBackend => "no_backend",
            Reason::BreakerOpen => "breaker_open",
            Reason::Brownout => "brownout",
            Reason::ShuttingDown => "shutting_down",
            Reason::UpstreamConnect => "upstream_connect",
            Reason::UpstreamReset => "upstream_reset",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::ConnectTimeout => "connect_timeout",
            Reason::TotalTimeout => "total_timeout",
            Reason::UpstreamUpgrade => "upstream_upgrade",
            Reason::GrpcDeadline => "grpc_deadline",
            Reason::ChainIncomplete => "chain_incomplete",
            Reason::Cancelled => "cancelled",
            Reason::ClientGone => "client_gone",
            Reason::UpstreamBody => "upstream_body",
        }
    }

    /// The status the client is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::BadContentLength
            | Reason::ConnectionSpecificField
            | Reason::DuplicateHost
            | Reason::BadHost
            | Reason::AuthorityMismatch
            | Reason::BadAuthority
            | Reason::MissingHost
            | Reason::MissingAuthority
            | Reason::BadPath(_)
            | Reason::BadRequestBody
            | Reason::Unforwardable => StatusCode::BAD_REQUEST,
            Reason::HeaderCount | Reason::HeaderBytes => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Reason::ConnectUnsupported => StatusCode::METHOD_NOT_ALLOWED,
            Reason::NoRoute => StatusCode::NOT_FOUND,
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            // Overload (every 503 but draining: see `is_overload`).
            Reason::AdmissionFull
            | Reason::ConcurrencyFull
            | Reason::QueueFull
            | Reason::InletFull
            | Reason::QueueDeadline
            | Reason::UpstreamFull
            | Reason::NoBackend
            | Reason::BreakerOpen
            | Reason::Brownout
            | Reason::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Reason::UpstreamConnect
            | Reason::UpstreamReset
            | Reason::UpstreamUpgrade
            | Reason::ChainIncomplete
            | Reason::UpstreamBody => StatusCode::BAD_GATEWAY,
            Reason::UpstreamTimeout
            | Reason::ConnectTimeout
            | Reason::TotalTimeout
            | Reason::GrpcDeadline => StatusCode::GATEWAY_TIMEOUT,
            Reason::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Reason::RequestBodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::ExpectationFailed => StatusCode::EXPECTATION_FAILED,
            Reason::WebSocketNotAllowed | Reason::ConnectDenied => StatusCode::FORBIDDEN,
            Reason::ConnectFailed => StatusCode::BAD_GATEWAY,
            // Nobody reads it; the record and the logs do.
            Reason::Cancelled | Reason::ClientGone => StatusCode::BAD_REQUEST,
        }
    }

    /// The RFC 9209 `Proxy-Status` error type of a response Spooky made itself; the reason's
    /// own label goes beside it as `details` (see [`Reason::proxy_status`]).
    pub fn proxy_status_error(self) -> &'static str {
        match self {
            Reason::HeaderCount | Reason::HeaderBytes => "http_request_error",
            Reason::NoRoute => "destination_not_found",
            Reason::RateLimited | Reason::WebSocketNotAllowed => "http_request_denied",
            Reason::ConnectDenied => "destination_ip_prohibited",
            Reason::ConnectFailed => "destination_unavailable",
            Reason::NoBackend | Reason::BreakerOpen | Reason::UpstreamConnect => {
                "destination_unavailable"
            }
            Reason::UpstreamReset | Reason::UpstreamBody => "connection_terminated",
            Reason::UpstreamTimeout => "connection_read_timeout",
            Reason::ConnectTimeout => "connection_timeout",
            Reason::TotalTimeout => "proxy_internal_response",
            Reason::RequestBodyTimeout => "http_request_error",
            Reason::UpstreamUpgrade => "http_upgrade_failed",
            Reason::ChainIncomplete => "proxy_configuration_error",
            // Answered here without trying the next hop: overload, draining, a deadline.
            Reason::AdmissionFull
            | Reason::ConcurrencyFull
            | Reason::QueueFull
            | Reason::InletFull
            | Reason::QueueDeadline
            | Reason::UpstreamFull
            | Reason::Brownout
            | Reason::ShuttingDown
            | Reason::GrpcDeadline
            | Reason::Cancelled
            | Reason::ClientGone => "proxy_internal_response",
            _ => "http_request_error",
        }
    }

    /// The `Proxy-Status` field value (RFC 9209) on a response Spooky made itself, e.g.
    /// `spooky; error=proxy_internal_response; details="queue_full"`: clients and load tools
    /// tell Spooky's own refusals from a backend's answers, and why.
    pub fn proxy_status(self) -> String {
        format!(
            "spooky; error={}; details=\"{}\"",
            self.proxy_status_error(),
            self.label()
        )
    }

    /// Whether the proxy is overloaded (503 with `Retry-After`, gRPC RESOURCE_EXHAUSTED):
    /// every 503 but draining.
    pub fn is_overload(self) -> bool {
        self.status() == StatusCode::SERVICE_UNAVAILABLE && self != Reason::ShuttingDown
    }

    /// Seconds for `Retry-After`.
    pub fn retry_after(self) -> Option<u32> {
        self.is_overload().then_some(1)
    }

    /// The gRPC status a gRPC client reads: specific where the proxy knows why (overload,
    /// deadline), else gRPC's HTTP mapping (404 → UNIMPLEMENTED, 5xx → UNAVAILABLE,
    /// 4xx → INTERNAL).
    pub fn grpc_code(self) -> grpc::Code {
        if self == Reason::BreakerOpen {
            // The backends failed, not the proxy's capacity: try again later, elsewhere.
            return grpc::Code::Unavailable;
        }
        if self.is_overload() {
            return grpc::Code::ResourceExhausted;
        }
        match self {
            Reason::UpstreamTimeout
            | Reason::ConnectTimeout
            | Reason::TotalTimeout
            | Reason::GrpcDeadline => grpc::Code::DeadlineExceeded,
            Reason::NoRoute => grpc::Code::Unimplemented,
            Reason::RateLimited | Reason::RequestBodyTooLarge => grpc::Code::ResourceExhausted,
            r if r.status().is_server_error() => grpc::Code::Unavailable,
            _ => grpc::Code::Internal,
        }
    }

    /// A malformed HTTP/3 message: the stream is reset with H3_MESSAGE_ERROR rather than
    /// answered (RFC 9114 §4.1.2). Other protocols answer 400.
    pub fn malformed(self) -> bool {
        matches!(
            self,
            Reason::ConnectionSpecificField | Reason::BadRequestBody
        )
    }

    /// HTTP/1.1 closes the connection after the answer: the request's framing was bad, or
    /// tunnel bytes may follow it.
    pub fn closes(self) -> bool {
        self.status() == StatusCode::BAD_REQUEST
            || self == Reason::ConnectUnsupported
            // The rest of the body may still arrive: the connection cannot be reused.
            || self == Reason::RequestBodyTimeout
            || self == Reason::RequestBodyTooLarge
            || self == Reason::ExpectationFailed
    }

    /// An `Allow` header (405).
    pub fn allow(self) -> Option<&'static str> {
        (self == Reason::ConnectUnsupported).then_some(ALLOWED_METHODS)
    }

    /// Nothing is answered: the client or the response is gone.
    pub fn abandons(self) -> bool {
        matches!(
            self,
            Reason::Cancelled | Reason::ClientGone | Reason::UpstreamBody
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_follow_the_kind_of_reason() {
        use grpc::Code;
        // Every overload reason is the same to a gRPC client (they had drifted apart when the
        // codes came from matching strings).
        for r in [
            Reason::AdmissionFull,
            Reason::ConcurrencyFull,
            Reason::QueueFull,
            Reason::InletFull,
            Reason::QueueDeadline,
            Reason::UpstreamFull,
            Reason::NoBackend,
        ] {
            assert_eq!(r.grpc_code(), Code::ResourceExhausted, "{r}");
            assert_eq!(r.retry_after(), Some(1), "{r}");
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{r}");
        }
        assert_eq!(Reason::NoRoute.grpc_code(), Code::Unimplemented);
        assert_eq!(Reason::UpstreamConnect.grpc_code(), Code::Unavailable);
        assert_eq!(Reason::ShuttingDown.grpc_code(), Code::Unavailable);
        assert_eq!(Reason::UpstreamTimeout.grpc_code(), Code::DeadlineExceeded);
        assert_eq!(Reason::BadHost.grpc_code(), Code::Internal);
        assert_eq!(Reason::ShuttingDown.retry_after(), None);
    }

    #[test]
    fn http1_closes_after_a_bad_request_and_connect() {
        assert!(Reason::BadHost.closes());
        assert!(Reason::ConnectUnsupported.closes());
        assert_eq!(Reason::ConnectUnsupported.allow(), Some(ALLOWED_METHODS));
        assert!(!Reason::NoRoute.closes());
        assert!(!Reason::HeaderCount.closes());
    }
}
