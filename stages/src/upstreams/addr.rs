//! Where a backend listens: its URL, parsed.

use std::str::FromStr;

use http::Uri;
use http::uri::{Authority, Scheme};

use crate::upstreams::error::UpstreamError;

/// Where a backend listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendAddr {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Where to connect instead of the authority's host (`address`, or a DNS-refreshed member).
    pub connect: Option<std::net::SocketAddr>,
}

impl BackendAddr {
    /// Parses a backend URL: `http://host:port` or `https://host:port` (a path other than `/`
    /// is refused).
    pub fn parse(url: &str) -> Result<BackendAddr, UpstreamError> {
        let uri = Uri::from_str(url).map_err(|source| UpstreamError::NotUrl {
            url: url.to_string(),
            source,
        })?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => return Err(UpstreamError::Scheme(url.to_string())),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| UpstreamError::NoHost(url.to_string()))?;
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(UpstreamError::Path(url.to_string()));
        }
        Ok(BackendAddr {
            scheme,
            authority,
            connect: None,
        })
    }

    /// `host:port` to connect to (port from the scheme when absent).
    pub fn connect_addr(&self) -> String {
        if let Some(a) = self.connect {
            return a.to_string();
        }
        format!("{}:{}", self.authority.host(), self.port())
    }

    /// Whether the URL names its host by a name (not an IP address).
    pub fn is_hostname(&self) -> bool {
        let host = self.authority.host().trim_matches(['[', ']']);
        host.parse::<std::net::IpAddr>().is_err()
    }

    /// The port to connect to (from the scheme when the URL has none).
    pub fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.scheme == Scheme::HTTPS {
                443
            } else {
                80
            })
    }

    /// Whether the backend is reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }
}
