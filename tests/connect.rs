//! CONNECT tunnels through Spooky to a TCP echo server, over HTTP/1.1, HTTP/2 and HTTP/3;
//! the allowlist (default deny, loopback only when listed, a name that resolves inside),
//! a target that refuses (502 with the cause), a malformed target (400), and CONNECT where no
//! route allows it (405).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use support::proxy::{Proxy, pipeline_with};
use support::tcp::{client_config, tls_connect};
use support::{TempDir, TestCert, connect, dead_addr};

/// A TCP echo server: every byte comes back; it closes its side when the client closes its.
async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, task)
}

fn routes(allow: &[String]) -> String {
    let list: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
[[routes]]
name = "egress"
match = {{ methods = ["CONNECT"] }}
connect = {{ allow = [{}], connect_timeout = "2s" }}

[[routes]]
name = "site"
respond = {{ status = 200, body = "site\n" }}
"#,
        list.join(", ")
    )
}

/// Writes `hello tunnel`, reads it back, closes its side and reads the end of stream.
async fn round_trip(io: &mut (impl AsyncRead + AsyncWrite + Unpin), what: &str) {
    let msg = b"hello tunnel";
    io.write_all(msg).await.expect("write");
    io.flush().await.expect("flush");
    let mut back = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut back))
        .await
        .expect("echo within 10 s")
        .expect("echo");
    assert_eq!(&back, msg, "{what}");
    io.shutdown().await.expect("close our side");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut rest))
        .await
        .expect("the target's end within 10 s")
        .expect("clean end");
    assert!(rest.is_empty(), "{what}");
}

/// `CONNECT target` over HTTP/1.1 on TLS: the status line, and the stream when it is 200.
async fn connect_http1(
    proxy: &Proxy,
    cert: &TestCert,
    target: &str,
) -> (
    String,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let cfg = client_config(std::slice::from_ref(&cert.der), &[b"http/1.1"]);
    let (mut tls, _) = tls_connect(proxy.tcp_addr.expect("tcp"), "localhost", cfg)
        .await
        .expect("tls");
    tls.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    // Read the head byte by byte: what follows it is the tunnel's.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut b))
            .await
            .expect("head within 10 s")
            .expect("read");
        if n == 0 {
            break;
        }
        head.push(b[0]);
    }
    (String::from_utf8_lossy(&head).into_owned(), tls)
}

/// `CONNECT target` over HTTP/2: the status and the tunnel when it is 200.
async fn connect_h2(
    proxy: &Proxy,
    cert: &TestCert,
    target: &str,
) -> (u16, Option<TokioIo<hyper::upgrade::Upgraded>>) {
    let cfg = client_config(std::slice::from_ref(&cert.der), &[b"h2"]);
    let (tls, _) = tls_connect(proxy.tcp_addr.expect("tcp"), "localhost", cfg)
        .await
        .expect("tls");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(target)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let mut resp = send.send_request(req).await.expect("CONNECT");
    let status = resp.status().as_u16();
    if status != 200 {
        return (status, None);
    }
    let io = hyper::upgrade::on(&mut resp).await.expect("tunnel");
    (status, Some(TokioIo::new(io)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_carry_bytes_both_ways_over_every_protocol() {
    let (echo, _task) = echo_server().await;
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &cert.toml(),
        &routes(&[format!("127.0.0.1:{}", echo.port())]),
    ));
    let target = echo.to_string();

    let (head, mut tls) = connect_http1(&proxy, &cert, &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    round_trip(&mut tls, "http1").await;

    let (status, io) = connect_h2(&proxy, &cert, &target).await;
    assert_eq!(status, 200);
    round_trip(&mut io.expect("tunnel"), "h2").await;

    // HTTP/3: the tunnel is the request stream's DATA frames.
    let conn = connect(&cert.client(), &proxy).await;
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://{target}"))
        .body(())
        .expect("request");
    let mut stream = conn.send.clone().send_request(req).await.expect("CONNECT");
    let resp = stream.recv_response().await.expect("head");
    assert_eq!(resp.status(), 200);
    stream
        .send_data(Bytes::from_static(b"hello tunnel"))
        .await
        .expect("data");
    stream.finish().await.expect("finish");
    let mut back = Vec::new();
    while let Some(mut chunk) = tokio::time::timeout(Duration::from_secs(10), stream.recv_data())
        .await
        .expect("data within 10 s")
        .expect("data")
    {
        while chunk.has_remaining() {
            let c = chunk.chunk().to_vec();
            chunk.advance(c.len());
            back.extend_from_slice(&c);
        }
    }
    assert_eq!(
        back, b"hello tunnel",
        "h3: the echo, then the end of the stream"
    );

    proxy
        .wait_metric("spooky_tunnels_ended_total", &[("how", "closed")], |v| {
            v >= 3.0
        })
        .await;
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_default_deny_and_says_why_it_failed() {
    let (echo, _task) = echo_server().await;
    let dead = dead_addr();
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &cert.toml(),
        &routes(&[
            format!("localhost:{}", echo.port()),
            format!("127.0.0.1:{}", dead.port()),
            "*.example.test:443".to_string(),
        ]),
    ));
    let status_of = |head: &str| head.split(' ').nth(1).unwrap_or("").to_string();
    // Not listed: another port of an allowed address, another address.
    for target in [
        format!("127.0.0.1:{}", echo.port()),
        format!("127.0.0.2:{}", dead.port()),
    ] {
        let (head, _) = connect_http1(&proxy, &cert, &target).await;
        assert_eq!(status_of(&head), "403", "{target}: {head}");
        assert!(head.contains("connect_denied"), "{head}");
        assert_eq!(connect_h2(&proxy, &cert, &target).await.0, 403, "{target}");
    }
    // A listed name that resolves to loopback, which is not listed as an address.
    let (head, _) = connect_http1(&proxy, &cert, &format!("localhost:{}", echo.port())).await;
    assert_eq!(status_of(&head), "403", "{head}");
    assert!(head.contains("destination_ip_prohibited"), "{head}");
    // Allowed, but nothing listens: 502 naming the cause.
    let (head, _) = connect_http1(&proxy, &cert, &dead.to_string()).await;
    assert_eq!(status_of(&head), "502", "{head}");
    assert!(head.contains("error=connection_refused"), "{head}");
    // A target without a port.
    let (head, _) = connect_http1(&proxy, &cert, "127.0.0.1").await;
    assert_eq!(status_of(&head), "400", "{head}");
    // Four by name (two targets, two protocols), one by the address its name resolved to.
    assert_eq!(proxy.rejected("route", "connect_denied").await, 5.0);
    // Other methods are not tunnels: the site answers them, on the same connection kind.
    let cfg = client_config(std::slice::from_ref(&cert.der), &[b"http/1.1"]);
    let (mut tls, _) = tls_connect(proxy.tcp_addr.expect("tcp"), "localhost", cfg)
        .await
        .expect("tls");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    assert!(String::from_utf8_lossy(&answer).ends_with("site\n"));
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_without_a_connect_route_is_405() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = Proxy::start(&pipeline_with(
        r#"["h2", "http1"]"#,
        &cert.toml(),
        "[[routes]]\nname = \"site\"\nrespond = { status = 200 }\n",
    ));
    let (head, _) = connect_http1(&proxy, &cert, "127.0.0.1:9").await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert!(head.to_ascii_lowercase().contains("allow:"), "{head}");
    assert_eq!(connect_h2(&proxy, &cert, "127.0.0.1:9").await.0, 405);
}

#[test]
fn a_bad_allowlist_is_a_config_error_naming_the_entry() {
    let dir = TempDir::new();
    let file = dir.0.join("p.toml");
    std::fs::write(
        &file,
        pipeline_with(
            r#"["h2"]"#,
            "",
            "[[routes]]\nname = \"egress\"\nmatch = { methods = [\"CONNECT\"] }\nconnect = { allow = [\"example.com:443\", \"example.com\", \"10.0.0.0/8:9-1\"] }\n",
        ),
    )
    .expect("write");
    let (code, _, err) = support::spooky(&["check", file.to_str().expect("utf-8")]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("routes[0].connect.allow.1: \"example.com\": no port: expected HOST:PORTS"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}:", file.display())),
        "file:line:column: {err}"
    );
}

/// A QUIC variable-length integer.
fn varint(v: u64) -> Vec<u8> {
    match v {
        0..64 => vec![v as u8],
        64..16_384 => (0x4000 | v as u16).to_be_bytes().to_vec(),
        _ => (0x8000_0000 | v as u32).to_be_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_udp_carries_datagrams_over_http3() {
    // A UDP echo server.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    let port = udp.local_addr().expect("addr").port();
    let _echo = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(&buf[..n], from).await;
        }
    });
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &cert.toml(),
        &format!(
            "[[routes]]\nname = \"egress\"\nmatch = {{ methods = [\"CONNECT\"] }}\nconnect = {{ allow = [\"127.0.0.1:{port}\"], udp = true }}\n"
        ),
    ));
    let conn = connect(&cert.client(), &proxy).await;
    let open = |port: u16| {
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!(
                "https://localhost/.well-known/masque/udp/127.0.0.1/{port}/"
            ))
            .header("capsule-protocol", "?1")
            .body(())
            .expect("request");
        req.extensions_mut().insert(h3::ext::Protocol::CONNECT_UDP);
        let mut send = conn.send.clone();
        async move {
            let mut stream = send.send_request(req).await.expect("CONNECT-UDP");
            let resp = stream.recv_response().await.expect("head");
            (resp, stream)
        }
    };
    // A target not listed.
    let (resp, _) = open(port.wrapping_add(1)).await;
    assert_eq!(resp.status(), 403);

    let (resp, mut stream) = open(port).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["capsule-protocol"], "?1");
    let quarter = stream.id().into_inner() / 4;
    let datagram = |context: u64, payload: &[u8]| {
        let mut d = varint(quarter);
        d.extend(varint(context));
        d.extend_from_slice(payload);
        Bytes::from(d)
    };
    // A datagram of an unknown context is dropped; the next one is carried.
    conn.conn
        .send_datagram(datagram(7, b"unknown context"))
        .expect("send");
    for i in 0..20u8 {
        let payload = [b'd', i];
        conn.conn
            .send_datagram(datagram(0, &payload))
            .expect("send");
        let back = tokio::time::timeout(Duration::from_secs(10), conn.conn.read_datagram())
            .await
            .expect("an echo within 10 s")
            .expect("datagram");
        let mut want = varint(quarter);
        want.push(0);
        want.extend_from_slice(&payload);
        assert_eq!(back.as_ref(), want.as_slice(), "datagram {i}");
    }
    // The client ends its stream: the tunnel ends, cleanly.
    stream.finish().await.expect("finish");
    proxy
        .wait_metric("spooky_tunnels_ended_total", &[("how", "closed")], |v| {
            v >= 1.0
        })
        .await;
    proxy.assert_caps_zero().await;
}
