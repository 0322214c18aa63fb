//! A route's compiled matchers, and the view of a request they are tested against.

use std::fmt;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

use super::config::{MatchConfig, OneOrMany, PathCase, RouteProtocol, ValueMatch, compile_regex};
use crate::contract::exchange::ClientProtocol;
use crate::http::host::HostPattern;
use crate::http::key::{cookie, query};

/// What the matchers see of a request: host lower-cased without port and trailing dot, the
/// path as ingress normalized it (without `;params`).
pub struct Req<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub protocol: ClientProtocol,
    pub sni: Option<&'a str>,
}

/// The path matcher.
#[derive(Debug)]
pub enum PathMatch {
    /// Lower-cased when the route's path case is insensitive.
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl PathMatch {
    pub fn describe(&self) -> String {
        match self {
            PathMatch::Exact(p) => format!("path {p}"),
            PathMatch::Prefix(p) => format!("path prefix {p}"),
            PathMatch::Regex(r) => format!("path regex {}", regex_source(r)),
        }
    }
}

fn regex_source(r: &Regex) -> &str {
    let s = r.as_str();
    s.strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(s)
}

#[derive(Debug)]
enum Test {
    Equals(String),
    Present,
    Absent,
    Regex(Regex),
}

impl Test {
    fn compile(v: &ValueMatch) -> Result<Test, String> {
        Ok(match (&v.equals, v.present, v.absent, &v.regex) {
            (Some(e), _, _, _) => Test::Equals(e.clone()),
            (_, Some(true), _, _) => Test::Present,
            (_, _, Some(true), _) => Test::Absent,
            (_, _, _, Some(r)) => Test::Regex(compile_regex(r, false)?),
            _ => return Err("expected exactly one of equals, present, absent, regex".into()),
        })
    }

    /// Whether the values (all of one name) pass.
    fn holds<'v>(&self, mut values: impl Iterator<Item = &'v str>) -> bool {
        match self {
            Test::Equals(e) => values.any(|v| v == e),
            Test::Present => values.next().is_some(),
            Test::Absent => values.next().is_none(),
            Test::Regex(r) => values.any(|v| r.is_match(v)),
        }
    }

    fn describe(&self) -> String {
        match self {
            Test::Equals(e) => format!("equal to {e:?}"),
            Test::Present => "present".into(),
            Test::Absent => "absent".into(),
            Test::Regex(r) => format!("matching {}", regex_source(r)),
        }
    }
}

/// Why a route did not match.
pub struct Miss<'a> {
    what: &'static str,
    name: &'a str,
    test: Option<&'a Test>,
}

impl fmt::Display for Miss<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.test {
            Some(t) => write!(f, "{} {} is not {}", self.what, self.name, t.describe()),
            None if self.name.is_empty() => write!(f, "{} does not match", self.what),
            None => write!(f, "{} is not {}", self.what, self.name),
        }
    }
}

/// The matchers beside host and path.
#[derive(Debug, Default)]
pub struct Conditions {
    pub methods: Vec<Method>,
    headers: Vec<(HeaderName, Test)>,
    query: Vec<(String, Test)>,
    cookies: Vec<(String, Test)>,
    /// Bit per [`ClientProtocol`]; 0: any.
    protocols: u8,
    protocol_names: String,
    sni: Vec<HostPattern>,
    sni_names: String,
}

fn bit(p: ClientProtocol) -> u8 {
    match p {
        ClientProtocol::H3 => 1,
        ClientProtocol::H2 => 2,
        ClientProtocol::Http1 => 4,
    }
}

impl Conditions {
    /// Compiles validated matchers.
    pub fn compile(m: &MatchConfig) -> Result<Conditions, String> {
        let methods = m
            .methods
            .iter()
            .map(|s| Method::from_bytes(s.as_bytes()).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let headers = m
            .headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
                Ok((name, Test::compile(v)?))
            })
            .collect::<Result<_, String>>()?;
        let query = m
            .query
            .iter()
            .map(|(k, v)| Ok((k.clone(), Test::compile(v)?)))
            .collect::<Result<_, String>>()?;
        let cookies = m
            .cookies
            .iter()
            .map(|(k, v)| Ok((k.clone(), Test::compile(v)?)))
            .collect::<Result<_, String>>()?;
        let protocols = m.protocols.iter().fold(0, |acc, p| {
            acc | bit(match p {
                RouteProtocol::H3 => ClientProtocol::H3,
                RouteProtocol::H2 => ClientProtocol::H2,
                RouteProtocol::Http1 => ClientProtocol::Http1,
            })
        });
        let sni_list = m.sni.as_ref().map(OneOrMany::as_slice).unwrap_or_default();
        let sni = sni_list
            .iter()
            .map(|s| HostPattern::parse(s))
            .collect::<Result<_, _>>()?;
        Ok(Conditions {
            methods,
            headers,
            query,
            cookies,
            protocols,
            protocol_names: format!("{:?}", m.protocols).to_lowercase(),
            sni,
            sni_names: sni_list.join(", "),
        })
    }

    /// How many matchers beside host, path and method: more wins over fewer.
    pub fn count(&self) -> usize {
        self.headers.len()
            + self.query.len()
            + self.cookies.len()
            + usize::from(self.protocols != 0)
            + usize::from(!self.sni.is_empty())
    }

    /// Whether every matcher holds; the first that does not, otherwise.
    pub fn check<'s>(&'s self, req: &Req<'_>) -> Result<(), Miss<'s>> {
        let miss = |what, name: &'s str, test| Err(Miss { what, name, test });
        if !self.methods.is_empty() && !self.methods.contains(req.method) {
            return miss("method", "listed", None);
        }
        if self.protocols != 0 && self.protocols & bit(req.protocol) == 0 {
            return miss("protocol", &self.protocol_names, None);
        }
        if !self.sni.is_empty() {
            let ok = req.sni.is_some_and(|sni| {
                self.sni.iter().any(|p| match p {
                    HostPattern::Exact(h) => h == sni,
                    HostPattern::Wildcard(s) => sni.ends_with(s.as_str()) && sni.len() > s.len(),
                })
            });
            if !ok {
                return miss("sni", &self.sni_names, None);
            }
        }
        for (name, test) in &self.headers {
            let values = req
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok());
            if !test.holds(values) {
                return miss("header", name.as_str(), Some(test));
            }
        }
        for (name, test) in &self.query {
            let value = req.query.and_then(|q| query(q, name));
            if !test.holds(value.as_deref().into_iter()) {
                return miss("query parameter", name, Some(test));
            }
        }
        for (name, test) in &self.cookies {
            if !test.holds(cookie(req.headers, name).into_iter()) {
                return miss("cookie", name, Some(test));
            }
        }
        Ok(())
    }
}

/// A route's matchers, compiled.
#[derive(Debug)]
pub struct Matcher {
    pub path: PathMatch,
    pub case_insensitive: bool,
    pub conditions: Conditions,
}

impl Matcher {
    pub fn compile(m: &MatchConfig, case: PathCase) -> Result<Matcher, String> {
        let ci = case == PathCase::Insensitive;
        let fold = |p: &str| {
            if ci {
                p.to_ascii_lowercase()
            } else {
                p.to_string()
            }
        };
        let path = match (&m.path, &m.path_prefix, &m.path_regex) {
            (Some(p), _, _) => PathMatch::Exact(fold(p)),
            (None, Some(p), _) => PathMatch::Prefix(fold(p)),
            (None, None, Some(r)) => PathMatch::Regex(compile_regex(r, ci)?),
            (None, None, None) => PathMatch::Prefix("/".into()),
        };
        Ok(Matcher {
            path,
            case_insensitive: ci,
            conditions: Conditions::compile(m)?,
        })
    }

    /// Whether the path matcher holds (the index only asks this of regex routes and of
    /// explanations: for the others the lookup itself is the test).
    pub fn path_holds(&self, path: &str) -> bool {
        let lower;
        let p = if self.case_insensitive && path.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = path.to_ascii_lowercase();
            lower.as_str()
        } else {
            path
        };
        match &self.path {
            PathMatch::Exact(e) => p == e,
            PathMatch::Prefix(pre) => prefix_holds(pre, p),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// Segment-aware: `/api` holds for `/api` and `/api/x`, not `/apix`; `/api/` only below it.
pub fn prefix_holds(prefix: &str, path: &str) -> bool {
    let path = if path.is_empty() { "/" } else { path };
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

/// The prefixes of `path` a prefix route could have, longest first: the path itself, then at
/// each slash from the end the part with and without it.
pub fn prefixes(path: &str) -> impl Iterator<Item = &str> {
    let path = if path.is_empty() { "/" } else { path };
    let bytes = path.as_bytes();
    let mut out: smallvec::SmallVec<[&str; 16]> = smallvec::SmallVec::new();
    out.push(path);
    for i in (0..bytes.len()).rev() {
        if bytes[i] == b'/' {
            if i + 1 < bytes.len() {
                out.push(&path[..=i]);
            }
            if i > 0 {
                out.push(&path[..i]);
            }
        }
    }
    out.dedup();
    out.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_longest_first() {
        let got: Vec<&str> = prefixes("/a/b/c").collect();
        assert_eq!(got, vec!["/a/b/c", "/a/b/", "/a/b", "/a/", "/a", "/"]);
        let got: Vec<&str> = prefixes("/a/").collect();
        assert_eq!(got, vec!["/a/", "/a", "/"]);
        assert_eq!(prefixes("").collect::<Vec<_>>(), vec!["/"]);
        assert!(prefix_holds("/api", "/api/x"));
        assert!(prefix_holds("/api", "/api"));
        assert!(!prefix_holds("/api", "/apix"));
        assert!(!prefix_holds("/api/", "/api"));
        assert!(prefix_holds("/", "/anything"));
    }
}
