//! The timers of one TCP connection (HTTP/1.1 or HTTP/2, over TLS or plain), so that a
//! connection can never hold a `max_connections` slot by saying nothing.
//!
//! * `header_timeout` bounds the time from accept to the first complete request head — the TLS
//!   handshake included — and, on HTTP/1.1, from the first byte of each later head to its end.
//! * `idle_timeout` bounds the time a connection sits with no request in flight after one.
//!
//! The clock is a pure state machine driven by four events: the head guard saw a head start
//! ([`ConnClock::head_started`]) or end ([`ConnClock::head_complete`]); the adapter began a
//! request ([`ConnClock::request_started`], whose [`Busy`] guard rides in the response body and
//! ends the request when dropped). [`ConnClock::expired`] completes when the current deadline
//! passes with nothing in flight, naming the phase that timed out; the adapter then closes the
//! connection (HTTP/1.1: `408` when a head was awaited; HTTP/2: GOAWAY).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// What the connection was waiting for when its deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing answered yet: the handshake and the first request head.
    FirstHead,
    /// A later head has started and not ended.
    Head,
    /// A head ended; the request has not reached the service yet.
    Handed,
    /// Requests in flight: no deadline.
    Busy,
    /// Requests were answered and none is in flight.
    Idle,
}

impl Phase {
    /// Whether a client is owed a `408 Request Timeout` when this phase times out.
    pub fn awaits_head(self) -> bool {
        matches!(self, Phase::FirstHead | Phase::Head)
    }

    /// A metric label.
    pub fn label(self) -> &'static str {
        if self.awaits_head() { "header" } else { "idle" }
    }
}

struct State {
    phase: Phase,
    inflight: usize,
    deadline: Option<Instant>,
    /// Set once the deadline passed (to the phase that timed out): the connection is closing.
    expired: Option<Phase>,
    /// The reader to wake when the deadline passes (the HTTP/1.1 head guard).
    reader: Option<Waker>,
    /// What the watcher ([`ConnClock::expired`]) sleeps until; `None` while it waits for a
    /// notification only (it last saw no deadline). A change needs to wake it only when the
    /// new deadline is earlier than that, so requests coming and going on a busy connection
    /// cost no wakeup and no timer.
    watching: Option<Instant>,
}

/// The shared timer state of one connection.
pub struct ConnClock {
    state: Mutex<State>,
    changed: Notify,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl ConnClock {
    /// A clock for a connection accepted now.
    pub fn new(header_timeout: Duration, idle_timeout: Duration) -> Arc<ConnClock> {
        Arc::new(ConnClock {
            state: Mutex::new(State {
                phase: Phase::FirstHead,
                inflight: 0,
                deadline: Some(Instant::now() + header_timeout),
                expired: None,
                reader: None,
                watching: None,
            }),
            changed: Notify::new(),
            header_timeout,
            idle_timeout,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, s: &mut State, phase: Phase, deadline: Option<Instant>) {
        s.phase = phase;
        s.deadline = deadline;
        if let Some(at) = deadline
            && s.watching.is_none_or(|w| at < w)
        {
            self.changed.notify_one();
        }
    }

    /// The deadline for the current phase (the TLS handshake is bounded by it).
    pub fn deadline(&self) -> Option<Instant> {
        self.lock().deadline
    }

    /// The first byte of a request head arrived (HTTP/1.1).
    pub fn head_started(&self) {
        let mut s = self.lock();
        if s.phase == Phase::Idle {
            let at = Instant::now() + self.header_timeout;
            self.set(&mut s, Phase::Head, Some(at));
        }
    }

    /// A whole request head was handed to the HTTP parser (HTTP/1.1).
    pub fn head_complete(&self) {
        let mut s = self.lock();
        if s.inflight == 0 && s.expired.is_none() {
            self.set(&mut s, Phase::Handed, None);
        }
    }

    /// A request reached the service; the connection is busy until the guard drops.
    pub fn request_started(self: &Arc<Self>) -> Busy {
        let mut s = self.lock();
        s.inflight += 1;
        self.set(&mut s, Phase::Busy, None);
        Busy(self.clone())
    }

    fn request_ended(&self) {
        let mut s = self.lock();
        s.inflight = s.inflight.saturating_sub(1);
        if s.inflight == 0 {
            let at = Instant::now() + self.idle_timeout;
            self.set(&mut s, Phase::Idle, Some(at));
        }
    }

    /// The phase that timed out, once the deadline passed (the connection is being closed).
    pub fn expired_phase(&self) -> Option<Phase> {
        self.lock().expired
    }

    /// Registers the reader to wake when the deadline passes.
    pub fn wake_on_expiry(&self, waker: &Waker) {
        let mut s = self.lock();
        match &s.reader {
            Some(w) if w.will_wake(waker) => {}
            _ => s.reader = Some(waker.clone()),
        }
    }

    /// Completes when the deadline of the current phase passes with no request in flight;
    /// the clock is then expired and stays so.
    pub async fn expired(&self) -> Phase {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let deadline = {
                let mut s = self.lock();
                if let Some(phase) = s.expired {
                    return phase;
                }
                match s.deadline {
                    Some(at) if at <= Instant::now() && s.inflight == 0 => {
                        s.expired = Some(s.phase);
                        if let Some(w) = s.reader.take() {
                            w.wake();
                        }
                        return s.phase;
                    }
                    d => {
                        // Under the same lock as the read, so no change slips between.
                        s.watching = d;
                        d
                    }
                }
            };
            match deadline {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

/// A request in flight on a connection; dropping it ends the request.
pub struct Busy(Arc<ConnClock>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3);
    const I: Duration = Duration::from_secs(7);

    #[tokio::test(start_paused = true)]
    async fn first_head_times_out_at_header_timeout() {
        let clock = ConnClock::new(H, I);
        let start = Instant::now();
        assert_eq!(clock.expired().await, Phase::FirstHead);
        assert_eq!(start.elapsed(), H);
        assert_eq!(clock.expired_phase(), Some(Phase::FirstHead));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_never_times_out_then_idle_counts_from_its_end() {
        let clock = ConnClock::new(H, I);
        let busy = clock.request_started();
        let watch = {
            let clock = clock.clone();
            tokio::spawn(async move { (clock.expired().await, Instant::now()) })
        };
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!watch.is_finished());
        let ended = Instant::now();
        drop(busy);
        let (phase, at) = watch.await.expect("watch");
        assert_eq!((phase, at - ended), (Phase::Idle, I));
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_head_gets_header_timeout_from_its_first_byte() {
        let clock = ConnClock::new(H, I);
        drop(clock.request_started());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = Instant::now();
        clock.head_started();
        assert_eq!(clock.expired().await, Phase::Head);
        assert_eq!(started.elapsed(), H);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handed_head_waits_for_its_request() {
        let clock = ConnClock::new(H, I);
        clock.head_complete();
        assert_eq!(clock.deadline(), None);
        let busy = clock.request_started();
        let second = clock.request_started();
        drop(busy);
        assert_eq!(clock.deadline(), None, "one request still in flight");
        drop(second);
        assert!(clock.deadline().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_wakes_a_watcher_sleeping_on_a_later_one() {
        let clock = ConnClock::new(H, I);
        drop(clock.request_started());
        let watch = {
            let clock = clock.clone();
            tokio::spawn(async move { (clock.expired().await, Instant::now()) })
        };
        // The watcher now sleeps until the idle deadline (7 s); a head starting at 1 s must
        // be cut at 4 s, not 7 s.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = Instant::now();
        clock.head_started();
        let (phase, at) = watch.await.expect("watch");
        assert_eq!((phase, at - started), (Phase::Head, H));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_request_while_the_watcher_sleeps_on_an_earlier_deadline() {
        let clock = ConnClock::new(H, I);
        let first = clock.request_started();
        let watch = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.expired().await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The watcher saw no deadline and waits for a notification; ending the request sets
        // one, which wakes it exactly once; the requests after that set later deadlines.
        drop(first);
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(clock.request_started());
        }
        let ended = Instant::now();
        assert_eq!(watch.await.expect("watch"), Phase::Idle);
        assert_eq!(
            ended.elapsed(),
            I,
            "idle counts from the last request's end"
        );
    }
}
