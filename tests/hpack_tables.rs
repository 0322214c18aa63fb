//! HTTP/2 header compression across idle moments (vendor/h2: the HPACK tables keep copies
//! of the headers they index, not slices of the buffers the headers were read from, and a
//! connection with no open stream gives back its Huffman buffer and its frame slabs).
//!
//! One client connection sends requests one after another, so the connection is idle
//! between them; every request carries a header seen on every request (found in the table),
//! one that changes every few requests and is long enough to push older entries out of the
//! 4 KiB table, and one of seven custom names in turn. A backend answers each `x-h-*` header
//! with an `x-r-*` header of the same value, so the proxy's HPACK encoder indexes response
//! headers it read from the backend (over HTTP/1.1: slices of the upstream connection's
//! read buffer; over h2c: from the upstream connection's own HPACK decoder), and the client
//! checks every value it gets back.

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use support::named::Client;
use support::proxy::{Proxy, pipeline_with};
use support::tls_backend::{serve_h2c, serve_http1};
use support::{TempDir, TestCert};

/// Every request header `x-h-NAME: V` comes back as `x-r-NAME: V`.
async fn mirror(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::new(Full::new(Bytes::from_static(b"mirrored\n")));
    for (name, value) in req.headers() {
        if let Some(rest) = name.as_str().strip_prefix("x-h-")
            && let Ok(name) = http::HeaderName::from_bytes(format!("x-r-{rest}").as_bytes())
        {
            resp.headers_mut().append(name, value.clone());
        }
    }
    Ok(resp)
}

/// Sixty requests on one HTTP/2 connection; every mirrored header must come back intact.
/// `backend` is the upstream's one backend entry.
async fn mirrored_on_one_connection(backend: &str) {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = Proxy::start(&pipeline_with(
        r#"["h2"]"#,
        &cert.toml(),
        &format!(
            "[[routes]]\nname = \"app\"\nupstream = \"app\"\n\n[upstreams.app]\nbackends = [ {backend} ]\n"
        ),
    ));
    let mut client = Client::open("h2", &proxy, &cert).await;
    for i in 0..60 {
        // Long enough that a few of them fill the 4 KiB table and push older entries out.
        let turn = format!("turn-{}-{}", i / 5, "t".repeat(400 + i % 3));
        let each_name = format!("x-h-each-{}", i % 7);
        let each = format!("value {i} for name {}", i % 7);
        let sent = [
            ("x-h-fixed", "the same value on every request"),
            ("x-h-turn", turn.as_str()),
            (each_name.as_str(), each.as_str()),
        ];
        let got = client
            .send("GET", &format!("https://localhost/m/{i}"), &sent)
            .await;
        assert_eq!(got.status, 200, "request {i}: {}", proxy.log());
        assert_eq!(got.body, "mirrored\n", "request {i}");
        for (name, value) in sent {
            let back = name.replacen("x-h-", "x-r-", 1);
            assert_eq!(got.header(&back), value, "request {i}: {back}");
        }
    }
    proxy.assert_caps_zero().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_survive_table_eviction_and_idle_moments_http1_backend() {
    let addr = serve_http1(|| service_fn(mirror)).await;
    mirrored_on_one_connection(&format!("{{ url = \"http://{addr}\" }}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_survive_table_eviction_and_idle_moments_h2c_backend() {
    let addr = serve_h2c(|| service_fn(mirror)).await;
    mirrored_on_one_connection(&format!(
        "{{ url = \"http://{addr}\", protocol = \"h2c\" }}"
    ))
    .await;
}
