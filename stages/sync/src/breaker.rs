//! Circuit breaker: closed → open on a failure rate over a sliding window (with a minimum
//! volume) or on consecutive failures; open for a while; then half-open, where exactly
//! `half_open_probes` attempts are let through; as many successes close it, one failure
//! reopens it.
//!
//! Invariants (checked by loom in `loom-tests/tests/breaker.rs`):
//! * half-open never has more than `half_open_probes` probes out at once; a probe that ends
//!   without an outcome (its exchange was cancelled) gives its place back;
//! * every transition happens once: two outcomes racing to trip the breaker open it once, and
//!   an outcome from before a transition (a late answer to an attempt admitted while closed)
//!   never counts towards the state after it.
//!
//! Time is the caller's: every call takes `now` in nanoseconds of a monotonic clock, so the
//! same code runs under loom and in tests without sleeping.
//!
//! The closed state is the common one, so admission there reads one atomic; outcomes take the
//! breaker's lock (one per backend, held for a few counter updates).

use std::fmt;

use crate::loom::{Arc, AtomicUsize, Mutex, Ordering, lock};

/// Buckets of the sliding window.
const BUCKETS: usize = 10;

/// A breaker's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Trip when at least this share of the window's outcomes failed (0: never by rate).
    pub failure_rate: f64,
    /// …and the window holds at least this many outcomes.
    pub min_requests: u32,
    /// The window's length, in nanoseconds.
    pub window: u64,
    /// Trip after this many failures in a row (0: never by a run).
    pub consecutive_failures: u32,
    /// How long it stays open before probing, in nanoseconds.
    pub open_for: u64,
    /// Probes let through when half-open (at least 1).
    pub half_open_probes: u32,
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    fn code(self) -> usize {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    fn from_code(c: usize) -> BreakerState {
        match c & 3 {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// The name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// The breaker refused an attempt (open, or half-open with every probe out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected;

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit breaker open")
    }
}

impl std::error::Error for Rejected {}

/// A circuit breaker. Cloning shares it.
#[derive(Clone)]
pub struct Breaker {
    shared: Arc<Shared>,
}

struct Shared {
    policy: BreakerPolicy,
    /// `epoch << 2 | state`, published under the lock, read without it.
    published: AtomicUsize,
    inner: Mutex<Inner>,
}

struct Inner {
    state: BreakerState,
    /// Bumped by every transition: an outcome of an older epoch is ignored.
    epoch: usize,
    /// Open: when probing may start.
    open_until: u64,
    probes_out: u32,
    probes_ok: u32,
    consecutive: u32,
    /// (slot, outcomes, failures) per bucket of the window.
    buckets: [(u64, u32, u32); BUCKETS],
    /// Times it opened (from closed or from half-open).
    opened: u64,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .finish()
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Breaker {
        let policy = BreakerPolicy {
            half_open_probes: policy.half_open_probes.max(1),
            window: policy.window.max(BUCKETS as u64),
            ..policy
        };
        Breaker {
            shared: Arc::new(Shared {
                policy,
                published: AtomicUsize::new(0),
                inner: Mutex::new(Inner {
                    state: BreakerState::Closed,
                    epoch: 0,
                    open_until: 0,
                    probes_out: 0,
                    probes_ok: 0,
                    consecutive: 0,
                    buckets: [(0, 0, 0); BUCKETS],
                    opened: 0,
                }),
            }),
        }
    }

    /// The state as last published (an open breaker whose time is up reads open until
    /// something asks to pass).
    pub fn state(&self) -> BreakerState {
        BreakerState::from_code(self.shared.published.load(Ordering::Acquire))
    }

    /// How many times it opened.
    pub fn opened(&self) -> u64 {
        lock(&self.shared.inner).opened
    }

    /// Asks to send an attempt at `now`: a ticket to report its outcome with, or refused.
    pub fn try_admit(&self, now: u64) -> Result<Ticket, Rejected> {
        let published = self.shared.published.load(Ordering::Acquire);
        if BreakerState::from_code(published) == BreakerState::Closed {
            return Ok(self.ticket(published >> 2, false));
        }
        let mut st = lock(&self.shared.inner);
        if st.state == BreakerState::Open {
            if now < st.open_until {
                return Err(Rejected);
            }
            st.probes_out = 0;
            st.probes_ok = 0;
            self.transition(&mut st, BreakerState::HalfOpen);
        }
        match st.state {
            BreakerState::Closed => Ok(self.ticket(st.epoch, false)),
            BreakerState::HalfOpen if st.probes_out < self.shared.policy.half_open_probes => {
                st.probes_out += 1;
                Ok(self.ticket(st.epoch, true))
            }
            _ => Err(Rejected),
        }
    }

    fn ticket(&self, epoch: usize, probe: bool) -> Ticket {
        Ticket {
            breaker: self.clone(),
            epoch,
            probe,
            done: false,
        }
    }

    /// Moves to `to` and publishes it.
    fn transition(&self, st: &mut Inner, to: BreakerState) {
        st.state = to;
        st.epoch = st.epoch.wrapping_add(1) & (usize::MAX >> 2);
        self.shared
            .published
            .store(st.epoch << 2 | to.code(), Ordering::Release);
    }

    fn open(&self, st: &mut Inner, now: u64) {
        st.open_until = now.saturating_add(self.shared.policy.open_for);
        st.opened += 1;
        st.consecutive = 0;
        st.buckets = [(0, 0, 0); BUCKETS];
        self.transition(st, BreakerState::Open);
    }

    /// An outcome of a ticket of `epoch`; returns the state it moved the breaker to.
    fn outcome(&self, epoch: usize, probe: bool, ok: bool, now: u64) -> Option<BreakerState> {
        let policy = self.shared.policy;
        let mut st = lock(&self.shared.inner);
        if st.epoch != epoch {
            // From before a transition: it says nothing about the state now.
            return None;
        }
        match st.state {
            BreakerState::Closed => {
                let width = policy.window / BUCKETS as u64;
                let slot = now / width;
                let b = &mut st.buckets[(slot % BUCKETS as u64) as usize];
                if b.0 != slot {
                    *b = (slot, 0, 0);
                }
                b.1 += 1;
                if ok {
                    st.consecutive = 0;
                    return None;
                }
                b.2 += 1;
                st.consecutive += 1;
                let by_run = policy.consecutive_failures > 0
                    && st.consecutive >= policy.consecutive_failures;
                let (total, failed) = st
                    .buckets
                    .iter()
                    .filter(|b| b.0 + (BUCKETS as u64) > slot)
                    .fold((0u64, 0u64), |(t, f), b| (t + b.1 as u64, f + b.2 as u64));
                let by_rate = policy.failure_rate > 0.0
                    && total >= policy.min_requests.max(1) as u64
                    && failed as f64 >= policy.failure_rate * total as f64;
                if by_run || by_rate {
                    self.open(&mut st, now);
                    return Some(BreakerState::Open);
                }
                None
            }
            BreakerState::HalfOpen if probe => {
                st.probes_out = st.probes_out.saturating_sub(1);
                if !ok {
                    self.open(&mut st, now);
                    return Some(BreakerState::Open);
                }
                st.probes_ok += 1;
                if st.probes_ok >= policy.half_open_probes {
                    st.consecutive = 0;
                    st.buckets = [(0, 0, 0); BUCKETS];
                    self.transition(&mut st, BreakerState::Closed);
                    return Some(BreakerState::Closed);
                }
                None
            }
            _ => None,
        }
    }
}

/// One admitted attempt: report its outcome with [`Ticket::success`] or [`Ticket::failure`].
/// Dropped without one (the exchange was cancelled), a probe gives its place back.
pub struct Ticket {
    breaker: Breaker,
    epoch: usize,
    probe: bool,
    done: bool,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("probe", &self.probe)
            .finish()
    }
}

impl Ticket {
    /// Whether this attempt is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The attempt succeeded at `now`; the state it moved the breaker to, if any.
    pub fn success(mut self, now: u64) -> Option<BreakerState> {
        self.done = true;
        self.breaker.outcome(self.epoch, self.probe, true, now)
    }

    /// The attempt failed at `now`; the state it moved the breaker to, if any.
    pub fn failure(mut self, now: u64) -> Option<BreakerState> {
        self.done = true;
        self.breaker.outcome(self.epoch, self.probe, false, now)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done || !self.probe {
            return;
        }
        let mut st = lock(&self.breaker.shared.inner);
        if st.epoch == self.epoch && st.state == BreakerState::HalfOpen {
            st.probes_out = st.probes_out.saturating_sub(1);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failure_rate: 0.5,
            min_requests: 4,
            window: 10 * S,
            consecutive_failures: 0,
            open_for: 5 * S,
            half_open_probes: 1,
        }
    }

    #[test]
    fn opens_on_rate_only_with_enough_volume() {
        let b = Breaker::new(policy());
        for _ in 0..3 {
            assert_eq!(b.try_admit(S).expect("admitted").failure(S), None);
        }
        // Fourth outcome: 4 of 4 failed, volume reached.
        assert_eq!(
            b.try_admit(S).expect("admitted").failure(S),
            Some(BreakerState::Open)
        );
        assert_eq!(b.try_admit(2 * S).expect_err("refused"), Rejected);
        assert_eq!(b.opened(), 1);
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let b = Breaker::new(policy());
        for _ in 0..3 {
            b.try_admit(S).expect("admitted").failure(S);
        }
        // 20 s later the three failures are out of the 10 s window.
        for _ in 0..3 {
            assert_eq!(b.try_admit(21 * S).expect("admitted").success(21 * S), None);
        }
        assert_eq!(b.try_admit(21 * S).expect("admitted").failure(21 * S), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn opens_on_a_run() {
        let b = Breaker::new(BreakerPolicy {
            failure_rate: 0.0,
            consecutive_failures: 3,
            ..policy()
        });
        b.try_admit(0).expect("admitted").failure(0);
        b.try_admit(0).expect("admitted").failure(0);
        b.try_admit(0).expect("admitted").success(0);
        b.try_admit(0).expect("admitted").failure(0);
        b.try_admit(0).expect("admitted").failure(0);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(
            b.try_admit(0).expect("admitted").failure(0),
            Some(BreakerState::Open)
        );
    }

    #[test]
    fn half_open_admits_exactly_the_probes_then_closes_or_reopens() {
        let b = Breaker::new(BreakerPolicy {
            consecutive_failures: 1,
            half_open_probes: 2,
            ..policy()
        });
        b.try_admit(0).expect("admitted").failure(0);
        assert!(b.try_admit(4 * S).is_err());
        let p1 = b.try_admit(5 * S).expect("admitted");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let p2 = b.try_admit(5 * S).expect("admitted");
        assert!(p1.is_probe() && p2.is_probe());
        assert!(b.try_admit(5 * S).is_err());
        // A cancelled probe gives its place back.
        drop(p2);
        let p3 = b.try_admit(5 * S).expect("admitted");
        assert_eq!(p1.success(5 * S), None);
        assert_eq!(p3.success(5 * S), Some(BreakerState::Closed));
        // Reopens on a failed probe, for another `open_for`.
        b.try_admit(6 * S).expect("admitted").failure(6 * S);
        let p = b.try_admit(11 * S).expect("admitted");
        assert_eq!(p.failure(11 * S), Some(BreakerState::Open));
        assert!(b.try_admit(15 * S).is_err());
        assert!(b.try_admit(16 * S).is_ok());
        assert_eq!(b.opened(), 3);
    }

    #[test]
    fn a_late_outcome_from_before_opening_is_ignored() {
        let b = Breaker::new(BreakerPolicy {
            consecutive_failures: 1,
            ..policy()
        });
        let late = b.try_admit(0).expect("admitted");
        b.try_admit(0).expect("admitted").failure(0);
        let probe = b.try_admit(5 * S).expect("admitted");
        // The attempt admitted while closed fails now: it must not reopen the breaker.
        assert_eq!(late.failure(5 * S), None);
        assert_eq!(probe.success(5 * S), Some(BreakerState::Closed));
    }
}
