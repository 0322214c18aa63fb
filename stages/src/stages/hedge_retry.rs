//! Hedge-retry: owns the attempt loop. Select and dispatch are its sub-chain: for each
//! attempt it hands the exchange to select (a backend not tried yet) and then to dispatch
//! (send, wait for the head), each through its own [`Inlet`] — its concurrency, queue and
//! `when_full` as configured — and decides from the classified outcome whether another
//! attempt follows. Today's policy: after a connect failure (nothing was sent), try another
//! backend, up to `retries` times, when the request is safe to repeat. Hedging (parallel
//! attempts, first response wins, the losers cancelled) meets at a first-wins `Latch` here
//! later; nothing outside this module changes for it.
//!
//! A chain without hedge-retry still runs select and dispatch this way, with no retries.
//! Every rejection is counted under the sub-stage that decided it.

use std::time::Instant;

use serde::Deserialize;
use spooky_sync::Permit;

use crate::contract::exchange::{Attempt, Exchange};
use crate::contract::flow::Flow;
use crate::contract::inlet::{Entered, Inlet};
use crate::contract::reason::Reason;
use crate::metrics::StageMetrics;
use crate::stages::dispatch::{Dispatch, Failed};
use crate::stages::select::Select;
use crate::units::Size;

/// `[stages.hedge-retry]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Retries after the first attempt (connect failures only, requests safe to repeat).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// A request body is kept for another attempt up to this size (`0`: bodies are never
    /// sent twice); a larger body is not retried, and counted in
    /// `spooky_request_body_replay_overflow_total`.
    #[serde(default = "default_replay_body_limit")]
    pub replay_body_limit: Size,
}

fn default_retries() -> u32 {
    1
}

fn default_replay_body_limit() -> Size {
    Size(64 * 1024)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            retries: default_retries(),
            replay_body_limit: default_replay_body_limit(),
        }
    }
}

/// A sub-stage of the attempt loop and its inlet.
pub struct Sub<S> {
    pub stage: S,
    pub inlet: Inlet,
}

/// The running stage: the attempt loop over select and dispatch.
pub struct HedgeRetry {
    retries: u32,
    /// Counts the policy's own decisions (no more attempts); `None` without hedge-retry in
    /// the chain, where dispatch's failure is final and counted under dispatch.
    metrics: Option<StageMetrics>,
    select: Sub<Select>,
    dispatch: Sub<Dispatch>,
}

impl HedgeRetry {
    /// The loop with `config`'s policy; `None`: the chain has no hedge-retry (one attempt).
    pub fn build(
        config: Option<&Config>,
        metrics: Option<StageMetrics>,
        select: Sub<Select>,
        dispatch: Sub<Dispatch>,
    ) -> Self {
        HedgeRetry {
            retries: config.map_or(0, |c| c.retries),
            metrics,
            select,
            dispatch,
        }
    }

    /// The sub-stages' inlets (for the admin gauges and for what a generation holds).
    pub fn inlets(&self) -> [&Inlet; 2] {
        [&self.select.inlet, &self.dispatch.inlet]
    }

    /// Runs attempts until one produces a response head or the policy says no more.
    /// `carried`: the previous stage's permit, let go once select admits the exchange.
    pub async fn process(&self, mut ex: Exchange, carried: Option<Permit>) -> Flow {
        let mut carried = carried;
        loop {
            // Select: a backend for this attempt.
            let select = &self.select.inlet;
            let entered = match select.try_enter() {
                Some(p) => Entered::Run(p),
                None => select.enter(&mut ex, carried.take()).await,
            };
            drop(carried.take());
            let held = match entered {
                Entered::Run(p) => p,
                Entered::Refused(r) => return Flow::Reject(ex, r),
                Entered::Cancelled => return Flow::Abandon(ex, Reason::Cancelled),
            };
            let m = select.metrics();
            count(m, |m| m.received.increment(1));
            let t0 = Instant::now();
            let mut picked = self.select.stage.pick(&mut ex);
            if picked == Err(Reason::NoBackend) && self.select.stage.waits() {
                use crate::stages::select::Waited;
                picked = match self.select.stage.wait_for_backend(&mut ex).await {
                    Waited::Got => Ok(()),
                    Waited::Refused(r) => Err(r),
                    Waited::Cancelled => return Flow::Abandon(ex, Reason::Cancelled),
                };
            }
            let t1 = Instant::now();
            count(m, |m| m.processing.record((t1 - t0).as_secs_f64()));
            ex.record.mark_at("select", t1);
            if let Err(r) = picked {
                count(m, |m| m.rejected(r.label()).increment(1));
                return Flow::Reject(ex, r);
            }
            count(m, |m| m.emitted.increment(1));
            // Dispatch: the attempt (select's permit is held until dispatch has room).
            let dispatch = &self.dispatch.inlet;
            let entered = match dispatch.try_enter() {
                Some(p) => {
                    drop(held);
                    Entered::Run(p)
                }
                None => dispatch.enter(&mut ex, Some(held)).await,
            };
            let _running = match entered {
                Entered::Run(p) => p,
                Entered::Refused(r) => return Flow::Reject(ex, r),
                Entered::Cancelled => return Flow::Abandon(ex, Reason::Cancelled),
            };
            let m = dispatch.metrics();
            count(m, |m| m.received.increment(1));
            let t0 = Instant::now();
            // The whole loop is boxed by the engine: no second box for the attempt.
            let sent = self.dispatch.stage.attempt(&mut ex).await;
            let t1 = Instant::now();
            count(m, |m| m.processing.record((t1 - t0).as_secs_f64()));
            ex.record.mark_at("dispatch", t1);
            let failure = match sent {
                Ok(()) => {
                    count(m, |m| m.emitted.increment(1));
                    return Flow::Continue(ex);
                }
                Err(Failed::Refused(r)) => {
                    count(m, |m| m.rejected(r.label()).increment(1));
                    return Flow::Reject(ex, r);
                }
                Err(Failed::Cancelled) => {
                    count(m, |m| m.rejected(Reason::Cancelled.label()).increment(1));
                    return Flow::Abandon(ex, Reason::Cancelled);
                }
                Err(Failed::Attempt(f)) => f,
            };
            // The attempt is over: dispatch lets go of it; the policy decides.
            count(m, |m| m.emitted.increment(1));
            let backend = ex.decided.backend.unwrap_or(usize::MAX);
            ex.decided.attempts.push(Attempt {
                backend,
                error: failure.kind,
            });
            ex.permits.backend = None;
            let failed = u32::try_from(ex.decided.attempts.len()).unwrap_or(u32::MAX);
            let again = failure.kind.nothing_sent() && ex.retry_safe() && failed <= self.retries;
            // The message names the failure (`upstream connect failed`, …); the error has
            // its whole source chain.
            tracing::warn!(
                exchange = ex.id,
                upstream = ex.decided.upstream.as_ref().map(|u| u.name.as_str()),
                backend = ex.backend_name(),
                error = %crate::stages::dispatch::error_chain(&failure),
                retry = again,
                "{}",
                failure.kind.label()
            );
            if !again {
                let r = failure.kind.reason();
                // The policy's decision: counted under hedge-retry, or (without it in the
                // chain) under dispatch, whose failure is then final.
                count(self.metrics.as_ref().or(m), |m| {
                    m.rejected(r.label()).increment(1)
                });
                return Flow::Reject(ex, r);
            }
        }
    }
}

fn count(m: Option<&StageMetrics>, f: impl FnOnce(&StageMetrics)) {
    if let Some(m) = m {
        f(m);
    }
}
