//! The control plane, end to end against the real daemon: whole-config reloads under HTTP/3
//! and HTTP/2 load, invalid and conflicting reloads, listeners added and removed, the
//! membership API under load, `/status`, `/config`, `/ready` and admin auth.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::backend::Backend;
use support::named::{Client, Named};
use support::proxy::{Proxy, app_upstream, pipeline_with};
use support::{TempDir, TestCert};

const TOKEN: &str = "control-plane-token-0123456789";

fn token_file(dir: &TempDir) -> String {
    let f = dir.0.join("token");
    std::fs::write(&f, TOKEN).expect("token");
    format!("token_file = \"{}\"\n", f.display())
}

/// A pipeline serving h3 and h2, its admin with the token, and `rest`.
fn config(dir: &TempDir, cert: &TestCert, rest: &str) -> String {
    pipeline_with(
        r#"["h3", "h2"]"#,
        &cert.toml(),
        &format!("{}\n{rest}", token_file(dir)),
    )
}

fn upstream(urls: &[String]) -> String {
    let list: Vec<String> = urls
        .iter()
        .map(|u| format!("{{ url = \"{u}\" }}"))
        .collect();
    format!("[upstreams.app]\nbackends = [ {} ]\n", list.join(", "))
}

/// Requests in a loop on one connection until `stop`, counting answers and failures.
struct Load {
    ok: Arc<AtomicUsize>,
    /// Answers per client.
    each: Vec<Arc<AtomicUsize>>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(proxy: &Proxy, cert: &TestCert, protocols: &[&str], path: &str) -> Load {
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let mut each = Vec::new();
        for proto in protocols {
            let mut client = Client::open(proto, proxy, cert).await;
            let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
            let mine = Arc::new(AtomicUsize::new(0));
            each.push(mine.clone());
            let url = format!("https://localhost{path}");
            tasks.push(tokio::spawn(async move {
                // Bounded: at most 100 000 requests, and the test stops it far sooner.
                for _ in 0..100_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let got = client.send("GET", &url, &[]).await;
                    if got.status == 200 {
                        ok.fetch_add(1, Ordering::SeqCst);
                        mine.fetch_add(1, Ordering::SeqCst);
                    } else {
                        eprintln!("failed: {} {}", got.status, got.body);
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
        Load {
            ok,
            each,
            failed,
            stop,
            tasks,
        }
    }

    /// Waits (bounded: 10 s) until `n` more requests were answered.
    async fn progress(&self, n: usize) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        for _ in 0..1000 {
            if self.ok.load(Ordering::SeqCst) >= target {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the load made no progress");
    }

    /// Waits (bounded: 10 s) until every client finished two more requests: whatever one
    /// had in flight when this was called has ended, and one more started after it.
    async fn settle(&self) {
        let targets: Vec<usize> = self
            .each
            .iter()
            .map(|c| c.load(Ordering::SeqCst) + 2)
            .collect();
        for _ in 0..1000 {
            if self
                .each
                .iter()
                .zip(&targets)
                .all(|(c, t)| c.load(Ordering::SeqCst) >= *t)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the load made no progress");
    }

    /// Stops and returns (answered, failed); a client task that panicked fails the test.
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("a load client failed (connection error)");
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Polls `/status` (bounded: 10 s) until no swapped-out generation is left.
async fn until_old_generations_dropped(proxy: &Proxy) {
    for _ in 0..500 {
        let (_, body) = proxy.admin_call("GET", "/status", Some(TOKEN), "").await;
        if json(&body)["draining_generations"]
            .as_array()
            .is_some_and(Vec::is_empty)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("old generations were never dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_h3_and_h2_load_fail_nothing_and_drop_old_generations() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let (a, b) = (
        Named::start("a", Duration::ZERO).await,
        Named::start("b", Duration::ZERO).await,
    );
    // Generation i: a route named for it, the backend alternating, stage bounds changing.
    let nth = |i: usize| {
        let backend = if i.is_multiple_of(2) {
            a.url()
        } else {
            b.url()
        };
        config(
            &dir,
            &cert,
            &format!(
                "[stages.dispatch]\nconcurrency = {}\n\n[[routes]]\nname = \"r{i}\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n\n{}",
                100 + i,
                upstream(&[backend])
            ),
        )
    };
    let proxy = Proxy::start(&nth(0));
    let load = Load::start(&proxy, &cert, &["h3", "h2"], "/load").await;
    load.progress(10).await;
    for i in 1..=20 {
        std::fs::write(&proxy.file, nth(i)).expect("rewrite");
        let (status, body) = proxy
            .admin_call("POST", "/config/reload", Some(TOKEN), "")
            .await;
        assert_eq!(status, 200, "reload {i}: {body}");
        let r = json(&body);
        assert_eq!(r["generation"], i as u64 + 1, "{body}");
        assert_eq!(r["diff"]["routes"]["added"][0], format!("r{i}"), "{body}");
        assert_eq!(r["diff"]["routes"]["removed"][0], format!("r{}", i - 1));
        assert_eq!(r["diff"]["stages"][0], "dispatch");
        assert_eq!(
            r["diff"]["backends"]["added"].as_array().map(Vec::len),
            Some(1)
        );
        load.progress(4).await;
    }
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(ok >= 90, "{ok}");

    // Generation 21 serves: backend a only, its stage bound in /config.
    let seen_b = b.seen();
    let mut client = Client::open("h2", &proxy, &cert).await;
    for _ in 0..5 {
        let got = client.send("GET", "https://localhost/after", &[]).await;
        assert_eq!(got.status, 200);
        assert!(got.body.starts_with("a "), "{}", got.body);
    }
    assert_eq!(b.seen(), seen_b, "the old backend got nothing new");
    let (_, cfg) = proxy.admin_call("GET", "/config", Some(TOKEN), "").await;
    let cfg = json(&cfg);
    assert_eq!(cfg["generation"], 21);
    assert_eq!(cfg["config"]["stages"]["dispatch"]["concurrency"], 120);
    assert_eq!(proxy.metric("spooky_config_generation", &[]).await, 21.0);
    assert_eq!(
        proxy
            .metric("spooky_config_reloads_total", &[("outcome", "ok")])
            .await,
        20.0
    );
    // Every old generation let go of everything and was dropped.
    until_old_generations_dropped(&proxy).await;
    proxy.assert_caps_zero().await;

    // An invalid file changes nothing and says everything that is wrong, where.
    std::fs::write(
        &proxy.file,
        nth(22).replace("upstream = \"app\"", "upstream = \"nope\"")
            + "\n[stages.queue]\nbogus = 1\n",
    )
    .expect("rewrite");
    let (status, body) = proxy
        .admin_call("POST", "/config/reload", Some(TOKEN), "")
        .await;
    assert_eq!(status, 400, "{body}");
    let errors = json(&body)["errors"].to_string();
    assert!(errors.contains("routes[0].upstream"), "{errors}");
    assert!(errors.contains("stages.queue.bogus"), "{errors}");
    assert!(errors.contains("pipeline.toml:"), "file:line: {errors}");
    let got = client.send("GET", "https://localhost/still", &[]).await;
    assert_eq!((got.status, &got.body[..2]), (200, "a "));
    assert_eq!(
        proxy
            .metric("spooky_config_reloads_total", &[("outcome", "invalid")])
            .await,
        1.0
    );
    assert_eq!(proxy.metric("spooky_config_generation", &[]).await, 21.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_routes_and_listeners_come_and_go() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let a = Named::start("a", Duration::ZERO).await;
    let route = |body: &str| {
        format!(
            "[[routes]]\nname = \"hello\"\nmatch = {{ path_prefix = \"/hello\" }}\nrespond = {{ status = 200, body = \"{body}\" }}\n\n[[routes]]\nname = \"app\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n\n{}",
            upstream(&[a.url()])
        )
    };
    let proxy = Proxy::start(&config(&dir, &cert, &route("one")));
    let mut client = Client::open("h3", &proxy, &cert).await;
    assert_eq!(
        client
            .send("GET", "https://localhost/hello", &[])
            .await
            .body,
        "one"
    );

    // SIGHUP: the whole file, on the same open connection.
    let second = "\n[[listeners]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\nprotocols = [\"http1\"]\ntls = \"off\"\n";
    std::fs::write(&proxy.file, config(&dir, &cert, &route("two")) + second).expect("rewrite");
    proxy.sighup();
    proxy
        .wait_metric("spooky_config_generation", &[], |g| g == 2.0)
        .await;
    assert_eq!(
        client
            .send("GET", "https://localhost/hello", &[])
            .await
            .body,
        "two"
    );

    // The added listener is bound and serves; /status names its address.
    let (_, status) = proxy.admin_call("GET", "/status", Some(TOKEN), "").await;
    let status = json(&status);
    let plain = status["listeners"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == "plain"))
        .and_then(|l| l["addr"].as_str())
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .expect("the new listener in /status");
    let mut sender = support::tcp::Sender::plain(plain).await;
    let resp = sender
        .send(support::tcp::get("http://localhost/hello"))
        .await;
    assert_eq!(resp.status(), 200);

    // A listener address that is taken: 409, nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let conflict = second.replace(
        "127.0.0.1:0",
        &taken.local_addr().expect("addr").to_string(),
    );
    std::fs::write(
        &proxy.file,
        config(&dir, &cert, &route("three")) + &conflict,
    )
    .expect("rewrite");
    let (code, body) = proxy
        .admin_call("POST", "/config/reload", Some(TOKEN), "")
        .await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("cannot bind TCP"), "{body}");
    assert_eq!(
        client
            .send("GET", "https://localhost/hello", &[])
            .await
            .body,
        "two"
    );

    // Removed: it stops accepting; the h3 connection stays up through all of it.
    std::fs::write(&proxy.file, config(&dir, &cert, &route("four"))).expect("rewrite");
    let (code, body) = proxy
        .admin_call("POST", "/config/reload", Some(TOKEN), "")
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["diff"]["listeners"]["removed"][0], "plain");
    let mut refused = false;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(plain).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the removed listener still accepts");
    assert_eq!(
        client
            .send("GET", "https://localhost/hello", &[])
            .await
            .body,
        "four"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_under_load_fail_nothing_and_drain_finishes_in_flight() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let (a, b) = (
        Named::start("a", Duration::ZERO).await,
        Named::start("b", Duration::ZERO).await,
    );
    let held = Backend::start().await;
    let rest = app_upstream(&a.url());
    let proxy = Proxy::start(&config(&dir, &cert, &rest));
    let load = Load::start(&proxy, &cert, &["h3", "h2"], "/load").await;
    load.progress(10).await;
    let call = |method: &'static str, path: String, body: String| {
        let proxy = &proxy;
        async move { proxy.admin_call(method, &path, Some(TOKEN), &body).await }
    };

    // Add b: it gets traffic.
    let (code, body) = call(
        "POST",
        "/upstreams/app/backends".into(),
        format!("{{\"url\": \"{}\", \"weight\": 2}}", b.url()),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let b_id = b.url().trim_start_matches("http://").to_string();
    for _ in 0..500 {
        if b.seen() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(b.seen() > 0, "the added backend got no traffic");
    // Re-weight it.
    let (code, body) = call(
        "PATCH",
        format!("/upstreams/app/backends/{b_id}"),
        "{\"weight\": 5}".into(),
    )
    .await;
    assert_eq!(code, 200, "{body}");

    // Add the holding backend under an id, and hold one exchange there.
    let (code, body) = call(
        "POST",
        "/upstreams/app/backends".into(),
        format!("{{\"url\": \"{}\", \"id\": \"slow\"}}", held.url()),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let mut holder = Client::open("h2", &proxy, &cert).await;
    let in_flight = tokio::spawn(async move {
        // Round robin reaches it within a few requests; the others answer at once.
        for _ in 0..50 {
            let got = holder.send("GET", "https://localhost/hold/x", &[]).await;
            if got.body.starts_with("released") {
                return got;
            }
        }
        panic!("never reached the holding backend");
    });
    held.state.wait_held(1).await;
    // Drain it: no new exchanges, the one in flight finishes.
    let (code, body) = call(
        "PATCH",
        "/upstreams/app/backends/slow".into(),
        "{\"drain\": true}".into(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (_, ups) = call("GET", "/upstreams".into(), String::new()).await;
    assert!(ups.contains("\"drained\""), "{ups}");
    // Exchanges that chose it before the change may still arrive; none after.
    load.settle().await;
    let seen = held.state.seen.load(Ordering::SeqCst);
    load.progress(20).await;
    assert_eq!(
        held.state.seen.load(Ordering::SeqCst),
        seen,
        "a drained backend got a new exchange"
    );
    held.state.release(1);
    let got = in_flight.await.expect("in-flight request");
    assert_eq!((got.status, got.body.as_str()), (200, "released /hold/x\n"));

    // Remove b: nothing new reaches it.
    let (code, body) = call(
        "DELETE",
        format!("/upstreams/app/backends/{b_id}"),
        String::new(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    load.settle().await;
    let after = b.seen();
    load.progress(20).await;
    assert_eq!(b.seen(), after, "a removed backend got a new exchange");

    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    let (_, status) = call("GET", "/status".into(), String::new()).await;
    assert_eq!(
        json(&status)["overlay"].as_array().map(Vec::len),
        Some(5),
        "{status}"
    );

    // Bad input changes nothing.
    let generation = json(&status)["generation"].clone();
    for (method, path, body, want) in [
        ("POST", "/upstreams/app/backends", "{not json", 400),
        (
            "POST",
            "/upstreams/app/backends",
            "{\"url\": \"http://127.0.0.1:9\", \"colour\": 1}",
            400,
        ),
        (
            "POST",
            "/upstreams/app/backends",
            "{\"url\": \"ftp://127.0.0.1:9\"}",
            400,
        ),
        (
            "POST",
            "/upstreams/app/backends",
            "{\"url\": \"http://127.0.0.1:9\", \"weight\": 0}",
            400,
        ),
        (
            "POST",
            "/upstreams/app/backends",
            "{\"url\": \"http://127.0.0.1:9\", \"weight\": 20000}",
            400,
        ),
        (
            "POST",
            "/upstreams/nope/backends",
            "{\"url\": \"http://127.0.0.1:9\"}",
            404,
        ),
        (
            "PATCH",
            "/upstreams/app/backends/nope",
            "{\"weight\": 2}",
            404,
        ),
        ("PATCH", "/upstreams/app/backends/slow", "{}", 400),
        ("DELETE", "/upstreams/nope/backends/slow", "", 404),
    ] {
        let (code, answer) = call(method, path.into(), body.into()).await;
        assert_eq!(code, want, "{method} {path} {body}: {answer}");
        assert!(json(&answer)["error"].is_string(), "{answer}");
    }
    let (_, status) = call("GET", "/status".into(), String::new()).await;
    assert_eq!(json(&status)["generation"], generation);

    // A file reload serves the file as written: the overlay is gone.
    let (code, body) = call("POST", "/config/reload".into(), String::new()).await;
    assert_eq!(code, 200, "{body}");
    let (_, ups) = call("GET", "/upstreams/app/backends".into(), String::new()).await;
    assert_eq!(json(&ups).as_array().map(Vec::len), Some(1), "{ups}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_endpoints_need_the_token_and_ready_needs_a_backend() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let a = Named::start("a", Duration::ZERO).await;
    let rest = app_upstream(&a.url());
    let proxy = Proxy::start(&config(&dir, &cert, &rest));
    for path in ["/health", "/ready", "/metrics"] {
        assert_eq!(
            proxy.admin_call("GET", path, None, "").await.0,
            200,
            "{path}"
        );
    }
    for (method, path) in [
        ("GET", "/status"),
        ("GET", "/config"),
        ("GET", "/upstreams"),
        ("GET", "/upstreams/app/backends"),
        ("POST", "/config/reload"),
        ("POST", "/certs/reload"),
        ("POST", "/restart"),
        ("POST", "/upstreams/app/backends"),
        ("PATCH", "/upstreams/app/backends/x"),
        ("DELETE", "/upstreams/app/backends/x"),
    ] {
        assert_eq!(
            proxy.admin_call(method, path, None, "").await.0,
            401,
            "{method} {path} without a token"
        );
        let wrong = proxy
            .admin_call(method, path, Some("control-plane-token-0123456780"), "")
            .await
            .0;
        assert_eq!(wrong, 401, "{method} {path} with a wrong token");
    }

    // /status and /config: the effective configuration, defaults filled in.
    let (code, status) = proxy.admin_call("GET", "/status", Some(TOKEN), "").await;
    assert_eq!(code, 200);
    let status = json(&status);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["generation"], 1);
    assert!(
        status["stages"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["stage"] == "dispatch"))
    );
    assert_eq!(status["upstreams"][0]["backends"][0]["state"], "up");
    // Stage counters and, from the second /status on, their rates.
    let mut client = Client::open("h2", &proxy, &cert).await;
    for _ in 0..3 {
        assert_eq!(
            client.send("GET", "https://localhost/x", &[]).await.status,
            200
        );
    }
    let (_, again) = proxy.admin_call("GET", "/status", Some(TOKEN), "").await;
    let again = json(&again);
    let ingress = &again["stages"][0];
    assert_eq!(ingress["stage"], "ingress");
    assert!(
        ingress["received"].as_f64().is_some_and(|n| n >= 3.0),
        "{ingress}"
    );
    assert!(
        ingress["per_second"]["received"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{ingress}"
    );
    assert!(
        status["stages"][0]["per_second"].is_null(),
        "no rate before a previous /status"
    );
    let cert = &status["listeners"][0]["certificates"][0];
    assert!(cert["names"].to_string().contains("localhost"), "{cert}");
    assert!(cert["days_left"].as_i64().is_some_and(|d| d > 0), "{cert}");
    let (_, cfg) = proxy.admin_call("GET", "/config", Some(TOKEN), "").await;
    let cfg = json(&cfg);
    assert_eq!(
        cfg["config"]["stages"]["dispatch"]["queue"], 256,
        "a default"
    );
    assert_eq!(cfg["config"]["upstreams"]["app"]["balance"], "round-robin");
    assert!(!cfg.to_string().contains(TOKEN), "the token is never shown");

    // /ready: 503 while the upstream has no backend in balancing.
    let id = a.url().trim_start_matches("http://").to_string();
    let path = format!("/upstreams/app/backends/{id}");
    assert_eq!(
        proxy
            .admin_call("PATCH", &path, Some(TOKEN), "{\"enabled\": false}")
            .await
            .0,
        200
    );
    let (code, body) = proxy.admin_get("/ready").await;
    assert_eq!(
        (code, body.as_str()),
        (503, "no backend in balancing: app\n")
    );
    assert_eq!(
        proxy
            .admin_call("PATCH", &path, Some(TOKEN), "{\"enabled\": true}")
            .await
            .0,
        200
    );
    assert_eq!(proxy.admin_get("/ready").await.0, 200);
}
