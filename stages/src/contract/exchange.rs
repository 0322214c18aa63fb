//! The exchange: one request and its response, carried through every stage.
//!
//! Everything an exchange holds — caps' permits, the drain guard, the client's streams, its
//! record — is released by `Drop`, wherever the exchange is when it ends (in a stage, waiting
//! in an inlet, in a queue, in its response body). That is the teardown invariant: no exchange
//! leaks a permit, ever.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use smallvec::SmallVec;
use spooky_sync::{DrainGuard, Permit};

use crate::body::RequestBody;
use crate::contract::reason::Reason;
use crate::contract::record::Record;
use crate::contract::responder::Responder;
use crate::contract::response::End;
use crate::contract::route::Route;
use crate::tls::identity::ClientIdentity;
use crate::upstreams::{Upstream, UpstreamBody};

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

    /// A short label (metrics, the end-of-exchange record).
    pub fn label(self) -> &'static str {
        match self {
            ClientProtocol::H3 => "h3",
            ClientProtocol::H2 => "h2",
            ClientProtocol::Http1 => "http/1.1",
        }
    }
}

/// The client's facts, as its adapter knows them.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub protocol: ClientProtocol,
    /// Whether the client connection is encrypted (`X-Forwarded-Proto`).
    pub tls: bool,
    /// The verified client certificate, when one was presented (mTLS).
    pub identity: Option<Arc<ClientIdentity>>,
    /// The listener's `client_identity_header`, which forwards `identity`.
    pub forward_header: Option<http::HeaderName>,
    /// The client connection, unique in the process: a QUIC connection keeps it across
    /// connection-ID rotation and address migration (`sticky-cid`, `hash_key = "quic-cid"`).
    pub conn: u64,
    /// The TLS server name the client asked for (lower case), when it sent one.
    pub sni: Option<Arc<str>>,
    /// The TLS version (`TLSv1.3`), when encrypted.
    pub tls_version: Option<&'static str>,
    /// The client's address as believed: the peer's, or, when the peer is a trusted proxy
    /// (`[stages.ingress] trusted_proxies`), the one its `X-Forwarded-For` reports.
    pub ip: std::net::IpAddr,
    /// The peer is a trusted proxy: its forwarding headers are kept (`forwarded = "append"`).
    pub trusted_peer: bool,
    /// A connection served from 0-RTT: whether (and when) its handshake completed.
    pub handshake: Option<Handshake>,
}

/// The handshake of a connection that serves 0-RTT data: until it completes, what arrives
/// may be a replay (RFC 8470).
#[derive(Clone)]
pub struct Handshake(tokio::sync::watch::Receiver<bool>);

impl Handshake {
    /// Follows `done`: `true` when the handshake completes, `false` if the connection
    /// failed first.
    pub fn after(done: impl std::future::Future<Output = bool> + Send + 'static) -> Handshake {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            if done.await {
                let _ = tx.send(true);
            }
        });
        Handshake(rx)
    }

    /// The handshake has completed.
    pub fn done(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits for the handshake; `false` if the connection failed first.
    pub async fn wait(&self) -> bool {
        let mut rx = self.0.clone();
        rx.wait_for(|d| *d).await.is_ok()
    }
}

impl Client {
    /// A client with no certificate, on a new connection.
    pub fn new(addr: SocketAddr, protocol: ClientProtocol, tls: bool) -> Client {
        Client {
            addr,
            protocol,
            tls,
            identity: None,
            forward_header: None,
            conn: next_conn(),
            sni: None,
            tls_version: None,
            ip: addr.ip(),
            trusted_peer: false,
            handshake: None,
        }
    }
}

/// A new connection number (adapters take one per accepted connection).
pub fn next_conn() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A connection-wide "the client is gone" signal, raised once by the adapter that watches the
/// connection (HTTP/3: when the QUIC connection closes), read by every exchange on it.
#[derive(Clone)]
pub struct ConnGone(tokio::sync::watch::Receiver<bool>);

/// The adapter's end of a [`ConnGone`].
pub struct RaiseConnGone(tokio::sync::watch::Sender<bool>);

impl ConnGone {
    /// A new signal and the handle that raises it.
    pub fn new() -> (RaiseConnGone, ConnGone) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (RaiseConnGone(tx), ConnGone(rx))
    }

    /// Completes once the connection is gone (or its watcher ended).
    pub async fn gone(&mut self) {
        let _ = self.0.wait_for(|g| *g).await;
    }
}

impl RaiseConnGone {
    /// Tells every exchange of the connection.
    pub fn raise(&self) {
        self.0.send_replace(true);
    }
}

/// The request's `content-length`, parsed once by the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentLength {
    Absent,
    Length(u64),
    /// More than one, or not a number (RFC 9110 §8.6): ingress refuses the request.
    Invalid,
}

impl ContentLength {
    pub fn of(headers: &http::HeaderMap) -> ContentLength {
        let mut all = headers.get_all(http::header::CONTENT_LENGTH).iter();
        let Some(first) = all.next() else {
            return ContentLength::Absent;
        };
        if all.next().is_some() {
            return ContentLength::Invalid;
        }
        match first.to_str().ok().and_then(|s| s.parse::<u64>().ok()) {
            Some(n) => ContentLength::Length(n),
            None => ContentLength::Invalid,
        }
    }

    /// The length, when there is a valid one.
    pub fn get(self) -> Option<u64> {
        match self {
            ContentLength::Length(n) => Some(n),
            _ => None,
        }
    }
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
    /// The chosen backend's circuit-breaker ticket (select), reported by dispatch.
    pub breaker: Option<spooky_sync::Ticket>,
}

/// Why an attempt to a backend failed: classified where it happened, with its source kept
/// for the logs, so hedge-retry decides by matching, never by parsing a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptError {
    /// No connection could be made: nothing was sent, a retry is safe.
    Connect,
    /// The connection (TCP or TLS) did not complete within `connect_timeout`: nothing was
    /// sent either.
    ConnectTimeout,
    /// The backend reset or broke the exchange after the request was (partly) sent.
    Reset,
    /// The response head did not come in time.
    Timeout,
    /// The backend answered with a status Spooky does not pass on (a 101 without Upgrade).
    Status(http::StatusCode),
    /// The backend answered with a status its upstream retries (`retry_on`); the answer is
    /// held back while another attempt is made, and is what the client gets if none is.
    Answered(http::StatusCode),
    /// The backend broke HTTP (a response hyper could not read).
    Protocol,
}

impl AttemptError {
    /// What happened, for the logs.
    pub fn label(self) -> &'static str {
        match self {
            AttemptError::Connect => "upstream connect failed",
            AttemptError::ConnectTimeout => "upstream connect timed out",
            AttemptError::Reset => "upstream request failed",
            AttemptError::Timeout => "upstream response timed out",
            AttemptError::Status(_) => "upstream answered a status Spooky does not pass on",
            AttemptError::Answered(_) => "upstream answered a status that is retried",
            AttemptError::Protocol => "upstream broke HTTP",
        }
    }

    /// A short code (the access log's attempt outcome).
    pub fn code(self) -> &'static str {
        match self {
            AttemptError::Connect => "connect_failed",
            AttemptError::ConnectTimeout => "connect_timeout",
            AttemptError::Reset => "reset",
            AttemptError::Timeout => "timeout",
            AttemptError::Status(_) => "bad_status",
            AttemptError::Answered(_) => "retried_status",
            AttemptError::Protocol => "protocol_error",
        }
    }

    /// Whether another backend may be tried: nothing reached the backend.
    pub fn nothing_sent(self) -> bool {
        matches!(self, AttemptError::Connect | AttemptError::ConnectTimeout)
    }

    /// How `retry_on` sees it.
    pub fn retry_kind(self) -> crate::upstreams::retry::FailureKind {
        use crate::upstreams::retry::FailureKind;
        match self {
            AttemptError::Connect | AttemptError::ConnectTimeout => FailureKind::Connect,
            AttemptError::Reset | AttemptError::Protocol => FailureKind::Reset,
            AttemptError::Timeout => FailureKind::Timeout,
            AttemptError::Status(_) | AttemptError::Answered(_) => FailureKind::Other,
        }
    }

    /// The reason an exchange is refused with when this was its last attempt.
    pub fn reason(self) -> Reason {
        match self {
            AttemptError::Connect => Reason::UpstreamConnect,
            AttemptError::ConnectTimeout => Reason::ConnectTimeout,
            AttemptError::Reset | AttemptError::Protocol => Reason::UpstreamReset,
            AttemptError::Timeout => Reason::UpstreamTimeout,
            AttemptError::Status(_) => Reason::UpstreamUpgrade,
            // Only reached when no other attempt could be made and the answer was lost.
            AttemptError::Answered(_) => Reason::NoBackend,
        }
    }
}

/// A failed attempt, classified, with the error that caused it (for the logs).
#[derive(Debug, thiserror::Error)]
#[error("{}", kind.label())]
pub struct AttemptFailure {
    pub kind: AttemptError,
    #[source]
    pub source: crate::body::BoxError,
}

/// One failed attempt to a backend.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub backend: usize,
    pub error: AttemptError,
}

/// What the stages decided for an exchange.
#[derive(Default)]
pub struct Decisions {
    /// Set by route.
    pub route: Option<Arc<Route>>,
    /// Set by route (for proxied routes).
    pub upstream: Option<Arc<Upstream>>,
    /// Index of the backend chosen by select for the current attempt.
    pub backend: Option<usize>,
    /// Failed attempts so far.
    pub attempts: SmallVec<[Attempt; 2]>,
    /// The client's authority, when the route rewrote it (`X-Forwarded-Host` names it).
    pub original_authority: Option<http::uri::Authority>,
    /// Fields a refusal carries besides its reason's (a rate limit's `RateLimit-*`).
    pub reply_headers: Option<Box<http::HeaderMap>>,
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
    /// `content-length`, parsed once by the adapter.
    pub content_length: ContentLength,
    pub body: RequestBody,
    /// How the response goes back, on the client's own protocol.
    pub responder: Responder,
    /// Who the client is and how it came.
    pub client: Client,
    /// Raised when the client's connection is gone (adapters that watch connections).
    pub conn_gone: Option<ConnGone>,
    /// A gRPC request (set by ingress): the proxy's own errors are answered as gRPC.
    pub grpc: bool,
    /// A gRPC request's deadline (`grpc-timeout` from when ingress saw it): it bounds the
    /// wait for the backend and the whole streamed response.
    pub deadline: Option<Instant>,
    /// The route's `timeouts.total`, from when the exchange began: it bounds queueing, every
    /// attempt and backoff (504 `total_timeout`) and the streamed response (cut).
    pub total_deadline: Option<Instant>,
    pub permits: Permits,
    /// Route, upstream, backend, attempts.
    pub decided: Decisions,
    /// Set by dispatch: the upstream response to stream back.
    pub response: Option<http::Response<UpstreamBody>>,
    /// When ingress built the exchange.
    pub started: Instant,
    /// What happened to it, emitted once when it ends.
    pub record: Record,
    /// `x-request-id`: the client's when valid, else made by ingress; forwarded and returned.
    pub request_id: Option<http::HeaderValue>,
    /// The tunnel the request asks for (set by ingress): a WebSocket.
    pub tunnel: Option<crate::contract::tunnel::TunnelKind>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // The record (unless it left with the response) is emitted as the state drops.
        self.fill_record();
    }
}

/// Where a new exchange comes from: what the protocol adapter knows about its client.
pub struct Origin {
    pub client: Client,
    /// Raised when the client's connection is gone.
    pub conn_gone: Option<ConnGone>,
    pub content_length: ContentLength,
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
        let started = Instant::now();
        let protocol = origin.client.protocol;
        Exchange(Box::new(ExchangeState {
            id,
            head,
            content_length: origin.content_length,
            body,
            responder,
            client: origin.client,
            conn_gone: origin.conn_gone,
            grpc: false,
            deadline: None,
            total_deadline: None,
            permits: Permits::default(),
            decided: Decisions::default(),
            response: None,
            started,
            record: Record::new(id, protocol, started),
            request_id: None,
            tunnel: None,
        }))
    }

    /// An exchange with no client behind it (empty body, a responder that sends nowhere):
    /// for benchmarks and tests of the engine.
    pub fn detached(id: u64, head: Parts) -> Exchange {
        let origin = Origin {
            client: Client::new(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                ClientProtocol::H3,
                true,
            ),
            conn_gone: None,
            content_length: ContentLength::of(&head.headers),
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
    /// while the request body was still open, or its adapter can no longer deliver a response
    /// (HTTP/1.1, HTTP/2: hyper gave the request up). Never completes otherwise.
    pub async fn cancelled(&mut self) {
        let st = &mut *self.0;
        let conn = async {
            match st.conn_gone.as_mut() {
                Some(c) => c.gone().await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = conn => {}
            () = st.body.reset() => {}
            () = st.responder.closed() => {}
        }
    }

    /// Copies the decisions into the record (cheap: reference counts).
    fn fill_record(&mut self) {
        let st = &mut *self.0;
        st.record.route = st.decided.route.clone();
        st.record.upstream = st.decided.upstream.clone();
        st.record.backend = st.decided.backend;
        if let Some(d) = &mut st.record.details {
            d.client_ip = st.client.ip;
            st.record.failed.clone_from(&st.decided.attempts);
            st.record.request_id.clone_from(&st.request_id);
        }
    }

    /// Takes the client's and the request's facts for the access log (before any stage ran).
    pub fn keep_details(&mut self) {
        let st = &mut *self.0;
        st.record.details = Some(Box::new(crate::contract::record::Details {
            client: st.client.addr,
            client_ip: st.client.ip,
            tls: st.client.tls_version,
            sni: st.client.sni.clone(),
            identity: st.client.identity.clone(),
            method: st.head.method.clone(),
            uri: st.head.uri.clone(),
            host: st.head.headers.get(http::header::HOST).cloned(),
        }));
    }

    /// Writes the exchange's `x-request-id` on a response going to the client.
    pub fn stamp(&self, headers: &mut http::HeaderMap) {
        if let Some(id) = &self.request_id {
            headers.insert(crate::http::request_id::X_REQUEST_ID, id.clone());
        }
    }

    /// What the exchange holds until its response's last byte is gone: its permits and its
    /// record, handed over with the response (status `status`).
    pub fn end(&mut self, status: http::StatusCode) -> End {
        self.fill_record();
        let st = &mut *self.0;
        let mut record = std::mem::replace(
            &mut st.record,
            Record::new(st.id, st.client.protocol, st.started),
        );
        record.status = Some(status);
        record.head_at = Some(st.started.elapsed());
        End {
            permits: std::mem::take(&mut st.permits),
            record: Some(Box::new(record)),
        }
    }

    /// The name of the backend chosen for the current attempt.
    pub fn backend_name(&self) -> Option<&str> {
        self.decided
            .upstream
            .as_ref()?
            .backend_name(self.decided.backend?)
    }

    /// Safe to send again to another backend after a connect failure: an idempotent method,
    /// and no request body or one kept for replay.
    pub fn retry_safe(&self) -> bool {
        self.idempotent() && self.body.can_repeat()
    }

    /// An idempotent method (RFC 9110 §9.2.2): sending it twice means what sending it once does.
    pub fn idempotent(&self) -> bool {
        use http::Method;
        matches!(
            self.head.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        )
    }
}
