//! DNS refresh for backends named by a hostname (`[upstreams.X] dns_refresh`): each such
//! backend becomes one member per address its name resolves to — same URL (so `Host` and TLS
//! still name the host), `address` set to the resolved IP and the URL's port, id
//! `host:port@IP`, the backend's weight and limits. Names are resolved at start and again every
//! `dns_refresh` (or when the answer's TTL runs out, with `"ttl"`); when the set of addresses
//! changes, a new generation is served (exchanges in flight finish on the members they had).
//! A failed resolution keeps the last good set. `spooky_dns_refreshes_total{upstream,
//! outcome="changed"|"unchanged"|"failed"}` counts every refresh.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hickory_resolver::Resolver;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use spooky_stages::config::{BackendConfig, Config, DnsRefresh, UpstreamConfig};
use spooky_stages::upstreams::addr::BackendAddr;

pub use spooky_stages::metrics::DNS_REFRESHES;

/// A TTL-driven refresh waits at least this long, and at most the longer one.
const TTL_FLOOR: Duration = Duration::from_secs(1);
const TTL_CEILING: Duration = Duration::from_secs(300);

pub type Tokio = Resolver<TokioConnectionProvider>;

/// The addresses each hostname backend resolved to last, by (upstream, URL).
#[derive(Default)]
pub struct Dns {
    resolved: Mutex<BTreeMap<(String, String), Vec<IpAddr>>>,
}

/// The hostname backends of an upstream with `dns_refresh`: their URLs.
pub fn names(u: &UpstreamConfig) -> Vec<String> {
    if u.dns_refresh.is_none() {
        return Vec::new();
    }
    let mut urls: Vec<String> = u
        .backends
        .iter()
        .filter(|b| b.resolves_by_name())
        .map(|b| b.url.clone())
        .collect();
    urls.dedup();
    urls
}

/// A resolver for `u`: its `dns_resolver`, or the system's.
pub fn resolver(u: &UpstreamConfig) -> Result<Tokio, String> {
    let mut builder = match u.dns_resolver {
        Some(server) => {
            let group = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                TokioConnectionProvider::default(),
            )
        }
        None => Resolver::builder_tokio().map_err(|e| format!("system DNS configuration: {e}"))?,
    };
    // Every refresh asks the server (the refresh interval is the cache).
    let opts = builder.options_mut();
    opts.cache_size = 0;
    opts.attempts = 2;
    opts.timeout = Duration::from_secs(2);
    Ok(builder.build())
}

/// Resolves `url`'s host: its addresses (sorted) and how long the answer is good for.
pub async fn lookup(r: &Tokio, url: &str) -> Result<(Vec<IpAddr>, Duration), String> {
    let addr = BackendAddr::parse(url).map_err(|e| e.to_string())?;
    let host = addr.authority.host();
    // A fully qualified name: no search domains tried.
    let fqdn = if host.ends_with('.') {
        host.to_string()
    } else {
        format!("{host}.")
    };
    let answer = r.lookup_ip(fqdn).await.map_err(|e| e.to_string())?;
    let mut ips: Vec<IpAddr> = answer.iter().collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return Err(format!("{host}: no address"));
    }
    let ttl = answer
        .valid_until()
        .saturating_duration_since(std::time::Instant::now());
    Ok((ips, ttl))
}

/// When to refresh next.
pub fn next_refresh(policy: DnsRefresh, ttl: Option<Duration>) -> Duration {
    match policy {
        DnsRefresh::Every(d) => d,
        DnsRefresh::Ttl => ttl.unwrap_or(TTL_FLOOR).clamp(TTL_FLOOR, TTL_CEILING),
    }
}

impl Dns {
    /// Records what `url` of `upstream` resolved to; whether that changed anything.
    pub fn set(&self, upstream: &str, url: &str, ips: Vec<IpAddr>) -> bool {
        let mut all = self.resolved.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (upstream.to_string(), url.to_string());
        if all.get(&key) == Some(&ips) {
            return false;
        }
        all.insert(key, ips);
        true
    }

    /// Whether `url` of `upstream` has resolved before.
    pub fn knows(&self, upstream: &str, url: &str) -> bool {
        self.resolved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&(upstream.to_string(), url.to_string()))
    }

    /// Forgets names no upstream of `config` refreshes any more.
    pub fn retain(&self, config: &Config) {
        let mut all = self.resolved.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|(u, url), _| {
            config
                .upstreams
                .get(u)
                .is_some_and(|up| names(up).contains(url))
        });
    }

    /// `config` with every refreshed hostname backend replaced by its resolved members (a
    /// name not resolved yet stays as written: its connections resolve it).
    pub fn expand(&self, config: &Config) -> Config {
        let all = self.resolved.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = config.clone();
        for (name, u) in out.upstreams.iter_mut() {
            if u.dns_refresh.is_none() {
                continue;
            }
            let mut members = Vec::new();
            for b in u.backends.drain(..) {
                let ips = all.get(&(name.clone(), b.url.clone()));
                match ips {
                    Some(ips) if b.address.is_none() => {
                        members.extend(ips.iter().map(|ip| member(&b, *ip)));
                    }
                    _ => members.push(b),
                }
            }
            u.backends = members;
        }
        out
    }
}

fn member(b: &BackendConfig, ip: IpAddr) -> BackendConfig {
    let addr = BackendAddr::parse(&b.url).ok();
    let port = addr.as_ref().map_or(80, BackendAddr::port);
    let base =
        b.id.clone()
            .or_else(|| addr.map(|a| a.connect_addr()))
            .unwrap_or_else(|| b.url.clone());
    let at = SocketAddr::new(ip, port);
    BackendConfig {
        id: Some(format!("{base}@{ip}")),
        address: Some(at),
        ..b.clone()
    }
}
