//! The membership API: `GET /upstreams`, `GET|POST /upstreams/NAME/backends`,
//! `PATCH|DELETE /upstreams/NAME/backends/ID`.
//!
//! Each change is applied to the running configuration and served as a new generation at
//! once: new exchanges see the new membership, exchanges in flight finish on the backends they
//! had (so `DELETE` removes a backend after its in-flight exchanges end, and `PATCH` with
//! `"drain": true` takes it out of balancing while they finish). Pools and health are shared
//! across generations, so no connection is cold-started and no health is forgotten. Changes
//! last until the next file reload, which serves the file as written (the overlay is listed
//! in `/status` and `/config` until then).

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use spooky_stages::config::{BackendConfig, UpstreamConfig, backend_ids};

use crate::admin::{Answer, error, json_answer};
use crate::control::Control;

/// The largest weight the API accepts.
pub const MAX_WEIGHT: u32 = 10_000;

/// `PATCH …/backends/ID`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    weight: Option<u32>,
    enabled: Option<bool>,
    /// `true`: out of balancing, in-flight exchanges finish (`enabled = false`); `false`: back.
    drain: Option<bool>,
}

pub async fn handle(control: &Control, method: &Method, path: &str, body: &[u8]) -> Answer {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (method, parts.as_slice()) {
        (&Method::GET, ["upstreams"]) => json_answer(
            StatusCode::OK,
            &json!({
                "generation": control.generation(),
                "upstreams": crate::status::upstreams(&control.pipelines.current()),
            }),
        ),
        (&Method::GET, ["upstreams", name, "backends"]) => {
            let current = control.pipelines.current();
            let all = crate::status::upstreams(&current);
            match all
                .as_array()
                .and_then(|a| a.iter().find(|u| u["name"] == *name))
            {
                Some(u) => json_answer(StatusCode::OK, &u["backends"]),
                None => unknown_upstream(name),
            }
        }
        (&Method::POST, ["upstreams", name, "backends"]) => {
            let b: BackendConfig = match parse(body) {
                Ok(b) => b,
                Err(a) => return a,
            };
            change(control, name, None, |u, _| add(u, b)).await
        }
        (&Method::PATCH, ["upstreams", name, "backends", id]) => {
            let p: Patch = match parse(body) {
                Ok(p) => p,
                Err(a) => return a,
            };
            change(control, name, Some(id), |u, i| patch(u, i, &p)).await
        }
        (&Method::DELETE, ["upstreams", name, "backends", id]) => {
            change(control, name, Some(id), remove).await
        }
        (_, ["upstreams"] | ["upstreams", _, "backends"] | ["upstreams", _, "backends", _]) => {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                &["GET /upstreams, GET|POST /upstreams/NAME/backends, PATCH|DELETE /upstreams/NAME/backends/ID".into()],
            )
        }
        _ => error(StatusCode::NOT_FOUND, "not found", &[]),
    }
}

#[allow(clippy::result_large_err)]
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Answer> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "malformed JSON body: nothing changed",
            &[e.to_string()],
        )
    })
}

fn unknown_upstream(name: &str) -> Answer {
    error(
        StatusCode::NOT_FOUND,
        &format!("unknown upstream \"{name}\""),
        &[],
    )
}

/// A change refused: its status and every reason.
type Problem = (StatusCode, Vec<String>);

/// Applies `edit` to upstream `name` (with the index of backend `id`, when given) and serves
/// the result as a new generation.
async fn change(
    control: &Control,
    name: &str,
    id: Option<&str>,
    edit: impl FnOnce(&mut UpstreamConfig, usize) -> Result<String, Problem>,
) -> Answer {
    let mut live = control.live.lock().await;
    let mut config = live.config.clone();
    let Some(u) = config.upstreams.get_mut(name) else {
        return unknown_upstream(name);
    };
    let index = match id {
        Some(id) => match backend_ids(&u.backends).iter().position(|b| b == id) {
            Some(i) => i,
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("upstream \"{name}\" has no backend \"{id}\""),
                    &[format!(
                        "its backends: {}",
                        backend_ids(&u.backends).join(", ")
                    )],
                );
            }
        },
        None => 0,
    };
    let what = match edit(u, index) {
        Ok(w) => w,
        Err((status, errors)) => return error(status, "refused: nothing changed", &errors),
    };
    let change = format!("upstreams.{name}: {what}");
    match control.apply(&mut live, config, change.clone()) {
        Ok(generation) => json_answer(
            StatusCode::OK,
            &json!({ "generation": generation, "change": change }),
        ),
        Err(e) => {
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error(status, "refused: nothing changed", e.errors())
        }
    }
}

fn bad(msg: String) -> Problem {
    (StatusCode::BAD_REQUEST, vec![msg])
}

fn check_weight(w: u32) -> Result<(), Problem> {
    if (1..=MAX_WEIGHT).contains(&w) {
        Ok(())
    } else {
        Err(bad(format!("weight {w}: expected 1 to {MAX_WEIGHT}")))
    }
}

fn add(u: &mut UpstreamConfig, b: BackendConfig) -> Result<String, Problem> {
    let problems: Vec<String> = b
        .problems()
        .into_iter()
        .map(|(k, m)| format!("{k}: {m}"))
        .collect();
    if !problems.is_empty() {
        return Err((StatusCode::BAD_REQUEST, problems));
    }
    check_weight(b.weight.get())?;
    let before = backend_ids(&u.backends);
    u.backends.push(b);
    let ids = backend_ids(&u.backends);
    let id = ids.last().cloned().unwrap_or_default();
    // An id already taken (explicit, or the same host:port) would name two backends.
    if before.contains(&id) || ids.len() != before.len() + 1 || id.contains('#') {
        return Err((
            StatusCode::CONFLICT,
            vec![format!(
                "a backend \"{}\" is already a member: PATCH it, or give this one another id",
                id.split('#').next().unwrap_or(&id)
            )],
        ));
    }
    Ok(format!("added backend {id}"))
}

fn patch(u: &mut UpstreamConfig, i: usize, p: &Patch) -> Result<String, Problem> {
    let id = backend_ids(&u.backends)[i].clone();
    let b = &mut u.backends[i];
    let mut what = Vec::new();
    if let Some(w) = p.weight {
        check_weight(w)?;
        b.weight = std::num::NonZeroU32::new(w).ok_or_else(|| bad("weight 0".into()))?;
        what.push(format!("weight {w}"));
    }
    if p.enabled.is_some() && p.drain.is_some() {
        return Err(bad("give enabled or drain, not both".into()));
    }
    if let Some(e) = p.enabled.or(p.drain.map(|d| !d)) {
        b.enabled = e;
        what.push(if e { "enabled" } else { "drained" }.to_string());
    }
    if what.is_empty() {
        return Err(bad(
            "nothing to change: give weight, enabled or drain".into()
        ));
    }
    Ok(format!("backend {id}: {}", what.join(", ")))
}

fn remove(u: &mut UpstreamConfig, i: usize) -> Result<String, Problem> {
    if u.backends.len() == 1 {
        return Err((
            StatusCode::CONFLICT,
            vec![
                "an upstream keeps at least one backend: add another first, or drain this one"
                    .into(),
            ],
        ));
    }
    let id = backend_ids(&u.backends)[i].clone();
    u.backends.remove(i);
    Ok(format!(
        "removed backend {id} (its in-flight exchanges finish)"
    ))
}
