//! A backend's pooled HTTP client (hyper-util's legacy client over our own connector): its own
//! pools, TLS settings and protocol. There is one pool per worker: a connection is made, driven
//! and reused on the worker thread of the exchange that opened it, never handed across threads.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::ServerName;

use crate::body::RequestBody;
use crate::upstreams::addr::BackendAddr;
use crate::upstreams::config::BackendProtocol;
use crate::upstreams::error::UpstreamError;
use crate::upstreams::tls::BackendConnector;

/// How backend connections are made and pooled (from `[stages.dispatch]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
}

/// The most an HTTP/1.1 backend connection buffers of a response its client is not reading.
pub const UPSTREAM_READ_AHEAD: usize = 64 * 1024;

/// One worker's pooled client of a backend.
pub type WorkerClient = Client<BackendConnector, RequestBody>;

/// The pooled clients of one backend, one per worker; cheap to clone (hyper-util's client
/// shares its pool).
#[derive(Clone)]
pub struct BackendClient {
    per_worker: Arc<[WorkerClient]>,
    /// Connections open in all workers' pools.
    open: Arc<std::sync::atomic::AtomicUsize>,
}

impl BackendClient {
    /// Connections open to the backend now (every worker's pool).
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The calling worker's client.
    pub fn get(&self) -> &WorkerClient {
        &self.per_worker[crate::workers::current() % self.per_worker.len()]
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
    let connector =
        BackendConnector::new(&addr.connect_addr(), tls, settings.connect_timeout, metrics);
    let per_worker = (0..workers.get())
        .map(|_| worker_client(settings, protocol, connector.clone()))
        .collect();
    Ok(BackendClient { per_worker, open })
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
    // How much of a backend's response an HTTP/1.1 connection reads ahead of the client: a
    // client that reads slowly holds at most this much here (hyper's default, about 400 KiB,
    // made 1 000 slow readers of 1 MiB cost half a GiB).
    builder.http1_max_buf_size(UPSTREAM_READ_AHEAD);
    builder.build(connector)
}
