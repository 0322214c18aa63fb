//! The admin listener (plain HTTP/1.1, for loopback or a management network).
//!
//! Open: `GET /metrics` (Prometheus text), `/health` (the process is up), `/ready` (serving:
//! listeners bound and, unless `admin.ready_needs_backends = false`, every upstream a route
//! names has a backend in balancing; 503 while draining).
//!
//! With `Authorization: Bearer <token>` (the token from `admin.token_file`, compared in
//! constant time): `GET /status`, `GET /config`, `POST /config/reload`, `POST /certs/reload`,
//! `POST /restart`, `GET /upstreams`, `GET|POST /upstreams/NAME/backends`,
//! `PATCH|DELETE /upstreams/NAME/backends/ID`. Bodies and answers are JSON; an error answers
//! `{"error": …, "errors": [every problem]}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use spooky_stages::Pipelines;
use tokio::net::TcpListener;

use crate::control::{Control, Refused};
use crate::membership;

/// The largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

/// What the admin endpoints read.
pub struct AdminState {
    pub prometheus: PrometheusHandle,
    pub pipelines: Pipelines,
    pub ready: AtomicBool,
    /// The control token; `None` disables control endpoints.
    pub token: Option<String>,
    pub control: Arc<Control>,
    pub version: &'static str,
    /// The stages' counters at the previous `/status`, for rates.
    pub last_stage_totals: std::sync::Mutex<Option<crate::status::StageTotals>>,
}

/// Serves the admin listener until `stop` turns true (handed over to a new process).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

pub type Answer = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<String>) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r
}

pub fn json_answer(status: StatusCode, v: &Value) -> Answer {
    let mut body = serde_json::to_string_pretty(v).unwrap_or_default();
    body.push('\n');
    let mut r = text(status, body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// `{"error": message, "errors": [...]}`.
pub fn error(status: StatusCode, message: &str, errors: &[String]) -> Answer {
    json_answer(status, &json!({ "error": message, "errors": errors }))
}

fn refused(r: &Refused) -> Answer {
    let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = match r {
        Refused::Invalid(_) => "invalid configuration: still serving the current generation",
        Refused::Conflict(_) => "conflict: still serving the current generation",
        Refused::Failed(_) => "failed: still serving the current generation",
    };
    error(status, message, r.errors())
}

async fn handle(state: &AdminState, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/metrics") => return metrics(state),
        (&Method::GET, "/health") => return text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/ready") => return ready(state).await,
        (_, "/metrics" | "/health" | "/ready") => {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        }
        _ => {}
    }
    // The page and its data are read-only: open on an admin listener without a token (which
    // config validation keeps on loopback), behind the token when there is one.
    let read_only = method == Method::GET && matches!(path.as_str(), "/" | "/status");
    if !(read_only && state.token.is_none())
        && let Err(resp) = authorize(state, &req)
    {
        return resp;
    }
    if path == "/" {
        return if method == Method::GET {
            page()
        } else {
            text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n")
        };
    }
    let control = &state.control;
    match (&method, path.as_str()) {
        (&Method::POST, "/certs/reload") => {
            let (ok, lines) = control.reload_certs().await;
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            text(status, lines.join("\n") + "\n")
        }
        (&Method::POST, "/config/reload") => match control.reload("api").await {
            Ok(r) => json_answer(StatusCode::OK, &json!(r)),
            Err(e) => refused(&e),
        },
        (&Method::POST, "/restart") => match control.restart("api").await {
            Ok(pid) => json_answer(
                StatusCode::OK,
                &json!({ "pid": pid, "previous_pid": std::process::id(), "status": "the new process is ready; this one drains and exits" }),
            ),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "restart failed: this process goes on serving",
                &[e],
            ),
        },
        (&Method::GET, "/status") => {
            json_answer(StatusCode::OK, &crate::status::status(state).await)
        }
        (&Method::GET, "/config") => {
            let live = control.live.lock().await;
            json_answer(
                StatusCode::OK,
                &json!({
                    "generation": control.generation(),
                    "file": control.file.display().to_string(),
                    "overlay": live.overlay,
                    "config": live.config,
                }),
            )
        }
        (_, "/certs/reload" | "/config/reload" | "/restart") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
        }
        (_, "/status" | "/config") => text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n"),
        _ if path == "/upstreams" || path.starts_with("/upstreams/") => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            membership::handle(control, &method, &path, &body).await
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not found",
            &["try /metrics, /health, /ready, /status, /config, /upstreams, POST /config/reload, POST /certs/reload".into()],
        ),
    }
}

fn metrics(state: &AdminState) -> Answer {
    state.pipelines.current().sample_gauges();
    state.prometheus.run_upkeep();
    let mut r = text(
        StatusCode::OK,
        crate::exposition::render(&state.prometheus.render()),
    );
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// 200 `ready` when serving; 503 with the reason when draining or when an upstream a route
/// needs has no backend in balancing.
async fn ready(state: &AdminState) -> Answer {
    if !state.ready.load(Ordering::Acquire) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    let needs = state
        .control
        .live
        .lock()
        .await
        .config
        .admin
        .as_ref()
        .is_none_or(|a| a.ready_needs_backends);
    if needs {
        let down: Vec<String> = state
            .pipelines
            .current()
            .upstreams()
            .into_iter()
            .filter(|u| !u.backends.iter().any(|b| b.enabled && b.available()))
            .map(|u| u.name.clone())
            .collect();
        if !down.is_empty() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no backend in balancing: {}\n", down.join(", ")),
            );
        }
    }
    text(StatusCode::OK, "ready\n")
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Answer> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large or broken",
            &[format!("{e} (at most {MAX_BODY} bytes)")],
        )),
    }
}

/// Checks the bearer token of a control request.
#[allow(clippy::result_large_err)]
fn authorize(state: &AdminState, req: &Request<Incoming>) -> Result<(), Answer> {
    let deny = |status: StatusCode, msg: &str| {
        let mut r = error(status, msg, &[]);
        if status == StatusCode::UNAUTHORIZED {
            // Basic too, so a browser asks for the token (as the password) for the page.
            for scheme in ["Bearer", "Basic realm=\"spooky admin\", charset=\"UTF-8\""] {
                r.headers_mut().append(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static(scheme),
                );
            }
        }
        r
    };
    let Some(token) = &state.token else {
        return Err(deny(
            StatusCode::FORBIDDEN,
            "control endpoints are disabled: set admin.token_file",
        ));
    };
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(credential)
        .unwrap_or_default();
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(deny(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ))
    }
}

/// The token an `Authorization` value carries: `Bearer TOKEN`, or `Basic` with the token as
/// the password (what a browser sends for the page; the user name is ignored).
fn credential(value: &str) -> Option<String> {
    if let Some(t) = value.strip_prefix("Bearer ") {
        return Some(t.to_string());
    }
    use base64::Engine as _;
    let raw = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .ok()?;
    let pair = String::from_utf8(decoded).ok()?;
    pair.split_once(':')
        .map(|(_, password)| password.to_string())
}

/// `GET /`: the live pipeline page (one self-contained file, `src/page.html`).
fn page() -> Answer {
    let mut r = text(StatusCode::OK, include_str!("page.html"));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut().insert(
        http::header::HeaderName::from_static("content-security-policy"),
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ),
    );
    r
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
