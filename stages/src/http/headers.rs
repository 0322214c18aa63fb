//! Header hygiene between hops: hop-by-hop removal and forwarding headers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Connection-specific headers (RFC 9110 §7.6.1; RFC 9114 §4.2 forbids them in HTTP/3).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];

/// Removes hop-by-hop headers and every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in &listed {
            headers.remove(name);
        }
    }
    remove_any(headers, &HOP_BY_HOP);
}

/// Removes every header named in `names`. Most messages carry none of them: one pass over
/// the map's names (cheap comparisons) finds out, where a removal per name would hash each.
pub fn remove_any(headers: &mut HeaderMap, names: &[HeaderName]) {
    if headers.keys().any(|k| names.contains(k)) {
        for name in names {
            headers.remove(name);
        }
    }
}

/// Whether a comma-separated field value has `token` (ASCII case-insensitive).
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Appends `<version> spooky` to `Via` (RFC 9110 §7.6.3).
pub fn append_via(headers: &mut HeaderMap, version: &'static str) {
    let value = match version {
        "3" => HeaderValue::from_static("3 spooky"),
        "2" => HeaderValue::from_static("2 spooky"),
        _ => HeaderValue::from_static("1.1 spooky"),
    };
    headers.append(header::VIA, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_fixed_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-secret, close"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn fixed_hop_by_hop_headers_go_without_a_connection_header() {
        for name in ["te", "upgrade", "proxy-connection", "keep-alive"] {
            let mut h = HeaderMap::new();
            h.insert("x-kept", HeaderValue::from_static("yes"));
            h.append(name, HeaderValue::from_static("a"));
            h.append(name, HeaderValue::from_static("b"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name}");
            assert!(h.contains_key("x-kept"), "{name}");
        }
        let mut clean = HeaderMap::new();
        clean.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut clean);
        assert_eq!(clean.len(), 1);
    }
}
