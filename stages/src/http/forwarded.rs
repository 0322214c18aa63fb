//! Forwarding headers: whose `X-Forwarded-For` is believed (trusted proxies, as CIDRs), the
//! client address that follows from it, and the RFC 7239 `Forwarded` element a hop adds.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use serde::Deserialize;

/// What a hop does with `X-Forwarded-For/-Proto/-Host` and `Forwarded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Add this hop to what a trusted proxy sent (what anyone else sent is dropped first).
    #[default]
    Append,
    /// Drop what the client sent; send this hop only (at the edge).
    Replace,
    /// Send none of them.
    #[serde(alias = "off")]
    Strip,
}

/// An address block, `10.0.0.0/8` or `2001:db8::/32` (a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || {
            format!("\"{s}\" is not an address block: expected e.g. \"10.0.0.0/8\" or \"::1/128\"")
        };
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if bits > max {
            return Err(bad());
        }
        Ok(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}/{}", self.net, self.bits))
    }
}

/// Whether `ip` is in any of `blocks`.
pub fn trusted(blocks: &[Cidr], ip: IpAddr) -> bool {
    blocks.iter().any(|b| b.contains(ip))
}

/// The client's address as a chain of trusted proxies reports it: `X-Forwarded-For` read from
/// the right, skipping trusted addresses; the first one that is not trusted is the client.
/// Only called for a trusted peer; a malformed entry stops the walk there (the last trusted
/// hop is then the best we know).
pub fn client_behind(peer: IpAddr, headers: &HeaderMap, blocks: &[Cidr]) -> IpAddr {
    let mut client = peer;
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for e in entries.iter().rev() {
        let Ok(ip) = e.parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !trusted(blocks, ip) {
            break;
        }
    }
    client
}

/// The client's address as `X-Forwarded-For` writes it. IPv4 without `core::fmt` (made on
/// every request; `Ipv4Addr`'s `Display` pads through a buffer and cost a twelfth of
/// preparing an attempt, by callgrind's count).
pub fn ip_value(ip: IpAddr) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string());
    };
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    HeaderValue::from_bytes(&buf[..n])
}

/// One RFC 7239 element: `for=…;proto=…;host=…` (IPv6 quoted and bracketed; the host quoted
/// when it carries a port).
pub fn element(client: IpAddr, proto: &str, host: Option<&str>) -> String {
    let mut out = match client {
        IpAddr::V4(v4) => format!("for={v4}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    };
    out.push_str(";proto=");
    out.push_str(proto);
    if let Some(h) = host {
        if h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            out.push_str(";host=");
            out.push_str(h);
        } else {
            out.push_str(";host=\"");
            out.push_str(&h.replace('\\', "\\\\").replace('"', "\\\""));
            out.push('"');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for a in [
            "0.0.0.0",
            "127.0.0.1",
            "10.0.12.1",
            "100.99.9.255",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
            "::ffff:10.0.0.1",
        ] {
            let v = ip_value(ip(a)).expect("a header value");
            assert_eq!(v.to_str().expect("ascii"), ip(a).to_string(), "{a}");
        }
    }

    #[test]
    fn blocks_contain_their_addresses() {
        let b = Cidr::parse("10.0.0.0/8").expect("cidr");
        assert!(b.contains(ip("10.1.2.3")));
        assert!(!b.contains(ip("11.0.0.1")));
        assert!(b.contains(ip("::ffff:10.0.0.1")));
        let one = Cidr::parse("127.0.0.1").expect("host");
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6 = Cidr::parse("2001:db8::/32").expect("v6");
        assert!(v6.contains(ip("2001:db8::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("all")
                .contains(ip("1.2.3.4"))
        );
        for bad in ["10.0.0.0/33", "nope", "10.0.0/8", "::/129", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_first_untrusted_address_from_the_right() {
        let blocks = [Cidr::parse("10.0.0.0/8").expect("cidr")];
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().expect("v"));
        h.append("x-forwarded-for", "10.0.0.5".parse().expect("v"));
        // 10.0.0.5 is a trusted hop; 2.2.2.2 is the client (1.1.1.1 is what it claimed).
        assert_eq!(client_behind(ip("10.0.0.1"), &h, &blocks), ip("2.2.2.2"));
        let mut bad = HeaderMap::new();
        bad.append("x-forwarded-for", "junk, 10.0.0.7".parse().expect("v"));
        assert_eq!(client_behind(ip("10.0.0.1"), &bad, &blocks), ip("10.0.0.7"));
        assert_eq!(
            client_behind(ip("10.0.0.1"), &HeaderMap::new(), &blocks),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn elements_quote_what_needs_it() {
        assert_eq!(
            element(ip("1.2.3.4"), "https", Some("a.test")),
            "for=1.2.3.4;proto=https;host=a.test"
        );
        assert_eq!(
            element(ip("::1"), "http", Some("a.test:8443")),
            "for=\"[::1]\";proto=http;host=\"a.test:8443\""
        );
        assert_eq!(
            element(ip("1.2.3.4"), "https", None),
            "for=1.2.3.4;proto=https"
        );
    }
}
