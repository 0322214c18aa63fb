//! `GET /status` and `GET /upstreams`: what the running generation is doing, as JSON.

use serde_json::{Value, json};
use spooky_stages::engine::Pipeline;
use spooky_stages::upstreams::{Backend, Upstream};

use crate::admin::AdminState;

/// Version, uptime, generation (and the ones still draining), listeners, stages, upstreams.
pub async fn status(state: &AdminState) -> Value {
    let control = &state.control;
    let current = state.pipelines.current();
    let live = control.live.lock().await;
    let listeners: Vec<Value> = live
        .listeners
        .values()
        .map(|s| {
            json!({
                "name": s.config.name,
                "addr": s.addr.to_string(),
                "protocols": s.config.protocols,
                "h3": s.h3.is_some(),
                "tcp": s.tcp.is_some(),
                "certificates": s.certs.as_ref().map(|c| c.summary()).unwrap_or_default(),
            })
        })
        .collect();
    json!({
        "version": state.version,
        "pid": std::process::id(),
        "pipeline": current.name(),
        "uptime_seconds": control.started.elapsed().as_secs(),
        "generation": control.generation(),
        "draining_generations": control.draining(),
        "overlay": live.overlay,
        "ready": state.ready.load(std::sync::atomic::Ordering::Acquire),
        "live_exchanges": state.pipelines.drain().live(),
        "listeners": listeners,
        "stages": current.stage_status(),
        "upstreams": upstreams(&current),
    })
}

/// Every upstream of the running generation with its backends' state.
pub fn upstreams(p: &Pipeline) -> Value {
    Value::Array(p.upstreams().into_iter().map(|u| upstream(u)).collect())
}

fn upstream(u: &Upstream) -> Value {
    json!({
        "name": u.name,
        "balance": u.balancer.algorithm().name(),
        "inflight": u.cap.in_use(),
        "max_inflight": u.cap.limit(),
        "backends": u.backends.iter().map(backend).collect::<Vec<_>>(),
    })
}

fn backend(b: &Backend) -> Value {
    let state = if !b.enabled {
        "drained"
    } else if !b.health.is_up() {
        "unhealthy"
    } else if b.outlier.as_ref().is_some_and(|o| !o.is_in()) {
        "ejected"
    } else if b.breaker.as_ref().is_some_and(|br| br.is_open()) {
        "breaker-open"
    } else {
        "up"
    };
    json!({
        "id": b.id,
        "url": b.name,
        "state": state,
        "weight": b.weight,
        "enabled": b.enabled,
        "healthy": b.health.is_up(),
        "ejected": b.outlier.as_ref().is_some_and(|o| !o.is_in()),
        "breaker": b.breaker.as_ref().map(|br| br.state_name()),
        "inflight": b.cap.in_use(),
        "max_inflight": b.cap.limit(),
        "latency_ewma_ms": b.latency.get().map(|ns| ns as f64 / 1e6),
    })
}
