//! Upstreams and backends as built from config: their caps, addresses, pooled clients and
//! balancing. Nothing here knows the stages or the exchange.

pub mod addr;
pub mod balance;
pub mod breaker;
pub mod client;
pub mod config;
pub mod digest;
pub mod error;
pub mod h1;
pub mod h3;
pub mod health;
pub mod outlier;
pub mod registry;
pub mod retry;
pub mod tls;

use std::sync::Arc;

use spooky_sync::Cap;

use crate::http::key::HashKey;
use crate::metrics::BackendMetrics;
use addr::BackendAddr;
use balance::{Balancer, Loads, PeakEwma};
use client::{BackendClient, ClientSettings};
use config::{BackendConfig, Balance, UpstreamConfig};
use error::UpstreamError;
use registry::{PoolKey, Registry};

/// One backend of an upstream.
pub struct Backend {
    pub name: String,
    /// Its id (`id`, or the URL's `host:port`): the membership API's and `/status`'s name.
    pub id: String,
    pub weight: u32,
    /// `enabled = false`: out of balancing (drained).
    pub enabled: bool,
    pub addr: BackendAddr,
    pub cap: Cap,
    pub metrics: BackendMetrics,
    /// Its connection pool (from the registry, shared across generations).
    pub client: BackendClient,
    /// What identifies the pool.
    pub pool: PoolKey,
    /// Response-head latency, for `latency-aware` balancing.
    pub latency: PeakEwma,
    /// In balancing or not, by its health checks.
    pub health: Arc<health::Health>,
    /// Passive health (outlier ejection), when the upstream sets `outlier`.
    pub outlier: Option<outlier::Outlier>,
    /// Circuit breaker, when the upstream sets `breaker`.
    pub breaker: Option<breaker::BackendBreaker>,
    /// Known to speak HTTP/1.1 (`http1`, or `auto` on `http://`): hop-by-hop request fields
    /// are listed in `Connection` for it.
    pub http1: bool,
}

/// An upstream: its inflight cap, its backends and their balancer.
pub struct Upstream {
    pub name: String,
    pub cap: Cap,
    pub backends: Vec<Backend>,
    pub balancer: Balancer,
    /// What `consistent-hash` and `sticky-cid` hash.
    pub hash_key: Option<HashKey>,
    /// Active health checks, run by the generation that holds this upstream.
    pub health: Option<Arc<health::HealthConfig>>,
    /// Passive health is on (every backend has an `outlier`).
    passive: bool,
    /// The upstream's own retry policy (`retry`); absent, hedge-retry's stage-wide one.
    pub retry: Option<retry::RetryPolicy>,
    /// Its retry budget (retries and hedges), from `retry.budget` or the defaults.
    pub budget: retry::Budget,
    /// Something takes from the budget (its own `retry`, or a route that hedges to it): only
    /// then are its requests counted.
    pub budgeted: std::sync::atomic::AtomicBool,
    /// Recent response-head latencies (hedge delays by percentile), kept only when a route
    /// hedges to it by percentile.
    pub latency: digest::LatencyDigest,
    pub tracks_latency: std::sync::atomic::AtomicBool,
}

impl Backend {
    /// Whether active and passive health both let this backend be chosen.
    pub fn available(&self) -> bool {
        self.health.is_up() && self.outlier.as_ref().is_none_or(outlier::Outlier::is_in)
    }

    /// Whether its circuit breaker lets an attempt through now: the ticket to report the
    /// outcome with (`None` without a breaker).
    pub fn admit(&self) -> Result<Option<spooky_sync::Ticket>, spooky_sync::Rejected> {
        self.breaker
            .as_ref()
            .map(breaker::BackendBreaker::admit)
            .transpose()
    }
}

impl Loads for [Backend] {
    fn inflight(&self, i: usize) -> usize {
        self[i].cap.in_use()
    }
    fn latency(&self, i: usize) -> &PeakEwma {
        &self[i].latency
    }
}

impl Upstream {
    /// Builds an upstream and its backends, taking their pools from `registry`; `config` was
    /// validated, so URLs parse. `bulkhead`: the most exchanges it may have past the queue
    /// stage (its share of the attempt stages); its cap is the smaller of that and
    /// `max_inflight`.
    pub fn build(
        name: &str,
        config: &UpstreamConfig,
        settings: &ClientSettings,
        registry: &Registry,
        bulkhead: usize,
    ) -> Result<Arc<Self>, UpstreamError> {
        let mut backends = Vec::new();
        let ejected = Arc::new(outlier::Ejected::default());
        let outlier_config = config.outlier.clone().map(Arc::new);
        let ids = config::backend_ids(&config.backends);
        for (b, id) in config.backends.iter().zip(ids) {
            let mut addr = BackendAddr::parse(&b.url)?;
            addr.connect = b.address;
            let label = b.label();
            let key = PoolKey {
                tls: addr.is_tls().then(|| config.tls.clone()),
                addr: addr.clone(),
                protocol: b.protocol,
                settings: *settings,
            };
            let client = registry.client(&key, name, &label)?;
            let http1 = b.protocol.http1_only(addr.is_tls());
            backends.push(Backend {
                id,
                weight: b.weight.get(),
                enabled: b.enabled,
                http1,
                latency: PeakEwma::default(),
                health: registry.health(name, &label),
                outlier: outlier_config.as_ref().map(|c| {
                    outlier::Outlier::new(
                        c.clone(),
                        config.backends.len(),
                        ejected.clone(),
                        name,
                        &label,
                    )
                }),
                breaker: config
                    .breaker
                    .as_ref()
                    .map(|c| breaker::BackendBreaker::new(c, name, &label)),
                metrics: BackendMetrics::new(name, &label),
                name: label,
                addr,
                cap: Cap::new(b.max_inflight.get()),
                client,
                pool: key,
            });
        }
        let labels: Vec<String> = config.backends.iter().map(BackendConfig::label).collect();
        let members: Vec<(&str, u32, bool)> = config
            .backends
            .iter()
            .zip(&labels)
            .map(|(b, l)| (l.as_str(), b.weight.get(), b.enabled))
            .collect();
        let hash_key = match config.balance {
            Balance::StickyCid => Some(HashKey::QuicCid),
            Balance::ConsistentHash => Some(match &config.hash_key {
                Some(k) => HashKey::parse(k).map_err(UpstreamError::Config)?,
                None => HashKey::ClientIp,
            }),
            _ => None,
        };
        let limit = config.max_inflight.get().min(bulkhead.max(1));
        metrics::gauge!(crate::metrics::UPSTREAM_LIMIT, "upstream" => name.to_string())
            .set(limit as f64);
        Ok(Arc::new(Upstream {
            name: name.to_string(),
            cap: Cap::new(limit),
            balancer: Balancer::new(config.balance, config.fallback, &members),
            hash_key,
            health: config.health.clone().map(Arc::new),
            passive: config.outlier.is_some(),
            retry: config.retry.as_ref().map(retry::RetryPolicy::build),
            budget: retry::Budget::new(
                &config.retry.as_ref().map(|r| r.budget).unwrap_or_default(),
            ),
            budgeted: std::sync::atomic::AtomicBool::new(config.retry.is_some()),
            latency: digest::LatencyDigest::default(),
            tracks_latency: std::sync::atomic::AtomicBool::new(false),
            backends,
        }))
    }
}

impl Upstream {
    /// Starts one health-check task per backend (with `health` set); aborting the handles
    /// stops them. Must run inside tokio.
    pub fn start_health_checks(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(config) = &self.health else {
            return Vec::new();
        };
        self.backends
            .iter()
            .map(|b| {
                let probe = health::Probe {
                    upstream: self.name.clone(),
                    backend: b.name.clone(),
                    addr: b.addr.clone(),
                    client: b.client.clone(),
                    health: b.health.clone(),
                    http1: b.http1,
                };
                tokio::spawn(health::run(config.clone(), probe))
            })
            .collect()
    }

    /// Whether select must skip unavailable backends: health is on (active or passive) and
    /// some backend is available (when none is, health is ignored).
    pub fn filters_by_health(&self) -> bool {
        (self.health.is_some() || self.passive) && self.backends.iter().any(Backend::available)
    }

    /// The name (URL) of backend `idx`.
    pub fn backend_name(&self, idx: usize) -> Option<&str> {
        self.backends.get(idx).map(|b| b.name.as_str())
    }

    /// Sets the upstream's and its backends' inflight gauges (scrape time).
    pub fn sample_gauges(&self) {
        use crate::metrics::{
            BACKEND_INFLIGHT, UPSTREAM_CONNECTIONS, UPSTREAM_CONNECTIONS_IDLE, UPSTREAM_INFLIGHT,
        };
        metrics::gauge!(UPSTREAM_INFLIGHT, "upstream" => self.name.clone())
            .set(self.cap.in_use() as f64);
        for b in &self.backends {
            let inflight = b.cap.in_use();
            metrics::gauge!(BACKEND_INFLIGHT, "upstream" => self.name.clone(), "backend" => b.name.clone())
                .set(inflight as f64);
            let open = b.client.open();
            metrics::gauge!(UPSTREAM_CONNECTIONS, "upstream" => self.name.clone(), "backend" => b.name.clone())
                .set(open as f64);
            // Every attempt in flight holds a connection (HTTP/1.1: one each; HTTP/2: streams
            // share one, so this is a lower bound there).
            metrics::gauge!(UPSTREAM_CONNECTIONS_IDLE, "upstream" => self.name.clone(), "backend" => b.name.clone())
                .set(open.saturating_sub(inflight) as f64);
        }
    }
}

pub use client::UpstreamBody;
