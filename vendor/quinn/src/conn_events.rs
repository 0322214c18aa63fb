//! Spooky's change: the endpoint → connection event queue.
//!
//! Upstream used `tokio::sync::mpsc::unbounded_channel` here, one per connection. tokio's list
//! channel always holds at least one block of 32 slots, and a `ConnectionEvent` is about 200
//! bytes: 6.5 KiB per connection for its whole life, idle or not. This queue is a `VecDeque`
//! behind a mutex that holds nothing once it is drained, with the same send / poll_recv
//! behaviour as the channel it replaces: `send` fails once the receiver is gone, `poll_recv`
//! returns every queued event and then `None` once the sender is gone.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use crate::ConnectionEvent;

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<ConnectionEvent>,
    waker: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // Nothing in this module panics while holding the lock; a poisoned queue is still whole.
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// A new queue: the endpoint's end and the connection driver's end.
pub(crate) fn channel() -> (EventSender, EventReceiver) {
    let queue = Arc::new(Mutex::new(Queue::default()));
    (EventSender(queue.clone()), EventReceiver(queue))
}

/// The endpoint's end.
#[derive(Debug)]
pub(crate) struct EventSender(Arc<Mutex<Queue>>);

impl EventSender {
    /// Queues `event` and wakes the connection's driver; `Err` if the driver is gone.
    pub(crate) fn send(&self, event: ConnectionEvent) -> Result<(), ConnectionEvent> {
        let waker = {
            let mut q = lock(&self.0);
            if q.receiver_gone {
                return Err(event);
            }
            q.events.push_back(event);
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let waker = {
            let mut q = lock(&self.0);
            q.sender_gone = true;
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The connection driver's end.
#[derive(Debug)]
pub(crate) struct EventReceiver(Arc<Mutex<Queue>>);

impl EventReceiver {
    /// The next event; `None` once the sender is gone and every event has been taken.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<ConnectionEvent>> {
        let mut q = lock(&self.0);
        if let Some(event) = q.events.pop_front() {
            if q.events.is_empty() {
                // Drained: give the room back, so that a waiting connection holds none.
                q.events = VecDeque::new();
            }
            return Poll::Ready(Some(event));
        }
        if q.sender_gone {
            return Poll::Ready(None);
        }
        match &mut q.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        let mut q = lock(&self.0);
        q.receiver_gone = true;
        q.waker = None;
        // Drop what was queued now, not when the endpoint forgets the sender.
        let events = std::mem::take(&mut q.events);
        drop(q);
        drop(events);
    }
}
