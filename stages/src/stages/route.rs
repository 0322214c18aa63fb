//! Route: picks the route for an exchange from a compiled index, never a list scan.
//!
//! Precedence is deterministic and independent of file order:
//! 1. **host** — an exact host beats the longest matching `*.suffix` wildcard, which beats
//!    routes without a host. The most specific host group that exists is chosen, and only its
//!    routes are considered (like a virtual host in nginx or Envoy).
//! 2. **path** — the longest segment-aware prefix: `/api` matches `/api` and `/api/x`, not
//!    `/apix`; `/api/` matches only below `/api/`.
//! 3. **method** — among routes with the same host group and prefix, one that lists the method
//!    beats one that takes any method.
//!
//! Paths are matched as ingress normalized them (`crate::http::path`), with segment parameters
//! (`/admin;x`) ignored, so a route cannot be walked around by spelling its path differently.
//!
//! No route → 404. A `respond` route answers directly; an `upstream` route continues.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;
use spooky_sync::Cap;

use crate::contract::exchange::Exchange;
use crate::contract::flow::{Flow, Reply};
use crate::contract::reason::Reason;
use crate::contract::route::{Action, Route};
use crate::http::host::{HostPattern, host_of};
use crate::upstreams::Upstream;

/// `[stages.route]`: nothing to set yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// `[[routes]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matches: MatchConfig,
    /// A direct response: no upstream involved.
    pub respond: Option<RespondConfig>,
    /// The upstream to forward to.
    pub upstream: Option<String>,
}

/// `match = { host, path_prefix, methods }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Exact (`api.example.com`) or wildcard (`*.example.com`); absent matches any host.
    pub host: Option<String>,
    /// Segment-aware path prefix.
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// Upper-case methods; empty matches any method.
    #[serde(default)]
    pub methods: Vec<String>,
}

impl Default for MatchConfig {
    fn default() -> Self {
        MatchConfig {
            host: None,
            path_prefix: default_prefix(),
            methods: Vec::new(),
        }
    }
}

fn default_prefix() -> String {
    "/".to_string()
}

/// `respond = { status, body, content_type, headers }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default = "default_content_type")]
    pub content_type: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_content_type() -> String {
    "text/plain; charset=utf-8".to_string()
}

/// Routes with the same host group, by path prefix; each list has method-specific routes
/// first, then in file order.
#[derive(Default)]
struct PathIndex {
    by_prefix: HashMap<String, Vec<Arc<Route>>>,
}

impl PathIndex {
    fn insert(&mut self, prefix: &str, route: Arc<Route>) {
        let list = self.by_prefix.entry(prefix.to_string()).or_default();
        list.push(route);
        // Stable: method-specific before any-method, file order otherwise.
        list.sort_by_key(|r| r.methods.is_empty());
    }

    /// Longest segment-aware prefix first, then method.
    fn lookup(&self, path: &str, method: &Method) -> Option<&Arc<Route>> {
        let path = if path.is_empty() { "/" } else { path };
        let bytes = path.as_bytes();
        let try_prefix = |p: &str| {
            self.by_prefix.get(p).and_then(|rs| {
                rs.iter()
                    .find(|r| r.methods.is_empty() || r.methods.contains(method))
            })
        };
        if let Some(r) = try_prefix(path) {
            return Some(r);
        }
        for i in (0..bytes.len()).rev() {
            if bytes[i] == b'/' {
                // "/a/b/" (ends with a slash) is longer than "/a/b".
                if i + 1 < bytes.len()
                    && let Some(r) = try_prefix(&path[..=i])
                {
                    return Some(r);
                }
                if i > 0
                    && let Some(r) = try_prefix(&path[..i])
                {
                    return Some(r);
                }
                if i == 0
                    && let Some(r) = try_prefix("/")
                {
                    return Some(r);
                }
            }
        }
        None
    }
}

/// All routes of a pipeline, compiled.
#[derive(Default)]
pub struct RouteIndex {
    exact: HashMap<String, PathIndex>,
    wildcard: HashMap<String, PathIndex>,
    any: PathIndex,
    len: usize,
}

impl RouteIndex {
    /// Compiles validated routes.
    pub fn build(
        routes: &[RouteConfig],
        upstreams: &HashMap<String, Arc<Upstream>>,
        queue_capacity: usize,
    ) -> Result<Self, RouteError> {
        let mut index = RouteIndex::default();
        for rc in routes {
            let action = match (&rc.respond, &rc.upstream) {
                (Some(r), _) => Action::Respond(reply_from(r)?),
                (None, Some(u)) => {
                    Action::Upstream(upstreams.get(u).cloned().ok_or_else(|| {
                        RouteError::UnknownUpstream {
                            route: rc.name.clone(),
                            upstream: u.clone(),
                        }
                    })?)
                }
                (None, None) => return Err(RouteError::NoAction(rc.name.clone())),
            };
            let methods = rc
                .matches
                .methods
                .iter()
                .map(|m| {
                    Method::from_bytes(m.as_bytes()).map_err(|source| RouteError::Method {
                        route: rc.name.clone(),
                        source,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let route = Arc::new(Route {
                name: rc.name.clone(),
                methods,
                action,
                waiting: Cap::new(queue_capacity),
            });
            let group = match rc
                .matches
                .host
                .as_deref()
                .map(HostPattern::parse)
                .transpose()
                .map_err(|message| RouteError::Host {
                    route: rc.name.clone(),
                    message,
                })? {
                None => &mut index.any,
                Some(HostPattern::Exact(h)) => index.exact.entry(h).or_default(),
                Some(HostPattern::Wildcard(s)) => index.wildcard.entry(s).or_default(),
            };
            group.insert(&rc.matches.path_prefix, route);
            index.len += 1;
        }
        Ok(index)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every route (for metrics sampling).
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .chain(std::iter::once(&self.any))
            .flat_map(|g| g.by_prefix.values().flatten())
    }

    /// The route for a request. `host` is the authority's host, without port.
    pub fn lookup(&self, host: &str, path: &str, method: &Method) -> Option<&Arc<Route>> {
        self.group(host).and_then(|g| g.lookup(path, method))
    }

    /// The most specific host group that exists.
    fn group(&self, host: &str) -> Option<&PathIndex> {
        let host = host.trim_end_matches('.');
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        if let Some(g) = self.exact.get(host) {
            return Some(g);
        }
        // Longest suffix first: for a.b.example.com try .b.example.com, .example.com, .com.
        for (i, b) in host.bytes().enumerate() {
            if b == b'.'
                && let Some(g) = self.wildcard.get(&host[i..])
            {
                return Some(g);
            }
        }
        (!self.any.by_prefix.is_empty()).then_some(&self.any)
    }
}

/// Why routes could not be compiled (validation reports these to the operator first, with
/// file and line; here they only guard a config that skipped it).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route \"{route}\": upstream \"{upstream}\" is not defined")]
    UnknownUpstream { route: String, upstream: String },
    #[error("route \"{0}\" has no action")]
    NoAction(String),
    #[error("route \"{route}\": {source}")]
    Method {
        route: String,
        #[source]
        source: http::method::InvalidMethod,
    },
    #[error("route \"{route}\": {message}")]
    Host { route: String, message: String },
    #[error("respond status: {0}")]
    Status(#[source] http::status::InvalidStatusCode),
    #[error("respond header name: {0}")]
    HeaderName(#[source] http::header::InvalidHeaderName),
    #[error("respond header value: {0}")]
    HeaderValue(#[source] http::header::InvalidHeaderValue),
}

fn reply_from(r: &RespondConfig) -> Result<Reply, RouteError> {
    let status = StatusCode::from_u16(r.status).map_err(RouteError::Status)?;
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_str(&r.content_type).map_err(RouteError::HeaderValue)?,
    );
    for (k, v) in &r.headers {
        headers.insert(
            HeaderName::from_bytes(k.as_bytes()).map_err(RouteError::HeaderName)?,
            HeaderValue::from_str(v).map_err(RouteError::HeaderValue)?,
        );
    }
    Ok(Reply {
        status,
        headers,
        body: Bytes::from(r.body.clone()),
    })
}

/// The running stage.
pub struct RouteStage {
    index: RouteIndex,
}

impl RouteStage {
    pub fn build(index: RouteIndex) -> Self {
        RouteStage { index }
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
        let host = ex.head.uri.authority().map_or("", |a| host_of(a.as_str()));
        // Ingress normalized the path; `;params` do not make a segment another segment.
        let path = crate::http::path::without_params(ex.head.uri.path());
        let Some(route) = self.index.lookup(host, &path, &ex.head.method) else {
            return Flow::Reject(ex, Reason::NoRoute);
        };
        match &route.action {
            Action::Respond(reply) => {
                let reply = reply.clone();
                ex.decided.route = Some(route.clone());
                Flow::Respond(ex, reply)
            }
            Action::Upstream(u) => {
                ex.decided.upstream = Some(u.clone());
                ex.decided.route = Some(route.clone());
                Flow::Continue(ex)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(name: &str, host: Option<&str>, prefix: &str, methods: &[&str]) -> RouteConfig {
        RouteConfig {
            name: name.to_string(),
            matches: MatchConfig {
                host: host.map(str::to_string),
                path_prefix: prefix.to_string(),
                methods: methods.iter().map(|m| m.to_string()).collect(),
            },
            respond: Some(RespondConfig {
                status: 200,
                body: name.to_string(),
                content_type: default_content_type(),
                headers: BTreeMap::new(),
            }),
            upstream: None,
        }
    }

    fn pick(index: &RouteIndex, host: &str, path: &str, method: Method) -> Option<String> {
        index.lookup(host, path, &method).map(|r| r.name.clone())
    }

    #[test]
    fn precedence_is_host_then_longest_prefix_then_method() {
        let routes = vec![
            rc("any-root", None, "/", &[]),
            rc("any-api", None, "/api", &[]),
            rc("any-api-post", None, "/api", &["POST"]),
            rc("any-api-slash", None, "/api/", &[]),
            rc("wild", Some("*.example.com"), "/", &[]),
            rc("wild-deep", Some("*.eu.example.com"), "/", &[]),
            rc("exact", Some("api.example.com"), "/v1", &[]),
        ];
        // File order must not matter: build reversed too.
        for order in [routes.clone(), routes.into_iter().rev().collect()] {
            let ix = RouteIndex::build(&order, &HashMap::new(), 1).expect("build");
            assert_eq!(
                pick(&ix, "localhost", "/", Method::GET).as_deref(),
                Some("any-root")
            );
            assert_eq!(
                pick(&ix, "localhost", "/apix", Method::GET).as_deref(),
                Some("any-root")
            );
            assert_eq!(
                pick(&ix, "localhost", "/api", Method::GET).as_deref(),
                Some("any-api")
            );
            assert_eq!(
                pick(&ix, "localhost", "/api", Method::POST).as_deref(),
                Some("any-api-post")
            );
            assert_eq!(
                pick(&ix, "localhost", "/api/x", Method::GET).as_deref(),
                Some("any-api-slash")
            );
            assert_eq!(
                pick(&ix, "www.example.com", "/api", Method::GET).as_deref(),
                Some("wild")
            );
            assert_eq!(
                pick(&ix, "x.eu.example.com", "/", Method::GET).as_deref(),
                Some("wild-deep")
            );
            assert_eq!(
                pick(&ix, "API.example.com", "/v1/users", Method::GET).as_deref(),
                Some("exact")
            );
            // The exact host group is chosen even where its routes do not match the path.
            assert_eq!(pick(&ix, "api.example.com", "/other", Method::GET), None);
            assert_eq!(
                pick(&ix, "example.com", "/", Method::GET).as_deref(),
                Some("any-root")
            );
        }
    }

    #[test]
    fn no_route_without_a_catch_all() {
        let ix =
            RouteIndex::build(&[rc("a", None, "/a", &["GET"])], &HashMap::new(), 1).expect("build");
        assert_eq!(pick(&ix, "h", "/a", Method::POST), None);
        assert_eq!(pick(&ix, "h", "/b", Method::GET), None);
        assert_eq!(pick(&ix, "h", "/a/b", Method::GET).as_deref(), Some("a"));
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            HostPattern::parse("*.Example.com"),
            Ok(HostPattern::Wildcard(".example.com".into()))
        );
        assert!(HostPattern::parse("exa mple.com").is_err());
        assert!(HostPattern::parse("example.com:443").is_err());
        assert!(HostPattern::parse("a.*.com").is_err());
        assert_eq!(host_of("example.com:8443"), "example.com");
        assert_eq!(host_of("[::1]:8443"), "[::1]");
    }
}
