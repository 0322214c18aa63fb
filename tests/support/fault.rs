//! The fault backend: a hyper HTTP/1.1 backend whose behaviour the test switches at run time
//! — answer (a status, after a delay), reset the connection, accept and never answer, stall
//! in the middle of the body — and that counts what it was sent and which requests were
//! given up by the proxy before it answered (their handler was dropped: the cancellation
//! reached the backend). A refused connection is [`super::dead_addr`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

/// What the backend does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answers `status` with body `NAME`, after `delay`.
    Answer { status: u16, delay: Duration },
    /// Closes the connection without answering (the proxy sees a reset).
    Reset,
    /// Never answers.
    Hang,
    /// Answers 200 with half a body, then never sends the rest.
    StallBody,
    /// Answers 200 once the test lets it ([`Fault::release`]), one request per release.
    Gated,
}

impl Mode {
    pub const OK: Mode = Mode::Answer {
        status: 200,
        delay: Duration::ZERO,
    };

    pub fn status(status: u16) -> Mode {
        Mode::Answer {
            status,
            delay: Duration::ZERO,
        }
    }

    pub fn slow(delay: Duration) -> Mode {
        Mode::Answer { status: 200, delay }
    }
}

struct Shared {
    name: &'static str,
    mode: Mutex<Mode>,
    received: AtomicUsize,
    answered: AtomicUsize,
    cancelled: AtomicUsize,
    /// Paths in the order their requests arrived.
    paths: Mutex<Vec<String>>,
    /// Releases for `Mode::Gated`.
    gate: tokio::sync::Semaphore,
    /// Notified whenever a counter moves.
    changed: Notify,
}

/// A running fault backend.
pub struct Fault {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fault {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts a request as cancelled unless it was answered.
struct Watch(Arc<Shared>, bool);

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
            self.0.changed.notify_waiters();
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

impl Fault {
    pub async fn start(name: &'static str, mode: Mode) -> Fault {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            name,
            mode: Mutex::new(mode),
            received: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            paths: Mutex::new(Vec::new()),
            gate: tokio::sync::Semaphore::new(0),
            changed: Notify::new(),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| serve(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Fault { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().expect("mode") = mode;
    }

    /// Lets `n` gated requests be answered (in the order they wait).
    pub fn release(&self, n: usize) {
        self.shared.gate.add_permits(n);
    }

    /// Requests that reached the backend.
    pub fn received(&self) -> usize {
        self.shared.received.load(Ordering::SeqCst)
    }

    /// The paths of the requests received, in arrival order.
    pub fn paths(&self) -> Vec<String> {
        self.shared.paths.lock().expect("paths").clone()
    }

    /// Requests the proxy gave up on before the backend answered.
    pub fn cancelled(&self) -> usize {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// Waits (bounded: 10 s) until `cond` holds of (received, cancelled).
    pub async fn wait(&self, what: &str, cond: impl Fn(usize, usize) -> bool) {
        super::wait_until(&self.shared.changed, what, || {
            cond(self.received(), self.cancelled())
        })
        .await;
    }
}

async fn serve(s: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
    s.paths
        .lock()
        .expect("paths")
        .push(req.uri().path().to_string());
    s.received.fetch_add(1, Ordering::SeqCst);
    s.changed.notify_waiters();
    let mut watch = Watch(s.clone(), false);
    // The whole request body, as a real handler would read it.
    let _ = req.into_body().collect().await;
    let mode = *s.mode.lock().expect("mode");
    let resp = match mode {
        Mode::Answer { status, delay } => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Response::builder()
                .status(status)
                .header("x-backend", s.name)
                .body(Full::new(Bytes::from(s.name)).boxed())
                .expect("response")
        }
        Mode::Reset => {
            watch.1 = true;
            // An error from the service makes hyper close the connection unanswered.
            return Err(std::io::Error::other("reset by the fault backend"));
        }
        Mode::Hang => std::future::pending().await,
        Mode::Gated => {
            if let Ok(p) = s.gate.acquire().await {
                p.forget();
            }
            Response::builder()
                .header("x-backend", s.name)
                .body(Full::new(Bytes::from(s.name)).boxed())
                .expect("response")
        }
        Mode::StallBody => {
            let first = futures::stream::iter([Ok::<_, Infallible>(Frame::data(
                Bytes::from_static(b"half of it"),
            ))]);
            let stream = futures::StreamExt::chain(first, futures::stream::pending());
            Response::builder()
                .header("x-backend", s.name)
                .header("content-length", "100")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .expect("response")
        }
    };
    watch.1 = true;
    s.answered.fetch_add(1, Ordering::SeqCst);
    s.changed.notify_waiters();
    Ok(resp)
}

/// Route `app` (with `route_extra`) to upstream `app` (with `upstream_extra`) over `backends`.
pub fn config(backends: &[&Fault], upstream_extra: &str, route_extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ url = \"{}\" }}", b.url()))
        .collect();
    format!(
        "[[routes]]\nname = \"app\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n{route_extra}\n\n[upstreams.app]\n{upstream_extra}\nbackends = [ {} ]\n",
        list.join(", ")
    )
}
