//! Host names as routes and certificates match them: exact or `*.wildcard` patterns, and the
//! host part of an authority.

/// A host matcher.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Lower-cased host name.
    Exact(String),
    /// The suffix after `*`, with its leading dot: `*.example.com` → `.example.com`.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let lower = s.to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid || name.contains('*') {
            return Err(format!(
                "\"{s}\" is not a host pattern: expected a host name (\"api.example.com\") or a wildcard (\"*.example.com\"), without port"
            ));
        }
        Ok(if wild {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }
}

/// The host part of an authority (`example.com:443` → `example.com`, `[::1]:443` → `[::1]`).
pub fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}
