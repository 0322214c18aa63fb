//! Balancing end to end, against real (fast and slow) hyper backends: weighted splits and
//! sticky keys, the load-based algorithms, consistent hashing, sticky-cid through client
//! migration, round-robin across workers, and waiting when every backend is full.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::Request;
use support::named::{Client, Named};
use support::proxy::{Proxy, pipeline_with};
use support::{TempDir, TestCert, connect};

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
    let proxy = Proxy::start(&pipeline_with(r#"["h3"]"#, &cert.toml(), &routes));
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
            &cert.toml(),
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
        &cert.toml(),
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
        &cert.toml(),
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
        &cert.toml(),
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
    let toml = pipeline_with(r#"["h3"]"#, &cert.toml(), &routes).replace(
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
    let proxy = Proxy::start(&pipeline_with(r#"["h3"]"#, &cert.toml(), &rest("wait")));
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
    let proxy = Proxy::start(&pipeline_with(r#"["h3"]"#, &cert.toml(), &rest("shed")));
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
