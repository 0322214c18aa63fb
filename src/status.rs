//! `GET /status` and `GET /upstreams`: what the running generation is doing, as JSON.

use serde_json::{Value, json};
use spooky_stages::engine::Pipeline;
use spooky_stages::upstreams::{Backend, Upstream};

use crate::admin::AdminState;

/// When the stages' counters were read, and their values by stage.
pub type StageTotals = (
    std::time::Instant,
    std::collections::BTreeMap<&'static str, [f64; 3]>,
);

/// Version, uptime, generation (and the ones still draining), listeners, stages, upstreams.
pub async fn status(state: &AdminState) -> Value {
    let control = &state.control;
    let current = state.pipelines.current();
    let text = state.prometheus.render();
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
        "stages": stages(state, &current, &text),
        "upstreams": upstreams_counted(&current, Some(&text)),
    })
}

/// Each stage's bounds and use now, with its counters (received, emitted, rejected) and their
/// rates per second since the previous `/status` (null on the first; read from the metrics
/// recorder, so the data path counts nothing more for it).
fn stages(state: &AdminState, p: &Pipeline, text: &str) -> Value {
    let now = std::time::Instant::now();
    let mut totals = std::collections::BTreeMap::new();
    for s in p.stage_status() {
        let count = |name: &str| sample(text, name, p.name(), s.stage);
        totals.insert(
            s.stage,
            [
                count("spooky_stage_received_total"),
                count("spooky_stage_emitted_total"),
                count("spooky_stage_rejected_total"),
            ],
        );
    }
    let mut last = state
        .last_stage_totals
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = p
        .stage_status()
        .into_iter()
        .map(|s| {
            let t = totals.get(s.stage).copied().unwrap_or_default();
            let rates = last.as_ref().and_then(|(at, prev)| {
                let dt = now.duration_since(*at).as_secs_f64();
                let p: &[f64; 3] = prev.get(s.stage)?;
                (dt > 0.0).then(|| {
                    json!({
                        "received": ((t[0] - p[0]) / dt).max(0.0),
                        "emitted": ((t[1] - p[1]) / dt).max(0.0),
                        "rejected": ((t[2] - p[2]) / dt).max(0.0),
                    })
                })
            });
            json!({
                "stage": s.stage,
                "inflight": s.inflight,
                "concurrency": s.concurrency,
                "waiting": s.waiting,
                "queue": s.queue,
                "received": t[0],
                "emitted": t[1],
                "rejected": t[2],
                "per_second": rates,
            })
        })
        .collect();
    *last = Some((now, totals));
    Value::Array(out)
}

/// The samples of `name` in Prometheus text whose labels include every `key="value"` of
/// `labels`: each sample's line and value.
fn samples<'t>(
    text: &'t str,
    name: &'t str,
    labels: &[(&str, &str)],
) -> impl Iterator<Item = (&'t str, f64)> {
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines()
        .filter(move |l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(move |l| wanted.iter().all(|w| l.contains(w.as_str())))
        .filter_map(|l| Some((l, l.rsplit(' ').next()?.parse::<f64>().ok()?)))
}

/// The sum of the samples of `name` for one pipeline and stage.
fn sample(text: &str, name: &str, pipeline: &str, stage: &str) -> f64 {
    samples(text, name, &[("pipeline", pipeline), ("stage", stage)])
        .map(|(_, v)| v)
        .sum()
}

/// Every upstream of the running generation with its backends' state.
pub fn upstreams(p: &Pipeline) -> Value {
    upstreams_counted(p, None)
}

/// [`upstreams`], with each backend's attempt totals when the metrics text is given.
fn upstreams_counted(p: &Pipeline, text: Option<&str>) -> Value {
    Value::Array(
        p.upstreams()
            .into_iter()
            .map(|u| upstream(u, text))
            .collect(),
    )
}

fn upstream(u: &Upstream, text: Option<&str>) -> Value {
    json!({
        "name": u.name,
        "balance": u.balancer.algorithm().name(),
        "inflight": u.cap.in_use(),
        "max_inflight": u.cap.limit(),
        "backends": u.backends.iter().map(|b| {
            let mut v = backend(b);
            if let (Some(text), Some(obj)) = (text, v.as_object_mut()) {
                let (requests, errors) = attempts(text, &u.name, &b.name);
                obj.insert("requests".into(), json!(requests));
                obj.insert("errors".into(), json!(errors));
            }
            v
        }).collect::<Vec<_>>(),
    })
}

/// A backend's attempts and failed ones (a 5xx, or no answer) so far, from the metrics text.
fn attempts(text: &str, upstream: &str, backend: &str) -> (f64, f64) {
    let labels = [("upstream", upstream), ("backend", backend)];
    let mut all = (0.0, 0.0);
    for (l, v) in samples(text, spooky_stages::metrics::UPSTREAM_REQUESTS, &labels) {
        all.0 += v;
        if ["5xx", "connect_error", "reset", "timeout"]
            .iter()
            .any(|c| l.contains(&format!("class=\"{c}\"")))
        {
            all.1 += v;
        }
    }
    all
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
