//! A real HTTP/1.1 backend (hyper) with a handful of behaviours chosen by path:
//!
//! * `/echo…` — streams the request body straight back, as it arrives;
//! * `/sum…` — reads the whole body, then answers its length, `Expect` and trailers;
//! * `/hold…` — counts the arrival, then answers only when the test releases one hold;
//! * `/trailers` — a chunked body followed by trailers;
//! * `/drip…` — sends one chunk, then waits for a release before the rest;
//! * `/broken…` — sends one chunk, then fails its body once released (cut mid-response);
//! * anything else — `200 backend <path>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, Semaphore};

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// What the test can observe and steer.
pub struct BackendState {
    /// Requests that reached a `/hold` or `/drip` handler.
    pub held: AtomicUsize,
    /// Requests of any kind seen.
    pub seen: AtomicUsize,
    /// `/hold` and `/drip` requests answered or dropped.
    pub finished: AtomicUsize,
    /// Signalled on every arrival and every finish.
    pub changed: Notify,
    releases: Semaphore,
}

impl BackendState {
    /// Lets one held request go on.
    pub fn release(&self, n: usize) {
        self.releases.add_permits(n);
    }

    /// Waits (bounded) until exactly `n` requests have reached `/hold` or `/drip`.
    pub async fn wait_held(&self, n: usize) {
        self.wait_until(&format!("{n} held requests"), |s| {
            s.held.load(Ordering::SeqCst) == n
        })
        .await;
    }

    /// Waits (bounded) until exactly `n` held requests were answered or dropped.
    pub async fn wait_finished(&self, n: usize) {
        self.wait_until(&format!("{n} finished held requests"), |s| {
            s.finished.load(Ordering::SeqCst) == n
        })
        .await;
    }

    /// Waits (bounded) until `f` holds; panics with `what` after 10 s.
    pub async fn wait_until(&self, what: &str, f: impl Fn(&BackendState) -> bool) {
        super::wait_until(&self.changed, &format!("backend: {what}"), || f(self)).await;
    }
}

/// A running backend.
pub struct Backend {
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start() -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(BackendState {
            held: AtomicUsize::new(0),
            seen: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            changed: Notify::new(),
            releases: Semaphore::new(0),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Counts a finish when dropped: answered, or abandoned because the proxy went away.
struct FinishGuard(Arc<BackendState>);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

async fn handle(
    st: Arc<BackendState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    st.seen.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let headers_seen = format!(
        "host={} via={} xff={} xfp={} te={}",
        header(&req, "host"),
        header(&req, "via"),
        header(&req, "x-forwarded-for"),
        header(&req, "x-forwarded-proto"),
        header(&req, "te")
    );
    if path.starts_with("/echo") {
        let body = req
            .into_body()
            .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) });
        return Ok(Response::new(BoxBody::new(body)));
    }
    if path.starts_with("/sum") {
        // Reads the whole body, then says how long it was, which `Expect` it was sent and
        // which trailers came after it.
        let expect = header(&req, "expect");
        let Ok(all) = req.into_body().collect().await else {
            return Ok(text("body failed\n"));
        };
        let trailers = all.trailers().map_or(String::new(), |t| {
            let mut names: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or("?")))
                .collect();
            names.sort();
            names.join(",")
        });
        let n = all.to_bytes().len();
        return Ok(text(&format!(
            "sum {n} expect={expect} trailers={trailers}\n"
        )));
    }
    if path.starts_with("/hold") {
        st.held.fetch_add(1, Ordering::SeqCst);
        st.changed.notify_waiters();
        let _guard = FinishGuard(st.clone());
        if let Ok(p) = st.releases.acquire().await {
            p.forget();
        }
        return Ok(text(&format!("released {path}\n")));
    }
    if path.starts_with("/drip") {
        st.held.fetch_add(1, Ordering::SeqCst);
        st.changed.notify_waiters();
        let guard = FinishGuard(st.clone());
        let stream =
            futures::stream::unfold((0, st.clone(), Some(guard)), |(i, st, guard)| async move {
                match i {
                    0 => Some((
                        Ok(Frame::data(Bytes::from_static(b"first chunk\n"))),
                        (1, st, guard),
                    )),
                    1 => {
                        if let Ok(p) = st.releases.acquire().await {
                            p.forget();
                        }
                        Some((
                            Ok(Frame::data(Bytes::from_static(b"second chunk\n"))),
                            (2, st, guard),
                        ))
                    }
                    _ => None,
                }
            });
        return Ok(Response::new(BoxBody::new(StreamBody::new(stream))));
    }
    if path.starts_with("/broken") {
        // The head and a first chunk go out; the body fails once the test releases it.
        let stream = futures::stream::unfold((0, st.clone()), |(i, st)| async move {
            match i {
                0 => Some((
                    Ok(Frame::data(Bytes::from_static(b"first chunk\n"))),
                    (1, st),
                )),
                1 => {
                    if let Ok(p) = st.releases.acquire().await {
                        p.forget();
                    }
                    let e: Box<dyn std::error::Error + Send + Sync> =
                        "the backend broke mid-body".into();
                    Some((Err(e), (2, st)))
                }
                _ => None,
            }
        });
        return Ok(Response::new(BoxBody::new(StreamBody::new(stream))));
    }
    if path == "/headers" {
        let mut lines: Vec<String> = req
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
            .collect();
        lines.sort();
        return Ok(text(&(lines.join("\n") + "\n")));
    }
    if path == "/trailers" {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
        let frames: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = vec![
            Ok(Frame::data(Bytes::from_static(b"body before trailers\n"))),
            Ok(Frame::trailers(trailers)),
        ];
        let mut resp = Response::new(BoxBody::new(StreamBody::new(futures::stream::iter(frames))));
        resp.headers_mut()
            .insert("trailer", HeaderValue::from_static("x-checksum"));
        return Ok(resp);
    }
    let mut resp = text(&format!("backend {path}\n"));
    resp.headers_mut().insert(
        "x-seen",
        HeaderValue::from_str(&headers_seen).unwrap_or(HeaderValue::from_static("?")),
    );
    resp.headers_mut()
        .insert("connection", HeaderValue::from_static("keep-alive, x-hop"));
    resp.headers_mut().insert(
        "x-hop",
        HeaderValue::from_static("must not reach the client"),
    );
    Ok(resp)
}

fn header(req: &Request<Incoming>, name: &str) -> String {
    req.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .collect::<Vec<_>>()
        .join(",")
}

fn text(s: &str) -> Response<Body> {
    let body = http_body_util::Full::new(Bytes::from(s.to_string()))
        .map_err(|never| -> Box<dyn std::error::Error + Send + Sync> { match never {} });
    Response::new(BoxBody::new(body))
}
