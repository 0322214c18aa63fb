//! The exchange: one request and its response, carried through every stage.
//!
//! Everything an exchange holds — caps' permits, the drain guard, the client's streams — is
//! released by `Drop`, wherever the exchange is when it ends (in a stage, in a channel, in a
//! queue). That is the teardown invariant: no exchange leaks a permit, ever.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use smallvec::SmallVec;
use spooky_sync::{DrainGuard, Permit};

use crate::adapters::responder::Responder;
use crate::body::RequestBody;
use crate::contract::route::Route;
use crate::upstreams::Upstream;

/// How the client reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientProtocol {
    H3,
    H2,
    Http1,
}

impl ClientProtocol {
    /// The `Via` protocol version token (RFC 9110 §7.6.3).
    pub fn via_version(self) -> &'static str {
        match self {
            ClientProtocol::H3 => "3",
            ClientProtocol::H2 => "2",
            ClientProtocol::Http1 => "1.1",
        }
    }
}

/// What the client's TLS connection says about it.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// The verified client certificate, when one was presented (mTLS).
    pub identity: Option<Arc<crate::tls::identity::ClientIdentity>>,
    /// The listener's `client_identity_header`.
    pub forward_header: Option<http::HeaderName>,
}

/// Permits held by the exchange; each is returned when dropped.
#[derive(Default)]
pub struct Permits {
    /// Counts the exchange as live for graceful drain.
    pub drain: Option<DrainGuard>,
    /// The global inflight cap (admission).
    pub admission: Option<Permit>,
    /// The upstream's inflight cap (queue).
    pub upstream: Option<Permit>,
    /// The chosen backend's inflight cap (select).
    pub backend: Option<Permit>,
}

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptError {
    /// No connection could be made: nothing was sent, a retry is safe.
    Connect,
}

/// One failed attempt to a backend.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub backend: usize,
    pub error: AttemptError,
}

/// One request/response through the pipeline: a box around [`ExchangeState`], so handing an
/// exchange from stage to stage moves a pointer, not a kilobyte of state.
pub struct Exchange(Box<ExchangeState>);

impl std::ops::Deref for Exchange {
    type Target = ExchangeState;
    fn deref(&self) -> &ExchangeState {
        &self.0
    }
}

impl std::ops::DerefMut for Exchange {
    fn deref_mut(&mut self) -> &mut ExchangeState {
        &mut self.0
    }
}

/// Everything an exchange carries.
pub struct ExchangeState {
    pub id: u64,
    /// The request head (method, URI with authority, headers).
    pub head: Parts,
    pub body: RequestBody,
    pub responder: Responder,
    pub client_addr: SocketAddr,
    pub protocol: ClientProtocol,
    /// Whether the client connection is encrypted (`X-Forwarded-Proto`).
    pub tls: bool,
    /// The client's verified certificate identity (mTLS), and the header that forwards it.
    pub client: ClientTls,
    /// A gRPC request (set by ingress): the proxy's own errors are answered as gRPC.
    pub grpc: bool,
    /// A gRPC request's deadline (`grpc-timeout` from when ingress saw it): it bounds the
    /// wait for the backend and the whole streamed response.
    pub deadline: Option<Instant>,
    /// The connection the exchange came on: closing it cancels the exchange.
    pub(crate) conn: Option<quinn::Connection>,
    pub permits: Permits,
    /// Set by route.
    pub route: Option<Arc<Route>>,
    /// Set by route (for proxied routes).
    pub upstream: Option<Arc<Upstream>>,
    /// Index of the backend chosen by select for the current attempt.
    pub backend: Option<usize>,
    /// Failed attempts so far.
    pub attempts: SmallVec<[Attempt; 2]>,
    /// Set by dispatch: the upstream response to stream back.
    pub response: Option<http::Response<hyper::body::Incoming>>,
    /// When ingress built the exchange.
    pub started: Instant,
}

/// Where a new exchange comes from: what the protocol adapter knows about its client.
pub struct Origin {
    pub client_addr: SocketAddr,
    pub protocol: ClientProtocol,
    pub tls: bool,
    pub client: ClientTls,
    /// HTTP/3 only: the QUIC connection, whose closing cancels the exchange.
    pub conn: Option<quinn::Connection>,
}

impl Exchange {
    /// A new exchange, before any stage ran.
    pub fn start(
        id: u64,
        head: Parts,
        body: RequestBody,
        responder: Responder,
        origin: Origin,
    ) -> Exchange {
        Exchange(Box::new(ExchangeState {
            id,
            head,
            body,
            responder,
            client_addr: origin.client_addr,
            protocol: origin.protocol,
            tls: origin.tls,
            client: origin.client,
            grpc: false,
            deadline: None,
            conn: origin.conn,
            permits: Permits::default(),
            route: None,
            upstream: None,
            backend: None,
            attempts: SmallVec::new(),
            response: None,
            started: Instant::now(),
        }))
    }

    /// An exchange with no client behind it (empty body, a responder that sends nowhere):
    /// for benchmarks and tests of the engine.
    pub fn detached(id: u64, head: Parts) -> Exchange {
        let origin = Origin {
            client_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            protocol: ClientProtocol::H3,
            tls: true,
            client: ClientTls::default(),
            conn: None,
        };
        Exchange::start(
            id,
            head,
            RequestBody::empty(),
            Responder::detached(),
            origin,
        )
    }

    /// Completes when the client is gone: its connection closed, it reset the request stream
    /// while the request body was still open, or (HTTP/1.1, HTTP/2) hyper gave the request up.
    /// Never completes otherwise.
    pub async fn cancelled(&mut self) {
        let st = &mut *self.0;
        let conn = st.conn.clone();
        let closed = async {
            match conn {
                Some(c) => {
                    c.closed().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = closed => {}
            () = st.body.reset() => {}
            () = st.responder.closed() => {}
        }
    }

    /// Whether the client's connection is already closed (checked when an exchange leaves a
    /// channel, where nobody could watch it).
    pub fn is_cancelled(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| c.close_reason().is_some())
    }

    /// Safe to send again to another backend after a connect failure: an idempotent method
    /// and no request body.
    pub fn retry_safe(&self) -> bool {
        use http::Method;
        matches!(
            self.head.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        ) && self.body.is_empty_request()
    }
}
