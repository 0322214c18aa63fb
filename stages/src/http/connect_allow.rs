//! Where a CONNECT tunnel may go: a route's `connect = { allow = [...] }`, default deny.
//!
//! An entry is `HOST:PORTS`. `HOST` is a name (`example.com`), a wildcard (`*.example.com`:
//! any name below it), an address (`127.0.0.1`, `[::1]`) or an address block
//! (`10.0.0.0/8`, `[fd00::/8]`); `PORTS` is a port, a range (`18700-18799`) or `*`. A name
//! target must be named by a name entry, and each address it resolves to that is loopback,
//! private, link-local or otherwise not public must also be covered by an address entry, so a
//! name cannot be pointed at the inside (DNS rebinding); an address target must be covered
//! by an address entry.

use std::net::IpAddr;

use crate::http::forwarded::Cidr;

#[derive(Debug, Clone)]
enum Host {
    /// Lower case, no trailing dot.
    Name(String),
    /// `*.example.com`: the suffix `.example.com`.
    Below(String),
    Block(Cidr),
}

#[derive(Debug, Clone)]
struct Entry {
    host: Host,
    ports: (u16, u16),
}

/// A parsed allowlist.
#[derive(Debug, Clone, Default)]
pub struct Allow {
    entries: Vec<Entry>,
}

/// A CONNECT target: `host:port`, as the request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// The host is an address literal.
    pub ip: Option<IpAddr>,
}

impl Target {
    /// RFC 9110 §9.3.6: the target of a CONNECT is `host:port`, both required.
    pub fn parse(authority: &str) -> Option<Target> {
        let (host, port) = authority.rsplit_once(':')?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        let ip = match bare {
            Some(v6) => Some(IpAddr::V6(v6.parse().ok()?)),
            None if host.contains(':') => return None,
            None => host.parse::<IpAddr>().ok(),
        };
        let host = bare
            .unwrap_or(host)
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return None;
        }
        Some(Target { host, port, ip })
    }
}

impl Target {
    /// The target of a CONNECT-UDP request (RFC 9298 §2), from its path in the default URI
    /// template `/.well-known/masque/udp/{target_host}/{target_port}/`; an IPv6 host has its
    /// colons percent-encoded.
    pub fn from_masque_path(path: &str) -> Option<Target> {
        let rest = path.strip_prefix("/.well-known/masque/udp/")?;
        let mut parts = rest.split('/');
        let (host, port) = (parts.next()?, parts.next()?);
        if !matches!((parts.next(), parts.next()), (None | Some(""), None)) {
            return None;
        }
        let host = host.replace("%3A", ":").replace("%3a", ":");
        if host.contains('%') {
            return None;
        }
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Target::parse(&format!("{host}:{port}"))
    }
}

fn ports(spec: &str) -> Option<(u16, u16)> {
    if spec == "*" {
        return Some((1, u16::MAX));
    }
    let (lo, hi) = spec.split_once('-').unwrap_or((spec, spec));
    let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
    (lo >= 1 && lo <= hi).then_some((lo, hi))
}

impl Allow {
    /// Parses the list; the error names the entry at fault and what was expected.
    pub fn parse(list: &[String]) -> Result<Allow, (usize, String)> {
        let mut entries = Vec::with_capacity(list.len());
        for (i, raw) in list.iter().enumerate() {
            let bad = |why: &str| {
                (
                    i,
                    format!(
                        "\"{raw}\": {why}: expected HOST:PORTS, e.g. \"example.com:443\", \"*.example.com:443\", \"10.0.0.0/8:1-65535\" or \"[::1]:8080\""
                    ),
                )
            };
            let Some((host, port)) = raw.rsplit_once(':') else {
                return Err(bad("no port"));
            };
            let Some(ports) = ports(port) else {
                return Err(bad("the port is not a port, a range or *"));
            };
            let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
            let host = if let Some(v6) = bare {
                Host::Block(Cidr::parse(v6).map_err(|e| bad(&e))?)
            } else if host.contains(':') {
                return Err(bad("an IPv6 address goes in brackets"));
            } else if host.parse::<IpAddr>().is_ok() || host.contains('/') {
                Host::Block(Cidr::parse(host).map_err(|e| bad(&e))?)
            } else if let Some(suffix) = host.strip_prefix("*.") {
                if suffix.is_empty() || suffix.contains('*') {
                    return Err(bad("a wildcard is one leading \"*.\""));
                }
                Host::Below(format!(
                    ".{}",
                    suffix.trim_end_matches('.').to_ascii_lowercase()
                ))
            } else if host.is_empty() || host.contains(['*', '/', '@', ' ']) {
                return Err(bad("not a host name"));
            } else {
                Host::Name(host.trim_end_matches('.').to_ascii_lowercase())
            };
            entries.push(Entry { host, ports });
        }
        Ok(Allow { entries })
    }

    fn any(&self, port: u16, f: impl Fn(&Host) -> bool) -> bool {
        self.entries
            .iter()
            .any(|e| e.ports.0 <= port && port <= e.ports.1 && f(&e.host))
    }

    /// Whether the target as named passes: a listed name, or an address in a listed block.
    pub fn names(&self, target: &Target) -> bool {
        match target.ip {
            Some(ip) => self.covers(ip, target.port),
            None => self.any(target.port, |h| match h {
                Host::Name(n) => *n == target.host,
                Host::Below(suffix) => target.host.ends_with(suffix.as_str()),
                Host::Block(_) => false,
            }),
        }
    }

    /// Whether an address (a target's, or one its name resolved to) may be dialled: a public
    /// one named through a name entry always, any other only inside a listed block.
    pub fn dials(&self, target: &Target, ip: IpAddr) -> bool {
        self.covers(ip, target.port) || (target.ip.is_none() && public(ip))
    }

    fn covers(&self, ip: IpAddr, port: u16) -> bool {
        self.any(port, |h| matches!(h, Host::Block(b) if b.contains(ip)))
    }
}

/// An address on the public internet: not loopback, private (RFC 1918, RFC 4193),
/// link-local, shared (RFC 6598), unspecified, multicast, broadcast or documentation.
pub fn public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => public(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80
                    || first == 0x2001 && v6.segments()[1] == 0x0db8)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(list: &[&str]) -> Allow {
        Allow::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("parses")
    }

    fn target(s: &str) -> Target {
        Target::parse(s).expect("target")
    }

    #[test]
    fn targets_need_a_host_and_a_port() {
        assert_eq!(target("Example.COM.:443").host, "example.com");
        assert_eq!(target("[::1]:80").ip, Some("::1".parse().expect("ip")));
        for bad in [
            "example.com",
            "example.com:0",
            "example.com:x",
            ":443",
            "::1:80",
            "a@b:1",
        ] {
            assert!(Target::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn connect_udp_targets_come_from_the_masque_path() {
        let t = Target::from_masque_path("/.well-known/masque/udp/192.0.2.6/443/").expect("v4");
        assert_eq!((t.host.as_str(), t.port), ("192.0.2.6", 443));
        let t =
            Target::from_masque_path("/.well-known/masque/udp/2001%3Adb8%3A%3A42/53/").expect("v6");
        assert_eq!(t.ip, Some("2001:db8::42".parse().expect("ip")));
        let t = Target::from_masque_path("/.well-known/masque/udp/example.com/53").expect("name");
        assert_eq!((t.host.as_str(), t.ip), ("example.com", None));
        for bad in [
            "/.well-known/masque/udp/example.com/",
            "/.well-known/masque/udp/example.com/0/",
            "/.well-known/masque/udp/a/53/extra/",
            "/masque/udp/a/53/",
            "/.well-known/masque/udp/a%2Fb/53/",
        ] {
            assert!(Target::from_masque_path(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn names_wildcards_blocks_and_ports() {
        let a = allow(&[
            "example.com:443",
            "*.svc.test:8000-8099",
            "127.0.0.1:18700-18799",
            "[fd00::/8]:*",
        ]);
        assert!(a.names(&target("example.com:443")));
        assert!(!a.names(&target("example.com:80")), "port");
        assert!(!a.names(&target("www.example.com:443")), "exact name");
        assert!(a.names(&target("a.b.svc.test:8050")));
        assert!(
            !a.names(&target("svc.test:8050")),
            "a wildcard is below the name"
        );
        assert!(a.names(&target("127.0.0.1:18750")));
        assert!(!a.names(&target("127.0.0.2:18750")));
        assert!(a.names(&target("[fd00::1]:1")));
        assert!(!a.names(&target("10.0.0.1:443")), "default deny");
    }

    #[test]
    fn a_name_cannot_be_pointed_inside_unless_the_inside_is_listed() {
        let a = allow(&["example.com:443", "10.1.0.0/16:443"]);
        let t = target("example.com:443");
        assert!(a.dials(&t, "93.184.216.34".parse().expect("ip")));
        assert!(!a.dials(&t, "127.0.0.1".parse().expect("ip")));
        assert!(!a.dials(&t, "10.2.0.1".parse().expect("ip")));
        assert!(!a.dials(&t, "::ffff:192.168.0.1".parse().expect("ip")));
        assert!(a.dials(&t, "10.1.2.3".parse().expect("ip")));
    }

    #[test]
    fn bad_entries_say_what_was_expected() {
        for bad in [
            "example.com",
            "example.com:0",
            "*:443",
            "a.*.b:1",
            "::1:80",
            "10.0.0.0/33:1",
            "x:9-1",
        ] {
            let e = Allow::parse(&[bad.to_string()]).expect_err(bad);
            assert!(e.1.contains("expected HOST:PORTS"), "{bad}: {}", e.1);
        }
    }
}
