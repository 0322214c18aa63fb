//! 0-RTT over HTTP/3 (`[listeners.tls] early_data = true`, RFC 8470): a resumed client sends
//! requests in early data; GET is processed at once and reaches the backend with
//! `Early-Data: 1`, a POST (or a GET declaring a body) waits for the handshake (and so goes
//! without it), a route with `early_data = true` takes its POST early too.
//!
//! The handshake would complete on loopback before anything could be observed, so the
//! resumed connection goes through a UDP relay that adds latency: the server's packets reach
//! the client 200 ms late, and the client's packets sent after the server's first reply (its
//! handshake `Finished` among them) reach the server a second late. The requests, sent at once
//! in 0-RTT packets before any reply, reach the server without delay.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::proxy::{Proxy, pipeline_with};
use support::{TempDir, TestCert, connect, url};
use tokio::net::UdpSocket;
use tokio::time::Instant;

type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// An HTTP/1.1 backend that records (method, path, `Early-Data`) of each request.
async fn backend() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    async move {
                        let early = req
                            .headers()
                            .get("early-data")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        s.lock().expect("seen").push((
                            req.method().to_string(),
                            req.uri().path().to_string(),
                            early,
                        ));
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A UDP relay to `to` adding latency as the module's comment says; returns its address.
async fn slow_relay(to: SocketAddr) -> SocketAddr {
    const DOWN: Duration = Duration::from_millis(200);
    const UP_AFTER_REPLY: Duration = Duration::from_millis(1000);
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    back.connect(to).await.expect("connect");
    let addr = front.local_addr().expect("addr");
    let replied = Arc::new(AtomicBool::new(false));
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    // Each direction: datagrams in order, each sent at its due time.
    let (up_tx, mut up_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let (down_tx, mut down_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let (f, r, c) = (front.clone(), replied.clone(), client.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *c.lock().expect("client") = Some(from);
            let delay = if r.load(Ordering::SeqCst) {
                UP_AFTER_REPLY
            } else {
                Duration::ZERO
            };
            if up_tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    });
    let b = back.clone();
    tokio::spawn(async move {
        while let Some((at, d)) = up_rx.recv().await {
            tokio::time::sleep_until(at).await;
            let _ = b.send(&d).await;
        }
    });
    let (b, r) = (back.clone(), replied.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = b.recv(&mut buf).await {
            r.store(true, Ordering::SeqCst);
            if down_tx
                .send((Instant::now() + DOWN, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Some((at, d)) = down_rx.recv().await {
            tokio::time::sleep_until(at).await;
            let to = *client.lock().expect("client");
            if let Some(to) = to {
                let _ = front.send_to(&d, to).await;
            }
        }
    });
    addr
}

fn routes(backend: SocketAddr) -> String {
    format!(
        r#"
[[routes]]
name = "replayable"
match = {{ path_prefix = "/replayable" }}
upstream = "app"
early_data = true

[[routes]]
name = "app"
match = {{ path_prefix = "/" }}
upstream = "app"

[upstreams.app]
backends = [ {{ url = "http://{backend}" }} ]
"#
    )
}

/// A whole-handshake connection and one request: the client keeps a session ticket.
async fn warm_up(client: &spooky::h3client::H3Client, proxy: &Proxy) {
    let conn = connect(client, proxy).await;
    let r = conn.get(&url("/warm")).await.expect("GET");
    assert_eq!(r.status, StatusCode::OK);
    conn.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_get_is_served_early_and_post_waits_for_the_handshake() {
    let (backend, seen) = backend().await;
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\", early_data = true }}",
        cert.cert_path.display(),
        cert.key_path.display()
    );
    let proxy = Proxy::start(&pipeline_with(r#"["h3"]"#, &tls, &routes(backend)));
    let client = cert.client();
    // A first connection leaves the client a session ticket.
    warm_up(&client, &proxy).await;
    let relay = slow_relay(proxy.h3_addr).await;
    let (conn, accepted) = client
        .connect_early(relay, "localhost")
        .await
        .expect("a resumed 0-RTT connection");
    let conn = Arc::new(conn);
    let send = |method: &'static str, path: &'static str, body: Option<Bytes>| {
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut req = Request::builder().method(method).uri(url(path));
            if let Some(b) = &body {
                req = req.header("content-length", b.len());
            }
            let req = req.body(()).expect("request");
            match conn.request(req, body).await {
                Ok(r) => r.status,
                Err(e) => panic!("{method} {path}: {e:?}"),
            }
        })
    };
    let calls = [
        send("GET", "/early-get", None),
        send(
            "POST",
            "/early-post",
            Some(Bytes::from_static(b"not replayable")),
        ),
        send(
            "GET",
            "/early-get-body",
            Some(Bytes::from_static(b"a body")),
        ),
        send(
            "POST",
            "/replayable/post",
            Some(Bytes::from_static(b"replayable")),
        ),
    ];
    for c in calls {
        assert_eq!(c.await.expect("task"), StatusCode::OK, "{}", proxy.log());
    }
    assert!(accepted.await, "the server accepted the 0-RTT data");
    let seen = seen.lock().expect("seen").clone();
    let early_of = |path: &str| {
        seen.iter()
            .find(|(_, p, _)| p == path)
            .map(|(_, _, e)| e.clone())
            .unwrap_or_else(|| panic!("{path} did not reach the backend: {seen:?}"))
    };
    assert_eq!(
        early_of("/warm"),
        "",
        "a full handshake's request is not early"
    );
    assert_eq!(
        early_of("/early-get"),
        "1",
        "GET from 0-RTT is processed before the handshake, marked Early-Data: 1"
    );
    assert_eq!(
        early_of("/early-post"),
        "",
        "a POST from 0-RTT waits for the handshake"
    );
    assert_eq!(
        early_of("/early-get-body"),
        "",
        "a GET declaring a body waits for the handshake"
    );
    assert_eq!(
        early_of("/replayable/post"),
        "1",
        "a route with early_data = true takes its POST early"
    );
    // The POST came after the handshake: after the GET.
    let order: Vec<&str> = seen.iter().map(|(_, p, _)| p.as_str()).collect();
    let at = |p: &str| order.iter().position(|x| *x == p).expect("seen");
    assert!(at("/early-get") < at("/early-post"), "{order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_reload_rotates_the_sessions_0rtt_resumes() {
    const TOKEN: &str = "s3cret-token-for-tests-0123456789";
    let (backend, _) = backend().await;
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let token = dir.0.join("token");
    std::fs::write(&token, TOKEN).expect("token");
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\", early_data = true }}",
        cert.cert_path.display(),
        cert.key_path.display()
    );
    let proxy = Proxy::start(&pipeline_with(r#"["h3"]"#, &tls, &routes(backend)).replace(
        "[admin]\nbind = \"127.0.0.1:0\"",
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"{}\"",
            token.display()
        ),
    ));
    let client = cert.client();
    warm_up(&client, &proxy).await;
    let (conn, accepted) = client
        .connect_early(proxy.h3_addr, "localhost")
        .await
        .expect("a resumed 0-RTT connection");
    assert!(accepted.await, "0-RTT is accepted before a reload");
    drop(conn);
    // A ticket taken before the reload no longer resumes after it.
    warm_up(&client, &proxy).await;
    let (status, body) = proxy.admin_post("/certs/reload", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let (conn, accepted) = client
        .connect_early(proxy.h3_addr, "localhost")
        .await
        .expect("the client still tries 0-RTT");
    assert!(
        !accepted.await,
        "after a certificate reload the old session's 0-RTT is rejected"
    );
    drop(conn);
}

#[test]
fn early_data_is_refused_with_client_certificates_and_without_http3() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    for (protocols, extra, want) in [
        (
            r#"["h3"]"#,
            format!(
                ", client_auth = \"required\", client_ca = \"{}\"",
                cert.cert_path.display()
            ),
            "early_data = true needs client_auth = \"off\"",
        ),
        (
            r#"["h2", "http1"]"#,
            String::new(),
            "early_data = true needs \"h3\" in protocols",
        ),
    ] {
        let tls = format!(
            "tls = {{ cert = \"{}\", key = \"{}\", early_data = true{extra} }}",
            cert.cert_path.display(),
            cert.key_path.display()
        );
        let file = dir.0.join("p.toml");
        std::fs::write(
            &file,
            pipeline_with(
                protocols,
                &tls,
                &routes("127.0.0.1:9".parse().expect("addr")),
            ),
        )
        .expect("write");
        let (code, _, err) = support::spooky(&["check", file.to_str().expect("utf-8")]);
        assert_eq!(code, 64, "{err}");
        assert!(
            err.contains("listeners[0].tls.early_data") && err.contains(want),
            "{err}"
        );
    }
}
