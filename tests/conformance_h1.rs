//! The HTTP/1.1 conformance table: each row is raw bytes a client sends, the status Spooky
//! answers, whether it then closes the connection, and exactly what reached the backend (a
//! raw-socket backend that records the request line, headers and body bytes as they arrived).
//!
//! Behind every probe the client pipelines a well-formed request (`/follower`, with
//! `Connection: close`): a connection that stays open answers it too, one that closes does
//! not — so "closes" is read off the answers, and nothing smuggled behind a refused request can
//! run. The routes put an access-control answer (403) on `/admin` and everything else on the
//! backend, so a path that walks around the route shows up at the backend.

mod support;

use std::time::Duration;

use support::proxy::{Proxy, admin_and_app, pipeline_with};
use support::raw_backend::{RawBackend, Received};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the backend must have received for a probe (the follower aside).
#[derive(Debug, Clone, Copy)]
enum Upstream {
    /// Nothing at all.
    Nothing,
    /// Exactly one complete request: this request line and body.
    Complete(&'static str, &'static [u8]),
    /// No complete request (at most a head whose body was cut off: aborted, not truncated).
    NoComplete,
}

struct Probe {
    name: &'static str,
    send: Vec<u8>,
    status: u16,
    closes: bool,
    upstream: Upstream,
}

fn probe(
    name: &'static str,
    send: impl Into<Vec<u8>>,
    status: u16,
    closes: bool,
    upstream: Upstream,
) -> Probe {
    Probe {
        name,
        send: send.into(),
        status,
        closes,
        upstream,
    }
}

use Upstream::{Complete, NoComplete, Nothing};

fn table() -> Vec<Probe> {
    vec![
    // Well-formed, for reference.
    probe("plain GET", b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n", 200, false, Complete("GET /a HTTP/1.1", b"")),
    probe("chunked POST", b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 200, false, Complete("POST /a HTTP/1.1", b"5\r\nhello\r\n0\r\n\r\n")),
    // Path normalization: the access-control route cannot be walked around.
    probe("admin", b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n", 403, false, Nothing),
    probe("dot-dot", b"GET /x/../admin HTTP/1.1\r\nHost: a\r\n\r\n", 403, false, Nothing),
    probe("double slash", b"GET //admin HTTP/1.1\r\nHost: a\r\n\r\n", 403, false, Nothing),
    probe("encoded unreserved", b"GET /%61dmin HTTP/1.1\r\nHost: a\r\n\r\n", 403, false, Nothing),
    probe("encoded dots", b"GET /x/%2e%2E/admin/ HTTP/1.1\r\nHost: a\r\n\r\n", 403, false, Nothing),
    probe("path parameter", b"GET /admin;x HTTP/1.1\r\nHost: a\r\n\r\n", 403, false, Nothing),
    probe("normalized path is forwarded", b"GET /a/./b/../c%7e%3f?q=%2e%2e HTTP/1.1\r\nHost: a\r\n\r\n", 200, false, Complete("GET /a/c~%3F?q=%2e%2e HTTP/1.1", b"")),
    probe("encoded slash", b"GET /a%2Fb HTTP/1.1\r\nHost: a\r\n\r\n", 400, true, Nothing),
    probe("encoded backslash", b"GET /a%5cb HTTP/1.1\r\nHost: a\r\n\r\n", 400, true, Nothing),
    probe("encoded NUL", b"GET /a%00 HTTP/1.1\r\nHost: a\r\n\r\n", 400, true, Nothing),
    probe("bad percent", b"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400, true, Nothing),
    probe("fragment", b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400, true, Nothing),
    // Methods and upgrades Spooky does not carry yet.
    probe("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405, true, Nothing),
    probe("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 200, false, Nothing),
    probe("a WebSocket handshake on a route without websocket = true", b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 403, true, Nothing),
    probe("another Upgrade is not forwarded", b"GET /h2c HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n", 200, false, Complete("GET /h2c HTTP/1.1", b"")),
    probe("a backend's 101 to a request without Upgrade is a 502", b"GET /answer-101 HTTP/1.1\r\nHost: a\r\n\r\n", 502, false, Complete("GET /answer-101 HTTP/1.1", b"")),
    // Heads.
    probe("absolute-form without Host", b"GET http://a/x HTTP/1.1\r\n\r\n", 400, true, Nothing),
    probe("no Host", b"GET /x HTTP/1.1\r\n\r\n", 400, true, Nothing),
    probe("two Hosts", b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, true, Nothing),
    probe("bad Host", b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n", 400, true, Nothing),
    probe("obs-fold", b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400, true, Nothing),
    probe("control byte in a value", b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n", 400, true, Nothing),
    probe("space before colon", b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello", 400, true, Nothing),
    // Framing: smuggling shapes.
    probe("CL.TE", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", 400, true, Nothing),
    probe("TE.CL", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", 400, true, Nothing),
    probe("duplicate Content-Length", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400, true, Nothing),
    probe("Content-Length list", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", 400, true, Nothing),
    probe("negative Content-Length", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\nhello", 400, true, Nothing),
    probe("obfuscated TE", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400, true, Nothing),
    probe("chunked not last", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400, true, Nothing),
    probe("chunked twice", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400, true, Nothing),
    probe("chunked in two fields", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, true, Nothing),
    probe("gzip, chunked", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, true, Nothing),
    // Malformed bodies: the client's error, 400 and close; the backend never gets a complete
    // (truncated) request.
    probe("chunk size overflows", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n", 400, true, NoComplete),
    probe("chunk size with 0x", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400, true, NoComplete),
    probe("negative chunk size", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", 400, true, NoComplete),
    probe("more data than the chunk size", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello, more\r\n0\r\n\r\n", 400, true, NoComplete),
    probe("bare LF in a chunk extension", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n", 400, true, NoComplete),
    probe(
        "oversized chunk extensions",
        [
            &b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x="[..],
            &b"e".repeat(20 * 1024),
            b"\r\nhello\r\n0\r\n\r\n",
        ]
        .concat(),
        400,
        true,
        NoComplete,
    ),
    ]
}

const FOLLOWER: &[u8] = b"GET /follower HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

/// Sends `bytes`, returns everything answered until the proxy closed (bounded: 10 s).
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the proxy closes within 10 s")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// Status codes of the responses in `answer`, in order.
fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| answer.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_conformance_table() {
    let backend = RawBackend::start().await;
    let proxy = Proxy::start(&pipeline_with(
        r#"["http1"]"#,
        "tls = \"off\"",
        &admin_and_app(&backend.url()),
    ));
    let addr = proxy.tcp_addr.expect("tcp");
    let mut failures = Vec::new();
    for p in table() {
        let mut bytes = p.send.clone();
        bytes.extend_from_slice(FOLLOWER);
        let answer = exchange(addr, &bytes).await;
        let got = statuses(&answer);
        let want: Vec<u16> = if p.closes {
            vec![p.status]
        } else {
            vec![p.status, 200]
        };
        if got != want {
            failures.push(format!(
                "{}: answered {got:?}, expected {want:?}\n{answer}",
                p.name
            ));
        }
        let seen: Vec<Received> = backend
            .state
            .take()
            .into_iter()
            .filter(|r| !r.line.contains("/follower"))
            .collect();
        let ok = match p.upstream {
            Nothing => seen.is_empty(),
            Complete(line, body) => {
                seen.len() == 1 && seen[0].line == line && seen[0].body == body && seen[0].complete
            }
            NoComplete => seen.iter().all(|r| !r.complete),
        };
        if !ok {
            failures.push(format!(
                "{}: backend received {seen:?}, expected {:?}",
                p.name, p.upstream
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // A client's malformed body never counts against the backend.
    assert_eq!(
        proxy
            .metric("spooky_upstream_requests_total", &[("class", "reset")])
            .await,
        0.0
    );
    assert!(proxy.rejected("dispatch", "bad_request_body").await >= 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_requests_carry_te_in_connection_and_no_upgrade() {
    let backend = RawBackend::start().await;
    let proxy = Proxy::start(&pipeline_with(
        r#"["http1"]"#,
        "tls = \"off\"",
        &support::proxy::app_upstream(&backend.url()),
    ));
    let answer = exchange(
        proxy.tcp_addr.expect("tcp"),
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: upgrade, close\r\nTE: trailers\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&answer), vec![200]);
    let seen = backend.state.take();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    // RFC 9110 §10.1.4: TE is hop-by-hop, so it is listed in Connection.
    assert_eq!(r.header("te"), Some("trailers"));
    assert_eq!(r.header("connection"), Some("te"));
    assert_eq!(r.header("upgrade"), None);
}
