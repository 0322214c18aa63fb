//! Hedge-retry: owns the attempt loop. Select and dispatch are its sub-chain: for each
//! attempt it hands the exchange to select (a backend not tried yet) and then to dispatch
//! (send, wait for the head), each through its own [`Inlet`] — its concurrency, queue and
//! `when_full` as configured — and decides from the classified outcome whether another
//! attempt follows.
//!
//! The policy is the upstream's own `retry` (`upstreams::retry`): `retry_on` failures and
//! statuses, `attempts` in all, a per-try timeout, jittered backoff, and a retry budget; an
//! answer with a retried status is held back while the next attempt is chosen, and is the
//! client's answer when no backend is left for one (once a new attempt starts, its outcome
//! is). A retry goes to a backend not tried yet, or, when none is left, to a tried one.
//! Only idempotent methods are retried once sent, unless the route sets
//! `retry_non_idempotent`; after a connect failure any method may go again. Upstreams
//! without `retry` get the stage-wide one: connect failures, `retries` times, idempotent
//! requests only, to backends not tried yet. Hedging (parallel
//! attempts, first response wins, the losers cancelled) meets at a first-wins `Latch` here
//! later; nothing outside this module changes for it.
//!
//! A chain without hedge-retry still runs select and dispatch this way, with no retries.
//! Every rejection is counted under the sub-stage that decided it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use spooky_sync::{Latch, Permit, Race};

use crate::contract::exchange::{Attempt, AttemptError, AttemptFailure, Exchange};
use crate::contract::flow::Flow;
use crate::contract::inlet::{Entered, Inlet};
use crate::contract::reason::Reason;
use crate::contract::route::HedgeDelay;
use crate::metrics::{HEDGES, HEDGES_WON, RETRIES, RETRY_BUDGET_EXHAUSTED, StageMetrics};
use crate::stages::adaptive::Adaptive;
use crate::stages::admission::Brownout;
use crate::stages::dispatch::{Dispatch, Failed, Head};
use crate::stages::select::Select;
use crate::units::Size;
use crate::upstreams::balance::{now_ns, ns_at};
use crate::upstreams::retry::{RetryOn, RetryPolicy};

/// A response head held back while another attempt is made.
type ResponseHead = http::Response<crate::upstreams::UpstreamBody>;

/// `[stages.hedge-retry]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
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
    /// The policy of upstreams without their own `retry`: connect failures, `retries` times.
    policy: RetryPolicy,
    /// Counts the policy's own decisions (no more attempts); `None` without hedge-retry in
    /// the chain, where dispatch's failure is final and counted under dispatch.
    metrics: Option<StageMetrics>,
    select: Sub<Select>,
    dispatch: Sub<Dispatch>,
    /// Admission's brownout: no hedge while it sheds.
    brownout: Option<Arc<Brownout>>,
    /// Admission's adaptive limit, fed each attempt's outcome.
    adaptive: Option<Arc<Adaptive>>,
}

/// A request that may be processed from 0-RTT data: GET, HEAD or OPTIONS declaring no body
/// (no `content-length` above 0: an HTTP/3 request's end is not known before its body is
/// read, and these methods are safe whatever they carry), or any request of a route with
/// `early_data = true`.
fn replayable_early(ex: &Exchange) -> bool {
    use http::Method;
    let safe = matches!(ex.head.method, Method::GET | Method::HEAD | Method::OPTIONS)
        && ex.body.declared().unwrap_or(0) == 0;
    safe || ex.decided.route.as_ref().is_some_and(|r| r.early_data)
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
            policy: RetryPolicy::connect_only(config.map_or(0, |c| c.retries)),
            metrics,
            select,
            dispatch,
            brownout: None,
            adaptive: None,
        }
    }

    /// Feeds attempts' latencies (and failures) to admission's adaptive limit.
    pub fn with_adaptive(mut self, adaptive: Option<Arc<Adaptive>>) -> Self {
        self.adaptive = adaptive;
        self
    }

    /// Hedges wait while `brownout` sheds.
    pub fn with_brownout(mut self, brownout: Option<Arc<Brownout>>) -> Self {
        self.brownout = brownout;
        self
    }

    /// The sub-stages' inlets (for the admin gauges and for what a generation holds).
    pub fn inlets(&self) -> [&Inlet; 2] {
        [&self.select.inlet, &self.dispatch.inlet]
    }

    /// Runs attempts until one produces a response head the policy keeps, or the policy
    /// says no more. `carried`: the previous stage's permit, let go once select admits the
    /// exchange.
    pub async fn process(&self, mut ex: Exchange, carried: Option<Permit>) -> Flow {
        if let Some(h) = ex.client.handshake.clone()
            && !h.done()
            && !replayable_early(&ex)
        {
            // RFC 8470 §5.1: a request that may not be replayed waits for the handshake,
            // which a replayed 0-RTT flight cannot complete.
            tracing::debug!(exchange = ex.id, "0-RTT request waits for the handshake");
            let completed = tokio::select! {
                ok = h.wait() => ok,
                () = ex.cancelled() => false,
            };
            if !completed {
                return Flow::Abandon(ex, Reason::Cancelled);
            }
        }
        let mut carried = carried;
        let upstream = ex.decided.upstream.clone();
        let policy = upstream
            .as_ref()
            .and_then(|u| u.retry.as_ref())
            .unwrap_or(&self.policy);
        // An answer the policy retries, held back while another attempt is made: the client
        // gets it when no other attempt can be made.
        // Boxed: rare, and the loop's future stays small for every exchange.
        let mut held: Option<Box<ResponseHead>> = None;
        loop {
            // Select: a backend for this attempt.
            let select = &self.select.inlet;
            let entered = match select.try_enter() {
                Some(p) => Entered::Run(p),
                None => select.enter(&mut ex, carried.take()).await,
            };
            drop(carried.take());
            let held_permit = match entered {
                Entered::Run(p) => p,
                Entered::Refused(r) => return Flow::Reject(ex, r),
                Entered::Cancelled => return Flow::Abandon(ex, Reason::Cancelled),
            };
            let m = select.metrics();
            count(m, |m| m.received.increment(1));
            let t0 = Instant::now();
            let mut picked = self.select.stage.pick(&mut ex, policy.explicit);
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
                if let Some(answer) = held.take() {
                    // No backend for another attempt: the held answer is the answer.
                    count(m, |m| m.emitted.increment(1));
                    ex.response = Some(*answer);
                    return Flow::Continue(ex);
                }
                // After a failed attempt select answers with that failure: it is counted
                // where it happened (dispatch), not where the retry went.
                let at = if ex.decided.attempts.is_empty() {
                    m
                } else {
                    self.dispatch.inlet.metrics()
                };
                count(at, |m| m.rejected(r.label()).increment(1));
                return Flow::Reject(ex, r);
            }
            count(m, |m| m.emitted.increment(1));
            // Dispatch: the attempt (select's permit is held until dispatch has room).
            let dispatch = &self.dispatch.inlet;
            let entered = match dispatch.try_enter() {
                Some(p) => {
                    drop(held_permit);
                    Entered::Run(p)
                }
                None => dispatch.enter(&mut ex, Some(held_permit)).await,
            };
            let _running = match entered {
                Entered::Run(p) => p,
                Entered::Refused(r) => return Flow::Reject(ex, r),
                Entered::Cancelled => return Flow::Abandon(ex, Reason::Cancelled),
            };
            // A new attempt is under way: the held answer is given up for it.
            held = None;
            let m = dispatch.metrics();
            count(m, |m| m.received.increment(1));
            let t0 = Instant::now();
            if ex.decided.attempts.is_empty()
                && let Some(u) = &upstream
                && u.budgeted.load(std::sync::atomic::Ordering::Relaxed)
            {
                u.budget.request(ns_at(t0));
            }
            // The whole exchange is boxed by its adapter: no second box for the attempt.
            let sent = match self.hedge_delay(&ex) {
                Some(delay) => Box::pin(self.hedged(&mut ex, policy, delay)).await,
                None => {
                    self.dispatch
                        .stage
                        .attempt(&mut ex, policy.per_try_timeout)
                        .await
                }
            };
            let t1 = Instant::now();
            count(m, |m| m.processing.record((t1 - t0).as_secs_f64()));
            ex.record.mark_at("dispatch", t1);
            if ex.record.trace.is_some() {
                let (outcome, status) = match &sent {
                    Ok(()) => (
                        "response",
                        ex.response.as_ref().map(|r| r.status().as_u16()),
                    ),
                    Err(Failed::Attempt(f)) => (f.kind.code(), None),
                    Err(Failed::Refused(r)) => (r.label(), None),
                    Err(Failed::Cancelled) => ("cancelled", None),
                };
                let at = t1.saturating_duration_since(ex.started);
                if let Some(trace) = ex.record.trace.as_mut() {
                    trace.close_attempts(at, outcome, status);
                }
            }
            if let Some(a) = &self.adaptive {
                match &sent {
                    Ok(()) => a.sample(t1 - t0),
                    Err(Failed::Attempt(f)) if !f.kind.nothing_sent() => a.dropped(),
                    Err(_) => {}
                }
            }
            let failure = match sent {
                Ok(()) => {
                    count(m, |m| m.emitted.increment(1));
                    let status = ex.response.as_ref().map(|r| r.status());
                    let on = status.and_then(|s| policy.covers_status(s));
                    match (status, on) {
                        (Some(s), Some(on)) => {
                            let kind = AttemptError::Answered(s);
                            if !self.retries(&ex, policy, kind, on) {
                                return Flow::Continue(ex);
                            }
                            held = ex.response.take().map(Box::new);
                            AttemptFailure {
                                kind,
                                source: format!("answered {s}").into(),
                            }
                        }
                        _ => return Flow::Continue(ex),
                    }
                }
                Err(Failed::Refused(r)) => {
                    count(m, |m| m.rejected(r.label()).increment(1));
                    return Flow::Reject(ex, r);
                }
                Err(Failed::Cancelled) => {
                    count(m, |m| m.rejected(Reason::Cancelled.label()).increment(1));
                    return Flow::Abandon(ex, Reason::Cancelled);
                }
                Err(Failed::Attempt(f)) => {
                    count(m, |m| m.emitted.increment(1));
                    f
                }
            };
            // The attempt is over: dispatch lets go of it; the policy decides.
            let backend = ex.decided.backend.unwrap_or(usize::MAX);
            ex.permits.backend = None;
            let again = held.is_some()
                || policy
                    .covers_failure(failure.kind.retry_kind())
                    .is_some_and(|on| self.retries(&ex, policy, failure.kind, on));
            ex.decided.attempts.push(Attempt {
                backend,
                error: failure.kind,
            });
            // The message names the failure (`upstream connect failed`, …); the error has
            // its whole source chain.
            tracing::warn!(
                exchange = ex.id,
                upstream = upstream.as_ref().map(|u| u.name.as_str()),
                backend = ex.backend_name(),
                error = %crate::stages::dispatch::error_chain(&failure),
                retry = again,
                "{}",
                failure.kind.label()
            );
            if !again {
                let r = failure.kind.reason();
                // The attempt's failure, counted where it happened (dispatch).
                count(m, |m| m.rejected(r.label()).increment(1));
                return Flow::Reject(ex, r);
            }
            let wait = policy.backoff(u32::try_from(ex.decided.attempts.len()).unwrap_or(u32::MAX));
            if ex
                .total_deadline
                .is_some_and(|d| Instant::now() + wait >= d)
            {
                // No time left for another attempt within the route's total.
                if let Some(answer) = held.take() {
                    ex.response = Some(*answer);
                    return Flow::Continue(ex);
                }
                let r = Reason::TotalTimeout;
                count(self.metrics.as_ref().or(m), |m| {
                    m.rejected(r.label()).increment(1)
                });
                return Flow::Reject(ex, r);
            }
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = ex.cancelled() => return Flow::Abandon(ex, Reason::Cancelled),
                }
            }
        }
    }

    /// The delay after which the first attempt is hedged, if it is: the route asks for it,
    /// the request is idempotent and has no body (two attempts cannot read one body at
    /// once), the upstream has another backend, brownout is not on, and a percentile delay
    /// has enough samples.
    fn hedge_delay(&self, ex: &Exchange) -> Option<Duration> {
        let delay = ex.decided.route.as_ref()?.hedge?;
        let upstream = ex.decided.upstream.as_ref()?;
        if !ex.decided.attempts.is_empty()
            || !ex.idempotent()
            || !ex.body.can_repeat()
            || upstream.backends.len() < 2
            || self.brownout.as_ref().is_some_and(|b| b.active())
        {
            return None;
        }
        match delay {
            HedgeDelay::Fixed(d) => Some(d),
            HedgeDelay::Percentile(p) => upstream.latency.percentile(p),
        }
    }

    /// The first attempt, and after `delay` without its head, a second one to another
    /// backend (when the budget allows): the first response head wins (the first-wins
    /// latch), the other attempt is dropped — its request cancelled, its permits let go.
    /// Both failing is the later failure (the earlier is recorded as an attempt).
    async fn hedged(
        &self,
        ex: &mut Exchange,
        policy: &RetryPolicy,
        delay: Duration,
    ) -> Result<(), Failed> {
        let dispatch = &self.dispatch.stage;
        let first = dispatch.prepare(ex, policy.per_try_timeout)?;
        let first_backend = first.backend;
        let a = dispatch.send(first);
        tokio::pin!(a);
        let sleep = tokio::time::sleep(delay);
        tokio::select! {
            r = &mut a => return land(ex, r),
            () = sleep => {}
            () = ex.cancelled() => return Err(Failed::Cancelled),
        }
        let upstream = ex.decided.upstream.clone();
        let allowed = upstream.as_ref().is_some_and(|u| {
            let ok = u.budget.try_retry(now_ns());
            if !ok {
                metrics::counter!(RETRY_BUDGET_EXHAUSTED, "upstream" => u.name.clone())
                    .increment(1);
            }
            ok
        }) && self.brownout.as_ref().is_none_or(|b| !b.active());
        let second = if allowed
            && self
                .select
                .stage
                .pick_avoiding(ex, false, Some(first_backend))
                .is_ok()
        {
            dispatch.prepare(ex, policy.per_try_timeout).ok()
        } else {
            None
        };
        let Some(second) = second else {
            // No hedge after all: the first attempt alone.
            return tokio::select! {
                r = &mut a => land(ex, r),
                () = ex.cancelled() => Err(Failed::Cancelled),
            };
        };
        let name = upstream
            .as_ref()
            .map_or("", |u| u.name.as_str())
            .to_string();
        let hedge_backend = ex.backend_name().unwrap_or("").to_string();
        metrics::counter!(HEDGES, "upstream" => name.clone(), "backend" => hedge_backend.clone())
            .increment(1);
        let second_backend = second.backend;
        let b = dispatch.send(second);
        tokio::pin!(b);
        let latch = Latch::new();
        let (mut a_done, mut b_done) = (false, false);
        loop {
            let (who, r) = tokio::select! {
                r = &mut a, if !a_done => (first_backend, r),
                r = &mut b, if !b_done => (second_backend, r),
                () = ex.cancelled() => return Err(Failed::Cancelled),
            };
            let hedge = who == second_backend;
            if hedge {
                b_done = true;
            } else {
                a_done = true;
            }
            match r {
                Ok(head) => {
                    if latch.try_win(who) == Race::Won {
                        if hedge {
                            metrics::counter!(HEDGES_WON, "upstream" => name, "backend" => hedge_backend)
                                .increment(1);
                        }
                        // The loser is dropped with this frame: its request is cancelled.
                        return land(ex, Ok(head));
                    }
                }
                Err(f) if a_done && b_done => {
                    ex.decided.backend = Some(who);
                    return Err(f);
                }
                Err(Failed::Attempt(f)) => {
                    // The other attempt may still answer; this one is a failed attempt.
                    ex.decided.attempts.push(Attempt {
                        backend: who,
                        error: f.kind,
                    });
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Whether the policy sends another attempt after `kind` (covered by `on`): attempts
    /// are left, the request can be sent again, and the budget has a retry. Counts the
    /// retry, or the budget's refusal.
    fn retries(
        &self,
        ex: &Exchange,
        policy: &RetryPolicy,
        kind: AttemptError,
        on: RetryOn,
    ) -> bool {
        let made = ex.decided.attempts.len() + 1;
        if made >= policy.attempts as usize || !ex.body.can_repeat() {
            return false;
        }
        // After a connect failure nothing was sent: any method may go again (with an
        // upstream's own policy, which keeps every request's head for it). Otherwise only
        // idempotent methods, or a route that says its handlers are safe to repeat.
        let route_opts_in = ex
            .decided
            .route
            .as_ref()
            .is_some_and(|r| r.retry_non_idempotent);
        let method_ok =
            ex.idempotent() || (policy.explicit && (kind.nothing_sent() || route_opts_in));
        if !method_ok {
            return false;
        }
        let upstream = ex.decided.upstream.as_ref().map_or("", |u| u.name.as_str());
        if policy.budgeted
            && let Some(u) = &ex.decided.upstream
            && !u.budget.try_retry(now_ns())
        {
            metrics::counter!(RETRY_BUDGET_EXHAUSTED, "upstream" => upstream.to_string())
                .increment(1);
            tracing::info!(
                exchange = ex.id,
                upstream,
                "retry budget exhausted; no retry"
            );
            return false;
        }
        metrics::counter!(
            RETRIES,
            "upstream" => upstream.to_string(),
            "backend" => ex.backend_name().unwrap_or("").to_string(),
            "on" => on.label()
        )
        .increment(1);
        true
    }
}

/// An attempt's outcome into the exchange: its response head and backend permit.
fn land(ex: &mut Exchange, r: Result<Head, Failed>) -> Result<(), Failed> {
    let head = r?;
    ex.decided.backend = Some(head.backend);
    ex.permits.backend = head.permit;
    ex.response = Some(head.response);
    Ok(())
}

fn count(m: Option<&StageMetrics>, f: impl FnOnce(&StageMetrics)) {
    if let Some(m) = m {
        f(m);
    }
}
