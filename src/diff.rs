//! What changes between two configurations: listeners, routes, upstreams and backends added,
//! removed or changed, and the stages and pipeline keys whose values differ. Reload answers
//! it, logs it, and `spooky check --diff OLD NEW` prints it offline. Two items are compared by
//! their effective value (every default filled in, as `GET /config` shows it), so writing a
//! default out changes nothing.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use spooky_stages::config::{Config, backend_ids};

/// Items of one kind, by name.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    fn between(old: &BTreeMap<String, Value>, new: &BTreeMap<String, Value>) -> Changes {
        let mut c = Changes::default();
        for (k, v) in new {
            match old.get(k) {
                None => c.added.push(k.clone()),
                Some(o) if o != v => c.changed.push(k.clone()),
                Some(_) => {}
            }
        }
        c.removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        c
    }
}

/// Everything that differs between two configurations.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub listeners: Changes,
    pub routes: Changes,
    /// An upstream's own keys (balance, health, retry, …); its members are `backends`.
    pub upstreams: Changes,
    /// `upstream/id`.
    pub backends: Changes,
    /// Stages whose keys changed (bounds or their own keys).
    pub stages: Vec<String>,
    /// `[pipeline]` keys (`chain`, `drain_timeout`, …) and `admin` that changed.
    pub pipeline: Vec<String>,
}

fn value<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// Whether two items have the same effective value.
pub fn same<T: Serialize>(a: &T, b: &T) -> bool {
    value(a) == value(b)
}

/// An object's entries (a serialized struct), or none.
fn entries(v: Value) -> BTreeMap<String, Value> {
    match v {
        Value::Object(m) => m.into_iter().collect(),
        _ => BTreeMap::new(),
    }
}

fn upstreams(c: &Config) -> BTreeMap<String, Value> {
    c.upstreams
        .iter()
        .map(|(n, u)| {
            let mut v = value(u);
            if let Value::Object(m) = &mut v {
                m.remove("backends");
            }
            (n.clone(), v)
        })
        .collect()
}

fn backends(c: &Config) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (n, u) in &c.upstreams {
        for (id, b) in backend_ids(&u.backends).into_iter().zip(&u.backends) {
            out.insert(format!("{n}/{id}"), value(b));
        }
    }
    out
}

impl Diff {
    pub fn between(old: &Config, new: &Config) -> Diff {
        let named = |items: Vec<(String, Value)>| items.into_iter().collect::<BTreeMap<_, _>>();
        let listeners = |c: &Config| {
            named(
                c.listeners
                    .iter()
                    .map(|l| (l.name.clone(), value(l)))
                    .collect(),
            )
        };
        let routes = |c: &Config| {
            named(
                c.routes
                    .iter()
                    .map(|r| (r.name.clone(), value(r)))
                    .collect(),
            )
        };
        let stages = Changes::between(&entries(value(&old.stages)), &entries(value(&new.stages)));
        let mut pipeline = Changes::between(
            &entries(value(&old.pipeline)),
            &entries(value(&new.pipeline)),
        );
        if value(&old.admin) != value(&new.admin) {
            pipeline.changed.push("admin".into());
        }
        Diff {
            listeners: Changes::between(&listeners(old), &listeners(new)),
            routes: Changes::between(&routes(old), &routes(new)),
            upstreams: Changes::between(&upstreams(old), &upstreams(new)),
            backends: Changes::between(&backends(old), &backends(new)),
            stages: stages.changed,
            pipeline: pipeline
                .added
                .into_iter()
                .chain(pipeline.removed)
                .chain(pipeline.changed)
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
            && self.routes.is_empty()
            && self.upstreams.is_empty()
            && self.backends.is_empty()
            && self.stages.is_empty()
            && self.pipeline.is_empty()
    }

    /// One line per change, `+` added, `-` removed, `~` changed: `+ route api`.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (kind, c) in [
            ("listener", &self.listeners),
            ("route", &self.routes),
            ("upstream", &self.upstreams),
            ("backend", &self.backends),
        ] {
            out.extend(c.added.iter().map(|n| format!("+ {kind} {n}")));
            out.extend(c.removed.iter().map(|n| format!("- {kind} {n}")));
            out.extend(c.changed.iter().map(|n| format!("~ {kind} {n}")));
        }
        out.extend(self.stages.iter().map(|n| format!("~ stage {n}")));
        out.extend(self.pipeline.iter().map(|n| format!("~ pipeline {n}")));
        out
    }

    /// A one-line summary for logs: `routes +1 -0 ~2, upstreams …` (only kinds that changed).
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "no changes".into();
        }
        let mut parts = Vec::new();
        for (kind, c) in [
            ("listeners", &self.listeners),
            ("routes", &self.routes),
            ("upstreams", &self.upstreams),
            ("backends", &self.backends),
        ] {
            if !c.is_empty() {
                parts.push(format!(
                    "{kind} +{} -{} ~{}",
                    c.added.len(),
                    c.removed.len(),
                    c.changed.len()
                ));
            }
        }
        if !self.stages.is_empty() {
            parts.push(format!("stages ~{}", self.stages.join(",")));
        }
        if !self.pipeline.is_empty() {
            parts.push(format!("pipeline ~{}", self.pipeline.join(",")));
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        spooky_stages::config::parse("t.toml", text).expect("valid")
    }

    const BASE: &str = r#"
[pipeline]
name = "p"
chain = ["ingress", "route", "select", "dispatch", "egress"]
[[listeners]]
name = "edge"
bind = "127.0.0.1:0"
[[routes]]
name = "a"
match = { path_prefix = "/a" }
upstream = "x"
[[routes]]
name = "b"
match = { path_prefix = "/b" }
upstream = "x"
[upstreams.x]
backends = [{ url = "http://127.0.0.1:1" }, { url = "http://127.0.0.1:2", id = "two" }]
"#;

    #[test]
    fn the_same_file_and_written_out_defaults_are_no_change() {
        let a = parse(BASE);
        assert!(Diff::between(&a, &a).is_empty());
        // Writing a default out is not a change.
        let b = parse(&BASE.replace(
            "upstream = \"x\"\n[[routes]]",
            "upstream = \"x\"\npriority = \"normal\"\n[[routes]]",
        ));
        assert!(
            Diff::between(&a, &b).is_empty(),
            "{:?}",
            Diff::between(&a, &b)
        );
    }

    #[test]
    fn names_what_was_added_removed_and_changed() {
        let a = parse(BASE);
        let b = parse(
            &BASE
                .replace("name = \"b\"", "name = \"c\"")
                .replace("path_prefix = \"/a\"", "path_prefix = \"/aa\"")
                .replace("{ url = \"http://127.0.0.1:2\", id = \"two\" }", "{ url = \"http://127.0.0.1:2\", id = \"two\", weight = 3 }, { url = \"http://127.0.0.1:3\" }")
                .replace("[upstreams.x]", "[stages.dispatch]\nqueue = 7\n[upstreams.x]\nbalance = \"random\""),
        );
        let d = Diff::between(&a, &b);
        assert_eq!(d.routes.added, ["c"]);
        assert_eq!(d.routes.removed, ["b"]);
        assert_eq!(d.routes.changed, ["a"]);
        assert_eq!(d.upstreams.changed, ["x"]);
        assert_eq!(d.backends.added, ["x/127.0.0.1:3"]);
        assert_eq!(d.backends.changed, ["x/two"]);
        assert!(d.backends.removed.is_empty());
        assert_eq!(d.stages, ["dispatch"]);
        assert!(d.lines().contains(&"+ route c".to_string()));
        assert!(d.summary().contains("routes +1 -1 ~1"), "{}", d.summary());
    }
}
