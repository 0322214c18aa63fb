//! `[pipeline] workers`: the daemon serves each listener from several single-threaded
//! runtimes, each with its own UDP and TCP socket on the same address (`SO_REUSEPORT`).
//! Connections of both kinds reach every worker, every one of them is served end to end
//! through a backend, and a listener's `max_connections` stays one limit for the whole process,
//! not one per worker.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::backend::Backend;
use support::proxy::{Proxy, hello_and_app, pipeline_with};
use support::tcp::{Sender, get};
use support::{TempDir, TestCert, connect, url};
use tokio::io::AsyncReadExt;

const WORKER_CONNECTIONS: &str = "spooky_worker_connections_total";

fn start(cert: &TestCert, backend: &Backend, listener_extra: &str) -> Proxy {
    let toml = pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &format!("{}\n{listener_extra}", cert.toml()),
        &hello_and_app(&backend.url()),
    )
    .replacen("[pipeline]\n", "[pipeline]\nworkers = 2\n", 1);
    Proxy::start(&toml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_of_both_kinds_are_spread_over_the_workers_and_served() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let proxy = start(&cert, &backend, "");
    let tcp = proxy.tcp_addr.expect("tcp");
    const TCP: usize = 32;
    const QUIC: usize = 16;
    for i in 0..TCP {
        let alpn: &[u8] = if i % 2 == 0 { b"h2" } else { b"http/1.1" };
        let mut s = Sender::connect(tcp, std::slice::from_ref(&cert.der), alpn).await;
        let resp = s.send(get("/x")).await;
        assert_eq!(resp.status(), StatusCode::OK, "TCP connection {i}");
    }
    let client = cert.client();
    for i in 0..QUIC {
        let conn = connect(&client, &proxy).await;
        let resp = conn.get(&url("/x")).await.expect("h3 get");
        assert_eq!(resp.status, StatusCode::OK, "QUIC connection {i}");
        conn.close();
    }
    let w0 = proxy.metric(WORKER_CONNECTIONS, &[("worker", "0")]).await;
    let w1 = proxy.metric(WORKER_CONNECTIONS, &[("worker", "1")]).await;
    assert_eq!(
        w0 + w1,
        (TCP + QUIC) as f64,
        "every connection counted once"
    );
    // The kernel spreads by address 4-tuple: 48 connections all on one worker would be a
    // 1 in 2^47 chance, or a worker that is not serving.
    assert!(w0 > 0.0 && w1 > 0.0, "both workers served: {w0} and {w1}");
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_is_one_limit_across_workers() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let proxy = start(&cert, &backend, "max_connections = 6");
    let tcp = proxy.tcp_addr.expect("tcp");
    // Six held connections, spread over both workers, take every slot: a per-worker limit
    // would let the seventh in.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(Sender::connect(tcp, std::slice::from_ref(&cert.der), b"h2").await);
    }
    for s in &mut held {
        assert_eq!(s.send(get("/x")).await.status(), StatusCode::OK);
    }
    let mut extra = tokio::net::TcpStream::connect(tcp).await.expect("tcp");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("the seventh connection is closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
    // A slot given back serves the next client, whichever worker accepts it.
    drop(held.pop());
    let mut next = None;
    let cfg = || support::tcp::client_config(std::slice::from_ref(&cert.der), &[b"h2"]);
    for _ in 0..50 {
        if let Ok(mut s) = Sender::connect_with(tcp, cfg()).await
            && let Ok(resp) = s.try_send(get("/x")).await
        {
            next = Some(resp.status());
            break;
        }
        // The server lets go of the slot when it sees the close; nothing tells the client.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(next, Some(StatusCode::OK), "a freed slot is taken again");
}
