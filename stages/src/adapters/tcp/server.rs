//! The TCP protocol adapter: HTTP/2 and HTTP/1.1 over TLS (ALPN `h2`, `http/1.1`; tokio-rustls
//! and hyper-util's auto server), or plaintext HTTP/1.1. Each request becomes an exchange on the
//! same pipeline as HTTP/3 — there is no second request path. Every response carries `Alt-Svc`
//! for the listener's HTTP/3 port unless `alt_svc = "off"`.
//!
//! Backpressure: a request waits for a permit of the ingress stage's concurrency before it
//! enters the chain; HTTP/2 streams per connection are capped by `max_streams_per_connection`
//! and connections by `max_connections` and `max_connections_per_client` (beyond them new
//! connections are closed at once).
//!
//! Slow clients: ALPN alone picks the protocol (`h2` → HTTP/2; anything else → HTTP/1.1, no
//! sniffing), and every connection runs a [`ConnClock`]: the TLS handshake and the first
//! request head must be done within `header_timeout` of accept, each later HTTP/1.1 head within
//! `header_timeout` of its first byte (else `408` and close), and a connection with no request
//! in flight is closed after `idle_timeout` (HTTP/2 with GOAWAY).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use metrics::{counter, gauge};
use spooky_sync::{Cap, Permit};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsAcceptor;

use crate::adapters::BindError;
use crate::adapters::client_limit::{self, ClientSlot, PerClient};
use crate::adapters::h3::server::until_true;
use crate::adapters::swap::Swap;
use crate::adapters::tcp::batch::Batched;
use crate::adapters::tcp::body::HyperBody;
use crate::adapters::tcp::conn_clock::ConnClock;
use crate::adapters::tcp::h1_guard::{H1Guard, Refusal, Refusals};
use crate::adapters::tcp::preface;
use crate::adapters::tcp::sink::{HyperSink, ProxyBody, Upgrade};
use crate::body::RequestBody;
use crate::config::{AltSvc, ListenerConfig, Protocol, ProxyProtocol, Redirect, StagesConfig};
use crate::contract::exchange::{
    Client, ClientProtocol, ContentLength, Exchange, Origin, next_conn,
};
use crate::contract::flow::status_text;
use crate::contract::reason::Reason;
use crate::contract::responder::Responder;
use crate::engine::generation::Pipelines;
use crate::http::forwarded::{Cidr, trusted};
use crate::http::upgrade;
use crate::metrics::{
    HTTP1_REFUSED, LISTENER_CONNECTIONS, LISTENER_CONNECTIONS_TOTAL, LISTENER_HANDSHAKES,
    LISTENER_TIMEOUTS, WORKER_CONNECTIONS,
};
use crate::tls::{self, CertStore};

/// What every request of a listener needs.
#[derive(Clone)]
struct Shared {
    name: String,
    tls: Option<Arc<tls::ServerConfigCell<TlsAcceptor>>>,
    connections: Cap,
    per_client: Option<Arc<PerClient>>,
    alt_svc: Option<HeaderValue>,
    redirect: Option<u16>,
    protocols: Vec<Protocol>,
    max_streams: u32,
    read_ahead: usize,
    header_timeout: Duration,
    idle_timeout: Duration,
    forward_header: Option<http::HeaderName>,
    proxy_protocol: ProxyProtocol,
    trusted_proxies: Vec<Cidr>,
}

/// A TCP listener: what every worker's accept loop of it shares (certificates, caps, limits).
/// Each worker accepts on its own socket ([`TcpListenerRt::serve`]).
#[derive(Clone)]
pub struct TcpListenerRt {
    /// Its settings, replaceable by a reload (each connection keeps the ones it started with).
    shared: Arc<Swap<Shared>>,
}

impl TcpListenerRt {
    /// The listener's shared half. `h3_port` is the UDP port HTTP/3 is served on (for
    /// `Alt-Svc`).
    pub fn new(
        listener: &ListenerConfig,
        stages: &StagesConfig,
        certs: Option<Arc<CertStore>>,
        h3_port: Option<u16>,
    ) -> Result<TcpListenerRt, BindError> {
        let tls = match certs {
            Some(store) => {
                let mut alpn = Vec::new();
                if listener.protocols.contains(&Protocol::H2) {
                    alpn.push(b"h2".to_vec());
                }
                if listener.protocols.contains(&Protocol::Http1) {
                    alpn.push(b"http/1.1".to_vec());
                }
                let resolver = store.clone();
                Some(Arc::new(tls::ServerConfigCell::new(
                    store,
                    move |verifier| {
                        tls::tcp_server_crypto(resolver.clone(), verifier, alpn.clone())
                            .map(|c| TlsAcceptor::from(Arc::new(c)))
                    },
                )?))
            }
            None => None,
        };
        let alt_svc = match (&listener.alt_svc, h3_port) {
            (AltSvc::Off, _) | (AltSvc::Auto, None) => None,
            (AltSvc::Auto, Some(port)) => Some(
                HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400"))
                    .map_err(BindError::AltSvc)?,
            ),
            (AltSvc::Value(v), _) => Some(HeaderValue::from_str(v).map_err(BindError::AltSvc)?),
        };
        Ok(TcpListenerRt {
            shared: Swap::new(Arc::new(Shared {
                name: listener.name.clone(),
                tls,
                connections: Cap::new(listener.max_connections.get()),
                per_client: listener
                    .max_connections_per_client
                    .map(|n| PerClient::new(n.get())),
                alt_svc,
                redirect: (listener.redirect == Redirect::Https).then_some(listener.redirect_port),
                protocols: listener.protocols.clone(),
                max_streams: listener.max_streams_per_connection.get(),
                read_ahead: usize::try_from(stages.ingress.read_ahead.0).unwrap_or(usize::MAX),
                header_timeout: stages.ingress.header_timeout.0,
                idle_timeout: listener.idle_timeout.0,
                forward_header: tls::forward_header(&listener.tls)?,
                proxy_protocol: listener.proxy_protocol,
                trusted_proxies: listener.trusted_proxies.clone(),
            })),
        })
    }

    /// Serves new connections with `next`'s settings from now on, keeping the connection
    /// cap (open connections keep their places; the limit becomes `next`'s) and the
    /// per-client counts when their limit is unchanged.
    pub fn update(&self, next: &TcpListenerRt) {
        let prev = self.shared.load();
        let mut new = Shared::clone(&next.shared.load());
        client_limit::carry_over(
            &mut new.connections,
            &mut new.per_client,
            &prev.connections,
            &prev.per_client,
        );
        self.shared.store(Arc::new(new));
    }

    /// Accepts connections on `listener` (made from [`sockets::tcp`](crate::adapters::sockets::tcp)
    /// on the calling worker's runtime) until `shutdown` turns true; open
    /// connections then finish their requests (HTTP/2 GOAWAY, HTTP/1.1 `connection: close`).
    ///
    /// Returns once every connection has ended: after the pipeline drained, a connection may
    /// still be writing the last response (its exchange ended when hyper took the last frame,
    /// not when the bytes left), so the daemon awaits this, bounded by `drain_linger`.
    pub async fn serve(
        self,
        listener: TcpListener,
        pipelines: Pipelines,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut stop = shutdown.clone();
        let open = spooky_sync::Drain::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = until_true(&mut stop) => break,
            };
            if *stop.borrow() {
                // This connection raced the shutdown signal in `select!`.
                break;
            }
            let Ok((stream, remote)) = accepted else {
                continue;
            };
            // The listener's settings as of now (a reload may have replaced them).
            let shared = self.shared.load();
            let Ok(permit) = shared.connections.try_acquire() else {
                counter!(LISTENER_HANDSHAKES, "listener" => shared.name.clone(), "protocol" => "tcp", "result" => "refused").increment(1);
                continue;
            };
            // Behind a load balancer the per-client limit is the real client's, known once
            // the PROXY header is read.
            let slot = if shared.expects_proxy_header(remote) {
                None
            } else {
                let Ok(slot) = client_limit::slot(&shared.per_client, remote.ip()) else {
                    counter!(LISTENER_HANDSHAKES, "listener" => shared.name.clone(), "protocol" => "tcp", "result" => "per_client_limit").increment(1);
                    continue;
                };
                slot
            };
            let clock = ConnClock::new(shared.header_timeout, shared.idle_timeout);
            let _ = stream.set_nodelay(true);
            let (shared, pipelines) = (shared.clone(), pipelines.clone());
            let Ok(live) = open.enter() else { break };
            let held = Held {
                _permit: permit,
                _slot: slot,
                _live: live,
            };
            tokio::spawn(connection(
                shared,
                stream,
                remote,
                held,
                clock,
                pipelines.clone(),
                shutdown.clone(),
            ));
        }
        open.close();
        open.wait().await;
    }
}

/// The caps a connection holds until it ends.
struct Held {
    _permit: Permit,
    _slot: Option<ClientSlot>,
    /// Counts the connection until it ends (see [`TcpListenerRt::serve`]).
    _live: spooky_sync::DrainGuard,
}

impl Shared {
    /// Whether `peer` is a load balancer that must send a PROXY header first.
    fn expects_proxy_header(&self, peer: SocketAddr) -> bool {
        self.proxy_protocol != ProxyProtocol::Off && trusted(&self.trusted_proxies, peer.ip())
    }

    fn handshake_failed(&self, result: &'static str) {
        counter!(LISTENER_HANDSHAKES, "listener" => self.name.clone(), "protocol" => "tcp", "result" => result)
            .increment(1);
    }
}

async fn connection(
    shared: Arc<Shared>,
    mut stream: tokio::net::TcpStream,
    mut remote: SocketAddr,
    held: Held,
    clock: Arc<ConnClock>,
    pipelines: Pipelines,
    shutdown: watch::Receiver<bool>,
) {
    let name = shared.name.clone();
    let mut held = held;
    if shared.expects_proxy_header(remote) {
        // The header counts against the time to the first request head.
        let header = preface::read_proxy_header(&mut stream, shared.proxy_protocol);
        match tokio::time::timeout_at(clock.first_head_deadline(), header).await {
            Ok(Ok(client)) => {
                if let Some(client) = client {
                    remote = client;
                }
                let Ok(slot) = client_limit::slot(&shared.per_client, remote.ip()) else {
                    shared.handshake_failed("per_client_limit");
                    return;
                };
                held = Held {
                    _slot: slot,
                    ..held
                };
            }
            Ok(Err(e)) => {
                shared.handshake_failed("proxy_protocol");
                tracing::debug!(peer = %remote, error = %e, "PROXY header refused (connection closed)");
                return;
            }
            Err(_) => return shared.handshake_failed("timeout"),
        }
    }
    // Shared with tunnels on this connection: an upgraded HTTP/1.1 connection outlives
    // hyper's serving of it, and keeps its places under the caps until the tunnel ends.
    let held = Arc::new(held);
    match shared.tls.as_ref().map(|t| t.get()) {
        Some(acceptor) => {
            // Plain HTTP to a TLS port gets a readable answer, not a TLS alert.
            let first = tokio::time::timeout_at(
                clock.first_head_deadline(),
                preface::is_plain_http(&stream),
            );
            match first.await {
                Ok(Ok(false)) => {}
                Ok(Ok(true)) => {
                    shared.handshake_failed("plain_http");
                    tracing::debug!(%remote, "plain HTTP on a TLS port: answered 400");
                    let _ = stream.write_all(preface::PLAIN_HTTP_ANSWER).await;
                    let _ = stream.shutdown().await;
                    return;
                }
                Ok(Err(_)) => return shared.handshake_failed("error"),
                Err(_) => return shared.handshake_failed("timeout"),
            }
            // The handshake counts against the time to the first request head.
            let handshake = acceptor.accept(stream);
            let tls = match tokio::time::timeout_at(clock.first_head_deadline(), handshake).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    counter!(LISTENER_HANDSHAKES, "listener" => name, "protocol" => "tcp", "result" => "error")
                        .increment(1);
                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    counter!(LISTENER_HANDSHAKES, "listener" => name, "protocol" => "tcp", "result" => "timeout")
                        .increment(1);
                    return;
                }
            };
            counter!(LISTENER_HANDSHAKES, "listener" => name.clone(), "protocol" => "tcp", "result" => "ok")
                .increment(1);
            let session = tls.get_ref().1;
            // ALPN decides; without ALPN, HTTP/1.1 unless the listener serves only h2.
            let h2 = match session.alpn_protocol() {
                Some(p) => p == b"h2",
                None => !shared.protocols.contains(&Protocol::Http1),
            };
            let peer = Peer {
                remote,
                tls: true,
                h2,
                h1: None,
                conn: next_conn(),
                sni: session
                    .server_name()
                    .map(|n| Arc::from(n.to_ascii_lowercase())),
                identity: tls::identity_of(session.peer_certificates(), remote),
                held: held.clone(),
                forward_header: shared.forward_header.clone(),
                tls_version: match session.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_2) => Some("TLSv1.2"),
                    Some(rustls::ProtocolVersion::TLSv1_3) => Some("TLSv1.3"),
                    _ => Some("TLS"),
                },
            };
            // Boxed streams: `serve_http`'s future keeps its arguments in every state, so an
            // inline TLS stream (1.2 KB with rustls' state) would be held twice for the
            // connection's life, once there and once in hyper's connection.
            if peer.h2 {
                // Responses ready in the same turn leave in one TLS write (`batch.rs`).
                let tls = Box::new(Batched::new(tls));
                serve_http(shared, TokioIo::new(tls), peer, clock, pipelines, shutdown).await;
            } else {
                let (peer, refusals) = peer.guarded();
                let tls = Box::new(H1Guard::new(tls, refusals).with_clock(clock.clone()));
                serve_http(shared, TokioIo::new(tls), peer, clock, pipelines, shutdown).await;
            }
        }
        None => {
            let peer = Peer {
                remote,
                tls: false,
                h2: false,
                identity: None,
                forward_header: None,
                held: held.clone(),
                h1: None,
                conn: next_conn(),
                sni: None,
                tls_version: None,
            };
            let (peer, refusals) = peer.guarded();
            let stream = Box::new(H1Guard::new(stream, refusals).with_clock(clock.clone()));
            serve_http(
                shared,
                TokioIo::new(stream),
                peer,
                clock,
                pipelines,
                shutdown,
            )
            .await
        }
    }
}

/// The answer to a head the HTTP/1.1 framing guard refused; counted and logged.
fn refused(shared: &Shared, remote: SocketAddr, why: Refusal) -> Response<ProxyBody> {
    tracing::info!(%remote, listener = %shared.name, reason = why.reason(), status = why.status().as_u16(), "HTTP/1.1 request refused: framing (connection closed)");
    counter!(HTTP1_REFUSED, "listener" => shared.name.clone(), "reason" => why.reason())
        .increment(1);
    let mut r = plain(why.status(), status_text(why.status(), why.reason()));
    r.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// What a connection knows about its client.
#[derive(Clone)]
struct Peer {
    remote: SocketAddr,
    tls: bool,
    /// ALPN chose HTTP/2.
    h2: bool,
    identity: Option<Arc<crate::tls::identity::ClientIdentity>>,
    forward_header: Option<http::HeaderName>,
    /// HTTP/1.1 behind the framing guard: where it leaves its refusals.
    h1: Option<Arc<Refusals>>,
    /// The connection's number (`Client::conn`).
    conn: u64,
    /// The TLS server name, lower case.
    sni: Option<Arc<str>>,
    tls_version: Option<&'static str>,
    /// The connection's caps, held by tunnels too.
    held: Arc<Held>,
}

impl Peer {
    /// The peer of an HTTP/1.1 connection behind an [`H1Guard`], and the guard's refusals.
    fn guarded(mut self) -> (Peer, Arc<Refusals>) {
        let refusals = Arc::new(Refusals::default());
        self.h1 = Some(refusals.clone());
        (self, refusals)
    }

    /// The refusal this request stands for, if it is the guard's synthetic one.
    fn refusal(&self) -> Option<Refusal> {
        self.h1.as_ref()?.next_request()
    }
}

async fn serve_http<I>(
    shared: Arc<Shared>,
    io: I,
    peer: Peer,
    clock: Arc<ConnClock>,
    pipelines: Pipelines,
    mut shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    counter!(LISTENER_CONNECTIONS_TOTAL, "listener" => shared.name.clone(), "protocol" => "tcp")
        .increment(1);
    counter!(WORKER_CONNECTIONS, "worker" => crate::workers::current().to_string()).increment(1);
    let open = gauge!(LISTENER_CONNECTIONS, "listener" => shared.name.clone(), "protocol" => "tcp");
    open.increment(1.0);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The connection's clock times heads and idleness; hyper's own header timer would also
    // cut idle keep-alive connections at header_timeout instead of idle_timeout.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(None);
    builder
        .http2()
        .max_concurrent_streams(shared.max_streams)
        // RFC 8441: WebSockets over HTTP/2 (extended CONNECT).
        .enable_connect_protocol();
    // ALPN decided for TLS; plaintext is HTTP/1.1 only (no h2c downstream). Never sniff: a
    // connection that says nothing must still be on a protocol with a timer.
    let builder = if peer.h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    let svc = {
        let shared = shared.clone();
        let peer = peer.clone();
        let clock = clock.clone();
        service_fn(move |mut req: Request<Incoming>| {
            let busy = clock.request_started();
            // A WebSocket handshake or a CONNECT may become a tunnel: hyper's upgrade of it, and the
            // connection kept busy (no idle timer) and counted for the tunnel's life.
            let upgrade = (req.method() == http::Method::CONNECT
                || upgrade::http1_websocket(req.method(), req.headers()))
            .then(|| Upgrade {
                on: hyper::upgrade::on(&mut req),
                hold: Box::new((clock.request_started(), peer.held.clone())),
            });
            let handshake = upgrade.is_some() && req.version() != Version::HTTP_2;
            let connect = req.method() == http::Method::CONNECT;
            // One future per request, boxed: hyper moves an HTTP/2 stream's future eight
            // times on its way into and out of the stream's task, so it should be a pointer.
            // No async block around it either: one keeps a future it captured and the one it
            // awaits in separate slots.
            let served = Box::pin(handle(
                shared.clone(),
                pipelines.clone(),
                req,
                peer.clone(),
                upgrade,
            ));
            served.map(move |mut resp| {
                close_unless_upgraded(&mut resp, handshake, connect);
                Ok::<_, Infallible>(resp.map(|b| b.hold(busy)))
            })
        })
    };
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    // The clock is watched from its own task: polled inside this select it would be polled
    // on every wakeup of the connection, which is several per request.
    let (expired_tx, mut expired) = oneshot::channel();
    let watcher = {
        let (clock, listener, remote) = (clock.clone(), shared.name.clone(), peer.remote);
        tokio::spawn(async move {
            let phase = clock.expired().await;
            // Counted here: on HTTP/1.1 the guard may end the connection before the select
            // below sees the expiry.
            counter!(LISTENER_TIMEOUTS, "listener" => listener, "kind" => phase.label())
                .increment(1);
            tracing::debug!(%remote, timeout = phase.label(), "closing a slow or idle connection");
            let _ = expired_tx.send(phase);
        })
    };
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        () = until_true(&mut shutdown) => {
            // In-flight requests finish; the daemon's drain deadline bounds the wait.
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
        Ok(_) = &mut expired => {
            // HTTP/2: GOAWAY, closed at once with no stream open. HTTP/1.1: the head guard
            // answers 408 (when a head was awaited) and ends the stream.
            if peer.h2 {
                conn.as_mut().graceful_shutdown();
            }
            // Nothing is in flight: a client that does not read the GOAWAY or the 408 is not
            // waited for.
            tokio::time::timeout(shared.header_timeout, conn.as_mut())
                .await
                .unwrap_or(Ok(()))
        }
    };
    watcher.abort();
    if let Err(e) = ended {
        tracing::debug!(remote = %peer.remote, error = %e, "connection ended");
    }
    open.decrement(1.0);
}

/// A WebSocket handshake or CONNECT over HTTP/1.1 answered with anything but its 101/200
/// ends the connection: the HTTP/1.1 guard stopped reading its framing at the handshake (what
/// follows a 101 or a CONNECT's 200 is not HTTP), whatever answered it (the pipeline, a
/// redirect, a refusal).
fn close_unless_upgraded(resp: &mut Response<ProxyBody>, handshake: bool, connect: bool) {
    let accepted =
        resp.status() == StatusCode::SWITCHING_PROTOCOLS || (connect && resp.status().is_success());
    if handshake && !accepted {
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// One HTTP/1.1 or HTTP/2 request through the pipeline (the generation current when it came).
/// Not an `async fn`: one of those moves its arguments into locals of its own first, so its
/// future holds them twice, and this future is moved into its box on every request.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn handle(
    shared: Arc<Shared>,
    pipelines: Pipelines,
    req: Request<Incoming>,
    peer: Peer,
    upgrade: Option<Upgrade>,
) -> impl Future<Output = Response<ProxyBody>> + Send {
    async move {
        if let Some(why) = peer.refusal() {
            return add_alt_svc(&shared, refused(&shared, peer.remote, why));
        }
        if let Some(port) = shared.redirect {
            return add_alt_svc(&shared, redirect(&req, port));
        }
        let Some((pipeline, permit)) = pipelines.enter().await else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
        };
        let (tx, rx) = oneshot::channel();
        let (head, body) = req.into_parts();
        let protocol = if head.version == Version::HTTP_2 {
            ClientProtocol::H2
        } else {
            ClientProtocol::Http1
        };
        let content_length = ContentLength::of(&head.headers);
        let bodyless =
            http_body::Body::is_end_stream(&body) || content_length == ContentLength::Length(0);
        let client = Client {
            identity: peer.identity,
            forward_header: peer.forward_header,
            conn: peer.conn,
            sni: peer.sni,
            tls_version: peer.tls_version,
            ..Client::new(peer.remote, protocol, peer.tls)
        };
        let origin = Origin {
            client,
            conn_gone: None,
            content_length,
        };
        let body = RequestBody::streaming(
            HyperBody(body, None),
            content_length.get(),
            bodyless,
            shared.read_ahead,
        );
        let sink = HyperSink::new(tx, protocol == ClientProtocol::Http1);
        let responder = Responder::new(match upgrade {
            Some(u) => sink.with_upgrade(u),
            None => sink,
        });
        let mut ex = Exchange::start(pipeline.next_id(), head, body, responder, origin);
        match pipeline.drain().enter() {
            Ok(guard) => {
                ex.permits.drain = Some(guard);
                // Not boxed: this whole future is (see `serve_http`).
                pipeline.clone().run(ex, permit).await;
            }
            Err(_) => {
                drop(permit);
                // Boxed: rare, and as large as the rest of this future.
                Box::pin(pipeline.refuse(ex, Reason::ShuttingDown)).await;
            }
        }
        let resp = match rx.await {
            Ok(resp) => resp.map(ProxyBody::from),
            // The exchange ended without an answer (its upstream body failed before the head).
            Err(_) => plain(StatusCode::BAD_GATEWAY, "502 Bad Gateway\n"),
        };
        add_alt_svc(&shared, resp)
    }
}

fn add_alt_svc(shared: &Shared, mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    if let Some(v) = &shared.alt_svc {
        resp.headers_mut().insert(http::header::ALT_SVC, v.clone());
    }
    resp
}

fn plain(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `308` to the same host and path over https.
fn redirect(req: &Request<Incoming>, port: u16) -> Response<ProxyBody> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .map(crate::http::host::host_of);
    let Some(host) = host else {
        return plain(StatusCode::BAD_REQUEST, "400 Bad Request: no Host\n");
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let mut r = plain(StatusCode::PERMANENT_REDIRECT, "308 Permanent Redirect\n");
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            r.headers_mut().insert(http::header::LOCATION, v);
            r
        }
        Err(_) => plain(StatusCode::BAD_REQUEST, "400 Bad Request: bad Host\n"),
    }
}
