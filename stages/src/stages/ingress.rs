//! Ingress: validates the request head a protocol adapter (the HTTP/3 or the TCP one) parsed,
//! before the exchange enters the rest of the chain. Limits on
//! header count and bytes (431), authority rules (400), methods Spooky cannot carry yet
//! (`CONNECT` → 405), `OPTIONS *` answered here, and the path normalized ([`crate::http::path`]) so
//! that routing sees — and the backend receives — one spelling of it. The adapter applies
//! backpressure: it stops accepting request streams while this stage's concurrency is used up.

use std::num::NonZeroUsize;

use http::header::HOST;
use http::uri::Authority;
use http::{StatusCode, Uri};
use serde::Deserialize;

use crate::contract::exchange::{ClientProtocol, ContentLength, Exchange};
use crate::contract::flow::{Flow, Reply};
use crate::contract::reason::{ALLOWED_METHODS, Reason};
use crate::contract::tunnel::TunnelKind;
use crate::http::forwarded::{Cidr, client_behind, trusted};
use crate::http::path::{self, EncodedSlashes, MergeSlashes, NormalizePath};
use crate::http::request_id::{self, X_REQUEST_ID};
use crate::http::upgrade;
use crate::units::{Dur, Size};

/// `[stages.ingress]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Request header fields allowed (pseudo-headers excluded) → 431 above.
    #[serde(default = "default_max_header_count")]
    pub max_header_count: NonZeroUsize,
    /// Request head size (RFC 9114 §4.2.2 field-section size: name + value + 32 per field)
    /// → 431 above; also advertised to clients as SETTINGS_MAX_FIELD_SECTION_SIZE.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: Size,
    /// Request body bytes read ahead while an exchange waits (in admission or queue), so that
    /// a client resetting its stream is noticed there; the bytes are forwarded later.
    #[serde(default = "default_read_ahead")]
    pub read_ahead: Size,
    /// Longest wait for a request head once its stream is open (HTTP/3), or from accept and
    /// from each later head's first byte (TCP).
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Dur,
    /// `"rfc3986"`: normalize the path before routing (and forward the normalized path).
    #[serde(default)]
    pub normalize_path: NormalizePath,
    /// `"merge"`: `//` becomes `/` (with `normalize_path = "rfc3986"`).
    #[serde(default)]
    pub merge_slashes: MergeSlashes,
    /// `"reject"`: `%2F`/`%5C` inside a segment answers 400 (with `normalize_path = "rfc3986"`).
    #[serde(default)]
    pub encoded_slashes: EncodedSlashes,
    /// Peers (address blocks) whose `X-Forwarded-For` is believed: it names the client
    /// (client-ip keys) and `forwarded = "append"` adds to it. Empty: no peer is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// `x-request-id`: keep the client's (when plausible) or make one, forward it and return
    /// it on the response; `false` leaves the header alone.
    #[serde(default = "default_request_id")]
    pub request_id: bool,
}

fn default_request_id() -> bool {
    true
}

fn default_read_ahead() -> Size {
    Size(64 * 1024)
}

fn default_header_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}

fn default_max_header_count() -> NonZeroUsize {
    NonZeroUsize::new(100).unwrap_or(NonZeroUsize::MIN)
}

fn default_max_header_bytes() -> Size {
    Size(16 * 1024)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_header_count: default_max_header_count(),
            max_header_bytes: default_max_header_bytes(),
            read_ahead: default_read_ahead(),
            header_timeout: default_header_timeout(),
            normalize_path: NormalizePath::default(),
            merge_slashes: MergeSlashes::default(),
            encoded_slashes: EncodedSlashes::default(),
            trusted_proxies: Vec::new(),
            request_id: default_request_id(),
        }
    }
}

/// The running stage.
pub struct Ingress {
    max_header_count: usize,
    max_header_bytes: u64,
    /// `None`: paths are left as sent.
    path_rules: Option<path::Rules>,
    trusted_proxies: Vec<Cidr>,
    request_id: bool,
}

impl Ingress {
    pub fn build(config: &Config) -> Self {
        Ingress {
            max_header_count: config.max_header_count.get(),
            max_header_bytes: config.max_header_bytes.0,
            path_rules: (config.normalize_path == NormalizePath::Rfc3986).then_some(path::Rules {
                merge_slashes: config.merge_slashes,
                encoded_slashes: config.encoded_slashes,
            }),
            trusted_proxies: config.trusted_proxies.clone(),
            request_id: config.request_id,
        }
    }

    /// Keeps encoded slashes that the rules would refuse, for the route stage to refuse them
    /// per route (some route takes them). Returns whether anything changed.
    pub fn keep_encoded_slashes(&mut self) -> bool {
        match &mut self.path_rules {
            Some(r) if r.encoded_slashes == EncodedSlashes::Reject => {
                r.encoded_slashes = EncodedSlashes::Keep;
                true
            }
            _ => false,
        }
    }

    pub async fn process(&self, ex: Exchange) -> Flow {
        self.decide(ex)
    }

    pub fn decide(&self, mut ex: Exchange) -> Flow {
        if self.request_id {
            let headers = &mut ex.head.headers;
            let id = match headers.get(X_REQUEST_ID) {
                Some(v) if request_id::valid(v) => v.clone(),
                _ => {
                    let made = request_id::generate();
                    headers.insert(X_REQUEST_ID, made.clone());
                    made
                }
            };
            ex.request_id = Some(id);
        }
        let peer = ex.client.addr.ip();
        if trusted(&self.trusted_proxies, peer) {
            ex.client.trusted_peer = true;
            ex.client.ip = client_behind(peer, &ex.head.headers, &self.trusted_proxies);
        }
        ex.grpc = crate::http::grpc::is_grpc(&ex.head.headers);
        if ex.grpc {
            ex.deadline = crate::http::grpc::timeout(&ex.head.headers)
                .and_then(|t| ex.started.checked_add(t));
        }
        let h3_protocol = ex.head.extensions.get::<h3::ext::Protocol>().copied();
        let websocket = match ex.client.protocol {
            ClientProtocol::Http1 => upgrade::http1_websocket(&ex.head.method, &ex.head.headers),
            ClientProtocol::H2 => upgrade::h2_websocket(&ex.head.method, &ex.head.extensions),
            // RFC 9220 (h3 parses `websocket` with Spooky's patch: vendor/README.md).
            ClientProtocol::H3 => {
                ex.head.method == http::Method::CONNECT
                    && h3_protocol == Some(h3::ext::Protocol::WEBSOCKET)
            }
        };
        if websocket {
            ex.tunnel = Some(TunnelKind::WebSocket);
        } else if h3_protocol == Some(h3::ext::Protocol::CONNECT_UDP)
            && ex.head.method == http::Method::CONNECT
        {
            // RFC 9298: the target is in the path (`/.well-known/masque/udp/HOST/PORT/`).
            ex.tunnel = Some(TunnelKind::ConnectUdp);
        } else if ex.head.method == http::Method::CONNECT {
            if (ex.client.protocol == ClientProtocol::H2
                && upgrade::h2_extended_connect(&ex.head.extensions))
                || h3_protocol.is_some()
            {
                // An extended CONNECT for a protocol Spooky does not carry (RFC 8441 §4
                // leaves the answer to the server).
                return Flow::Reject(ex, Reason::ConnectUnsupported);
            }
            // A tunnel to `host:port`, for a route with `connect` to allow (else 405).
            ex.tunnel = Some(TunnelKind::Connect);
        }
        if let Some(expect) = ex.head.headers.get(http::header::EXPECT) {
            // RFC 9110 §10.1.1. `100-continue` is Spooky's to meet, not the backend's: the
            // HTTP/1.1 server answers 100 when the body is first read (after the route's
            // limits passed), so the backend is not asked to answer it again.
            if !expect.as_bytes().eq_ignore_ascii_case(b"100-continue") {
                return Flow::Reject(ex, Reason::ExpectationFailed);
            }
            ex.head.headers.remove(http::header::EXPECT);
        }
        if ex.content_length == ContentLength::Invalid {
            // RFC 9110 §8.6: one valid content-length or none.
            return Flow::Reject(ex, Reason::BadContentLength);
        }
        let headers = &ex.head.headers;
        if ex.client.protocol == ClientProtocol::H3 && has_connection_specific(headers) {
            // RFC 9114 §4.2: connection-specific fields make an HTTP/3 message malformed.
            return Flow::Reject(ex, Reason::ConnectionSpecificField);
        }
        if headers.get_all(HOST).iter().count() > 1 {
            // RFC 9112 §3.2: a request with more than one Host field is answered 400.
            return Flow::Reject(ex, Reason::DuplicateHost);
        }
        if headers.len() > self.max_header_count {
            return Flow::Reject(ex, Reason::HeaderCount);
        }
        let bytes: u64 = headers
            .iter()
            .map(|(k, v)| (k.as_str().len() + v.len() + 32) as u64)
            .sum::<u64>()
            + uri_len(&ex.head.uri) as u64;
        if bytes > self.max_header_bytes {
            return Flow::Reject(ex, Reason::HeaderBytes);
        }
        // RFC 9114 §4.3.1: a request with an http(s) scheme carries :authority or Host; when
        // both are present they must be the same.
        let host = match headers.get(HOST) {
            None => None,
            Some(v) => match v.to_str().ok().and_then(|s| s.parse::<Authority>().ok()) {
                Some(a) if !a.as_str().contains('@') => Some(a),
                _ => return Flow::Reject(ex, Reason::BadHost),
            },
        };
        match (ex.head.uri.authority(), host) {
            (Some(a), Some(h)) if !a.as_str().eq_ignore_ascii_case(h.as_str()) => {
                return Flow::Reject(ex, Reason::AuthorityMismatch);
            }
            (Some(a), _) if a.as_str().contains('@') => {
                return Flow::Reject(ex, Reason::BadAuthority);
            }
            // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400, whatever its
            // target's form.
            (Some(_), None)
                if ex.client.protocol == ClientProtocol::Http1
                    && ex.head.version == http::Version::HTTP_11 =>
            {
                return Flow::Reject(ex, Reason::MissingHost);
            }
            (Some(_), _) => {}
            (None, Some(h)) => {
                let mut parts = ex.head.uri.clone().into_parts();
                parts.authority = Some(h);
                if parts.scheme.is_none() {
                    parts.scheme = Some(if ex.client.tls {
                        http::uri::Scheme::HTTPS
                    } else {
                        http::uri::Scheme::HTTP
                    });
                }
                match Uri::from_parts(parts) {
                    Ok(u) => ex.head.uri = u,
                    Err(_) => return Flow::Reject(ex, Reason::BadHost),
                }
            }
            (None, None) => return Flow::Reject(ex, Reason::MissingAuthority),
        }
        if ex.tunnel == Some(TunnelKind::Connect) {
            // RFC 9110 §9.3.6: the target is `host:port`, nothing else (a `/` path is let
            // pass: the h3 crate's client sends one with every CONNECT).
            let target = ex.head.uri.authority().map(|a| a.as_str());
            if target
                .and_then(crate::http::connect_allow::Target::parse)
                .is_none()
                || ex
                    .head
                    .uri
                    .path_and_query()
                    .is_some_and(|p| !matches!(p.as_str(), "" | "/"))
            {
                return Flow::Reject(ex, Reason::BadAuthority);
            }
            return Flow::Continue(ex);
        }
        if ex.head.uri.path() == "*" {
            // RFC 9110 §9.3.7: `OPTIONS *` asks about the server itself; answered here.
            if ex.head.method != http::Method::OPTIONS {
                return Flow::Reject(ex, Reason::BadPath(path::PathError::NotAbsolute));
            }
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::ALLOW,
                http::HeaderValue::from_static(ALLOWED_METHODS),
            );
            let reply = Reply {
                status: StatusCode::OK,
                headers,
                body: bytes::Bytes::new(),
            };
            return Flow::Respond(ex, reply);
        }
        if let Some(rules) = self.path_rules {
            match path::normalize(ex.head.uri.path(), rules) {
                Ok(std::borrow::Cow::Borrowed(_)) => {}
                Ok(std::borrow::Cow::Owned(normal)) => match with_path(&ex.head.uri, &normal) {
                    Some(uri) => ex.head.uri = uri,
                    None => return Flow::Reject(ex, Reason::BadPath(path::PathError::NotAbsolute)),
                },
                Err(e) => return Flow::Reject(ex, Reason::BadPath(e)),
            }
        }
        Flow::Continue(ex)
    }
}

/// `uri` with its path replaced (the query kept).
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Connection-specific fields, and TE other than `trailers` (RFC 9114 §4.2, RFC 9113 §8.2.2).
fn has_connection_specific(headers: &http::HeaderMap) -> bool {
    use http::header;
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ]
    .iter()
    .any(|h| headers.contains_key(h))
        || headers.contains_key("keep-alive")
        || headers.contains_key("proxy-connection")
        || headers
            .get_all(header::TE)
            .iter()
            .any(|v| v.as_bytes() != b"trailers")
}

/// The length of `uri` as written (what its `Display` writes, without writing it: this is
/// asked on every request).
fn uri_len(uri: &http::Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path().len()
        + uri.query().map_or(0, |q| q.len() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_is_as_long_as_it_is_written() {
        for u in [
            "/",
            "*",
            "/a/b?q=1&r",
            "/?",
            "https://a.example",
            "https://a.example:8443/x/y?z",
            "http://[::1]:80/p",
            "a.example:443",
        ] {
            let uri: http::Uri = u.parse().expect("uri");
            assert_eq!(uri_len(&uri), uri.to_string().len(), "{u}");
        }
    }
    use http::Request;

    fn decide(req: Request<()>) -> Result<http::Uri, &'static str> {
        let (head, ()) = req.into_parts();
        match Ingress::build(&Config::default()).decide(Exchange::detached(1, head)) {
            Flow::Continue(ex) => Ok(ex.head.uri.clone()),
            Flow::Reject(_, r) => Err(r.label()),
            _ => Err("other"),
        }
    }

    #[test]
    fn authority_and_host_rules() {
        let ok = Request::get("https://a.example/x")
            .header("host", "A.example")
            .body(())
            .expect("req");
        assert!(decide(ok).is_ok());
        let mismatch = Request::get("https://a.example/x")
            .header("host", "b.example")
            .body(())
            .expect("req");
        assert_eq!(decide(mismatch), Err("authority_mismatch"));
        let host_only = Request::get("/x")
            .header("host", "c.example:8443")
            .body(())
            .expect("req");
        assert_eq!(
            decide(host_only).map(|u| u.to_string()),
            Ok("https://c.example:8443/x".to_string())
        );
        assert_eq!(
            decide(Request::get("/x").body(()).expect("req")),
            Err("missing_authority")
        );
        let userinfo = Request::get("/x")
            .header("host", "u@c.example")
            .body(())
            .expect("req");
        assert_eq!(decide(userinfo), Err("bad_host"));
    }

    #[test]
    fn limits_and_content_length() {
        let mut many = Request::get("https://a.example/x");
        for i in 0..101 {
            many = many.header(format!("x-{i}"), "v");
        }
        assert_eq!(decide(many.body(()).expect("req")), Err("header_count"));
        let big = Request::get("https://a.example/x")
            .header("x-big", "v".repeat(17 * 1024))
            .body(())
            .expect("req");
        assert_eq!(decide(big), Err("header_bytes"));
        let bad_len = Request::post("https://a.example/x")
            .header("content-length", "-1")
            .body(())
            .expect("req");
        assert_eq!(decide(bad_len), Err("bad_content_length"));
    }

    #[test]
    fn paths_are_normalized_and_bad_ones_refused() {
        let get = |p: &str| {
            decide(
                Request::get(format!("https://a.example{p}"))
                    .body(())
                    .expect("req"),
            )
        };
        assert_eq!(
            get("/x/../%61dmin//y?q=%2e").map(|u| u.to_string()),
            Ok("https://a.example/admin/y?q=%2e".to_string())
        );
        assert_eq!(get("/a%2Fb"), Err("encoded_slash"));
        assert_eq!(get("/a%00"), Err("encoded_nul"));
        assert_eq!(get("/a%g0"), Err("bad_percent_encoding"));
    }

    #[test]
    fn connect_is_a_tunnel_to_host_and_port_and_options_star_answered() {
        let connect = |target: &str| {
            let (head, ()) = Request::connect(target)
                .header("host", target)
                .body(())
                .expect("req")
                .into_parts();
            Ingress::build(&Config::default()).decide(Exchange::detached(1, head))
        };
        match connect("example.com:443") {
            Flow::Continue(ex) => assert_eq!(ex.tunnel, Some(TunnelKind::Connect)),
            _ => panic!("CONNECT host:port goes on to the routes"),
        }
        match connect("example.com") {
            Flow::Reject(_, r) => assert_eq!(r, Reason::BadAuthority, "no port"),
            _ => panic!("CONNECT without a port is refused"),
        }
        // Where no route takes it, it is refused 405, and HTTP/1.1 closes.
        let r = Reason::ConnectUnsupported;
        assert_eq!(
            (r.status(), r.label()),
            (StatusCode::METHOD_NOT_ALLOWED, "connect_unsupported")
        );
        assert_eq!(r.allow(), Some(ALLOWED_METHODS));
        assert!(r.closes(), "HTTP/1.1 closes: tunnel bytes may follow");
        let (head, ()) = Request::options("*")
            .header("host", "a.example")
            .body(())
            .expect("req")
            .into_parts();
        match Ingress::build(&Config::default()).decide(Exchange::detached(1, head)) {
            Flow::Respond(_, reply) => {
                assert_eq!(reply.status, StatusCode::OK);
                assert!(reply.headers.contains_key(http::header::ALLOW));
            }
            _ => panic!("OPTIONS * is answered by the proxy"),
        }
        let (head, ()) = Request::get("*")
            .header("host", "a.example")
            .body(())
            .expect("req")
            .into_parts();
        assert!(matches!(
            Ingress::build(&Config::default()).decide(Exchange::detached(1, head)),
            Flow::Reject(_, r) if r.label() == "bad_path"
        ));
    }
}
