//! Upstreams and backends as built from config: their caps and addresses.

use std::sync::Arc;

use spooky_sync::Cap;

use crate::config::{BackendProtocol, UpstreamConfig};
use crate::metrics::BackendMetrics;
use crate::stages::dispatch::{self, BackendAddr, BackendClient};
use crate::stages::select::RoundRobin;
use crate::upstream_tls;

/// One backend of an upstream.
pub struct Backend {
    pub name: String,
    pub addr: BackendAddr,
    pub cap: Cap,
    pub metrics: BackendMetrics,
    /// Its own connection pool.
    pub client: BackendClient,
    /// Known to speak HTTP/1.1 (`http1`, or `auto` on `http://`): hop-by-hop request fields
    /// are listed in `Connection` for it.
    pub http1: bool,
}

/// An upstream: its inflight cap, its backends and their balancer.
pub struct Upstream {
    pub name: String,
    pub cap: Cap,
    pub backends: Vec<Backend>,
    pub balancer: RoundRobin,
}

impl Upstream {
    /// Builds an upstream and its backends' clients; `config` was validated, so URLs parse.
    pub fn build(
        name: &str,
        config: &UpstreamConfig,
        dispatch: &dispatch::Config,
    ) -> Result<Arc<Self>, String> {
        // One TLS config per ALPN offer, shared by the backends that use it.
        let mut tls_by_protocol: Vec<(BackendProtocol, Arc<rustls::ClientConfig>)> = Vec::new();
        let mut backends = Vec::new();
        for b in &config.backends {
            let addr = BackendAddr::parse(&b.url)?;
            let tls = if addr.is_tls() {
                match tls_by_protocol.iter().find(|(p, _)| *p == b.protocol) {
                    Some((_, c)) => Some(c.clone()),
                    None => {
                        let alpn = upstream_tls::alpn_for(b.protocol);
                        let c = Arc::new(upstream_tls::client_config(&config.tls, alpn, name)?);
                        tls_by_protocol.push((b.protocol, c.clone()));
                        Some(c)
                    }
                }
            } else {
                None
            };
            let client = dispatch::backend_client(
                dispatch,
                &addr,
                b.protocol,
                tls,
                config.tls.server_name.as_deref(),
            )?;
            let http1 = match b.protocol {
                BackendProtocol::Http1 => true,
                BackendProtocol::Auto => !addr.is_tls(),
                BackendProtocol::H2 | BackendProtocol::H2c => false,
            };
            backends.push(Backend {
                http1,
                metrics: BackendMetrics::new(name, &b.url),
                name: b.url.clone(),
                addr,
                cap: Cap::new(b.max_inflight.get()),
                client,
            });
        }
        let weights: Vec<u32> = config.backends.iter().map(|b| b.weight.get()).collect();
        Ok(Arc::new(Upstream {
            name: name.to_string(),
            cap: Cap::new(config.max_inflight.get()),
            balancer: RoundRobin::new(&weights),
            backends,
        }))
    }
}
