//! HTTP/1.1 to a backend, pooled here, one idle list per worker.
//!
//! Requests without a body (nearly every GET) go on Spooky's own client side ([`wire`]): the
//! exchange's task writes the head and reads the response, no other task involved. Requests
//! with a body, and upgrades, go on hyper's connection-level client (`client::conn::http1`),
//! whose connection runs in a task of its own: an upload must go on while the answer waits
//! for a client that is not reading yet (`tests/upstream_pool.rs`), and an upgraded
//! connection is handed over from that task. An idle connection of ours taken for such a
//! request becomes hyper's; a request without a body takes only our own.
//!
//! hyper-util's legacy client did the job with more per request: a connector service call
//! and a pool checkout future, a request future built and boxed inside it, and a task spawned
//! per request only to wait until the connection could take the next one. Here a connection
//! goes back to its worker's list when the response body ends (or is dropped after its end);
//! one that is not ready yet when it is next wanted is passed over, a closed one dropped.
//! Connections idle for longer than `pool_idle_timeout` (or closed by the backend) are closed
//! by a reaper that runs only while a list is not empty.

mod wire;

pub use wire::BadResponse;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use crate::body::{BoxError, RequestBody};
use crate::upstreams::client::ClientSettings;
use crate::upstreams::error::ConnectError;
use crate::upstreams::tls::{BackendConnector, BackendStream};

type Sender = http1::SendRequest<RequestBody>;

/// One backend's HTTP/1.1 connections: an idle list per worker, and one for health checks
/// (which run on the control thread, whose connections no worker should reuse).
pub struct H1Pool {
    connector: BackendConnector,
    idle_timeout: Duration,
    max_idle: usize,
    /// hyper's `max_buf_size`: `upstream_read_ahead`.
    read_ahead: usize,
    lists: Box<[Mutex<Idle>]>,
}

/// An idle connection: hyper's (its task drives it) or ours.
enum Kept {
    Hyper(Sender),
    Own(wire::Conn),
}

impl Kept {
    /// Closed by either side, or idle since `since` for `timeout`: no use any more.
    fn spent(&mut self, since: Instant, now: Instant, timeout: Duration) -> bool {
        now.saturating_duration_since(since) >= timeout
            || match self {
                Kept::Hyper(s) => s.is_closed(),
                Kept::Own(c) => !c.alive(),
            }
    }
}

#[derive(Default)]
struct Idle {
    /// Most recently returned last: the warmest connection is taken first.
    conns: Vec<(Kept, Instant)>,
    /// A reaper task is running for this list.
    reaping: bool,
}

/// Why an HTTP/1.1 request got no response head.
#[derive(Debug)]
pub enum H1Error {
    /// No connection: nothing reached the backend.
    Connect(ConnectError),
    /// The connection failed, or the backend's answer did not parse (hyper's side).
    Http(hyper::Error),
    /// The connection failed (our side).
    Io(std::io::Error),
    /// The backend's answer is not HTTP/1.1 (our side).
    Bad(BadResponse),
}

impl std::fmt::Display for H1Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            H1Error::Connect(_) => f.write_str("connecting to the backend failed"),
            H1Error::Http(_) | H1Error::Io(_) | H1Error::Bad(_) => {
                f.write_str("HTTP/1.1 exchange with the backend failed")
            }
        }
    }
}

impl std::error::Error for H1Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            H1Error::Connect(e) => Some(e),
            H1Error::Http(e) => Some(e),
            H1Error::Io(e) => Some(e),
            H1Error::Bad(e) => Some(e),
        }
    }
}

impl H1Error {
    pub fn is_connect(&self) -> bool {
        matches!(self, H1Error::Connect(_))
    }
}

pub type H1Sending = Pin<Box<dyn Future<Output = Result<Response<H1Body>, H1Error>> + Send>>;

impl H1Pool {
    pub fn new(workers: usize, settings: &ClientSettings, connector: BackendConnector) -> Self {
        H1Pool {
            connector,
            idle_timeout: settings.pool_idle_timeout,
            max_idle: settings.pool_max_idle,
            read_ahead: settings.read_ahead,
            lists: (0..=workers).map(|_| Mutex::default()).collect(),
        }
    }

    /// The health checks' list.
    pub fn probe_slot(&self) -> usize {
        self.lists.len() - 1
    }

    /// The calling worker's list.
    pub fn worker_slot(&self) -> usize {
        crate::workers::current() % (self.lists.len() - 1)
    }

    /// Sends `req` on an idle connection of list `slot`, or on a new one.
    pub fn request(self: &Arc<Self>, slot: usize, mut req: Request<RequestBody>) -> H1Sending {
        origin_form(&mut req);
        let pool = self.clone();
        if req.body().is_end_stream() && !req.headers().contains_key(http::header::UPGRADE) {
            return Box::pin(pool.send_own(slot, req));
        }
        Box::pin(async move {
            loop {
                let (mut sender, reused) = match pool.checkout(slot, false) {
                    Some(Kept::Hyper(s)) => (s, true),
                    Some(Kept::Own(c)) => (pool.handshake(c.into_io()).await?, true),
                    // Boxed: a connection's handshake future is most of this one's size,
                    // and this one is moved into its box on every request.
                    None => (Box::pin(pool.connect()).await?, false),
                };
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        // A switched connection is the tunnel's now; it never goes back.
                        let lease =
                            (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS).then(|| {
                                Lease {
                                    pool: Arc::downgrade(&pool),
                                    slot,
                                    sender,
                                }
                            });
                        return Ok(resp.map(|body| H1Body(Inner::Hyper { body, lease })));
                    }
                    Err(mut e) => match e.take_message() {
                        // The backend closed an idle connection before the request was
                        // written: nothing was sent, so it goes on another connection.
                        Some(again) if reused => req = again,
                        _ => return Err(H1Error::Http(e.into_error())),
                    },
                }
            }
        })
    }

    /// A request without a body, on a connection of ours.
    async fn send_own(
        self: Arc<Self>,
        slot: usize,
        req: Request<RequestBody>,
    ) -> Result<Response<H1Body>, H1Error> {
        let mut head = Vec::new();
        wire::encode_head(&req, &mut head);
        let head_request = req.method() == http::Method::HEAD;
        let idempotent = req.method().is_idempotent();
        drop(req);
        loop {
            let (mut conn, reused) = match self.checkout(slot, true) {
                Some(Kept::Own(c)) => (c, true),
                // (`checkout` gives a request without a body only ours.)
                Some(Kept::Hyper(_)) | None => (Box::pin(self.open()).await?, false),
            };
            match conn.send(&head, head_request).await {
                Ok(h) => {
                    let reading = wire::Reading::new(conn, &h);
                    let mut resp = Response::new(H1Body(Inner::Own {
                        reading: Some(reading),
                        pool: Arc::downgrade(&self),
                        slot,
                    }));
                    *resp.status_mut() = h.status;
                    *resp.version_mut() = h.version;
                    *resp.headers_mut() = h.headers;
                    return Ok(resp);
                }
                // Closed or reset before a byte of an answer, on a connection that served
                // before: the backend most likely closed it while it was idle. As Go's
                // client does, an idempotent request goes again on another connection.
                Err(wire::Failure::Unanswered(e)) if reused && idempotent => {
                    tracing::debug!(error = %e, "reused backend connection closed unanswered; sending again");
                }
                Err(wire::Failure::Unanswered(e) | wire::Failure::Io(e)) => {
                    return Err(H1Error::Io(e));
                }
                Err(wire::Failure::Bad(e)) => return Err(H1Error::Bad(e)),
            }
        }
    }

    /// The warmest idle connection that can take a request now (`own`: a request without a
    /// body, which takes only ours); closed and expired ones are dropped, busy ones (still
    /// finishing their last response) left for later.
    fn checkout(&self, slot: usize, own: bool) -> Option<Kept> {
        let mut idle = lock(&self.lists[slot]);
        let now = Instant::now();
        let mut i = idle.conns.len();
        while i > 0 {
            i -= 1;
            let (kept, since) = &mut idle.conns[i];
            if kept.spent(*since, now, self.idle_timeout) {
                idle.conns.swap_remove(i);
                continue;
            }
            let usable = match kept {
                Kept::Own(_) => true,
                Kept::Hyper(s) => !own && s.is_ready(),
            };
            if usable {
                return Some(idle.conns.remove(i).0);
            }
        }
        None
    }

    /// A new connection to the backend.
    async fn dial(&self) -> Result<BackendStream, H1Error> {
        self.connector
            .clone()
            .open()
            .await
            .map_err(H1Error::Connect)
    }

    /// A new connection of ours.
    async fn open(&self) -> Result<wire::Conn, H1Error> {
        Ok(wire::Conn::new(self.dial().await?, self.read_ahead))
    }

    /// A new connection driven by hyper.
    async fn connect(&self) -> Result<Sender, H1Error> {
        self.handshake(self.dial().await?).await
    }

    /// hyper's client on `stream`, its connection in a task of its own.
    async fn handshake(&self, stream: BackendStream) -> Result<Sender, H1Error> {
        let (sender, conn) = http1::Builder::new()
            // How much of a response the connection reads ahead of a client that reads
            // slowly (hyper's default, about 400 KiB, made 1 000 slow readers of 1 MiB cost
            // half a GiB).
            .max_buf_size(self.read_ahead)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(H1Error::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// A connection whose response is complete goes back to its list (unless the list is
    /// full, then it closes).
    fn checkin(self: Arc<Self>, slot: usize, kept: Kept) {
        if let Kept::Hyper(s) = &kept
            && s.is_closed()
        {
            return;
        }
        let mut idle = lock(&self.lists[slot]);
        if idle.conns.len() >= self.max_idle {
            return;
        }
        idle.conns.push((kept, Instant::now()));
        if !idle.reaping
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            idle.reaping = true;
            let pool = Arc::downgrade(&self);
            rt.spawn(reap(pool, slot, self.idle_timeout));
        }
    }
}

/// Closes list `slot`'s connections idle for `timeout` or closed by the backend; ends when
/// the list is empty or the pool is gone.
async fn reap(pool: Weak<H1Pool>, slot: usize, timeout: Duration) {
    // Often enough that nothing stays much past its timeout, rarely enough to cost nothing.
    let every = (timeout / 4).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = lock(&pool.lists[slot]);
        let now = Instant::now();
        idle.conns
            .retain_mut(|(kept, since)| !kept.spent(*since, now, timeout));
        if idle.conns.is_empty() {
            idle.reaping = false;
            return;
        }
    }
}

fn lock(m: &Mutex<Idle>) -> std::sync::MutexGuard<'_, Idle> {
    // The lists hold no invariant a panic could break half-way.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// HTTP/1.1 request targets: origin-form (`/path?query`), or authority-form for CONNECT.
fn origin_form(req: &mut Request<RequestBody>) {
    let uri = req.uri();
    let target = if req.method() == http::Method::CONNECT {
        uri.authority().map(|a| a.as_str().parse())
    } else {
        uri.path_and_query()
            .map(|p| http::Uri::from(p.clone()))
            .map(Ok)
    };
    match target {
        Some(Ok(t)) => *req.uri_mut() = t,
        _ if req.method() != http::Method::CONNECT => *req.uri_mut() = http::Uri::from_static("/"),
        _ => {}
    }
}

/// The hyper connection a response came on, held until its body ends.
struct Lease {
    pool: Weak<H1Pool>,
    slot: usize,
    sender: Sender,
}

impl Lease {
    fn release(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.checkin(self.slot, Kept::Hyper(self.sender));
        }
    }
}

/// A backend's HTTP/1.1 response body; its end gives the connection back to the pool.
pub struct H1Body(Inner);

enum Inner {
    Hyper {
        body: Incoming,
        lease: Option<Lease>,
    },
    Own {
        /// `None` once the connection went back (or was dropped).
        reading: Option<wire::Reading>,
        pool: Weak<H1Pool>,
        slot: usize,
    },
}

impl H1Body {
    fn release_if_done(&mut self) {
        match &mut self.0 {
            Inner::Hyper { body, lease } => {
                if body.is_end_stream()
                    && let Some(l) = lease.take()
                {
                    l.release();
                }
            }
            Inner::Own {
                reading,
                pool,
                slot,
            } => {
                if reading.as_ref().is_some_and(wire::Reading::is_end_stream)
                    && let Some(conn) = reading.take().and_then(wire::Reading::into_reusable)
                    && let Some(pool) = pool.upgrade()
                {
                    pool.checkin(*slot, Kept::Own(conn));
                }
            }
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.0 {
            Inner::Hyper { body, lease } => {
                let polled = Pin::new(body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => {
                        if let Some(l) = lease.take() {
                            l.release();
                        }
                    }
                    // A failed body's connection is not reused.
                    Poll::Ready(Some(Err(_))) => *lease = None,
                    _ => {}
                }
                polled.map(|f| f.map(|r| r.map_err(BoxError::from)))
            }
            Inner::Own { reading, .. } => match reading.as_mut() {
                Some(r) => {
                    let polled = r.poll_frame(cx);
                    if let Poll::Ready(Some(Err(_))) = &polled {
                        // A failed body's connection is not reused.
                        *reading = None;
                    }
                    polled
                }
                None => Poll::Ready(None),
            },
        };
        if let Poll::Ready(Some(Ok(_)) | None) = &polled {
            this.release_if_done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Hyper { body, .. } => body.is_end_stream(),
            Inner::Own { reading, .. } => reading.as_ref().is_none_or(wire::Reading::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Hyper { body, .. } => body.size_hint(),
            Inner::Own { reading, .. } => reading
                .as_ref()
                .map_or(SizeHint::with_exact(0), wire::Reading::size_hint),
        }
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        // Dropped unread but complete (an empty body, a HEAD's answer): reusable. Dropped
        // part-way, the connection closes.
        self.release_if_done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(method: http::Method, uri: &str) -> String {
        let mut req = Request::new(RequestBody::empty());
        *req.method_mut() = method;
        *req.uri_mut() = uri.parse().expect("uri");
        origin_form(&mut req);
        req.uri().to_string()
    }

    #[test]
    fn requests_go_in_origin_form_and_connect_in_authority_form() {
        use http::Method;
        assert_eq!(target(Method::GET, "http://a.example:8080/p?q=1"), "/p?q=1");
        assert_eq!(target(Method::POST, "http://a.example"), "/");
        assert_eq!(target(Method::GET, "/already"), "/already");
        assert_eq!(target(Method::CONNECT, "a.example:443"), "a.example:443");
    }
}
