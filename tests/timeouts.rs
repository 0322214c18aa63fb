//! Every kind of timeout against the fault backend, each with its own status and reason.

mod support;

use std::time::Duration;

use support::fault::{Fault, Mode};
use support::proxy::Proxy;
use support::{TempDir, TestCert, connect, url};

async fn mute_listener() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_timeout_answers_with_its_own_status_and_reason() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let hang = Fault::start("hang", Mode::Hang).await;
    let slow = Fault::start("slow", Mode::slow(Duration::from_secs(5))).await;
    let stall = Fault::start("stall", Mode::StallBody).await;
    let echo = Fault::start("echo", Mode::OK).await;
    let (mute, _mute) = mute_listener().await;
    let route = |name: &str, upstream: &str, extra: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"/{name}\" }}\nupstream = \"{upstream}\"\n{extra}\n\n"
        )
    };
    let upstream = |name: &str, url: &str| {
        format!("[upstreams.{name}]\nbackends = [ {{ url = \"{url}\" }} ]\n\n")
    };
    let rest = [
        "[stages.dispatch]\nconnect_timeout = \"300ms\"\n\n".to_string(),
        route("connect", "mute", ""),
        route("head", "hang", "timeouts = { response_head = \"200ms\" }"),
        route("total", "slow", "timeouts = { total = \"300ms\" }"),
        route("cut", "stall", "timeouts = { total = \"300ms\" }"),
        route(
            "idle",
            "stall",
            "timeouts = { response_body_idle = \"200ms\" }",
        ),
        route(
            "upload",
            "echo",
            "timeouts = { request_body_idle = \"200ms\" }",
        ),
        upstream("mute", &format!("https://{mute}")),
        upstream("hang", &hang.url()),
        upstream("slow", &slow.url()),
        upstream("stall", &stall.url()),
        upstream("echo", &echo.url()),
    ]
    .concat();
    let proxy = Proxy::start(&support::proxy::pipeline_with(
        r#"["h3", "http1"]"#,
        &cert.toml(),
        &rest,
    ));
    let conn = connect(&cert.client(), &proxy).await;
    let get = |path: &'static str| {
        let conn = &conn;
        async move {
            tokio::time::timeout(Duration::from_secs(10), conn.get(&url(path)))
                .await
                .expect("answered in time")
        }
    };
    let status_of = |r: &spooky::h3client::Response| r.status.as_u16();
    // TLS to the backend never completes: connect timeout, 504 (the stage-wide policy would
    // retry it, but select has no other backend). Counted where it happened: dispatch.
    assert_eq!(status_of(&get("/connect").await.expect("response")), 504);
    assert_eq!(proxy.rejected("dispatch", "connect_timeout").await, 1.0);
    assert_eq!(proxy.rejected("select", "connect_timeout").await, 0.0);
    // No head within the route's response_head: 504 upstream_timeout.
    assert_eq!(status_of(&get("/head").await.expect("response")), 504);
    assert_eq!(proxy.rejected("dispatch", "upstream_timeout").await, 1.0);
    assert_eq!(proxy.rejected("hedge-retry", "upstream_timeout").await, 0.0);
    // The route's total passes before the head: 504 total_timeout.
    assert_eq!(status_of(&get("/total").await.expect("response")), 504);
    assert_eq!(proxy.rejected("dispatch", "total_timeout").await, 1.0);
    // The total passes while the body streams: the head came, the body is cut.
    let cut = get("/cut").await;
    assert!(
        cut.is_err(),
        "a cut body is not a complete response: {cut:?}"
    );
    proxy
        .wait_metric(
            "spooky_response_body_cut_total",
            &[("reason", "total")],
            |v| v == 1.0,
        )
        .await;
    // The backend pauses its body longer than response_body_idle: cut.
    let idle = get("/idle").await;
    assert!(idle.is_err(), "{idle:?}");
    proxy
        .wait_metric(
            "spooky_response_body_cut_total",
            &[("reason", "idle")],
            |v| v == 1.0,
        )
        .await;
    // A client that pauses its request body past request_body_idle: 408 (HTTP/1.1 closes).
    let tcp = proxy.tcp_addr.expect("tcp listener");
    let (mut tls, _) = support::tcp::tls_connect(
        tcp,
        "localhost",
        support::tcp::client_config(std::slice::from_ref(&cert.der), &[b"http/1.1"]),
    )
    .await
    .expect("tls");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(
        b"POST /upload HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\nonly ten b",
    )
    .await
    .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .ok();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_body_timeout"), "{answer}");
    assert_eq!(
        echo.received(),
        1,
        "the backend had the request until the client stalled"
    );
    proxy.assert_caps_zero().await;
}
