//! Request path normalization, applied by ingress before routing, the same on HTTP/1.1, HTTP/2
//! and HTTP/3, so that a route cannot be walked around with another spelling of its path
//! (`/x/../admin`, `//admin`, `/%61dmin`) and the backend receives exactly the path that was
//! matched.
//!
//! RFC 3986 §6.2.2 syntax-based normalization, in this order:
//! 1. percent-encodings: a `%` must be followed by two hex digits (else 400); encoded
//!    unreserved characters (`A-Z a-z 0-9 - . _ ~`, §2.3) are decoded; the rest are kept with
//!    upper-case hex (§6.2.2.1). `%2F` and `%5C` (a slash or backslash hidden inside a segment)
//!    are refused by default, since backends disagree on whether they separate segments;
//!    `%00` is always refused.
//! 2. repeated slashes are merged (`merge_slashes = "merge"`, the default), as nginx does.
//! 3. dot segments are removed (§5.2.4), also those that were percent-encoded.
//!
//! The query is never touched. Normalizing twice changes nothing, and the result contains no
//! `.`/`..` segment and (when merging) no `//`. This module is pure: it is fuzzed and unit
//! tested without a runtime.

use std::borrow::Cow;

use serde::Deserialize;

/// `[stages.ingress] normalize_path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormalizePath {
    /// RFC 3986 §6 normalization as described above.
    #[default]
    Rfc3986,
    /// Route and forward the path as the client sent it (not for access control).
    Off,
}

/// `[stages.ingress] merge_slashes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MergeSlashes {
    /// `//a///b` → `/a/b`.
    #[default]
    Merge,
    /// Empty segments are kept.
    Keep,
}

/// `[stages.ingress] encoded_slashes`: `%2F` and `%5C` inside a path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EncodedSlashes {
    /// Answer 400.
    #[default]
    Reject,
    /// Keep them encoded (upper-case) inside their segment.
    Keep,
}

/// How to normalize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rules {
    pub merge_slashes: MergeSlashes,
    pub encoded_slashes: EncodedSlashes,
}

/// Why a path was refused (a metric label: `spooky_stage_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathError {
    /// Not origin-form: does not start with `/`.
    NotAbsolute,
    /// `%` not followed by two hex digits.
    BadPercent,
    /// `%2F` or `%5C` with `encoded_slashes = "reject"`.
    EncodedSlash,
    /// `%00`.
    EncodedNul,
}

impl PathError {
    pub fn reason(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "bad_path",
            PathError::BadPercent => "bad_percent_encoding",
            PathError::EncodedSlash => "encoded_slash",
            PathError::EncodedNul => "encoded_nul",
        }
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Whether `path` may need work: a `%`, a `//`, or a segment starting with `.`.
fn needs_work(path: &[u8]) -> bool {
    path.contains(&b'%') || path.windows(2).any(|w| w == b"//" || w == b"/.")
}

/// Normalizes an origin-form path (no query). Borrowed when it is already normal.
pub fn normalize(path: &str, rules: Rules) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if !needs_work(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Percent-encodings.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            decoded.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadPercent);
        };
        let v = hi * 16 + lo;
        match v {
            0 => return Err(PathError::EncodedNul),
            b'/' | b'\\' if rules.encoded_slashes == EncodedSlashes::Reject => {
                return Err(PathError::EncodedSlash);
            }
            v if unreserved(v) => decoded.push(v),
            v => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                decoded.extend_from_slice(&[
                    b'%',
                    HEX[usize::from(v >> 4)],
                    HEX[usize::from(v & 15)],
                ]);
            }
        }
        i += 3;
    }
    // 2 and 3. Segments: merged slashes, then dot segments removed (RFC 3986 §5.2.4).
    let segments: Vec<&[u8]> = decoded[1..].split(|b| *b == b'/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&[u8]> = Vec::with_capacity(segments.len());
    for (n, seg) in segments.into_iter().enumerate() {
        match seg {
            b"." | b".." => {
                if seg == b".." {
                    out.pop();
                }
                // A path ending in a dot segment ends in a slash: `/a/b/..` → `/a/`.
                if n == last {
                    out.push(b"");
                }
            }
            b"" if rules.merge_slashes == MergeSlashes::Merge && n != last => {}
            _ => out.push(seg),
        }
    }
    let mut normal = Vec::with_capacity(decoded.len());
    for seg in &out {
        normal.push(b'/');
        normal.extend_from_slice(seg);
    }
    if normal.is_empty() {
        normal.push(b'/');
    }
    // Only ASCII was decoded and only whole segments removed: still valid UTF-8.
    match String::from_utf8(normal) {
        Ok(s) if s == path => Ok(Cow::Borrowed(path)),
        Ok(s) => Ok(Cow::Owned(s)),
        Err(_) => Err(PathError::BadPercent),
    }
}

/// Path parameters (`;…` at the end of a segment, RFC 3986 §3.3) removed, for route matching
/// only: `/admin;x/y` is matched as `/admin/y`, as servlet containers would serve it.
pub fn without_params(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (n, seg) in path.split('/').enumerate() {
        if n > 0 {
            out.push('/');
        }
        out.push_str(seg.split(';').next().unwrap_or(""));
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p, Rules::default()).map(Cow::into_owned)
    }

    #[test]
    fn walk_arounds_become_the_path_they_mean() {
        for (input, want) in [
            ("/admin", "/admin"),
            ("/x/../admin", "/admin"),
            ("//admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/./admin", "/admin"),
            ("/a/%2e%2e/admin", "/admin"),
            ("/a/%2E%2e/%2e/admin/", "/admin/"),
            ("/../../admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/.hidden/..x", "/a/.hidden/..x"),
            ("/", "/"),
            ("/..", "/"),
            ("//", "/"),
            ("/a//", "/a/"),
            ("/%7euser/%41%5a", "/~user/AZ"),
            ("/a%3fb%20c", "/a%3Fb%20c"),
            ("/a%c3%a9", "/a%C3%A9"),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn hidden_separators_and_bad_encodings_are_refused() {
        assert_eq!(norm("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/a%5cb"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/a%00"), Err(PathError::EncodedNul));
        assert_eq!(norm("/a%zz"), Err(PathError::BadPercent));
        assert_eq!(norm("/a%4"), Err(PathError::BadPercent));
        assert_eq!(norm("a"), Err(PathError::NotAbsolute));
        let keep = Rules {
            encoded_slashes: EncodedSlashes::Keep,
            merge_slashes: MergeSlashes::Keep,
        };
        assert_eq!(normalize("/a%2fb", keep).as_deref(), Ok("/a%2Fb"));
        assert_eq!(normalize("/a//b/../c", keep).as_deref(), Ok("/a//c"));
        assert_eq!(normalize("/a%00", keep), Err(PathError::EncodedNul));
    }

    #[test]
    fn normal_paths_are_borrowed_and_normalizing_twice_changes_nothing() {
        assert!(matches!(norm_cow("/api/v1/users"), Cow::Borrowed(_)));
        for p in [
            "/x/../admin",
            "//a/./b/../../c//",
            "/%2e%2E/%7e",
            "/a/b/c/./../../d",
        ] {
            let once = norm(p).expect("normal");
            assert_eq!(norm(&once).as_deref(), Ok(once.as_str()), "{p}");
        }
    }

    fn norm_cow(p: &str) -> Cow<'_, str> {
        normalize(p, Rules::default()).expect("normal")
    }

    #[test]
    fn params_are_ignored_for_matching() {
        assert_eq!(without_params("/admin;x"), "/admin");
        assert_eq!(without_params("/a;b=1/c;d"), "/a/c");
        assert!(matches!(without_params("/plain"), Cow::Borrowed(_)));
    }
}
