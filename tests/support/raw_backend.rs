//! A backend on a raw socket that records exactly what reached it: each request's head, its
//! body bytes as they arrived on the wire, and whether the request was complete (its framing
//! finished) or cut off. It answers `200 ok` to every complete request, or `101` without any
//! `Upgrade` header to a path starting `/answer-101` (a misbehaving backend).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// One request as the backend received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// `METHOD target HTTP/1.1`.
    pub line: String,
    /// Header fields, names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body's bytes as sent (chunk framing included when chunked).
    pub body: Vec<u8>,
    /// Whether the body's framing completed before the connection ended.
    pub complete: bool,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
pub struct RawState {
    pub requests: Mutex<Vec<Received>>,
    /// Request heads parsed so far (a request is recorded only once its body ends).
    pub heads: std::sync::atomic::AtomicUsize,
    /// Connections that ended.
    pub closed: Mutex<usize>,
    pub changed: Notify,
}

impl RawState {
    /// Every request so far, taken out.
    pub fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.requests.lock().expect("lock"))
    }

    fn push(&self, r: Received) {
        self.requests.lock().expect("lock").push(r);
        self.changed.notify_waiters();
    }

    /// Waits (bounded) until `f` holds.
    pub async fn wait_until(&self, what: &str, f: impl Fn(&RawState) -> bool) {
        super::wait_until(&self.changed, &format!("raw backend: {what}"), || f(self)).await;
    }
}

pub struct RawBackend {
    pub addr: SocketAddr,
    pub state: Arc<RawState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    pub async fn start() -> RawBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(RawState::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, st.clone()));
            }
        });
        RawBackend { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn serve(mut s: tokio::net::TcpStream, st: Arc<RawState>) {
    let mut buf = Vec::new();
    'conn: loop {
        // The head.
        let (received, body_from) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let r = Received {
                    line: format!(
                        "{} {} HTTP/1.{}",
                        req.method.unwrap_or(""),
                        req.path.unwrap_or(""),
                        req.version.unwrap_or(1)
                    ),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                    body: Vec::new(),
                    complete: false,
                };
                st.heads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                st.changed.notify_waiters();
                break (r, n);
            }
            if !read_more(&mut s, &mut buf).await {
                break 'conn;
            }
        };
        buf.drain(..body_from);
        let mut r = received;
        // The body, by its framing.
        let chunked = r
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let length: usize = r
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let end = loop {
            let end = if chunked {
                chunked_end(&buf)
            } else {
                (buf.len() >= length).then_some(length)
            };
            if let Some(end) = end {
                break end;
            }
            if !read_more(&mut s, &mut buf).await {
                r.body = std::mem::take(&mut buf);
                st.push(r);
                break 'conn;
            }
        };
        r.body = buf.drain(..end).collect();
        r.complete = true;
        let answer: &[u8] = if r
            .line
            .split(' ')
            .nth(1)
            .is_some_and(|p| p.starts_with("/answer-101"))
        {
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        };
        st.push(r);
        if s.write_all(answer).await.is_err() {
            break;
        }
    }
    *st.closed.lock().expect("lock") += 1;
    st.changed.notify_waiters();
}

async fn read_more(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Where a complete chunked body ends in `buf` (strict: hex sizes, CRLF after data, no
/// trailers), if it is all there.
fn chunked_end(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&buf[at..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                let e = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
                let empty = e == at;
                at = e + 2;
                if empty {
                    return Some(at);
                }
            }
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        at += size + 2;
    }
}
