//! Drain: counts live exchanges so shutdown can wait for the last one.
//!
//! Invariants: [`Drain::enter`] fails after [`Drain::close`]; [`DrainWait`] completes exactly
//! when the drain is closed and the last [`DrainGuard`] has been dropped, never before.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::cap::Closed;
use crate::loom::{Arc, Mutex, lock};

/// A count of live exchanges with a close switch. Cloning shares it.
#[derive(Clone)]
pub struct Drain {
    inner: Arc<Mutex<State>>,
}

struct State {
    live: usize,
    closed: bool,
    waiters: Vec<Waker>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain::new()
    }
}

impl Drain {
    /// An open drain with nothing live.
    pub fn new() -> Self {
        Drain {
            inner: Arc::new(Mutex::new(State {
                live: 0,
                closed: false,
                waiters: Vec::new(),
            })),
        }
    }

    /// Registers one live exchange, unless the drain is closed.
    pub fn enter(&self) -> Result<DrainGuard, Closed> {
        let mut st = lock(&self.inner);
        if st.closed {
            return Err(Closed);
        }
        st.live += 1;
        drop(st);
        Ok(DrainGuard {
            drain: self.clone(),
        })
    }

    /// Refuses new entries from now on.
    pub fn close(&self) {
        let wakers = {
            let mut st = lock(&self.inner);
            st.closed = true;
            if st.live == 0 {
                std::mem::take(&mut st.waiters)
            } else {
                Vec::new()
            }
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Live exchanges right now.
    pub fn live(&self) -> usize {
        lock(&self.inner).live
    }

    /// Whether the drain is closed.
    pub fn is_closed(&self) -> bool {
        lock(&self.inner).closed
    }

    /// Completes once the drain is closed and nothing is live.
    pub fn wait(&self) -> DrainWait {
        DrainWait {
            drain: self.clone(),
        }
    }
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.inner);
        f.debug_struct("Drain")
            .field("live", &st.live)
            .field("closed", &st.closed)
            .finish()
    }
}

/// One live exchange; dropping it may complete the drain.
pub struct DrainGuard {
    drain: Drain,
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        let wakers = {
            let mut st = lock(&self.drain.inner);
            st.live -= 1;
            if st.live == 0 && st.closed {
                std::mem::take(&mut st.waiters)
            } else {
                Vec::new()
            }
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl fmt::Debug for DrainGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DrainGuard")
    }
}

/// Future returned by [`Drain::wait`].
pub struct DrainWait {
    drain: Drain,
}

impl Future for DrainWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = lock(&self.drain.inner);
        if st.closed && st.live == 0 {
            return Poll::Ready(());
        }
        if !st.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            st.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
