//! Circuit breaking per backend (`breaker = { … }`): the state machine is
//! `spooky_sync::Breaker` (loom-checked); this is its config, its clock and its metrics.
//!
//! A failure is a failed attempt (connect, reset, timeout) or a 5xx response head. While a
//! backend's breaker is open, select skips it; when every candidate's breaker is open the
//! exchange is answered 503 `breaker_open` with `Retry-After` at once, without trying.

use std::time::Duration;

use serde::Deserialize;
use spooky_sync::{Breaker, BreakerPolicy, BreakerState, Rejected, Ticket};

use crate::units::Dur;
use crate::upstreams::balance::now_ns;

/// `[upstreams.<name>] breaker = { … }`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Opens when at least this share of the window's attempts failed (0: never by rate).
    #[serde(default = "default_rate")]
    pub failure_rate: f64,
    #[serde(default = "default_window")]
    pub window: Dur,
    /// …and the window holds at least this many attempts.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// Opens after this many failures in a row (0: never by a run).
    #[serde(default)]
    pub consecutive_failures: u32,
    #[serde(default = "default_open_for")]
    pub open_for: Dur,
    /// Attempts let through when half-open; as many successes close it.
    #[serde(default = "default_probes")]
    pub half_open_probes: u32,
}

fn default_rate() -> f64 {
    0.5
}
fn default_window() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_min_requests() -> u32 {
    20
}
fn default_open_for() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_probes() -> u32 {
    1
}

impl BreakerConfig {
    /// Problems, as (key, message), for validation.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !(self.failure_rate.is_finite() && (0.0..=1.0).contains(&self.failure_rate)) {
            out.push(("failure_rate", "expected 0.0..=1.0".to_string()));
        }
        if self.failure_rate == 0.0 && self.consecutive_failures == 0 {
            out.push((
                "failure_rate",
                "with consecutive_failures = 0 too, the breaker never opens".to_string(),
            ));
        }
        if self.window.0 < Duration::from_millis(10) {
            out.push(("window", "expected at least 10ms".to_string()));
        }
        if self.open_for.0.is_zero() {
            out.push(("open_for", "expected a duration above 0".to_string()));
        }
        if self.half_open_probes == 0 {
            out.push(("half_open_probes", "expected at least 1".to_string()));
        }
        out
    }

    fn policy(&self) -> BreakerPolicy {
        let ns = |d: Dur| u64::try_from(d.0.as_nanos()).unwrap_or(u64::MAX);
        BreakerPolicy {
            failure_rate: self.failure_rate,
            min_requests: self.min_requests,
            window: ns(self.window),
            consecutive_failures: self.consecutive_failures,
            open_for: ns(self.open_for),
            half_open_probes: self.half_open_probes,
        }
    }
}

/// One backend's breaker and its metrics.
pub struct BackendBreaker {
    breaker: Breaker,
    state: metrics::Gauge,
    upstream: String,
    backend: String,
}

impl BackendBreaker {
    pub fn new(config: &BreakerConfig, upstream: &str, backend: &str) -> BackendBreaker {
        let state = metrics::gauge!(
            crate::metrics::BACKEND_BREAKER,
            "upstream" => upstream.to_string(),
            "backend" => backend.to_string()
        );
        state.set(0.0);
        BackendBreaker {
            breaker: Breaker::new(config.policy()),
            state,
            upstream: upstream.to_string(),
            backend: backend.to_string(),
        }
    }

    /// Whether an attempt may go to this backend now: the ticket to report its outcome with.
    pub fn admit(&self) -> Result<Ticket, Rejected> {
        let before = self.breaker.state();
        let t = self.breaker.try_admit(now_ns());
        if before == BreakerState::Open && t.as_ref().is_ok_and(Ticket::is_probe) {
            self.moved(BreakerState::HalfOpen);
        }
        t
    }

    /// Whether the breaker is open now (it may let a probe through if asked).
    pub fn is_open(&self) -> bool {
        self.breaker.state() == BreakerState::Open
    }

    /// `closed`, `open` or `half-open` (`/status`).
    pub fn state_name(&self) -> &'static str {
        match self.breaker.state() {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    /// Reports an attempt's outcome.
    pub fn outcome(&self, ticket: Ticket, ok: bool) {
        let now = now_ns();
        let moved = if ok {
            ticket.success(now)
        } else {
            ticket.failure(now)
        };
        if let Some(to) = moved {
            self.moved(to);
        }
    }

    fn moved(&self, to: BreakerState) {
        let code = match to {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        };
        self.state.set(code);
        if to != BreakerState::HalfOpen {
            tracing::warn!(
                upstream = %self.upstream,
                backend = %self.backend,
                state = to.name(),
                "circuit breaker {}",
                to.name()
            );
        }
        metrics::counter!(
            crate::metrics::BREAKER_TRANSITIONS,
            "upstream" => self.upstream.clone(),
            "backend" => self.backend.clone(),
            "to" => to.name()
        )
        .increment(1);
    }
}
