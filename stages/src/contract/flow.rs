//! What a stage answers for each exchange.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::contract::exchange::Exchange;

/// A stage's answer: an enum, so each outcome explains itself.
pub enum Flow {
    /// Pass the exchange to the next stage of the chain.
    Continue(Exchange),
    /// Answer now with a response built by the proxy (a direct-response route).
    Respond(Exchange, Reply),
    /// Refuse the exchange with an error status; `reason` labels the rejection metric.
    Reject(Exchange, Reject),
    /// The attempt failed in a way that is safe to repeat: go back to select for another
    /// backend (the hedge-retry stage decides whether attempts remain).
    Retry(Exchange),
    /// The client is gone (stream reset, connection closed): drop everything, answer nothing.
    Abandon(Exchange, &'static str),
    /// The exchange is finished (egress sent the whole response).
    Done,
}

/// A response made by the proxy itself.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A refusal: status and a bounded reason label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: StatusCode,
    /// Metric label; always one of a fixed set of `&'static str`.
    pub reason: &'static str,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u32>,
    /// A malformed HTTP/3 message: reset the stream with H3_MESSAGE_ERROR rather than answer
    /// (RFC 9114 §4.1.2).
    pub malformed: bool,
    /// HTTP/1.1: close the connection after the answer (nothing after this request on it can
    /// be trusted: its framing was bad, or tunnel bytes may follow).
    pub close: bool,
    /// An `Allow` header (405).
    pub allow: Option<&'static str>,
}

/// The body of a proxy-made error answer: `400 Bad Request: bad_path`.
pub fn status_text(status: StatusCode, reason: &str) -> Bytes {
    Bytes::from(format!(
        "{} {}: {reason}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    ))
}

/// The methods Spooky forwards, for `Allow` (405) and `OPTIONS *`.
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE";

impl Reject {
    pub const fn new(status: StatusCode, reason: &'static str) -> Self {
        Reject {
            status,
            reason,
            retry_after: None,
            malformed: false,
            close: false,
            allow: None,
        }
    }

    /// A malformed request head (HTTP/3: a stream error H3_MESSAGE_ERROR; else 400).
    pub const fn malformed(reason: &'static str) -> Self {
        Reject {
            malformed: true,
            ..Reject::bad_request(reason)
        }
    }

    /// 503 with `Retry-After: 1`: a cap or queue is full.
    pub const fn overload(reason: &'static str) -> Self {
        Reject {
            retry_after: Some(1),
            ..Reject::new(StatusCode::SERVICE_UNAVAILABLE, reason)
        }
    }

    /// 405 with `Allow` for a method Spooky does not carry yet (`CONNECT`); HTTP/1.1 closes,
    /// since tunnel bytes may follow the request.
    pub const fn method_not_allowed(reason: &'static str) -> Self {
        Reject {
            close: true,
            allow: Some(ALLOWED_METHODS),
            ..Reject::new(StatusCode::METHOD_NOT_ALLOWED, reason)
        }
    }

    /// 503: the proxy is draining.
    pub const fn shutting_down() -> Self {
        Reject::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    }

    /// 502: no connection could be made to any backend tried.
    pub const fn upstream_connect() -> Self {
        Reject::new(StatusCode::BAD_GATEWAY, "upstream_connect")
    }

    /// 400: a malformed request; HTTP/1.1 closes the connection.
    pub const fn bad_request(reason: &'static str) -> Self {
        Reject {
            close: true,
            ..Reject::new(StatusCode::BAD_REQUEST, reason)
        }
    }
}
