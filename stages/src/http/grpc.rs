//! gRPC at the edge: requests are passed through untouched (HTTP/3 or HTTP/2 in, HTTP/2 out,
//! streaming both ways, trailers preserved). When Spooky itself fails a gRPC request it answers
//! the gRPC way — HTTP 200, trailers-only, `grpc-status` and `grpc-message` — because gRPC
//! clients read the status from there, not from the HTTP status. `grpc-timeout` is honoured as
//! the exchange's upstream deadline.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};

/// Whether a request is gRPC (`content-type: application/grpc` or `application/grpc+…`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct == "application/grpc"
                || ct.starts_with("application/grpc+")
                || ct.starts_with("application/grpc;")
        })
}

/// gRPC status codes Spooky answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

/// Headers of a trailers-only gRPC error response.
pub fn error_headers(code: Code, reason: &str, status: StatusCode) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code as u16));
    // A fixed ASCII phrase: no percent-encoding needed (gRPC spec, grpc-message).
    let message = format!("spooky: {reason} ({})", status.as_u16());
    if let Ok(v) = HeaderValue::from_str(&message) {
        h.insert("grpc-message", v);
    }
    h
}

/// Trailers that end a response whose deadline passed while it streamed: the backend's stream
/// is dropped (reset) and the client reads DEADLINE_EXCEEDED, as if the call had failed there.
pub fn deadline_trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert(
        "grpc-status",
        HeaderValue::from(Code::DeadlineExceeded as u16),
    );
    t.insert(
        "grpc-message",
        HeaderValue::from_static("spooky: grpc_deadline (response cut short)"),
    );
    t
}

/// Parses `grpc-timeout` (`<digits><unit>`, unit one of H M S m u n; at most 8 digits).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `grpc-timeout` for `d`, rounded up to whole milliseconds (never shorter than what is left,
/// so the backend does not give up before the proxy does), in the coarsest unit that keeps
/// the value within the 8 digits gRPC allows.
pub fn encode_timeout(d: Duration) -> HeaderValue {
    let ms = d.as_nanos().div_ceil(1_000_000).max(1);
    let v = if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", ms.div_ceil(1000).min(99_999_999))
    };
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("99999999S"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert("grpc-timeout", HeaderValue::from_static(v));
            timeout(&m)
        };
        assert_eq!(h("100m"), Some(Duration::from_millis(100)));
        assert_eq!(h("2S"), Some(Duration::from_secs(2)));
        assert_eq!(h("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(h("123456789S"), None);
        assert_eq!(h("10x"), None);
        assert_eq!(h("m"), None);
    }

    #[test]
    fn encoded_timeouts_round_up_and_parse_back() {
        let enc = |d: Duration| encode_timeout(d).to_str().map(str::to_string).ok();
        assert_eq!(enc(Duration::from_micros(199_001)).as_deref(), Some("200m"));
        assert_eq!(enc(Duration::from_nanos(1)).as_deref(), Some("1m"));
        assert_eq!(enc(Duration::from_secs(3600)).as_deref(), Some("3600000m"));
        assert_eq!(
            enc(Duration::from_secs(10_000_000)).as_deref(),
            Some("10000000S")
        );
        let mut m = HeaderMap::new();
        m.insert("grpc-timeout", encode_timeout(Duration::from_millis(1500)));
        assert_eq!(timeout(&m), Some(Duration::from_millis(1500)));
    }
}
