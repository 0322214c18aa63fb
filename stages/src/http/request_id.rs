//! `x-request-id`: one id per request, the same at the client, in Spooky's log and at the
//! backend. A client's id is kept when it is plausible (1 to 200 visible ASCII characters);
//! otherwise ingress makes a random UUID (version 4), as Envoy does.

use http::HeaderValue;
use http::header::HeaderName;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client id kept.
const MAX_LEN: usize = 200;

/// Whether a client's `x-request-id` is kept: visible ASCII, not too long.
pub fn valid(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_LEN && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// A random UUID v4 (`8-4-4-4-12` lower-case hex), marked sensitive so that HPACK and QPACK
/// send it as a literal instead of filling their dynamic tables with values that never repeat.
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    // Version 4, variant 10xx (RFC 9562 §5.4).
    n = (n & !(0xF << 76)) | (0x4 << 76);
    n = (n & !(0x3 << 62)) | (0x2 << 62);
    // A byte at a time (a nibble at a time through the u128 cost 600 instructions).
    let mut out = [b'-'; 36];
    let mut j = 0;
    for (i, byte) in n.to_be_bytes().into_iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            j += 1; // the dash
        }
        out[j] = HEX[usize::from(byte >> 4)];
        out[j + 1] = HEX[usize::from(byte & 0xF)];
        j += 2;
    }
    let mut v = HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("-"));
    v.set_sensitive(true);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_uuid_v4() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        let s = a.to_str().unwrap_or_default();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
        for (i, c) in s.chars().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                assert_eq!(c, '-', "{s}");
            } else {
                assert!(matches!(c, '0'..='9' | 'a'..='f'), "{s}");
            }
        }
        assert!(valid(&a));
    }

    #[test]
    fn client_ids_are_kept_only_when_plausible() {
        assert!(valid(&HeaderValue::from_static("abc-123")));
        assert!(!valid(&HeaderValue::from_static("")));
        assert!(!valid(&HeaderValue::from_static("has space")));
        let long = "x".repeat(201);
        assert!(!valid(
            &HeaderValue::from_str(&long).unwrap_or(HeaderValue::from_static(""))
        ));
    }
}
