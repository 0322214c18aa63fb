//! Semantic checks after parsing: chain order, references, duplicates, bounds, files.
//! Every check pushes its problem and carries on, so one run reports them all.

use std::collections::{BTreeMap, BTreeSet};

use toml::Spanned;
use toml::de::DeTable;

use super::{
    AltSvc, Balance, Config, Cx, Protocol, ProxyProtocol, Redirect, StageKind, TlsSetting, Verify,
    span_at,
};

pub(crate) fn validate(cx: &mut Cx<'_>, root: &Spanned<DeTable<'_>>, config: &mut Config) {
    config.chain = chain(cx, root, &config.pipeline.chain);
    listeners(cx, root, config);
    admin(cx, root, config);
    access_log(cx, root, config);
    tracing(cx, root, config);
    stages(cx, root, config);
    routes(cx, root, config);
    upstreams(cx, root, config);
}

fn chain(cx: &mut Cx<'_>, root: &Spanned<DeTable<'_>>, names: &[String]) -> Vec<StageKind> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        let span = span_at(root, &["pipeline", "chain", &i.to_string()]);
        match StageKind::from_name(name) {
            Some(k) if !seen.insert(k) => cx.push(
                Some(span),
                "pipeline.chain",
                format!("stage \"{name}\" appears twice"),
            ),
            Some(k) => out.push(k),
            None => {
                let all: Vec<_> = StageKind::ALL.iter().map(|k| k.name()).collect();
                cx.push(
                    Some(span),
                    "pipeline.chain",
                    format!(
                        "unknown stage \"{name}\"{}, expected one of {}",
                        did_you_mean(name, all.iter().copied()),
                        all.join(", ")
                    ),
                );
            }
        }
    }
    let span = span_at(root, &["pipeline", "chain"]);
    for k in StageKind::ALL {
        if k.required() && !seen.contains(&k) {
            cx.push(
                Some(span.clone()),
                "pipeline.chain",
                format!("the chain must contain \"{}\"", k.name()),
            );
        }
    }
    if out.first().is_some_and(|k| *k != StageKind::Ingress) && seen.contains(&StageKind::Ingress) {
        cx.push(
            Some(span.clone()),
            "pipeline.chain",
            "\"ingress\" must be the first stage",
        );
    }
    if out.last().is_some_and(|k| *k != StageKind::Egress) && seen.contains(&StageKind::Egress) {
        cx.push(
            Some(span.clone()),
            "pipeline.chain",
            "\"egress\" must be the last stage",
        );
    }
    let pos = |k: StageKind| out.iter().position(|x| *x == k);
    let before = [
        (StageKind::Route, StageKind::Queue),
        (StageKind::Route, StageKind::Select),
        (StageKind::Queue, StageKind::Select),
        (StageKind::Select, StageKind::HedgeRetry),
        (StageKind::HedgeRetry, StageKind::Dispatch),
        (StageKind::Select, StageKind::Dispatch),
    ];
    for (a, b) in before {
        if let (Some(pa), Some(pb)) = (pos(a), pos(b))
            && pa > pb
        {
            cx.push(
                Some(span.clone()),
                "pipeline.chain",
                format!("\"{}\" must come before \"{}\"", a.name(), b.name()),
            );
        }
    }
    out
}

fn listeners(cx: &mut Cx<'_>, root: &Spanned<DeTable<'_>>, config: &Config) {
    if config.listeners.is_empty() && root.get_ref().get("listeners").is_none() {
        cx.push(
            Some(0..0),
            "listeners",
            "at least one [[listeners]] is required",
        );
    }
    let mut names = BTreeSet::new();
    let mut bound: BTreeMap<(&str, std::net::SocketAddr), &str> = BTreeMap::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let idx = i.to_string();
        // Two listeners on one address and transport: the second could not bind.
        let transports = [
            ("UDP", l.protocols.contains(&Protocol::H3)),
            ("TCP", l.protocols.iter().any(|p| *p != Protocol::H3)),
        ];
        for (transport, used) in transports {
            if !used || l.bind.port() == 0 {
                continue;
            }
            if let Some(other) = bound.insert((transport, l.bind), l.name.as_str()) {
                cx.push(
                    Some(span_at(root, &["listeners", &idx, "bind"])),
                    &format!("listeners[{i}].bind"),
                    format!(
                        "{transport} {} is listener \"{other}\"'s already: each listener needs its own address",
                        l.bind
                    ),
                );
            }
        }
        if !names.insert(l.name.as_str()) {
            let span = span_at(root, &["listeners", &idx, "name"]);
            cx.push(
                Some(span),
                &format!("listeners[{i}].name"),
                format!("duplicate listener name \"{}\"", l.name),
            );
        }
        if l.protocols.is_empty() {
            let span = span_at(root, &["listeners", &idx, "protocols"]);
            cx.push(
                Some(span),
                &format!("listeners[{i}].protocols"),
                "expected at least one protocol (\"h3\")",
            );
        }
        let at = |path: &[&str]| {
            let mut p = vec!["listeners", idx.as_str()];
            p.extend_from_slice(path);
            span_at(root, &p)
        };
        let tcp = l.protocols.iter().any(|p| *p != Protocol::H3);
        match &l.tls {
            TlsSetting::Off => {
                if l.protocols.iter().any(|p| *p != Protocol::Http1) {
                    cx.push(
                        Some(at(&["tls"])),
                        &format!("listeners[{i}].tls"),
                        "tls = \"off\" serves plaintext HTTP/1.1 only: protocols must be [\"http1\"]",
                    );
                }
            }
            TlsSetting::SelfSigned => {}
            TlsSetting::Files(t) => {
                let early = if !t.early_data {
                    None
                } else if t.client_auth != crate::tls::config::ClientAuth::Off {
                    Some(
                        "0-RTT requests arrive before a client certificate is checked: early_data = true needs client_auth = \"off\"",
                    )
                } else if !l.protocols.contains(&Protocol::H3) {
                    Some(
                        "0-RTT is served over HTTP/3 (QUIC): early_data = true needs \"h3\" in protocols",
                    )
                } else {
                    None
                };
                if let Some(why) = early {
                    cx.push(
                        Some(at(&["tls", "early_data"])),
                        &format!("listeners[{i}].tls.early_data"),
                        why,
                    );
                }
                let mut files = Vec::new();
                match (&t.cert, &t.key) {
                    (Some(c), Some(k)) => {
                        files.extend([("tls.cert".to_string(), c), ("tls.key".to_string(), k)])
                    }
                    (None, None) => {}
                    _ => cx.push(
                        Some(at(&["tls"])),
                        &format!("listeners[{i}].tls"),
                        "cert and key go together",
                    ),
                }
                for (n, c) in t.certificates.iter().enumerate() {
                    files.push((format!("tls.certificates[{n}].cert"), &c.cert));
                    files.push((format!("tls.certificates[{n}].key"), &c.key));
                }
                let mut readable = true;
                for (key, path) in files {
                    if let Err(e) = std::fs::metadata(path) {
                        readable = false;
                        let segs: Vec<&str> = key
                            .split(['.', '[', ']'])
                            .filter(|s| !s.is_empty())
                            .collect();
                        cx.push(
                            Some(at(&segs)),
                            &format!("listeners[{i}].{key}"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                    }
                }
                if let Some(ca) = &t.client_ca
                    && let Err(e) = std::fs::metadata(ca)
                {
                    readable = false;
                    cx.push(
                        Some(at(&["tls", "client_ca"])),
                        &format!("listeners[{i}].tls.client_ca"),
                        format!("cannot read {}: {e}", ca.display()),
                    );
                }
                if readable {
                    let loaded = crate::tls::Certs::load(&l.tls, &l.name)
                        .and_then(|_| crate::tls::client_verifier(&l.tls))
                        .and_then(|_| crate::tls::forward_header(&l.tls));
                    if let Err(e) = loaded {
                        cx.push(
                            Some(at(&["tls"])),
                            &format!("listeners[{i}].tls"),
                            e.to_string(),
                        );
                    }
                }
            }
        }
        if l.redirect != Redirect::Off && !matches!(l.tls, TlsSetting::Off) {
            cx.push(
                Some(at(&["redirect"])),
                &format!("listeners[{i}].redirect"),
                "redirects are for plaintext listeners (tls = \"off\")",
            );
        }
        if l.proxy_protocol != ProxyProtocol::Off {
            if !tcp {
                cx.push(
                    Some(at(&["proxy_protocol"])),
                    &format!("listeners[{i}].proxy_protocol"),
                    "the PROXY protocol is read on TCP: add \"h2\" or \"http1\" to protocols",
                );
            } else if l.trusted_proxies.is_empty() {
                cx.push(
                    Some(at(&["proxy_protocol"])),
                    &format!("listeners[{i}].proxy_protocol"),
                    "expected trusted_proxies beside it: the address blocks of the load balancers whose PROXY header is believed",
                );
            }
        } else if !l.trusted_proxies.is_empty() {
            cx.warn(
                Some(at(&["trusted_proxies"])),
                &format!("listeners[{i}].trusted_proxies"),
                "has no effect without proxy_protocol = \"v1\" or \"v2\" (X-Forwarded-For is trusted by [stages.ingress] trusted_proxies)",
            );
        }
        if !tcp && l.alt_svc != AltSvc::Auto {
            cx.push(
                Some(at(&["alt_svc"])),
                &format!("listeners[{i}].alt_svc"),
                "Alt-Svc is sent on TCP responses: add \"h2\" or \"http1\" to protocols",
            );
        }
    }
}

fn tracing(cx: &mut Cx<'_>, root: &Spanned<DeTable<'_>>, config: &Config) {
    let Some(t) = &config.tracing else { return };
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        cx.push(
            Some(span_at(root, &["tracing", "sample_ratio"])),
            "tracing.sample_ratio",
            format!(
                "{} is not a share: expected a number from 0 to 1",
                t.sample_ratio
            ),
        );
    }
    let uri = t.otlp_endpoint.parse::<http::Uri>().ok();
    if !uri.as_ref().is_some_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
    }) {
        cx.push(
            Some(span_at(root, &["tracing", "otlp_endpoint"])),
            "tracing.otlp_endpoint",
            format!(
                "\"{}\" is not a collector address: expected http://HOST:PORT (OTLP/gRPC)",
                t.otlp_endpoint
            ),
        );
    }
    if !crate::trace::BUILT {
        cx.warn(
            Some(span_at(root, &["tracing"])),
            "tracing",
            "this spooky was built without the `otlp` feature: no traces are exported (cargo build --release --features otlp)",
        );
    }
}

fn access_log(cx: &mut Cx<'_>, root: &Spanned<DeTable<'_>>, config: &Config) {
    let sample = config.access_log.sample;
    if !(0.0..=1.0).contains(&sample) {
        cx.push(
            Some(span_at(root, &["access_log", "sample"])),
            "access_log.sample",
            format!("{sample} is not a share: expected a number from 0 to 1"),
        );
    }
}

fn admin(cx: &mut Cx<'_>, root: &Spanned<DeTable<'_>>, config: &Config) {
    if let Some(a) = &config.admin {
        if !a.bind.ip().is_loopback() && a.token_file.is_none() {
            cx.push(
                Some(span_at(root, &["admin", "bind"])),
                "admin.bind",
                format!("{} is reachable from other machines: set admin.token_file (control endpoints need its token), or bind 127.0.0.1", a.bind),
            );
        }
        if let Some(l) = config.listeners.iter().find(|l| {
            l.bind == a.bind && a.bind.port() != 0 && l.protocols.iter().any(|p| *p != Protocol::H3)
        }) {
            cx.push(
                Some(span_at(root, &["admin", "bind"])),
                "admin.bind",
                format!(
                    "the same address as listener \"{}\": each needs its own",
                    l.name
                ),
            );
        }
    }
    if let Some(path) = config.admin.as_ref().and_then(|a| a.token_file.as_ref()) {
        let problem = match std::fs::read_to_string(path) {
            Ok(t) if t.trim().len() < 16 => {
                Some("the token must be at least 16 characters".to_string())
            }
            Ok(_) => None,
            Err(e) => Some(format!("cannot read {}: {e}", path.display())),
        };
        if let Some(p) = problem {
            cx.push(
                Some(span_at(root, &["admin", "token_file"])),
                "admin.token_file",
                p,
            );
        }
    }
}

fn stages(cx: &mut Cx<'_>, root: &Spanned<DeTable<'_>>, config: &Config) {
    let Some(tables) = root
        .get_ref()
        .get("stages")
        .and_then(|s| s.get_ref().as_table())
    else {
        return;
    };
    for (name, value) in tables.iter() {
        let Some(kind) = StageKind::from_name(name.get_ref()) else {
            continue;
        };
        let key = format!("stages.{}", kind.name());
        if !config.chain.contains(&kind) && !config.pipeline.chain.is_empty() {
            cx.push(
                Some(value.span()),
                &key,
                format!(
                    "stage \"{}\" is configured but not in pipeline.chain",
                    kind.name()
                ),
            );
        }
        if kind == StageKind::Ingress && config.stages.settings(kind).queue != 0 {
            let span = span_at(root, &["stages", "ingress", "queue"]);
            cx.push(
                Some(span),
                &format!("{key}.queue"),
                "ingress is the first stage and has no inlet: queue must be 0",
            );
        }
    }
    let admission = &config.stages.admission;
    if let Some(a) = &admission.adaptive {
        for (k, message) in a.problems(admission.max_inflight.get()) {
            cx.push(
                Some(span_at(root, &["stages", "admission", "adaptive", k])),
                &format!("stages.admission.adaptive.{k}"),
                message,
            );
        }
    }
    if let Some(b) = &config.stages.admission.brownout {
        for (k, message) in b.problems() {
            cx.push(
                Some(span_at(root, &["stages", "admission", "brownout", k])),
                &format!("stages.admission.brownout.{k}"),
                message,
            );
        }
    }
    let read_ahead = config.stages.dispatch.upstream_read_ahead.0;
    if !(8 * 1024..=16 << 20).contains(&read_ahead) {
        cx.push(
            Some(span_at(
                root,
                &["stages", "dispatch", "upstream_read_ahead"],
            )),
            "stages.dispatch.upstream_read_ahead",
            "expected a size from \"8KiB\" to \"16MiB\"",
        );
    }
    let share = config.stages.dispatch.upstream_share;
    if !(share.is_finite() && share > 0.0 && share <= 1.0) {
        cx.push(
            Some(span_at(root, &["stages", "dispatch", "upstream_share"])),
            "stages.dispatch.upstream_share",
            "expected a share above 0.0, at most 1.0",
        );
    }
}

fn routes(cx: &mut Cx<'_>, root: &Spanned<DeTable<'_>>, config: &Config) {
    let mut names = BTreeSet::new();
    let mut matchers: BTreeMap<String, &str> = BTreeMap::new();
    let defined = |u: &str| config.upstreams.contains_key(u);
    for (i, r) in config.routes.iter().enumerate() {
        let idx = i.to_string();
        let key = |k: &str| format!("routes[{i}]{}{k}", if k.is_empty() { "" } else { "." });
        let at = |path: &[&str]| {
            let mut p = vec!["routes", idx.as_str()];
            p.extend_from_slice(path);
            span_at(root, &p)
        };
        if !names.insert(r.name.as_str()) {
            cx.push(
                Some(at(&["name"])),
                &key("name"),
                format!("duplicate route name \"{}\"", r.name),
            );
        }
        for p in r.problems(&defined) {
            let path: Vec<&str> = p.at.iter().map(String::as_str).collect();
            let mut message = p.message;
            if path == ["upstream"]
                && let Some(u) = &r.upstream
            {
                message.push_str(&did_you_mean(
                    u,
                    config.upstreams.keys().map(String::as_str),
                ));
            }
            cx.push(Some(at(&path)), &key(&path.join(".")), message);
        }
        if r.hedge.is_some()
            && !config.chain.contains(&StageKind::HedgeRetry)
            && !config.pipeline.chain.is_empty()
        {
            cx.warn(
                Some(at(&["hedge"])),
                &key("hedge"),
                "pipeline.chain has no hedge-retry stage: nothing is hedged",
            );
        }
        if let Some(p) = &r.matches.path_prefix
            && p.len() > 1
            && p.ends_with('/')
        {
            cx.warn(
                Some(at(&["match", "path_prefix"])),
                &key("match.path_prefix"),
                format!(
                    "\"{p}\" ends with a slash: it does not match \"{}\" itself (write \"{}\" to match both)",
                    p.trim_end_matches('/'),
                    p.trim_end_matches('/')
                ),
            );
        }
        let fingerprint = format!("{:?}|{:?}", r.matches, r.path_case);
        if let Some(other) = matchers.insert(fingerprint, r.name.as_str()) {
            cx.push(
                Some(at(&["match"])),
                &key("match"),
                format!("route \"{}\" matches exactly what route \"{other}\" matches: one of them can never be chosen", r.name),
            );
        }
    }
    let used: BTreeSet<&str> = config
        .routes
        .iter()
        .flat_map(|r| {
            r.upstream
                .iter()
                .map(String::as_str)
                .chain(r.split.iter().flatten().map(|s| s.upstream.as_str()))
        })
        .collect();
    for name in config.upstreams.keys() {
        if !used.contains(name.as_str()) {
            cx.warn(
                Some(span_at(root, &["upstreams", name])),
                &format!("upstreams.{name}"),
                "no route uses this upstream",
            );
        }
    }
    if cx.errors.is_empty() {
        route_ties(cx, root, config);
    }
}

/// Routes only the file orders: compiled (without upstreams) to ask the index itself.
fn route_ties(cx: &mut Cx<'_>, root: &Spanned<DeTable<'_>>, config: &Config) {
    let routes: Vec<_> = config
        .routes
        .iter()
        .map(|r| {
            let mut r = r.clone();
            // Only the matchers matter here.
            r.upstream = None;
            r.split = None;
            r.redirect = None;
            r.rewrite = Default::default();
            r.respond = Some(crate::stages::route::RespondConfig {
                status: 200,
                body: String::new(),
                content_type: "text/plain".into(),
                headers: Default::default(),
            });
            r
        })
        .collect();
    let Ok(index) = crate::stages::route::RouteIndex::build(&routes, &Default::default(), 1) else {
        return;
    };
    for s in index.shadowed() {
        let Some(i) = config.routes.iter().position(|r| r.name == s.first) else {
            continue;
        };
        cx.warn(
            Some(span_at(root, &["routes", &i.to_string(), "match", "path_regex"])),
            &format!("routes[{i}].match.path_regex"),
            format!(
                "route \"{}\" can never match: route \"{}\" takes every path it matches (a prefix beats a regex)",
                s.first, s.second
            ),
        );
    }
    for tie in index.ties() {
        let Some(i) = config.routes.iter().position(|r| r.name == tie.second) else {
            continue;
        };
        cx.warn(
            Some(span_at(root, &["routes", &i.to_string(), "match"])),
            &format!("routes[{i}].match"),
            format!(
                "route \"{}\" and route \"{}\" are equally specific and can take the same request: the one earlier in the file wins",
                tie.first, tie.second
            ),
        );
    }
}

fn upstreams(cx: &mut Cx<'_>, root: &Spanned<DeTable<'_>>, config: &Config) {
    let attempts_loop = config.chain.contains(&StageKind::HedgeRetry);
    for (name, u) in &config.upstreams {
        if u.retry.is_some() && !attempts_loop && !config.pipeline.chain.is_empty() {
            cx.warn(
                Some(span_at(root, &["upstreams", name, "retry"])),
                &format!("upstreams.{name}.retry"),
                "pipeline.chain has no hedge-retry stage: every exchange gets one attempt",
            );
        }
        if u.backends.is_empty() {
            let span = span_at(root, &["upstreams", name, "backends"]);
            cx.push(
                Some(span),
                &format!("upstreams.{name}.backends"),
                "expected at least one backend",
            );
        }
        let at_key = |k: &str| span_at(root, &["upstreams", name, k]);
        if let Some(k) = &u.hash_key {
            match crate::http::key::HashKey::parse(k) {
                Err(e) => cx.push(
                    Some(at_key("hash_key")),
                    &format!("upstreams.{name}.hash_key"),
                    e,
                ),
                Ok(key) => {
                    if !u.balance.keyed() {
                        cx.push(
                            Some(at_key("hash_key")),
                            &format!("upstreams.{name}.hash_key"),
                            format!(
                                "hash_key is read by balance = \"consistent-hash\", not \"{}\"",
                                u.balance.name()
                            ),
                        );
                    } else if u.balance == Balance::StickyCid
                        && key != crate::http::key::HashKey::QuicCid
                    {
                        cx.push(
                            Some(at_key("hash_key")),
                            &format!("upstreams.{name}.hash_key"),
                            "sticky-cid always keys by the client connection: leave hash_key out (or use consistent-hash)",
                        );
                    }
                }
            }
        }
        let sections = [
            ("health", u.health.as_ref().map(|h| h.problems())),
            ("outlier", u.outlier.as_ref().map(|o| o.problems())),
            ("breaker", u.breaker.as_ref().map(|b| b.problems())),
            ("retry", u.retry.as_ref().map(|r| r.problems())),
        ];
        for (section, problems) in sections {
            for (k, message) in problems.unwrap_or_default() {
                cx.push(
                    Some(span_at(root, &["upstreams", name, section, k])),
                    &format!("upstreams.{name}.{section}.{k}"),
                    message,
                );
            }
        }
        if u.fallback.keyed() {
            cx.push(
                Some(at_key("fallback")),
                &format!("upstreams.{name}.fallback"),
                format!(
                    "fallback is for requests without a key: \"{}\" needs one",
                    u.fallback.name()
                ),
            );
        }
        if u.fallback != Balance::RoundRobin && !u.balance.keyed() {
            cx.push(
                Some(at_key("fallback")),
                &format!("upstreams.{name}.fallback"),
                format!("fallback is read by balance = \"consistent-hash\" or \"sticky-cid\", not \"{}\"", u.balance.name()),
            );
        }
        if u.dns_refresh.is_some() && !u.backends.iter().any(|b| b.resolves_by_name()) {
            cx.warn(
                Some(at_key("dns_refresh")),
                &format!("upstreams.{name}.dns_refresh"),
                "no backend URL names a host by name (or each has an address): nothing to refresh",
            );
        }
        if u.dns_resolver.is_some() && u.dns_refresh.is_none() {
            cx.warn(
                Some(at_key("dns_resolver")),
                &format!("upstreams.{name}.dns_resolver"),
                "dns_resolver is used by dns_refresh, which is not set: connections resolve with the system's resolver",
            );
        }
        if !u.backends.is_empty() && u.backends.iter().all(|b| !b.enabled) {
            cx.warn(
                Some(at_key("backends")),
                &format!("upstreams.{name}.backends"),
                "every backend has enabled = false: requests to this upstream are answered 503",
            );
        }
        let mut urls = BTreeMap::new();
        let mut ids = BTreeMap::new();
        for (i, b) in u.backends.iter().enumerate() {
            let at = |k: &str| span_at(root, &["upstreams", name, "backends", &i.to_string(), k]);
            let problems = b.problems();
            for (k, message) in &problems {
                cx.push(
                    Some(at(k)),
                    &format!("upstreams.{name}.backends[{i}].{k}"),
                    message.clone(),
                );
            }
            if let Some(id) = &b.id
                && !problems.iter().any(|(k, _)| *k == "id")
                && let Some(first) = ids.insert(id.as_str(), i)
            {
                cx.push(
                    Some(at("id")),
                    &format!("upstreams.{name}.backends[{i}].id"),
                    format!("the same id as backends[{first}]: ids name one backend each"),
                );
            }
            if let Some(first) = urls.insert(b.url.as_str(), i) {
                cx.warn(
                    Some(at("url")),
                    &format!("upstreams.{name}.backends[{i}].url"),
                    format!("the same URL as backends[{first}]: it gets twice the share (use weight instead)"),
                );
            }
        }
        let tls = &u.tls;
        let key = |k: &str| format!("upstreams.{name}.tls.{k}");
        let at = |k: &str| span_at(root, &["upstreams", name, "tls", k]);
        for (k, path) in [
            ("ca_file", &tls.ca_file),
            ("ca_dir", &tls.ca_dir),
            ("client_cert", &tls.client_cert),
            ("client_key", &tls.client_key),
        ] {
            if let Some(p) = path
                && let Err(e) = std::fs::metadata(p)
            {
                cx.push(
                    Some(at(k)),
                    &key(k),
                    format!("cannot read {}: {e}", p.display()),
                );
            }
        }
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            cx.push(
                Some(at("client_cert")),
                &key("client_cert"),
                "client_cert and client_key go together",
            );
        }
        if tls.verify == Verify::Off && (tls.ca_file.is_some() || tls.ca_dir.is_some()) {
            cx.push(
                Some(at("verify")),
                &key("verify"),
                "verify = \"off\" ignores ca_file/ca_dir: choose one",
            );
        }
    }
}

/// `" (did you mean \"x\"?)"` for the closest candidate within two edits, else `""`.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, c)| format!(" (did you mean \"{c}\"?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}
