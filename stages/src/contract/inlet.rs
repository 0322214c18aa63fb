//! The inlet of a stage: how an exchange is handed to it. One type owns the whole hand-off
//! policy and its metrics, for fused and queued stages alike:
//!
//! * **concurrency** — at most `concurrency` exchanges are in the stage at once (a [`Cap`]);
//!   the permit is what an exchange holds while the stage runs it.
//! * **queue** — when the stage is busy, at most `queue` exchanges wait for it, first come
//!   first served, each holding a place in the waiting room (another [`Cap`]). `queue = 0`
//!   (fused) has no waiting room: the exchange waits in place.
//! * **when_full** — `wait`: an exchange that finds the room full (or, fused, the stage busy)
//!   waits for it *while still holding the previous stage's permit*, so pressure travels back
//!   stage by stage to ingress and the client; `shed`: it is refused at once (503).
//!
//! The previous stage's permit is let go as soon as the exchange is inside: running, or
//! waiting in the room (that is what a queue is for: the previous stage may take the next
//! exchange). An exchange waiting anywhere here is watched for its client going away.
//!
//! There is no channel and no worker task: the exchange's own task carries it from stage to
//! stage, and a queue is a bounded, fair waiting room. Closing the inlet (a pipeline
//! generation that stops) refuses everyone still waiting and everyone after.

use std::time::Instant;

use spooky_sync::{Cap, Permit, TryAcquireError};

use crate::contract::exchange::Exchange;
use crate::contract::reason::Reason;
use crate::metrics::StageMetrics;

/// What a stage does when its inlet (or, for admission, its cap) is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Hold the previous stage until there is room: pressure travels back to the client.
    Wait,
    /// Answer 503 at once.
    Shed,
}

/// What became of a hand-off.
pub enum Entered {
    /// The exchange may run the stage while it holds this permit.
    Run(Permit),
    /// Refused: the stage (or its room) is full and sheds, or the pipeline stopped.
    Refused(Reason),
    /// The client went away while the exchange waited.
    Cancelled,
}

/// A stage's inlet.
pub struct Inlet {
    concurrency: Cap,
    room: Option<Cap>,
    when_full: WhenFull,
    /// `None` for a pass-through inlet (nothing of its own to count).
    metrics: Option<StageMetrics>,
    /// No bound of its own: the exchange enters with the permit it came with (a slot whose
    /// sub-stages have inlets of their own, such as the attempt loop without hedge-retry).
    pass: bool,
}

impl Inlet {
    pub fn new(
        queue: usize,
        concurrency: usize,
        when_full: WhenFull,
        metrics: StageMetrics,
    ) -> Self {
        Inlet {
            concurrency: Cap::new(concurrency),
            room: (queue > 0).then(|| Cap::new(queue)),
            when_full,
            metrics: Some(metrics),
            pass: false,
        }
    }

    /// An inlet that bounds nothing and hands the exchange's permit through.
    pub fn pass() -> Self {
        Inlet {
            concurrency: Cap::new(usize::MAX),
            room: None,
            when_full: WhenFull::Wait,
            metrics: None,
            pass: true,
        }
    }

    /// Whether this inlet hands permits through ([`Inlet::pass`]).
    pub fn is_pass(&self) -> bool {
        self.pass
    }

    /// The stage's metrics (the engine records what the stage did with them); `None` for a
    /// pass-through inlet.
    pub fn metrics(&self) -> Option<&StageMetrics> {
        self.metrics.as_ref()
    }

    /// Sets the stage's gauges (scrape time).
    pub fn sample_gauges(&self) {
        if let Some(m) = &self.metrics {
            m.inflight.set(self.concurrency.in_use() as f64);
        }
    }

    /// The stage's concurrency (admin gauges; the HTTP/3 adapter's backpressure on ingress).
    pub fn concurrency(&self) -> &Cap {
        &self.concurrency
    }

    /// Exchanges in the stage or waiting in its room (none for a pass-through inlet, whose
    /// permits are other stages').
    pub fn held(&self) -> usize {
        if self.pass {
            return 0;
        }
        self.concurrency.in_use() + self.room.as_ref().map_or(0, Cap::in_use)
    }

    /// Exchanges waiting in its room.
    pub fn waiting(&self) -> usize {
        self.room.as_ref().map_or(0, Cap::in_use)
    }

    /// Places in its room.
    pub fn room(&self) -> usize {
        self.room.as_ref().map_or(0, Cap::limit)
    }

    /// Refuses everyone waiting and everyone after (the generation stops).
    pub fn close(&self) {
        self.concurrency.close();
        if let Some(room) = &self.room {
            room.close();
        }
    }

    /// The stage's permit when it has room right now (the common case, without building the
    /// waiting future); `None`: call [`Inlet::enter`].
    pub fn try_enter(&self) -> Option<Permit> {
        if self.pass {
            return None;
        }
        self.take_now().ok()
    }

    /// The stage's permit if it has room now (a queued stage reports the zero wait).
    fn take_now(&self) -> Result<Permit, TryAcquireError> {
        let p = self.concurrency.try_acquire()?;
        if let (Some(_), Some(m)) = (&self.room, &self.metrics) {
            // A queued stage reports every exchange's wait, also a zero one.
            m.queue_wait.record(0.0);
        }
        Ok(p)
    }

    /// Hands `ex` to the stage; `held` is the permit of the stage it leaves (dropped once the
    /// exchange is inside). Counts refusals and cancellations under this stage.
    pub async fn enter(&self, ex: &mut Exchange, held: Option<Permit>) -> Entered {
        let entered = self.admit(ex, held).await;
        if let Some(m) = &self.metrics {
            match &entered {
                Entered::Run(_) => {}
                Entered::Refused(r) => m.rejected(r.label()).increment(1),
                Entered::Cancelled => m.rejected(Reason::Cancelled.label()).increment(1),
            }
        }
        entered
    }

    async fn admit(&self, ex: &mut Exchange, held: Option<Permit>) -> Entered {
        if self.pass {
            return match held {
                Some(p) => Entered::Run(p),
                None => self.wait_to_run(ex).await,
            };
        }
        match self.take_now() {
            Ok(p) => return Entered::Run(p),
            Err(TryAcquireError::Closed) => return Entered::Refused(Reason::ShuttingDown),
            Err(TryAcquireError::Full) => {}
        }
        let Some(room) = &self.room else {
            // Fused: wait in place (holding the previous stage) or shed.
            if self.when_full == WhenFull::Shed {
                return Entered::Refused(Reason::ConcurrencyFull);
            }
            return self.wait_to_run(ex).await;
        };
        let place = match room.try_acquire() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return Entered::Refused(Reason::ShuttingDown),
            Err(TryAcquireError::Full) if self.when_full == WhenFull::Shed => {
                return Entered::Refused(Reason::InletFull);
            }
            Err(TryAcquireError::Full) => {
                // The room is full: hold the previous stage until a place frees up.
                let got = tokio::select! {
                    r = room.acquire() => Some(r),
                    () = ex.cancelled() => None,
                };
                match got {
                    Some(Ok(p)) => p,
                    Some(Err(_closed)) => return Entered::Refused(Reason::ShuttingDown),
                    None => return Entered::Cancelled,
                }
            }
        };
        // Inside the room: the previous stage may take its next exchange.
        drop(held);
        if let Some(m) = &self.metrics {
            m.queue_depth.increment(1.0);
        }
        let at = Instant::now();
        let entered = self.wait_to_run(ex).await;
        if let Some(m) = &self.metrics {
            m.queue_depth.decrement(1.0);
            m.queue_wait.record(at.elapsed().as_secs_f64());
        }
        drop(place);
        entered
    }

    async fn wait_to_run(&self, ex: &mut Exchange) -> Entered {
        let got = tokio::select! {
            r = self.concurrency.acquire() => Some(r),
            () = ex.cancelled() => None,
        };
        match got {
            Some(Ok(p)) => Entered::Run(p),
            Some(Err(_closed)) => Entered::Refused(Reason::ShuttingDown),
            None => Entered::Cancelled,
        }
    }
}
