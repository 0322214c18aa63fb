//! The timers of one TCP connection (HTTP/1.1 or HTTP/2, over TLS or plain), so that a
//! connection can never hold a `max_connections` slot by saying nothing.
//!
//! * `header_timeout` bounds the time from accept to the first complete request head — the TLS
//!   handshake included — and, on HTTP/1.1, from the first byte of each later head to its end.
//! * `idle_timeout` bounds the time a connection sits with no request in flight after one.
//!
//! The clock is driven by four events: the head guard saw a head arrive in part
//! ([`ConnClock::head_started`]) or whole ([`ConnClock::head_complete`]); the adapter began a
//! request ([`ConnClock::request_started`], whose [`Busy`] guard rides in the response body and
//! ends the request when dropped). [`ConnClock::expired`], run by a watcher task of the
//! connection, completes when the current deadline passes with nothing in flight, naming the
//! phase that timed out; the adapter then closes the connection (HTTP/1.1: `408` when a head
//! was awaited; HTTP/2: GOAWAY).
//!
//! Requests are on the hot path, so their events are a few atomic operations: no lock, no
//! wakeup, no timer. The watcher derives the deadline from the atomics when it wakes, and a
//! connection busy past `idle_timeout` costs it one wakeup per `idle_timeout`. Only a head that
//! arrives in parts (a slow client) notifies the watcher, since its deadline may be earlier
//! than the one the watcher sleeps on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::Waker;
use std::time::Duration;

use futures::task::AtomicWaker;
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

    fn code(self) -> u8 {
        match self {
            Phase::FirstHead => 1,
            Phase::Head => 2,
            Phase::Handed => 3,
            Phase::Busy => 4,
            Phase::Idle => 5,
        }
    }

    fn from_code(c: u8) -> Option<Phase> {
        Some(match c {
            1 => Phase::FirstHead,
            2 => Phase::Head,
            3 => Phase::Handed,
            4 => Phase::Busy,
            5 => Phase::Idle,
            _ => return None,
        })
    }
}

/// The shared timer state of one connection. Times are microseconds since accept, plus one
/// (0 means "none").
pub struct ConnClock {
    start: Instant,
    header_timeout: Duration,
    idle_timeout: Duration,
    inflight: AtomicUsize,
    /// Requests started so far.
    requests: AtomicU64,
    /// When the last request ended.
    last_end: AtomicU64,
    /// When the first byte of a head that is still incomplete arrived.
    head_since: AtomicU64,
    /// A whole head went to the HTTP parser and its request has not started yet.
    handed: AtomicBool,
    /// The phase that timed out (0 while none has): the connection is closing.
    expired: AtomicU8,
    /// Wakes the watcher when a deadline may have come earlier.
    changed: Notify,
    /// The reader to wake when the deadline passes (the HTTP/1.1 head guard).
    reader: AtomicWaker,
}

impl ConnClock {
    /// A clock for a connection accepted now.
    pub fn new(header_timeout: Duration, idle_timeout: Duration) -> Arc<ConnClock> {
        Arc::new(ConnClock {
            start: Instant::now(),
            header_timeout,
            idle_timeout,
            inflight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            last_end: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            handed: AtomicBool::new(false),
            expired: AtomicU8::new(0),
            changed: Notify::new(),
            reader: AtomicWaker::new(),
        })
    }

    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_micros()).unwrap_or(u64::MAX - 1)
            + 1
    }

    fn at(&self, stamp: u64) -> Instant {
        self.start + Duration::from_micros(stamp.saturating_sub(1))
    }

    /// The deadline of the first request head (the TLS handshake is bounded by it).
    pub fn first_head_deadline(&self) -> Instant {
        self.start + self.header_timeout
    }

    /// Part of a request head arrived and the rest has not (HTTP/1.1).
    pub fn head_started(&self) {
        if self.requests.load(Ordering::Acquire) > 0 && self.inflight.load(Ordering::Acquire) == 0 {
            self.head_since
                .store(self.stamp(Instant::now()), Ordering::Release);
            // Its deadline may be earlier than the idle one the watcher sleeps on.
            self.changed.notify_one();
        }
    }

    /// A whole request head went to the HTTP parser (HTTP/1.1).
    pub fn head_complete(&self) {
        self.head_since.store(0, Ordering::Release);
        self.handed.store(true, Ordering::Release);
    }

    /// A request reached the service; the connection is busy until the guard drops.
    pub fn request_started(self: &Arc<Self>) -> Busy {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.handed.store(false, Ordering::Release);
        Busy(self.clone())
    }

    fn request_ended(&self) {
        self.last_end
            .store(self.stamp(Instant::now()), Ordering::Release);
        self.inflight.fetch_sub(1, Ordering::AcqRel);
    }

    /// The phase the connection is in and its deadline, if it has one.
    fn due(&self) -> (Phase, Option<Instant>) {
        if self.inflight.load(Ordering::Acquire) > 0 {
            return (Phase::Busy, None);
        }
        if self.handed.load(Ordering::Acquire) {
            return (Phase::Handed, None);
        }
        if self.requests.load(Ordering::Acquire) == 0 {
            return (Phase::FirstHead, Some(self.first_head_deadline()));
        }
        match self.head_since.load(Ordering::Acquire) {
            0 => {
                let end = self.at(self.last_end.load(Ordering::Acquire));
                (Phase::Idle, Some(end + self.idle_timeout))
            }
            since => (Phase::Head, Some(self.at(since) + self.header_timeout)),
        }
    }

    /// The phase that timed out, once the deadline passed (the connection is being closed).
    pub fn expired_phase(&self) -> Option<Phase> {
        Phase::from_code(self.expired.load(Ordering::Acquire))
    }

    /// Registers the reader to wake when the deadline passes.
    pub fn wake_on_expiry(&self, waker: &Waker) {
        self.reader.register(waker);
    }

    /// Completes when the deadline of the current phase passes with no request in flight;
    /// the clock is then expired and stays so.
    pub async fn expired(&self) -> Phase {
        loop {
            if let Some(phase) = self.expired_phase() {
                return phase;
            }
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.due() {
                (phase, Some(at)) if at <= Instant::now() => {
                    self.expired.store(phase.code(), Ordering::Release);
                    self.reader.wake();
                    return phase;
                }
                (_, Some(at)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = &mut notified => {}
                    }
                }
                // Busy: look again after `idle_timeout` (or when told).
                (_, None) => {
                    tokio::select! {
                        () = tokio::time::sleep(self.idle_timeout) => {}
                        () = &mut notified => {}
                    }
                }
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
        assert_eq!(clock.due(), (Phase::Handed, None));
        let busy = clock.request_started();
        let second = clock.request_started();
        drop(busy);
        assert_eq!(
            clock.due(),
            (Phase::Busy, None),
            "one request still in flight"
        );
        drop(second);
        assert_eq!(clock.due(), (Phase::Idle, Some(Instant::now() + I)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_busy_past_idle_timeout_is_not_cut() {
        let clock = ConnClock::new(H, I);
        let busy = clock.request_started();
        let watch = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.expired().await })
        };
        tokio::time::sleep(I * 5).await;
        assert!(!watch.is_finished(), "a long request keeps its connection");
        drop(busy);
        let ended = Instant::now();
        assert_eq!(watch.await.expect("watch"), Phase::Idle);
        assert!(ended.elapsed() >= I && ended.elapsed() <= I * 2);
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
