//! Routing and balancing end to end: every matcher through real HTTP/3, HTTP/2 and HTTP/1.1
//! clients, rewrites and header edits seen by real backends, redirects, weighted splits and
//! sticky keys, and the balancing algorithms against real (fast and slow) hyper backends.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use spooky::h3client::H3Conn;
use support::proxy::{Proxy, pipeline_with};
use support::tcp::{Sender, body};
use support::{TempDir, TestCert, connect, spooky};

/// A backend that says who it is and what it was sent: body `NAME PATH?QUERY`, and headers
/// `x-backend`, `x-seen-host` (the Host it got), `x-seen-original-host`, `x-seen-debug` and
/// the forwarding headers (`x-seen-xff`, `-xfp`, `-xfh`, `-forwarded`).
struct Named {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Named {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Named {
    async fn start(name: &'static str, delay: Duration) -> Named {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let counter = counter.clone();
                        async move {
                            counter.fetch_add(1, Ordering::SeqCst);
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            // Every field line of a name, joined as a list.
                            let h = |n: &str| {
                                let all: Vec<&str> = req
                                    .headers()
                                    .get_all(n)
                                    .iter()
                                    .filter_map(|v| v.to_str().ok())
                                    .collect();
                                if all.is_empty() {
                                    "-".to_string()
                                } else {
                                    all.join(", ")
                                }
                            };
                            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                            let resp = Response::builder()
                                .header("x-backend", name)
                                .header("x-seen-host", h("host"))
                                .header("x-seen-original-host", h("x-original-host"))
                                .header("x-seen-debug", h("x-debug"))
                                .header("x-seen-xff", h("x-forwarded-for"))
                                .header("x-seen-xfp", h("x-forwarded-proto"))
                                .header("x-seen-xfh", h("x-forwarded-host"))
                                .header("x-seen-forwarded", h("forwarded"))
                                .body(Full::new(Bytes::from(format!("{name} {pq}"))))
                                .expect("response");
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Named { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

/// One response, whatever the protocol: status, the headers asked about, body.
#[derive(Debug, Clone)]
struct Got {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// A client on one protocol, over one connection.
enum Client {
    H3(H3Conn),
    Tcp(Sender),
}

impl Client {
    async fn open(proto: &str, proxy: &Proxy, cert: &TestCert) -> Client {
        match proto {
            "h3" => Client::H3(connect(&cert.client(), proxy).await),
            alpn => Client::Tcp(
                Sender::connect(
                    proxy.tcp_addr.expect("tcp"),
                    std::slice::from_ref(&cert.der),
                    if alpn == "h2" { b"h2" } else { b"http/1.1" },
                )
                .await,
            ),
        }
    }

    async fn send(&mut self, method: &str, url: &str, headers: &[(&str, &str)]) -> Got {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        match self {
            Client::H3(c) => {
                let r = c
                    .request(b.body(()).expect("request"), None)
                    .await
                    .expect("h3 response");
                Got {
                    status: r.status.as_u16(),
                    headers: flat(&r.headers),
                    body: String::from_utf8_lossy(&r.body).into_owned(),
                }
            }
            Client::Tcp(s) => {
                let r = s
                    .send(b.body(Full::new(Bytes::new())).expect("request"))
                    .await;
                let status = r.status().as_u16();
                let headers = flat(r.headers());
                let (bytes, _) = body(r).await;
                Got {
                    status,
                    headers,
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                }
            }
        }
    }
}

fn flat(h: &http::HeaderMap) -> HashMap<String, String> {
    h.iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect()
}

fn tls(cert: &TestCert) -> String {
    cert.toml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_matcher_rewrite_and_redirect_through_h3_h2_and_http1() {
    let stable = Named::start("stable", Duration::ZERO).await;
    let canary = Named::start("canary", Duration::ZERO).await;
    let beta = Named::start("beta", Duration::ZERO).await;
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let routes = format!(
        r#"
[[routes]]
name = "canary"
match = {{ host = "api.example.com", path_prefix = "/api", headers = {{ x-canary = {{ equals = "yes" }} }} }}
upstream = "canary"

[[routes]]
name = "beta"
match = {{ host = "api.example.com", path_prefix = "/api", query = {{ v = {{ equals = "2" }} }}, cookies = {{ beta = {{ present = true }} }} }}
upstream = "beta"

[[routes]]
name = "api"
match = {{ host = "api.example.com", path_prefix = "/api" }}
upstream = "stable"
rewrite = {{ path_prefix = "/v1", host = "internal.test" }}
request_headers = {{ set = {{ x-original-host = "api.example.com" }}, remove = ["x-debug"] }}
response_headers = {{ set = {{ x-route = "api" }} }}

[[routes]]
name = "exact-host"
match = {{ host = ["API.Example.com", "*.deep.example.com"], path = "/" }}
respond = {{ status = 200, body = "exact host" }}

[[routes]]
name = "h2-only"
match = {{ path = "/proto", protocols = ["h2"] }}
respond = {{ status = 200, body = "h2 only" }}

[[routes]]
name = "proto-any"
match = {{ path = "/proto" }}
respond = {{ status = 200, body = "any protocol" }}

[[routes]]
name = "report"
match = {{ path_regex = "/reports/[0-9]{{4}}", methods = ["GET"] }}
respond = {{ status = 200, body = "report" }}

[[routes]]
name = "moved"
match = {{ path_prefix = "/Old" }}
path_case = "insensitive"
redirect = {{ status = 308, scheme = "https", host = "new.test", prefix = "/new" }}

[[routes]]
name = "sni"
match = {{ path = "/sni", sni = "localhost" }}
respond = {{ status = 200, body = "sni localhost" }}

[[routes]]
name = "fallback"
match = {{ path_prefix = "/" }}
respond = {{ status = 404, body = "nothing" }}

[upstreams.stable]
backends = [ {{ url = "{}" }} ]

[upstreams.canary]
backends = [ {{ url = "{}" }} ]

[upstreams.beta]
backends = [ {{ url = "{}" }} ]
"#,
        stable.url(),
        canary.url(),
        beta.url()
    );
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &tls(&cert),
        &routes,
    ));
    for proto in ["h3", "h2", "http1"] {
        let mut c = Client::open(proto, &proxy, &cert).await;
        let api = "https://api.example.com";
        // The plain API route: rewritten path and host, header edits both ways.
        let r = c
            .send("GET", &format!("{api}/api/users?x=1"), &[("x-debug", "1")])
            .await;
        assert_eq!(r.status, 200, "{proto}: {r:?}");
        assert_eq!(r.body, "stable /v1/users?x=1", "{proto}");
        assert_eq!(r.header("x-seen-host"), "internal.test", "{proto}");
        assert_eq!(
            r.header("x-seen-original-host"),
            "api.example.com",
            "{proto}"
        );
        assert_eq!(r.header("x-seen-debug"), "-", "{proto}: x-debug removed");
        assert_eq!(r.header("x-route"), "api", "{proto}");
        // Default forwarding: X-Forwarded-* only, for the client's own address and host.
        assert_eq!(r.header("x-seen-xff"), "127.0.0.1", "{proto}");
        assert_eq!(r.header("x-seen-xfh"), "api.example.com", "{proto}");
        assert_eq!(
            r.header("x-seen-forwarded"),
            "-",
            "{proto}: RFC 7239 is opt-in"
        );
        // Header matcher: positive and negative.
        let r = c
            .send("GET", &format!("{api}/api/x"), &[("x-canary", "yes")])
            .await;
        assert_eq!(r.body, "canary /api/x", "{proto}");
        let r = c
            .send("GET", &format!("{api}/api/x"), &[("x-canary", "no")])
            .await;
        assert_eq!(r.body, "stable /v1/x", "{proto}");
        // Query and cookie together; either alone is not enough.
        let r = c
            .send(
                "GET",
                &format!("{api}/api/x?v=2"),
                &[("cookie", "a=1; beta=1")],
            )
            .await;
        assert_eq!(r.body, "beta /api/x?v=2", "{proto}");
        let r = c.send("GET", &format!("{api}/api/x?v=2"), &[]).await;
        assert_eq!(r.body, "stable /v1/x?v=2", "{proto}");
        // Host: case, port and trailing dot do not matter; a wildcard takes any depth but
        // never its apex; a host group falls back to host-less routes.
        for host in [
            "api.example.com",
            "API.EXAMPLE.COM:8443",
            "a.b.deep.example.com",
        ] {
            let r = c.send("GET", &format!("https://{host}/"), &[]).await;
            assert_eq!(r.body, "exact host", "{proto} {host}");
        }
        let r = c.send("GET", "https://deep.example.com/", &[]).await;
        assert_eq!(r.body, "nothing", "{proto}: apex");
        let r = c.send("GET", &format!("{api}/elsewhere"), &[]).await;
        assert_eq!((r.status, r.body.as_str()), (404, "nothing"), "{proto}");
        // Protocol matcher.
        let r = c.send("GET", "https://localhost/proto", &[]).await;
        let want = if proto == "h2" {
            "h2 only"
        } else {
            "any protocol"
        };
        assert_eq!(r.body, want, "{proto}");
        // Anchored regex, method-specific.
        let r = c.send("GET", "https://localhost/reports/2026", &[]).await;
        assert_eq!(r.body, "report", "{proto}");
        let r = c.send("GET", "https://localhost/reports/2026x", &[]).await;
        assert_eq!(r.body, "nothing", "{proto}");
        let r = c.send("POST", "https://localhost/reports/2026", &[]).await;
        assert_eq!(r.body, "nothing", "{proto}");
        // Redirect with a prefix replaced, case-insensitive match, query kept.
        let r = c.send("GET", "https://localhost/OLD/a/b?q=1", &[]).await;
        assert_eq!(r.status, 308, "{proto}");
        assert_eq!(
            r.header("location"),
            "https://new.test/new/a/b?q=1",
            "{proto}"
        );
        // SNI: every client here connects with the name localhost.
        let r = c.send("GET", "https://other.test/sni", &[]).await;
        assert_eq!(r.body, "sni localhost", "{proto}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_follows_its_weights_and_a_sticky_key_never_flips() {
    let v1 = Named::start("v1", Duration::ZERO).await;
    let v2 = Named::start("v2", Duration::ZERO).await;
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let routes = format!(
        r#"
[[routes]]
name = "split"
match = {{ path_prefix = "/" }}
split = [ {{ upstream = "v1", weight = 3 }}, {{ upstream = "v2", weight = 1 }} ]
sticky = "cookie:session"

[upstreams.v1]
backends = [ {{ url = "{}" }} ]

[upstreams.v2]
backends = [ {{ url = "{}" }} ]
"#,
        v1.url(),
        v2.url()
    );
    let proxy = Proxy::start(&pipeline_with(r#"["h3"]"#, &tls(&cert), &routes));
    let mut c = Client::open("h3", &proxy, &cert).await;
    // Without the key: smooth weighted round-robin, exact over whole cycles.
    for _ in 0..400 {
        let r = c.send("GET", "https://localhost/x", &[]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!((v1.seen(), v2.seen()), (300, 100));
    // With the key: each user always lands on the same side, and users split by weight.
    let mut sides = HashMap::new();
    for user in 0..200 {
        let cookie = format!("session=user-{user}");
        for _ in 0..3 {
            let r = c
                .send("GET", "https://localhost/x", &[("cookie", &cookie)])
                .await;
            let side = r.header("x-backend").to_string();
            let first = sides.entry(user).or_insert_with(|| side.clone());
            assert_eq!(*first, side, "user {user} flipped");
        }
    }
    let on_v2 = sides.values().filter(|s| *s == "v2").count();
    assert!(
        (25..=75).contains(&on_v2),
        "{on_v2} of 200 users on v2 (expected about 50)"
    );
}

/// Sends `n` requests, `concurrency` at a time, over one HTTP/3 connection.
async fn load(
    proxy: &Proxy,
    cert: &TestCert,
    n: usize,
    concurrency: usize,
    headers: &[(&'static str, String)],
) {
    let conn = Arc::new(connect(&cert.client(), proxy).await);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let conn = conn.clone();
        let next = next.clone();
        let headers = headers.to_vec();
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < n {
                let mut b = Request::get("https://localhost/work");
                for (k, v) in &headers {
                    b = b.header(*k, v.as_str());
                }
                let r = conn
                    .request(b.body(()).expect("req"), None)
                    .await
                    .expect("response");
                assert_eq!(r.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

fn one_upstream(balance: &str, extra: &str, backends: &[&Named]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ url = \"{}\" }}", b.url()))
        .collect();
    format!(
        "[[routes]]\nname = \"app\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n\n[upstreams.app]\nbalance = \"{balance}\"\n{extra}\nbackends = [ {} ]\n",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_and_latency_aware_move_load_off_a_slow_backend() {
    for balance in ["least-connections", "latency-aware", "power-of-two"] {
        let fast = Named::start("fast", Duration::ZERO).await;
        let slow = Named::start("slow", Duration::from_millis(100)).await;
        let dir = TempDir::new();
        let cert = TestCert::generate(&dir);
        let proxy = Proxy::start(&pipeline_with(
            r#"["h3"]"#,
            &tls(&cert),
            &one_upstream(balance, "", &[&fast, &slow]),
        ));
        load(&proxy, &cert, 200, 8, &[]).await;
        let (f, s) = (fast.seen(), slow.seen());
        assert_eq!(f + s, 200);
        // Round-robin would send 100 to each; the slow one holds its requests 100 ms.
        assert!(s < 50, "{balance}: slow backend took {s} of 200");
        assert!(s > 0, "{balance}: the slow backend is still a candidate");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_a_key_and_sticky_cid_keeps_a_connection() {
    let backends = [
        Named::start("a", Duration::ZERO).await,
        Named::start("b", Duration::ZERO).await,
        Named::start("c", Duration::ZERO).await,
    ];
    let refs: Vec<&Named> = backends.iter().collect();
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3", "h2"]"#,
        &tls(&cert),
        &one_upstream("consistent-hash", "hash_key = \"header:x-user\"", &refs),
    ));
    let mut c = Client::open("h2", &proxy, &cert).await;
    let mut owners = HashMap::new();
    for user in 0..60 {
        let u = format!("u{user}");
        for _ in 0..3 {
            let r = c
                .send("GET", "https://localhost/k", &[("x-user", &u)])
                .await;
            let b = r.header("x-backend").to_string();
            assert_eq!(
                owners.entry(user).or_insert_with(|| b.clone()),
                &b,
                "user {u}"
            );
        }
    }
    let distinct: std::collections::HashSet<&String> = owners.values().collect();
    assert_eq!(distinct.len(), 3, "60 keys reach every backend: {owners:?}");
    drop(proxy);

    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &tls(&cert),
        &one_upstream("sticky-cid", "", &refs),
    ));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..12 {
        let mut conn = Client::open("h3", &proxy, &cert).await;
        let first = conn
            .send("GET", "https://localhost/s", &[])
            .await
            .header("x-backend")
            .to_string();
        for _ in 0..10 {
            let r = conn.send("GET", "https://localhost/s", &[]).await;
            assert_eq!(
                r.header("x-backend"),
                first,
                "a connection stays on its backend"
            );
        }
        seen.insert(first);
    }
    assert!(
        seen.len() >= 2,
        "connections spread over backends: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cid_survives_client_address_migration() {
    let backends = [
        Named::start("a", Duration::ZERO).await,
        Named::start("b", Duration::ZERO).await,
        Named::start("c", Duration::ZERO).await,
        Named::start("d", Duration::ZERO).await,
    ];
    let refs: Vec<&Named> = backends.iter().collect();
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    // One worker: a migrated client reaches the same endpoint (with several, SO_REUSEPORT may
    // hand its new address to another worker; docs/performance.md).
    let toml = pipeline_with(
        r#"["h3"]"#,
        &tls(&cert),
        &one_upstream("sticky-cid", "", &refs),
    )
    .replace(
        "drain_timeout = \"10s\"",
        "drain_timeout = \"10s\"\nworkers = 1",
    );
    let proxy = Proxy::start(&toml);
    for _ in 0..4 {
        let client = cert.client();
        let conn = client
            .connect(proxy.h3_addr, "localhost")
            .await
            .expect("connect");
        let first = conn.get("https://localhost/m").await.expect("response");
        let owner = first.headers.get("x-backend").cloned().expect("x-backend");
        for _ in 0..3 {
            let before = conn.conn.stable_id();
            client.rebind().expect("rebind");
            for _ in 0..3 {
                let r = conn
                    .get("https://localhost/m")
                    .await
                    .expect("after migration");
                assert_eq!(
                    r.headers.get("x-backend"),
                    Some(&owner),
                    "moved backend after migration"
                );
            }
            assert_eq!(
                conn.conn.stable_id(),
                before,
                "the same connection, migrated"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_stays_within_its_weights_with_two_workers() {
    let backends = [
        Named::start("w1", Duration::ZERO).await,
        Named::start("w2", Duration::ZERO).await,
        Named::start("w3", Duration::ZERO).await,
        Named::start("w4", Duration::ZERO).await,
    ];
    let list: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{{ url = \"{}\", weight = {} }}", b.url(), i + 1))
        .collect();
    let routes = format!(
        "[[routes]]\nname = \"app\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n\n[upstreams.app]\nbackends = [ {} ]\n",
        list.join(", ")
    );
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let toml = pipeline_with(r#"["h3"]"#, &tls(&cert), &routes).replace(
        "drain_timeout = \"10s\"",
        "drain_timeout = \"10s\"\nworkers = 2",
    );
    let proxy = Proxy::start(&toml);
    // Several connections, so both workers serve; 500 requests are 50 whole cycles of 10.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let client = cert.client();
        let addr = proxy.h3_addr;
        tasks.push(tokio::spawn(async move {
            let conn = client.connect(addr, "localhost").await.expect("connect");
            for _ in 0..100 {
                let r = conn.get("https://localhost/rr").await.expect("response");
                assert_eq!(r.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let counts: Vec<usize> = backends.iter().map(Named::seen).collect();
    assert_eq!(
        counts,
        vec![50, 100, 150, 200],
        "one cycle shared by both workers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_backend_is_full_an_exchange_waits_for_room_up_to_the_queue_deadline() {
    let backend = support::backend::Backend::start().await;
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let rest = |when_full: &str| {
        format!(
            "[stages.select]\nwhen_full = \"{when_full}\"\n\n[stages.queue]\ndeadline = \"5s\"\n\n[[routes]]\nname = \"app\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n\n[upstreams.app]\nbackends = [ {{ url = \"{}\", max_inflight = 1 }} ]\n",
            backend.url()
        )
    };
    let proxy = Proxy::start(&pipeline_with(r#"["h3"]"#, &tls(&cert), &rest("wait")));
    let conn = Arc::new(connect(&cert.client(), &proxy).await);
    let first = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.get("https://localhost/hold/1").await.expect("first") })
    };
    backend.state.wait_held(1).await;
    let second = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.get("https://localhost/hold/2").await.expect("second") })
    };
    // The second cannot reach the backend while the first holds its only slot: it waits in
    // select (counted as processing, not refused) ...
    proxy
        .wait_metric("spooky_stage_received_total", &[("stage", "select")], |v| {
            v >= 2.0
        })
        .await;
    assert_eq!(backend.state.held.load(Ordering::SeqCst), 1);
    // ... and goes on as soon as the first is answered.
    backend.state.release(1);
    assert_eq!(first.await.expect("task").status, 200);
    backend.state.wait_held(2).await;
    backend.state.release(1);
    assert_eq!(second.await.expect("task").status, 200);
    assert_eq!(proxy.rejected("select", "no_backend").await, 0.0);
    drop(proxy);

    // `shed`: the second is answered 503 at once.
    let proxy = Proxy::start(&pipeline_with(r#"["h3"]"#, &tls(&cert), &rest("shed")));
    let conn = Arc::new(connect(&cert.client(), &proxy).await);
    let first = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.get("https://localhost/hold/3").await.expect("first") })
    };
    backend.state.wait_held(3).await;
    let r = conn.get("https://localhost/x").await.expect("second");
    assert_eq!(r.status, 503);
    assert_eq!(proxy.rejected("select", "no_backend").await, 1.0);
    backend.state.release(1);
    assert_eq!(first.await.expect("task").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_follow_the_route_policy_and_trust_only_trusted_proxies() {
    let app = Named::start("app", Duration::ZERO).await;
    let hashed = [
        Named::start("h1", Duration::ZERO).await,
        Named::start("h2", Duration::ZERO).await,
        Named::start("h3", Duration::ZERO).await,
    ];
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let config = |trusted: &str| {
        let hashed: Vec<String> = hashed
            .iter()
            .map(|b| format!("{{ url = \"{}\" }}", b.url()))
            .collect();
        format!(
            r#"
[stages.ingress]
trusted_proxies = ["{trusted}"]

[stages.dispatch]
forwarded_header = "both"

[[routes]]
name = "append"
match = {{ path = "/append" }}
upstream = "app"

[[routes]]
name = "replace"
match = {{ path = "/replace" }}
upstream = "app"
forwarded = "replace"

[[routes]]
name = "strip"
match = {{ path = "/strip" }}
upstream = "app"
forwarded = "strip"

[[routes]]
name = "rewritten"
match = {{ path = "/rewritten" }}
upstream = "app"
rewrite = {{ host = "internal.test" }}

[[routes]]
name = "hashed"
match = {{ path = "/hashed" }}
upstream = "hashed"

[upstreams.app]
backends = [ {{ url = "{}" }} ]

[upstreams.hashed]
balance = "consistent-hash"
hash_key = "client-ip"
backends = [ {} ]
"#,
            app.url(),
            hashed.join(", ")
        )
    };
    let claims = [
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-proto", "http"),
        ("forwarded", "for=1.2.3.4;proto=http"),
    ];
    // The client (127.0.0.1) is a trusted proxy.
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &tls(&cert),
        &config("127.0.0.0/8"),
    ));
    let mut c = Client::open("h3", &proxy, &cert).await;
    let r = c.send("GET", "https://localhost/append", &claims).await;
    assert_eq!(r.header("x-seen-xff"), "1.2.3.4, 127.0.0.1");
    assert_eq!(
        r.header("x-seen-xfp"),
        "http",
        "the trusted proxy knew the scheme"
    );
    assert_eq!(r.header("x-seen-xfh"), "localhost");
    assert_eq!(
        r.header("x-seen-forwarded"),
        "for=1.2.3.4;proto=http, for=127.0.0.1;proto=https;host=localhost"
    );
    let r = c.send("GET", "https://localhost/replace", &claims).await;
    assert_eq!(r.header("x-seen-xff"), "127.0.0.1");
    assert_eq!(r.header("x-seen-xfp"), "https");
    assert_eq!(
        r.header("x-seen-forwarded"),
        "for=127.0.0.1;proto=https;host=localhost"
    );
    let r = c.send("GET", "https://localhost/strip", &claims).await;
    for h in ["x-seen-xff", "x-seen-xfp", "x-seen-xfh", "x-seen-forwarded"] {
        assert_eq!(r.header(h), "-", "{h}");
    }
    let r = c.send("GET", "https://localhost/rewritten", &[]).await;
    assert_eq!(r.header("x-seen-host"), "internal.test");
    assert_eq!(
        r.header("x-seen-xfh"),
        "localhost",
        "the client's host, not the rewrite"
    );
    // client-ip keys use the address the trusted proxy reports: clients spread.
    let mut owners = std::collections::HashSet::new();
    for i in 0..30 {
        let xff = format!("198.51.100.{i}");
        let r = c
            .send(
                "GET",
                "https://localhost/hashed",
                &[("x-forwarded-for", &xff)],
            )
            .await;
        owners.insert(r.header("x-backend").to_string());
    }
    assert!(owners.len() >= 2, "{owners:?}");
    drop(proxy);

    // 127.0.0.1 is not trusted now: what it claims is dropped, and its own address is the key.
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &tls(&cert),
        &config("10.0.0.0/8"),
    ));
    let mut c = Client::open("h3", &proxy, &cert).await;
    let r = c.send("GET", "https://localhost/append", &claims).await;
    assert_eq!(r.header("x-seen-xff"), "127.0.0.1");
    assert_eq!(r.header("x-seen-xfp"), "https");
    assert_eq!(
        r.header("x-seen-forwarded"),
        "for=127.0.0.1;proto=https;host=localhost"
    );
    let mut owners = std::collections::HashSet::new();
    for i in 0..30 {
        let xff = format!("198.51.100.{i}");
        let r = c
            .send(
                "GET",
                "https://localhost/hashed",
                &[("x-forwarded-for", &xff)],
            )
            .await;
        owners.insert(r.header("x-backend").to_string());
    }
    assert_eq!(
        owners.len(),
        1,
        "one client address, one backend: {owners:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_may_take_encoded_slashes_that_every_other_route_refuses() {
    let app = Named::start("app", Duration::ZERO).await;
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let routes = format!(
        "[[routes]]\nname = \"files\"\nmatch = {{ path_prefix = \"/files\" }}\nencoded_slashes = \"keep\"\nupstream = \"app\"\n\n[[routes]]\nname = \"rest\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n\n[upstreams.app]\nbackends = [ {{ url = \"{}\" }} ]\n",
        app.url()
    );
    let proxy = Proxy::start(&pipeline_with(r#"["h3"]"#, &tls(&cert), &routes));
    let mut c = Client::open("h3", &proxy, &cert).await;
    // One segment (a%2Fb): kept encoded, upper-cased; dot segments still go.
    let r = c
        .send("GET", "https://localhost/files/a%2fb/./c", &[])
        .await;
    assert_eq!((r.status, r.body.as_str()), (200, "app /files/a%2Fb/c"));
    let r = c.send("GET", "https://localhost/other/a%2Fb", &[]).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("encoded_slash"), "{r:?}");
    assert_eq!(app.seen(), 1);
}

#[test]
fn spooky_route_explains_decisions() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/routing.toml");
    let run = |args: &[&str]| {
        let mut all = vec!["route", file];
        all.extend_from_slice(args);
        let (code, out, err) = spooky(&all);
        assert_eq!(code, 0, "{err}");
        out
    };
    let out = run(&[
        "GET",
        "https://API.example.com:8443/api/users?x=1",
        "-H",
        "x-canary: no",
        "-H",
        "x-debug: 1",
    ]);
    assert_eq!(
        out,
        "request: GET https://API.example.com:8443/api/users?x=1 (h3)
matched as: host api.example.com, path /api/users
route: api
  action: upstream api-v1
  upstream request: GET /v1/users?x=1 (authority API.example.com:8443)
  upstream: api-v1 (least-connections, backends http://127.0.0.1:8081 http://127.0.0.1:8082)
candidates, most specific first:
  api-beta     [api.example.com; path prefix /api]  no match: query parameter v is not equal to \"2\"
  api-canary   [api.example.com; path prefix /api]  no match: header x-canary is not equal to \"yes\"
  api          [api.example.com; path prefix /api]  chosen
  site         [*.example.com; path prefix /]  matches, lost: exact host api.example.com beats wildcard *.example.com
  internal-h3  [any host; path prefix /]  no match: sni is not internal.example.net
  fallback     [any host; path prefix /]  matches, lost: exact host api.example.com beats no host
"
    );
    let out = run(&["GET", "https://www.example.org/DOCS/intro?lang=en"]);
    assert!(out.contains("route: old-docs\n  action: redirect 308\n  answer: 308, location https://docs.example.com/guide/intro?lang=en\n"), "{out}");
    let out = run(&["GET", "https://x.example.com/", "--cookie", "session=abc"]);
    assert!(
        out.contains("  action: split site-v1 95, site-v2 5, sticky by cookie:session\n"),
        "{out}"
    );
    assert!(out.contains("http://127.0.0.1:8087 (disabled)"), "{out}");
    let out = run(&[
        "GET",
        "https://api.example.com/reports/2026/11",
        "--protocol",
        "http1",
    ]);
    assert!(out.contains("route: reports\n"), "{out}");
    let out = run(&["POST", "https://api.example.com/reports/2026/11"]);
    assert!(out.contains("  reports      [api.example.com; path regex /reports/[0-9]{4}/[0-9]{2}]  no match: method is not listed\n"), "{out}");
    let out = run(&["GET", "https://internal.example.net/x", "--protocol", "h3"]);
    assert!(out.contains("route: internal-h3\n"), "{out}");
    let out = run(&["GET", "https://internal.example.net/x", "--protocol", "h2"]);
    assert!(out.contains("route: fallback\n"), "{out}");
    // A bad request on the command line is a clear error.
    let (code, _, err) = spooky(&["route", file, "GET", "/no-host"]);
    assert_eq!(code, 64);
    assert!(err.contains("give a whole URL"), "{err}");
}

#[test]
fn bad_routing_config_is_an_error_with_its_place_and_surprises_are_warnings() {
    let dir = TempDir::new();
    let file = dir.0.join("p.toml");
    let check = |rest: &str| {
        std::fs::write(&file, pipeline_with(r#"["h3"]"#, "", rest)).expect("write");
        spooky(&["check", &file.display().to_string()])
    };
    let up = "[upstreams.a]\nbackends = [ { url = \"http://127.0.0.1:1\" } ]\n";
    let cases = [
        (
            "match = { path_regex = \"([a-z\" }\nupstream = \"a\"",
            "routes[0].match.path_regex",
            "is not a valid regular expression",
        ),
        (
            "split = [ { upstream = \"a\", weight = 0 } ]",
            "routes[0].split",
            "split weights sum to zero",
        ),
        (
            "split = [ { upstream = \"nope\", weight = 1 } ]",
            "routes[0].split.0.upstream",
            "upstream \"nope\" is not defined",
        ),
        (
            "redirect = { status = 200, host = \"x.test\" }",
            "routes[0].redirect.status",
            "is not a redirect status",
        ),
        (
            "upstream = \"a\"\nmatch = { headers = { x = { regex = \"(\" } } }",
            "routes[0].match.headers.x",
            "is not a valid regular expression",
        ),
    ];
    for (route, key, message) in cases {
        let (code, _, err) = check(&format!("[[routes]]\nname = \"r\"\n{route}\n\n{up}"));
        assert_eq!(code, 64, "{route}: {err}");
        assert!(
            err.contains(&format!(": {key}: ")) && err.contains(message),
            "{route}: {err}"
        );
        // file:line:column
        assert!(err.contains(&format!("{}:", file.display())), "{err}");
    }
    let (code, _, err) = check(&format!(
        "[[routes]]\nname = \"r\"\nupstream = \"a\"\n\n{up}balance = \"consistent-hash\"\nhash_key = \"ip\"\n"
    ));
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("upstreams.a.hash_key") && err.contains("\"ip\" is not a request key"),
        "{err}"
    );
    let (code, _, err) = check(&format!(
        "[stages.ingress]\ntrusted_proxies = [\"10.0.0.0/33\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"a\"\nforwarded = \"sometimes\"\n\n{up}"
    ));
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("stages.ingress.trusted_proxies")
            && err.contains("\"10.0.0.0/33\" is not an address block"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].forwarded") && err.contains("append"),
        "{err}"
    );
    // Warnings: valid, exit 0, printed.
    let (code, out, err) = check(&format!(
        "[[routes]]\nname = \"one\"\nmatch = {{ path_prefix = \"/x/\", headers = {{ a = {{ present = true }} }} }}\nupstream = \"a\"\n\n[[routes]]\nname = \"two\"\nmatch = {{ path_prefix = \"/x/\", headers = {{ b = {{ present = true }} }} }}\nupstream = \"a\"\n\n{up}\n[upstreams.unused]\nbackends = [ {{ url = \"http://127.0.0.1:2\" }}, {{ url = \"http://127.0.0.1:2\" }} ]\n"
    ));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("5 warning(s)"), "{out}");
    assert!(
        err.contains("route \"one\" and route \"two\" are equally specific"),
        "{err}"
    );
    assert!(err.contains("\"/x/\" ends with a slash"), "{err}");
    assert!(
        err.contains("upstreams.unused: no route uses this upstream"),
        "{err}"
    );
    assert!(err.contains("the same URL as backends[0]"), "{err}");
}
