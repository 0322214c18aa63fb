//! W3C Trace Context (`traceparent`): reading the client's, writing the one sent to a backend.
//!
//! `traceparent: 00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`; flag `01` is
//! "sampled". A header that does not parse is ignored (a new trace starts), as the
//! recommendation asks. `tracestate` is passed through untouched.

use http::HeaderValue;
use http::header::HeaderName;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// A 16-byte trace id and the 8-byte id of the span that is the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

fn hex_into(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(())
}

/// The client's `traceparent`, when it is well formed (version `00`, or a later version read
/// as `00`, never `ff`; ids not all zero).
pub fn parse(v: &HeaderValue) -> Option<TraceParent> {
    let s = v.to_str().ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let mut ver = [0u8; 1];
    hex_into(version, &mut ver)?;
    // Version 00 has exactly four fields; a later one may add more.
    if ver[0] == 0xff || (ver[0] == 0 && parts.next().is_some()) {
        return None;
    }
    let mut tp = TraceParent {
        trace_id: [0; 16],
        parent_id: [0; 8],
        sampled: false,
    };
    hex_into(trace, &mut tp.trace_id)?;
    hex_into(parent, &mut tp.parent_id)?;
    let mut f = [0u8; 1];
    hex_into(flags, &mut f)?;
    if tp.trace_id == [0; 16] || tp.parent_id == [0; 8] {
        return None;
    }
    tp.sampled = f[0] & 1 == 1;
    Some(tp)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}

/// The `traceparent` naming `span_id` of `trace_id` as the parent, sampled.
pub fn format(trace_id: &[u8; 16], span_id: &[u8; 8]) -> HeaderValue {
    let s = format!("00-{}-{}-01", hex(trace_id), hex(span_id));
    let mut v = HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("-"));
    v.set_sensitive(true);
    v
}

/// A random, non-zero trace id.
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

/// A random, non-zero span id.
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_traceparent() {
        let v = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let tp = parse(&v).expect("valid");
        assert!(tp.sampled);
        assert_eq!(hex(&tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&tp.parent_id), "00f067aa0ba902b7");
        let out = format(&tp.trace_id, &tp.parent_id);
        assert_eq!(out, v);
        let unsampled =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!parse(&unsampled).expect("valid").sampled);
    }

    #[test]
    fn refuses_malformed_traceparent() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse(&HeaderValue::from_static(bad)), None, "{bad}");
        }
        // A later version may carry more fields.
        let later = HeaderValue::from_static(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more",
        );
        assert!(parse(&later).is_some());
    }
}
