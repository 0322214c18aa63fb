//! Loading a pipeline TOML: parse with spans, deserialize each section on its own (so one bad
//! section does not hide the problems of the others), then validate references, order and
//! bounds — collecting every problem, each with file, line, column and key.

mod error;
mod model;
mod validate;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

pub use crate::units::{Dur, Size, parse_duration, parse_size};
pub(crate) use error::Source;
pub use error::{ConfigError, ConfigErrors};
pub use model::*;

const TOP_LEVEL: [&str; 8] = [
    "pipeline",
    "listeners",
    "admin",
    "stages",
    "routes",
    "upstreams",
    "access_log",
    "tracing",
];

/// Reads and validates a pipeline file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&file, &text),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file,
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        }])),
    }
}

/// Parses and validates a pipeline TOML text; `file` names it in messages.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigErrors> {
    let src = Source { file, text };
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            return Err(ConfigErrors(vec![src.error(
                e.span(),
                "",
                format!("invalid TOML: {}", e.message().trim()),
            )]));
        }
    };
    let mut cx = Cx {
        src: &src,
        errors: Vec::new(),
        warnings: Vec::new(),
        extra_keys: &[],
    };
    let table = root.get_ref();
    for (key, _) in table.iter() {
        if !TOP_LEVEL.contains(&key.get_ref().as_ref()) {
            cx.push(
                Some(key.span()),
                key.get_ref(),
                format!("unknown section, expected one of {}", TOP_LEVEL.join(", ")),
            );
        }
    }

    let pipeline: Option<PipelineConfig> = match table.get("pipeline") {
        Some(v) => cx.de(v, "pipeline"),
        None => {
            cx.push(
                Some(0..0),
                "pipeline",
                "missing [pipeline] section (name, chain)",
            );
            None
        }
    };
    let listeners: Vec<ListenerConfig> = cx.array(table.get("listeners"), "listeners");
    let admin: Option<AdminConfig> = table.get("admin").and_then(|v| cx.de(v, "admin"));
    let routes: Vec<RouteConfig> = cx.array(table.get("routes"), "routes");
    let mut upstreams = BTreeMap::new();
    if let Some(v) = table.get("upstreams") {
        for (name, value) in cx.entries(v, "upstreams") {
            let key = format!("upstreams.{name}");
            if let Some(u) = cx.de::<UpstreamConfig>(value, &key) {
                upstreams.insert(name.to_string(), u);
            }
        }
    }
    let stages = cx.stages(table.get("stages"));
    let access_log = table
        .get("access_log")
        .and_then(|v| cx.de(v, "access_log"))
        .unwrap_or_default();
    let tracing = table.get("tracing").and_then(|v| cx.de(v, "tracing"));

    // A broken [pipeline] (already reported) must not hide the rest of the file: the rest is
    // checked against a stand-in with the whole chain, whose own findings are dropped.
    let stand_in = pipeline.is_none();
    let pipeline = pipeline.unwrap_or_else(|| PipelineConfig {
        name: String::new(),
        chain: StageKind::ALL
            .iter()
            .map(|k| k.name().to_string())
            .collect(),
        drain_timeout: model::default_drain_timeout(),
        drain_linger: model::default_drain_linger(),
        workers: crate::units::Workers::Auto,
    });
    let mut config = Config {
        file: file.to_string(),
        pipeline,
        chain: Vec::new(),
        listeners,
        admin,
        stages,
        routes,
        upstreams,
        access_log,
        tracing,
        warnings: Vec::new(),
    };
    if let Some(dir) = Path::new(file)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        resolve_paths(&mut config, dir);
    }
    let before = cx.errors.len();
    validate::validate(&mut cx, &root, &mut config);
    if stand_in {
        let mut i = before;
        while i < cx.errors.len() {
            if cx.errors[i].key.starts_with("pipeline") {
                cx.errors.remove(i);
            } else {
                i += 1;
            }
        }
        return Err(cx.finish());
    }
    if cx.errors.is_empty() {
        cx.warnings.sort_by_key(|e| (e.line, e.column));
        config.warnings = cx.warnings;
        Ok(config)
    } else {
        Err(cx.finish())
    }
}

/// Relative file paths (certificates, keys, CAs, the token) are relative to the config
/// file's directory, not to wherever the daemon was started: made absolute here, so errors
/// and `/config` show the path that is read.
fn resolve_paths(config: &mut Config, dir: &Path) {
    let fix = |p: &mut std::path::PathBuf| {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    };
    for l in &mut config.listeners {
        if let TlsSetting::Files(t) = &mut l.tls {
            t.cert.iter_mut().for_each(fix);
            t.key.iter_mut().for_each(fix);
            t.client_ca.iter_mut().for_each(fix);
            for c in &mut t.certificates {
                fix(&mut c.cert);
                fix(&mut c.key);
            }
        }
    }
    if let Some(a) = &mut config.admin {
        a.token_file.iter_mut().for_each(fix);
    }
    if let Some(crate::access_log::Dest::File(mut p)) =
        crate::access_log::Dest::parse(&config.access_log.path)
    {
        fix(&mut p);
        config.access_log.path = p.display().to_string();
    }
    for u in config.upstreams.values_mut() {
        let t = &mut u.tls;
        for p in [
            &mut t.ca_file,
            &mut t.ca_dir,
            &mut t.client_cert,
            &mut t.client_key,
        ] {
            p.iter_mut().for_each(fix);
        }
    }
}

/// Collects errors while walking one document.
pub(crate) struct Cx<'a> {
    pub src: &'a Source<'a>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
    /// Keys a table takes besides its own (a stage table's common keys), for "did you mean".
    extra_keys: &'static [&'static str],
}

impl Cx<'_> {
    pub fn push(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        self.errors.push(self.src.error(span, key, message));
    }

    /// Something valid that probably does not do what was meant.
    pub fn warn(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        self.warnings.push(self.src.error(span, key, message));
    }

    fn finish(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|e| (e.line, e.column));
        self.errors.dedup();
        ConfigErrors(self.errors)
    }

    /// Deserializes one value, recording its problems. Serde stops at the first problem in a
    /// table, so the key at fault is taken out and the rest tried again, until the table has
    /// no more to report: every bad key of a table is reported at once.
    fn de<T: DeserializeOwned>(&mut self, v: &Spanned<DeValue<'_>>, key: &str) -> Option<T> {
        let mut current = v.clone();
        let mut failed = false;
        let mut removed: Vec<String> = Vec::new();
        for _ in 0..64 {
            match T::deserialize(ValueDeserializer::from(current.clone())) {
                Ok(t) => return (!failed).then_some(t),
                Err(e) => {
                    failed = true;
                    // A required key taken out above is missing now: already reported.
                    if removed
                        .iter()
                        .any(|k| e.message().contains(&format!("missing field `{k}`")))
                    {
                        return None;
                    }
                    let span = e.span().unwrap_or_else(|| current.span());
                    let DeValue::Table(t) = current.get_ref() else {
                        self.push(
                            Some(span),
                            key,
                            friendly(e.message().trim(), self.extra_keys),
                        );
                        return None;
                    };
                    // The entry at fault: its key or its value holds the error's position.
                    let inside = |r: Range<usize>| {
                        r.start <= span.start && span.start < r.end.max(r.start + 1)
                    };
                    let at_fault = t.iter().find(|(k, v)| inside(k.span()) || inside(v.span()));
                    let Some((k, _)) = at_fault else {
                        self.push(
                            Some(span),
                            key,
                            friendly(e.message().trim(), self.extra_keys),
                        );
                        return None;
                    };
                    self.push(
                        Some(span),
                        &format!("{key}.{}", k.get_ref()),
                        friendly(e.message().trim(), self.extra_keys),
                    );
                    let k: String = k.get_ref().to_string();
                    let mut rest = t.clone();
                    rest.remove(k.as_str());
                    removed.push(k);
                    current = Spanned::new(current.span(), DeValue::Table(rest));
                }
            }
        }
        None
    }

    /// Deserializes each element of an array of tables on its own.
    fn array<T: DeserializeOwned>(
        &mut self,
        v: Option<&Spanned<DeValue<'_>>>,
        key: &str,
    ) -> Vec<T> {
        let Some(v) = v else { return Vec::new() };
        let Some(items) = v.get_ref().as_array() else {
            self.push(
                Some(v.span()),
                key,
                format!("expected an array of tables ([[{key}]])"),
            );
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.de(item, &format!("{key}[{i}]")))
            .collect()
    }

    /// The entries of a table, or an error if it is not one.
    fn entries<'v, 'i>(
        &mut self,
        v: &'v Spanned<DeValue<'i>>,
        key: &str,
    ) -> Vec<(&'v str, &'v Spanned<DeValue<'i>>)> {
        match v.get_ref().as_table() {
            Some(t) => t.iter().map(|(k, v)| (k.get_ref().as_ref(), v)).collect(),
            None => {
                self.push(Some(v.span()), key, "expected a table");
                Vec::new()
            }
        }
    }

    /// `[stages.<kind>]`: the common keys (queue, concurrency, when_full) apart from the
    /// stage's own, each set checked for unknown keys.
    fn stages(&mut self, v: Option<&Spanned<DeValue<'_>>>) -> StagesConfig {
        let mut out = StagesConfig::default();
        let Some(v) = v else { return out };
        for (name, value) in self.entries(v, "stages") {
            let key = format!("stages.{name}");
            let Some(kind) = StageKind::from_name(name) else {
                let names: Vec<_> = StageKind::ALL.iter().map(|k| k.name()).collect();
                self.push(
                    Some(value.span()),
                    &key,
                    format!("unknown stage, expected one of {}", names.join(", ")),
                );
                continue;
            };
            let Some(table) = value.get_ref().as_table() else {
                self.push(Some(value.span()), &key, "expected a table");
                continue;
            };
            let mut own = table.clone();
            let mut common = DeTable::new();
            for k in ["queue", "concurrency", "when_full"] {
                if let Some((k, v)) = own.remove_entry(k) {
                    common.insert(k, v);
                }
            }
            let span = value.span();
            let common = Spanned::new(span.clone(), DeValue::Table(common));
            let own = Spanned::new(span, DeValue::Table(own));
            if let Some(raw) = self.de::<StageCommonRaw>(&common, &key) {
                let d = kind.default_settings();
                out.settings[kind as usize] = StageSettings {
                    queue: raw.queue.unwrap_or(d.queue),
                    concurrency: raw.concurrency.unwrap_or(d.concurrency),
                    when_full: raw.when_full.unwrap_or(d.when_full),
                };
            }
            self.extra_keys = &["queue", "concurrency", "when_full"];
            match kind {
                StageKind::Ingress => self.de(&own, &key).map(|c| out.ingress = c),
                StageKind::Admission => self.de(&own, &key).map(|c| out.admission = c),
                StageKind::Route => self.de(&own, &key).map(|c| out.route = c),
                StageKind::Queue => self.de(&own, &key).map(|c| out.queue = c),
                StageKind::Select => self.de(&own, &key).map(|c| out.select = c),
                StageKind::HedgeRetry => self.de(&own, &key).map(|c| out.hedge_retry = c),
                StageKind::Dispatch => self.de(&own, &key).map(|c| out.dispatch = c),
                StageKind::Egress => self.de(&own, &key).map(|c| out.egress = c),
            };
            self.extra_keys = &[];
        }
        out
    }
}

/// Serde's wording, said in config terms: "did you mean" for a misspelled key (among
/// `extra` keys too: a stage table's `queue`, `concurrency`, `when_full`), numbers described
/// as a config writer knows them.
fn friendly(message: &str, extra: &[&str]) -> String {
    if message == "invalid socket address syntax" {
        return "invalid socket address: expected IP:PORT, e.g. \"127.0.0.1:8443\"".to_string();
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let quoted: Vec<&str> = rest.split('`').step_by(2).collect();
        let (field, known) = quoted.split_first().unwrap_or((&"", &[]));
        let mut candidates: Vec<&str> = known.to_vec();
        candidates.extend(extra.iter().copied().filter(|e| !known.contains(e)));
        let mut out = format!("unknown key `{field}`");
        out.push_str(&validate::did_you_mean(field, candidates.iter().copied()));
        if candidates.is_empty() {
            out.push_str(": this table takes no keys");
        } else {
            let list: Vec<String> = candidates.iter().map(|c| format!("`{c}`")).collect();
            out.push_str(&format!(", expected one of {}", list.join(", ")));
        }
        return out;
    }
    let mut m = message.to_string();
    for (rust, plain) in [
        (
            "expected a nonzero usize",
            "expected a positive integer (1 or more)",
        ),
        (
            "expected a nonzero u32",
            "expected a positive integer (1 or more)",
        ),
        (
            "expected a nonzero u64",
            "expected a positive integer (1 or more)",
        ),
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("invalid type: integer", "invalid value: the number"),
    ] {
        m = m.replace(rust, plain);
    }
    m
}

/// The span of the value at a key path (`["routes", "1", "upstream"]`), or of the nearest
/// ancestor that exists.
pub(crate) fn span_at(root: &Spanned<DeTable<'_>>, path: &[&str]) -> Range<usize> {
    let mut span = root.span();
    let mut cur: Option<&Spanned<DeValue<'_>>> = None;
    for (i, seg) in path.iter().enumerate() {
        let next = if i == 0 {
            root.get_ref().get(*seg)
        } else {
            match cur.map(|c| c.get_ref()) {
                Some(DeValue::Table(t)) => t.get(*seg),
                Some(DeValue::Array(a)) => seg.parse::<usize>().ok().and_then(|n| a.get(n)),
                _ => None,
            }
        };
        match next {
            Some(v) => {
                span = v.span();
                cur = Some(v);
            }
            None => break,
        }
    }
    span
}

#[cfg(test)]
mod tests;
