//! The admin listener: `GET /metrics` (Prometheus text), `/health` (the process is up) and
//! `/ready` (accepting traffic; 503 while draining), open; and control endpoints that need
//! `Authorization: Bearer <token>` with the token from `admin.token_file`:
//! `POST /certs/reload`. Plain HTTP/1.1, meant for loopback or a management network.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use spooky_stages::Pipelines;
use tokio::net::TcpListener;

use crate::reload::CertReloader;

/// What the admin endpoints read.
pub struct AdminState {
    pub prometheus: PrometheusHandle,
    pub pipelines: Pipelines,
    pub ready: AtomicBool,
    /// The control token; `None` disables control endpoints.
    pub token: Option<String>,
    pub certs: Arc<CertReloader>,
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn handle(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() == "/certs/reload" {
        if req.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into());
        }
        if let Err(resp) = authorize(state, &req) {
            return resp;
        }
        let (ok, lines) = state.certs.reload_all();
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        return text(status, lines.join("\n") + "\n");
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            state.pipelines.current().sample_gauges();
            state.prometheus.run_upkeep();
            let mut r = text(StatusCode::OK, state.prometheus.render());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/health" => text(StatusCode::OK, "ok\n".into()),
        "/ready" if state.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n".into()),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /health, /ready, POST /certs/reload\n".into(),
        ),
    }
}

/// Checks the bearer token of a control request.
#[allow(clippy::result_large_err)]
fn authorize(state: &AdminState, req: &Request<Incoming>) -> Result<(), Response<Full<Bytes>>> {
    let deny = |status: StatusCode, msg: &str| {
        let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
        *r.status_mut() = status;
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
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
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(deny(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ))
    }
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
