//! WebSockets through Spooky to a real WebSocket server (tokio-tungstenite): over HTTP/1.1
//! (`Upgrade`), HTTP/2 (RFC 8441 extended CONNECT, a client built here from hyper's) and
//! HTTP/3 (RFC 9220 extended CONNECT, a client built here from h3's), text and binary
//! messages, ping/pong, close codes, a 1 MiB message; refusals (a route that did not opt
//! in, the backend's own non-101); the idle limit; the drain deadline; `:protocol` on an
//! HTTP/3 connection that did not announce extended CONNECT, malformed by the RFC's rule; and
//! an HTTP/2 backend reached by RFC 8441 extended CONNECT from every client protocol.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use support::frames::{H3Raw, h3_headers, reset_code};
use support::proxy::{Proxy, pipeline_with};
use support::tcp::{client_config, tls_connect};
use support::{TempDir, TestCert};

/// A WebSocket echo server: every message comes back as it was (a close with its code); a
/// handshake to `/ws/deny` is answered `403`. Records the handshakes' request heads.
struct Echo {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<http::HeaderMap>>>,
    /// The close codes the backend received.
    closes: Arc<Mutex<Vec<u16>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Echo {
    async fn start() -> Echo {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let closes = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let closed = closes.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = seen.clone();
                let closed = closed.clone();
                tokio::spawn(async move {
                    #[allow(clippy::result_large_err)] // tungstenite's callback signature
                    let check = |req: &Request, resp: Response| {
                        seen.lock().expect("heads").push(req.headers().clone());
                        if req.uri().path() == "/ws/deny" {
                            let mut refusal = ErrorResponse::new(Some("no sockets here".into()));
                            *refusal.status_mut() = http::StatusCode::FORBIDDEN;
                            return Err(refusal);
                        }
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, check).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if let Message::Close(Some(f)) = &msg {
                            closed.lock().expect("closes").push(u16::from(f.code));
                        }
                        // tungstenite answers pings and closes by itself.
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Echo {
            addr,
            heads,
            closes,
            task,
        }
    }

    fn last_head(&self) -> http::HeaderMap {
        self.heads
            .lock()
            .expect("heads")
            .last()
            .cloned()
            .expect("a handshake reached the backend")
    }
}

fn routes(echo: &Echo, extra: &str) -> String {
    format!(
        r#"
[[routes]]
name = "chat"
match = {{ path_prefix = "/ws" }}
upstream = "chat"
websocket = true
{extra}

[[routes]]
name = "plain"
match = {{ path_prefix = "/" }}
upstream = "chat"

[upstreams.chat]
backends = [ {{ url = "http://{}" }} ]
"#,
        echo.addr
    )
}

/// An echo backend and the proxy in front of it (every protocol), with `route_extra` in the
/// WebSocket route and `drain` for the pipeline's drain timeout line.
async fn start(route_extra: &str, drain: &str) -> (Echo, TempDir, TestCert, Proxy) {
    let echo = Echo::start().await;
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let mut toml = pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &cert.toml(),
        &routes(&echo, route_extra),
    );
    if !drain.is_empty() {
        toml = toml.replace("drain_timeout = \"10s\"", drain);
    }
    let proxy = Proxy::start(&toml);
    (echo, dir, cert, proxy)
}

type Ws<S> = WebSocketStream<S>;

/// A WebSocket over HTTP/1.1 through the proxy's TLS port.
async fn ws_http1(
    proxy: &Proxy,
    cert: &TestCert,
    path: &str,
) -> Result<Ws<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, WsError> {
    let cfg = client_config(std::slice::from_ref(&cert.der), &[b"http/1.1"]);
    let (tls, _) = tls_connect(proxy.tcp_addr.expect("tcp"), "localhost", cfg)
        .await
        .expect("tls");
    let (ws, resp) = tokio_tungstenite::client_async(format!("wss://localhost{path}"), tls).await?;
    assert_eq!(resp.status(), 101);
    Ok(ws)
}

/// A WebSocket over HTTP/2 (RFC 8441): extended CONNECT on an HTTP/2 connection; the
/// status when the proxy or the backend refused it.
async fn ws_h2(
    proxy: &Proxy,
    cert: &TestCert,
    path: &str,
) -> Result<Ws<TokioIo<hyper::upgrade::Upgraded>>, u16> {
    let cfg = client_config(std::slice::from_ref(&cert.der), &[b"h2"]);
    let (tls, _) = tls_connect(proxy.tcp_addr.expect("tcp"), "localhost", cfg)
        .await
        .expect("tls");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    // A first request, so the server's SETTINGS (ENABLE_CONNECT_PROTOCOL) have been read.
    let warm = http::Request::get("https://localhost/")
        .body(Empty::<Bytes>::new())
        .expect("request");
    send.send_request(warm).await.expect("first request");
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://localhost{path}"))
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .expect("request");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut resp = send.send_request(req).await.expect("extended CONNECT");
    if resp.status() != 200 {
        return Err(resp.status().as_u16());
    }
    let io = hyper::upgrade::on(&mut resp).await.expect("upgraded");
    Ok(WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Client, None).await)
}

/// A WebSocket over HTTP/3 (RFC 9220): extended CONNECT on a request stream whose DATA
/// frames are carried to and from a local pipe the WebSocket runs on; the status when the
/// proxy or the backend refused it.
async fn ws_h3(
    proxy: &Proxy,
    cert: &TestCert,
    path: &str,
) -> Result<Ws<tokio::io::DuplexStream>, u16> {
    use bytes::Buf;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let conn = support::connect(&cert.client(), proxy).await;
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://localhost{path}"))
        .header("sec-websocket-version", "13")
        .body(())
        .expect("request");
    req.extensions_mut().insert(h3::ext::Protocol::WEBSOCKET);
    let mut send = conn.send.clone();
    let mut stream = send.send_request(req).await.expect("extended CONNECT");
    let resp = stream.recv_response().await.expect("response head");
    if resp.status() != 200 {
        return Err(resp.status().as_u16());
    }
    let (mine, theirs) = tokio::io::duplex(64 * 1024);
    let (mut up, mut down) = stream.split();
    let (mut from_ws, mut to_ws) = tokio::io::split(theirs);
    tokio::spawn(async move {
        let _conn = conn;
        let upward = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = from_ws.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    let _ = up.finish().await;
                    return;
                }
                if up
                    .send_data(Bytes::copy_from_slice(&buf[..n]))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        };
        let downward = async {
            while let Ok(Some(mut chunk)) = down.recv_data().await {
                let data = chunk.copy_to_bytes(chunk.remaining());
                if to_ws.write_all(&data).await.is_err() {
                    return;
                }
            }
            let _ = to_ws.shutdown().await;
        };
        tokio::join!(upward, downward);
    });
    Ok(WebSocketStream::from_raw_socket(mine, Role::Client, None).await)
}

/// Text, binary (1 MiB), ping/pong and a close with a code, each echoed through the tunnel.
async fn conversation<S>(mut ws: Ws<S>, what: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let next = async |ws: &mut Ws<S>| {
        tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("stream open")
            .expect("message")
    };
    ws.send(Message::text("hello")).await.expect("send text");
    assert_eq!(next(&mut ws).await, Message::text("hello"), "{what}");
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone()))
        .await
        .expect("send 1 MiB");
    assert_eq!(next(&mut ws).await, Message::binary(big), "{what}: 1 MiB");
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .expect("ping");
    assert_eq!(
        next(&mut ws).await,
        Message::Pong(Bytes::from_static(b"are you there")),
        "{what}"
    );
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "bye".into(),
    })))
    .await
    .expect("close");
    match next(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::from(4000), "{what}"),
        other => panic!("{what}: expected the close echoed, got {other:?}"),
    }
    // The server closes the connection after the handshake: the stream ends.
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("end within 10 s");
    assert!(
        matches!(end, None | Some(Err(WsError::ConnectionClosed))),
        "{what}: {end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_http1_and_http2_echo_through_the_proxy() {
    let (echo, _dir, cert, proxy) = start("", "").await;
    let ws = ws_http1(&proxy, &cert, "/ws/chat")
        .await
        .expect("http1 websocket");
    let head = echo.last_head();
    assert_eq!(
        head["x-forwarded-for"], "127.0.0.1",
        "forwarding headers go up"
    );
    conversation(ws, "http1").await;

    let ws = ws_h2(&proxy, &cert, "/ws/chat")
        .await
        .expect("h2 websocket");
    let head = echo.last_head();
    assert!(
        head.contains_key("sec-websocket-key"),
        "an HTTP/2 client's handshake gets a key towards the HTTP/1.1 backend"
    );
    assert_eq!(head["upgrade"], "websocket");
    conversation(ws, "h2").await;

    let ws = ws_h3(&proxy, &cert, "/ws/chat")
        .await
        .expect("h3 websocket");
    let head = echo.last_head();
    assert!(
        head.contains_key("sec-websocket-key"),
        "RFC 9220: a key is made"
    );
    assert_eq!(head["upgrade"], "websocket");
    conversation(ws, "h3").await;

    proxy
        .wait_metric("spooky_tunnels_ended_total", &[("how", "closed")], |v| {
            v >= 3.0
        })
        .await;
    assert_eq!(proxy.metric("spooky_tunnels_open", &[]).await, 0.0);
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_are_normal_responses_and_the_connection_serves_on() {
    let (_echo, _dir, cert, proxy) = start("", "").await;
    // A route that did not opt in: 403 from Spooky, on both protocols.
    match ws_http1(&proxy, &cert, "/other").await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            assert!(
                resp.headers()["proxy-status"]
                    .to_str()
                    .expect("ascii")
                    .contains("websocket_not_allowed")
            );
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    assert_eq!(ws_h2(&proxy, &cert, "/other").await.err(), Some(403));
    // The backend's refusal reaches the client as it was.
    match ws_http1(&proxy, &cert, "/ws/deny").await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected the backend's 403, got {:?}", other.map(|_| ())),
    }
    assert_eq!(ws_h2(&proxy, &cert, "/ws/deny").await.err(), Some(403));
    assert_eq!(ws_h3(&proxy, &cert, "/other").await.err(), Some(403));
    assert_eq!(ws_h3(&proxy, &cert, "/ws/deny").await.err(), Some(403));
    assert_eq!(proxy.rejected("route", "websocket_not_allowed").await, 3.0);
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_on_an_http3_connection_without_extended_connect_is_malformed() {
    // No route takes WebSockets (or CONNECT-UDP): HTTP/3 connections do not announce extended
    // CONNECT, and a client that sends `:protocol` anyway is malformed (RFC 9220 §3, RFC 9114
    // §4.1.2): its stream alone is reset.
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &cert.toml(),
        "[[routes]]\nname = \"hi\"\nrespond = { status = 200, body = \"hi\" }\n",
    ));
    let raw = H3Raw::connect(proxy.h3_addr, &cert.der).await;
    let answer = raw
        .send(
            &h3_headers(&[
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":scheme", "https"),
                (":authority", "localhost"),
                (":path", "/ws/chat"),
                ("sec-websocket-version", "13"),
            ]),
            false,
        )
        .await;
    assert_eq!(reset_code(&answer), Some(0x10e), "{answer:?}");
    let ok = raw
        .send(
            &h3_headers(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", "localhost"),
                (":path", "/hello"),
            ]),
            true,
        )
        .await;
    assert!(ok.is_ok(), "the connection serves on: {ok:?}");
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_and_the_drain_deadline_closes_the_rest() {
    let (echo, _dir, cert, mut proxy) = start(
        "timeouts = { tunnel_idle = \"300ms\" }",
        "drain_timeout = \"1s\"",
    )
    .await;
    // Idle: nothing either way for 300 ms ends it; the client gets Spooky's Close (1001).
    async fn idle_closes<S>(mut ws: Ws<S>, what: &str)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        ws.send(Message::text("one")).await.expect("send");
        assert_eq!(
            ws.next().await.expect("echo").expect("echo"),
            Message::text("one")
        );
        let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("closed by the idle limit within 10 s");
        match end {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Away, "{what}"),
            other => panic!("{what}: expected Spooky's Close (1001), got {other:?}"),
        }
    }
    let ws = ws_http1(&proxy, &cert, "/ws/idle")
        .await
        .expect("websocket");
    idle_closes(ws, "http1").await;
    let ws = ws_h3(&proxy, &cert, "/ws/idle").await.expect("websocket");
    idle_closes(ws, "h3").await;
    proxy
        .wait_metric("spooky_tunnels_ended_total", &[("how", "idle")], |v| {
            v >= 2.0
        })
        .await;

    // Drain: a live tunnel keeps the process draining until the deadline, then is closed.
    let mut ws = ws_h2(&proxy, &cert, "/ws/drain").await.expect("websocket");
    let keep_talking = async {
        // Traffic keeps the idle limit away until the drain deadline closes the tunnel; what
        // ends it is Spooky's Close frame (1001, going away).
        loop {
            if ws.send(Message::text("ping")).await.is_err() {
                // The tunnel closed while this was sent: the Close may be there to read.
                while let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_secs(1), ws.next()).await
                {
                    if let Ok(Message::Close(f)) = m {
                        return f.map(|f| f.code);
                    }
                }
                return None;
            }
            match tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
                Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| f.code),
                Ok(Some(Ok(_))) | Err(_) => {}
                Ok(_) => return None,
            }
        }
    };
    proxy.sigterm();
    let code = tokio::time::timeout(Duration::from_secs(10), keep_talking)
        .await
        .expect("the drain deadline closed the tunnel");
    assert_eq!(code, Some(CloseCode::Away), "the client got a Close frame");
    let status = proxy.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", proxy.log());
    let closes = echo.closes.lock().expect("closes").clone();
    assert_eq!(
        closes.iter().filter(|c| **c == 1001).count(),
        3,
        "the backend got Spooky's Close at the idle limits and at the drain deadline: {closes:?}"
    );
    assert!(
        proxy.log().contains("drain deadline passed"),
        "the tunnel held the drain to its deadline: {}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_answered_otherwise_closes_the_http1_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A plaintext listener that redirects everything: the handshake is answered 308, and the
    // connection (whose framing the guard stopped following at the handshake) is closed.
    let proxy = Proxy::start(&pipeline_with(
        r#"["http1"]"#,
        "tls = \"off\"\nredirect = \"https\"",
        "[[routes]]\nname = \"r\"\nrespond = { status = 200 }\n",
    ));
    let mut tcp = tokio::net::TcpStream::connect(proxy.tcp_addr.expect("tcp"))
        .await
        .expect("connect");
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await
    .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("closed within 10 s")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "nothing after it is read: {answer}"
    );
}

type Seen = Arc<Mutex<Vec<(String, Option<String>, bool)>>>;

/// An HTTP/2 (h2c) WebSocket echo backend (RFC 8441): announces extended CONNECT when
/// `announce`, takes CONNECT with `:protocol = websocket` (`200`) and echoes messages.
/// Records each request's method, `:protocol` and whether it had a `Sec-WebSocket-Key`.
async fn h2_echo(announce: bool) -> (SocketAddr, Seen) {
    use hyper::body::Incoming;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let s = s.clone();
            let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                let protocol = req
                    .extensions()
                    .get::<hyper::ext::Protocol>()
                    .map(|p| p.as_str().to_string());
                s.lock().expect("seen").push((
                    req.method().to_string(),
                    protocol.clone(),
                    req.headers().contains_key("sec-websocket-key"),
                ));
                if req.method() == http::Method::CONNECT && protocol.as_deref() == Some("websocket")
                {
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(io) = on.await else { return };
                        let mut ws =
                            WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None)
                                .await;
                        while let Some(Ok(msg)) = ws.next().await {
                            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                                break;
                            }
                        }
                    });
                }
                async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Empty::<Bytes>::new()))
                }
            });
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            if announce {
                builder.enable_connect_protocol();
            }
            tokio::spawn(async move {
                let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_reach_an_http2_backend_by_extended_connect() {
    let (h2, seen) = h2_echo(true).await;
    let (silent, _) = h2_echo(false).await;
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let ca = support::tls_backend::Ca::new("spooky test CA");
    let ca_file = dir.0.join("ca.pem");
    ca.write(&ca_file);
    let leaf = ca.issue(&dir, "backend", &["localhost"]);
    // An HTTPS backend on `auto` that picks h2 by ALPN: it sees a plain GET and answers 200.
    let alpn_h2 = support::tls_backend::https_backend(&leaf, &[b"h2"]).await;
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &cert.toml(),
        &format!(
            r#"
[[routes]]
name = "h2"
match = {{ path_prefix = "/ws" }}
upstream = "h2"
websocket = true

[[routes]]
name = "silent"
match = {{ path_prefix = "/silent" }}
upstream = "silent"
websocket = true

[[routes]]
name = "alpn"
match = {{ path_prefix = "/alpn" }}
upstream = "alpn"
websocket = true

[upstreams.h2]
backends = [ {{ url = "http://{h2}", protocol = "h2c" }} ]

[upstreams.silent]
backends = [ {{ url = "http://{silent}", protocol = "h2c" }} ]

[upstreams.alpn]
tls = {{ ca_file = "{}", server_name = "localhost" }}
backends = [ {{ url = "https://{alpn_h2}" }} ]
"#,
            ca_file.display()
        ),
    ));
    let ws = ws_http1(&proxy, &cert, "/ws/a").await.expect("http1");
    conversation(ws, "http1 to h2").await;
    let ws = ws_h2(&proxy, &cert, "/ws/b").await.expect("h2");
    conversation(ws, "h2 to h2").await;
    let ws = ws_h3(&proxy, &cert, "/ws/c").await.expect("h3");
    conversation(ws, "h3 to h2").await;
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (method, protocol, key) in &seen {
        assert_eq!(method, "CONNECT", "{seen:?}");
        assert_eq!(protocol.as_deref(), Some("websocket"), "{seen:?}");
        assert!(!key, "no Sec-WebSocket-Key over HTTP/2: {seen:?}");
    }

    // A backend that does not announce extended CONNECT refuses it: the client gets a 502.
    match ws_http1(&proxy, &cert, "/silent").await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 502),
        other => panic!("expected 502, got {:?}", other.map(|_| ())),
    }
    assert_eq!(ws_h2(&proxy, &cert, "/silent").await.err(), Some(502));
    // A backend reached over HTTP/2 by ALPN got a plain GET and answered 200: over extended
    // CONNECT a 200 would mean the tunnel is open, so it is a 502 there.
    assert_eq!(ws_h2(&proxy, &cert, "/alpn").await.err(), Some(502));
    assert_eq!(ws_h3(&proxy, &cert, "/alpn").await.err(), Some(502));
    proxy.assert_caps_zero().await;
}
