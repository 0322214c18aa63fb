//! Upstreams and backends as built from config: their caps and addresses.

use std::sync::Arc;

use spooky_sync::Cap;

use crate::config::UpstreamConfig;
use crate::metrics::BackendMetrics;
use crate::stages::dispatch::BackendAddr;
use crate::stages::select::RoundRobin;

/// One backend of an upstream.
pub struct Backend {
    pub name: String,
    pub addr: BackendAddr,
    pub cap: Cap,
    pub metrics: BackendMetrics,
}

/// An upstream: its inflight cap, its backends and their balancer.
pub struct Upstream {
    pub name: String,
    pub cap: Cap,
    pub backends: Vec<Backend>,
    pub balancer: RoundRobin,
}

impl Upstream {
    /// Builds an upstream; `config` was validated, so URLs parse.
    pub fn build(name: &str, config: &UpstreamConfig) -> Result<Arc<Self>, String> {
        let backends = config
            .backends
            .iter()
            .map(|b| {
                Ok(Backend {
                    metrics: BackendMetrics::new(name, &b.url),
                    name: b.url.clone(),
                    addr: BackendAddr::parse(&b.url)?,
                    cap: Cap::new(b.max_inflight.get()),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let weights: Vec<u32> = config.backends.iter().map(|b| b.weight.get()).collect();
        Ok(Arc::new(Upstream {
            name: name.to_string(),
            cap: Cap::new(config.max_inflight.get()),
            balancer: RoundRobin::new(&weights),
            backends,
        }))
    }
}
