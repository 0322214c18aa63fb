//! Pipeline generations: a generation serves, a second is swapped in while an exchange of
//! the first is still at its backend; new exchanges run on the second, the first finishes its
//! exchange and is then dropped — every cap it had back to zero — while the backend pool the
//! two share stays the same pool (no cold start).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use spooky_stages::Pipelines;
use spooky_stages::contract::exchange::Exchange;
use tokio::sync::{Notify, Semaphore};

/// A real HTTP/1.1 backend: `/hold` answers when released, anything else at once; it counts
/// the TCP connections it accepted (a cold-started pool would open another).
struct Backend {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    held: Arc<(AtomicUsize, Notify)>,
    release: Arc<Semaphore>,
}

async fn backend() -> Backend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let held = Arc::new((AtomicUsize::new(0), Notify::new()));
    let release = Arc::new(Semaphore::new(0));
    let (c, h, r) = (connections.clone(), held.clone(), release.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let (h, r) = (h.clone(), r.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (h, r) = (h.clone(), r.clone());
                    async move {
                        if req.uri().path() == "/hold" {
                            h.0.fetch_add(1, Ordering::SeqCst);
                            h.1.notify_waiters();
                            if let Ok(p) = r.acquire().await {
                                p.forget();
                            }
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Backend {
        addr,
        connections,
        held,
        release,
    }
}

fn config(name: &str, backend: std::net::SocketAddr) -> spooky_stages::config::Config {
    let text = format!(
        r#"
[pipeline]
name = "{name}"
chain = ["ingress", "admission", "route", "queue", "select", "hedge-retry", "dispatch", "egress"]

[[listeners]]
name = "edge"
bind = "127.0.0.1:0"

[[routes]]
name = "app"
match = {{ path_prefix = "/" }}
upstream = "app"

[upstreams.app]
backends = [ {{ url = "http://{backend}" }} ]
"#
    );
    spooky_stages::config::parse("generations.toml", &text).expect("config")
}

/// Runs one exchange on the current generation (its response goes nowhere) and returns
/// the task running it.
fn exchange(pipelines: &Pipelines, path: &str) -> tokio::task::JoinHandle<()> {
    let pipeline = pipelines.current();
    let (head, ()) = Request::get(format!("http://app.test{path}"))
        .body(())
        .expect("req")
        .into_parts();
    tokio::spawn(async move {
        let mut ex = Exchange::detached(pipeline.next_id(), head);
        ex.permits.drain = pipeline.drain().enter().ok();
        let permit = pipeline.ingress_cap().acquire().await.expect("ingress");
        pipeline.run(ex, permit).await;
    })
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn wait_held(b: &Backend, n: usize) {
    bounded(&format!("the backend holds {n}"), async {
        loop {
            let notified = b.held.1.notified();
            if b.held.0.load(Ordering::SeqCst) >= n {
                return;
            }
            notified.await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_out_generation_finishes_its_exchanges_and_is_dropped() {
    let b = backend().await;
    let pipelines = Pipelines::start(&config("first", b.addr)).expect("first");
    let first = Arc::downgrade(&pipelines.current());

    // The first generation serves (one pooled connection), then holds an exchange on it.
    bounded("first exchange", exchange(&pipelines, "/a"))
        .await
        .expect("task");
    let held = exchange(&pipelines, "/hold");
    wait_held(&b, 1).await;
    let busy = first.upgrade().map(|p| p.held());
    assert!(
        busy.is_some_and(|n| n > 0),
        "the held exchange holds caps of the first"
    );

    // Swap in the second generation; it serves while the first still has its exchange.
    let next = pipelines.build(&config("second", b.addr)).expect("second");
    let second = Arc::downgrade(&next);
    drop(pipelines.swap(next));
    assert_eq!(pipelines.current().name(), "second");
    assert_eq!(pipelines.pools(), 1, "one pool, shared by both generations");
    bounded("second exchange", exchange(&pipelines, "/b"))
        .await
        .expect("task");
    assert!(
        first.upgrade().is_some(),
        "the first lives while its exchange does"
    );

    // The held exchange ends on the first generation, which is then dropped; every cap it
    // had is back to zero first.
    b.release.add_permits(1);
    bounded("held exchange", held).await.expect("task");
    let left = first.upgrade().map(|p| p.held());
    assert!(left.is_none_or(|n| n == 0), "caps of the first: {left:?}");
    assert!(first.upgrade().is_none(), "the first generation is dropped");

    // The second serves on the same warm pool: two exchanges at once find the two idle
    // connections the first and second opened (a cold pool would open a third).
    assert_eq!(b.connections.load(Ordering::SeqCst), 2);
    let (c, d) = (exchange(&pipelines, "/hold"), exchange(&pipelines, "/hold"));
    wait_held(&b, 3).await;
    b.release.add_permits(2);
    bounded("c", c).await.expect("task");
    bounded("d", d).await.expect("task");
    assert_eq!(b.connections.load(Ordering::SeqCst), 2, "no cold start");
    assert!(second.upgrade().is_some());
    assert_eq!(pipelines.current().held(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_generation_takes_no_new_exchange() {
    let b = backend().await;
    let pipelines = Pipelines::start(&config("first", b.addr)).expect("first");
    let old = pipelines.current();
    let next = pipelines.build(&config("second", b.addr)).expect("second");
    drop(pipelines.swap(next));
    // A stale handle to the first generation cannot start an exchange on it.
    assert!(old.ingress_cap().try_acquire().is_err());
    assert!(pipelines.current().ingress_cap().try_acquire().is_ok());
}
