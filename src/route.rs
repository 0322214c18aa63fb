//! `spooky route FILE METHOD URL [-H 'Name: value']... [--cookie k=v]... [--protocol h3]`:
//! which route a request takes, what it does, and why each other candidate lost — decided by
//! the pipeline's own ingress and route stages, without serving anything.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method, Request, Uri};
use spooky_stages::Pipeline;
use spooky_stages::config;
use spooky_stages::contract::exchange::{ClientProtocol, Exchange};
use spooky_stages::contract::flow::Flow;
use spooky_stages::contract::route::Action;
use spooky_stages::stages::route::{why_lost, with_request};
use spooky_stages::upstreams::Upstream;

use crate::{EXIT_BAD_CONFIG, EXIT_FAILED};

/// What the command line said about the request.
pub struct Probe {
    pub method: String,
    pub url: String,
    pub headers: Vec<String>,
    pub cookies: Vec<String>,
    pub protocol: ClientProtocol,
    pub sni: Option<String>,
    pub client_ip: IpAddr,
}

pub fn route(file: &Path, probe: &Probe) -> ExitCode {
    let config = match config::load(file) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let ex = match exchange(probe) {
        Ok(ex) => ex,
        Err(e) => {
            eprintln!("spooky route: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("spooky route: cannot start a runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let pipeline = match runtime.block_on(async { Pipeline::start(&config) }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("spooky route: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    print!("{}", explain(&pipeline, ex));
    ExitCode::SUCCESS
}

/// The request as an exchange, as an adapter would have made it.
fn exchange(p: &Probe) -> Result<Exchange, String> {
    let method = Method::from_bytes(p.method.as_bytes())
        .map_err(|_| format!("\"{}\" is not an HTTP method", p.method))?;
    let uri: Uri = p
        .url
        .parse()
        .map_err(|e| format!("\"{}\" is not a URL: {e}", p.url))?;
    if uri.authority().is_none() {
        return Err(format!(
            "\"{}\": give a whole URL, as in https://example.com/path",
            p.url
        ));
    }
    let mut req = Request::builder().method(method).uri(uri.clone());
    for h in &p.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("\"{h}\": expected -H 'Name: value'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("\"{}\" is not a header name", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("the value of \"{name}\" is not a header value"))?;
        req = req.header(name, value);
    }
    if p.protocol == ClientProtocol::Http1
        && !p
            .headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("host:"))
        && let Some(a) = uri.authority()
    {
        // As an HTTP/1.1 client must (RFC 9112 §3.2).
        req = req.header(http::header::HOST, a.as_str());
    }
    if !p.cookies.is_empty() {
        let cookie = HeaderValue::from_str(&p.cookies.join("; "))
            .map_err(|_| "--cookie: not a cookie value".to_string())?;
        req = req.header(http::header::COOKIE, cookie);
    }
    let (head, ()) = req.body(()).map_err(|e| e.to_string())?.into_parts();
    let mut ex = Exchange::detached(0, head);
    ex.client.protocol = p.protocol;
    ex.client.tls = uri.scheme_str() != Some("http");
    ex.client.addr.set_ip(p.client_ip);
    ex.client.sni = match &p.sni {
        Some(s) => Some(Arc::from(s.to_ascii_lowercase())),
        None if ex.client.tls => uri.host().map(|h| Arc::from(h.to_ascii_lowercase())),
        None => None,
    };
    Ok(ex)
}

/// The whole explanation, as printed.
pub fn explain(pipeline: &Pipeline, ex: Exchange) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "request: {} {} ({})",
        ex.head.method,
        ex.head.uri,
        ex.client.protocol.label()
    );
    let ex = match pipeline.ingress().map(|i| i.decide(ex)) {
        Some(Flow::Continue(ex)) => ex,
        Some(Flow::Reject(_, reason)) => {
            let _ = writeln!(
                out,
                "refused by ingress: {} {}",
                reason.status().as_u16(),
                reason.label()
            );
            return out;
        }
        Some(Flow::Respond(_, reply)) => {
            let _ = writeln!(out, "answered by ingress: {}", reply.status.as_u16());
            return out;
        }
        Some(_) => return out,
        None => {
            let _ = writeln!(out, "the chain has no ingress stage");
            return out;
        }
    };
    let Some(stage) = pipeline.route() else {
        let _ = writeln!(out, "the chain has no route stage");
        return out;
    };
    let (candidates, host, path) = with_request(&ex, |req| {
        (
            stage.index().explain(req),
            req.host.to_string(),
            req.path.to_string(),
        )
    });
    let chosen = candidates.iter().find(|c| c.miss.is_none());
    let _ = writeln!(out, "matched as: host {host}, path {path}");
    match chosen {
        None => {
            let _ = writeln!(out, "route: none: 404 no_route");
        }
        Some(c) => {
            let _ = writeln!(out, "route: {}", c.entry.route.name);
            let _ = writeln!(out, "  action: {}", action(&c.entry.route.action));
        }
    }
    // What the route stage does with it (rewrites, the split's pick, the redirect).
    match stage.decide(ex) {
        Flow::Continue(ex) => {
            let _ = writeln!(
                out,
                "  upstream request: {} {} (authority {})",
                ex.head.method,
                ex.head.uri.path_and_query().map_or("/", |p| p.as_str()),
                ex.head.uri.authority().map_or("-", |a| a.as_str())
            );
            if let Some(u) = &ex.decided.upstream {
                let _ = writeln!(out, "  upstream: {}", upstream(u));
            }
        }
        Flow::Respond(_, reply) => {
            let mut line = format!("  answer: {}", reply.status.as_u16());
            if let Some(l) = reply.headers.get(http::header::LOCATION) {
                let _ = write!(line, ", location {}", l.to_str().unwrap_or("?"));
            }
            let _ = writeln!(out, "{line}");
        }
        Flow::Reject(_, reason) => {
            let _ = writeln!(
                out,
                "  answer: {} {}",
                reason.status().as_u16(),
                reason.label()
            );
        }
        _ => {}
    }
    if candidates.is_empty() {
        let _ = writeln!(out, "candidates: none match this host and path");
        return out;
    }
    let _ = writeln!(out, "candidates, most specific first:");
    let width = candidates
        .iter()
        .map(|c| c.entry.route.name.len())
        .max()
        .unwrap_or(0);
    for c in &candidates {
        let name = &c.entry.route.name;
        let verdict = match (&c.miss, chosen) {
            (Some(miss), _) => format!("no match: {miss}"),
            (None, Some(w)) if std::ptr::eq(w.entry, c.entry) => "chosen".to_string(),
            (None, Some(w)) => format!("matches, lost: {}", why_lost(w.entry, c.entry)),
            (None, None) => "matches".to_string(),
        };
        let _ = writeln!(
            out,
            "  {name:<width$}  [{}; {}]  {verdict}",
            if c.entry.host.is_empty() {
                "any host"
            } else {
                &c.entry.host
            },
            c.entry.matcher.path.describe()
        );
    }
    out
}

fn action(a: &Action) -> String {
    match a {
        Action::Respond(r) => format!("respond {}", r.status.as_u16()),
        Action::Upstream(u) => format!("upstream {}", u.name),
        Action::Split(s) => {
            let parts: Vec<String> = s
                .targets
                .iter()
                .map(|(u, w)| format!("{} {w}", u.name))
                .collect();
            let sticky = s
                .sticky
                .as_ref()
                .map(|k| format!(", sticky by {k}"))
                .unwrap_or_default();
            format!("split {}{sticky}", parts.join(", "))
        }
        Action::Redirect(r) => format!("redirect {}", r.status.as_u16()),
        Action::Connect(p) => format!("connect{}", if p.udp { " (tcp, udp)" } else { " (tcp)" }),
    }
}

fn upstream(u: &Upstream) -> String {
    let members: Vec<usize> = u.balancer.pick(u.backends.as_slice(), None).collect();
    let backends: Vec<String> = u
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if members.contains(&i) {
                b.name.clone()
            } else {
                format!("{} (disabled)", b.name)
            }
        })
        .collect();
    format!(
        "{} ({}, backends {})",
        u.name,
        u.balancer.algorithm().name(),
        backends.join(" ")
    )
}
