//! Queue: the per-route waiting room for upstream capacity. An exchange takes a permit of its
//! upstream's inflight cap; while none is free it waits (first in, first out) in its route's
//! bounded queue, up to a deadline. Queue full or deadline passed → 503.

use std::num::NonZeroUsize;

use serde::Deserialize;
use spooky_sync::TryAcquireError;

use crate::contract::exchange::Exchange;
use crate::contract::flow::Flow;
use crate::contract::reason::Reason;
use crate::units::Dur;

/// `[stages.queue]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Exchanges waiting per route.
    #[serde(default = "default_capacity")]
    pub capacity: NonZeroUsize,
    /// Longest wait for upstream capacity.
    #[serde(default = "default_deadline")]
    pub deadline: Dur,
}

fn default_capacity() -> NonZeroUsize {
    NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN)
}

fn default_deadline() -> Dur {
    Dur(std::time::Duration::from_secs(1))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            capacity: default_capacity(),
            deadline: default_deadline(),
        }
    }
}

/// The running stage.
pub struct Queue {
    deadline: std::time::Duration,
}

impl Queue {
    pub fn build(config: &Config) -> Self {
        Queue {
            deadline: config.deadline.0,
        }
    }

    pub async fn process(&self, mut ex: Exchange) -> Flow {
        let (Some(upstream), Some(route)) = (ex.decided.upstream.clone(), ex.decided.route.clone())
        else {
            return Flow::Continue(ex);
        };
        if ex.permits.upstream.is_some() {
            return Flow::Continue(ex);
        }
        match upstream.cap.try_acquire() {
            Ok(p) => {
                ex.permits.upstream = Some(p);
                return Flow::Continue(ex);
            }
            Err(TryAcquireError::Closed) => return Flow::Reject(ex, Reason::ShuttingDown),
            Err(TryAcquireError::Full) => {}
        }
        // A place in the route's waiting room, held only while waiting.
        let Ok(_place) = route.waiting.try_acquire() else {
            return Flow::Reject(ex, Reason::QueueFull);
        };
        // The route's total timeout may come first.
        let total = ex
            .total_deadline
            .map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let by_total = total.is_some_and(|t| t < self.deadline);
        let limit = total.map_or(self.deadline, |t| t.min(self.deadline));
        let waited = {
            let acquire = tokio::time::timeout(limit, upstream.cap.acquire());
            tokio::select! {
                r = acquire => Some(r),
                () = ex.cancelled() => None,
            }
        };
        match waited {
            Some(Ok(Ok(p))) => {
                ex.permits.upstream = Some(p);
                Flow::Continue(ex)
            }
            Some(Ok(Err(_))) => Flow::Reject(ex, Reason::ShuttingDown),
            Some(Err(_elapsed)) if by_total => Flow::Reject(ex, Reason::TotalTimeout),
            Some(Err(_elapsed)) => Flow::Reject(ex, Reason::QueueDeadline),
            None => Flow::Abandon(ex, Reason::Cancelled),
        }
    }
}
