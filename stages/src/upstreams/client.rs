//! A backend's pooled HTTP client: our own pool of hyper connections for HTTP/1.1
//! (`upstreams::h1`), hyper-util's legacy client over our connector for HTTP/2 and for
//! `https://` backends on `auto` (HTTP/2 or HTTP/1.1 by ALPN), or quinn + h3 for HTTP/3
//! (`upstreams::h3`). There is one pool per worker: a connection is made, driven and reused on
//! the worker thread of the exchange that opened it, never handed across threads.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::{self, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::ServerName;

use crate::body::{BoxError, RequestBody};
use crate::upstreams::addr::BackendAddr;
use crate::upstreams::config::BackendProtocol;
use crate::upstreams::error::UpstreamError;
use crate::upstreams::h1::{H1Body, H1Error, H1Pool, H1Sending};
use crate::upstreams::h3::{H3Backend, H3Body, H3Error};
use crate::upstreams::tls::BackendConnector;

/// How backend connections are made and pooled (from `[stages.dispatch]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    /// The most an HTTP/1.1 backend connection buffers of a response its client is not
    /// reading (`upstream_read_ahead`).
    pub read_ahead: usize,
}

/// `upstream_read_ahead`'s default.
pub const UPSTREAM_READ_AHEAD: usize = 64 * 1024;

/// One worker's pooled client of a backend.
pub type WorkerClient = Client<BackendConnector, RequestBody>;

/// The pooled clients of one backend; cheap to clone (the pools are shared).
#[derive(Clone)]
pub struct BackendClient {
    transport: Transport,
    /// Connections open in all workers' pools.
    open: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Clone)]
enum Transport {
    /// HTTP/1.1 only: our pool of hyper connections, a list per worker.
    H1(Arc<H1Pool>),
    /// HTTP/2, or either by ALPN: one hyper-util client per worker.
    Hyper(Arc<[WorkerClient]>),
    /// HTTP/3: a QUIC connection per worker.
    H3(Arc<H3Backend>),
}

impl BackendClient {
    /// Connections open to the backend now (every worker's pool).
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends `req` on the calling worker's pool; resolves to the response head.
    pub fn request(&self, req: Request<RequestBody>) -> Sending {
        match &self.transport {
            Transport::H1(p) => Sending::H1(p.request(p.worker_slot(), req)),
            Transport::Hyper(w) => {
                Sending::Hyper(w[crate::workers::current() % w.len()].request(req))
            }
            Transport::H3(b) => Sending::H3(Box::pin(b.clone().request(b.worker_slot(), req))),
        }
    }

    /// Sends a health check (from the control thread: HTTP/3 checks get a connection of
    /// their own rather than one a worker drives).
    pub fn probe(&self, req: Request<RequestBody>) -> Sending {
        match &self.transport {
            Transport::H3(b) => Sending::H3(Box::pin(b.clone().request(b.probe_slot(), req))),
            Transport::H1(p) => Sending::H1(p.request(p.probe_slot(), req)),
            Transport::Hyper(_) => self.request(req),
        }
    }
}

type H3Sending = Pin<Box<dyn Future<Output = Result<Response<H3Body>, H3Error>> + Send>>;

/// A request on its way: resolves to the backend's response head.
pub enum Sending {
    H1(H1Sending),
    Hyper(legacy::ResponseFuture),
    /// Boxed: it would make every attempt's future as large as the HTTP/3 path's.
    H3(H3Sending),
}

impl Future for Sending {
    type Output = Result<Response<UpstreamBody>, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Sending::H1(f) => f.as_mut().poll(cx).map(|r| {
                r.map(|resp| resp.map(|b| UpstreamBody(Kind::H1(b))))
                    .map_err(SendError::H1)
            }),
            Sending::Hyper(f) => Pin::new(f).poll(cx).map(|r| {
                r.map(|resp| resp.map(|b| UpstreamBody(Kind::Hyper(b))))
                    .map_err(SendError::Hyper)
            }),
            Sending::H3(f) => f.as_mut().poll(cx).map(|r| {
                r.map(|resp| resp.map(|b| UpstreamBody(Kind::H3(Box::new(b)))))
                    .map_err(SendError::H3)
            }),
        }
    }
}

/// Why a request got no response head.
#[derive(Debug)]
pub enum SendError {
    H1(H1Error),
    Hyper(legacy::Error),
    H3(H3Error),
}

impl SendError {
    /// Nothing reached the backend: the connection was not made (or, over HTTP/3, refused
    /// the stream).
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::H1(e) => e.is_connect(),
            SendError::Hyper(e) => e.is_connect(),
            SendError::H3(e) => e.is_connect(),
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::H1(e) => e.fmt(f),
            SendError::Hyper(e) => e.fmt(f),
            SendError::H3(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::H1(e) => e.source(),
            SendError::Hyper(e) => e.source(),
            SendError::H3(e) => e.source(),
        }
    }
}

/// A backend's response body, whatever the protocol.
pub struct UpstreamBody(Kind);

enum Kind {
    H1(H1Body),
    Hyper(hyper::body::Incoming),
    /// Boxed: response bodies move several times on their way out.
    H3(Box<H3Body>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::H1(b) => Pin::new(b).poll_frame(cx),
            Kind::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            Kind::H3(b) => Pin::new(b.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::H1(b) => b.is_end_stream(),
            Kind::Hyper(b) => b.is_end_stream(),
            Kind::H3(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::H1(b) => b.size_hint(),
            Kind::Hyper(b) => b.size_hint(),
            Kind::H3(b) => b.size_hint(),
        }
    }
}

/// Builds a backend's clients, one for each of `workers`.
pub fn backend_client(
    workers: std::num::NonZeroUsize,
    settings: &ClientSettings,
    addr: &BackendAddr,
    protocol: BackendProtocol,
    tls: Option<Arc<rustls::ClientConfig>>,
    server_name: Option<&str>,
    metrics: crate::upstreams::tls::ConnMetrics,
) -> Result<BackendClient, UpstreamError> {
    let tls = match (addr.is_tls(), tls) {
        (true, Some(cfg)) => {
            let name = server_name
                .unwrap_or(addr.authority.host())
                .trim_matches(['[', ']']);
            let name = ServerName::try_from(name.to_string()).map_err(|source| {
                UpstreamError::ServerName {
                    name: name.to_string(),
                    source,
                }
            })?;
            Some((cfg, name))
        }
        _ => None,
    };
    let open = metrics.open_now();
    if protocol == BackendProtocol::H3 {
        let (cfg, name) = tls
            .ok_or_else(|| UpstreamError::Config("HTTP/3 backends need an https:// URL".into()))?;
        let name = name.to_str().into_owned();
        let backend = H3Backend::new(
            workers.get(),
            &addr.connect_addr(),
            &name,
            cfg,
            settings,
            metrics,
        )?;
        return Ok(BackendClient {
            transport: Transport::H3(Arc::new(backend)),
            open,
        });
    }
    let connector =
        BackendConnector::new(&addr.connect_addr(), tls, settings.connect_timeout, metrics);
    if protocol.http1_only(addr.is_tls()) {
        return Ok(BackendClient {
            transport: Transport::H1(Arc::new(H1Pool::new(workers.get(), settings, connector))),
            open,
        });
    }
    let per_worker = (0..workers.get())
        .map(|_| worker_client(settings, protocol, connector.clone()))
        .collect();
    Ok(BackendClient {
        transport: Transport::Hyper(per_worker),
        open,
    })
}

fn worker_client(
    settings: &ClientSettings,
    protocol: BackendProtocol,
    connector: BackendConnector,
) -> WorkerClient {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle)
        .set_host(false);
    if matches!(protocol, BackendProtocol::H2c | BackendProtocol::H2) {
        builder.http2_only(true);
    }
    // How much of a response an HTTP/1.1 connection (ALPN's choice) reads ahead (see h1).
    builder.http1_max_buf_size(settings.read_ahead);
    builder.build(connector)
}
