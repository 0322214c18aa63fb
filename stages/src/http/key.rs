//! Request keys: what a sticky split or a consistent-hash balancer hashes so that one user,
//! session or connection keeps landing on the same side.
//!
//! Written `header:NAME`, `cookie:NAME`, `query:NAME`, `path`, `authority`, `client-ip` or
//! `quic-cid` (the client's connection: stable across QUIC connection-ID rotation and
//! address migration, and for TCP the TCP connection). The hash is stable across workers,
//! restarts and generations (FNV-1a with a fixed mix, no random seed), so a key keeps its
//! place as long as the membership does.

use std::net::IpAddr;

use http::HeaderMap;
use http::request::Parts;

/// What is hashed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HashKey {
    Header(http::HeaderName),
    Cookie(String),
    Query(String),
    Path,
    Authority,
    ClientIp,
    QuicCid,
}

impl HashKey {
    /// Parses the written form; the error says what was expected.
    pub fn parse(s: &str) -> Result<HashKey, String> {
        let expected =
            "expected header:NAME, cookie:NAME, query:NAME, path, authority, client-ip or quic-cid";
        match s.split_once(':') {
            Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| format!("\"{name}\" is not a header name")),
            Some(("cookie", name)) if !name.is_empty() => Ok(HashKey::Cookie(name.to_string())),
            Some(("query", name)) if !name.is_empty() => Ok(HashKey::Query(name.to_string())),
            None if s == "path" => Ok(HashKey::Path),
            None if s == "authority" => Ok(HashKey::Authority),
            None if s == "client-ip" => Ok(HashKey::ClientIp),
            None if s == "quic-cid" => Ok(HashKey::QuicCid),
            _ => Err(format!("\"{s}\" is not a request key: {expected}")),
        }
    }

    /// The key's hash for one request, or `None` when the request does not carry it.
    pub fn hash(&self, head: &Parts, client_ip: IpAddr, conn: u64) -> Option<u64> {
        match self {
            HashKey::Header(name) => head.headers.get(name).map(|v| hash(v.as_bytes())),
            HashKey::Cookie(name) => cookie(&head.headers, name).map(|v| hash(v.as_bytes())),
            HashKey::Query(name) => query(head.uri.query()?, name).map(|v| hash(v.as_bytes())),
            HashKey::Path => Some(hash(head.uri.path().as_bytes())),
            HashKey::Authority => head.uri.authority().map(|a| {
                hash(
                    crate::http::host::host_of(a.as_str())
                        .to_ascii_lowercase()
                        .as_bytes(),
                )
            }),
            HashKey::ClientIp => Some(match client_ip {
                IpAddr::V4(v4) => hash(&v4.octets()),
                IpAddr::V6(v6) => hash(&v6.octets()),
            }),
            HashKey::QuicCid => Some(mix(conn)),
        }
    }
}

impl std::fmt::Display for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashKey::Header(n) => write!(f, "header:{n}"),
            HashKey::Cookie(n) => write!(f, "cookie:{n}"),
            HashKey::Query(n) => write!(f, "query:{n}"),
            HashKey::Path => f.write_str("path"),
            HashKey::Authority => f.write_str("authority"),
            HashKey::ClientIp => f.write_str("client-ip"),
            HashKey::QuicCid => f.write_str("quic-cid"),
        }
    }
}

/// FNV-1a, then a finalizer that spreads the bits (FNV alone clusters short keys).
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finalizer.
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The value of cookie `name` (RFC 6265 `Cookie`, over one or several fields).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// The first value of query parameter `name`, percent-decoded (`+` stays `+`).
pub fn query(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

/// Percent-decoding, lossy: a bad escape stays as written, bytes that are not UTF-8 become
/// U+FFFD.
pub fn decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).map(|r| r.into_parts().0).expect("request")
    }

    #[test]
    fn parses_every_kind_and_refuses_others() {
        for ok in [
            "header:x-user",
            "cookie:session",
            "query:u",
            "path",
            "authority",
            "client-ip",
            "quic-cid",
        ] {
            let key = HashKey::parse(ok);
            assert_eq!(key.map(|k| k.to_string()).as_deref(), Ok(ok));
        }
        for bad in ["host", "cookie:", "header:bad name", "ip", ""] {
            assert!(HashKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_read_the_request() {
        let ip: IpAddr = [10, 0, 0, 1].into();
        let h = head(
            "https://Example.com:8443/a/b?x=1&u=al%69ce",
            &[("cookie", "a=1; session=s1"), ("x-user", "bob")],
        );
        let key = |k: &str| HashKey::parse(k).ok().and_then(|k| k.hash(&h, ip, 7));
        assert_eq!(key("header:x-user"), Some(hash(b"bob")));
        assert_eq!(key("header:x-none"), None);
        assert_eq!(key("cookie:session"), Some(hash(b"s1")));
        assert_eq!(key("cookie:none"), None);
        assert_eq!(key("query:u"), Some(hash(b"alice")));
        assert_eq!(key("query:none"), None);
        assert_eq!(key("path"), Some(hash(b"/a/b")));
        assert_eq!(key("authority"), Some(hash(b"example.com")));
        assert_eq!(key("client-ip"), Some(hash(&[10, 0, 0, 1])));
        assert_eq!(key("quic-cid"), Some(mix(7)));
    }

    #[test]
    fn decoding_keeps_bad_escapes() {
        assert_eq!(decode("a%20b"), "a b");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
        assert_eq!(decode("%4"), "%4");
    }
}
