//! `[upstreams.<name>]`: the keys of an upstream and its backends, owned here beside the code
//! that builds them; `config` assembles them into the pipeline's model.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;

use serde::Deserialize;

/// Load-balancing algorithm of an upstream (all weight-aware; see `upstreams::balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Weighted smooth round-robin.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Lowest (inflight + 1) / weight, ties at random.
    LeastConnections,
    /// The less loaded of two weighted random choices.
    PowerOfTwo,
    /// Peak-EWMA latency × load, over two weighted random choices.
    LatencyAware,
    /// A weighted Maglev table keyed by `hash_key`.
    ConsistentHash,
    /// A client connection stays on one backend (`hash_key = "quic-cid"`).
    StickyCid,
}

impl Balance {
    /// Whether the algorithm needs a request key.
    pub fn keyed(self) -> bool {
        matches!(self, Balance::ConsistentHash | Balance::StickyCid)
    }

    /// The name written in config.
    pub fn name(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::Random => "random",
            Balance::LeastConnections => "least-connections",
            Balance::PowerOfTwo => "power-of-two",
            Balance::LatencyAware => "latency-aware",
            Balance::ConsistentHash => "consistent-hash",
            Balance::StickyCid => "sticky-cid",
        }
    }
}

/// `[upstreams.<name>]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default)]
    pub balance: Balance,
    /// The request key `consistent-hash` hashes (default `client-ip`; `sticky-cid` always
    /// uses `quic-cid`): `header:NAME`, `cookie:NAME`, `query:NAME`, `path`, `authority`,
    /// `client-ip`, `quic-cid`.
    pub hash_key: Option<String>,
    /// The algorithm used when a request has no key.
    #[serde(default)]
    pub fallback: Balance,
    /// Exchanges in flight to this upstream at once; more wait in the queue stage.
    #[serde(default = "default_upstream_inflight")]
    pub max_inflight: NonZeroUsize,
    /// TLS towards this upstream's `https://` backends.
    #[serde(default)]
    pub tls: UpstreamTls,
    /// Active health checks (absent: none; every backend stays in balancing).
    pub health: Option<super::health::HealthConfig>,
    /// Passive health: outlier ejection from live traffic (absent: none).
    pub outlier: Option<super::outlier::OutlierConfig>,
    /// Circuit breaking per backend (absent: none).
    pub breaker: Option<super::breaker::BreakerConfig>,
    /// Retries of this upstream's exchanges (absent: `[stages.hedge-retry] retries`, connect
    /// failures only).
    pub retry: Option<super::retry::RetryConfig>,
    /// Backends named by a hostname become one member per resolved address, resolved at
    /// start and again every `dns_refresh` (`"30s"`), or when the answer's TTL runs out
    /// (`"ttl"`); absent: the name is resolved by each new connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_refresh: Option<DnsRefresh>,
    /// The DNS server asked (`"10.0.0.2:53"`); absent: the system's (`/etc/resolv.conf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_resolver: Option<std::net::SocketAddr>,
    pub backends: Vec<BackendConfig>,
}

/// `dns_refresh`: a fixed interval, or the answer's TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsRefresh {
    Every(std::time::Duration),
    Ttl,
}

impl<'de> Deserialize<'de> for DnsRefresh {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "ttl" {
            return Ok(DnsRefresh::Ttl);
        }
        match crate::units::parse_duration(&s) {
            Ok(d) if d >= std::time::Duration::from_millis(100) => Ok(DnsRefresh::Every(d)),
            Ok(_) => Err(serde::de::Error::custom(format!(
                "dns_refresh \"{s}\": at least \"100ms\""
            ))),
            Err(e) => Err(serde::de::Error::custom(format!(
                "{e} (or \"ttl\": when the answer expires)"
            ))),
        }
    }
}

impl serde::Serialize for DnsRefresh {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DnsRefresh::Ttl => s.serialize_str("ttl"),
            DnsRefresh::Every(d) => s.collect_str(&crate::units::Dur(*d)),
        }
    }
}

/// Whether backend certificates are verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verify {
    #[default]
    On,
    /// Explicit opt-out, logged loudly at start.
    Off,
}

/// `[upstreams.<name>.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM file of private CA certificates; with `ca_dir`, replaces the bundled Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Directory of `*.pem` / `*.crt` CA certificates.
    pub ca_dir: Option<PathBuf>,
    /// SNI and the name the certificate must carry (default: the backend URL's host).
    pub server_name: Option<String>,
    #[serde(default)]
    pub verify: Verify,
    /// Client certificate and key (PEM) for upstream mTLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Which HTTP a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendProtocol {
    /// `http://`: HTTP/1.1; `https://`: ALPN picks `h2` or `http/1.1`.
    #[default]
    Auto,
    Http1,
    /// HTTP/2 over TLS (ALPN `h2` only).
    H2,
    /// HTTP/2 without TLS, prior knowledge (`http://` URLs).
    H2c,
    /// HTTP/3 over QUIC (`https://` URLs only).
    H3,
}

impl BackendProtocol {
    /// Known to speak HTTP/1.1 and nothing else: `http1`, or `auto` on an `http://` URL
    /// (`tls`: the URL is `https://`, where ALPN decides).
    pub fn http1_only(self, tls: bool) -> bool {
        match self {
            BackendProtocol::Http1 => true,
            BackendProtocol::Auto => !tls,
            BackendProtocol::H2 | BackendProtocol::H2c | BackendProtocol::H3 => false,
        }
    }
}

pub fn default_upstream_inflight() -> NonZeroUsize {
    NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN)
}

/// One backend of an upstream.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// What the membership API and `/status` call it (default: the URL's `host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Connect to this address instead of resolving the URL's host, which still names the
    /// backend in `Host` and TLS (SNI, certificate). DNS refresh fills it in per member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::SocketAddr>,
    #[serde(default)]
    pub protocol: BackendProtocol,
    #[serde(default = "default_weight")]
    pub weight: NonZeroU32,
    #[serde(default = "default_backend_inflight")]
    pub max_inflight: NonZeroUsize,
    /// `false` keeps the backend out of balancing (its pool stays; nothing is sent to it).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
}

fn default_enabled() -> bool {
    true
}

fn default_weight() -> NonZeroU32 {
    NonZeroU32::MIN
}
pub fn default_backend_inflight() -> NonZeroUsize {
    NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN)
}

impl BackendConfig {
    /// A backend at `url` with every default.
    pub fn at(url: &str) -> BackendConfig {
        BackendConfig {
            url: url.to_string(),
            id: None,
            address: None,
            protocol: BackendProtocol::default(),
            weight: default_weight(),
            max_inflight: default_backend_inflight(),
            enabled: true,
        }
    }
}

impl BackendConfig {
    /// Problems of the backend on its own, as (key, message): its URL, a protocol that does
    /// not fit the URL, an id that cannot go in an admin URL. Config validation and the
    /// membership API both ask.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(id) = &self.id
            && (id.is_empty() || id.contains(['/', '?', '#', ' ']))
        {
            out.push((
                "id",
                format!("\"{id}\": expected a non-empty name without '/', '?', '#' or spaces (it goes in admin URLs)"),
            ));
        }
        match super::addr::BackendAddr::parse(&self.url) {
            Err(e) => out.push(("url", e.to_string())),
            Ok(addr) => match (addr.is_tls(), self.protocol) {
                (true, BackendProtocol::H2c) => out.push((
                    "protocol",
                    "h2c is HTTP/2 without TLS: use an http:// URL".into(),
                )),
                (false, BackendProtocol::H2) => out.push((
                    "protocol",
                    "HTTP/2 without TLS is protocol = \"h2c\"".into(),
                )),
                (false, BackendProtocol::H3) => out.push((
                    "protocol",
                    "HTTP/3 runs over QUIC with TLS: use an https:// URL".into(),
                )),
                _ => {}
            },
        }
        out
    }

    /// Whether its URL names the host by a name that DNS refresh resolves (no `address`).
    pub fn resolves_by_name(&self) -> bool {
        self.address.is_none()
            && super::addr::BackendAddr::parse(&self.url).is_ok_and(|a| a.is_hostname())
    }

    /// Its name in metrics and health: the URL, with `@address` when it has one.
    pub fn label(&self) -> String {
        match self.address {
            Some(a) => format!("{}@{a}", self.url),
            None => self.url.clone(),
        }
    }
}

/// The ids of an upstream's backends, in order: `id` when set, else the URL's `host:port`
/// (`host:port#2`, `#3`… for a URL listed again).
pub fn backend_ids(backends: &[BackendConfig]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(backends.len());
    for b in backends {
        let base = match &b.id {
            Some(id) => id.clone(),
            None => super::addr::BackendAddr::parse(&b.url)
                .map(|a| a.connect_addr())
                .unwrap_or_else(|_| b.url.clone()),
        };
        let mut id = base.clone();
        let mut n = 1;
        while out.contains(&id) {
            n += 1;
            id = format!("{base}#{n}");
        }
        out.push(id);
    }
    out
}
