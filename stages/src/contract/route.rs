//! What the route stage decided: the compiled route an exchange follows. It lives in the
//! contract because later stages read it (queue waits in its room, egress applies its
//! response edits, the record names it).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use spooky_sync::Cap;

use crate::contract::flow::Reply;
use crate::http::key::HashKey;
use crate::upstreams::Upstream;

/// What a route does.
pub enum Action {
    Respond(Reply),
    Upstream(Arc<Upstream>),
    Split(Split),
    Redirect(Redirect),
    /// CONNECT tunnels to the targets the policy allows.
    Connect(Arc<ConnectPolicy>),
}

/// A `connect` route's policy.
pub struct ConnectPolicy {
    pub allow: crate::http::connect_allow::Allow,
    /// CONNECT-UDP (RFC 9298) too.
    pub udp: bool,
    pub connect_timeout: std::time::Duration,
}

/// Weighted upstreams: smooth weighted round-robin over them, or, with a sticky key, the
/// key's place on the weight line (so a key only moves when the weights move past it).
pub struct Split {
    pub targets: Vec<(Arc<Upstream>, u32)>,
    pub sticky: Option<HashKey>,
    cumulative: Vec<u64>,
    cycle: Vec<u32>,
    next: AtomicUsize,
}

impl Split {
    pub fn new(targets: Vec<(Arc<Upstream>, u32)>, sticky: Option<HashKey>) -> Split {
        let weights: Vec<u32> = targets.iter().map(|t| t.1).collect();
        let cumulative = weights
            .iter()
            .scan(0u64, |s, w| {
                *s += u64::from(*w);
                Some(*s)
            })
            .collect();
        Split {
            cycle: crate::upstreams::balance::smooth_cycle(&weights),
            cumulative,
            targets,
            sticky,
            next: AtomicUsize::new(0),
        }
    }

    /// The upstream for a request whose sticky key hashes to `key` (or that has none).
    pub fn choose(&self, key: Option<u64>) -> Option<&Arc<Upstream>> {
        let total = self.cumulative.last().copied().unwrap_or(0);
        let i = match key {
            Some(k) if total > 0 => self.cumulative.partition_point(|c| *c <= k % total),
            _ => {
                let n = self.cycle.len().max(1);
                *self
                    .cycle
                    .get(self.next.fetch_add(1, Ordering::Relaxed) % n)? as usize
            }
        };
        self.targets.get(i).map(|t| &t.0)
    }
}

/// A redirect: the parts given replace the request's.
pub struct Redirect {
    pub status: StatusCode,
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    /// (matched prefix, replacement)
    pub prefix: Option<(String, String)>,
}

/// Header edits: remove, then set, then add.
#[derive(Default)]
pub struct HeaderOps {
    pub remove: Vec<HeaderName>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// What a route changes on the way.
#[derive(Default)]
pub struct Edits {
    /// (matched prefix, replacement) for the path sent upstream.
    pub path_prefix: Option<(String, String)>,
    /// The authority sent upstream.
    pub host: Option<http::uri::Authority>,
    pub request: HeaderOps,
    pub response: HeaderOps,
    /// Overrides `[stages.dispatch] forwarded` for this route.
    pub forwarded: Option<crate::http::forwarded::Policy>,
}

/// A compiled route.
/// When a hedge is sent: a fixed delay, or a percentile of the upstream's recent latency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeDelay {
    Fixed(std::time::Duration),
    /// `"p95"`: the 95th percentile (0 < p < 100).
    Percentile(f64),
}

impl HedgeDelay {
    pub fn parse(s: &str) -> Result<HedgeDelay, String> {
        if let Some(p) = s.strip_prefix('p') {
            return match p.parse::<f64>() {
                Ok(p) if p > 0.0 && p < 100.0 => Ok(HedgeDelay::Percentile(p)),
                _ => Err(format!(
                    "\"{s}\": a percentile is written p1 … p99.9 (e.g. \"p95\")"
                )),
            };
        }
        crate::units::parse_duration(s).map(HedgeDelay::Fixed)
    }
}

impl<'de> serde::Deserialize<'de> for HedgeDelay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HedgeDelay::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for HedgeDelay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HedgeDelay::Fixed(d) => s.collect_str(&crate::units::Dur(*d)),
            HedgeDelay::Percentile(p) => s.collect_str(&format_args!("p{p}")),
        }
    }
}

/// A route's timeouts (`timeouts = { … }`); absent ones fall back to the stages'.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// The longest wait for one attempt's response head (504 `upstream_timeout`).
    pub response_head: Option<crate::units::Dur>,
    /// The whole exchange, from its first byte to its response's last (504 `total_timeout`
    /// before the head; the response is cut after it).
    pub total: Option<crate::units::Dur>,
    /// The longest the client may pause its request body (408 `request_body_timeout`).
    pub request_body_idle: Option<crate::units::Dur>,
    /// The longest the backend may pause its response body (the response is cut).
    pub response_body_idle: Option<crate::units::Dur>,
    /// The longest a tunnel (WebSocket) may carry no byte either way before it is closed.
    pub tunnel_idle: Option<crate::units::Dur>,
}

/// A route's class for brownout (`priority`): `critical` is never shed, `background` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    Critical,
    #[default]
    Normal,
    Background,
}

impl Priority {
    pub fn name(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Background => "background",
        }
    }
}

pub struct Route {
    pub name: String,
    pub action: Action,
    pub edits: Edits,
    /// Takes paths with encoded slashes in a segment (`encoded_slashes = "keep"`).
    pub keeps_encoded_slashes: bool,
    /// Non-idempotent requests may be retried after they were sent (`retry_non_idempotent`).
    pub retry_non_idempotent: bool,
    /// Its class for brownout.
    pub priority: Priority,
    /// Hedged attempts after this delay (`hedge`), for idempotent requests without a body.
    pub hedge: Option<HedgeDelay>,
    /// Its `timeouts` (each absent one: the stage's).
    pub timeouts: Timeouts,
    /// Its rate limit (`rate_limit`), and the count of requests it refused.
    pub rate_limit: Option<crate::contract::rate_limit::RateLimiter>,
    pub rate_limited: metrics::Counter,
    /// Exchanges of this route waiting in the queue stage.
    pub waiting: Cap,
    /// Its exchanges are written to the access log (`access_log`).
    pub access_log: bool,
    /// The longest request body it takes, in bytes (`max_request_body`).
    pub max_request_body: Option<u64>,
    /// Takes WebSocket handshakes (`websocket`).
    pub websocket: bool,
    /// May be processed from 0-RTT data whatever the method (`early_data`).
    pub early_data: bool,
    /// Its requests by status class and reason, time to first byte, whole time.
    pub metrics: crate::metrics::RouteMetrics,
}
