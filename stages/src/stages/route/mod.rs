//! Route: picks the route for an exchange from a compiled index ([`index`], where the
//! precedence is written down), then carries out its action: answer (`respond`, `redirect`),
//! or name the upstream (`upstream`, a weighted `split`) after applying the route's rewrites
//! and request header edits.
//!
//! Paths are matched as ingress normalized them (`crate::http::path`), with segment parameters
//! (`/admin;x`) ignored, so a route cannot be walked around by spelling its path differently.
//!
//! No route → 404.

pub mod config;
pub mod index;
pub mod matcher;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use spooky_sync::Cap;

use crate::contract::exchange::Exchange;
use crate::contract::flow::{Flow, Reply};
use crate::contract::reason::Reason;
use crate::contract::route::{Action, Edits, HeaderOps, Redirect, Route, Split};
use crate::contract::tunnel::TunnelKind;
use crate::http::host::{HostPattern, host_of};
use crate::http::key::HashKey;
use crate::stages::admission::Brownout;
use crate::upstreams::Upstream;

pub use config::{
    Config, HeaderOpsConfig, MatchConfig, OneOrMany, PathCase, RedirectConfig, RespondConfig,
    RewriteConfig, RouteConfig, RouteProtocol, SplitConfig, ValueMatch,
};
pub use index::{Candidate, Entry, RouteIndex, Tie, why_lost};
pub use matcher::Req;

/// Why routes could not be compiled (validation reports these to the operator first, with
/// file and line; here they only guard a config that skipped it).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route \"{route}\": upstream \"{upstream}\" is not defined")]
    UnknownUpstream { route: String, upstream: String },
    #[error("route \"{route}\": {message}")]
    Invalid { route: String, message: String },
}

impl RouteIndex {
    /// Compiles validated routes.
    pub fn build(
        routes: &[RouteConfig],
        upstreams: &HashMap<String, Arc<Upstream>>,
        queue_capacity: usize,
    ) -> Result<Self, RouteError> {
        let mut index = RouteIndex::default();
        for (order, rc) in routes.iter().enumerate() {
            let invalid = |message: String| RouteError::Invalid {
                route: rc.name.clone(),
                message,
            };
            let upstream = |name: &str| {
                upstreams
                    .get(name)
                    .cloned()
                    .ok_or_else(|| RouteError::UnknownUpstream {
                        route: rc.name.clone(),
                        upstream: name.to_string(),
                    })
            };
            let matcher =
                Arc::new(matcher::Matcher::compile(&rc.matches, rc.path_case).map_err(invalid)?);
            let matched_prefix = match &matcher.path {
                matcher::PathMatch::Prefix(p) => Some(p.clone()),
                _ => None,
            };
            let action = match (&rc.respond, &rc.upstream, &rc.split, &rc.redirect) {
                (None, None, None, None) if rc.connect.is_some() => {
                    let c = rc
                        .connect
                        .as_ref()
                        .ok_or_else(|| invalid("connect".into()))?;
                    let allow = crate::http::connect_allow::Allow::parse(&c.allow)
                        .map_err(|(i, e)| invalid(format!("connect.allow[{i}]: {e}")))?;
                    Action::Connect(Arc::new(crate::contract::route::ConnectPolicy {
                        allow,
                        udp: c.udp,
                        connect_timeout: c.connect_timeout.0,
                    }))
                }
                (Some(r), None, None, None) => {
                    let mut reply = reply_from(r).map_err(invalid)?;
                    header_ops(&rc.response_headers)
                        .map_err(invalid)?
                        .apply(&mut reply.headers);
                    Action::Respond(reply)
                }
                (None, Some(u), None, None) => Action::Upstream(upstream(u)?),
                (None, None, Some(split), None) => {
                    let targets = split
                        .iter()
                        .map(|s| Ok((upstream(&s.upstream)?, s.weight)))
                        .collect::<Result<Vec<_>, RouteError>>()?;
                    if targets.iter().all(|t| t.1 == 0) {
                        return Err(invalid("split weights sum to zero".into()));
                    }
                    let sticky = rc
                        .sticky
                        .as_deref()
                        .map(HashKey::parse)
                        .transpose()
                        .map_err(invalid)?;
                    Action::Split(Split::new(targets, sticky))
                }
                (None, None, None, Some(r)) => Action::Redirect(Redirect {
                    status: StatusCode::from_u16(r.status)
                        .ok()
                        .filter(StatusCode::is_redirection)
                        .ok_or_else(|| invalid(format!("{} is not a redirect status", r.status)))?,
                    scheme: r.scheme.clone(),
                    host: r.host.clone(),
                    port: r.port,
                    path: r.path.clone(),
                    prefix: r
                        .prefix
                        .clone()
                        .and_then(|to| matched_prefix.clone().map(|from| (from, to))),
                }),
                _ => {
                    return Err(invalid(
                        "expected exactly one of respond, upstream, split, redirect, connect"
                            .into(),
                    ));
                }
            };
            let edits = Edits {
                path_prefix: rc
                    .rewrite
                    .path_prefix
                    .clone()
                    .and_then(|to| matched_prefix.clone().map(|from| (from, to))),
                host: rc
                    .rewrite
                    .host
                    .as_deref()
                    .map(|h| {
                        h.parse()
                            .map_err(|_| invalid(format!("\"{h}\" is not a host")))
                    })
                    .transpose()?,
                request: header_ops(&rc.request_headers).map_err(invalid)?,
                response: header_ops(&rc.response_headers).map_err(invalid)?,
                forwarded: rc.forwarded,
            };
            if let Some(delay) = rc.hedge.as_ref().map(|h| h.delay) {
                // Hedges take from the budget of every upstream the route may send to, and
                // percentile delays need those upstreams' latencies.
                let targets = rc
                    .upstream
                    .iter()
                    .chain(rc.split.iter().flatten().map(|s| &s.upstream));
                for name in targets {
                    if let Some(u) = upstreams.get(name) {
                        use std::sync::atomic::Ordering::Relaxed;
                        u.budgeted.store(true, Relaxed);
                        if matches!(delay, crate::contract::route::HedgeDelay::Percentile(_)) {
                            u.tracks_latency.store(true, Relaxed);
                        }
                    }
                }
            }
            let route = Arc::new(Route {
                name: rc.name.clone(),
                action,
                edits,
                keeps_encoded_slashes: rc.encoded_slashes
                    == Some(crate::http::path::EncodedSlashes::Keep),
                retry_non_idempotent: rc.retry_non_idempotent,
                priority: rc.priority,
                hedge: rc.hedge.as_ref().map(|h| h.delay),
                timeouts: rc.timeouts,
                rate_limit: rc
                    .rate_limit
                    .as_ref()
                    .map(|c| {
                        crate::contract::rate_limit::RateLimiter::build(c)
                            .map_err(|e| invalid(format!("rate_limit.{e}")))
                    })
                    .transpose()?,
                rate_limited: metrics::counter!(crate::metrics::RATE_LIMITED, "route" => rc.name.clone()),
                waiting: Cap::new(queue_capacity),
                access_log: rc.access_log,
                max_request_body: rc.max_request_body.map(|s| s.0),
                websocket: rc.websocket,
                early_data: rc.early_data,
                metrics: crate::metrics::RouteMetrics::new(&rc.name),
            });
            let hosts = rc
                .matches
                .host
                .iter()
                .flat_map(OneOrMany::as_slice)
                .map(|h| HostPattern::parse(h))
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?;
            index.insert(route, matcher, &hosts, order);
        }
        Ok(index)
    }
}

fn header_ops(c: &HeaderOpsConfig) -> Result<HeaderOps, String> {
    let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("\"{n}\": {e}"));
    let pair = |(n, v): (&String, &String)| {
        Ok((
            name(n)?,
            HeaderValue::from_str(v).map_err(|e| format!("\"{n}\": {e}"))?,
        ))
    };
    Ok(HeaderOps {
        remove: c.remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
        set: c.set.iter().map(pair).collect::<Result<_, String>>()?,
        add: c.add.iter().map(pair).collect::<Result<_, String>>()?,
    })
}

fn reply_from(r: &RespondConfig) -> Result<Reply, String> {
    let status = StatusCode::from_u16(r.status).map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_str(&r.content_type).map_err(|e| e.to_string())?,
    );
    for (k, v) in &r.headers {
        headers.insert(
            HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?,
            HeaderValue::from_str(v).map_err(|e| e.to_string())?,
        );
    }
    Ok(Reply {
        status,
        headers,
        body: Bytes::from(r.body.clone()),
    })
}

/// Calls `f` with what the matchers see of an exchange's request: its host normalized, its
/// path without `;params` (ingress normalized the rest).
pub fn with_request<R>(ex: &Exchange, f: impl FnOnce(&Req<'_>) -> R) -> R {
    let authority = ex.head.uri.authority().map_or("", |a| a.as_str());
    let host = normalize_host(authority);
    // A CONNECT's target has no path; its routes match it as `/`.
    let path = match ex.head.uri.path() {
        "" => std::borrow::Cow::Borrowed("/"),
        p => crate::http::path::without_params(p),
    };
    f(&Req {
        host: &host,
        path: &path,
        method: &ex.head.method,
        headers: &ex.head.headers,
        query: ex.head.uri.query(),
        protocol: ex.client.protocol,
        sni: ex.client.sni.as_deref(),
    })
}

/// `%2F` or `%5C` (ingress upper-cases percent-encodings).
fn has_encoded_slash(path: &str) -> bool {
    path.contains("%2F") || path.contains("%5C")
}

/// Lower case, without port and trailing dot.
pub fn normalize_host(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = host_of(authority).trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// Replaces `from` (matched, so the path starts with it up to ASCII case) by `to`; a slash
/// at their seam is not doubled, and an empty result is `/`.
fn replace_prefix(path: &str, from: &str, to: &str) -> String {
    let rest = path.get(from.len()..).unwrap_or("");
    let mut out = String::with_capacity(to.len() + rest.len());
    out.push_str(to);
    if to.ends_with('/') && rest.starts_with('/') {
        out.push_str(&rest[1..]);
    } else if !to.ends_with('/')
        && !rest.is_empty()
        && !rest.starts_with('/')
        && from.ends_with('/')
    {
        out.push('/');
        out.push_str(rest);
    } else {
        out.push_str(rest);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The running stage.
pub struct RouteStage {
    index: RouteIndex,
    /// Ingress let encoded slashes through for the routes that keep them: the others refuse
    /// them here.
    refuse_encoded_slashes: bool,
    /// Admission's brownout, when configured.
    brownout: Option<Arc<Brownout>>,
}

impl RouteStage {
    pub fn build(index: RouteIndex) -> Self {
        RouteStage {
            index,
            refuse_encoded_slashes: false,
            brownout: None,
        }
    }

    /// Sheds routes by priority while `brownout` says so.
    pub fn with_brownout(mut self, brownout: Option<Arc<Brownout>>) -> Self {
        self.brownout = brownout;
        self
    }

    /// Refuse paths with encoded slashes unless the chosen route keeps them (ingress keeps
    /// them for all when some route does).
    pub fn refusing_encoded_slashes(mut self) -> Self {
        self.refuse_encoded_slashes = true;
        self
    }

    pub fn index(&self) -> &RouteIndex {
        &self.index
    }

    /// Sets each route's queue gauge (scrape time).
    pub fn sample_gauges(&self, pipeline: &str) {
        for route in self.index.routes() {
            metrics::gauge!(crate::metrics::ROUTE_QUEUE_WAITING, "pipeline" => pipeline.to_string(), "route" => route.name.clone())
                .set(route.waiting.in_use() as f64);
        }
    }

    pub async fn process(&self, ex: Exchange) -> Flow {
        self.decide(ex)
    }

    /// The pure decision (no await): benches and the fused path call it directly.
    pub fn decide(&self, mut ex: Exchange) -> Flow {
        let Some(entry) = with_request(&ex, |req| self.index.lookup(req)) else {
            return Flow::Reject(ex, Reason::NoRoute);
        };
        let route = entry.route.clone();
        if self.refuse_encoded_slashes
            && !route.keeps_encoded_slashes
            && has_encoded_slash(&crate::http::path::without_params(ex.head.uri.path()))
        {
            return Flow::Reject(
                ex,
                Reason::BadPath(crate::http::path::PathError::EncodedSlash),
            );
        }
        if let Some(b) = &self.brownout
            && b.sheds(route.priority)
        {
            ex.decided.route = Some(route.clone());
            return Flow::Reject(ex, Reason::Brownout);
        }
        if let Some(limiter) = &route.rate_limit {
            let key = limiter.key_of(&ex.head, ex.client.ip, ex.client.conn);
            let verdict = limiter.check(key, crate::upstreams::balance::now_ns());
            if !verdict.allowed {
                route.rate_limited.increment(1);
                ex.decided.route = Some(route.clone());
                ex.decided.reply_headers = Some(Box::new(limiter.headers(verdict)));
                return Flow::Reject(ex, Reason::RateLimited);
            }
        }
        match (&route.action, ex.tunnel) {
            (Action::Connect(policy), Some(TunnelKind::Connect)) => {
                let target = ex
                    .head
                    .uri
                    .authority()
                    .and_then(|a| crate::http::connect_allow::Target::parse(a.as_str()));
                ex.decided.route = Some(route.clone());
                let Some(target) = target else {
                    return Flow::Reject(ex, Reason::BadAuthority);
                };
                if !policy.allow.names(&target) {
                    return Flow::Reject(ex, Reason::ConnectDenied);
                }
                return Flow::Connect(ex, policy.clone(), target);
            }
            (Action::Connect(policy), Some(TunnelKind::ConnectUdp)) if policy.udp => {
                let target =
                    crate::http::connect_allow::Target::from_masque_path(ex.head.uri.path());
                ex.decided.route = Some(route.clone());
                let Some(target) = target else {
                    return Flow::Reject(
                        ex,
                        Reason::BadPath(crate::http::path::PathError::NotAbsolute),
                    );
                };
                if !policy.allow.names(&target) {
                    return Flow::Reject(ex, Reason::ConnectDenied);
                }
                return Flow::Connect(ex, policy.clone(), target);
            }
            // A tunnel route takes CONNECT only; CONNECT goes to tunnel routes only (and
            // CONNECT-UDP to those with `udp = true`).
            (Action::Connect(_), _)
            | (_, Some(TunnelKind::Connect))
            | (_, Some(TunnelKind::ConnectUdp)) => {
                ex.decided.route = Some(route.clone());
                return Flow::Reject(ex, Reason::ConnectUnsupported);
            }
            _ => {}
        }
        if ex.tunnel == Some(TunnelKind::WebSocket) && !route.websocket {
            ex.decided.route = Some(route.clone());
            return Flow::Reject(ex, Reason::WebSocketNotAllowed);
        }
        if let Some(max) = route.max_request_body.filter(|_| ex.tunnel.is_none()) {
            if ex.content_length.get().is_some_and(|n| n > max) {
                // Refused before a byte of it is read: with `Expect: 100-continue` the
                // client never sends it.
                ex.decided.route = Some(route.clone());
                return Flow::Reject(ex, Reason::RequestBodyTooLarge);
            }
            ex.body.set_limit(max);
        }
        let sticky = match &route.action {
            Action::Split(s) => s
                .sticky
                .as_ref()
                .and_then(|k| k.hash(&ex.head, ex.client.ip, ex.client.conn)),
            _ => None,
        };
        if let Some(total) = route.timeouts.total {
            ex.total_deadline = Some(ex.record.started + total.0);
        }
        ex.decided.route = Some(route.clone());
        match &route.action {
            Action::Respond(reply) => Flow::Respond(ex, reply.clone()),
            Action::Redirect(r) => match redirect(&ex, r) {
                Some(reply) => {
                    let mut reply = reply;
                    route.edits.response.apply(&mut reply.headers);
                    Flow::Respond(ex, reply)
                }
                None => Flow::Reject(ex, Reason::Unforwardable),
            },
            Action::Upstream(u) => {
                ex.decided.upstream = Some(u.clone());
                forward(ex, &route.edits)
            }
            Action::Split(s) => match s.choose(sticky) {
                Some(u) => {
                    ex.decided.upstream = Some(u.clone());
                    forward(ex, &route.edits)
                }
                None => Flow::Reject(ex, Reason::NoBackend),
            },
            // Taken above: only a CONNECT reaches a connect route's action.
            Action::Connect(_) => Flow::Reject(ex, Reason::ConnectUnsupported),
        }
    }
}

/// Applies a route's rewrites and request header edits, and continues.
fn forward(mut ex: Exchange, edits: &Edits) -> Flow {
    if edits.path_prefix.is_some() || edits.host.is_some() {
        let mut parts = ex.head.uri.clone().into_parts();
        if let Some((from, to)) = &edits.path_prefix {
            let path = replace_prefix(ex.head.uri.path(), from, to);
            let pq = match ex.head.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            match pq.parse() {
                Ok(pq) => parts.path_and_query = Some(pq),
                Err(_) => return Flow::Reject(ex, Reason::Unforwardable),
            }
        }
        if let Some(host) = &edits.host {
            ex.decided.original_authority = ex.head.uri.authority().cloned();
            parts.authority = Some(host.clone());
        }
        match http::Uri::from_parts(parts) {
            Ok(uri) => ex.head.uri = uri,
            Err(_) => return Flow::Reject(ex, Reason::Unforwardable),
        }
    }
    if !edits.request.is_empty() {
        edits.request.apply(&mut ex.head.headers);
    }
    Flow::Continue(ex)
}

/// The redirect's answer: `Location` from the request with the given parts replaced.
fn redirect(ex: &Exchange, r: &Redirect) -> Option<Reply> {
    let uri = &ex.head.uri;
    let scheme = r
        .scheme
        .clone()
        .unwrap_or_else(|| if ex.client.tls { "https" } else { "http" }.to_string());
    let authority = uri.authority().map_or("", |a| a.as_str());
    let host = match (&r.host, r.port) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.clone(),
        (None, Some(p)) => format!("{}:{p}", host_of(authority)),
        // A new scheme drops the port of the old one.
        (None, None) if r.scheme.is_some() => host_of(authority).to_string(),
        (None, None) => authority.to_string(),
    };
    let path = match (&r.path, &r.prefix) {
        (Some(p), _) => p.clone(),
        (None, Some((from, to))) => replace_prefix(uri.path(), from, to),
        (None, None) => uri.path().to_string(),
    };
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let location = HeaderValue::from_str(&format!("{scheme}://{host}{path}{query}")).ok()?;
    let mut headers = HeaderMap::new();
    headers.insert(http::header::LOCATION, location);
    Some(Reply {
        status: r.status,
        headers,
        body: Bytes::new(),
    })
}

#[cfg(test)]
mod tests;
