//! Retry policy of an upstream (`retry = { … }`): which failures are tried again, how many
//! attempts in all, the per-try timeout, the backoff between attempts, and the retry budget
//! that keeps retries from multiplying load when a whole upstream is failing.
//!
//! The budget is the Linkerd/Envoy model: over a sliding window, retries may be at most
//! `ratio` × requests, plus `min_per_second` × the window's seconds (so a quiet upstream can
//! still retry). Counters are atomic buckets (10 per window); two retries racing for the last
//! place may both pass, so the bound is exact up to the number of concurrent callers.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;

use crate::units::{Dur, Size};

/// A failed attempt as `retry_on` sees it (hedge-retry maps its attempt errors to these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Nothing was sent: no connection, or none in time.
    Connect,
    /// The backend reset or broke the exchange.
    Reset,
    /// No response head in time.
    Timeout,
    /// Anything else (never retried by kind).
    Other,
}

/// What a retry is for: `retry_on = [...]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// No connection could be made (nothing was sent).
    ConnectFailure,
    /// The backend reset or broke the exchange after it was sent.
    Reset,
    /// No response head within `per_try_timeout` (or `response_timeout`).
    Timeout,
    /// A 502, 503 or 504 response head.
    GatewayError,
    /// Any 5xx response head.
    ServerError,
    /// This status exactly (`"503"`).
    Status(StatusCode),
}

impl RetryOn {
    pub const NAMES: &'static str = "\"connect-failure\", \"reset\", \"timeout\", \"gateway-error\", \"5xx\" or a status such as \"503\"";

    fn parse(s: &str) -> Result<RetryOn, String> {
        Ok(match s {
            "connect-failure" => RetryOn::ConnectFailure,
            "reset" => RetryOn::Reset,
            "timeout" => RetryOn::Timeout,
            "gateway-error" => RetryOn::GatewayError,
            "5xx" => RetryOn::ServerError,
            s if s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()) => {
                match StatusCode::from_bytes(s.as_bytes()) {
                    Ok(c) if c.as_u16() >= 400 => RetryOn::Status(c),
                    _ => {
                        return Err(format!(
                            "retry_on: `{s}`: a status to retry on is 400..=599"
                        ));
                    }
                }
            }
            s => {
                return Err(format!(
                    "retry_on: unknown `{s}`: expected {}",
                    RetryOn::NAMES
                ));
            }
        })
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RetryOn::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RetryOn::ConnectFailure => s.serialize_str("connect-failure"),
            RetryOn::Reset => s.serialize_str("reset"),
            RetryOn::Timeout => s.serialize_str("timeout"),
            RetryOn::GatewayError => s.serialize_str("gateway-error"),
            RetryOn::ServerError => s.serialize_str("5xx"),
            RetryOn::Status(c) => s.serialize_str(c.as_str()),
        }
    }
}

/// `retry = { backoff = { … } }`: full jitter, `base` × 2^(retry − 1), at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    #[serde(default = "default_backoff_base")]
    pub base: Dur,
    #[serde(default = "default_backoff_max")]
    pub max: Dur,
}

fn default_backoff_base() -> Dur {
    Dur(Duration::from_millis(25))
}
fn default_backoff_max() -> Dur {
    Dur(Duration::from_millis(250))
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}

/// `retry = { budget = { … } }`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Retries at most this share of requests over the window.
    #[serde(default = "default_ratio")]
    pub ratio: f64,
    /// Plus this many retries per second in any case.
    #[serde(default = "default_min_per_second")]
    pub min_per_second: u32,
    #[serde(default = "default_window")]
    pub window: Dur,
}

fn default_ratio() -> f64 {
    0.2
}
fn default_min_per_second() -> u32 {
    10
}
fn default_window() -> Dur {
    Dur(Duration::from_secs(10))
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: default_ratio(),
            min_per_second: default_min_per_second(),
            window: default_window(),
        }
    }
}

/// `[upstreams.<name>] retry = { … }`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    #[serde(default = "default_attempts")]
    pub attempts: NonZeroU32,
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// Longest wait for one attempt's response head (`response_timeout` still bounds it).
    pub per_try_timeout: Option<Dur>,
    #[serde(default)]
    pub backoff: Backoff,
    /// Request bodies up to this size are kept to be sent again (default: hedge-retry's
    /// `replay_body_limit`); a larger body is not retried.
    pub retry_buffer: Option<Size>,
    /// Always on: absent, the defaults (20 % of requests + 10 per second, over 10 s).
    #[serde(default)]
    pub budget: BudgetConfig,
}

fn default_attempts() -> NonZeroU32 {
    NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN)
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure, RetryOn::GatewayError]
}

impl RetryConfig {
    /// Problems, as (key, message), for validation.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.attempts.get() > 10 {
            out.push(("attempts", "expected 1..=10".to_string()));
        }
        if self.per_try_timeout.is_some_and(|d| d.0.is_zero()) {
            out.push(("per_try_timeout", "expected a duration above 0".to_string()));
        }
        if self.backoff.base > self.backoff.max {
            out.push(("backoff", "base is longer than max".to_string()));
        }
        let b = &self.budget;
        if !(b.ratio.is_finite() && (0.0..=1.0).contains(&b.ratio)) {
            out.push(("budget", "ratio: expected 0.0..=1.0".to_string()));
        }
        if b.window.0 < Duration::from_secs(1) {
            out.push(("budget", "window: expected at least 1s".to_string()));
        }
        out
    }
}

/// The running policy of an upstream.
pub struct RetryPolicy {
    pub attempts: u32,
    on: Vec<RetryOn>,
    pub per_try_timeout: Option<Duration>,
    pub backoff: Backoff,
    pub retry_buffer: Option<usize>,
    /// Retries take from the upstream's budget (not the stage-wide connect-failure retries
    /// of `[stages.hedge-retry]`).
    pub budgeted: bool,
    /// Explicit (`retry` on the upstream): a retry may go back to a backend already tried
    /// when no other is left.
    pub explicit: bool,
}

impl RetryPolicy {
    pub fn build(config: &RetryConfig) -> RetryPolicy {
        RetryPolicy {
            attempts: config.attempts.get(),
            on: config.retry_on.clone(),
            per_try_timeout: config.per_try_timeout.map(|d| d.0),
            backoff: config.backoff,
            retry_buffer: config
                .retry_buffer
                .map(|s| usize::try_from(s.0).unwrap_or(usize::MAX)),
            budgeted: true,
            explicit: true,
        }
    }

    /// `[stages.hedge-retry] retries`: connect failures only, no backoff, no budget.
    pub fn connect_only(retries: u32) -> RetryPolicy {
        RetryPolicy {
            attempts: retries.saturating_add(1),
            on: vec![RetryOn::ConnectFailure],
            per_try_timeout: None,
            backoff: Backoff {
                base: Dur(Duration::ZERO),
                max: Dur(Duration::ZERO),
            },
            retry_buffer: None,
            budgeted: false,
            explicit: false,
        }
    }

    /// Which `retry_on` entry, if any, covers a failed attempt of this `kind`.
    pub fn covers_failure(&self, kind: FailureKind) -> Option<RetryOn> {
        self.on.iter().copied().find(|on| {
            matches!(
                (on, kind),
                (RetryOn::ConnectFailure, FailureKind::Connect)
                    | (RetryOn::Reset, FailureKind::Reset)
                    | (RetryOn::Timeout, FailureKind::Timeout)
            )
        })
    }

    /// Which `retry_on` entry, if any, covers a response head with `status`.
    pub fn covers_status(&self, status: StatusCode) -> Option<RetryOn> {
        if !status.is_client_error() && !status.is_server_error() {
            return None;
        }
        self.on.iter().copied().find(|on| match on {
            RetryOn::GatewayError => matches!(status.as_u16(), 502..=504),
            RetryOn::ServerError => status.is_server_error(),
            RetryOn::Status(s) => *s == status,
            _ => false,
        })
    }

    /// Whether any status is retried (a response head may have to be held back).
    pub fn retries_statuses(&self) -> bool {
        self.attempts > 1
            && self.on.iter().any(|on| {
                matches!(
                    on,
                    RetryOn::GatewayError | RetryOn::ServerError | RetryOn::Status(_)
                )
            })
    }

    /// The wait before retry number `n` (1 for the first): full jitter over
    /// `base` × 2^(n − 1), capped at `max`.
    pub fn backoff(&self, n: u32) -> Duration {
        let base = self.backoff.base.0;
        if base.is_zero() {
            return Duration::ZERO;
        }
        let ceiling = base
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.backoff.max.0);
        ceiling.mul_f64(fastrand::f64())
    }
}

impl RetryOn {
    /// The metric label.
    pub fn label(self) -> String {
        match self {
            RetryOn::ConnectFailure => "connect-failure".into(),
            RetryOn::Reset => "reset".into(),
            RetryOn::Timeout => "timeout".into(),
            RetryOn::GatewayError => "gateway-error".into(),
            RetryOn::ServerError => "5xx".into(),
            RetryOn::Status(s) => s.as_str().into(),
        }
    }
}

/// Buckets of a budget's window.
const BUCKETS: usize = 10;

#[derive(Default)]
struct Bucket {
    slot: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// An upstream's retry budget.
pub struct Budget {
    ratio: f64,
    /// `min_per_second` × the window's seconds.
    floor: f64,
    width: u64,
    buckets: [Bucket; BUCKETS],
}

impl Budget {
    pub fn new(config: &BudgetConfig) -> Budget {
        let window = u64::try_from(config.window.0.as_nanos())
            .unwrap_or(u64::MAX)
            .max(BUCKETS as u64);
        Budget {
            ratio: config.ratio,
            floor: f64::from(config.min_per_second) * config.window.0.as_secs_f64(),
            width: window / BUCKETS as u64,
            buckets: Default::default(),
        }
    }

    /// The bucket of `now`, emptied first when it last held an older slot.
    fn bucket(&self, now: u64) -> &Bucket {
        // Slots start at 1, so a fresh bucket (slot 0) is never taken for a current one.
        let slot = now / self.width + 1;
        let b = &self.buckets[(slot % BUCKETS as u64) as usize];
        let seen = b.slot.load(Ordering::Acquire);
        if seen != slot
            && b.slot
                .compare_exchange(seen, slot, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    /// A first attempt was sent at `now`.
    pub fn request(&self, now: u64) {
        self.bucket(now).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a retry from the budget at `now`, if one is left.
    pub fn try_retry(&self, now: u64) -> bool {
        let slot = now / self.width + 1;
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            let s = b.slot.load(Ordering::Acquire);
            if s + BUCKETS as u64 > slot && s <= slot {
                requests += b.requests.load(Ordering::Relaxed);
                retries += b.retries.load(Ordering::Relaxed);
            }
        }
        if (retries + 1) as f64 > self.ratio * requests as f64 + self.floor {
            return false;
        }
        self.bucket(now).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn budget(ratio: f64, min_per_second: u32) -> Budget {
        Budget::new(&BudgetConfig {
            ratio,
            min_per_second,
            window: Dur(Duration::from_secs(10)),
        })
    }

    #[test]
    fn budget_allows_the_ratio_of_requests() {
        let b = budget(0.2, 0);
        for _ in 0..100 {
            b.request(S);
        }
        let granted = (0..50).filter(|_| b.try_retry(S)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn budget_floor_allows_retries_without_traffic() {
        // 1 per second over 10 s: 10 retries with no requests at all.
        let b = budget(0.2, 1);
        let granted = (0..50).filter(|_| b.try_retry(S)).count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn budget_forgets_what_left_the_window() {
        let b = budget(0.5, 0);
        for _ in 0..10 {
            b.request(S);
        }
        assert_eq!((0..10).filter(|_| b.try_retry(S)).count(), 5);
        assert!(!b.try_retry(5 * S));
        // 11 s later the old requests and retries are gone: nothing to take a share of.
        assert!(!b.try_retry(12 * S));
        for _ in 0..4 {
            b.request(12 * S);
        }
        assert_eq!((0..10).filter(|_| b.try_retry(12 * S)).count(), 2);
    }

    #[test]
    fn retry_on_names_parse_and_cover() {
        let on: Vec<RetryOn> = [
            "connect-failure",
            "reset",
            "timeout",
            "gateway-error",
            "429",
        ]
        .iter()
        .map(|s| RetryOn::parse(s).expect("parses"))
        .collect();
        let p = RetryPolicy {
            on,
            ..RetryPolicy::connect_only(1)
        };
        assert_eq!(p.covers_failure(FailureKind::Reset), Some(RetryOn::Reset));
        assert_eq!(p.covers_failure(FailureKind::Other), None);
        assert_eq!(
            p.covers_status(StatusCode::BAD_GATEWAY),
            Some(RetryOn::GatewayError)
        );
        assert_eq!(
            p.covers_status(StatusCode::TOO_MANY_REQUESTS),
            Some(RetryOn::Status(StatusCode::TOO_MANY_REQUESTS))
        );
        assert_eq!(p.covers_status(StatusCode::INTERNAL_SERVER_ERROR), None);
        assert_eq!(p.covers_status(StatusCode::OK), None);
        assert!(RetryOn::parse("200").is_err());
        assert!(RetryOn::parse("5xx ").is_err());
    }

    #[test]
    fn backoff_is_jittered_under_a_doubling_ceiling() {
        let p = RetryPolicy {
            backoff: Backoff {
                base: Dur(Duration::from_millis(10)),
                max: Dur(Duration::from_millis(35)),
            },
            ..RetryPolicy::connect_only(3)
        };
        for _ in 0..100 {
            assert!(p.backoff(1) <= Duration::from_millis(10));
            assert!(p.backoff(2) <= Duration::from_millis(20));
            assert!(p.backoff(5) <= Duration::from_millis(35));
        }
        assert_eq!(RetryPolicy::connect_only(1).backoff(3), Duration::ZERO);
    }
}
