//! HTTP/1.1 to a backend: hyper's connection-level client (`client::conn::http1`) over our
//! connector, pooled here, one idle list per worker.
//!
//! hyper-util's legacy client did the same job with more per request: a connector service
//! call and a pool checkout future, a request future built and boxed inside it, and a task
//! spawned per request only to wait until the connection could take the next one before it
//! went back to the pool. Here a connection goes back to its worker's list when the response
//! body ends (or is dropped after its end); a connection that is not ready yet when it is
//! next wanted is passed over, a closed one dropped. Connections idle for longer than
//! `pool_idle_timeout` are closed by a reaper that runs only while a list is not empty.

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

use crate::body::RequestBody;
use crate::upstreams::client::ClientSettings;
use crate::upstreams::error::ConnectError;
use crate::upstreams::tls::BackendConnector;

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

#[derive(Default)]
struct Idle {
    /// Most recently returned last: the warmest connection is taken first.
    conns: Vec<(Sender, Instant)>,
    /// A reaper task is running for this list.
    reaping: bool,
}

/// Why an HTTP/1.1 request got no response head.
#[derive(Debug)]
pub enum H1Error {
    /// No connection: nothing reached the backend.
    Connect(ConnectError),
    /// The connection failed, or the backend's answer did not parse.
    Http(hyper::Error),
}

impl std::fmt::Display for H1Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            H1Error::Connect(_) => f.write_str("connecting to the backend failed"),
            H1Error::Http(_) => f.write_str("HTTP/1.1 exchange with the backend failed"),
        }
    }
}

impl std::error::Error for H1Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            H1Error::Connect(e) => Some(e),
            H1Error::Http(e) => Some(e),
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
        Box::pin(async move {
            loop {
                let (mut sender, reused) = match pool.checkout(slot) {
                    Some(s) => (s, true),
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
                        return Ok(resp.map(|body| H1Body { body, lease }));
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

    /// The warmest idle connection that can take a request now; closed and expired ones
    /// are dropped, busy ones (still finishing their last response) left for later.
    fn checkout(&self, slot: usize) -> Option<Sender> {
        let mut idle = lock(&self.lists[slot]);
        let now = Instant::now();
        let mut i = idle.conns.len();
        while i > 0 {
            i -= 1;
            let (sender, since) = &idle.conns[i];
            if spent(sender, *since, now, self.idle_timeout) {
                idle.conns.swap_remove(i);
            } else if sender.is_ready() {
                return Some(idle.conns.remove(i).0);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Sender, H1Error> {
        let stream = self
            .connector
            .clone()
            .open()
            .await
            .map_err(H1Error::Connect)?;
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
    fn checkin(self: Arc<Self>, slot: usize, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = lock(&self.lists[slot]);
        if idle.conns.len() >= self.max_idle {
            return;
        }
        idle.conns.push((sender, Instant::now()));
        if !idle.reaping
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            idle.reaping = true;
            let pool = Arc::downgrade(&self);
            rt.spawn(reap(pool, slot, self.idle_timeout));
        }
    }
}

/// Closes list `slot`'s connections idle for `timeout`; ends when the list is empty or the
/// pool is gone.
async fn reap(pool: Weak<H1Pool>, slot: usize, timeout: Duration) {
    // Often enough that nothing stays much past its timeout, rarely enough to cost nothing.
    let every = (timeout / 4).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = lock(&pool.lists[slot]);
        let now = Instant::now();
        idle.conns
            .retain(|(s, since)| !spent(s, *since, now, timeout));
        if idle.conns.is_empty() {
            idle.reaping = false;
            return;
        }
    }
}

/// An idle connection that is no use any more: closed, or idle since `since` for `timeout`.
fn spent(sender: &Sender, since: Instant, now: Instant, timeout: Duration) -> bool {
    sender.is_closed() || now.saturating_duration_since(since) >= timeout
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

/// The connection a response came on, held until its body ends.
struct Lease {
    pool: Weak<H1Pool>,
    slot: usize,
    sender: Sender,
}

impl Lease {
    fn release(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.checkin(self.slot, self.sender);
        }
    }
}

/// A backend's HTTP/1.1 response body; its end gives the connection back to the pool.
pub struct H1Body {
    body: Incoming,
    lease: Option<Lease>,
}

impl H1Body {
    fn release_if_done(&mut self) {
        if self.body.is_end_stream()
            && let Some(l) = self.lease.take()
        {
            l.release();
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(l) = this.lease.take() {
                    l.release();
                }
            }
            Poll::Ready(Some(Ok(_))) => this.release_if_done(),
            // A failed body's connection is not reused.
            Poll::Ready(Some(Err(_))) => this.lease = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        // Dropped unread but complete (an empty body, a HEAD's answer): reusable. Dropped
        // part-way, hyper closes the connection.
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
