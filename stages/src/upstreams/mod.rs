//! Upstreams and backends as built from config: their caps, addresses, pooled clients and
//! balancing. Nothing here knows the stages or the exchange.

pub mod addr;
pub mod balance;
pub mod client;
pub mod config;
pub mod tls;

use std::sync::Arc;

use spooky_sync::Cap;

use crate::metrics::BackendMetrics;
use addr::BackendAddr;
use balance::RoundRobin;
use client::{BackendClient, ClientSettings};
use config::{BackendProtocol, UpstreamConfig};

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
        settings: &ClientSettings,
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
                        let alpn = tls::alpn_for(b.protocol);
                        let c = Arc::new(tls::client_config(&config.tls, alpn, name)?);
                        tls_by_protocol.push((b.protocol, c.clone()));
                        Some(c)
                    }
                }
            } else {
                None
            };
            let client = client::backend_client(
                settings,
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

/// A backend's response body (hyper's today; an HTTP/3 client's later).
pub type UpstreamBody = hyper::body::Incoming;
