//! The engine: builds the declared chain from config and runs exchanges through it.
//!
//! Each stage of the chain is a *slot*: the stage and its [`Inlet`] (bounded concurrency, an
//! optional bounded waiting room of `queue` places, and `when_full`). An exchange's own task
//! carries it from slot to slot: it runs a stage while holding that stage's permit and enters
//! the next stage's inlet before letting the permit go, so a full stage holds the one before
//! it — and, transitively, ingress, which then stops accepting request streams. There are no
//! channels and no worker tasks; a queue is a fair waiting room, not a buffer someone drains.
//!
//! Select, hedge-retry and dispatch are one slot: the attempt loop, which hedge-retry owns
//! (see [`crate::stages::hedge_retry`]); select and dispatch keep their own inlets inside it.
//!
//! A pipeline is one *generation* of the config ([`generation`]): adapters take the current
//! one per exchange from a swappable handle, and a generation that was swapped out is dropped
//! once its last exchange ends.

mod connect;
pub mod generation;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use spooky_sync::{Cap, Drain, Permit};

use crate::access_log::AccessLog;
use crate::config::{Config, StageKind, StageSettings};
use crate::contract::exchange::Exchange;
use crate::contract::flow::{Flow, Reply};
use crate::contract::inlet::{Entered, Inlet};
use crate::contract::reason::Reason;
use crate::contract::record::{Outcome, Record, RecordSink};
use crate::metrics::{RequestMetrics, StageMetrics};
use crate::stages::hedge_retry::{self, HedgeRetry, Sub};
use crate::stages::{
    admission::Admission, dispatch::Dispatch, egress::Egress, ingress::Ingress, queue::Queue,
    route::RouteIndex, route::RouteStage, select::Select,
};
use crate::upstreams::Upstream;
use crate::upstreams::registry::{PoolKey, Registry};

/// The stages a slot can run (static dispatch: no boxed futures on the hot path).
pub enum AnyStage {
    Ingress(Ingress),
    Admission(Admission),
    /// Boxed: the route index is large and read through a pointer anyway.
    Route(Box<RouteStage>),
    Queue(Queue),
    /// Select, hedge-retry and dispatch: the attempt loop (boxed: it holds two inlets).
    Attempts(Box<HedgeRetry>),
    Egress(Egress),
}

impl AnyStage {
    /// Runs the stage; `carried` is the previous stage's permit when the slot has a
    /// pass-through inlet (only the attempt loop has one).
    async fn process(&self, ex: Exchange, carried: Option<Permit>) -> Flow {
        match self {
            AnyStage::Ingress(s) => s.process(ex).await,
            AnyStage::Admission(s) => s.process(ex).await,
            AnyStage::Route(s) => s.process(ex).await,
            AnyStage::Queue(s) => s.process(ex).await,
            // Not boxed: the I/O stages hold large futures (hyper's client, body streaming),
            // but each adapter boxes the whole exchange's future once; a box here too cost an
            // allocation and a copy of the stage's future on every request.
            AnyStage::Attempts(s) => s.process(ex, carried).await,
            AnyStage::Egress(s) => s.process(ex).await,
        }
    }

    /// Sets the stage's own gauges (scrape time).
    fn sample_gauges(&self, pipeline: &str) {
        match self {
            AnyStage::Admission(a) => a.sample_gauges(pipeline),
            AnyStage::Route(r) => r.sample_gauges(pipeline),
            AnyStage::Attempts(h) => {
                for inlet in h.inlets() {
                    inlet.sample_gauges();
                }
            }
            AnyStage::Ingress(_) | AnyStage::Queue(_) | AnyStage::Egress(_) => {}
        }
    }

    /// Whether the stage counts its own rejections (the attempt loop counts each under the
    /// sub-stage that decided it).
    fn counts_rejections(&self) -> bool {
        matches!(self, AnyStage::Attempts(_))
    }
}

/// One stage of the running chain.
struct Slot {
    kind: StageKind,
    stage: AnyStage,
    /// A pass-through inlet for the attempt loop of a chain without hedge-retry (its
    /// sub-stages have inlets of their own).
    inlet: Inlet,
}

/// Problems building a pipeline from a validated config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("upstream \"{0}\": {1}")]
    Upstream(String, #[source] crate::upstreams::error::UpstreamError),
    #[error("routes: {0}")]
    Routes(#[source] crate::stages::route::RouteError),
    #[error("pipeline.chain: {0}")]
    Chain(&'static str),
    #[error("access_log.path: cannot open \"{0}\": {1}")]
    AccessLog(String, #[source] std::io::Error),
}

/// The refusals a stage makes under overload or backend failure: registered at zero when the
/// pipeline is built, so an alert on their rate has a series before the first one.
fn refusals(kind: StageKind) -> &'static [Reason] {
    match kind {
        StageKind::Admission => &[
            Reason::AdmissionFull,
            Reason::Brownout,
            Reason::ShuttingDown,
        ],
        StageKind::Route => &[Reason::NoRoute, Reason::RateLimited],
        StageKind::Queue => &[Reason::QueueFull, Reason::QueueDeadline],
        StageKind::Select => &[Reason::NoBackend, Reason::BreakerOpen],
        StageKind::HedgeRetry => &[Reason::TotalTimeout],
        StageKind::Dispatch => &[
            Reason::UpstreamConnect,
            Reason::ConnectTimeout,
            Reason::UpstreamReset,
            Reason::UpstreamTimeout,
        ],
        // Heads too large for max_header_bytes: a sizing problem, not only bad clients.
        StageKind::Ingress => &[Reason::HeaderBytes],
        // A backend's body broke mid-response.
        StageKind::Egress => &[Reason::UpstreamBody],
    }
}

/// Turns end-of-exchange records into the request metrics and the access log.
struct Recorder {
    requests: RequestMetrics,
    ended: [metrics::Counter; 4],
    access_log: Option<AccessLog>,
    tracer: Option<crate::trace::Tracer>,
}

const OUTCOMES: [Outcome; 4] = [
    Outcome::Complete,
    Outcome::Cancelled,
    Outcome::UpstreamFailed,
    Outcome::Reset,
];

impl Recorder {
    fn new(
        pipeline: &str,
        access_log: Option<AccessLog>,
        tracer: Option<crate::trace::Tracer>,
    ) -> Recorder {
        Recorder {
            access_log,
            tracer,
            requests: RequestMetrics::new(pipeline),
            ended: OUTCOMES.map(|o| {
                metrics::counter!(crate::metrics::EXCHANGES_ENDED, "pipeline" => pipeline.to_string(), "outcome" => o.label())
            }),
        }
    }
}

impl Recorder {
    /// Records `ex` when it ends, with the facts the access log needs when there is one.
    fn take(self: &Arc<Self>, ex: &mut Exchange) {
        if let Some(t) = &self.tracer {
            ex.record.trace = t.sample(&ex.head.headers);
        }
        if self.access_log.is_some() || ex.record.trace.is_some() {
            ex.keep_details();
        }
        ex.record.emit_to(self.clone());
    }
}

impl RecordSink for Recorder {
    fn emit(&self, r: &Record) {
        if let Some(log) = &self.access_log {
            log.log(r);
        }
        if let Some(t) = &self.tracer {
            t.export(r);
        }
        // One clock read for every figure of the exchange.
        let took = r.duration();
        if let Some(status) = r.status {
            self.requests.record(status, took);
        }
        if let Some(route) = &r.route {
            route
                .metrics
                .record(r.status, r.reason.map(Reason::label), r.head_at, took);
        }
        let outcome = r.outcome.unwrap_or(Outcome::Cancelled);
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.ended[i].increment(1);
        }
        tracing::debug!(
            exchange = r.id,
            request_id = r.request_id.as_ref().and_then(|v| v.to_str().ok()),
            route = r.route.as_ref().map(|x| x.name.as_str()),
            protocol = r.protocol.label(),
            status = r.status.map(|s| s.as_u16()),
            reason = r.reason.map(|r| r.label()),
            outcome = outcome.label(),
            bytes_in = r.bytes_in_total(),
            bytes_out = r.bytes_out,
            attempts = r.attempts,
            backend = r.backend_name(),
            duration_us = took.as_micros() as u64,
            "exchange ended"
        );
    }
}

/// One stage's bounds and use, as `/status` shows them.
#[derive(Debug, serde::Serialize)]
pub struct StageStatus {
    pub stage: &'static str,
    /// Exchanges in the stage now, and its `concurrency`.
    pub inflight: usize,
    pub concurrency: usize,
    /// Exchanges waiting in its inlet now, and its `queue`.
    pub waiting: usize,
    pub queue: usize,
}

/// A running pipeline: everything built from one config generation.
pub struct Pipeline {
    name: String,
    slots: Vec<Slot>,
    /// Live exchanges, shared by every generation (graceful shutdown waits for all of them).
    drain: Drain,
    upstreams: Vec<Arc<Upstream>>,
    recorder: Arc<Recorder>,
    next_id: Arc<AtomicU64>,
    /// This generation's health-check tasks, stopped with it.
    health_checks: Vec<tokio::task::JoinHandle<()>>,
    /// `[stages.egress] tunnel_idle`, for CONNECT tunnels (which skip the later stages).
    tunnel_idle: Option<std::time::Duration>,
    /// A route takes CONNECT-UDP: HTTP/3 connections announce extended CONNECT and HTTP
    /// Datagrams (only then, so that a client of RFC 9220 WebSockets falls back to TCP).
    connect_udp: bool,
    /// A route has `websocket = true`.
    websocket: bool,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for t in &self.health_checks {
            t.abort();
        }
    }
}

/// What generations share: the pools, the live-exchange count, the exchange ids.
#[derive(Clone)]
pub struct Shared {
    pub registry: Arc<Registry>,
    pub drain: Drain,
    next_id: Arc<AtomicU64>,
}

impl Shared {
    /// What the generations of a process serving with `workers` workers share.
    pub fn new(workers: std::num::NonZeroUsize) -> Self {
        Shared {
            registry: Registry::new(workers),
            drain: Drain::new(),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }
}

/// Bulkheads: the most exchanges one upstream may have past the queue stage — its share
/// (`[stages.dispatch] upstream_share`) of the attempt stages' concurrency (the smallest of
/// select, hedge-retry and dispatch), so one slow upstream can never fill them and hold up
/// the others; its other exchanges wait in their route's queue. An upstream alone in the
/// pipeline has the whole of it.
fn bulkhead(config: &Config) -> usize {
    let st = &config.stages;
    let stages = [
        StageKind::Select,
        StageKind::HedgeRetry,
        StageKind::Dispatch,
    ];
    let smallest = stages
        .into_iter()
        .filter(|k| config.chain.contains(k))
        .map(|k| st.settings(k).concurrency.get())
        .min()
        .unwrap_or(usize::MAX);
    if config.upstreams.len() < 2 {
        return smallest;
    }
    let share = (smallest as f64 * st.dispatch.upstream_share).floor();
    (share as usize).clamp(1, smallest)
}

impl Pipeline {
    /// Builds a standalone pipeline (its own pools and drain). Must run inside tokio.
    pub fn start(config: &Config) -> Result<Arc<Pipeline>, BuildError> {
        Pipeline::build(config, &Shared::new(config.pipeline.workers.resolve()))
    }

    /// Builds one generation of the chain, its pools taken from `shared.registry`.
    pub fn build(config: &Config, shared: &Shared) -> Result<Arc<Pipeline>, BuildError> {
        let name = config.pipeline.name.clone();
        let access_log = AccessLog::open(&config.access_log)
            .map_err(|e| BuildError::AccessLog(config.access_log.path.clone(), e))?;
        let st = &config.stages;
        let mut upstreams = HashMap::new();
        let settings = st.dispatch.client_settings();
        let share = bulkhead(config);
        for (n, u) in &config.upstreams {
            let built = Upstream::build(n, u, &settings, &shared.registry, share)
                .map_err(|e| BuildError::Upstream(n.clone(), e))?;
            upstreams.insert(n.clone(), built);
        }
        let index = RouteIndex::build(&config.routes, &upstreams, st.queue.capacity.get())
            .map_err(BuildError::Routes)?;
        let mut route = Some(Box::new(RouteStage::build(index)));
        // The first stage's inlet is where adapters take their permit; it has no room (a
        // request waits in its protocol: unaccepted streams, unread sockets).
        let first = config.chain.first().copied();
        let inlet = |kind: StageKind| {
            let s: StageSettings = st.settings(kind);
            let queue = if Some(kind) == first { 0 } else { s.queue };
            let metrics = StageMetrics::new(&name, kind.name());
            // The refusals alerts watch exist from the start, at zero.
            let full = (queue > 0 && s.when_full == crate::stages::WhenFull::Shed)
                .then_some(Reason::InletFull);
            for r in refusals(kind).iter().chain(full.iter()) {
                metrics.rejected(r.label()).increment(0);
            }
            Inlet::new(queue, s.concurrency.get(), s.when_full, metrics)
        };
        let mut select = None;
        let mut brownout = None;
        let mut adaptive = None;
        let mut slots = Vec::new();
        for kind in config.chain.iter().copied() {
            let stage = match kind {
                StageKind::Ingress => {
                    let mut ingress = Ingress::build(&st.ingress);
                    // A route that keeps encoded slashes: ingress lets them through and the
                    // route stage refuses them for every other route.
                    let keeps = config.routes.iter().any(|r| {
                        r.encoded_slashes == Some(crate::http::path::EncodedSlashes::Keep)
                    });
                    if keeps && ingress.keep_encoded_slashes() {
                        route = route.map(|r| Box::new(r.refusing_encoded_slashes()));
                    }
                    AnyStage::Ingress(ingress)
                }
                StageKind::Admission => {
                    let a = Admission::build(&st.admission, st.settings(kind).when_full, &name);
                    route = route.map(|r| Box::new(r.with_brownout(a.brownout())));
                    brownout = a.brownout();
                    adaptive = a.adaptive();
                    AnyStage::Admission(a)
                }
                StageKind::Route => AnyStage::Route(
                    route
                        .take()
                        .ok_or(BuildError::Chain("route appears twice"))?,
                ),
                StageKind::Queue => AnyStage::Queue(Queue::build(&st.queue)),
                // Select and hedge-retry join the attempt loop that dispatch closes.
                StageKind::Select => {
                    // All backends full: wait as long as the queue stage would.
                    let wait = (config.chain.contains(&StageKind::Queue)
                        && st.settings(kind).when_full == crate::stages::WhenFull::Wait)
                        .then_some(st.queue.deadline.0);
                    select = Some(Sub {
                        stage: Select::build(&st.select, wait),
                        inlet: inlet(kind),
                    });
                    continue;
                }
                StageKind::HedgeRetry => continue,
                StageKind::Dispatch => {
                    let select = select
                        .take()
                        .ok_or(BuildError::Chain("dispatch needs select before it"))?;
                    let hedge = config.chain.contains(&StageKind::HedgeRetry);
                    let replay = if hedge {
                        usize::try_from(st.hedge_retry.replay_body_limit.0).unwrap_or(usize::MAX)
                    } else {
                        0
                    };
                    let dispatch = Sub {
                        stage: Dispatch::build(&st.dispatch, replay, &name),
                        inlet: inlet(kind),
                    };
                    let policy: Option<&hedge_retry::Config> = hedge.then_some(&st.hedge_retry);
                    let slot_inlet = if hedge {
                        inlet(StageKind::HedgeRetry)
                    } else {
                        Inlet::pass()
                    };
                    // Hedge-retry's own decisions count under its slot's metrics.
                    let own = slot_inlet.metrics().cloned();
                    let loop_ = HedgeRetry::build(policy, own, select, dispatch)
                        .with_brownout(brownout.clone())
                        .with_adaptive(adaptive.clone());
                    slots.push(Slot {
                        kind: StageKind::HedgeRetry,
                        stage: AnyStage::Attempts(Box::new(loop_)),
                        inlet: slot_inlet,
                    });
                    continue;
                }
                StageKind::Egress => AnyStage::Egress(Egress::build(&st.egress, &name)),
            };
            slots.push(Slot {
                kind,
                stage,
                inlet: inlet(kind),
            });
        }
        if slots.first().is_none_or(|s| s.inlet.is_pass()) {
            return Err(BuildError::Chain("the chain must start with ingress"));
        }
        let upstreams: Vec<Arc<Upstream>> = upstreams.into_values().collect();
        let health_checks = upstreams
            .iter()
            .flat_map(|u| u.start_health_checks())
            .collect();
        Ok(Arc::new(Pipeline {
            recorder: Arc::new(Recorder::new(
                &name,
                access_log,
                crate::trace::Tracer::open(config.tracing.as_ref()),
            )),
            name,
            slots,
            drain: shared.drain.clone(),
            upstreams,
            next_id: shared.next_id.clone(),
            health_checks,
            tunnel_idle: Some(config.stages.egress.tunnel_idle.0).filter(|d| !d.is_zero()),
            connect_udp: config
                .routes
                .iter()
                .any(|r| r.connect.as_ref().is_some_and(|c| c.udp)),
            websocket: config.routes.iter().any(|r| r.websocket),
        }))
    }

    /// The pipeline's name (a label on every metric).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ingress stage, when the chain has one (`spooky route` runs its decision).
    pub fn ingress(&self) -> Option<&Ingress> {
        self.slots.iter().find_map(|s| match &s.stage {
            AnyStage::Ingress(i) => Some(i),
            _ => None,
        })
    }

    /// The route stage (`spooky route` explains its decision).
    pub fn route(&self) -> Option<&RouteStage> {
        self.slots.iter().find_map(|s| match &s.stage {
            AnyStage::Route(r) => Some(&**r),
            _ => None,
        })
    }

    /// Live exchanges, for graceful shutdown.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// Whether a route takes CONNECT-UDP (HTTP/3 connections then announce datagrams).
    pub fn connect_udp(&self) -> bool {
        self.connect_udp
    }

    /// Whether a route takes WebSockets (HTTP/3 connections then announce extended CONNECT,
    /// RFC 9220).
    pub fn websocket(&self) -> bool {
        self.websocket
    }

    /// A fresh exchange id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The concurrency cap of the first stage (ingress): the protocol adapter takes a permit
    /// before accepting each request stream.
    pub fn ingress_cap(&self) -> &Cap {
        // `build` made sure there is a first slot.
        self.slots[0].inlet.concurrency()
    }

    /// Stops the generation: no new exchange can enter it (its ingress inlet is closed, so
    /// even a stale handle cannot start one). Exchanges already inside finish on it — a
    /// reload fails no request it had accepted, retries included — and the generation is
    /// dropped when the last one ends (no worker task holds it).
    pub fn stop(&self) {
        if let Some(first) = self.slots.first() {
            first.inlet.close();
        }
    }

    /// Everything this generation's exchanges hold right now: stage permits, waiting places,
    /// admission, upstream and backend permits. Zero once its last exchange ended.
    pub fn held(&self) -> usize {
        let mut n = 0;
        for s in &self.slots {
            n += s.inlet.held();
            match &s.stage {
                AnyStage::Admission(a) => n += a.cap().in_use(),
                AnyStage::Attempts(h) => n += h.inlets().iter().map(|i| i.held()).sum::<usize>(),
                _ => {}
            }
        }
        for u in &self.upstreams {
            n += u.cap.in_use() + u.backends.iter().map(|b| b.cap.in_use()).sum::<usize>();
        }
        n
    }

    /// The pools this generation uses (the registry keeps these at a swap).
    pub fn pools(&self) -> Vec<PoolKey> {
        self.upstreams
            .iter()
            .flat_map(|u| u.backends.iter().map(|b| b.pool.clone()))
            .collect()
    }

    /// Each stage's bounds and use now (`/status`).
    pub fn stage_status(&self) -> Vec<StageStatus> {
        let mut out = Vec::new();
        for s in &self.slots {
            let mut push = |stage: &'static str, inlet: &Inlet| {
                if inlet.is_pass() {
                    return;
                }
                out.push(StageStatus {
                    stage,
                    inflight: inlet.concurrency().in_use(),
                    concurrency: inlet.concurrency().limit(),
                    waiting: inlet.waiting(),
                    queue: inlet.room(),
                });
            };
            match &s.stage {
                // In the chain's declared order (select, hedge-retry, dispatch), though the
                // attempt loop's own inlet is the one an exchange enters first.
                AnyStage::Attempts(h) => {
                    let [select, dispatch] = h.inlets();
                    push(StageKind::Select.name(), select);
                    push(s.kind.name(), &s.inlet);
                    push(StageKind::Dispatch.name(), dispatch);
                }
                _ => push(s.kind.name(), &s.inlet),
            }
        }
        out
    }

    /// `(upstream, backend URL)` of every backend (the registry keeps their health).
    pub fn backend_keys(&self) -> Vec<(String, String)> {
        self.upstreams
            .iter()
            .flat_map(|u| u.backends.iter().map(|b| (u.name.clone(), b.name.clone())))
            .collect()
    }

    /// The upstreams, by name order.
    pub fn upstreams(&self) -> Vec<&Arc<Upstream>> {
        let mut v: Vec<_> = self.upstreams.iter().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Runs a new exchange through the chain; `permit` is from [`Pipeline::ingress_cap`].
    pub async fn run(self: Arc<Self>, mut ex: Exchange, permit: Permit) {
        self.recorder.take(&mut ex);
        self.run_chain(ex, permit).await
    }

    /// Carries an exchange from slot to slot until it ends. `permit` is the first slot's.
    async fn run_chain(&self, mut ex: Exchange, permit: Permit) {
        let mut held = Some(permit);
        let mut idx = 0;
        // When the current stage began: the clock read that ended the stage before it, unless
        // the exchange waited in between (one clock read per stage).
        let mut began = Instant::now();
        loop {
            let slot = &self.slots[idx];
            let metrics = slot.inlet.metrics();
            if let Some(m) = metrics {
                m.received.increment(1);
            }
            // A pass-through slot (the attempt loop without hedge-retry) carries the permit
            // in: its first sub-stage lets it go once it admits the exchange.
            let carried = if slot.inlet.is_pass() {
                held.take()
            } else {
                None
            };
            let t0 = began;
            let flow = slot.stage.process(ex, carried).await;
            let t1 = Instant::now();
            if let Some(m) = metrics {
                m.processing.record((t1 - t0).as_secs_f64());
            }
            let name = slot.kind.name();
            ex = match flow {
                Flow::Continue(mut ex) => {
                    emitted(metrics);
                    ex.record.mark_at(name, t1);
                    ex
                }
                Flow::Respond(mut ex, reply) => {
                    emitted(metrics);
                    ex.record.mark_at(name, t1);
                    drop(held);
                    return self.reply(ex, reply).await;
                }
                Flow::Connect(mut ex, policy, target) => {
                    ex.record.mark_at(name, t1);
                    drop(held);
                    return match connect::open(&mut ex, &policy, &target, self.tunnel_idle).await {
                        // The tunnel ends the exchange, on whichever side it ends.
                        Ok(connect::Opened::Tcp(head, tunnel)) => {
                            emitted(metrics);
                            let _ = ex.responder.tunnel(head, tunnel).await;
                        }
                        Ok(connect::Opened::Udp(head, tunnel)) => {
                            emitted(metrics);
                            let _ = ex.responder.udp_tunnel(head, tunnel).await;
                        }
                        Err(unreached) => {
                            rejected(metrics, unreached.reason);
                            tracing::debug!(exchange = ex.id, target = %target.host, port = target.port, detail = %unreached.detail, "CONNECT target not reached");
                            if let Some(v) = unreached.proxy_status() {
                                let mut extra = http::HeaderMap::new();
                                extra.insert("proxy-status", v);
                                ex.decided.reply_headers = Some(Box::new(extra));
                            }
                            self.reject(ex, name, unreached.reason).await
                        }
                    };
                }
                Flow::Reject(mut ex, r) => {
                    if !slot.stage.counts_rejections() {
                        rejected(metrics, r);
                    }
                    ex.record.mark_at(name, t1);
                    drop(held);
                    return self.reject(ex, name, r).await;
                }
                Flow::Abandon(mut ex, reason) => {
                    if !slot.stage.counts_rejections() {
                        rejected(metrics, reason);
                    }
                    ex.record.mark_at(name, t1);
                    ex.record.reason = Some(reason);
                    tracing::debug!(
                        exchange = ex.id,
                        request_id = ex.request_id.as_ref().and_then(|v| v.to_str().ok()),
                        stage = name,
                        route = ex.decided.route.as_ref().map(|r| r.name.as_str()),
                        reason = reason.label(),
                        "exchange abandoned"
                    );
                    return;
                }
                Flow::Done => {
                    emitted(metrics);
                    return;
                }
            };
            idx += 1;
            let Some(next) = self.slots.get(idx) else {
                tracing::error!(exchange = ex.id, "chain ended without egress");
                return;
            };
            // The next stage's permit before this one's is let go: a full stage holds the
            // one before it.
            if let Some(p) = next.inlet.try_enter() {
                held = Some(p);
                began = t1;
                continue;
            }
            held = match next.inlet.enter(&mut ex, held.take()).await {
                Entered::Run(p) => Some(p),
                Entered::Refused(r) => return self.reject(ex, next.kind.name(), r).await,
                Entered::Cancelled => return,
            };
            began = Instant::now();
        }
    }

    /// Refuses an exchange before it enters the chain (e.g. while draining).
    pub async fn refuse(&self, mut ex: Exchange, r: Reason) {
        self.recorder.take(&mut ex);
        self.reject(ex, "ingress", r).await
    }

    /// Writes a proxy-made response and ends the exchange.
    async fn reply(&self, mut ex: Exchange, reply: Reply) {
        let end = ex.end(reply.status);
        let mut resp = reply.into_response().map(|b| b.ending(end));
        ex.stamp(resp.headers_mut());
        // Delivered or not, the record in the body tells.
        let _ = ex.responder.send(resp).await;
    }

    /// Answers a refusal the way the client's protocol and kind (gRPC) expect.
    async fn reject(&self, mut ex: Exchange, stage: &'static str, r: Reason) {
        tracing::debug!(
            exchange = ex.id,
            request_id = ex.request_id.as_ref().and_then(|v| v.to_str().ok()),
            stage,
            route = ex.decided.route.as_ref().map(|r| r.name.as_str()),
            status = r.status().as_u16(),
            reason = r.label(),
            "exchange refused"
        );
        ex.record.reason = Some(r);
        if ex.responder.head_sent() {
            // Too late for a status: dropping the exchange resets the client stream.
            return;
        }
        let grpc = ex.grpc;
        match ex.responder.rejection(r, grpc) {
            Some(mut reply) => {
                if let Some(extra) = ex.decided.reply_headers.take() {
                    for (k, v) in extra.iter() {
                        reply.headers.insert(k, v.clone());
                    }
                }
                self.reply(ex, reply).await
            }
            None => ex.record.ended(Outcome::Reset),
        }
    }

    /// Caps' current use, for the admin `/metrics` gauges.
    pub fn sample_gauges(&self) {
        for s in &self.slots {
            s.inlet.sample_gauges();
            s.stage.sample_gauges(&self.name);
        }
        for u in &self.upstreams {
            u.sample_gauges();
        }
        metrics::gauge!(crate::metrics::EXCHANGES_LIVE, "pipeline" => self.name.clone())
            .set(self.drain.live() as f64);
    }
}

fn emitted(m: Option<&StageMetrics>) {
    if let Some(m) = m {
        m.emitted.increment(1);
    }
}

fn rejected(m: Option<&StageMetrics>, r: Reason) {
    if let Some(m) = m {
        m.rejected(r.label()).increment(1);
    }
}
