//! Adaptive admission (`[stages.admission] adaptive = { … }`): the admission cap's limit
//! follows the upstream latency Spooky observes, so that under overload it admits what the
//! backends can serve without queueing, and sheds (or queues, per `when_full`) the rest.
//!
//! Two published algorithms:
//!
//! * **gradient2** (Netflix concurrency-limits, `Gradient2Limit`): a long-term average of the
//!   response-head latency (an EWMA over `long_window` samples) against the latency now;
//!   `gradient = clamp(tolerance × long / short, 0.5, 1)`, and
//!   `new = limit × gradient + queue_size`, smoothed: `limit = limit × (1 − smoothing) +
//!   new × smoothing`. Latency rising above `tolerance` × its usual value pulls the limit down
//!   (at most halving it per sample); at the usual latency it grows by about `queue_size` ×
//!   `smoothing` per sample. When the latency falls well below the long average (half), the
//!   average decays faster, so the limit recovers after a slow spell.
//! * **vegas** (TCP Vegas, as in Netflix concurrency-limits' `VegasLimit`): the lowest latency
//!   seen is the no-load latency; `queue = limit × (1 − no_load / latency)` estimates the
//!   exchanges waiting at the backend. With `log = max(1, log10(limit))`: a queue under `log`
//!   adds `6 × log`, under `3 × log` adds `log`, over `6 × log` takes `log` away. Every 30 to
//!   60 × limit samples, the no-load latency is measured again — as the lowest latency of
//!   that period, so a backend that became slower for good is not held to its old best (Netflix
//!   takes the latency of the moment, which under load lets the queue grow after each probe).
//!   It decides once per window of samples (at least 10, and at least the limit: about a
//!   round trip of every admitted exchange), on the window's average latency, as Netflix's
//!   `WindowedLimit` does. It keeps the backend's queue short: admitted latency stays close to
//!   the no-load latency.
//! * **aimd**: additive increase, multiplicative decrease: a response slower than
//!   `latency_threshold`, or a failed attempt, multiplies the limit by `backoff`; otherwise it
//!   grows by one.
//!
//! Both only grow while the limit is in use (at least half of it in flight): an idle proxy
//! does not talk itself into a huge limit it never tested. The limit stays within
//! `min_limit ..= max_limit` (`max_limit` defaults to `max_inflight`).

use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use spooky_sync::Cap;

use crate::units::Dur;

/// Which algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    Gradient2,
    Vegas,
    Aimd,
}

/// `[stages.admission] adaptive = { … }`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConfig {
    pub algorithm: Algorithm,
    #[serde(default = "default_min")]
    pub min_limit: usize,
    /// Default: `max_inflight`.
    pub max_limit: Option<usize>,
    /// The limit at start (default: `min_limit` × 4, within the bounds).
    pub initial_limit: Option<usize>,
    /// gradient2: how much slower than usual is still fine.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// gradient2 and vegas: how far the limit moves towards its new estimate per sample
    /// (default 0.2 for gradient2, 1.0 for vegas).
    pub smoothing: Option<f64>,
    /// gradient2: samples in the long-term latency average.
    #[serde(default = "default_long_window")]
    pub long_window: u32,
    /// gradient2: headroom added to the estimate (default: √limit).
    pub queue_size: Option<f64>,
    /// aimd: a response head slower than this is a drop signal.
    #[serde(default = "default_threshold")]
    pub latency_threshold: Dur,
    /// aimd: the factor a drop signal multiplies the limit by.
    #[serde(default = "default_backoff")]
    pub backoff: f64,
}

fn default_min() -> usize {
    8
}
fn default_tolerance() -> f64 {
    1.5
}
fn default_long_window() -> u32 {
    600
}
fn default_threshold() -> Dur {
    Dur(Duration::from_millis(200))
}
fn default_backoff() -> f64 {
    0.9
}

impl AdaptiveConfig {
    /// Problems, as (key, message), for validation; `max_inflight` bounds `max_limit`.
    pub fn problems(&self, max_inflight: usize) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let max = self.max_limit.unwrap_or(max_inflight);
        if self.min_limit == 0 {
            out.push(("min_limit", "expected 1 or more".to_string()));
        }
        if max < self.min_limit {
            out.push(("max_limit", format!("below min_limit ({})", self.min_limit)));
        }
        if max > max_inflight {
            out.push((
                "max_limit",
                format!("above max_inflight ({max_inflight}), which stays the hard cap"),
            ));
        }
        if self
            .initial_limit
            .is_some_and(|i| i < self.min_limit || i > max)
        {
            out.push((
                "initial_limit",
                "expected within min_limit ..= max_limit".into(),
            ));
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 1.0) {
            out.push(("tolerance", "expected 1.0 or more".to_string()));
        }
        if !(self.smoothing() > 0.0 && self.smoothing() <= 1.0) {
            out.push(("smoothing", "expected above 0.0, at most 1.0".to_string()));
        }
        if self.long_window == 0 {
            out.push(("long_window", "expected 1 or more".to_string()));
        }
        if !(self.backoff > 0.0 && self.backoff < 1.0) {
            out.push(("backoff", "expected above 0.0, below 1.0".to_string()));
        }
        out
    }
}

struct State {
    limit: f64,
    /// gradient2: the long-term latency average (seconds), 0 before the first sample.
    long: f64,
    /// vegas: the no-load latency (seconds), 0 before the first sample.
    no_load: f64,
    /// vegas: samples until the no-load latency is measured again.
    probe_in: u64,
    /// vegas: the lowest latency since the last probe (seconds; 0: none yet).
    period_min: f64,
    /// vegas: the current window's latency sum (seconds), samples, and whether the limit
    /// was in use during it.
    window: (f64, u64, bool),
}

/// The adaptive limit of a pipeline's admission cap.
pub struct Adaptive {
    config: AdaptiveConfig,
    min: f64,
    max: f64,
    cap: Cap,
    state: Mutex<State>,
    gauge: metrics::Gauge,
}

impl Adaptive {
    pub fn new(config: &AdaptiveConfig, cap: Cap, max_inflight: usize, pipeline: &str) -> Adaptive {
        let min = config.min_limit.max(1) as f64;
        let max = config.max_limit.unwrap_or(max_inflight).max(1) as f64;
        let initial = config
            .initial_limit
            .map_or(min * 4.0, |i| i as f64)
            .clamp(min, max.max(min));
        let gauge =
            metrics::gauge!(crate::metrics::ADMISSION_LIMIT, "pipeline" => pipeline.to_string());
        gauge.set(initial.floor());
        cap.set_limit(initial as usize);
        Adaptive {
            config: config.clone(),
            min,
            max: max.max(min),
            cap,
            state: Mutex::new(State {
                limit: initial,
                long: 0.0,
                no_load: 0.0,
                probe_in: probe_after(initial),
                period_min: 0.0,
                window: (0.0, 0, false),
            }),
            gauge,
        }
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.cap.limit()
    }

    /// One response head after `rtt`.
    pub fn sample(&self, rtt: Duration) {
        self.update(Some(rtt), self.cap.in_use());
    }

    /// A failed attempt (no head: reset, timeout): a drop signal for aimd.
    pub fn dropped(&self) {
        self.update(None, self.cap.in_use());
    }

    pub(crate) fn update(&self, rtt: Option<Duration>, inflight: usize) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let before = st.limit;
        let in_use = inflight as f64 >= before / 2.0;
        let c = &self.config;
        let next = match (c.algorithm, rtt) {
            (Algorithm::Aimd, Some(rtt)) if rtt <= c.latency_threshold.0 => {
                if in_use {
                    before + 1.0
                } else {
                    before
                }
            }
            (Algorithm::Aimd, _) => before * c.backoff,
            (Algorithm::Gradient2 | Algorithm::Vegas, None) => before,
            (Algorithm::Vegas, Some(rtt)) => {
                let rtt = rtt.as_secs_f64().max(1e-6);
                st.probe_in = st.probe_in.saturating_sub(1);
                if st.period_min == 0.0 || rtt < st.period_min {
                    st.period_min = rtt;
                }
                if st.no_load == 0.0 || rtt < st.no_load {
                    st.no_load = rtt;
                }
                if st.probe_in == 0 {
                    // Measured again: the best of the last period, so a backend that became
                    // slower for good is not held to its old best, and one sample under
                    // load does not pass for the no-load latency.
                    st.no_load = st.period_min;
                    st.period_min = 0.0;
                    st.probe_in = probe_after(before);
                }
                // One decision per window of samples (at least 10, and at least a limit's
                // worth: about one round trip of every admitted exchange), on the window's
                // average: deciding on every sample overshoots, since a change shows in the
                // latency only a round trip later.
                st.window.0 += rtt;
                st.window.1 += 1;
                st.window.2 |= in_use;
                if (st.window.1 as f64) < before.max(10.0) {
                    return;
                }
                let (sum, n, in_use) = std::mem::take(&mut st.window);
                let rtt = sum / n as f64;
                let queue = before * (1.0 - st.no_load / rtt);
                let log = before.log10().max(1.0);
                let estimate = if queue <= log && in_use {
                    before + 6.0 * log
                } else if queue < 3.0 * log && in_use {
                    before + log
                } else if queue > 6.0 * log {
                    before - log
                } else {
                    before
                };
                before * (1.0 - c.smoothing()) + estimate * c.smoothing()
            }
            (Algorithm::Gradient2, Some(rtt)) => {
                let short = rtt.as_secs_f64().max(1e-6);
                if st.long == 0.0 {
                    st.long = short;
                }
                let n = f64::from(c.long_window);
                st.long = st.long * (n - 1.0) / n + short / n;
                // After a slow spell, the average comes down faster.
                if st.long / short > 2.0 {
                    st.long *= 0.95;
                }
                let gradient = (c.tolerance * st.long / short).clamp(0.5, 1.0);
                if gradient >= 1.0 && !in_use {
                    before
                } else {
                    let queue = c.queue_size.unwrap_or_else(|| before.sqrt());
                    let estimate = before * gradient + queue;
                    before * (1.0 - c.smoothing()) + estimate * c.smoothing()
                }
            }
        };
        let next = next.clamp(self.min, self.max);
        st.limit = next;
        drop(st);
        if next.floor() != before.floor() {
            self.cap.set_limit(next as usize);
            self.gauge.set(next.floor());
        }
    }
}

/// Samples until vegas measures the no-load latency again: 30 to 60 × the limit.
fn probe_after(limit: f64) -> u64 {
    (limit.max(1.0) * (30.0 + 30.0 * fastrand::f64())) as u64
}

impl AdaptiveConfig {
    /// `smoothing`, or the algorithm's default.
    fn smoothing(&self) -> f64 {
        self.smoothing.unwrap_or(match self.algorithm {
            Algorithm::Vegas => 1.0,
            Algorithm::Gradient2 | Algorithm::Aimd => 0.2,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adaptive(algorithm: Algorithm) -> Adaptive {
        let config = AdaptiveConfig {
            algorithm,
            min_limit: 4,
            max_limit: Some(200),
            initial_limit: Some(40),
            tolerance: 1.5,
            smoothing: None,
            long_window: 100,
            queue_size: Some(2.0),
            latency_threshold: Dur(Duration::from_millis(50)),
            backoff: 0.9,
        };
        Adaptive::new(&config, Cap::new(1000), 1000, "test")
    }

    #[test]
    fn gradient2_falls_when_latency_rises_and_recovers() {
        let a = adaptive(Algorithm::Gradient2);
        let ms = Duration::from_millis;
        for _ in 0..200 {
            a.update(Some(ms(10)), a.limit());
        }
        let steady = a.limit();
        assert!(
            steady > 40,
            "grows while in use at the usual latency: {steady}"
        );
        // Five times slower: the limit falls, bounded below by min_limit.
        for _ in 0..30 {
            a.update(Some(ms(50)), a.limit());
        }
        let low = a.limit();
        assert!(low < steady / 2, "{steady} → {low}");
        assert!(low >= 4);
        // Back to usual: it recovers.
        for _ in 0..300 {
            a.update(Some(ms(10)), a.limit());
        }
        assert!(a.limit() > low * 2, "{low} → {}", a.limit());
    }

    #[test]
    fn gradient2_does_not_grow_an_unused_limit() {
        let a = adaptive(Algorithm::Gradient2);
        for _ in 0..500 {
            a.update(Some(Duration::from_millis(10)), 1);
        }
        assert_eq!(a.limit(), 40);
    }

    #[test]
    fn vegas_keeps_the_backend_queue_short() {
        let a = adaptive(Algorithm::Vegas);
        let ms = Duration::from_millis;
        // At the no-load latency, in use: it grows.
        for _ in 0..200 {
            a.update(Some(ms(10)), a.limit());
        }
        let grown = a.limit();
        assert!(grown > 40, "{grown}");
        // Latency 3× the no-load one: two thirds of the limit are queueing, it shrinks.
        for _ in 0..400 {
            a.update(Some(ms(30)), a.limit());
        }
        assert!(a.limit() < grown, "{grown} → {}", a.limit());
        // Not in use: it does not grow (once the window that was in use is over).
        for _ in 0..100 {
            a.update(Some(ms(10)), 1);
        }
        let now = a.limit();
        for _ in 0..400 {
            a.update(Some(ms(10)), 1);
        }
        assert_eq!(a.limit(), now);
    }

    #[test]
    fn aimd_adds_one_and_backs_off() {
        let a = adaptive(Algorithm::Aimd);
        for _ in 0..10 {
            a.update(Some(Duration::from_millis(10)), 100);
        }
        assert_eq!(a.limit(), 50);
        a.update(Some(Duration::from_millis(80)), 100);
        assert_eq!(a.limit(), 45);
        a.update(None, 100);
        assert_eq!(a.limit(), 40);
        for _ in 0..100 {
            a.update(None, 100);
        }
        assert_eq!(a.limit(), 4, "never below min_limit");
    }
}
