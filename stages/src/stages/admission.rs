//! Admission: the global inflight cap. An exchange takes one permit here and holds it until it
//! ends; when the cap is full the stage sheds (503 + `Retry-After`) or waits, per `when_full`.
//!
//! Brownout (`brownout = { enter, exit, shed }`) watches the same cap: when inflight crosses
//! `enter` × the limit, routes of the classes in `shed` are refused (503 `brownout` with
//! `Retry-After`) — the first class at `enter`, each further one at an even step between
//! `enter` and the full cap — and each class is let through again once inflight falls
//! `enter − exit` below where it started (the first at `exit`: hysteresis). `critical`
//! routes are never shed, and an empty `shed` list sheds nothing. The route stage asks (it
//! knows the route's `priority`); the state moves only when it is asked, so it costs a few
//! atomic reads per request and no task.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;
use spooky_sync::{Cap, TryAcquireError};

use crate::contract::exchange::Exchange;
use crate::contract::flow::Flow;
use crate::contract::reason::Reason;
use crate::contract::route::Priority;
use crate::stages::WhenFull;
use crate::stages::adaptive::Adaptive;

/// `[stages.admission]`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Exchanges admitted at once, across all listeners.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: NonZeroUsize,
    /// Shedding by route priority near the cap (absent: none).
    pub brownout: Option<BrownoutConfig>,
    /// A limit that follows upstream latency, within `max_inflight` (absent: fixed).
    pub adaptive: Option<crate::stages::adaptive::AdaptiveConfig>,
}

/// `[stages.admission] brownout = { … }`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrownoutConfig {
    /// Share of `max_inflight` in use at which shedding starts.
    #[serde(default = "default_enter")]
    pub enter: f64,
    /// Share below which it stops (lower than `enter`: hysteresis).
    #[serde(default = "default_exit")]
    pub exit: f64,
    /// Classes shed, first to last (`critical` never is).
    #[serde(default = "default_shed")]
    pub shed: Vec<Priority>,
}

fn default_enter() -> f64 {
    0.9
}
fn default_exit() -> f64 {
    0.6
}
fn default_shed() -> Vec<Priority> {
    vec![Priority::Background, Priority::Normal]
}

impl BrownoutConfig {
    /// Problems, as (key, message), for validation.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !(self.enter.is_finite() && self.enter > 0.0 && self.enter <= 1.0) {
            out.push((
                "enter",
                "expected a share above 0.0, at most 1.0".to_string(),
            ));
        }
        if !(self.exit.is_finite() && self.exit >= 0.0 && self.exit < self.enter) {
            out.push(("exit", "expected a share from 0.0, below enter".to_string()));
        }
        if self.shed.contains(&Priority::Critical) {
            out.push(("shed", "critical routes are never shed".to_string()));
        }
        if (1..self.shed.len()).any(|i| self.shed[..i].contains(&self.shed[i])) {
            out.push(("shed", "a class is listed twice".to_string()));
        }
        out
    }
}

/// The running brownout of a pipeline's admission cap.
pub struct Brownout {
    cap: Cap,
    enter: f64,
    exit: f64,
    shed: Vec<Priority>,
    /// How many classes of `shed` are refused now (0: not in brownout).
    depth: AtomicUsize,
    gauge: metrics::Gauge,
}

impl Brownout {
    fn new(config: &BrownoutConfig, cap: Cap, pipeline: &str) -> Brownout {
        let gauge = metrics::gauge!(crate::metrics::BROWNOUT, "pipeline" => pipeline.to_string());
        gauge.set(0.0);
        Brownout {
            cap,
            enter: config.enter,
            exit: config.exit,
            shed: config.shed.clone(),
            depth: AtomicUsize::new(0),
            gauge,
        }
    }

    /// Whether a route of `priority` is refused now. Class `i` of `n` in `shed` is refused
    /// from `enter + (1 − enter) × i / n` of the cap, until inflight falls `enter − exit`
    /// below that (so the first class stops at `exit`).
    pub fn sheds(&self, priority: Priority) -> bool {
        let Some(pos) = self.shed.iter().position(|p| *p == priority) else {
            return false;
        };
        let load = self.cap.in_use() as f64 / self.cap.limit().max(1) as f64;
        let n = self.shed.len();
        let starts = |i: usize| self.enter + (1.0 - self.enter) * i as f64 / n as f64;
        let depth = self.depth.load(Ordering::Relaxed);
        let mut new = depth;
        while new < n && load >= starts(new) {
            new += 1;
        }
        while new > 0 && load < starts(new - 1) - (self.enter - self.exit) {
            new -= 1;
        }
        if new != depth
            && self
                .depth
                .compare_exchange(depth, new, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.gauge.set(new as f64);
            if new == 0 {
                tracing::warn!(load, "brownout over");
            } else {
                let shed: Vec<&str> = self.shed[..new].iter().map(|p| p.name()).collect();
                tracing::warn!(load, shed = ?shed, "brownout: shedding routes by priority");
            }
        }
        pos < self.depth.load(Ordering::Relaxed)
    }

    /// Whether any class is being shed (hedging waits it out).
    pub fn active(&self) -> bool {
        self.depth.load(Ordering::Relaxed) > 0
    }
}

fn default_max_inflight() -> NonZeroUsize {
    NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_inflight: default_max_inflight(),
            brownout: None,
            adaptive: None,
        }
    }
}

/// The running stage.
pub struct Admission {
    cap: Cap,
    when_full: WhenFull,
    brownout: Option<Arc<Brownout>>,
    adaptive: Option<Arc<Adaptive>>,
}

impl Admission {
    pub fn build(config: &Config, when_full: WhenFull, pipeline: &str) -> Self {
        let cap = Cap::new(config.max_inflight.get());
        metrics::gauge!(crate::metrics::ADMISSION_LIMIT, "pipeline" => pipeline.to_string())
            .set(cap.limit() as f64);
        let adaptive = config.adaptive.as_ref().map(|a| {
            Arc::new(Adaptive::new(
                a,
                cap.clone(),
                config.max_inflight.get(),
                pipeline,
            ))
        });
        Admission {
            adaptive,
            brownout: config
                .brownout
                .as_ref()
                .map(|b| Arc::new(Brownout::new(b, cap.clone(), pipeline))),
            cap,
            when_full,
        }
    }

    /// The adaptive limit of this cap, when configured (hedge-retry feeds it latencies).
    pub fn adaptive(&self) -> Option<Arc<Adaptive>> {
        self.adaptive.clone()
    }

    /// The brownout watching this cap, when configured (the route stage asks it).
    pub fn brownout(&self) -> Option<Arc<Brownout>> {
        self.brownout.clone()
    }

    /// The global inflight cap (for metrics and drain).
    pub fn cap(&self) -> &Cap {
        &self.cap
    }

    /// Sets the admission gauges (scrape time).
    pub fn sample_gauges(&self, pipeline: &str) {
        use crate::metrics::{ADMISSION_INFLIGHT, ADMISSION_WAITING};
        metrics::gauge!(ADMISSION_INFLIGHT, "pipeline" => pipeline.to_string())
            .set(self.cap.in_use() as f64);
        metrics::gauge!(ADMISSION_WAITING, "pipeline" => pipeline.to_string())
            .set(self.cap.waiting() as f64);
    }

    pub async fn process(&self, mut ex: Exchange) -> Flow {
        let permit = match self.cap.try_acquire() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return Flow::Reject(ex, Reason::ShuttingDown),
            Err(TryAcquireError::Full) if self.when_full == WhenFull::Shed => {
                return Flow::Reject(ex, Reason::AdmissionFull);
            }
            Err(TryAcquireError::Full) => {
                let acquired = {
                    let acquire = self.cap.acquire();
                    tokio::select! {
                        r = acquire => Some(r),
                        () = ex.cancelled() => None,
                    }
                };
                match acquired {
                    Some(Ok(p)) => p,
                    Some(Err(_)) => return Flow::Reject(ex, Reason::ShuttingDown),
                    None => return Flow::Abandon(ex, Reason::Cancelled),
                }
            }
        };
        ex.permits.admission = Some(permit);
        Flow::Continue(ex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brownout(shed: Vec<Priority>, cap: &Cap) -> Brownout {
        Brownout::new(
            &BrownoutConfig {
                enter: 0.5,
                exit: 0.2,
                shed,
            },
            cap.clone(),
            "test",
        )
    }

    #[test]
    fn an_empty_list_sheds_nothing_and_critical_is_never_shed() {
        let cap = Cap::new(4);
        let _all: Vec<_> = (0..4).map(|_| cap.try_acquire().expect("room")).collect();
        let none = brownout(Vec::new(), &cap);
        for p in [Priority::Critical, Priority::Normal, Priority::Background] {
            assert!(!none.sheds(p));
        }
        let both = brownout(vec![Priority::Background, Priority::Normal], &cap);
        assert!(both.sheds(Priority::Background));
        assert!(both.sheds(Priority::Normal));
        assert!(!both.sheds(Priority::Critical));
        assert!(both.active());
    }

    #[test]
    fn bad_brownout_settings_say_which_key() {
        let bad = BrownoutConfig {
            enter: 0.5,
            exit: 0.7,
            shed: vec![Priority::Critical, Priority::Normal, Priority::Normal],
        };
        let keys: Vec<&str> = bad.problems().into_iter().map(|p| p.0).collect();
        assert_eq!(keys, vec!["exit", "shed", "shed"]);
    }
}
