//! Spooky's own HTTP/1.1 client side (requests without a body) against a backend that writes
//! its answers a few bytes at a time: chunked bodies with extensions and trailers, `1xx`
//! answers before the final one, `HEAD` and `204`, HTTP/1.0, bodies delimited by close,
//! answers that are cut short or do not parse, and a kept connection the backend closes
//! without answering. Each answer arrives whole (or fails as it should), and a connection is
//! used again exactly when its answer allowed it.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, StatusCode};
use support::proxy::{Proxy, pipeline};
use support::{TempDir, TestCert, connect, url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the backend does after writing an answer.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    /// Waits for the next request on the connection.
    Serve,
    /// Closes the connection.
    Close,
}

/// The scripted answer to `path`.
fn script(path: &str) -> (&'static [u8], Then) {
    match path {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=\"a b\"\r\nhello\r\n6 \r\n world\r\n0\r\nX-Checksum: 42\r\n\r\n",
            Then::Serve,
        ),
        "/hints" => (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Then::Serve,
        ),
        "/length" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
            Then::Serve,
        ),
        "/empty" => (b"HTTP/1.1 204 No Content\r\n\r\n", Then::Serve),
        "/http10" => (
            b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold!",
            Then::Serve,
        ),
        "/until-close" => (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nread until the backend closes",
            Then::Close,
        ),
        "/close" => (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye",
            Then::Serve,
        ),
        "/short" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            Then::Close,
        ),
        "/conflict" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
            Then::Serve,
        ),
        "/garbage" => (b"HTTP/1.1 2xx nope\r\n\r\n", Then::Serve),
        "/bad-chunk" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            Then::Serve,
        ),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain", Then::Serve),
    }
}

/// A backend that answers from [`script`], three bytes per write. With `one_each`, it
/// answers one request per connection and closes the connection when the next request comes
/// (unanswered, as a backend does that closed a kept connection just as it was reused).
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(one_each: bool) -> Scripted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s, one_each));
            }
        });
        Scripted { addr, accepted }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn serve(mut s: TcpStream, one_each: bool) {
    let _ = s.set_nodelay(true);
    let mut pending = Vec::new();
    let mut served = 0;
    loop {
        let end = loop {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut buf = [0u8; 4096];
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
        pending.drain(..end);
        if one_each && served == 1 {
            return;
        }
        served += 1;
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        let (answer, then) = script(&path);
        for piece in answer.chunks(3) {
            if s.write_all(piece).await.is_err() {
                return;
            }
            let _ = s.flush().await;
            tokio::task::yield_now().await;
        }
        if then == Then::Close {
            return;
        }
    }
}

/// A [`Scripted`] backend, a proxy in front of it, and an HTTP/3 connection to the proxy
/// (fields drop in order: the connection before its client, the proxy before its
/// certificates).
struct Through {
    conn: spooky::h3client::H3Conn,
    _client: spooky::h3client::H3Client,
    proxy: Proxy,
    _dir: TempDir,
    backend: Scripted,
}

impl Through {
    async fn start(one_each: bool) -> Through {
        let backend = Scripted::start(one_each).await;
        let dir = TempDir::new();
        let cert = TestCert::generate(&dir);
        let rest = format!(
            r#"
[[routes]]
name = "app"
match = {{ path_prefix = "/" }}
upstream = "app"

[upstreams.app]
backends = [ {{ url = "http://{}" }} ]
"#,
            backend.addr
        );
        let proxy = Proxy::start(&pipeline(&cert.toml(), &rest));
        let client = cert.client();
        let conn = connect(&client, &proxy).await;
        Through {
            conn,
            _client: client,
            proxy,
            _dir: dir,
            backend,
        }
    }
}

async fn get(conn: &spooky::h3client::H3Conn, path: &str) -> spooky::h3client::Response {
    tokio::time::timeout(Duration::from_secs(10), conn.get(&url(path)))
        .await
        .expect("answered within 10 s")
        .expect("GET")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_written_a_few_bytes_at_a_time_arrive_whole_on_one_connection() {
    let t = Through::start(false).await;

    let r = get(&t.conn, "/chunked").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"hello world");
    let trailers = r.trailers.expect("the backend's trailers");
    assert_eq!(
        trailers.get("x-checksum").map(|v| v.as_bytes()),
        Some(&b"42"[..])
    );

    let r = get(&t.conn, "/hints").await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"ok"[..]));

    let head = Request::head(url("/length")).body(()).expect("HEAD");
    let r = tokio::time::timeout(Duration::from_secs(10), t.conn.request(head, None))
        .await
        .expect("HEAD answered within 10 s")
        .expect("HEAD");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"100"[..])
    );
    assert!(r.body.is_empty(), "a HEAD's answer has no body");

    let r = get(&t.conn, "/empty").await;
    assert_eq!((r.status, r.body.len()), (StatusCode::NO_CONTENT, 0));
    let r = get(&t.conn, "/plain").await;
    assert_eq!(&r.body[..], b"plain");
    assert_eq!(
        t.backend.connections(),
        1,
        "every answer above left the connection usable"
    );

    // HTTP/1.0 without keep-alive, a body delimited by close, and Connection: close each end
    // their connection: the request after each goes on a new one.
    for (path, body) in [
        ("/http10", &b"old!"[..]),
        ("/until-close", &b"read until the backend closes"[..]),
        ("/close", &b"bye"[..]),
    ] {
        let before = t.backend.connections();
        let r = get(&t.conn, path).await;
        assert_eq!((r.status, &r.body[..]), (StatusCode::OK, body), "{path}");
        let r = get(&t.conn, "/plain").await;
        assert_eq!(&r.body[..], b"plain", "after {path}");
        assert_eq!(
            t.backend.connections(),
            before + 1,
            "{path} ended its connection"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_are_cut_short_or_do_not_parse_fail_and_the_proxy_serves_on() {
    let t = Through::start(false).await;

    for path in ["/conflict", "/garbage"] {
        let r = get(&t.conn, path).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{path}");
    }
    // The head was good and went out; the body then fails: the client must not see a
    // complete answer.
    for (path, whole) in [("/short", 10), ("/bad-chunk", 5)] {
        let r = tokio::time::timeout(Duration::from_secs(10), t.conn.get(&url(path)))
            .await
            .expect("ended within 10 s");
        if let Ok(r) = r {
            assert!(r.body.len() < whole, "{path}: a cut body arrived as whole");
        }
    }
    let r = get(&t.conn, "/plain").await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"plain"[..]));
    assert_eq!(
        t.proxy
            .metric(
                "spooky_upstream_requests_total",
                &[("upstream", "app"), ("class", "reset")],
            )
            .await,
        2.0,
        "the two heads that did not parse count against the backend"
    );
}

/// The backend closes each kept connection when its second request arrives, unanswered:
/// every GET is still answered (sent again on a new connection), and none counts as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_a_kept_connection_closed_unanswered_goes_again_on_a_new_one() {
    let t = Through::start(true).await;
    for i in 0..10 {
        let r = get(&t.conn, &format!("/r{i}")).await;
        assert_eq!(
            (r.status, &r.body[..]),
            (StatusCode::OK, &b"plain"[..]),
            "GET {i}"
        );
    }
    assert!(t.backend.connections() >= 10, "a connection per answer");
    assert_eq!(
        t.proxy
            .metric(
                "spooky_upstream_requests_total",
                &[("upstream", "app"), ("class", "2xx")],
            )
            .await,
        10.0,
        "every attempt answered, none failed"
    );
}
