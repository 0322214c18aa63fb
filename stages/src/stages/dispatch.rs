//! Dispatch: sends the attempt to the chosen backend on a pooled HTTP/1.1 connection
//! (hyper-util's client), streaming the request body, and waits for the response head.
//!
//! Errors are classified, not parsed: a connect failure (nothing was sent) is handed back for
//! another attempt when the request is safe to repeat; anything else is final. 502 for connect
//! or reset, 504 when the head does not arrive within `response_timeout`.

use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Request, StatusCode, Uri};
use serde::Deserialize;

use crate::body::{BodyFault, BoxError, ClientBodyError, RequestBody};
use crate::contract::exchange::{AttemptError, AttemptFailure, Exchange, ExchangeState};
use crate::contract::reason::Reason;
use crate::http::headers::{append_via, strip_hop_by_hop};
use crate::http::upgrade;
use crate::units::{Dur, Size};
use crate::upstreams::addr::BackendAddr;
use crate::upstreams::client::{ClientSettings, UPSTREAM_READ_AHEAD};

/// What a failed attempt adds to the backend's latency estimate (`latency-aware`): a backend
/// that fails fast must not look fast. The peak is forgotten with the estimate's 10 s decay.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// RFC 8470's `Early-Data`.
const EARLY_DATA: HeaderName = HeaderName::from_static("early-data");

/// How `X-Forwarded-*` and `Forwarded` are treated (a route may override it).
pub use crate::http::forwarded::Policy as Forwarded;

/// Which forwarding headers a hop writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For`, `-Proto`, `-Host` (what most backends read).
    #[default]
    XForwarded,
    /// RFC 7239 `Forwarded` only.
    Rfc7239,
    /// Both.
    Both,
}

/// `[stages.dispatch]`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Longest TCP connect to a backend.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Longest wait for the response head once the request is sent → 504.
    #[serde(default = "default_response_timeout")]
    pub response_timeout: Dur,
    /// Idle pooled connections are closed after this long.
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout: Dur,
    /// Idle connections kept per backend.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_backend: usize,
    /// The most an HTTP/1.1 backend connection reads of a response ahead of the client
    /// (8 KiB to 16 MiB): what each response a slow client is not reading holds, and the
    /// size of the chunks a fast one gets.
    #[serde(default = "default_upstream_read_ahead")]
    pub upstream_read_ahead: Size,
    /// `X-Forwarded-For/-Proto/-Host` and `Forwarded` policy: `append` (to what a trusted
    /// proxy sent), `replace`, `strip` (`off`).
    #[serde(default)]
    pub forwarded: Forwarded,
    /// `"x-forwarded"` (default), `"rfc7239"` (`Forwarded`), or `"both"`.
    #[serde(default)]
    pub forwarded_header: ForwardedHeader,
    /// Bulkheads: the share of the attempt stages' concurrency (select, hedge-retry,
    /// dispatch) one upstream may hold when the pipeline has several; past it, its
    /// exchanges wait in their route's queue and the other upstreams keep theirs.
    #[serde(default = "default_upstream_share")]
    pub upstream_share: f64,
    /// The longest the client may pause its request body (408; `"0s"`: no limit); a route's
    /// `timeouts.request_body_idle` overrides it.
    #[serde(default = "default_body_idle")]
    pub request_body_idle: Dur,
}

fn default_body_idle() -> Dur {
    Dur(Duration::from_secs(60))
}

fn default_upstream_share() -> f64 {
    0.5
}

fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_response_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_pool_idle_timeout() -> Dur {
    Dur(Duration::from_secs(90))
}
fn default_pool_max_idle() -> usize {
    64
}
fn default_upstream_read_ahead() -> Size {
    Size(UPSTREAM_READ_AHEAD as u64)
}

impl Config {
    /// How backend connections are made and pooled.
    pub fn client_settings(&self) -> ClientSettings {
        ClientSettings {
            connect_timeout: self.connect_timeout.0,
            pool_idle_timeout: self.pool_idle_timeout.0,
            pool_max_idle: self.pool_max_idle_per_backend,
            // Validated to 8 KiB ..= 16 MiB (config::validate).
            read_ahead: usize::try_from(self.upstream_read_ahead.0).unwrap_or(UPSTREAM_READ_AHEAD),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            connect_timeout: default_connect_timeout(),
            response_timeout: default_response_timeout(),
            pool_idle_timeout: default_pool_idle_timeout(),
            pool_max_idle_per_backend: default_pool_max_idle(),
            upstream_read_ahead: default_upstream_read_ahead(),
            forwarded: Forwarded::default(),
            forwarded_header: ForwardedHeader::default(),
            upstream_share: default_upstream_share(),
            request_body_idle: default_body_idle(),
        }
    }
}

/// The running stage.
pub struct Dispatch {
    response_timeout: Duration,
    request_body_idle: Option<Duration>,
    forwarded: Forwarded,
    forwarded_header: ForwardedHeader,
    /// Request bodies are kept for another attempt up to this many bytes (hedge-retry's
    /// `replay_body_limit`; 0 without hedge-retry).
    replay_limit: usize,
    /// Counts bodies that outgrew `replay_limit`.
    replay_overflow: metrics::Counter,
}

impl Dispatch {
    /// `replay_limit`: how much of a request body is kept for another attempt.
    pub fn build(config: &Config, replay_limit: usize, pipeline: &str) -> Self {
        Dispatch {
            response_timeout: config.response_timeout.0,
            request_body_idle: Some(config.request_body_idle.0).filter(|d| !d.is_zero()),
            forwarded: config.forwarded,
            forwarded_header: config.forwarded_header,
            replay_limit,
            replay_overflow: metrics::counter!(
                crate::metrics::BODY_REPLAY_OVERFLOW,
                "pipeline" => pipeline.to_string()
            ),
        }
    }

    /// Sends one attempt to the backend select chose and waits for the response head
    /// (left in `ex.response`). A failed attempt says why, classified, with its source.
    /// `per_try`: the upstream's `per_try_timeout`, when shorter than `response_timeout`.
    pub async fn attempt(
        &self,
        ex: &mut Exchange,
        per_try: Option<Duration>,
    ) -> Result<(), Failed> {
        let sending = self.prepare(ex, per_try)?;
        let sent = {
            let send = self.send(sending);
            tokio::select! {
                r = send => Some(r),
                () = ex.cancelled() => None,
            }
        };
        match sent {
            None => Err(Failed::Cancelled),
            Some(Ok(head)) => {
                ex.response = Some(head.response);
                ex.permits.backend = head.permit;
                Ok(())
            }
            Some(Err(f)) => Err(f),
        }
    }

    /// Builds the attempt to the backend select chose: the request, and what it holds (the
    /// backend's permit and breaker ticket, taken from the exchange). Sending it
    /// ([`Dispatch::send`]) needs nothing of the exchange, so attempts can race (hedging).
    pub fn prepare(&self, ex: &mut Exchange, per_try: Option<Duration>) -> Result<Sending, Failed> {
        let (Some(upstream), Some(idx)) = (ex.decided.upstream.clone(), ex.decided.backend) else {
            return Err(Failed::Refused(Reason::ChainIncomplete));
        };
        let timeouts = ex
            .decided
            .route
            .as_ref()
            .map(|r| r.timeouts)
            .unwrap_or_default();
        // gRPC client streams may be quiet for long: only a route's own limit applies.
        let stage_idle = self.request_body_idle.filter(|_| !ex.grpc);
        if let Some(idle) = timeouts.request_body_idle.map(|d| d.0).or(stage_idle) {
            ex.body.set_idle(idle);
        }
        let mut req = {
            use crate::upstreams::config::BackendProtocol;
            let backend = &upstream.backends[idx];
            let protocol = backend.pool.protocol;
            if ex.tunnel.is_some() && protocol == BackendProtocol::H3 {
                // A WebSocket goes to an HTTP/1.1 backend (RFC 6455's handshake) or an HTTP/2
                // one (RFC 8441); extended CONNECT towards HTTP/3 backends is not built.
                tracing::debug!(
                    exchange = ex.id,
                    "WebSocket towards an HTTP/3 backend refused"
                );
                return Err(Failed::Refused(Reason::UpstreamUpgrade));
            }
            let mut req = self
                .upstream_request(ex, &backend.addr, backend.http1)
                .map_err(Failed::Refused)?;
            if ex.tunnel.is_some() && matches!(protocol, BackendProtocol::H2 | BackendProtocol::H2c)
            {
                upgrade::into_extended_connect(&mut req);
            }
            req
        };
        let started = Instant::now();
        ex.record.attempts += 1;
        let since = started.saturating_duration_since(ex.started);
        if let Some(trace) = ex.record.trace.as_mut() {
            // A sampled exchange: the backend continues the trace under this attempt's span.
            let span_id = crate::http::trace_context::new_span_id();
            req.headers_mut().insert(
                crate::http::trace_context::TRACEPARENT,
                crate::http::trace_context::format(&trace.trace_id, &span_id),
            );
            trace.attempts.push(crate::contract::record::AttemptSpan {
                span_id,
                backend: idx,
                start: since,
                end: None,
                outcome: "cancelled",
                status: None,
            });
        }
        let mut head = self.response_timeout;
        for t in [per_try, timeouts.response_head.map(|d| d.0)]
            .into_iter()
            .flatten()
        {
            head = head.min(t);
        }
        // A gRPC client's deadline and the route's total bound the wait too (what is left of
        // the gRPC deadline was forwarded); the nearest decides.
        let left = |d: Option<Instant>| d.map(|d| d.saturating_duration_since(started));
        let mut wait = (head, Waited::Head);
        for (l, by) in [
            (left(ex.deadline), Waited::GrpcDeadline),
            (left(ex.total_deadline), Waited::Total),
        ] {
            if let Some(l) = l
                && l < wait.0
            {
                wait = (l, by);
            }
        }
        if wait.0.is_zero() && wait.1 == Waited::Total {
            return Err(Failed::Refused(Reason::TotalTimeout));
        }
        let (wait, by) = wait;
        Ok(Sending {
            exchange: ex.id,
            upstream,
            backend: idx,
            req,
            permit: ex.permits.backend.take(),
            ticket: ex.permits.breaker.take(),
            started,
            wait,
            by,
        })
    }

    /// Sends a prepared attempt and waits for its response head. Dropped before it ends
    /// (the client left, or another attempt won), the request is cancelled: its connection
    /// is closed or its stream reset, and its permit let go.
    pub async fn send(&self, s: Sending) -> Result<Head, Failed> {
        let Sending {
            exchange,
            upstream,
            backend: idx,
            req,
            permit,
            ticket,
            started,
            wait,
            by,
        } = s;
        let backend = &upstream.backends[idx];
        // The breaker hears the outcome of this attempt (none if it is dropped).
        let breaker = |ok: bool| {
            if let (Some(b), Some(t)) = (&backend.breaker, ticket) {
                b.outcome(t, ok);
            }
        };
        // A WebSocket handshake's key: the backend's 101 must carry its accept.
        let key = req.headers().get(upgrade::SEC_WEBSOCKET_KEY).cloned();
        let tunnel = req.headers().contains_key(http::header::UPGRADE);
        let extended = req.extensions().get::<hyper::ext::Protocol>().is_some();
        let sent = tokio::time::timeout(wait, backend.client.request(req)).await;
        let failed = |kind, source: BoxError| Failed::Attempt(AttemptFailure { kind, source });
        match sent {
            Ok(Ok(mut resp)) if extended && resp.status().is_success() => {
                // RFC 8441 §5: an HTTP/2 backend accepts a WebSocket with a 2xx. Marked as the
                // switch it is, egress answers the client in its own protocol (an HTTP/1.1
                // client's 101 with the accept for its own key).
                backend.metrics.response(resp.status(), started.elapsed());
                breaker(true);
                *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                Ok(Head {
                    backend: idx,
                    response: resp,
                    permit,
                })
            }
            Ok(Ok(resp)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS && tunnel => {
                backend.metrics.response(resp.status(), started.elapsed());
                let accepted = resp
                    .headers()
                    .get(upgrade::SEC_WEBSOCKET_ACCEPT)
                    .is_some_and(|a| {
                        key.as_ref().is_some_and(|k| {
                            a.as_bytes() == upgrade::accept_for(k.as_bytes()).as_bytes()
                        })
                    });
                if !accepted {
                    breaker(false);
                    return Err(failed(
                        AttemptError::Status(resp.status()),
                        "backend's 101 has no Sec-WebSocket-Accept matching the key".into(),
                    ));
                }
                breaker(true);
                Ok(Head {
                    backend: idx,
                    response: resp,
                    permit,
                })
            }
            Ok(Ok(resp)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                // Spooky forwards no Upgrade, so a 101 is a backend's error; it would reach the
                // client without its Upgrade header and kill the connection.
                backend.metrics.response(resp.status(), started.elapsed());
                breaker(false);
                Err(failed(
                    AttemptError::Status(resp.status()),
                    "backend answered 101 to a request without Upgrade".into(),
                ))
            }
            Ok(Ok(resp)) => {
                let at = Instant::now();
                let elapsed = at - started;
                backend.metrics.response(resp.status(), elapsed);
                backend.latency.observe(elapsed);
                if upstream
                    .tracks_latency
                    .load(std::sync::atomic::Ordering::Relaxed)
                {
                    upstream
                        .latency
                        .record(elapsed, crate::upstreams::balance::ns_at(at));
                }
                if let Some(o) = &backend.outlier {
                    o.status(resp.status());
                }
                breaker(!resp.status().is_server_error());
                Ok(Head {
                    backend: idx,
                    response: resp,
                    permit,
                })
            }
            Ok(Err(e)) if ClientBodyError::find(&e).is_some() => {
                // The client's body failed: the client's error, not the backend's.
                let fault = ClientBodyError::find(&e).map(|c| c.fault);
                tracing::debug!(exchange, error = %error_chain(&e), "client request body failed; upstream request aborted");
                match fault {
                    Some(BodyFault::Malformed) => Err(Failed::Refused(Reason::BadRequestBody)),
                    Some(BodyFault::Idle) => Err(Failed::Refused(Reason::RequestBodyTimeout)),
                    Some(BodyFault::TooLarge) => Err(Failed::Refused(Reason::RequestBodyTooLarge)),
                    Some(BodyFault::Gone) | None => Err(Failed::Cancelled),
                }
            }
            Ok(Err(e)) if e.is_connect() => {
                backend.metrics.connect_error.increment(1);
                breaker(false);
                backend.latency.observe(started.elapsed() + FAILURE_PENALTY);
                if let Some(o) = &backend.outlier {
                    o.failure();
                }
                let kind = if connect_timed_out(&e) {
                    AttemptError::ConnectTimeout
                } else {
                    AttemptError::Connect
                };
                Err(failed(kind, Box::new(e)))
            }
            Ok(Err(e)) => {
                backend.metrics.reset.increment(1);
                breaker(false);
                backend.latency.observe(started.elapsed() + FAILURE_PENALTY);
                if let Some(o) = &backend.outlier {
                    o.failure();
                }
                let kind = if is_parse_error(&e) {
                    AttemptError::Protocol
                } else {
                    AttemptError::Reset
                };
                Err(failed(kind, Box::new(e)))
            }
            Err(_elapsed) => {
                backend.metrics.timeout.increment(1);
                backend.latency.observe(started.elapsed() + FAILURE_PENALTY);
                if let Some(o) = &backend.outlier {
                    o.failure();
                }
                match by {
                    Waited::GrpcDeadline => {
                        tracing::info!(
                            exchange,
                            "gRPC deadline passed waiting for the response head"
                        );
                        Err(Failed::Refused(Reason::GrpcDeadline))
                    }
                    Waited::Total => {
                        tracing::info!(
                            exchange,
                            "total timeout passed waiting for the response head"
                        );
                        Err(Failed::Refused(Reason::TotalTimeout))
                    }
                    Waited::Head => {
                        breaker(false);
                        Err(failed(
                            AttemptError::Timeout,
                            format!("no response head within {wait:?}").into(),
                        ))
                    }
                }
            }
        }
    }

    /// The request to the backend: origin-form path, `Host` from the client's authority,
    /// hop-by-hop headers removed, `Via` and `X-Forwarded-*` added.
    fn upstream_request(
        &self,
        ex: &mut Exchange,
        backend: &BackendAddr,
        http1: bool,
    ) -> Result<Request<RequestBody>, Reason> {
        let path = ex
            .head
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // The connector ignores the URI's authority (it dials the configured address), so the
        // URI carries the client's: it becomes `:authority` towards HTTP/2 backends.
        let authority = ex
            .head
            .uri
            .authority()
            .cloned()
            .unwrap_or_else(|| backend.authority.clone());
        let uri = Uri::builder()
            .scheme(backend.scheme.clone())
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|_| Reason::Unforwardable)?;
        // A request that may be sent again keeps its head; others give it up (moved, not copied).
        let policy = ex.decided.upstream.as_ref().and_then(|u| u.retry.as_ref());
        let replay_limit = policy
            .and_then(|p| p.retry_buffer)
            .unwrap_or(self.replay_limit);
        let may_repeat = ex.retry_safe()
            || (self.replay_limit > 0 && ex.idempotent())
            || policy.is_some_and(|p| p.attempts > 1);
        let mut headers = if may_repeat {
            ex.head.headers.clone()
        } else {
            std::mem::take(&mut ex.head.headers)
        };
        strip_hop_by_hop(&mut headers);
        // Room for what is added below (Host, Via, TE, Connection, X-Forwarded-*) at once:
        // growing a header map rehashes it, and it grew twice per request.
        headers.reserve(8);
        if let Some(a) = ex.head.uri.authority() {
            let host = HeaderValue::from_str(a.as_str()).map_err(|_| Reason::BadAuthority)?;
            headers.insert(http::header::HOST, host);
        }
        append_via(&mut headers, ex.client.protocol.via_version());
        if ex.client.handshake.as_ref().is_some_and(|h| !h.done()) {
            // RFC 8470 §5.1: forwarded before the handshake completed, from 0-RTT data.
            headers.insert(EARLY_DATA, HeaderValue::from_static("1"));
        }
        if let Some(name) = &ex.client.forward_header {
            // Never pass on what the client wrote there itself.
            headers.remove(name);
            if let Some(id) = &ex.client.identity {
                let v =
                    HeaderValue::from_str(&id.header_value()).map_err(|_| Reason::Unforwardable)?;
                headers.insert(name.clone(), v);
            }
        }
        if ex.tunnel.is_some() {
            // RFC 6455 §4.1 towards an HTTP/1.1 backend, whatever the client spoke: an HTTP/2
            // client's extended CONNECT has no key, so Spooky makes one (and checks the
            // backend's accept against it).
            headers.insert(
                http::header::CONNECTION,
                HeaderValue::from_static("upgrade"),
            );
            headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
            if !headers.contains_key(upgrade::SEC_WEBSOCKET_KEY) {
                headers.insert(upgrade::SEC_WEBSOCKET_KEY, upgrade::new_key());
            }
            if !headers.contains_key(upgrade::SEC_WEBSOCKET_VERSION) {
                headers.insert(
                    upgrade::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
        } else {
            // HTTP/3 clients always take trailers; saying so lets an HTTP/1.1 backend send
            // them.
            headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        }
        if http1 && ex.tunnel.is_none() {
            // RFC 9110 §10.1.4: TE is hop-by-hop, so its sender lists it in Connection. Not
            // towards HTTP/2 (connection fields are malformed there; hyper would drop the
            // TE it names). An `https://` backend on `auto` is HTTP/2 or HTTP/1.1 by ALPN,
            // unknown here, so it gets `te: trailers` alone.
            headers.insert(http::header::CONNECTION, HeaderValue::from_static("te"));
        }
        if let Some(deadline) = ex.deadline {
            // The backend gets what is left of the client's deadline (gRPC over HTTP/2:
            // proxies pass the deadline on, less the time already spent).
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Reason::GrpcDeadline);
            }
            headers.insert("grpc-timeout", crate::http::grpc::encode_timeout(left));
        }
        let policy = ex
            .decided
            .route
            .as_ref()
            .and_then(|r| r.edits.forwarded)
            .unwrap_or(self.forwarded);
        forwarding(&mut headers, ex, policy, self.forwarded_header)?;
        if ex.tunnel.is_some() {
            // The handshake has no body; the client's bytes flow once the tunnel is up.
            let mut req = Request::new(RequestBody::empty());
            *req.method_mut() = http::Method::GET;
            *req.uri_mut() = uri;
            *req.headers_mut() = headers;
            return Ok(req);
        }
        let st: &mut ExchangeState = ex;
        let body = st
            .body
            .for_attempt(
                || st.record.bytes_in_counter(),
                replay_limit,
                Some(&self.replay_overflow),
            )
            // Hedge-retry asks for another attempt only when the body can be sent again.
            .ok_or(Reason::ChainIncomplete)?;
        let mut req = Request::new(body);
        *req.method_mut() = ex.head.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        Ok(req)
    }
}

/// `X-Forwarded-For/-Proto/-Host` and/or RFC 7239 `Forwarded` (`which`) by `policy`: what a
/// trusted proxy sent is kept under `append`; what anyone else sent is never passed on.
fn forwarding(
    headers: &mut http::HeaderMap,
    ex: &Exchange,
    policy: Forwarded,
    which: ForwardedHeader,
) -> Result<(), Reason> {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    const FWD: HeaderName = http::header::FORWARDED;
    let keep = policy == Forwarded::Append && ex.client.trusted_peer;
    if !keep {
        crate::http::headers::remove_any(headers, &[XFF, XFP, XFH, FWD]);
    }
    if policy == Forwarded::Strip {
        return Ok(());
    }
    let peer = ex.client.addr.ip();
    let proto = if ex.client.tls { "https" } else { "http" };
    let host = ex
        .decided
        .original_authority
        .as_ref()
        .or(ex.head.uri.authority())
        .map(|a| a.as_str());
    let value = |s: &str| HeaderValue::from_str(s).map_err(|_| Reason::Unforwardable);
    if which != ForwardedHeader::Rfc7239 {
        headers.append(
            XFF,
            crate::http::forwarded::ip_value(peer).map_err(|_| Reason::Unforwardable)?,
        );
        // A trusted proxy knows the original scheme and host better than we do.
        headers
            .entry(XFP)
            .or_insert_with(|| HeaderValue::from_static(proto));
        if let Some(h) = host
            && let http::header::Entry::Vacant(v) = headers.entry(XFH)
        {
            v.insert(value(h)?);
        }
    }
    if which != ForwardedHeader::XForwarded {
        headers.append(
            FWD,
            value(&crate::http::forwarded::element(peer, proto, host))?,
        );
    }
    Ok(())
}

/// An attempt ready to send: what [`Dispatch::send`] needs, and what it holds.
pub struct Sending {
    exchange: u64,
    upstream: std::sync::Arc<crate::upstreams::Upstream>,
    /// The backend's index in its upstream.
    pub backend: usize,
    req: Request<RequestBody>,
    permit: Option<spooky_sync::Permit>,
    ticket: Option<spooky_sync::Ticket>,
    started: Instant,
    wait: Duration,
    by: Waited,
}

/// What bounds an attempt's wait for its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waited {
    /// `response_timeout`, `per_try_timeout` or the route's `timeouts.response_head`.
    Head,
    GrpcDeadline,
    /// The route's `timeouts.total`.
    Total,
}

/// Whether a connect failure was the connect timeout (TCP or TLS).
fn connect_timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    use crate::upstreams::error::ConnectError;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<ConnectError>() {
            return matches!(
                c,
                ConnectError::TcpTimeout(_)
                    | ConnectError::TlsTimeout(_)
                    | ConnectError::QuicTimeout(_)
            );
        }
        cur = err.source();
    }
    false
}

/// An attempt's response head, and the backend permit its exchange keeps while the body
/// streams.
pub struct Head {
    pub backend: usize,
    pub response: http::Response<crate::upstreams::UpstreamBody>,
    pub permit: Option<spooky_sync::Permit>,
}

/// Why an attempt did not produce a response head.
#[derive(Debug)]
pub enum Failed {
    /// The backend failed it (hedge-retry decides whether another attempt follows).
    Attempt(AttemptFailure),
    /// The exchange cannot be sent at all (the client's fault, or its deadline passed).
    Refused(Reason),
    /// The client went away while the attempt waited.
    Cancelled,
}

/// Whether hyper or Spooky's HTTP/1.1 client found the backend's response unreadable.
fn is_parse_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<crate::upstreams::h1::BadResponse>()
            || err
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_parse)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// `error: cause: cause` for logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
