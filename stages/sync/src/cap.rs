//! An inflight cap with RAII permits.
//!
//! Invariants (each modelled in `loom-tests/`):
//! * no permit is granted while `in_use() >= limit()` — so `in_use() <= limit()` at every
//!   instant, except just after [`Cap::set_limit`] lowered the limit below what is held, which
//!   then drains (released slots are freed, not handed on) until it is back under;
//! * a [`Permit`] returns its slot on drop — also when the exchange holding it is cancelled;
//! * a waiting [`Acquire`] that is dropped leaves no slot behind, even if it was just granted one;
//! * waiters are served first-in first-out, and one released permit wakes exactly one waiter;
//! * [`Cap::close`] wakes every waiter with [`Closed`], and every acquire after it fails.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::loom::{Arc, AtomicUsize, Mutex, Ordering, lock};

/// The cap was closed: no permit will ever be granted again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("closed")
    }
}

impl std::error::Error for Closed {}

/// Why [`Cap::try_acquire`] gave no permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryAcquireError {
    /// Every slot is taken (or others are already waiting for one).
    Full,
    /// The cap is closed.
    Closed,
}

/// A bounded count of things in flight. Cloning shares the same cap.
#[derive(Clone)]
pub struct Cap {
    inner: Arc<Inner>,
}

struct Inner {
    /// Changed only under the state lock (read without it for `limit()`).
    limit: AtomicUsize,
    state: Mutex<State>,
}

struct State {
    used: usize,
    closed: bool,
    next_id: u64,
    waiters: VecDeque<Waiter>,
    /// Waiters that were handed a slot by `release` but have not yet polled to take it.
    granted: Vec<u64>,
}

struct Waiter {
    id: u64,
    waker: Waker,
}

/// The state of one [`Acquire`] future.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Not yet queued.
    Idle,
    /// Queued under this id.
    Queued(u64),
    /// Finished: a permit or an error was returned.
    Done,
}

impl Cap {
    /// A cap allowing `limit` permits at once. A limit of zero admits nothing.
    pub fn new(limit: usize) -> Self {
        Cap {
            inner: Arc::new(Inner {
                limit: AtomicUsize::new(limit),
                state: Mutex::new(State {
                    used: 0,
                    closed: false,
                    next_id: 0,
                    waiters: VecDeque::new(),
                    granted: Vec::new(),
                }),
            }),
        }
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.inner.limit.load(Ordering::Acquire)
    }

    /// Changes the limit (adaptive admission). Raised, it hands the new slots to waiters in
    /// order; lowered below what is held, nothing more is granted, and released slots are
    /// freed rather than handed on, until the cap is back under it.
    pub fn set_limit(&self, limit: usize) {
        let wakers: Vec<Waker> = {
            let mut st = lock(&self.inner.state);
            self.inner.limit.store(limit, Ordering::Release);
            let mut wakers = Vec::new();
            while st.used < limit {
                let Some(w) = st.waiters.pop_front() else {
                    break;
                };
                st.used += 1;
                st.granted.push(w.id);
                wakers.push(w.waker);
            }
            wakers
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Permits currently held (including ones granted to waiters that have not yet woken).
    pub fn in_use(&self) -> usize {
        lock(&self.inner.state).used
    }

    /// Futures currently waiting for a permit.
    pub fn waiting(&self) -> usize {
        lock(&self.inner.state).waiters.len()
    }

    /// Whether [`Cap::close`] was called.
    pub fn is_closed(&self) -> bool {
        lock(&self.inner.state).closed
    }

    /// Takes a permit now if one is free and nobody is queued ahead (no barging past waiters).
    pub fn try_acquire(&self) -> Result<Permit, TryAcquireError> {
        let mut st = lock(&self.inner.state);
        if st.closed {
            return Err(TryAcquireError::Closed);
        }
        if st.used < self.limit() && st.waiters.is_empty() {
            st.used += 1;
            drop(st);
            Ok(Permit { cap: self.clone() })
        } else {
            Err(TryAcquireError::Full)
        }
    }

    /// Waits, first-in first-out, for a permit. Dropping the future gives up its place, and
    /// returns a permit it may have been granted meanwhile.
    pub fn acquire(&self) -> Acquire {
        Acquire {
            cap: self.clone(),
            wait: Wait::Idle,
        }
    }

    /// Closes the cap: every waiter wakes with [`Closed`], later acquires fail. Permits already
    /// held stay valid and are returned as usual.
    pub fn close(&self) {
        let wakers: Vec<Waker> = {
            let mut st = lock(&self.inner.state);
            st.closed = true;
            st.waiters.drain(..).map(|w| w.waker).collect()
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Returns one slot: handed straight to the oldest waiter if there is one (its wake-up is the
    /// only one issued), else freed.
    fn release(&self) {
        let wake = {
            let mut st = lock(&self.inner.state);
            // Over a lowered limit, the slot is freed, not handed on.
            let over = st.used > self.limit();
            let next = if over { None } else { st.waiters.pop_front() };
            match next {
                // The slot passes to the waiter: `used` stays the same.
                Some(w) => {
                    st.granted.push(w.id);
                    Some(w.waker)
                }
                None => {
                    st.used -= 1;
                    None
                }
            }
        };
        if let Some(w) = wake {
            w.wake();
        }
    }
}

impl fmt::Debug for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.inner.state);
        f.debug_struct("Cap")
            .field("limit", &self.limit())
            .field("used", &st.used)
            .field("waiting", &st.waiters.len())
            .field("closed", &st.closed)
            .finish()
    }
}

/// One slot of a [`Cap`]; dropping it returns the slot.
pub struct Permit {
    cap: Cap,
}

impl Permit {
    /// The cap this permit belongs to.
    pub fn cap(&self) -> &Cap {
        &self.cap
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.cap.release();
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("limit", &self.cap.limit())
            .finish()
    }
}

/// Future returned by [`Cap::acquire`].
pub struct Acquire {
    cap: Cap,
    wait: Wait,
}

impl Future for Acquire {
    type Output = Result<Permit, Closed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let inner = &this.cap.inner;
        let mut st = lock(&inner.state);
        match this.wait {
            Wait::Done => Poll::Ready(Err(Closed)),
            Wait::Idle => {
                if st.closed {
                    this.wait = Wait::Done;
                    return Poll::Ready(Err(Closed));
                }
                if st.used < inner.limit.load(Ordering::Acquire) && st.waiters.is_empty() {
                    st.used += 1;
                    drop(st);
                    this.wait = Wait::Done;
                    return Poll::Ready(Ok(Permit {
                        cap: this.cap.clone(),
                    }));
                }
                let id = st.next_id;
                st.next_id += 1;
                st.waiters.push_back(Waiter {
                    id,
                    waker: cx.waker().clone(),
                });
                this.wait = Wait::Queued(id);
                Poll::Pending
            }
            Wait::Queued(id) => match st.waiters.iter_mut().find(|w| w.id == id) {
                // Still queued: refresh the waker.
                Some(w) => {
                    if !w.waker.will_wake(cx.waker()) {
                        w.waker = cx.waker().clone();
                    }
                    Poll::Pending
                }
                // Dequeued: either `release` handed us its slot, or `close` woke us.
                None => {
                    this.wait = Wait::Done;
                    if let Some(pos) = st.granted.iter().position(|g| *g == id) {
                        st.granted.swap_remove(pos);
                        drop(st);
                        Poll::Ready(Ok(Permit {
                            cap: this.cap.clone(),
                        }))
                    } else {
                        Poll::Ready(Err(Closed))
                    }
                }
            },
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        let Wait::Queued(id) = self.wait else {
            return;
        };
        let mut st = lock(&self.cap.inner.state);
        if let Some(pos) = st.waiters.iter().position(|w| w.id == id) {
            st.waiters.remove(pos);
        } else if let Some(pos) = st.granted.iter().position(|g| *g == id) {
            // We were granted a slot but are gone before taking it: pass it on.
            st.granted.swap_remove(pos);
            drop(st);
            self.cap.release();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(f: &mut Acquire, w: &std::sync::Arc<CountingWaker>) -> Poll<Result<Permit, Closed>> {
        let waker = Waker::from(w.clone());
        Pin::new(f).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn one_release_wakes_exactly_one_waiter_in_fifo_order() {
        let cap = Cap::new(1);
        let held = cap.try_acquire().expect("free");
        let (wa, wb) = (
            std::sync::Arc::new(CountingWaker(AtomicUsize::new(0))),
            std::sync::Arc::new(CountingWaker(AtomicUsize::new(0))),
        );
        let (mut a, mut b) = (cap.acquire(), cap.acquire());
        assert!(poll(&mut a, &wa).is_pending());
        assert!(poll(&mut b, &wb).is_pending());
        drop(held);
        assert_eq!(wa.0.load(Ordering::SeqCst), 1);
        assert_eq!(wb.0.load(Ordering::SeqCst), 0);
        let Poll::Ready(Ok(pa)) = poll(&mut a, &wa) else {
            panic!("first waiter must hold the permit")
        };
        assert!(poll(&mut b, &wb).is_pending());
        assert_eq!(cap.in_use(), 1);
        drop(pa);
        assert_eq!(wb.0.load(Ordering::SeqCst), 1);
        assert!(matches!(poll(&mut b, &wb), Poll::Ready(Ok(_))));
        assert_eq!(cap.in_use(), 0);
    }

    #[test]
    fn a_raised_limit_serves_waiters_and_a_lowered_one_drains_first() {
        let cap = Cap::new(2);
        let (p1, p2) = (
            cap.try_acquire().expect("free"),
            cap.try_acquire().expect("free"),
        );
        let w = std::sync::Arc::new(CountingWaker(AtomicUsize::new(0)));
        let mut a = cap.acquire();
        assert!(poll(&mut a, &w).is_pending());
        // Raised: the waiter gets the new slot at once.
        cap.set_limit(3);
        assert_eq!(w.0.load(Ordering::SeqCst), 1);
        let Poll::Ready(Ok(p3)) = poll(&mut a, &w) else {
            panic!("granted by the raised limit")
        };
        assert_eq!(cap.in_use(), 3);
        // Lowered below what is held: nothing is granted until two are back.
        cap.set_limit(1);
        let mut b = cap.acquire();
        assert!(poll(&mut b, &w).is_pending());
        drop(p1);
        assert_eq!(cap.in_use(), 2);
        assert!(poll(&mut b, &w).is_pending());
        drop(p2);
        assert_eq!(cap.in_use(), 1);
        assert!(poll(&mut b, &w).is_pending(), "still at the lowered limit");
        drop(p3);
        let Poll::Ready(Ok(_held)) = poll(&mut b, &w) else {
            panic!("served once under the lowered limit")
        };
        assert_eq!(cap.in_use(), 1);
    }

    #[test]
    fn try_acquire_does_not_barge_past_waiters() {
        let cap = Cap::new(1);
        let held = cap.try_acquire().expect("free");
        let w = std::sync::Arc::new(CountingWaker(AtomicUsize::new(0)));
        let mut a = cap.acquire();
        assert!(poll(&mut a, &w).is_pending());
        drop(held);
        assert_eq!(cap.try_acquire().err(), Some(TryAcquireError::Full));
        drop(a); // granted but never observed: the slot must come back
        assert_eq!(cap.in_use(), 0);
        assert!(cap.try_acquire().is_ok());
    }

    #[test]
    fn close_fails_waiters_and_later_acquires() {
        let cap = Cap::new(1);
        let _held = cap.try_acquire().expect("free");
        let w = std::sync::Arc::new(CountingWaker(AtomicUsize::new(0)));
        let mut a = cap.acquire();
        assert!(poll(&mut a, &w).is_pending());
        cap.close();
        assert_eq!(w.0.load(Ordering::SeqCst), 1);
        assert!(matches!(poll(&mut a, &w), Poll::Ready(Err(Closed))));
        assert_eq!(cap.try_acquire().err(), Some(TryAcquireError::Closed));
    }
}
