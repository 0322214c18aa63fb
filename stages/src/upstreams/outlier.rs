//! Passive health (outlier ejection): a backend that answers `consecutive_5xx` 5xx heads in a
//! row, or fails `consecutive_failures` attempts in a row (connect, reset, timeout), is taken
//! out of balancing for `base_ejection` × the number of times it was ejected (capped at 10×),
//! then returns by itself. At most `max_ejected_percent` of an upstream's backends are out at
//! once, and never all of them: ejection alone never empties an upstream. Combined with active
//! checks, the stricter wins: a backend is chosen only when both let it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Deserialize;

use crate::units::Dur;
use crate::upstreams::balance::now_ns;

/// `[upstreams.<name>] outlier = { … }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// 5xx response heads in a row that eject (0: never by status).
    #[serde(default = "default_consecutive")]
    pub consecutive_5xx: u32,
    /// Failed attempts in a row (connect, reset, timeout) that eject (0: never by failures).
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th lasts n times as long (at most 10 times).
    #[serde(default = "default_base")]
    pub base_ejection: Dur,
    /// The most of an upstream's backends that may be out at once (never all of them).
    #[serde(default = "default_percent")]
    pub max_ejected_percent: u32,
}

fn default_consecutive() -> u32 {
    5
}
fn default_base() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_percent() -> u32 {
    50
}

impl OutlierConfig {
    /// Problems, as (key, message), for validation.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.max_ejected_percent > 100 {
            out.push(("max_ejected_percent", "expected 0..=100".to_string()));
        }
        if self.base_ejection.0.is_zero() {
            out.push(("base_ejection", "expected a duration above 0".to_string()));
        }
        out
    }
}

/// The longest ejection, in multiples of `base_ejection`.
const MAX_MULTIPLE: u64 = 10;

/// What an upstream's backends share: how many are ejected now.
#[derive(Debug, Default)]
pub struct Ejected(AtomicUsize);

/// One backend's passive health.
pub struct Outlier {
    config: Arc<OutlierConfig>,
    backends: usize,
    ejected: Arc<Ejected>,
    status_run: AtomicU32,
    failure_run: AtomicU32,
    /// `now_ns()` when the ejection ends; 0 while in.
    until: AtomicU64,
    times: AtomicU64,
    ejections: metrics::Counter,
    gauge: metrics::Gauge,
}

impl Outlier {
    pub fn new(
        config: Arc<OutlierConfig>,
        backends: usize,
        ejected: Arc<Ejected>,
        upstream: &str,
        backend: &str,
    ) -> Outlier {
        let labels = [
            ("upstream", upstream.to_string()),
            ("backend", backend.to_string()),
        ];
        let gauge = metrics::gauge!(crate::metrics::BACKEND_EJECTED, &labels);
        gauge.set(0.0);
        Outlier {
            config,
            backends,
            ejected,
            status_run: AtomicU32::new(0),
            failure_run: AtomicU32::new(0),
            until: AtomicU64::new(0),
            times: AtomicU64::new(0),
            ejections: metrics::counter!(crate::metrics::OUTLIER_EJECTIONS, &labels),
            gauge,
        }
    }

    /// Whether the backend is in (an ejection that has run its time ends here).
    pub fn is_in(&self) -> bool {
        let until = self.until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if now_ns() < until {
            return false;
        }
        if self
            .until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.ejected.0.fetch_sub(1, Ordering::Relaxed);
            self.gauge.set(0.0);
            tracing::info!("backend back from outlier ejection");
        }
        true
    }

    /// A response head arrived.
    pub fn status(&self, status: http::StatusCode) {
        self.failure_run.store(0, Ordering::Relaxed);
        if status.is_server_error() {
            let run = self.status_run.fetch_add(1, Ordering::Relaxed) + 1;
            if self.config.consecutive_5xx > 0 && run >= self.config.consecutive_5xx {
                self.eject();
            }
        } else {
            self.status_run.store(0, Ordering::Relaxed);
        }
    }

    /// An attempt failed without a response head.
    pub fn failure(&self) {
        let run = self.failure_run.fetch_add(1, Ordering::Relaxed) + 1;
        if self.config.consecutive_failures > 0 && run >= self.config.consecutive_failures {
            self.eject();
        }
    }

    fn eject(&self) {
        if self.until.load(Ordering::Relaxed) != 0 {
            return;
        }
        let allowed = (self.backends * self.config.max_ejected_percent as usize / 100)
            .min(self.backends.saturating_sub(1));
        // Take a place among the ejected, if one is left.
        let taken = self
            .ejected
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < allowed).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            return;
        }
        let times = (self.times.fetch_add(1, Ordering::Relaxed) + 1).min(MAX_MULTIPLE);
        let length = self.config.base_ejection.0.as_nanos() as u64 * times;
        let until = now_ns().saturating_add(length).max(1);
        if self
            .until
            .compare_exchange(0, until, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            // Another thread ejected it first.
            self.ejected.0.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.status_run.store(0, Ordering::Relaxed);
        self.failure_run.store(0, Ordering::Relaxed);
        self.ejections.increment(1);
        self.gauge.set(1.0);
        tracing::warn!(
            ejection = times,
            for_ms = length / 1_000_000,
            "backend ejected as an outlier"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(percent: u32) -> Arc<OutlierConfig> {
        Arc::new(OutlierConfig {
            consecutive_5xx: 3,
            consecutive_failures: 2,
            base_ejection: Dur(Duration::from_millis(50)),
            max_ejected_percent: percent,
        })
    }

    #[test]
    fn consecutive_errors_eject_and_a_success_resets_the_run() {
        let ejected = Arc::new(Ejected::default());
        let o = Outlier::new(config(50), 2, ejected.clone(), "u", "b");
        o.status(http::StatusCode::BAD_GATEWAY);
        o.status(http::StatusCode::BAD_GATEWAY);
        o.status(http::StatusCode::OK);
        o.status(http::StatusCode::BAD_GATEWAY);
        o.status(http::StatusCode::BAD_GATEWAY);
        assert!(o.is_in(), "the run was broken by a success");
        o.status(http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(!o.is_in());
        assert_eq!(ejected.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn ejection_is_capped_so_an_upstream_is_never_emptied() {
        let ejected = Arc::new(Ejected::default());
        let a = Outlier::new(config(100), 2, ejected.clone(), "u", "a");
        let b = Outlier::new(config(100), 2, ejected.clone(), "u", "b");
        a.failure();
        a.failure();
        b.failure();
        b.failure();
        assert!(!a.is_in());
        assert!(b.is_in(), "100% still leaves one backend in");
        let lone = Outlier::new(config(100), 1, Arc::new(Ejected::default()), "u", "c");
        lone.failure();
        lone.failure();
        assert!(lone.is_in());
    }

    #[test]
    fn an_ejection_ends_by_itself_and_the_next_lasts_longer() {
        let ejected = Arc::new(Ejected::default());
        let o = Outlier::new(config(50), 4, ejected.clone(), "u", "b");
        o.failure();
        o.failure();
        let first = o.until.load(Ordering::Relaxed);
        assert!(!o.is_in());
        while now_ns() < first {
            std::thread::yield_now();
        }
        assert!(o.is_in(), "back after its time");
        assert_eq!(ejected.0.load(Ordering::Relaxed), 0);
        let at = now_ns();
        o.failure();
        o.failure();
        let second = o.until.load(Ordering::Relaxed) - at;
        assert!(
            second >= 2 * 50_000_000,
            "the second ejection lasts twice as long: {second} ns"
        );
    }
}
