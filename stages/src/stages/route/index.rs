//! The compiled routes of a pipeline, indexed by host then path, never scanned as a list.
//!
//! Candidates are visited in precedence order and the first whose matchers all hold wins:
//! 1. **host**: the exact host's routes, then each matching `*.suffix` wildcard's, longest
//!    suffix first, then the routes without a host. A host group falls back to the next:
//!    `api.example.com` with only an `/admin` route still reaches a host-less `/` route.
//! 2. **path**: an exact `path`, then `path_prefix`es longest first (segment-aware), then
//!    `path_regex`es, then the catch-all prefix `/` (the default when a route gives no path
//!    matcher), so a catch-all never hides a regex route.
//! 3. **more matchers** (headers, query, cookies, protocols, sni; one each) before fewer.
//! 4. **method-specific** before any method.
//! 5. Only routes equal in all of that are ordered by the file; `spooky check` warns.

use std::cmp::Reverse;
/// Hash maps with a fast string hash: their keys come from the config, so a client's
/// lookups cannot flood them.
type HashMap<K, V> = foldhash::HashMap<K, V>;
use std::sync::Arc;

use super::matcher::{Matcher, PathMatch, Req, prefixes};
use crate::contract::route::Route;

/// A route's place in the precedence order (greater wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Spec {
    /// 2 exact, 1 wildcard, 0 none; then the wildcard's length.
    pub host: (u8, usize),
    /// 3 exact, 2 prefix, 1 regex, 0 the catch-all `/`; then the path's length.
    pub path: (u8, usize),
    pub matchers: usize,
    pub method: bool,
}

/// One route in one host group.
pub struct Entry {
    pub route: Arc<Route>,
    pub matcher: Arc<Matcher>,
    pub spec: Spec,
    /// Position in the file.
    pub order: usize,
    /// The host pattern it was filed under (`""`: none), for explanations.
    pub host: String,
}

impl Entry {
    /// Order within one path key: more matchers, method-specific, then file order.
    fn key(&self) -> (Reverse<usize>, Reverse<bool>, usize) {
        (
            Reverse(self.spec.matchers),
            Reverse(self.spec.method),
            self.order,
        )
    }
}

/// The routes of one host group.
#[derive(Default)]
struct Group {
    exact: HashMap<String, Vec<Entry>>,
    exact_ci: HashMap<String, Vec<Entry>>,
    prefix: HashMap<String, Vec<Entry>>,
    prefix_ci: HashMap<String, Vec<Entry>>,
    regex: Vec<Entry>,
    has_ci: bool,
    /// The longest prefix key, and whether any (other than `/`) ends with a slash: prefixes
    /// of a path that cannot be keys are not looked up.
    longest_prefix: usize,
    slash_prefixes: bool,
}

impl Group {
    fn insert(&mut self, e: Entry) {
        let ci = e.matcher.case_insensitive;
        self.has_ci |= ci;
        if let PathMatch::Prefix(p) = &e.matcher.path {
            self.longest_prefix = self.longest_prefix.max(p.len());
            self.slash_prefixes |= p.len() > 1 && p.ends_with('/');
        }
        let list = match (&e.matcher.path, ci) {
            (PathMatch::Exact(p), false) => self.exact.entry(p.clone()).or_default(),
            (PathMatch::Exact(p), true) => self.exact_ci.entry(p.clone()).or_default(),
            (PathMatch::Prefix(p), false) => self.prefix.entry(p.clone()).or_default(),
            (PathMatch::Prefix(p), true) => self.prefix_ci.entry(p.clone()).or_default(),
            (PathMatch::Regex(_), _) => &mut self.regex,
        };
        list.push(e);
        list.sort_by_key(Entry::key);
    }

    fn lists(&self) -> impl Iterator<Item = &Vec<Entry>> {
        self.exact
            .values()
            .chain(self.exact_ci.values())
            .chain(self.prefix.values())
            .chain(self.prefix_ci.values())
            .chain(std::iter::once(&self.regex))
    }

    /// Calls `f` with each candidate whose path matches, in precedence order, until it says
    /// stop (`true`). Returns whether it stopped.
    fn visit<'a>(&'a self, req: &Req<'_>, f: &mut dyn FnMut(&'a Entry) -> bool) -> bool {
        let path = if req.path.is_empty() { "/" } else { req.path };
        let lower = self.has_ci.then(|| path.to_ascii_lowercase());
        let ci = |map: &'a HashMap<String, Vec<Entry>>, p: &str| {
            lower.as_ref().and_then(|l| map.get(&l[..p.len()]))
        };
        if merged(self.exact.get(path), ci(&self.exact_ci, path), f) {
            return true;
        }
        for p in prefixes(path) {
            if p == "/"
                || p.len() > self.longest_prefix
                || (p.ends_with('/') && !self.slash_prefixes)
            {
                continue;
            }
            if merged(self.prefix.get(p), ci(&self.prefix_ci, p), f) {
                return true;
            }
        }
        if self
            .regex
            .iter()
            .any(|e| e.matcher.path_holds(path) && f(e))
        {
            return true;
        }
        merged(self.prefix.get("/"), self.prefix_ci.get("/"), f)
    }
}

/// Visits two sorted lists of equal path rank as one.
fn merged<'a>(
    a: Option<&'a Vec<Entry>>,
    b: Option<&'a Vec<Entry>>,
    f: &mut dyn FnMut(&'a Entry) -> bool,
) -> bool {
    let (a, b) = (
        a.map_or(&[][..], Vec::as_slice),
        b.map_or(&[][..], Vec::as_slice),
    );
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let take_a = j >= b.len() || (i < a.len() && a[i].key() <= b[j].key());
        let e = if take_a {
            i += 1;
            &a[i - 1]
        } else {
            j += 1;
            &b[j - 1]
        };
        if f(e) {
            return true;
        }
    }
    false
}

/// Two routes only the file orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tie {
    pub first: String,
    pub second: String,
}

/// All routes of a pipeline, compiled.
#[derive(Default)]
pub struct RouteIndex {
    exact: HashMap<String, Group>,
    wildcard: HashMap<String, Group>,
    any: Group,
    routes: Vec<Arc<Route>>,
}

/// A candidate in an explanation.
pub struct Candidate<'a> {
    pub entry: &'a Entry,
    /// `None`: every matcher holds.
    pub miss: Option<String>,
}

impl RouteIndex {
    /// Files a route under each of its hosts (`[]`: none).
    pub(super) fn insert(
        &mut self,
        route: Arc<Route>,
        matcher: Arc<Matcher>,
        hosts: &[crate::http::host::HostPattern],
        order: usize,
    ) {
        use crate::http::host::HostPattern;
        let path = match &matcher.path {
            PathMatch::Exact(p) => (3, p.len()),
            PathMatch::Prefix(p) if p == "/" => (0, 1),
            PathMatch::Prefix(p) => (2, p.len()),
            PathMatch::Regex(_) => (1, 0),
        };
        let spec = |host| Spec {
            host,
            path,
            matchers: matcher.conditions.count(),
            method: !matcher.conditions.methods.is_empty(),
        };
        let entry = |host, name: String| Entry {
            route: route.clone(),
            matcher: matcher.clone(),
            spec: spec(host),
            order,
            host: name,
        };
        if hosts.is_empty() {
            self.any.insert(entry((0, 0), String::new()));
        }
        for h in hosts {
            match h {
                HostPattern::Exact(name) => self
                    .exact
                    .entry(name.clone())
                    .or_default()
                    .insert(entry((2, name.len()), name.clone())),
                HostPattern::Wildcard(suffix) => self
                    .wildcard
                    .entry(suffix.clone())
                    .or_default()
                    .insert(entry((1, suffix.len()), format!("*{suffix}"))),
            }
        }
        self.routes.push(route);
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Every route, in file order.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    /// Every host group, in no particular order.
    fn all_groups(&self) -> impl Iterator<Item = &Group> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .chain(std::iter::once(&self.any))
    }

    /// The host groups a request's host falls into, most specific first.
    fn groups(&self, host: &str) -> smallvec::SmallVec<[&Group; 4]> {
        let mut out = smallvec::SmallVec::new();
        out.extend(self.exact.get(host));
        if !self.wildcard.is_empty() {
            for (i, b) in host.bytes().enumerate() {
                if b == b'.' {
                    out.extend(self.wildcard.get(&host[i..]));
                }
            }
        }
        out.push(&self.any);
        out
    }

    /// Visits candidates in precedence order until `f` says stop.
    fn visit<'a>(&'a self, req: &Req<'_>, f: &mut dyn FnMut(&'a Entry) -> bool) {
        for g in self.groups(req.host) {
            if g.visit(req, f) {
                return;
            }
        }
    }

    /// The route for a request.
    pub fn lookup(&self, req: &Req<'_>) -> Option<&Entry> {
        let mut found = None;
        self.visit(req, &mut |e| {
            let ok = e.matcher.conditions.check(req).is_ok();
            if ok {
                found = Some(e);
            }
            ok
        });
        found
    }

    /// Every candidate whose host and path match, in precedence order, with why it did not
    /// match; the first without a miss is the one chosen.
    pub fn explain(&self, req: &Req<'_>) -> Vec<Candidate<'_>> {
        let mut out = Vec::new();
        self.visit(req, &mut |e| {
            out.push(Candidate {
                entry: e,
                miss: e.matcher.conditions.check(req).err().map(|m| m.to_string()),
            });
            false
        });
        out
    }

    /// Pairs of routes equal in precedence that could take the same request (their methods
    /// overlap): only their order in the file decides between them.
    pub fn ties(&self) -> Vec<Tie> {
        let mut out = Vec::new();
        for g in self.all_groups() {
            for list in g.lists() {
                for (i, a) in list.iter().enumerate() {
                    for b in &list[i + 1..] {
                        if a.key().0 != b.key().0 || a.key().1 != b.key().1 {
                            break;
                        }
                        let (ma, mb) =
                            (&a.matcher.conditions.methods, &b.matcher.conditions.methods);
                        let overlap =
                            ma.is_empty() || mb.is_empty() || ma.iter().any(|m| mb.contains(m));
                        if overlap {
                            out.push(Tie {
                                first: a.route.name.clone(),
                                second: b.route.name.clone(),
                            });
                        }
                    }
                }
            }
        }
        out.sort_by(|x, y| (&x.first, &x.second).cmp(&(&y.first, &y.second)));
        out.dedup();
        out
    }
}

impl RouteIndex {
    /// Regex routes an unconditional prefix route of the same host group always beats:
    /// (regex route, prefix route). Found from the regex's literal start.
    pub fn shadowed(&self) -> Vec<Tie> {
        let mut out = Vec::new();
        for g in self.all_groups() {
            for r in &g.regex {
                let PathMatch::Regex(re) = &r.matcher.path else {
                    continue;
                };
                let literal = literal_start(re.as_str());
                for (key, list) in g.prefix.iter().filter(|(k, _)| k.as_str() != "/") {
                    let covers = literal.starts_with(key.as_str())
                        && (key.ends_with('/') || literal.as_bytes().get(key.len()) == Some(&b'/'));
                    if !covers {
                        continue;
                    }
                    if let Some(e) = list.iter().find(|e| e.spec.matchers == 0 && !e.spec.method) {
                        out.push(Tie {
                            first: r.route.name.clone(),
                            second: e.route.name.clone(),
                        });
                    }
                }
            }
        }
        out.sort_by(|x, y| (&x.first, &x.second).cmp(&(&y.first, &y.second)));
        out
    }
}

/// The text every match of an anchored route regex (`^(?:…)$`) starts with.
fn literal_start(anchored: &str) -> String {
    let src = anchored
        .strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(anchored);
    let mut out = String::new();
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        if "\\.+*?()|[]{}^$".contains(c) {
            break;
        }
        // A quantifier after it makes this character optional.
        if matches!(chars.peek(), Some('?' | '*' | '{')) {
            break;
        }
        out.push(c);
    }
    out
}

/// Why `winner` beat `loser` (both matched).
pub fn why_lost(winner: &Entry, loser: &Entry) -> String {
    let (w, l) = (&winner.spec, &loser.spec);
    if w.host != l.host {
        let kind = |h: (u8, usize), name: &str| match h.0 {
            2 => format!("exact host {name}"),
            1 => format!("wildcard {name}"),
            _ => "no host".to_string(),
        };
        return format!(
            "{} beats {}",
            kind(w.host, &winner.host),
            kind(l.host, &loser.host)
        );
    }
    if w.path != l.path {
        return format!(
            "{} beats {}",
            winner.matcher.path.describe(),
            loser.matcher.path.describe()
        );
    }
    if w.matchers != l.matchers {
        return format!("{} matchers beat {}", w.matchers, l.matchers);
    }
    if w.method != l.method {
        return "a listed method beats any method".to_string();
    }
    "equal precedence: earlier in the file".to_string()
}
