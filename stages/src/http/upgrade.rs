//! WebSocket handshakes as a proxy sees them: which requests ask for one (HTTP/1.1 `Upgrade`,
//! RFC 6455 §4.1; extended CONNECT with `:protocol = websocket`, RFC 8441 §4), the fields
//! an HTTP/1.1 backend is sent for a client that came over HTTP/2 (which has no
//! `Sec-WebSocket-Key`), and the backend's `Sec-WebSocket-Accept` checked against it.

use base64::Engine;
use http::{HeaderMap, HeaderValue, Method};

/// The RFC 6455 §1.3 GUID appended to the key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

pub const SEC_WEBSOCKET_KEY: &str = "sec-websocket-key";
pub const SEC_WEBSOCKET_ACCEPT: &str = "sec-websocket-accept";
pub const SEC_WEBSOCKET_VERSION: &str = "sec-websocket-version";

/// Whether a comma-separated field has `token` (ASCII case-insensitive) in any of its lines.
fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// An HTTP/1.1 request that asks to become a WebSocket: `Upgrade: websocket` named in
/// `Connection: upgrade` (RFC 9110 §7.8: an `Upgrade` not listed in `Connection` is not
/// meant for this hop). Other upgrades (`h2c`, TLS) are not tunnels and are ignored.
pub fn http1_websocket(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::GET
        && has_token(headers, http::header::UPGRADE, "websocket")
        && has_token(headers, http::header::CONNECTION, "upgrade")
}

/// An extended CONNECT (HTTP/2, RFC 8441) whose `:protocol` is `websocket`.
pub fn h2_websocket(method: &Method, extensions: &http::Extensions) -> bool {
    method == Method::CONNECT
        && extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Whether an HTTP/2 CONNECT names a `:protocol` (extended CONNECT) at all.
pub fn h2_extended_connect(extensions: &http::Extensions) -> bool {
    extensions.get::<hyper::ext::Protocol>().is_some()
}

/// Turns the RFC 6455 handshake made for a backend into RFC 8441's extended CONNECT, for a
/// backend known to speak HTTP/2: `CONNECT` with `:protocol = websocket`; `Upgrade`,
/// `Connection` and `Sec-WebSocket-Key` go (HTTP/2 has none of them), the version,
/// subprotocols and extensions stay.
pub fn into_extended_connect<B>(req: &mut http::Request<B>) {
    *req.method_mut() = Method::CONNECT;
    let h = req.headers_mut();
    h.remove(http::header::UPGRADE);
    h.remove(http::header::CONNECTION);
    h.remove(SEC_WEBSOCKET_KEY);
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64 (RFC 6455 §4.1).
pub fn new_key() -> HeaderValue {
    let mut raw = [0u8; 16];
    for b in raw.iter_mut() {
        *b = fastrand::u8(..);
    }
    let key = base64::engine::general_purpose::STANDARD.encode(raw);
    // Base64 is always a valid field value.
    HeaderValue::from_str(&key)
        .unwrap_or_else(|_| HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAA=="))
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with (RFC 6455 §4.2.2).
pub fn accept_for(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_6455_example_key_gives_its_accept() {
        assert_eq!(
            accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn only_a_websocket_upgrade_named_in_connection_counts() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", HeaderValue::from_static("WebSocket"));
        assert!(
            !http1_websocket(&Method::GET, &h),
            "Connection must name it"
        );
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(http1_websocket(&Method::GET, &h));
        assert!(!http1_websocket(&Method::POST, &h));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        assert!(!http1_websocket(&Method::GET, &h));
    }
}
