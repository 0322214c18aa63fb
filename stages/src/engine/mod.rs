//! The engine: builds the declared chain from config and runs exchanges through it.
//!
//! Each stage gets a bounded concurrency (a [`Cap`]) and, when `queue > 0`, a bounded inlet
//! (a tokio mpsc channel of that capacity) drained by one worker that spawns a task per
//! exchange while it holds a concurrency permit. A stage with `queue = 0` is fused: the task
//! that ran the previous stage runs it too, after taking its concurrency permit. When the next
//! stage is full, `when_full = "wait"` holds the current stage (and so, transitively, ingress,
//! which then stops accepting request streams); `"shed"` answers 503 at once.
//!
//! Stages never create channels or know their neighbours; only this module does.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use spooky_sync::{Cap, Drain, Permit, TryAcquireError};
use tokio::sync::mpsc;

use crate::config::{Config, StageKind, StageSettings, WhenFull};
use crate::contract::exchange::Exchange;
use crate::contract::flow::{Flow, Reply};
use crate::contract::reason::Reason;
use crate::contract::record::{Outcome, Record, RecordSink};
use crate::metrics::{RequestMetrics, StageMetrics};
use crate::stages::{
    admission::Admission, dispatch::Dispatch, egress::Egress, hedge_retry::HedgeRetry,
    ingress::Ingress, queue::Queue, route::RouteIndex, route::RouteStage, select::Select,
};
use crate::upstreams::Upstream;

/// Any of the eight stages (static dispatch: no boxed futures on the hot path).
pub enum AnyStage {
    Ingress(Ingress),
    Admission(Admission),
    Route(RouteStage),
    Queue(Queue),
    Select(Select),
    HedgeRetry(HedgeRetry),
    Dispatch(Dispatch),
    Egress(Egress),
}

impl AnyStage {
    async fn process(&self, ex: Exchange) -> Flow {
        match self {
            AnyStage::Ingress(s) => s.process(ex).await,
            AnyStage::Admission(s) => s.process(ex).await,
            AnyStage::Route(s) => s.process(ex).await,
            AnyStage::Queue(s) => s.process(ex).await,
            AnyStage::Select(s) => s.process(ex).await,
            AnyStage::HedgeRetry(s) => s.process(ex).await,
            // The two I/O stages hold large futures (hyper's client, body streaming): boxed,
            // so the future of every stage hop (spawned and moved) stays small.
            AnyStage::Dispatch(s) => Box::pin(s.process(ex)).await,
            AnyStage::Egress(s) => Box::pin(s.process(ex)).await,
        }
    }
}

/// An exchange waiting in a stage's inlet.
struct Queued {
    ex: Exchange,
    at: Instant,
}

/// One stage of the running chain.
struct Slot {
    kind: StageKind,
    stage: AnyStage,
    settings: StageSettings,
    concurrency: Cap,
    inlet: Option<mpsc::Sender<Queued>>,
    metrics: StageMetrics,
}

/// Problems building a pipeline from a validated config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("upstream \"{0}\": {1}")]
    Upstream(String, String),
    #[error("routes: {0}")]
    Routes(String),
}

/// Turns end-of-exchange records into the request metrics.
struct Recorder {
    requests: RequestMetrics,
    ended: [metrics::Counter; 4],
}

impl Recorder {
    fn new(pipeline: &str) -> Recorder {
        let ended = [
            Outcome::Complete,
            Outcome::Cancelled,
            Outcome::UpstreamFailed,
            Outcome::Reset,
        ]
        .map(|o| {
            metrics::counter!(crate::metrics::EXCHANGES_ENDED, "pipeline" => pipeline.to_string(), "outcome" => o.label())
        });
        Recorder {
            requests: RequestMetrics::new(pipeline),
            ended,
        }
    }
}

impl RecordSink for Recorder {
    fn emit(&self, r: &Record) {
        if let Some(status) = r.status {
            self.requests.record(status, r.started);
        }
        let i = match r.outcome {
            Some(Outcome::Complete) => 0,
            Some(Outcome::Cancelled) | None => 1,
            Some(Outcome::UpstreamFailed) => 2,
            Some(Outcome::Reset) => 3,
        };
        self.ended[i].increment(1);
        tracing::trace!(
            exchange = r.id,
            protocol = r.protocol.label(),
            status = r.status.map(|s| s.as_u16()),
            reason = r.reason.map(|r| r.label()),
            outcome = r.outcome.map(Outcome::label),
            bytes_in = r.bytes_in.get(),
            bytes_out = r.bytes_out,
            attempts = r.attempts,
            backend = r.backend_name(),
            duration_us = r.duration().as_micros() as u64,
            "exchange ended"
        );
    }
}

/// A running pipeline: everything built from one config generation.
pub struct Pipeline {
    name: String,
    slots: Vec<Slot>,
    /// Where `Flow::Retry` goes back to, if the chain has hedge-retry.
    retry_to: Option<usize>,
    drain: Drain,
    upstreams: Vec<Arc<Upstream>>,
    recorder: Arc<Recorder>,
    next_id: AtomicU64,
}

impl Pipeline {
    /// Builds the chain and starts a worker for each stage with an inlet. Must run inside a
    /// tokio runtime.
    pub fn start(config: &Config) -> Result<Arc<Pipeline>, BuildError> {
        let name = config.pipeline.name.clone();
        let mut upstreams = HashMap::new();
        for (n, u) in &config.upstreams {
            let built = Upstream::build(n, u, &config.stages.dispatch.client_settings())
                .map_err(|e| BuildError::Upstream(n.clone(), e))?;
            upstreams.insert(n.clone(), built);
        }
        let index = RouteIndex::build(
            &config.routes,
            &upstreams,
            config.stages.queue.capacity.get(),
        )
        .map_err(BuildError::Routes)?;
        let st = &config.stages;
        let mut route_stage = Some(RouteStage::build(index));
        let mut receivers = Vec::new();
        let mut slots = Vec::new();
        for (i, kind) in config.chain.iter().copied().enumerate() {
            let settings = st.settings(kind);
            let stage = match kind {
                StageKind::Ingress => AnyStage::Ingress(Ingress::build(&st.ingress)),
                StageKind::Admission => {
                    AnyStage::Admission(Admission::build(&st.admission, settings.when_full))
                }
                StageKind::Route => match route_stage.take() {
                    Some(r) => AnyStage::Route(r),
                    None => {
                        return Err(BuildError::Routes(
                            "route appears twice in the chain".into(),
                        ));
                    }
                },
                StageKind::Queue => AnyStage::Queue(Queue::build(&st.queue)),
                StageKind::Select => AnyStage::Select(Select::build(&st.select)),
                StageKind::HedgeRetry => AnyStage::HedgeRetry(HedgeRetry::build(&st.hedge_retry)),
                StageKind::Dispatch => AnyStage::Dispatch(Dispatch::build(&st.dispatch)),
                StageKind::Egress => AnyStage::Egress(Egress::build(&st.egress, &name)),
            };
            let inlet = if settings.queue > 0 && i > 0 {
                let (tx, rx) = mpsc::channel(settings.queue);
                receivers.push((i, rx));
                Some(tx)
            } else {
                None
            };
            slots.push(Slot {
                kind,
                stage,
                settings,
                concurrency: Cap::new(settings.concurrency.get()),
                inlet,
                metrics: StageMetrics::new(&name, kind.name()),
            });
        }
        let has_hedge = config.chain.contains(&StageKind::HedgeRetry);
        let retry_to = config
            .chain
            .iter()
            .position(|k| *k == StageKind::Select)
            .filter(|_| has_hedge);
        let pipeline = Arc::new(Pipeline {
            recorder: Arc::new(Recorder::new(&name)),
            name,
            slots,
            retry_to,
            drain: Drain::new(),
            upstreams: upstreams.into_values().collect(),
            next_id: AtomicU64::new(1),
        });
        for (i, rx) in receivers {
            tokio::spawn(pipeline.clone().worker(i, rx));
        }
        Ok(pipeline)
    }

    /// The pipeline's name (a label on every metric).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Live exchanges, for graceful shutdown.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// A fresh exchange id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The concurrency cap of the first stage (ingress): the protocol adapter takes a permit
    /// before accepting each request stream.
    pub fn ingress_cap(&self) -> &Cap {
        &self.slots[0].concurrency
    }

    /// Runs a new exchange from the first stage; `permit` is from [`Pipeline::ingress_cap`].
    pub async fn run(self: Arc<Self>, mut ex: Exchange, permit: Permit) {
        ex.record.emit_to(self.recorder.clone());
        self.run_from(0, ex, permit).await
    }

    /// Drains one stage's inlet: a concurrency permit first (so a busy stage stops taking
    /// exchanges and its inlet fills), then the next exchange, each on its own task.
    async fn worker(self: Arc<Self>, idx: usize, mut rx: mpsc::Receiver<Queued>) {
        let slot = &self.slots[idx];
        loop {
            let Ok(permit) = slot.concurrency.acquire().await else {
                break;
            };
            let Some(q) = rx.recv().await else { break };
            slot.metrics.queue_depth.decrement(1.0);
            slot.metrics.queue_wait.record(q.at.elapsed().as_secs_f64());
            if q.ex.is_cancelled() {
                slot.metrics
                    .rejected(Reason::Cancelled.label())
                    .increment(1);
                continue;
            }
            tokio::spawn(self.clone().run_from(idx, q.ex, permit));
        }
    }

    /// Runs an exchange from stage `idx` through the fused stages after it, until it is handed
    /// to an inlet or ends. `held` is the concurrency permit of the stage being run.
    async fn run_from(self: Arc<Self>, mut idx: usize, mut ex: Exchange, mut held: Permit) {
        loop {
            let slot = &self.slots[idx];
            slot.metrics.received.increment(1);
            let t0 = Instant::now();
            let flow = slot.stage.process(ex).await;
            slot.metrics.processing.record(t0.elapsed().as_secs_f64());
            let next;
            (next, ex) = match flow {
                Flow::Continue(mut ex) => {
                    slot.metrics.emitted.increment(1);
                    ex.record.mark(slot.kind.name());
                    (idx + 1, ex)
                }
                Flow::Retry(ex) => match self.retry_to {
                    Some(to) => {
                        slot.metrics.emitted.increment(1);
                        (to, ex)
                    }
                    None => {
                        let r = Reason::UpstreamConnect;
                        slot.metrics.rejected(r.label()).increment(1);
                        drop(held);
                        return self.reject(ex, r).await;
                    }
                },
                Flow::Respond(mut ex, reply) => {
                    slot.metrics.emitted.increment(1);
                    ex.record.mark(slot.kind.name());
                    drop(held);
                    return self.reply(ex, reply).await;
                }
                Flow::Reject(mut ex, r) => {
                    slot.metrics.rejected(r.label()).increment(1);
                    ex.record.mark(slot.kind.name());
                    drop(held);
                    return self.reject(ex, r).await;
                }
                Flow::Abandon(mut ex, reason) => {
                    slot.metrics.rejected(reason.label()).increment(1);
                    ex.record.mark(slot.kind.name());
                    ex.record.reason = Some(reason);
                    tracing::debug!(
                        exchange = ex.id,
                        stage = slot.kind.name(),
                        reason = reason.label(),
                        "exchange abandoned"
                    );
                    return;
                }
                Flow::Done => {
                    slot.metrics.emitted.increment(1);
                    return;
                }
            };
            let Some(nslot) = self.slots.get(next) else {
                tracing::error!(exchange = ex.id, "chain ended without egress");
                return;
            };
            match &nslot.inlet {
                // Fused: this task runs the next stage once it has that stage's permit.
                None => {
                    let permit = match nslot.concurrency.try_acquire() {
                        Ok(p) => p,
                        Err(TryAcquireError::Full)
                            if nslot.settings.when_full == WhenFull::Wait =>
                        {
                            let got = {
                                let acquire = nslot.concurrency.acquire();
                                tokio::select! {
                                    r = acquire => r.ok(),
                                    () = ex.cancelled() => None,
                                }
                            };
                            match got {
                                Some(p) => p,
                                None => {
                                    nslot
                                        .metrics
                                        .rejected(Reason::Cancelled.label())
                                        .increment(1);
                                    return;
                                }
                            }
                        }
                        Err(_) => {
                            let r = Reason::ConcurrencyFull;
                            nslot.metrics.rejected(r.label()).increment(1);
                            drop(held);
                            return self.reject(ex, r).await;
                        }
                    };
                    held = permit;
                    idx = next;
                }
                // Hand-off through the next stage's bounded inlet.
                Some(tx) => {
                    let q = Queued {
                        ex,
                        at: Instant::now(),
                    };
                    match nslot.settings.when_full {
                        WhenFull::Shed => match tx.try_send(q) {
                            Ok(()) => nslot.metrics.queue_depth.increment(1.0),
                            Err(e) => {
                                let q = match e {
                                    mpsc::error::TrySendError::Full(q)
                                    | mpsc::error::TrySendError::Closed(q) => q,
                                };
                                let r = Reason::QueueFull;
                                nslot.metrics.rejected(r.label()).increment(1);
                                drop(held);
                                return self.reject(q.ex, r).await;
                            }
                        },
                        WhenFull::Wait => {
                            let mut q = q;
                            let reserved = {
                                let reserve = tx.reserve();
                                tokio::select! {
                                    r = reserve => Some(r),
                                    () = q.ex.cancelled() => None,
                                }
                            };
                            match reserved {
                                Some(Ok(slot_permit)) => {
                                    nslot.metrics.queue_depth.increment(1.0);
                                    q.at = Instant::now();
                                    slot_permit.send(q);
                                }
                                Some(Err(_closed)) => {
                                    drop(held);
                                    return self.reject(q.ex, Reason::ShuttingDown).await;
                                }
                                None => {
                                    nslot
                                        .metrics
                                        .rejected(Reason::Cancelled.label())
                                        .increment(1);
                                    return;
                                }
                            }
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Refuses an exchange before it enters the chain (e.g. while draining).
    pub async fn refuse(&self, mut ex: Exchange, r: Reason) {
        ex.record.emit_to(self.recorder.clone());
        self.reject(ex, r).await
    }

    /// Writes a proxy-made response and ends the exchange.
    async fn reply(&self, mut ex: Exchange, reply: Reply) {
        let end = ex.end(reply.status);
        let resp = reply.into_response().map(|b| b.ending(end));
        // Delivered or not, the record in the body tells.
        let _ = ex.responder.send(resp).await;
    }

    /// Answers a refusal the way the client's protocol and kind (gRPC) expect.
    async fn reject(&self, mut ex: Exchange, r: Reason) {
        tracing::debug!(
            exchange = ex.id,
            status = r.status().as_u16(),
            reason = r.label(),
            "exchange rejected"
        );
        ex.record.reason = Some(r);
        if ex.responder.head_sent() {
            // Too late for a status: dropping the exchange resets the client stream.
            return;
        }
        let grpc = ex.grpc;
        match ex.responder.rejection(r, grpc) {
            Some(reply) => self.reply(ex, reply).await,
            None => ex.record.ended(Outcome::Reset),
        }
    }

    /// Caps' current use, for the admin `/metrics` gauges.
    pub fn sample_gauges(&self) {
        use crate::metrics::*;
        for s in &self.slots {
            metrics::gauge!(STAGE_INFLIGHT, "pipeline" => self.name.clone(), "stage" => s.kind.name())
                .set(s.concurrency.in_use() as f64);
            if let AnyStage::Admission(a) = &s.stage {
                metrics::gauge!(ADMISSION_INFLIGHT, "pipeline" => self.name.clone())
                    .set(a.cap().in_use() as f64);
                metrics::gauge!(ADMISSION_WAITING, "pipeline" => self.name.clone())
                    .set(a.cap().waiting() as f64);
            }
            if let AnyStage::Route(r) = &s.stage {
                for route in r.index().routes() {
                    metrics::gauge!(ROUTE_QUEUE_WAITING, "pipeline" => self.name.clone(), "route" => route.name.clone())
                        .set(route.waiting.in_use() as f64);
                }
            }
        }
        for u in &self.upstreams {
            metrics::gauge!(UPSTREAM_INFLIGHT, "upstream" => u.name.clone())
                .set(u.cap.in_use() as f64);
            for b in &u.backends {
                metrics::gauge!(BACKEND_INFLIGHT, "upstream" => u.name.clone(), "backend" => b.name.clone())
                    .set(b.cap.in_use() as f64);
            }
        }
        metrics::gauge!(EXCHANGES_LIVE, "pipeline" => self.name.clone())
            .set(self.drain.live() as f64);
    }
}
