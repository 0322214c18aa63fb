//! Spooky's own HTTP/1.1 client side, for requests without a body: the request head written
//! and the response read on the exchange's own task, with nothing between them.
//!
//! hyper's client connection runs in a task of its own: each request crosses a channel into
//! it, its response a channel back, every body frame a third, and each crossing wakes a task.
//! A request without a body needs none of that: one write, then a read of the head and, as
//! the client pulls it, of the body. Requests with a body (whose upload must go on while the
//! answer waits for the client: `tests/upstream_pool.rs`) and upgrades stay on hyper's.
//!
//! What it reads, and how (RFC 9112): a status line and up to 100 fields (httparse); `1xx`
//! answers are passed over (a `101` is handed on, with no body, and ends the connection); a
//! field that does not parse, a head longer than `upstream_read_ahead`, conflicting
//! `Content-Length`s or a bad chunk are [`BadResponse`] (502). Bodies: none for `HEAD`, `204` and `304`;
//! chunked when `Transfer-Encoding` ends in `chunked` (trailers passed on as a trailers
//! frame); `Content-Length`; otherwise until the backend closes. A connection is reused when
//! the body ended where its framing said, nothing followed it, and neither side asked for
//! close.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Request, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use crate::body::{BoxError, RequestBody};
use crate::http::headers::has_token;
use crate::upstreams::tls::BackendStream;

/// Most fields in a response head or a trailer section (hyper's limit too).
const MAX_FIELDS: usize = 100;
/// The first read of a response.
const FIRST_READ: usize = 8 * 1024;
/// Read again into the same buffer only while this much room is left in it.
const MIN_ROOM: usize = 1024;
/// The longest chunk-size line (size, extensions).
const MAX_CHUNK_LINE: usize = 4096;

/// A backend's answer that is not HTTP/1.1 as RFC 9112 frames it.
#[derive(Debug)]
pub struct BadResponse(&'static str);

impl std::fmt::Display for BadResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed HTTP/1.1 response: {}", self.0)
    }
}

impl std::error::Error for BadResponse {}

/// Why a request on a connection got no response head.
pub(super) enum Failure {
    /// Not a byte of a response came (the write failed, or the connection closed or reset
    /// first): on a connection that served before, the backend may have closed it while
    /// idle, and an idempotent request can go again on another.
    Unanswered(io::Error),
    /// Part of a response came and then the connection failed.
    Io(io::Error),
    Bad(BadResponse),
}

/// One HTTP/1.1 connection to a backend, ours to drive.
pub(super) struct Conn {
    io: BackendStream,
    /// Bytes read and not yet handed on; empty (no allocation) while idle.
    buf: BytesMut,
    /// How much the next read may bring: doubles while reads fill it, up to `max`.
    read_size: usize,
    /// `upstream_read_ahead`: the longest response head, the largest read.
    max: usize,
}

/// A response head, and how to read its body.
pub(super) struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    framing: Framing,
    /// The connection may carry another request once this body is read.
    keep_alive: bool,
}

#[derive(Clone, Copy)]
enum Framing {
    /// Read to the end: the connection is done with this response.
    Ended,
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes the connection.
    Close,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
    /// The trailers went out: the body ends.
    Done,
}

enum Step {
    Frame(Frame<Bytes>),
    /// More bytes are needed.
    More,
    End,
}

impl Conn {
    pub fn new(io: BackendStream, max: usize) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            read_size: FIRST_READ.min(max),
            max,
        }
    }

    pub fn into_io(self) -> BackendStream {
        self.io
    }

    /// Whether an idle connection can take a request: not closed by the backend, nothing
    /// unasked-for sent on it. One poll with a no-op waker; a socket with nothing new costs
    /// no system call (tokio knows it has nothing to read).
    pub fn alive(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Ready means the backend closed it, failed it or spoke out of turn: none can serve.
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }

    /// Writes `head` (a request without a body) and reads the response head. `head_request`:
    /// the request was a `HEAD` (its answer has no body whatever its fields say).
    pub async fn send(&mut self, head: &[u8], head_request: bool) -> Result<Head, Failure> {
        self.io.write_all(head).await.map_err(Failure::Unanswered)?;
        self.io.flush().await.map_err(Failure::Unanswered)?;
        let mut answered = false;
        loop {
            if !self.buf.is_empty() {
                answered = true;
                match parse_head(&mut self.buf, head_request).map_err(Failure::Bad)? {
                    Parsed::Head(h) => return Ok(h),
                    Parsed::Informational => continue,
                    Parsed::Partial if self.buf.len() >= self.max => {
                        return Err(Failure::Bad(BadResponse(
                            "head longer than upstream_read_ahead",
                        )));
                    }
                    Parsed::Partial => {}
                }
            }
            match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) if !answered => {
                    return Err(Failure::Unanswered(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(0) => {
                    return Err(Failure::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backend closed the connection inside a response head",
                    )));
                }
                Ok(_) => {}
                Err(e) if !answered => return Err(Failure::Unanswered(e)),
                Err(e) => return Err(Failure::Io(e)),
            }
        }
    }

    /// Reads what the socket has into `buf`.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < MIN_ROOM {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if n == room && self.read_size < self.max {
            self.read_size = (self.read_size * 2).min(self.max);
        }
        Poll::Ready(Ok(n))
    }
}

/// The request head as hyper writes one without a body: origin-form target, the fields as
/// they are (names lower-case), no `Transfer-Encoding`.
pub(super) fn encode_head(req: &Request<RequestBody>, dst: &mut Vec<u8>) {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let fields: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    dst.reserve(req.method().as_str().len() + target.len() + fields + 13);
    dst.extend_from_slice(req.method().as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(target.as_bytes());
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if name == TRANSFER_ENCODING {
            continue;
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
}

enum Parsed {
    Head(Head),
    /// A `1xx` (not `101`) was read and passed over.
    Informational,
    Partial,
}

fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Parsed, BadResponse> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut res = httparse::Response::new(&mut slots);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(BadResponse("more than 100 fields")),
        Err(_) => return Err(BadResponse("the head does not parse")),
    };
    let status = res
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(BadResponse("bad status code"))?;
    // A `101` is handed on (dispatch answers a `101` nobody asked for with a 502); what
    // follows it on the connection is another protocol, so the connection is done.
    let switched = status == StatusCode::SWITCHING_PROTOCOLS;
    if status.is_informational() && !switched {
        buf.advance(len);
        return Ok(Parsed::Informational);
    }
    let version = if res.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // The fields' values share one copy of the head: the read buffer stays the connection's
    // alone, and a value kept long (an HPACK table entry) holds a few hundred bytes, not it.
    let block = Bytes::copy_from_slice(&buf[..len]);
    let base = buf.as_ptr() as usize;
    let mut headers = HeaderMap::with_capacity(res.headers.len());
    for field in res.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| BadResponse("bad field name"))?;
        let start = field.value.as_ptr() as usize - base;
        let value = HeaderValue::from_maybe_shared(block.slice(start..start + field.value.len()))
            .map_err(|_| BadResponse("bad field value"))?;
        headers.append(name, value);
    }
    buf.advance(len);
    let (framing, framed_clean) = if switched {
        (Framing::Ended, false)
    } else {
        framing(status, head_request, &headers)?
    };
    let keep_alive = framed_clean && keeps_alive(version, &headers);
    Ok(Parsed::Head(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

/// How the body is delimited (RFC 9112 §6.3), and whether that leaves the connection usable.
fn framing(
    status: StatusCode,
    head_request: bool,
    headers: &HeaderMap,
) -> Result<(Framing, bool), BadResponse> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Ended, true));
    }
    if let Some(last) = headers.get_all(TRANSFER_ENCODING).iter().next_back() {
        let chunked = last
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        // With both, Transfer-Encoding wins and the connection is not trusted again.
        let clean = !headers.contains_key(CONTENT_LENGTH);
        return Ok(if chunked {
            (Framing::Chunked(Chunk::Size), clean)
        } else {
            (Framing::Close, false)
        });
    }
    match content_length(headers)? {
        Some(0) => Ok((Framing::Ended, true)),
        Some(n) => Ok((Framing::Length(n), true)),
        None => Ok((Framing::Close, false)),
    }
}

/// Every `Content-Length` value, which must agree (lists such as `5, 5` included).
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, BadResponse> {
    let mut found = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let digits = part.trim_ascii();
            if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
                return Err(BadResponse("bad Content-Length"));
            }
            let n = digits
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if found.is_some_and(|f| f != n) {
                return Err(BadResponse("conflicting Content-Length values"));
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token| {
        headers
            .get_all(CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), token))
    };
    if version == Version::HTTP_10 {
        has("keep-alive")
    } else {
        !has("close")
    }
}

/// A response body being read from its connection.
pub(super) struct Reading {
    conn: Conn,
    framing: Framing,
    keep_alive: bool,
}

impl Reading {
    pub fn new(conn: Conn, head: &Head) -> Reading {
        Reading {
            conn,
            framing: head.framing,
            keep_alive: head.keep_alive,
        }
    }

    pub fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Ended)
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Ended => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    /// The connection, if the body was read to its end and the connection can serve again.
    pub fn into_reusable(self) -> Option<Conn> {
        let mut conn = self.conn;
        let clean =
            matches!(self.framing, Framing::Ended) && self.keep_alive && conn.buf.is_empty();
        clean.then(|| {
            // Idle connections hold no buffer (the body's frames may still share this one).
            conn.buf = BytesMut::new();
            conn
        })
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let buf = &mut self.conn.buf;
            let step = match &mut self.framing {
                Framing::Ended => Step::End,
                Framing::Length(_) if buf.is_empty() => Step::More,
                Framing::Length(left) => {
                    let take = (*left).min(buf.len() as u64);
                    *left -= take;
                    let data = buf.split_to(take as usize).freeze();
                    if *left == 0 {
                        self.framing = Framing::Ended;
                    }
                    Step::Frame(Frame::data(data))
                }
                Framing::Chunked(chunk) => match decode_chunked(chunk, buf, self.conn.max) {
                    Ok(step) => step,
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                },
                Framing::Close if buf.is_empty() => Step::More,
                Framing::Close => Step::Frame(Frame::data(buf.split().freeze())),
            };
            match step {
                Step::Frame(f) => {
                    if f.is_trailers() {
                        // Nothing follows trailers: a reader stops at them.
                        self.framing = Framing::Ended;
                    }
                    return Poll::Ready(Some(Ok(f)));
                }
                Step::End => {
                    self.framing = Framing::Ended;
                    return Poll::Ready(None);
                }
                Step::More => match ready!(self.conn.poll_fill(cx)) {
                    Ok(0) if matches!(self.framing, Framing::Close) => {
                        self.framing = Framing::Ended;
                        self.keep_alive = false;
                        return Poll::Ready(None);
                    }
                    Ok(0) => {
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the backend closed the connection before the body's end",
                        )
                        .into())));
                    }
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                },
            }
        }
    }
}

/// One step of a chunked body: a data frame, the trailers, the end, or a need for more bytes.
fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut, max: usize) -> Result<Step, BadResponse> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(BadResponse("chunk-size line too long"));
                    }
                    return Ok(Step::More);
                };
                if nl > MAX_CHUNK_LINE {
                    return Err(BadResponse("chunk-size line too long"));
                }
                let size = chunk_size(&buf[..nl])?;
                buf.advance(nl + 1);
                *state = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(_) if buf.is_empty() => return Ok(Step::More),
            Chunk::Data(left) => {
                let take = left.min(buf.len() as u64);
                *state = if take == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - take)
                };
                return Ok(Step::Frame(Frame::data(
                    buf.split_to(take as usize).freeze(),
                )));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(BadResponse("no CRLF after a chunk's data"));
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    return Ok(Step::End);
                }
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    if buf.len() > max {
                        return Err(BadResponse("trailers longer than upstream_read_ahead"));
                    }
                    return Ok(Step::More);
                };
                let trailers = parse_trailers(&buf[..end + 4])?;
                buf.advance(end + 4);
                *state = Chunk::Done;
                return Ok(Step::Frame(Frame::trailers(trailers)));
            }
            Chunk::Done => return Ok(Step::End),
        }
    }
}

/// A chunk-size line (without its LF): hex digits, then extensions, which are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, BadResponse> {
    let line = line
        .strip_suffix(b"\r")
        .ok_or(BadResponse("chunk-size line without CRLF"))?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(BadResponse("chunk size is not hex"));
    }
    if digits > 16 {
        return Err(BadResponse("chunk size too large"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) || rest.iter().any(|&b| b == b'\r' || b == 0) {
        return Err(BadResponse("bad chunk extension"));
    }
    Ok(line[..digits].iter().fold(0u64, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        (n << 4) | u64::from(v)
    }))
}

/// A trailer section (its fields and the empty line after them).
fn parse_trailers(block: &[u8]) -> Result<HeaderMap, BadResponse> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let fields = match httparse::parse_headers(block, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err(BadResponse("trailers do not parse")),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| BadResponse("bad trailer name"))?;
        let value =
            HeaderValue::from_bytes(field.value).map_err(|_| BadResponse("bad trailer value"))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests;
