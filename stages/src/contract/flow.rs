//! What a stage answers for each exchange.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::contract::exchange::Exchange;
use crate::contract::reason::Reason;

/// A stage's answer: an enum, so each outcome explains itself.
pub enum Flow {
    /// Pass the exchange to the next stage of the chain.
    Continue(Exchange),
    /// Answer now with a response built by the proxy (a direct-response route).
    Respond(Exchange, Reply),
    /// Refuse the exchange: the reason decides the status and how it is rendered.
    Reject(Exchange, Reason),
    /// The client is gone (stream reset, connection closed): drop everything, answer nothing.
    Abandon(Exchange, Reason),
    /// Open a CONNECT tunnel to the target the route's policy let through.
    Connect(
        Exchange,
        std::sync::Arc<crate::contract::route::ConnectPolicy>,
        crate::http::connect_allow::Target,
    ),
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

/// The body of a proxy-made error answer: `400 Bad Request: bad_path`.
pub fn status_text(status: StatusCode, reason: &str) -> Bytes {
    Bytes::from(format!(
        "{} {}: {reason}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    ))
}
