//! Restart with socket inheritance, spawning the real binary: under HTTP/3, HTTP/2 and
//! HTTP/1.1 load from clients that honour GOAWAY (and connection: close), no request fails
//! and none is processed twice; a request streaming its body on an old QUIC connection keeps
//! going after the new process took the sockets (its packets are steered to the old process
//! by connection ID); the old process exits 0 once drained.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes};
use serde_json::Value;
use support::backend::Backend;
use support::named::Named;
use support::proxy::{Proxy, pipeline_with};
use support::tcp::{Sender, get};
use support::{TempDir, TestCert, connect};

const TOKEN: &str = "restart-token-0123456789abcdef";

/// Stops a process by pid when dropped (the new process is not the test's child).
struct Kill(u32);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.to_string()])
            .status();
    }
}

/// Counts of one load client.
#[derive(Default)]
struct Counts {
    ok: AtomicUsize,
    failed: AtomicUsize,
    /// Requests sent again on a new connection after the old one refused or closed.
    retried: AtomicUsize,
}

/// GET /load in a loop until `stop`, reconnecting when the connection goes away (GOAWAY,
/// `connection: close`, the old process exiting), as a well-behaved client does.
async fn load(
    proto: &'static str,
    proxy: Arc<ProxyAddrs>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    enum Conn {
        H3(spooky::h3client::H3Conn),
        Tcp(Sender),
    }
    let open = |proxy: Arc<ProxyAddrs>| async move {
        match proto {
            "h3" => spooky::h3client::H3Client::new(spooky::h3client::Trust::Roots(vec![
                proxy.der.clone(),
            ]))
            .ok()?
            .connect(proxy.addr, "localhost")
            .await
            .ok()
            .map(Conn::H3),
            alpn => Sender::connect_with(
                proxy.addr,
                support::tcp::client_config(
                    std::slice::from_ref(&proxy.der),
                    &[if alpn == "h2" { b"h2" } else { b"http/1.1" }],
                ),
            )
            .await
            .ok()
            .map(Conn::Tcp),
        }
    };
    let mut conn = None;
    let mut broken = 0;
    // Bounded: at most 50 000 requests; the test stops it far sooner.
    for _ in 0..50_000 {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if conn.is_none() {
            conn = open(proxy.clone()).await;
            if conn.is_none() {
                broken += 1;
                assert!(broken < 50, "{proto}: cannot connect");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        }
        let status = match conn.as_mut() {
            Some(Conn::H3(c)) => c
                .get("https://localhost/load")
                .await
                .map(|r| r.status.as_u16())
                .ok(),
            Some(Conn::Tcp(s)) => s
                .try_send(get("https://localhost/load"))
                .await
                .ok()
                .map(|r| r.status().as_u16()),
            None => None,
        };
        match status {
            Some(200) => {
                broken = 0;
                counts.ok.fetch_add(1, Ordering::SeqCst);
            }
            Some(other) => {
                eprintln!("{proto}: status {other}");
                counts.failed.fetch_add(1, Ordering::SeqCst);
            }
            None => {
                // The connection went away: a new one, and the request again.
                conn = None;
                counts.retried.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// What the load clients need of the proxy.
struct ProxyAddrs {
    addr: std::net::SocketAddr,
    der: rustls::pki_types::CertificateDer<'static>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_under_load_fails_no_request_and_old_quic_connections_finish() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let app = Named::start("app", Duration::ZERO).await;
    let echo = Backend::start().await;
    let token = dir.0.join("token");
    std::fs::write(&token, TOKEN).expect("token");
    let rest = format!(
        "token_file = \"{}\"\n\n[[routes]]\nname = \"echo\"\nmatch = {{ path_prefix = \"/echo\" }}\nupstream = \"echo\"\n\n[[routes]]\nname = \"app\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n\n[upstreams.app]\nbackends = [ {{ url = \"{}\" }} ]\n\n[upstreams.echo]\nbackends = [ {{ url = \"{}\" }} ]\n",
        token.display(),
        app.url(),
        echo.url()
    );
    let mut proxy = Proxy::start(&pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &cert.toml(),
        &rest,
    ));
    let old_pid = proxy.pid();

    // An old QUIC connection streaming a request body through the echo backend.
    let old = connect(&cert.client(), &proxy).await;
    let mut send = old.send.clone();
    let req = http::Request::post("https://localhost/echo")
        .body(())
        .expect("req");
    let mut stream = send.send_request(req).await.expect("send_request");
    stream
        .send_data(Bytes::from_static(b"before "))
        .await
        .expect("data");
    let head = stream.recv_response().await.expect("head");
    assert_eq!(head.status(), 200);
    let mut echoed = Vec::new();
    while echoed.len() < 7 {
        let mut chunk = stream.recv_data().await.expect("echo").expect("some echo");
        echoed.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }

    // Load on every protocol.
    let stop = Arc::new(AtomicBool::new(false));
    let addrs = Arc::new(ProxyAddrs {
        addr: proxy.tcp_addr.expect("tcp"),
        der: cert.der.clone(),
    });
    let mut tasks = Vec::new();
    let mut all = Vec::new();
    for proto in ["h3", "h2", "http1"] {
        let counts = Arc::new(Counts::default());
        all.push((proto, counts.clone()));
        tasks.push(tokio::spawn(load(
            proto,
            addrs.clone(),
            stop.clone(),
            counts,
        )));
    }
    let progress = |all: &Vec<(&str, Arc<Counts>)>| {
        all.iter()
            .map(|(_, c)| c.ok.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    };
    let wait_progress = |all: &Vec<(&'static str, Arc<Counts>)>, n: usize| {
        let base = progress(all);
        let all: Vec<Arc<Counts>> = all.iter().map(|(_, c)| c.clone()).collect();
        async move {
            for _ in 0..1000 {
                if all
                    .iter()
                    .zip(&base)
                    .all(|(c, b)| c.ok.load(Ordering::SeqCst) >= b + n)
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the load made no progress");
        }
    };
    wait_progress(&all, 10).await;

    // Restart.
    let (code, body) = proxy.admin_call("POST", "/restart", Some(TOKEN), "").await;
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("json");
    let new_pid = answer["pid"].as_u64().expect("pid") as u32;
    let _kill = Kill(new_pid);
    assert_ne!(new_pid, old_pid);
    // The admin listener is the new process's now.
    for _ in 0..500 {
        let (_, status) = proxy.admin_call("GET", "/status", Some(TOKEN), "").await;
        if serde_json::from_str::<Value>(&status).is_ok_and(|s| s["pid"] == new_pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_progress(&all, 20).await;

    // The old connection's request body goes on: its packets reach the old process.
    stream
        .send_data(Bytes::from_static(b"after"))
        .await
        .expect("data after the restart");
    stream.finish().await.expect("finish");
    while let Some(mut chunk) = stream.recv_data().await.expect("echo after the restart") {
        echoed.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    assert_eq!(&echoed[..], b"before after");

    // The old process drained and exited 0; the new one serves on.
    let status = tokio::task::spawn_blocking(move || proxy.wait_exit())
        .await
        .expect("join");
    assert_eq!(status.code(), Some(0));
    wait_progress(&all, 20).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("load client");
    }
    let mut ok = 0;
    for (proto, c) in &all {
        let failed = c.failed.load(Ordering::SeqCst);
        assert_eq!(failed, 0, "{proto}: {failed} requests failed");
        ok += c.ok.load(Ordering::SeqCst);
        eprintln!(
            "{proto}: {} ok, {} sent again on a new connection",
            c.ok.load(Ordering::SeqCst),
            c.retried.load(Ordering::SeqCst)
        );
    }
    // Every request answered was processed once: none was lost after the backend saw it,
    // none reached it twice.
    assert_eq!(
        app.seen(),
        ok,
        "requests answered vs requests the backend saw"
    );
}
