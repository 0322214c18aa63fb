//! Behind another load balancer: the PROXY protocol (v1 text, v2 binary) on TCP listeners,
//! read only from `trusted_proxies`, giving the real client address to forwarding headers
//! and per-client limits; and plain HTTP sent to a TLS port answered with a readable 400.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::named::{Named, flat};
use support::proxy::{Proxy, app_upstream, pipeline_with};
use support::tcp::{Sender, client_config};
use support::{TempDir, TestCert, spooky};

/// A v1 header for a TCP client at `client`.
fn v1(client: SocketAddr) -> Vec<u8> {
    let fam = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    let dst = if client.is_ipv4() { "127.0.0.1" } else { "::1" };
    format!(
        "PROXY {fam} {} {dst} {} 443\r\n",
        client.ip(),
        client.port()
    )
    .into_bytes()
}

/// A v2 header (built here byte by byte, not with the parser's library): `PROXY` for `client`,
/// or `LOCAL` (the balancer's own health check) when `None`. A TLV rides along, as AWS's and
/// HAProxy's do.
fn v2(client: Option<SocketAddr>) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    let mut body = Vec::new();
    match client {
        None => {
            h.extend_from_slice(&[0x20, 0x00]);
        }
        Some(SocketAddr::V4(a)) => {
            h.extend_from_slice(&[0x21, 0x11]);
            body.extend_from_slice(&a.ip().octets());
            body.extend_from_slice(&[127, 0, 0, 1]);
            body.extend_from_slice(&a.port().to_be_bytes());
            body.extend_from_slice(&443u16.to_be_bytes());
        }
        Some(SocketAddr::V6(a)) => {
            h.extend_from_slice(&[0x21, 0x21]);
            body.extend_from_slice(&a.ip().octets());
            body.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            body.extend_from_slice(&a.port().to_be_bytes());
            body.extend_from_slice(&443u16.to_be_bytes());
        }
    }
    // PP2_TYPE_UNIQUE_ID, 4 bytes.
    body.extend_from_slice(&[0x05, 0x00, 0x04, 1, 2, 3, 4]);
    h.extend_from_slice(&u16::try_from(body.len()).expect("test step").to_be_bytes());
    h.extend_from_slice(&body);
    h
}

/// A connection as a load balancer opens it: `preface` first, then TLS and HTTP (`alpn`).
async fn via_balancer(
    proxy: &Proxy,
    cert: &TestCert,
    preface: &[u8],
    alpn: &[u8],
) -> std::io::Result<Sender> {
    let mut tcp = TcpStream::connect(proxy.tcp_addr.expect("tcp")).await?;
    tcp.write_all(preface).await?;
    Sender::over(tcp, client_config(std::slice::from_ref(&cert.der), &[alpn])).await
}

/// What the backend saw as `X-Forwarded-For` for one request on `s`.
async fn seen_xff(s: &mut Sender) -> String {
    let r = s
        .send(
            Request::get("https://localhost/who")
                .body(Full::new(Bytes::new()))
                .expect("test step"),
        )
        .await;
    assert_eq!(r.status(), 200);
    flat(r.headers()).remove("x-seen-xff").unwrap_or_default()
}

fn listener(version: &str, trusted: &str, cert: &TestCert, extra: &str) -> String {
    format!(
        "{}\nproxy_protocol = \"{version}\"\ntrusted_proxies = [\"{trusted}\"]\n{extra}",
        cert.toml()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_balancers_proxy_header_gives_the_real_client_to_forwarding_headers() {
    let app = Named::start("app", Duration::ZERO).await;
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let client4: SocketAddr = "203.0.113.7:40000".parse().expect("test step");
    let client6: SocketAddr = "[2001:db8::42]:40001".parse().expect("test step");

    let proxy = Proxy::start(&pipeline_with(
        r#"["h2", "http1"]"#,
        &listener("v1", "127.0.0.0/8", &cert, ""),
        &app_upstream(&app.url()),
    ));
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let mut s = via_balancer(&proxy, &cert, &v1(client4), alpn)
            .await
            .expect("v1 connection");
        assert_eq!(seen_xff(&mut s).await, "203.0.113.7", "{alpn:?}");
        // Every request of the connection is the same client's.
        assert_eq!(seen_xff(&mut s).await, "203.0.113.7", "{alpn:?}");
    }
    let mut s = via_balancer(&proxy, &cert, &v1(client6), b"h2")
        .await
        .expect("v1 TCP6");
    assert_eq!(seen_xff(&mut s).await, "2001:db8::42");
    let mut s = via_balancer(&proxy, &cert, b"PROXY UNKNOWN\r\n", b"h2")
        .await
        .expect("v1 UNKNOWN");
    assert_eq!(
        seen_xff(&mut s).await,
        "127.0.0.1",
        "UNKNOWN leaves the peer's own address"
    );
    // A trusted peer that sends no header (or the other version) is closed: it is a
    // balancer's address, so a request from it without one is not believed.
    let before = proxy
        .metric(
            "spooky_listener_handshakes_total",
            &[("result", "proxy_protocol")],
        )
        .await;
    assert!(
        via_balancer(&proxy, &cert, b"", b"h2").await.is_err(),
        "a TLS ClientHello where the header belongs is refused"
    );
    assert!(
        via_balancer(&proxy, &cert, &v2(Some(client4)), b"h2")
            .await
            .is_err(),
        "v2 on a v1 listener is refused"
    );
    proxy
        .wait_metric(
            "spooky_listener_handshakes_total",
            &[("result", "proxy_protocol")],
            |v| v >= before + 2.0,
        )
        .await;
    // Others are still served.
    let mut s = via_balancer(&proxy, &cert, &v1(client4), b"h2")
        .await
        .expect("still serving");
    assert_eq!(seen_xff(&mut s).await, "203.0.113.7");
    drop(proxy);

    let proxy = Proxy::start(&pipeline_with(
        r#"["h2", "http1"]"#,
        &listener("v2", "127.0.0.1", &cert, ""),
        &app_upstream(&app.url()),
    ));
    for (client, want) in [(client4, "203.0.113.7"), (client6, "2001:db8::42")] {
        for alpn in [&b"h2"[..], b"http/1.1"] {
            let mut s = via_balancer(&proxy, &cert, &v2(Some(client)), alpn)
                .await
                .expect("v2 connection");
            assert_eq!(seen_xff(&mut s).await, want, "{alpn:?}");
        }
    }
    let mut s = via_balancer(&proxy, &cert, &v2(None), b"http/1.1")
        .await
        .expect("v2 LOCAL");
    assert_eq!(
        seen_xff(&mut s).await,
        "127.0.0.1",
        "LOCAL (a health check) is the balancer itself"
    );
    // A v2 signature with a bad version nibble.
    let mut bad = v2(Some(client4));
    bad[12] = 0x31;
    assert!(via_balancer(&proxy, &cert, &bad, b"h2").await.is_err());
    let mut s = via_balancer(&proxy, &cert, &v2(Some(client4)), b"h2")
        .await
        .expect("still serving");
    assert_eq!(seen_xff(&mut s).await, "203.0.113.7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peers_proxy_header_is_not_believed() {
    let app = Named::start("app", Duration::ZERO).await;
    // Plaintext HTTP/1.1: what a spoofed header becomes is visible as HTTP.
    let proxy = Proxy::start(&pipeline_with(
        r#"["http1"]"#,
        "tls = \"off\"\nproxy_protocol = \"v1\"\ntrusted_proxies = [\"10.0.0.0/8\"]",
        &app_upstream(&app.url()),
    ));
    let addr = proxy.tcp_addr.expect("tcp");
    // 127.0.0.1 is not trusted: served as it is, with its own address.
    let mut s = Sender::plain(addr).await;
    let r = s
        .send(
            Request::get(format!("http://{addr}/who"))
                .body(Full::new(Bytes::new()))
                .expect("test step"),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(flat(r.headers())["x-seen-xff"], "127.0.0.1");
    // A header it sends is not a header but a malformed request line.
    let mut tcp = TcpStream::connect(addr).await.expect("test step");
    tcp.write_all(&v1("203.0.113.7:1".parse().expect("test step")))
        .await
        .expect("test step");
    tcp.write_all(b"GET /who HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("test step");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(
        app.seen(),
        1,
        "the spoofed request never reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_limits_count_the_real_client_behind_the_balancer() {
    let app = Named::start("app", Duration::ZERO).await;
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = Proxy::start(&pipeline_with(
        r#"["h2"]"#,
        &listener("v2", "127.0.0.0/8", &cert, "max_connections_per_client = 1"),
        &app_upstream(&app.url()),
    ));
    let a: SocketAddr = "198.51.100.1:1000".parse().expect("test step");
    let b: SocketAddr = "198.51.100.2:1000".parse().expect("test step");
    // One balancer address, two clients: each has its own connection.
    let mut first = via_balancer(&proxy, &cert, &v2(Some(a)), b"h2")
        .await
        .expect("test step");
    let mut second = via_balancer(&proxy, &cert, &v2(Some(b)), b"h2")
        .await
        .expect("test step");
    assert_eq!(seen_xff(&mut first).await, "198.51.100.1");
    assert_eq!(seen_xff(&mut second).await, "198.51.100.2");
    // A second connection of the same client is over its limit.
    assert!(
        via_balancer(&proxy, &cert, &v2(Some(a)), b"h2")
            .await
            .is_err()
    );
    proxy
        .wait_metric(
            "spooky_listener_handshakes_total",
            &[("result", "per_client_limit")],
            |v| v >= 1.0,
        )
        .await;
    assert_eq!(seen_xff(&mut first).await, "198.51.100.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_sent_to_a_tls_port_gets_a_readable_400() {
    let app = Named::start("app", Duration::ZERO).await;
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &cert.toml(),
        &app_upstream(&app.url()),
    ));
    let addr = proxy.tcp_addr.expect("tcp");
    let mut tcp = TcpStream::connect(addr).await.expect("test step");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("test step");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with("a plain HTTP request was sent to an HTTPS port.\r\n\r\n"),
        "{answer}"
    );
    assert_eq!(
        proxy
            .metric(
                "spooky_listener_handshakes_total",
                &[("result", "plain_http")]
            )
            .await,
        1.0
    );
    assert_eq!(app.seen(), 0);
    // TLS on the same port is untouched.
    let mut s = Sender::connect(addr, std::slice::from_ref(&cert.der), b"h2").await;
    assert_eq!(seen_xff(&mut s).await, "127.0.0.1");
}

#[test]
fn proxy_protocol_settings_are_checked() {
    let dir = TempDir::new();
    let check = |listener: &str| {
        let file = dir.0.join("p.toml");
        std::fs::write(
            &file,
            pipeline_with(
                r#"["h3", "h2"]"#,
                listener,
                "[[routes]]\nname = \"r\"\nrespond = { status = 200 }\n",
            ),
        )
        .expect("test step");
        spooky(&["check", file.to_str().expect("test step")])
    };
    let (code, _, err) = check("proxy_protocol = \"v2\"");
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("listeners[0].proxy_protocol") && err.contains("expected trusted_proxies"),
        "{err}"
    );
    let (code, _, err) = check("proxy_protocol = \"v3\"\ntrusted_proxies = [\"10.0.0.0/8\"]");
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("proxy_protocol") && err.contains("v2"),
        "{err}"
    );
    let (code, _, err) = check("trusted_proxies = [\"10.0.0.0/40\"]");
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("\"10.0.0.0/40\" is not an address block"),
        "{err}"
    );
    let (code, out, err) = check("trusted_proxies = [\"10.0.0.0/8\"]");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("warning"), "{out}");
    assert!(
        err.contains("has no effect without proxy_protocol"),
        "{err}"
    );
    let file = dir.0.join("h3.toml");
    std::fs::write(
        &file,
        pipeline_with(
            r#"["h3"]"#,
            "proxy_protocol = \"v1\"\ntrusted_proxies = [\"10.0.0.0/8\"]",
            "[[routes]]\nname = \"r\"\nrespond = { status = 200 }\n",
        ),
    )
    .expect("test step");
    let (code, _, err) = spooky(&["check", file.to_str().expect("test step")]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("the PROXY protocol is read on TCP"), "{err}");
}

#[test]
fn an_h3_backend_needs_an_https_url() {
    let dir = TempDir::new();
    let file = dir.0.join("p.toml");
    std::fs::write(
        &file,
        pipeline_with(
            r#"["h3"]"#,
            "",
            "[[routes]]\nname = \"r\"\nupstream = \"a\"\n\n[upstreams.a]\nbackends = [ { url = \"http://127.0.0.1:8443\", protocol = \"h3\" } ]\n",
        ),
    )
    .expect("write");
    let (code, _, err) = spooky(&["check", file.to_str().expect("utf-8")]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("protocol")
            && err.contains("HTTP/3 runs over QUIC with TLS: use an https:// URL"),
        "{err}"
    );
}
