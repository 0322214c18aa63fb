//! The validated shape of a pipeline TOML: what the engine and the stages are built from.
//!
//! Keys named in the foundation issue are the public interface: `[pipeline] name/chain`,
//! `[[listeners]] name/bind/protocols/tls`, `[admin] bind`, `[stages.<stage>] queue/concurrency/
//! when_full` and the stage-specific keys, `[[routes]] name/match/respond/upstream`,
//! `[upstreams.<name>] balance/max_inflight/backends`. Every default below is written down in
//! `config/reference.toml`, and a test checks the two agree.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;

use serde::Deserialize;

use crate::stages::{admission, dispatch, egress, hedge_retry, ingress, queue, route, select};
use crate::units::{Dur, Workers};

pub use crate::stages::WhenFull;
pub use crate::stages::route::RouteConfig;
pub use crate::tls::config::{CertificateConfig, ClientAuth, TlsConfig, TlsSetting};
pub use crate::upstreams::config::{
    BackendConfig, BackendProtocol, Balance, DnsRefresh, UpstreamConfig, UpstreamTls, Verify,
    backend_ids, default_backend_inflight, default_upstream_inflight,
};

/// One stage of the chain.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum StageKind {
    Ingress,
    Admission,
    Route,
    Queue,
    Select,
    HedgeRetry,
    Dispatch,
    Egress,
}

impl StageKind {
    /// All stages, in canonical chain order.
    pub const ALL: [StageKind; 8] = [
        StageKind::Ingress,
        StageKind::Admission,
        StageKind::Route,
        StageKind::Queue,
        StageKind::Select,
        StageKind::HedgeRetry,
        StageKind::Dispatch,
        StageKind::Egress,
    ];

    /// The name used in the chain and in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            StageKind::Ingress => "ingress",
            StageKind::Admission => "admission",
            StageKind::Route => "route",
            StageKind::Queue => "queue",
            StageKind::Select => "select",
            StageKind::HedgeRetry => "hedge-retry",
            StageKind::Dispatch => "dispatch",
            StageKind::Egress => "egress",
        }
    }

    /// Parses a chain name.
    pub fn from_name(s: &str) -> Option<StageKind> {
        StageKind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Stages a chain cannot do without.
    pub fn required(self) -> bool {
        !matches!(
            self,
            StageKind::Admission | StageKind::Queue | StageKind::HedgeRetry
        )
    }

    /// The bounds a stage gets when its table does not set them.
    pub fn default_settings(self) -> StageSettings {
        let nz = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        StageSettings {
            queue: match self {
                StageKind::Dispatch => 256,
                _ => 0,
            },
            concurrency: nz(4096),
            when_full: match self {
                StageKind::Admission => WhenFull::Shed,
                _ => WhenFull::Wait,
            },
        }
    }
}

/// The bounds every stage has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageSettings {
    /// Inlet capacity; 0 fuses the stage into the previous one (no channel hop).
    pub queue: usize,
    /// Exchanges in process in this stage at once.
    pub concurrency: NonZeroUsize,
    /// Wait or shed when full.
    pub when_full: WhenFull,
}

/// The common keys as written; unset ones take [`StageKind::default_settings`].
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StageCommonRaw {
    pub queue: Option<usize>,
    pub concurrency: Option<NonZeroUsize>,
    pub when_full: Option<WhenFull>,
}

/// `[pipeline]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Label on every metric.
    pub name: String,
    /// The stages, in order.
    pub chain: Vec<String>,
    /// On SIGTERM/SIGINT, how long in-flight exchanges may take to finish.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Dur,
    /// After the last exchange ends, how long QUIC and TCP connections get to deliver what was
    /// just sent (or to close themselves) before they are closed.
    #[serde(default = "default_drain_linger")]
    pub drain_linger: Dur,
    /// Single-threaded runtimes serving the listeners (one per core by default). Read at
    /// start only.
    #[serde(default)]
    pub workers: Workers,
}

pub(crate) fn default_drain_linger() -> Dur {
    Dur(std::time::Duration::from_millis(500))
}

pub(crate) fn default_drain_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

/// A protocol a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// HTTP/3 over QUIC on the UDP port of `bind`.
    H3,
    /// HTTP/2 over TLS (ALPN `h2`) on the TCP port of `bind`.
    H2,
    /// HTTP/1.1 on the TCP port of `bind`: over TLS (ALPN `http/1.1`), or plain with `tls = "off"`.
    Http1,
}

/// `Alt-Svc` on responses sent over TCP: `"auto"` advertises this listener's HTTP/3 port
/// (when it serves h3), `"off"` sends none, anything else is sent as written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AltSvc {
    #[default]
    Auto,
    Off,
    Value(String),
}

impl<'de> Deserialize<'de> for AltSvc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "auto" => AltSvc::Auto,
            "off" => AltSvc::Off,
            _ => AltSvc::Value(s),
        })
    }
}

impl serde::Serialize for AltSvc {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            AltSvc::Auto => "auto",
            AltSvc::Off => "off",
            AltSvc::Value(v) => v,
        })
    }
}

/// A plaintext HTTP/1.1 listener either serves the pipeline or redirects to https.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Redirect {
    #[default]
    Off,
    /// `308` to the same host and path over https (port from `redirect_port`, default 443).
    Https,
}

/// `[[listeners]]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    #[serde(default = "default_protocols")]
    pub protocols: Vec<Protocol>,
    /// Absent: a self-signed certificate for localhost/127.0.0.1 is generated at start.
    /// `"off"`: plaintext (HTTP/1.1 only, for use behind another balancer).
    #[serde(default)]
    pub tls: TlsSetting,
    /// `Alt-Svc` on TCP responses.
    #[serde(default)]
    pub alt_svc: AltSvc,
    /// Plaintext listeners only: `"https"` answers every request with a redirect.
    #[serde(default)]
    pub redirect: Redirect,
    /// The https port redirects point to.
    #[serde(default = "default_redirect_port")]
    pub redirect_port: u16,
    /// Connections at once, per protocol side (QUIC, TCP); further ones are refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: NonZeroUsize,
    /// Connections one client IP address may hold at once (QUIC and TCP each); absent = no
    /// per-client limit. For listeners exposed to the internet.
    #[serde(default)]
    pub max_connections_per_client: Option<NonZeroUsize>,
    /// Concurrent request streams a client may open on one connection (QUIC stream credit).
    #[serde(default = "default_max_streams")]
    pub max_streams_per_connection: NonZeroU32,
    /// A connection with no traffic (QUIC), or with no request in flight (TCP: HTTP/1.1
    /// keep-alive closed, HTTP/2 GOAWAY), for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// TCP: the PROXY protocol header (`"v1"` text, `"v2"` binary) that a load balancer in
    /// front sends first, with the client's real address. Read only from `trusted_proxies`.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// Who must send the PROXY header (address blocks); other peers are served as they are.
    #[serde(default)]
    pub trusted_proxies: Vec<crate::http::forwarded::Cidr>,
}

/// The PROXY protocol version a TCP listener expects from its trusted peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyProtocol {
    #[default]
    Off,
    /// `PROXY TCP4 1.2.3.4 5.6.7.8 1111 443\r\n`.
    V1,
    /// The binary header (signature `\r\n\r\n\0\r\nQUIT\n`).
    V2,
}

fn default_redirect_port() -> u16 {
    443
}

fn default_protocols() -> Vec<Protocol> {
    vec![Protocol::H3]
}
pub(crate) fn default_max_connections() -> NonZeroUsize {
    NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN)
}
pub(crate) fn default_max_streams() -> NonZeroU32 {
    NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN)
}
pub(crate) fn default_idle_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `GET /metrics`, `/health`, `/ready` over plain HTTP/1.1.
    pub bind: SocketAddr,
    /// A file holding the bearer token that control endpoints (`POST /certs/reload`) require;
    /// absent: control endpoints are disabled.
    pub token_file: Option<PathBuf>,
    /// `GET /ready` answers 503 while an upstream has no backend in balancing (every one
    /// unhealthy, ejected or disabled); `false`: ready as soon as the listeners are bound.
    #[serde(default = "default_true")]
    pub ready_needs_backends: bool,
}

fn default_true() -> bool {
    true
}

/// `[stages.*]`, resolved.
#[derive(Debug, Clone)]
pub struct StagesConfig {
    /// Indexed by `StageKind as usize`.
    pub settings: [StageSettings; 8],
    pub ingress: ingress::Config,
    pub admission: admission::Config,
    pub route: route::Config,
    pub queue: queue::Config,
    pub select: select::Config,
    pub hedge_retry: hedge_retry::Config,
    pub dispatch: dispatch::Config,
    pub egress: egress::Config,
}

impl Default for StagesConfig {
    fn default() -> Self {
        StagesConfig {
            settings: StageKind::ALL.map(StageKind::default_settings),
            ingress: Default::default(),
            admission: Default::default(),
            route: Default::default(),
            queue: Default::default(),
            select: Default::default(),
            hedge_retry: Default::default(),
            dispatch: Default::default(),
            egress: Default::default(),
        }
    }
}

impl StagesConfig {
    /// The bounds of one stage.
    pub fn settings(&self, kind: StageKind) -> StageSettings {
        self.settings[kind as usize]
    }
}

/// A whole validated pipeline.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (for messages).
    pub file: String,
    pub pipeline: PipelineConfig,
    /// The chain, parsed.
    pub chain: Vec<StageKind>,
    pub listeners: Vec<ListenerConfig>,
    pub admin: Option<AdminConfig>,
    pub stages: StagesConfig,
    pub routes: Vec<RouteConfig>,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub access_log: crate::access_log::Config,
    /// `[tracing]`: OTLP traces (with the `otlp` feature).
    pub tracing: Option<crate::trace::Config>,
    /// Valid, but probably not what was meant (`spooky check` prints them; `run` logs them).
    pub warnings: Vec<super::ConfigError>,
}

/// One stage as `/config` shows it: its bounds beside its own keys.
#[derive(serde::Serialize)]
struct StageView<'a, T: serde::Serialize> {
    queue: usize,
    concurrency: usize,
    when_full: WhenFull,
    #[serde(flatten)]
    own: &'a T,
}

/// Every stage with every default filled in, keyed by its chain name.
impl serde::Serialize for StagesConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        fn entry<M: SerializeMap, T: serde::Serialize>(
            m: &mut M,
            c: &StagesConfig,
            kind: StageKind,
            own: &T,
        ) -> Result<(), M::Error> {
            let b = c.settings(kind);
            let view = StageView {
                queue: b.queue,
                concurrency: b.concurrency.get(),
                when_full: b.when_full,
                own,
            };
            m.serialize_entry(kind.name(), &view)
        }
        let mut m = s.serialize_map(Some(StageKind::ALL.len()))?;
        entry(&mut m, self, StageKind::Ingress, &self.ingress)?;
        entry(&mut m, self, StageKind::Admission, &self.admission)?;
        entry(&mut m, self, StageKind::Route, &self.route)?;
        entry(&mut m, self, StageKind::Queue, &self.queue)?;
        entry(&mut m, self, StageKind::Select, &self.select)?;
        entry(&mut m, self, StageKind::HedgeRetry, &self.hedge_retry)?;
        entry(&mut m, self, StageKind::Dispatch, &self.dispatch)?;
        entry(&mut m, self, StageKind::Egress, &self.egress)?;
        m.end()
    }
}

/// The effective configuration (`GET /config`, diffs): every key with its default filled in,
/// in the file's shape. Nothing secret is held in the config itself (tokens and keys are
/// files, shown by path).
impl serde::Serialize for Config {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(8))?;
        m.serialize_entry("pipeline", &self.pipeline)?;
        m.serialize_entry("listeners", &self.listeners)?;
        m.serialize_entry("admin", &self.admin)?;
        m.serialize_entry("stages", &self.stages)?;
        m.serialize_entry("routes", &self.routes)?;
        m.serialize_entry("upstreams", &self.upstreams)?;
        m.serialize_entry("access_log", &self.access_log)?;
        m.serialize_entry("tracing", &self.tracing)?;
        m.end()
    }
}
