//! `[[routes]]` as written, and the checks that need nothing but the route itself (the
//! pipeline's validation adds file, line and key to each problem).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::http::host::HostPattern;
use crate::http::key::HashKey;

/// `[stages.route]`: nothing to set yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// One string or a list of them (`host = "a"` or `host = ["a", "*.b"]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

/// `[[routes]]`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matches: MatchConfig,
    /// `"insensitive"` compares the path matchers without regard to ASCII case.
    #[serde(default)]
    pub path_case: PathCase,
    /// A direct response: no upstream involved.
    pub respond: Option<RespondConfig>,
    /// The upstream to forward to.
    pub upstream: Option<String>,
    /// Weighted upstreams (canaries, blue/green).
    pub split: Option<Vec<SplitConfig>>,
    /// Keeps a user on one side of a split: `cookie:NAME`, `header:NAME`, `client-ip`, …
    pub sticky: Option<String>,
    /// Answer with a redirect.
    pub redirect: Option<RedirectConfig>,
    /// Path and host rewrites towards the upstream.
    #[serde(default)]
    pub rewrite: RewriteConfig,
    /// Header edits on the request towards the upstream.
    #[serde(default)]
    pub request_headers: HeaderOpsConfig,
    /// Header edits on the response towards the client.
    #[serde(default)]
    pub response_headers: HeaderOpsConfig,
    /// `"keep"`: this route takes paths with `%2F`/`%5C` inside a segment even where
    /// `[stages.ingress] encoded_slashes = "reject"` refuses them for every other route.
    pub encoded_slashes: Option<crate::http::path::EncodedSlashes>,
    /// `X-Forwarded-*` / `Forwarded` for this route: `append`, `replace`, `strip` (default:
    /// `[stages.dispatch] forwarded`).
    pub forwarded: Option<crate::http::forwarded::Policy>,
    /// Lets the upstream's `retry` policy retry this route's non-idempotent requests (POST,
    /// PATCH) after the request was sent: only for handlers that are safe to repeat.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Token buckets per key: over the limit, 429 with `Retry-After` and `RateLimit-*`.
    pub rate_limit: Option<crate::contract::rate_limit::RateLimitConfig>,
    /// `critical` (never shed), `normal` (default), `background` (shed first) in brownout.
    #[serde(default)]
    pub priority: crate::contract::route::Priority,
    /// `hedge = { delay = "50ms" }` or `{ delay = "p95" }`: a second attempt to another
    /// backend when the first has no response head after the delay.
    pub hedge: Option<HedgeConfig>,
    /// `timeouts = { response_head, total, request_body_idle, response_body_idle, tunnel_idle }`.
    #[serde(default)]
    pub timeouts: crate::contract::route::Timeouts,
    /// `false`: this route's exchanges are left out of the access log.
    #[serde(default = "yes")]
    pub access_log: bool,
    /// The longest request body this route takes (`"10MiB"`); longer ones are answered 413
    /// (by `content-length` before anything is sent upstream, else as the body streams).
    pub max_request_body: Option<crate::units::Size>,
    /// Lets WebSocket handshakes through to this route's upstream (HTTP/1.1 `Upgrade`,
    /// HTTP/2 and HTTP/3 extended CONNECT); elsewhere they are refused (403).
    #[serde(default)]
    pub websocket: bool,
    /// Requests of this route may be processed from 0-RTT data whatever their method (they
    /// are safe to replay); elsewhere only GET, HEAD and OPTIONS without a body are, and the
    /// others wait for the handshake (`[listeners.tls] early_data`).
    #[serde(default)]
    pub early_data: bool,
    /// A CONNECT tunnel (egress proxy): the targets it may reach. An action, beside respond,
    /// upstream, split and redirect.
    pub connect: Option<ConnectConfig>,
}

/// `connect = { allow = [...], udp = false, connect_timeout = "5s" }`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectConfig {
    /// `HOST:PORTS` entries (`crate::http::connect_allow`); default deny.
    pub allow: Vec<String>,
    /// CONNECT-UDP (RFC 9298) too.
    #[serde(default)]
    pub udp: bool,
    /// The longest wait for the target's TCP connection (502 after it).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: crate::units::Dur,
}

fn default_connect_timeout() -> crate::units::Dur {
    crate::units::Dur(std::time::Duration::from_secs(5))
}

fn yes() -> bool {
    true
}

/// `hedge = { … }`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HedgeConfig {
    pub delay: crate::contract::route::HedgeDelay,
}

/// `match = { … }`: every matcher given must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Exact (`api.example.com`) or wildcard (`*.example.com`), or a list; absent: any host.
    pub host: Option<OneOrMany>,
    /// The exact path.
    pub path: Option<String>,
    /// Segment-aware path prefix (the default, `/`, when no path matcher is given).
    pub path_prefix: Option<String>,
    /// A regular expression the whole path must match.
    pub path_regex: Option<String>,
    /// Upper-case methods; empty matches any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Per header (name in any case).
    #[serde(default)]
    pub headers: BTreeMap<String, ValueMatch>,
    /// Per query parameter (percent-decoded).
    #[serde(default)]
    pub query: BTreeMap<String, ValueMatch>,
    /// Per cookie.
    #[serde(default)]
    pub cookies: BTreeMap<String, ValueMatch>,
    /// How the client came: `h3`, `h2`, `http1`.
    #[serde(default)]
    pub protocols: Vec<RouteProtocol>,
    /// The TLS server name, exact or wildcard, or a list.
    pub sni: Option<OneOrMany>,
}

/// A client protocol a route may require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteProtocol {
    H3,
    H2,
    Http1,
}

/// One test on a header, query parameter or cookie: exactly one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    pub equals: Option<String>,
    pub present: Option<bool>,
    pub absent: Option<bool>,
    pub regex: Option<String>,
}

/// How path matchers compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathCase {
    #[default]
    Sensitive,
    Insensitive,
}

/// `respond = { status, body, content_type, headers }`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
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

pub(crate) fn default_content_type() -> String {
    "text/plain; charset=utf-8".to_string()
}

/// `split = [{ upstream, weight }]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    pub upstream: String,
    pub weight: u32,
}

/// `redirect = { status, scheme, host, port, path, prefix }`: what is not given is kept from
/// the request (the query always is).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    #[serde(default = "default_redirect_status")]
    pub status: u16,
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// Replaces the whole path.
    pub path: Option<String>,
    /// Replaces the part `match.path_prefix` matched.
    pub prefix: Option<String>,
}

fn default_redirect_status() -> u16 {
    301
}

/// `rewrite = { path_prefix, host }`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// Replaces the part `match.path_prefix` matched.
    pub path_prefix: Option<String>,
    /// The authority (`Host`, `:authority`) sent to the upstream.
    pub host: Option<String>,
}

/// `{ add, set, remove }` header edits, applied remove, then set, then add.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsConfig {
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

impl HeaderOpsConfig {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }
}

/// A problem in one route: where (key path under the route) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: Vec<String>,
    pub message: String,
}

fn problem(at: &[&str], message: impl Into<String>) -> Problem {
    Problem {
        at: at.iter().map(|s| s.to_string()).collect(),
        message: message.into(),
    }
}

/// Compiles a route regex: anchored (the whole value must match), linear-time.
pub fn compile_regex(re: &str, case_insensitive: bool) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .case_insensitive(case_insensitive)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("\"{re}\" is not a valid regular expression: {e}"))
}

impl RouteConfig {
    /// The path matcher's kind and text.
    pub fn path_kind(&self) -> (&'static str, &str) {
        let m = &self.matches;
        match (&m.path, &m.path_prefix, &m.path_regex) {
            (Some(p), _, _) => ("path", p),
            (None, Some(p), _) => ("path_prefix", p),
            (None, None, Some(r)) => ("path_regex", r),
            (None, None, None) => ("path_prefix", "/"),
        }
    }

    /// Every problem this route has on its own; `upstreams` are the names defined.
    pub fn problems(&self, upstreams: &dyn Fn(&str) -> bool) -> Vec<Problem> {
        let mut out = Vec::new();
        let m = &self.matches;
        for h in m.host.iter().flat_map(OneOrMany::as_slice) {
            if let Err(e) = HostPattern::parse(h) {
                out.push(problem(&["match", "host"], e));
            }
        }
        for h in m.sni.iter().flat_map(OneOrMany::as_slice) {
            if let Err(e) = HostPattern::parse(h) {
                out.push(problem(&["match", "sni"], e));
            }
        }
        let paths = [&m.path, &m.path_prefix, &m.path_regex]
            .iter()
            .filter(|p| p.is_some())
            .count();
        if paths > 1 {
            out.push(problem(
                &["match"],
                "path, path_prefix and path_regex exclude each other: give one",
            ));
        }
        for (key, value) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
            if let Some(p) = value
                && !p.starts_with('/')
            {
                out.push(problem(
                    &["match", key],
                    format!("\"{p}\" must start with '/'"),
                ));
            }
        }
        if let Some(re) = &m.path_regex
            && let Err(e) = compile_regex(re, false)
        {
            out.push(problem(&["match", "path_regex"], e));
        }
        for method in &m.methods {
            if http::Method::from_bytes(method.as_bytes()).is_err()
                || method.chars().any(|c| c.is_ascii_lowercase())
            {
                out.push(problem(
                    &["match", "methods"],
                    format!(
                        "\"{method}\" is not an HTTP method (methods are upper case, e.g. \"GET\")"
                    ),
                ));
            }
        }
        for (table, tests) in [
            ("headers", &m.headers),
            ("query", &m.query),
            ("cookies", &m.cookies),
        ] {
            for (name, t) in tests {
                let at = ["match", table, name.as_str()];
                if table == "headers" && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    out.push(problem(&at, format!("\"{name}\" is not a header name")));
                }
                let given = [
                    t.equals.is_some(),
                    t.present.is_some(),
                    t.absent.is_some(),
                    t.regex.is_some(),
                ];
                if given.iter().filter(|g| **g).count() != 1 {
                    out.push(problem(
                        &at,
                        "expected exactly one of equals, present, absent, regex",
                    ));
                }
                if t.present == Some(false) || t.absent == Some(false) {
                    out.push(problem(&at, "write present = true or absent = true"));
                }
                if let Some(re) = &t.regex
                    && let Err(e) = compile_regex(re, false)
                {
                    out.push(problem(&at, e));
                }
            }
        }
        let t = &self.timeouts;
        for (key, value) in [
            ("response_head", t.response_head),
            ("total", t.total),
            ("request_body_idle", t.request_body_idle),
            ("response_body_idle", t.response_body_idle),
            ("tunnel_idle", t.tunnel_idle),
        ] {
            if value.is_some_and(|d| d.0.is_zero()) {
                out.push(problem(&["timeouts", key], "expected a duration above 0"));
            }
        }
        for (key, message) in self.rate_limit.iter().flat_map(|rl| rl.problems()) {
            out.push(problem(&["rate_limit", key], message));
        }
        let actions = [
            self.respond.is_some(),
            self.upstream.is_some(),
            self.split.is_some(),
            self.redirect.is_some(),
            self.connect.is_some(),
        ];
        match actions.iter().filter(|a| **a).count() {
            1 => {}
            0 => out.push(problem(&[], format!("route \"{}\" has no action: expected one of respond, upstream, split, redirect, connect", self.name))),
            _ => out.push(problem(&[], format!("route \"{}\" has more than one action: expected exactly one of respond, upstream, split, redirect, connect", self.name))),
        }
        if let Some(c) = &self.connect {
            if let Err((i, e)) = crate::http::connect_allow::Allow::parse(&c.allow) {
                out.push(problem(&["connect", "allow", &i.to_string()], e));
            }
            if c.connect_timeout.0.is_zero() {
                out.push(problem(
                    &["connect", "connect_timeout"],
                    "expected a duration above 0",
                ));
            }
            if self.websocket {
                out.push(problem(
                    &["websocket"],
                    "a connect route carries CONNECT tunnels, not WebSockets",
                ));
            }
        }
        if let Some(u) = &self.upstream
            && !upstreams(u)
        {
            out.push(problem(
                &["upstream"],
                format!("route \"{}\": upstream \"{u}\" is not defined", self.name),
            ));
        }
        if let Some(resp) = &self.respond {
            if !(200..=599).contains(&resp.status) {
                out.push(problem(
                    &["respond", "status"],
                    format!(
                        "{} is not a final status code: expected 200..=599",
                        resp.status
                    ),
                ));
            }
            for name in resp.headers.keys() {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    out.push(problem(
                        &["respond", "headers"],
                        format!("\"{name}\" is not a header name"),
                    ));
                }
            }
        }
        if let Some(split) = &self.split {
            if split.is_empty() || split.iter().all(|s| s.weight == 0) {
                out.push(problem(
                    &["split"],
                    "split weights sum to zero: give at least one upstream a weight above 0",
                ));
            }
            for (i, s) in split.iter().enumerate() {
                let idx = i.to_string();
                if !upstreams(&s.upstream) {
                    out.push(problem(
                        &["split", &idx, "upstream"],
                        format!("upstream \"{}\" is not defined", s.upstream),
                    ));
                }
                if s.weight > 1_000_000 {
                    out.push(problem(
                        &["split", &idx, "weight"],
                        "expected a weight of 0..=1000000",
                    ));
                }
            }
        }
        if let Some(sticky) = &self.sticky {
            if self.split.is_none() {
                out.push(problem(
                    &["sticky"],
                    "sticky keeps a user on one side of a split: add split",
                ));
            }
            if let Err(e) = HashKey::parse(sticky) {
                out.push(problem(&["sticky"], e));
            }
        }
        let prefix_matched = m.path.is_none() && m.path_regex.is_none();
        if let Some(r) = &self.redirect {
            if ![301, 302, 307, 308].contains(&r.status) {
                out.push(problem(
                    &["redirect", "status"],
                    format!(
                        "{} is not a redirect status: expected 301, 302, 307 or 308",
                        r.status
                    ),
                ));
            }
            if let Some(s) = &r.scheme
                && s != "http"
                && s != "https"
            {
                out.push(problem(
                    &["redirect", "scheme"],
                    format!("\"{s}\": expected \"http\" or \"https\""),
                ));
            }
            if let Some(h) = &r.host
                && HostPattern::parse(h).map_or(true, |p| matches!(p, HostPattern::Wildcard(_)))
                && h.parse::<std::net::IpAddr>().is_err()
            {
                out.push(problem(
                    &["redirect", "host"],
                    format!("\"{h}\" is not a host name"),
                ));
            }
            if r.path.is_some() && r.prefix.is_some() {
                out.push(problem(
                    &["redirect"],
                    "path and prefix exclude each other: give one",
                ));
            }
            for (key, v) in [("path", &r.path), ("prefix", &r.prefix)] {
                if let Some(p) = v
                    && (!p.starts_with('/')
                        || http::uri::PathAndQuery::try_from(p.as_str()).is_err()
                        || p.contains('?'))
                {
                    out.push(problem(
                        &["redirect", key],
                        format!("\"{p}\" is not a path: expected one starting with '/'"),
                    ));
                }
            }
            if r.prefix.is_some() && !prefix_matched {
                out.push(problem(
                    &["redirect", "prefix"],
                    "prefix replaces what match.path_prefix matched: this route matches no prefix",
                ));
            }
        }
        if let Some(p) = &self.rewrite.path_prefix {
            if !prefix_matched {
                out.push(problem(&["rewrite", "path_prefix"], "path_prefix replaces what match.path_prefix matched: this route matches no prefix"));
            }
            if !p.starts_with('/')
                || http::uri::PathAndQuery::try_from(p.as_str()).is_err()
                || p.contains('?')
            {
                out.push(problem(
                    &["rewrite", "path_prefix"],
                    format!("\"{p}\" is not a path: expected one starting with '/'"),
                ));
            }
        }
        if let Some(h) = &self.rewrite.host
            && h.parse::<http::uri::Authority>().is_err()
        {
            out.push(problem(
                &["rewrite", "host"],
                format!("\"{h}\" is not a host (with an optional port)"),
            ));
        }
        if !(self.rewrite.path_prefix.is_none()
            && self.rewrite.host.is_none()
            && self.request_headers.is_empty())
            && (self.respond.is_some() || self.redirect.is_some())
        {
            out.push(problem(&["rewrite"], "rewrite and request_headers apply to requests sent upstream: this route answers itself"));
        }
        for (table, ops) in [
            ("request_headers", &self.request_headers),
            ("response_headers", &self.response_headers),
        ] {
            for (op, names) in [
                ("add", ops.add.keys().collect::<Vec<_>>()),
                ("set", ops.set.keys().collect()),
                ("remove", ops.remove.iter().collect()),
            ] {
                for name in names {
                    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        out.push(problem(
                            &[table, op],
                            format!("\"{name}\" is not a header name"),
                        ));
                    }
                }
            }
            for (op, values) in [("add", &ops.add), ("set", &ops.set)] {
                for (name, v) in values {
                    if http::HeaderValue::from_str(v).is_err() {
                        out.push(problem(
                            &[table, op],
                            format!("the value of \"{name}\" is not a header value"),
                        ));
                    }
                }
            }
        }
        out
    }
}
