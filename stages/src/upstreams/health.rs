//! Active health checks: each backend of an upstream with `health = { … }` is asked
//! `METHOD path` every `interval` (plus up to `jitter`), over its own protocol and TLS, each
//! check bounded by `timeout`. `unhealthy` failures in a row take it out of balancing,
//! `healthy` successes in a row bring it back. Every backend has its own task, so a slow
//! backend never delays another's checks.
//!
//! A backend starts healthy (traffic flows at start; the first failed checks take it out).
//! When no backend of an upstream is available (by active and passive health together),
//! select ignores health rather than refuse everything (Envoy's panic mode): a health
//! endpoint that lies must not take a whole upstream down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderValue, Method, Request, StatusCode};
use serde::Deserialize;

use crate::body::RequestBody;
use crate::units::Dur;
use crate::upstreams::addr::BackendAddr;
use crate::upstreams::client::BackendClient;

/// `[upstreams.<name>] health = { … }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// The path asked (`/health`).
    pub path: String,
    #[serde(default = "default_method")]
    pub method: String,
    /// Statuses that pass; empty (the default): any 2xx or 3xx.
    #[serde(default)]
    pub expect: Vec<u16>,
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// Up to this much is added to each interval, at random (checks of many proxies spread).
    #[serde(default = "default_jitter")]
    pub jitter: Dur,
    /// A check without a response head within this is a failure.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Successes in a row that bring a backend back.
    #[serde(default = "default_healthy")]
    pub healthy: u32,
    /// Failures in a row that take a backend out.
    #[serde(default = "default_unhealthy")]
    pub unhealthy: u32,
}

fn default_method() -> String {
    "GET".into()
}
fn default_interval() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_jitter() -> Dur {
    Dur(Duration::from_millis(200))
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_healthy() -> u32 {
    2
}
fn default_unhealthy() -> u32 {
    3
}

impl HealthConfig {
    /// Problems, as (key, message), for validation.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !self.path.starts_with('/')
            || http::uri::PathAndQuery::try_from(self.path.as_str()).is_err()
        {
            out.push((
                "path",
                format!(
                    "\"{}\" is not a path: expected one starting with '/'",
                    self.path
                ),
            ));
        }
        if Method::from_bytes(self.method.as_bytes()).is_err()
            || self.method.chars().any(|c| c.is_ascii_lowercase())
        {
            out.push((
                "method",
                format!(
                    "\"{}\" is not an HTTP method (upper case, e.g. \"GET\")",
                    self.method
                ),
            ));
        }
        for s in &self.expect {
            if !(100..=599).contains(s) {
                out.push(("expect", format!("{s} is not a status code")));
            }
        }
        if self.interval.0.is_zero() {
            out.push(("interval", "expected a duration above 0".to_string()));
        }
        if self.timeout.0.is_zero() {
            out.push(("timeout", "expected a duration above 0".to_string()));
        }
        if self.healthy == 0 {
            out.push(("healthy", "expected 1 or more".to_string()));
        }
        if self.unhealthy == 0 {
            out.push(("unhealthy", "expected 1 or more".to_string()));
        }
        out
    }

    fn passes(&self, status: StatusCode) -> bool {
        if self.expect.is_empty() {
            status.is_success() || status.is_redirection()
        } else {
            self.expect.contains(&status.as_u16())
        }
    }
}

/// A backend's health, as its checks (and later its traffic) see it.
pub struct Health {
    up: AtomicBool,
    gauge: metrics::Gauge,
}

impl Health {
    pub fn new(upstream: &str, backend: &str) -> Arc<Health> {
        let gauge = metrics::gauge!(crate::metrics::BACKEND_HEALTHY, "upstream" => upstream.to_string(), "backend" => backend.to_string());
        gauge.set(1.0);
        Arc::new(Health {
            up: AtomicBool::new(true),
            gauge,
        })
    }

    /// Whether the backend may be chosen.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.gauge.set(if up { 1.0 } else { 0.0 });
    }
}

/// What one backend's check task needs.
pub struct Probe {
    pub upstream: String,
    pub backend: String,
    pub addr: BackendAddr,
    pub client: BackendClient,
    pub health: Arc<Health>,
    /// Known to speak HTTP/1.1: the check asks for its connection to be closed.
    pub http1: bool,
}

/// Checks one backend until the task is aborted (its pipeline generation goes).
pub async fn run(config: Arc<HealthConfig>, probe: Probe) {
    let method = Method::from_bytes(config.method.as_bytes()).unwrap_or(Method::GET);
    let uri = format!(
        "{}://{}{}",
        probe.addr.scheme, probe.addr.authority, config.path
    );
    let host = HeaderValue::from_str(probe.addr.authority.as_str()).ok();
    let count = |result: &'static str| metrics::counter!(crate::metrics::HEALTH_CHECKS, "upstream" => probe.upstream.clone(), "backend" => probe.backend.clone(), "result" => result);
    let (passed_c, failed_c) = (count("pass"), count("fail"));
    let (mut passes, mut fails) = (0u32, 0u32);
    loop {
        let jitter = config.jitter.0.mul_f64(fastrand::f64());
        tokio::time::sleep(config.interval.0 + jitter).await;
        let mut req = Request::new(RequestBody::empty());
        *req.method_mut() = method.clone();
        let Ok(u) = uri.parse() else { return };
        *req.uri_mut() = u;
        if let Some(h) = &host {
            req.headers_mut().insert(http::header::HOST, h.clone());
        }
        if probe.http1 {
            // Not pooled: a check's connection is never handed to an exchange.
            req.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        let sent = tokio::time::timeout(config.timeout.0, probe.client.probe(req)).await;
        let ok = match sent {
            Ok(Ok(resp)) => config.passes(resp.status()),
            _ => false,
        };
        if ok {
            passed_c.increment(1);
            passes += 1;
            fails = 0;
            if !probe.health.is_up() && passes >= config.healthy {
                probe.health.set(true);
                tracing::info!(upstream = %probe.upstream, backend = %probe.backend, "backend healthy again");
            }
        } else {
            failed_c.increment(1);
            fails += 1;
            passes = 0;
            if probe.health.is_up() && fails >= config.unhealthy {
                probe.health.set(false);
                tracing::warn!(upstream = %probe.upstream, backend = %probe.backend, "backend unhealthy: taken out of balancing");
            }
        }
    }
}
