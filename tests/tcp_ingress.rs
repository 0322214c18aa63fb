//! HTTP/2 and HTTP/1.1 over TLS on the same listener as HTTP/3, through the same stages.

mod support;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use support::backend::Backend;
use support::proxy::{Proxy, hello_and_app, pipeline_with};
use support::tcp::{Sender, body, get};
use support::{TempDir, TestCert, connect, url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_http1_over_tls_through_the_pipeline_with_alt_svc() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &cert.toml(),
        &hello_and_app(&backend.url()),
    ));
    let tcp = proxy.tcp_addr.expect("tcp listener");
    assert_eq!(
        tcp.port(),
        proxy.h3_addr.port(),
        "h3 and TCP share the port number"
    );
    let alt = format!("h3=\":{}\"; ma=86400", proxy.h3_addr.port());
    let roots = [cert.der.clone()];

    for (alpn, version) in [
        (&b"h2"[..], http::Version::HTTP_2),
        (&b"http/1.1"[..], http::Version::HTTP_11),
    ] {
        let mut s = Sender::connect(tcp, &roots, alpn).await;
        let resp = s.send(get("/page?x=1")).await;
        assert_eq!(resp.version(), version);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers().get("alt-svc").and_then(|v| v.to_str().ok()),
            Some(alt.as_str())
        );
        let via = if version == http::Version::HTTP_2 {
            "2 spooky"
        } else {
            "1.1 spooky"
        };
        let seen = resp
            .headers()
            .get("x-seen")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(
            seen.contains(&format!("via={via}")) && seen.contains("xfp=https"),
            "{seen}"
        );
        assert!(resp.headers().get("x-hop").is_none());
        let (b, _) = body(resp).await;
        assert_eq!(&b[..], b"backend /page\n");
        let hello = s.send(get("/hello")).await;
        assert_eq!(
            hello.headers().get("alt-svc").and_then(|v| v.to_str().ok()),
            Some(alt.as_str())
        );
        assert_eq!(&body(hello).await.0[..], b"hello from spooky\n");
    }
    // Trailers pass through to an HTTP/2 client.
    let mut h2 = Sender::connect(tcp, &roots, b"h2").await;
    let (b, trailers) = body(h2.send(get("/trailers")).await).await;
    assert_eq!(&b[..], b"body before trailers\n");
    assert_eq!(
        trailers
            .and_then(|t| t.get("x-checksum").cloned())
            .as_ref()
            .map(|v| v.as_bytes()),
        Some(&b"abc123"[..])
    );
    // HTTP/3 on the same listener still works.
    let client = cert.client();
    let conn = connect(&client, &proxy).await;
    assert_eq!(
        conn.get(&url("/h3")).await.expect("h3").status,
        StatusCode::OK
    );
    assert_eq!(
        proxy
            .metric("spooky_stage_emitted_total", &[("stage", "egress")])
            .await,
        4.0
    );
    proxy.assert_caps_zero().await;
    assert_eq!(backend.state.seen.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_bodies_stream_over_h2_and_http1() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 251) as u8).collect();
    // The default read-ahead of backend responses, and the smallest hyper allows (the
    // response then comes in many 8 KiB pieces).
    for dispatch in ["", "[stages.dispatch]\nupstream_read_ahead = \"8KiB\"\n\n"] {
        let proxy = Proxy::start(&pipeline_with(
            r#"["h2", "http1"]"#,
            &cert.toml(),
            &format!("{dispatch}{}", hello_and_app(&backend.url())),
        ));
        bodies_stream(&proxy, &cert, &data).await;
    }
}

async fn bodies_stream(proxy: &Proxy, cert: &TestCert, data: &[u8]) {
    let tcp = proxy.tcp_addr.expect("tcp listener");
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let mut s = Sender::connect(tcp, std::slice::from_ref(&cert.der), alpn).await;
        let req = Request::builder()
            .method(Method::POST)
            .uri("https://localhost/echo")
            .body(Full::new(Bytes::copy_from_slice(data)))
            .expect("req");
        let resp = s.send(req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers().get("alt-svc").is_none(),
            "no h3 on this listener, so no Alt-Svc"
        );
        let (b, _) = body(resp).await;
        assert!(
            b[..] == *data,
            "echo over {}",
            String::from_utf8_lossy(alpn)
        );
    }
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_listener_serves_and_redirect_mode_redirects() {
    let backend = Backend::start().await;
    let rest = hello_and_app(&backend.url());
    let proxy = Proxy::start(&pipeline_with(
        r#"["http1"]"#,
        "tls = \"off\"\nalt_svc = \"h3=\\\":443\\\"\"",
        &rest,
    ));
    let mut send = Sender::plain(proxy.tcp_addr.expect("tcp")).await;
    let req = Request::get("/plain")
        .header("host", "example.org")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = send.send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers().get("alt-svc").map(|v| v.as_bytes()),
        Some(&b"h3=\":443\""[..])
    );
    let seen = resp
        .headers()
        .get("x-seen")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        seen.contains("host=example.org")
            && seen.contains("xfp=http ")
            && seen.contains("via=1.1 spooky"),
        "{seen}"
    );

    let redirecting = Proxy::start(&pipeline_with(
        r#"["http1"]"#,
        "tls = \"off\"\nredirect = \"https\"\nredirect_port = 8443",
        &rest,
    ));
    let mut send = Sender::plain(redirecting.tcp_addr.expect("tcp")).await;
    let req = Request::get("/a/b?c=d")
        .header("host", "example.org:80")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = send.send(req).await;
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        resp.headers().get("location").map(|v| v.as_bytes()),
        Some(&b"https://example.org:8443/a/b?c=d"[..])
    );
}

/// One HTTP/1.1 connection over TLS carries request after request, each sent once the one
/// before was answered, so that every side's connection waits idle in between with its empty
/// read and write buffers dropped (vendor/hyper): uploads and heads larger than those
/// buffers, then small requests, on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keep_alive_carries_large_and_small_requests_across_idle_waits() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let proxy = Proxy::start(&pipeline_with(
        r#"["h2", "http1"]"#,
        &cert.toml(),
        &hello_and_app(&backend.url()),
    ));
    let roots = [cert.der.clone()];
    let mut s = Sender::connect(proxy.tcp_addr.expect("tcp"), &roots, b"http/1.1").await;
    let upload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let big = "x".repeat(12 * 1024);
    for round in 0..3 {
        let req = Request::post("https://localhost/echo")
            .header("x-big", big.as_str())
            .body(Full::new(Bytes::from(upload.clone())))
            .expect("request");
        let resp = s.send(req).await;
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "round {round}: {:?}",
            resp.headers()
        );
        let (echoed, _) = body(resp).await;
        assert!(
            echoed == upload,
            "round {round}: the echo came back changed ({} bytes)",
            echoed.len()
        );
        let resp = s.send(get("/small")).await;
        assert_eq!(resp.status(), StatusCode::OK, "round {round}");
        assert_eq!(&body(resp).await.0[..], b"backend /small\n");
    }
    assert_eq!(backend.state.seen.load(Ordering::SeqCst), 6);
}
