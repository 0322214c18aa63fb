//! The access log: one line per exchange, made from its end-of-exchange record.
//!
//! `[access_log] path` says where (`stdout`, `stderr`, a file, `off`), `format` how (`json`
//! with the stable field names of `docs/observability.md`, or a compact `text`), `sample`
//! which share of the exchanges that went well; an exchange the proxy refused or that
//! failed (a reason, a 5xx, a cut stream) is always logged. A route opts out with
//! `access_log = false`. The line is made on the exchange's own task and handed to the
//! destination's writer thread without waiting ([`writer`]).

pub mod writer;

use std::fmt::Write as _;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::contract::record::{Outcome, Record};
pub use writer::{Dest, reopen_all};

/// `[access_log]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `"stdout"`, `"stderr"`, a file path (reopened on SIGUSR1), or `"off"`.
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default)]
    pub format: Format,
    /// The share of exchanges logged (0 to 1); refusals and failures are always logged.
    #[serde(default = "default_sample")]
    pub sample: f64,
    /// Lines waiting for the writer; beyond it lines are dropped and counted
    /// (`spooky_access_log_dropped_total`), never waited for.
    #[serde(default = "default_buffer")]
    pub buffer: NonZeroUsize,
}

fn default_path() -> String {
    "off".into()
}

fn default_sample() -> f64 {
    1.0
}

fn default_buffer() -> NonZeroUsize {
    NonZeroUsize::new(16 * 1024).unwrap_or(NonZeroUsize::MIN)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path: default_path(),
            format: Format::default(),
            sample: default_sample(),
            buffer: default_buffer(),
        }
    }
}

/// `format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Text,
}

/// A generation's access log: where, how, how much.
pub struct AccessLog {
    writer: Arc<writer::Writer>,
    format: Format,
    /// `sample` scaled to `u64::MAX`.
    threshold: u64,
}

impl AccessLog {
    /// The log `config` asks for, `None` when it is off; opening the file may fail.
    pub fn open(config: &Config) -> std::io::Result<Option<AccessLog>> {
        writer::describe();
        let Some(dest) = Dest::parse(&config.path) else {
            return Ok(None);
        };
        Ok(Some(AccessLog {
            writer: writer::open(&dest, config.buffer.get())?,
            format: config.format,
            threshold: (config.sample.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
        }))
    }

    /// Logs `r`, when its route and the sample say so.
    pub fn log(&self, r: &Record) {
        if !self.wants(r) {
            return;
        }
        let line = match self.format {
            Format::Json => json(r),
            Format::Text => text(r),
        };
        self.writer.send(line);
    }

    fn wants(&self, r: &Record) -> bool {
        if r.route.as_ref().is_some_and(|route| !route.access_log) {
            return false;
        }
        r.failed() || self.threshold == u64::MAX || mix(r.id) < self.threshold
    }
}

/// Spreads exchange ids evenly over `u64` (splitmix64), so sampling by id is fair.
fn mix(id: u64) -> u64 {
    let mut z = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// One attempt in the JSON line.
#[derive(Serialize)]
struct AttemptLine<'a> {
    backend: Option<&'a str>,
    /// `response` (its status is the line's `status`), or why it failed.
    outcome: &'static str,
}

/// The JSON line's shape: these names are the documented interface.
#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    id: u64,
    request_id: Option<&'a str>,
    client: Option<String>,
    client_ip: Option<String>,
    protocol: &'static str,
    tls: Option<&'static str>,
    sni: Option<&'a str>,
    method: Option<&'a str>,
    authority: Option<&'a str>,
    path: Option<&'a str>,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    backend: Option<&'a str>,
    attempts: Vec<AttemptLine<'a>>,
    status: Option<u16>,
    reason: Option<&'static str>,
    outcome: &'static str,
    bytes_in: u64,
    bytes_out: u64,
    ttfb_ms: Option<f64>,
    duration_ms: f64,
    stages: serde_json::Map<String, serde_json::Value>,
    identity: Option<&'a str>,
    identity_sha256: Option<&'a str>,
}

fn line(r: &Record) -> Line<'_> {
    let d = r.details.as_deref();
    let upstream = r.upstream.as_deref();
    let mut attempts: Vec<AttemptLine<'_>> = r
        .failed
        .iter()
        .map(|a| AttemptLine {
            backend: upstream.and_then(|u| u.backend_name(a.backend)),
            outcome: a.error.code(),
        })
        .collect();
    if r.reason.is_none() && r.status.is_some() && r.backend.is_some() {
        attempts.push(AttemptLine {
            backend: r.backend_name(),
            outcome: "response",
        });
    }
    let mut stages = serde_json::Map::new();
    let mut last = Duration::ZERO;
    for (stage, at) in &r.marks {
        let took = at.saturating_sub(last);
        last = *at;
        let v = serde_json::Number::from_f64(ms(took)).map_or(serde_json::Value::Null, Into::into);
        stages.insert((*stage).to_string(), v);
    }
    let identity = d.and_then(|d| d.identity.as_deref());
    Line {
        ts: rfc3339(r.wall_start()),
        id: r.id,
        request_id: r.request_id.as_ref().and_then(|v| v.to_str().ok()),
        client: d.map(|d| d.client.to_string()),
        client_ip: d.map(|d| d.client_ip.to_string()),
        protocol: r.protocol.label(),
        tls: d.and_then(|d| d.tls),
        sni: d.and_then(|d| d.sni.as_deref()),
        method: d.map(|d| d.method.as_str()),
        authority: d.and_then(|d| d.authority()),
        path: d.map(|d| d.path()),
        route: r.route.as_deref().map(|x| x.name.as_str()),
        upstream: upstream.map(|u| u.name.as_str()),
        backend: r.backend_name(),
        attempts,
        status: r.status.map(|s| s.as_u16()),
        reason: r.reason.map(|x| x.label()),
        outcome: r.outcome.unwrap_or(Outcome::Cancelled).label(),
        bytes_in: r.bytes_in_total(),
        bytes_out: r.bytes_out,
        ttfb_ms: r.head_at.map(ms),
        duration_ms: ms(r.duration()),
        stages,
        identity: identity.map(|i| i.subject.as_str()),
        identity_sha256: identity.map(|i| i.sha256.as_str()),
    }
}

/// The JSON form: one object per line.
pub fn json(r: &Record) -> String {
    let mut s = serde_json::to_string(&line(r)).unwrap_or_default();
    s.push('\n');
    s
}

/// The text form: the common fields in a fixed order, `-` for an absent one.
pub fn text(r: &Record) -> String {
    let l = line(r);
    let dash = |v: Option<&str>| v.unwrap_or("-").to_string();
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "{} {} {} \"{} {}{}\" {} {} route={} upstream={} backend={} attempts={} in={} out={} ttfb={} total={:.3} id={} rid={}",
        l.ts,
        dash(l.client.as_deref()),
        l.protocol,
        dash(l.method),
        l.authority.unwrap_or(""),
        dash(l.path),
        l.status.map_or("-".to_string(), |s| s.to_string()),
        dash(l.reason),
        dash(l.route),
        dash(l.upstream),
        dash(l.backend),
        r.attempts,
        l.bytes_in,
        l.bytes_out,
        l.ttfb_ms.map_or("-".to_string(), |t| format!("{t:.3}")),
        l.duration_ms,
        l.id,
        dash(l.request_id),
    );
    s.push('\n');
    s
}

/// `2026-12-01T05:45:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_567_900_123);
        assert_eq!(rfc3339(t), "2025-12-01T05:45:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // A leap day.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn sampling_by_id_keeps_about_the_share_asked() {
        let threshold = (0.25 * u64::MAX as f64) as u64;
        let kept = (0..10_000u64).filter(|id| mix(*id) < threshold).count();
        assert!((2_200..2_800).contains(&kept), "kept {kept} of 10000");
    }
}
