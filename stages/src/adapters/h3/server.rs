//! The HTTP/3 protocol adapter: accepts QUIC connections (quinn) and request streams (h3),
//! builds an exchange for each request and runs it through the pipeline.
//!
//! Backpressure: before accepting the next request stream of a connection, the adapter takes a
//! permit of the ingress stage's concurrency. While the chain is full it stops accepting, so
//! the client runs out of QUIC stream credit (`max_streams_per_connection`) instead of Spooky
//! buffering requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h3::server::RequestResolver;
use metrics::{counter, gauge};
use spooky_sync::{Cap, Permit};
use tokio::sync::watch;

use crate::adapters::BindError;
use crate::adapters::client_limit::{self, ClientSlot, PerClient};
use crate::adapters::h3::body::H3Body;
use crate::adapters::h3::datagrams::Datagrams;
use crate::adapters::h3::guard::{self, GuardedConn};
use crate::adapters::h3::sink::H3Sink;
use crate::adapters::h3::steer::{SteeredSocket, Steering, TaggedCids};
use crate::adapters::swap::Swap;
use crate::body::RequestBody;
use crate::config::{ListenerConfig, StagesConfig};
use crate::contract::exchange::{
    Client, ClientProtocol, ConnGone, ContentLength, Exchange, Origin,
};
use crate::contract::reason::Reason;
use crate::contract::responder::Responder;
use crate::engine::Pipeline;
use crate::engine::generation::Pipelines;
use crate::metrics::{
    HTTP3_REFUSED, LISTENER_CONNECTIONS, LISTENER_CONNECTIONS_TOTAL, LISTENER_HANDSHAKES,
    WORKER_CONNECTIONS,
};
use crate::tls::{self, CertStore};

type Resolver = RequestResolver<GuardedConn, Bytes>;

/// An HTTP/3 listener: what every worker's QUIC endpoint of it shares (certificates, caps,
/// limits). Each worker serves it on its own UDP socket ([`H3Listener::endpoint`]).
pub struct H3Listener {
    name: String,
    /// How much of a request stream the field-order guard waits for.
    guard_limit: usize,
    /// Counts heads the field-order guard refused.
    on_refuse: guard::OnRefuse,
    /// The config each handshake is accepted with (rebuilt after a client CA reload).
    server: tls::ServerConfigCell<Arc<quinn::ServerConfig>>,
    connections: Cap,
    per_client: Option<Arc<PerClient>>,
    max_field_section_size: u64,
    header_timeout: Duration,
    read_ahead: usize,
    forward_header: Option<http::HeaderName>,
    /// `[listeners.tls] early_data`: connections are served from 0-RTT on.
    early_data: bool,
}

impl H3Listener {
    /// The listener's shared half, serving its certificates.
    pub fn new(
        listener: &ListenerConfig,
        stages: &StagesConfig,
        certs: Arc<CertStore>,
    ) -> Result<H3Listener, BindError> {
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(quinn::VarInt::from(
            listener.max_streams_per_connection.get(),
        ));
        let idle = quinn::IdleTimeout::try_from(listener.idle_timeout.0)
            .map_err(BindError::IdleTimeout)?;
        transport.max_idle_timeout(Some(idle));
        let transport = Arc::new(transport);
        let resolver = certs.clone();
        let early_data =
            matches!(&listener.tls, crate::tls::config::TlsSetting::Files(t) if t.early_data);
        let server = tls::ServerConfigCell::new(certs, move |verifier| {
            let crypto = tls::h3_server_crypto(resolver.clone(), verifier, early_data)?;
            let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
                .map_err(tls::TlsError::Quic)?;
            let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
            server.transport_config(transport.clone());
            Ok(Arc::new(server))
        })?;
        Ok(H3Listener {
            name: listener.name.clone(),
            server,
            connections: Cap::new(listener.max_connections.get()),
            per_client: listener
                .max_connections_per_client
                .map(|n| PerClient::new(n.get())),
            max_field_section_size: stages.ingress.max_header_bytes.0,
            guard_limit: usize::try_from(stages.ingress.max_header_bytes.0)
                .unwrap_or(usize::MAX)
                .saturating_add(16 * 1024),
            on_refuse: {
                let name = listener.name.clone();
                Arc::new(move |why: guard::Refusal| {
                    tracing::debug!(listener = %name, reason = why.reason(), "HTTP/3 request head refused (H3_MESSAGE_ERROR)");
                    counter!(HTTP3_REFUSED, "listener" => name.clone(), "reason" => why.reason())
                        .increment(1);
                })
            },
            header_timeout: stages.ingress.header_timeout.0,
            read_ahead: usize::try_from(stages.ingress.read_ahead.0).unwrap_or(usize::MAX),
            forward_header: tls::forward_header(&listener.tls)?,
            early_data,
        })
    }

    /// A QUIC endpoint of this listener on `socket` (a bound UDP socket, see
    /// [`sockets::udp`](crate::adapters::sockets::udp)), read through `steering` (its
    /// connection IDs name this process and `worker`); also the steered socket, to retire it
    /// at a restart. It lives on the calling worker's runtime, which must be running.
    pub fn endpoint(
        &self,
        socket: std::net::UdpSocket,
        steering: &Arc<Steering>,
        worker: usize,
    ) -> Result<(quinn::Endpoint, Arc<SteeredSocket>), BindError> {
        let addr = socket.local_addr();
        let bind_error = |source| BindError::Bind {
            listener: self.name.clone(),
            transport: "UDP",
            addr: addr
                .as_ref()
                .copied()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
            source,
        };
        let steered = SteeredSocket::new(socket, steering.clone()).map_err(bind_error)?;
        let mut config = quinn::EndpointConfig::default();
        let tag = steering.tag;
        config.cid_generator(move || Box::new(TaggedCids::new(tag, worker)));
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            config,
            Some((*self.server.get()).clone()),
            steered.clone(),
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_error)?;
        Ok((endpoint, steered))
    }

    /// Takes over what must outlive a settings change from the listener it replaces: the
    /// connection cap (open connections keep their places; the limit becomes this one's) and
    /// the per-client counts when their limit is unchanged.
    pub fn carry_over(&mut self, prev: &H3Listener) {
        client_limit::carry_over(
            &mut self.connections,
            &mut self.per_client,
            &prev.connections,
            &prev.per_client,
        );
    }

    /// Accepts connections on `endpoint` until it is closed; each connection is served with
    /// the settings in `cell` when it arrives. Once `shutdown` turns true, every
    /// new connection is refused at once (QUIC CONNECTION_REFUSED) while the connections
    /// already open are asked to finish (HTTP/3 GOAWAY) and drain.
    pub async fn serve(
        cell: Arc<Swap<H3Listener>>,
        endpoint: quinn::Endpoint,
        pipelines: Pipelines,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut draining = shutdown.clone();
        let mut refusing = false;
        loop {
            let incoming = tokio::select! {
                i = endpoint.accept() => i,
                () = until_true(&mut draining), if !refusing => {
                    refusing = true;
                    continue;
                }
            };
            let Some(incoming) = incoming else { break };
            // The listener's settings as of now (a reload may have replaced them).
            let this = cell.load();
            // A connection that raced the shutdown signal in `select!` is refused too.
            refusing |= *draining.borrow();
            if refusing {
                counter!(LISTENER_HANDSHAKES, "listener" => this.name.clone(), "protocol" => "quic", "result" => "refused").increment(1);
                incoming.refuse();
                continue;
            }
            let Ok(permit) = this.connections.try_acquire() else {
                counter!(LISTENER_HANDSHAKES, "listener" => this.name.clone(), "protocol" => "quic", "result" => "refused").increment(1);
                incoming.refuse();
                continue;
            };
            let Ok(slot) = client_limit::slot(&this.per_client, incoming.remote_address().ip())
            else {
                counter!(LISTENER_HANDSHAKES, "listener" => this.name.clone(), "protocol" => "quic", "result" => "per_client_limit").increment(1);
                incoming.refuse();
                continue;
            };
            tokio::spawn(this.clone().connection(
                incoming,
                (permit, slot),
                pipelines.clone(),
                shutdown.clone(),
            ));
        }
    }

    async fn connection(
        self: Arc<Self>,
        incoming: quinn::Incoming,
        _held: (Permit, Option<ClientSlot>),
        pipelines: Pipelines,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let remote = incoming.remote_address();
        // With 0-RTT on, the connection serves before the handshake completes (its requests
        // came in early data, RFC 8470); `handshake` says when it has.
        let accepted = match incoming.accept_with(self.server.get()) {
            Ok(connecting) if self.early_data => match connecting.into_0rtt() {
                Ok((conn, done)) => {
                    // On a server `done` resolves when the handshake completes or the
                    // connection fails first, its value meaningless either way (quinn sets
                    // it only for clients): the connection still open says which.
                    let c = conn.clone();
                    let completed = async move {
                        done.await;
                        c.close_reason().is_none()
                    };
                    Ok((
                        conn,
                        Some(crate::contract::exchange::Handshake::after(completed)),
                    ))
                }
                Err(connecting) => connecting.await.map(|c| (c, None)),
            },
            Ok(connecting) => connecting.await.map(|c| (c, None)),
            Err(e) => Err(e),
        };
        let (conn, handshake) = match accepted {
            Ok(c) => c,
            Err(e) => {
                counter!(LISTENER_HANDSHAKES, "listener" => self.name.clone(), "protocol" => "quic", "result" => "error")
                    .increment(1);
                tracing::debug!(%remote, error = %e, "handshake failed");
                return;
            }
        };
        counter!(LISTENER_HANDSHAKES, "listener" => self.name.clone(), "protocol" => "quic", "result" => "ok")
            .increment(1);
        counter!(LISTENER_CONNECTIONS_TOTAL, "listener" => self.name.clone(), "protocol" => "quic")
            .increment(1);
        counter!(WORKER_CONNECTIONS, "worker" => crate::workers::current().to_string())
            .increment(1);
        let peer = conn.peer_identity().and_then(|any| {
            any.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        });
        let sni = conn
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.server_name.map(|n| Arc::from(n.to_ascii_lowercase())));
        let client = Client {
            identity: tls::identity_of(peer.as_deref().map(Vec::as_slice), remote),
            forward_header: self.forward_header.clone(),
            sni,
            tls_version: Some("TLSv1.3"),
            handshake,
            ..Client::new(remote, ClientProtocol::H3, true)
        };
        // One watcher per connection tells every exchange on it that the client is gone.
        let (raise, conn_gone) = ConnGone::new();
        let watcher = {
            let conn = conn.clone();
            tokio::spawn(async move {
                conn.closed().await;
                raise.raise();
            })
        };
        let open =
            gauge!(LISTENER_CONNECTIONS, "listener" => self.name.clone(), "protocol" => "quic");
        open.increment(1.0);
        // CONNECT-UDP (RFC 9298) needs extended CONNECT and HTTP Datagrams announced;
        // WebSockets (RFC 9220) extended CONNECT alone. Announced only when a route takes
        // them, so that clients fall back to other ways otherwise.
        let current = pipelines.current();
        let udp = current.connect_udp();
        let extended_connect = udp || current.websocket();
        drop(current);
        let datagrams = udp.then(|| Datagrams::new(conn.clone()));
        // Boxed: h3's setup future (4.2 KB) was the largest state of this one, which every
        // idle connection's task carries for its whole life (docs/performance.md).
        let built = Box::pin(
            h3::server::builder()
                .max_field_section_size(self.max_field_section_size)
                .enable_extended_connect(extended_connect)
                .enable_datagram(udp)
                .build::<_, Bytes>(GuardedConn::new(
                    conn.clone(),
                    self.guard_limit,
                    self.on_refuse.clone(),
                )),
        )
        .await;
        let mut h3conn = match built {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%remote, error = %e, "HTTP/3 setup failed");
                open.decrement(1.0);
                return;
            }
        };
        // Exchanges of this connection: the h3 connection must outlive them, since dropping it
        // closes the QUIC connection.
        let live = spooky_sync::Drain::new();
        let mut draining = false;
        loop {
            let accepted = tokio::select! {
                r = h3conn.accept() => r,
                () = until_true(&mut shutdown), if !draining => {
                    draining = true;
                    // RFC 9114 §5.2: GOAWAY naming the first stream id not processed (h3 adds
                    // this count to the last accepted id), so accepted requests may finish.
                    let _ = h3conn.shutdown(1).await;
                    continue;
                }
            };
            let resolver = match accepted {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "connection ended");
                    break;
                }
            };
            // Backpressure: no next stream until ingress has room for this one. The
            // generation is taken per exchange: a swap applies to the next request.
            let entered = tokio::select! {
                p = pipelines.enter() => p,
                _ = conn.closed() => break,
            };
            let (Some((pipeline, permit)), Ok(guard)) = (entered, live.enter()) else {
                // Shutting down: this stream was never processed.
                reject_unprocessed(resolver);
                break;
            };
            let limits = (self.header_timeout, self.read_ahead, extended_connect);
            let who = (client.clone(), conn_gone.clone(), datagrams.clone());
            // Not an async block around it: that would hold the request's future twice
            // (captured, and as the future it awaits). Boxed: `tokio::spawn` moves what it is
            // given through several layers into the task's cell (six copies of the whole
            // exchange's future, about 2.5 KB, on every request), a box is a pointer.
            let request = Box::pin(request(resolver, permit, pipeline, who, limits));
            tokio::spawn(futures::FutureExt::map(request, move |()| drop(guard)));
        }
        live.close();
        tokio::select! {
            () = live.wait() => {}
            _ = conn.closed() => {}
        }
        drop(h3conn);
        if let Some(d) = &datagrams {
            d.stop();
        }
        watcher.abort();
        open.decrement(1.0);
    }
}

/// Reads one request head and runs its exchange: the future of the stream's task.
///
/// Not an `async fn`, which would hold its arguments twice (as arguments and as its own
/// locals), and with the head's reading boxed: that part (h3's resolver and its decoding
/// future) is larger than the exchange's run, and a task's future is moved in full when it
/// is spawned and written over when it ends. 8 400 bytes as one `async fn`; see
/// docs/performance.md.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn request(
    resolver: Resolver,
    permit: Permit,
    pipeline: Arc<Pipeline>,
    who: (Client, ConnGone, Option<Arc<Datagrams>>),
    limits: (Duration, usize, bool),
) -> impl Future<Output = ()> + Send {
    async move {
        let Some(mut ex) = Box::pin(start(resolver, &pipeline, who, limits)).await else {
            return;
        };
        match pipeline.drain().enter() {
            Ok(guard) => ex.permits.drain = Some(guard),
            Err(_) => {
                drop(permit);
                return Box::pin(pipeline.refuse(ex, Reason::ShuttingDown)).await;
            }
        }
        pipeline.run(ex, permit).await;
    }
}

/// Reads one request head into an exchange (none if the head never came, was malformed, or
/// was refused on the stream).
#[allow(clippy::manual_async_fn)] // not an async fn, like `request`
fn start(
    resolver: Resolver,
    pipeline: &Pipeline,
    (client, conn_gone, datagrams): (Client, ConnGone, Option<Arc<Datagrams>>),
    (header_timeout, read_ahead, extended_connect): (Duration, usize, bool),
) -> impl Future<Output = Option<Exchange>> + Send + '_ {
    async move {
        let remote = client.addr;
        let deadline = tokio::time::Instant::now() + header_timeout;
        let mut resolver = resolver;
        let first = std::future::poll_fn(|cx| resolver.frame_stream.poll_next(cx));
        let Ok(frame) = tokio::time::timeout_at(deadline, first).await else {
            tracing::debug!(%remote, "request head timed out");
            reject_unprocessed(resolver);
            return None;
        };
        let resolved = match resolver.accept_with_frame(frame) {
            Ok(r) => {
                // Decoding is synchronous (no dynamic QPACK table); only answering a head that is
                // too large waits on the client, and only then is a second timer armed.
                let resolving = r.resolve();
                tokio::pin!(resolving);
                match futures::poll!(resolving.as_mut()) {
                    std::task::Poll::Ready(r) => Ok(r),
                    std::task::Poll::Pending => tokio::time::timeout_at(deadline, resolving).await,
                }
            }
            Err(e) => Ok(Err(e)),
        };
        let (req, stream) = match resolved {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                // h3 has already answered a malformed head on the stream (RFC 9114 §4.1.2).
                tracing::debug!(%remote, error = %e, "bad request head");
                return None;
            }
            Err(_) => {
                tracing::debug!(%remote, "request head timed out");
                return None;
            }
        };
        let mut stream = stream;
        if !extended_connect && req.extensions().get::<h3::ext::Protocol>().is_some() {
            // RFC 9220 §3 (RFC 8441 §4): `:protocol` on a connection that did not announce
            // extended CONNECT makes the request malformed (RFC 9114 §4.1.2).
            tracing::debug!(%remote, "`:protocol` without SETTINGS_ENABLE_CONNECT_PROTOCOL");
            stream.stop_sending(h3::error::Code::H3_MESSAGE_ERROR);
            stream.stop_stream(h3::error::Code::H3_MESSAGE_ERROR);
            return None;
        }
        let stream_id = stream.id().into_inner();
        let (send, recv) = stream.split();
        let (head, ()) = req.into_parts();
        let content_length = ContentLength::of(&head.headers);
        let bodyless_method = matches!(
            head.method,
            http::Method::GET
                | http::Method::HEAD
                | http::Method::DELETE
                | http::Method::OPTIONS
                | http::Method::TRACE
        );
        let empty_upstream = content_length == ContentLength::Length(0)
            || (content_length == ContentLength::Absent && bodyless_method);
        let body = RequestBody::streaming(
            H3Body(recv),
            content_length.get(),
            empty_upstream,
            read_ahead,
        );
        let mut sink = H3Sink::new(send, conn_gone.clone());
        if let Some(d) = datagrams {
            sink = sink.with_datagrams(d, stream_id);
        }
        let responder = Responder::new(sink);
        let origin = Origin {
            client,
            conn_gone: Some(conn_gone),
            content_length,
        };
        Some(Exchange::start(
            pipeline.next_id(),
            head,
            body,
            responder,
            origin,
        ))
    }
}

/// RFC 9114 §8.1: a request refused before any processing is reset with H3_REQUEST_REJECTED
/// in both directions (so the client knows it may retry it) — never with quinn's implicit
/// code 0, which is not an HTTP/3 error code.
fn reject_unprocessed(resolver: Resolver) {
    use h3::quic::{RecvStream, SendStream};
    let mut stream = resolver.frame_stream.into_inner();
    let code = h3::error::Code::H3_REQUEST_REJECTED.value();
    SendStream::<Bytes>::reset(&mut stream, code);
    stream.stop_sending(code);
}

/// Completes once the shutdown flag is true (or its sender is gone).
pub async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
