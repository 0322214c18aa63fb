//! Where a backend listens: its URL, parsed.

use std::str::FromStr;

use http::Uri;
use http::uri::{Authority, Scheme};

/// Where a backend listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendAddr {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl BackendAddr {
    /// Parses a backend URL: `http://host:port` or `https://host:port` (a path other than `/`
    /// is refused).
    pub fn parse(url: &str) -> Result<BackendAddr, String> {
        let uri = Uri::from_str(url).map_err(|e| format!("\"{url}\" is not a URL: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => return Err(format!("\"{url}\": expected an http:// or https:// URL")),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("\"{url}\": expected a host, as in http://127.0.0.1:8080"))?;
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(format!("\"{url}\": a backend URL takes no path or query"));
        }
        Ok(BackendAddr { scheme, authority })
    }

    /// `host:port` to connect to (port from the scheme when absent).
    pub fn connect_addr(&self) -> String {
        let port = self
            .authority
            .port_u16()
            .unwrap_or(if self.scheme == Scheme::HTTPS {
                443
            } else {
                80
            });
        format!("{}:{port}", self.authority.host())
    }

    /// Whether the backend is reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }
}
