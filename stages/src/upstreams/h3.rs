//! HTTP/3 to backends (`protocol = "h3"` on an `https://` backend), over quinn and h3.
//!
//! Each worker keeps one multiplexed QUIC connection per backend, made on first use with the
//! upstream's TLS settings (roots or `ca_file`, `server_name`, client certificate: the same
//! `rustls::ClientConfig` as HTTPS backends, offering ALPN `h3`) and made again when it is
//! lost or the backend sends GOAWAY. Requests on it are bounded by the backend's `max_inflight`
//! (its permit) and by the streams the backend allows: opening a stream waits for credit.
//!
//! A request body is uploaded by a task of its own, so a slow response reader never stalls
//! the upload (bidirectional gRPC) and the response head is awaited while the body still
//! flows. Dropping a quinn send stream *finishes* it, which would hand the backend a truncated
//! body as if complete; the upload resets its stream (`H3_REQUEST_CANCELLED`) unless it
//! reached the end, and so does a response body dropped before its end.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h3::error::{Code, StreamError};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{BoxError, RequestBody};
use crate::upstreams::error::{ConnectError, UpstreamError};
use crate::upstreams::tls::ConnMetrics;

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
type Upload = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type Download = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;

/// One HTTP/3 backend's connections: a slot per worker, and one for health checks (which run
/// on the control thread, not on a worker).
pub struct H3Backend {
    slots: Box<[tokio::sync::Mutex<Slot>]>,
    /// `host:port` to connect to.
    addr: Arc<str>,
    server_name: String,
    quic: quinn::ClientConfig,
    connect_timeout: Duration,
    metrics: Arc<ConnMetrics>,
}

#[derive(Default)]
struct Slot {
    /// The worker's client endpoint for this backend (made on the worker's runtime, whose
    /// task drives it), with whether it is IPv6.
    endpoint: Option<(bool, quinn::Endpoint)>,
    live: Option<Live>,
}

struct Live {
    send: Sender,
    conn: quinn::Connection,
    /// The backend sent GOAWAY or the connection failed: no new requests on it.
    going: Arc<AtomicBool>,
}

impl Live {
    fn usable(&self) -> bool {
        self.conn.close_reason().is_none() && !self.going.load(Ordering::Relaxed)
    }
}

/// Why an HTTP/3 attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum H3Error {
    /// No connection: nothing was sent.
    #[error("no HTTP/3 connection")]
    Connect(#[source] ConnectError),
    /// The connection refused a new stream (it was closing): nothing was sent.
    #[error("HTTP/3 request to {addr} not sent")]
    NotSent {
        addr: String,
        #[source]
        source: StreamError,
    },
    /// The request was sent; its stream failed before the response head.
    #[error("HTTP/3 request to {addr}")]
    Stream {
        addr: String,
        #[source]
        source: StreamError,
    },
    /// The client's request body failed while it was uploaded.
    #[error("request body")]
    Body(#[source] BoxError),
}

impl H3Error {
    /// Nothing reached the backend (another backend may be tried).
    pub fn is_connect(&self) -> bool {
        matches!(self, H3Error::Connect(_) | H3Error::NotSent { .. })
    }
}

impl H3Backend {
    /// A backend reached at `addr` (`host:port`) with `tls` (its ALPN offering `h3`), slots
    /// for `workers` workers and the health checks.
    pub fn new(
        workers: usize,
        addr: &str,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
        settings: &crate::upstreams::client::ClientSettings,
        metrics: ConnMetrics,
    ) -> Result<H3Backend, UpstreamError> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| UpstreamError::Config(format!("HTTP/3 TLS settings: {e}")))?;
        let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        // An unused connection goes after the pool's idle timeout, as pooled TCP ones do.
        let idle = quinn::IdleTimeout::try_from(settings.pool_idle_timeout).ok();
        transport.max_idle_timeout(idle);
        quic.transport_config(Arc::new(transport));
        Ok(H3Backend {
            slots: (0..=workers).map(|_| Default::default()).collect(),
            addr: addr.into(),
            server_name: server_name.to_string(),
            quic,
            connect_timeout: settings.connect_timeout,
            metrics: Arc::new(metrics),
        })
    }

    /// The slot health checks use.
    pub fn probe_slot(&self) -> usize {
        self.slots.len() - 1
    }

    /// The calling worker's slot.
    pub fn worker_slot(&self) -> usize {
        crate::workers::current() % (self.slots.len() - 1)
    }

    /// A sender on slot `i`'s connection, connecting when there is none usable.
    async fn sender(&self, i: usize) -> Result<Sender, ConnectError> {
        let mut slot = self.slots[i].lock().await;
        if let Some(live) = &slot.live
            && live.usable()
        {
            return Ok(live.send.clone());
        }
        let m = self.metrics.clone();
        let live = self.connect(&mut slot).await;
        match &live {
            Ok(_) => m.ok.increment(1),
            Err(ConnectError::QuicTimeout(_)) => m.timeout.increment(1),
            Err(_) => m.failed.increment(1),
        }
        let live = live?;
        let send = live.send.clone();
        slot.live = Some(live);
        Ok(send)
    }

    async fn connect(&self, slot: &mut Slot) -> Result<Live, ConnectError> {
        let fail = |source: BoxError| ConnectError::Quic {
            addr: self.addr.to_string(),
            source,
        };
        let target = tokio::net::lookup_host(&*self.addr)
            .await
            .map_err(|e| fail(e.into()))?
            .next()
            .ok_or_else(|| fail("the name has no address".into()))?;
        let endpoint = match &slot.endpoint {
            Some((v6, e)) if *v6 == target.is_ipv6() => e.clone(),
            _ => {
                let any: SocketAddr = if target.is_ipv6() {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                };
                let e = quinn::Endpoint::client(any).map_err(|e| fail(e.into()))?;
                slot.endpoint = Some((target.is_ipv6(), e.clone()));
                e
            }
        };
        let connecting = endpoint
            .connect_with(self.quic.clone(), target, &self.server_name)
            .map_err(|e| fail(e.into()))?;
        let setup = async {
            let conn = connecting.await.map_err(|e| fail(e.into()))?;
            let (driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
                .await
                .map_err(|e| fail(e.into()))?;
            Ok::<_, ConnectError>((conn, driver, send))
        };
        let (conn, mut driver, send) =
            tokio::time::timeout(self.connect_timeout, setup)
                .await
                .map_err(|_| ConnectError::QuicTimeout(self.addr.to_string()))??;
        let going = Arc::new(AtomicBool::new(false));
        let (g, c, m) = (going.clone(), conn.clone(), self.metrics.clone());
        m.open_now.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
            // GOAWAY (or an error) ends the driver's work but not the requests in flight:
            // they finish while the connection lives; new ones go to a new connection.
            g.store(true, Ordering::Relaxed);
            c.closed().await;
            drop(driver);
            m.open_now.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(Live { send, conn, going })
    }

    /// Sends `req` on slot `slot`'s connection and waits for the response head; the body
    /// uploads meanwhile.
    pub async fn request(
        self: Arc<Self>,
        slot: usize,
        req: Request<RequestBody>,
    ) -> Result<Response<H3Body>, H3Error> {
        let (parts, body) = req.into_parts();
        let mut head = Request::from_parts(parts, ());
        // `:authority` carries it (RFC 9114 §4.3.1).
        head.headers_mut().remove(http::header::HOST);
        let mut sender = self.sender(slot).await.map_err(H3Error::Connect)?;
        let addr = || self.addr.to_string();
        let stream = sender
            .send_request(head)
            .await
            .map_err(|source| H3Error::NotSent {
                addr: addr(),
                source,
            })?;
        let (send, recv) = stream.split();
        let mut up = Uploading {
            send,
            finished: false,
        };
        let mut pump = None;
        if body.is_end_stream() {
            up.finish().await.map_err(|source| H3Error::Stream {
                addr: addr(),
                source,
            })?;
        } else {
            pump = Some(AbortOnDrop(tokio::spawn(upload(up, body))));
        }
        // From here a drop (the client left, another attempt won) cancels the stream.
        let mut body = H3Body {
            recv,
            state: State::Data,
            upload: pump,
            _sender: sender,
        };
        let head = {
            let response = body.recv.recv_response();
            tokio::pin!(response);
            loop {
                let Some(task) = body.upload.as_mut().filter(|t| !t.0.is_finished()) else {
                    break response.await;
                };
                tokio::select! {
                    biased;
                    r = &mut response => break r,
                    done = &mut task.0 => {
                        if let Ok(Err(Failed::Client(e))) = done {
                            return Err(H3Error::Body(e));
                        }
                    }
                }
            }
        }
        .map_err(|source| H3Error::Stream {
            addr: addr(),
            source,
        })?;
        let (parts, ()) = head.into_parts();
        Ok(Response::from_parts(parts, body))
    }
}

/// A request stream's sending half: reset unless it was finished.
struct Uploading {
    send: Upload,
    finished: bool,
}

impl Uploading {
    async fn finish(&mut self) -> Result<(), StreamError> {
        self.send.finish().await?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for Uploading {
    fn drop(&mut self) {
        if !self.finished {
            self.send.stop_stream(Code::H3_REQUEST_CANCELLED);
        }
    }
}

enum Failed {
    /// The client's body failed.
    Client(BoxError),
    /// The backend stopped or reset the stream (it may have answered already).
    Backend,
}

/// Uploads the client's body (data, then trailers) and finishes the stream.
async fn upload(mut up: Uploading, mut body: RequestBody) -> Result<(), Failed> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Failed::Client)?;
        let sent = match frame.into_data() {
            Ok(data) if data.is_empty() => Ok(()),
            Ok(data) => up.send.send_data(data).await,
            Err(frame) => match frame.into_trailers() {
                Ok(t) => up.send.send_trailers(t).await,
                Err(_) => Ok(()),
            },
        };
        sent.map_err(|_| Failed::Backend)?;
    }
    up.finish().await.map_err(|_| Failed::Backend)
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), Failed>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    Trailers,
    Done,
}

/// An HTTP/3 backend's response body: data, then trailers (gRPC status).
pub struct H3Body {
    recv: Download,
    state: State,
    /// The request body's upload, stopped when the response goes.
    upload: Option<AbortOnDrop>,
    /// Keeps the connection open while the response streams (the last sender closes it).
    _sender: Sender,
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.state {
                State::Data => match ready!(this.recv.poll_recv_data(cx)) {
                    Ok(Some(mut b)) => {
                        let n = b.remaining();
                        if n > 0 {
                            return Poll::Ready(Some(Ok(Frame::data(b.copy_to_bytes(n)))));
                        }
                    }
                    Ok(None) => this.state = State::Trailers,
                    Err(e) => {
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                State::Trailers => {
                    let r = ready!(this.recv.poll_recv_trailers(cx));
                    this.state = State::Done;
                    return Poll::Ready(match r {
                        Ok(Some(t)) => Some(Ok(Frame::trailers(t))),
                        Ok(None) => None,
                        Err(e) => Some(Err(e.into())),
                    });
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for H3Body {
    fn drop(&mut self) {
        if self.state != State::Done {
            self.recv.stop_sending(Code::H3_REQUEST_CANCELLED);
        }
    }
}
