//! HTTP/1.1 request framing checks in front of hyper.
//!
//! hyper's parser is lenient where an edge proxy must not be: it merges repeated identical
//! `Content-Length` fields into one, when `Transfer-Encoding` and `Content-Length` come
//! together it drops the length and goes on (RFC 9112 §6.3 allows both), it drops every
//! transfer coding before a final `chunked` (`gzip, chunked`), and it silently cuts a
//! `#fragment` off the target. By the time a request reaches the service these facts are gone.
//! Each is a request-smuggling or confusion set-up (another hop may frame or read the request
//! differently), so Spooky refuses them, as RFC 9112 asks: 400, or 501 for a transfer coding
//! it does not implement (§6.1).
//!
//! [`H1Guard`] sits between the client's byte stream (after TLS) and hyper. It holds each
//! request head back until it is complete, checks it, and then follows the body's framing
//! (fixed length or chunked) byte by byte so that it always knows where the next head starts.
//! A refused head never reaches hyper: in its place hyper reads a harmless synthetic head
//! ([`SYNTHETIC`]), and the guard leaves the refusal in [`Refusals`] under that head's index.
//! HTTP/1.1 answers requests in order, so the service, counting requests, knows the synthetic
//! one and answers it with the refusal's status and `Connection: close` — after every earlier
//! response; nothing pipelined behind it is read. Anything the guard does not understand (a
//! parse error, HTTP/2's preface, a head too large, `CONNECT`) it hands over untouched and
//! stops watching, because hyper then refuses or owns the connection itself; the guard never
//! rejects what it cannot read, so it cannot turn a good request away.
//!
//! The guard also tells the connection's [`ConnClock`] when heads start and end, and when the
//! clock expires it answers `408` itself and ends the stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::adapters::tcp::conn_clock::ConnClock;
use crate::http::headers::has_token;

/// Written to a client whose request head did not arrive within `header_timeout`.
const TIMEOUT_REPLY: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// What hyper reads instead of a refused head; the service answers it from [`Refusals`].
pub const SYNTHETIC: &[u8] = b"GET / HTTP/1.1\r\nhost: refused.invalid\r\n\r\n";

/// Heads larger than hyper's own read buffer limit are hyper's to refuse (431).
const MAX_HEAD: usize = 8192 + 4096 * 100;

/// At most as many header lines as hyper accepts.
const MAX_HEADERS: usize = 100;

/// Why a head was refused (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Content-Length` more than once, even with equal values.
    DuplicateContentLength,
    /// Both `Transfer-Encoding` and `Content-Length`.
    ContentLengthWithTransferEncoding,
    /// A transfer coding before the final `chunked` (`gzip, chunked`): 501.
    UnsupportedTransferCoding,
    /// `chunked` not last, more than once (RFC 9112 §7: a sender never chunks twice), or no
    /// coding at all.
    BadTransferEncoding,
    /// A `#fragment` in the request target (RFC 9112 §3.2: never sent).
    FragmentInTarget,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::DuplicateContentLength => "duplicate_content_length",
            Refusal::ContentLengthWithTransferEncoding => "content_length_with_transfer_encoding",
            Refusal::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Refusal::BadTransferEncoding => "bad_transfer_encoding",
            Refusal::FragmentInTarget => "fragment_in_target",
        }
    }

    /// The status the client is answered with.
    pub fn status(self) -> http::StatusCode {
        match self {
            // RFC 9112 §6.1: a transfer coding the server does not understand.
            Refusal::UnsupportedTransferCoding => http::StatusCode::NOT_IMPLEMENTED,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// Where the guard leaves a refusal for the service: the index (0-based, in arrival order) of
/// the synthetic request that stands for it. The service counts the requests it is given.
#[derive(Debug, Default)]
pub struct Refusals {
    slot: Mutex<Option<(u64, Refusal)>>,
    /// Requests the service was given so far.
    served: AtomicU64,
}

impl Refusals {
    /// Counts a request the service was given; the refusal it stands for, if it is the
    /// synthetic one.
    pub fn next_request(&self) -> Option<Refusal> {
        self.take_for(self.served.fetch_add(1, Ordering::Relaxed))
    }

    /// The refusal the request with this index stands for, if it is the synthetic one.
    pub fn take_for(&self, index: u64) -> Option<Refusal> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        match *slot {
            Some((i, r)) if i == index => {
                *slot = None;
                Some(r)
            }
            _ => None,
        }
    }

    fn put(&self, index: u64, r: Refusal) {
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some((index, r));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Collecting a request head.
    Head,
    /// This many body bytes remain.
    Fixed(u64),
    Chunked(Chunk),
    /// No longer watching: everything passes.
    Pass,
    /// A head was refused: after the poison, the stream ends.
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the chunk size (hex); `digits` counts them.
    Size { size: u64, digits: u8 },
    /// After the size: extensions, up to the end of the line.
    Ext { size: u64 },
    /// Chunk data left.
    Data(u64),
    /// The line end after chunk data.
    DataEnd,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// After the `\r` of the final empty line.
    LastCr,
}

/// The client's byte stream, checked on its way into hyper. Writes pass straight through.
pub struct H1Guard<T> {
    io: T,
    scan: Scan,
    /// Bytes read from the client and not yet handed to hyper.
    buf: BytesMut,
    /// How many bytes at the front of `buf` are checked and may be handed over.
    cleared: usize,
    /// How far past `cleared` the current head was searched for its end (so a head that
    /// arrives a byte at a time is searched once, not once per byte).
    searched: usize,
    /// Where a refusal is left for the service.
    refusals: Arc<Refusals>,
    /// Heads handed to hyper so far (the index of the next one).
    handed: u64,
    /// The connection's timers: told when heads start and end; when they expire, the guard
    /// answers `408` (if a head was awaited) and ends the stream.
    clock: Option<Arc<ConnClock>>,
    /// Bytes of [`TIMEOUT_REPLY`] written so far.
    timeout_written: usize,
}

impl<T> H1Guard<T> {
    pub fn new(io: T, refusals: Arc<Refusals>) -> Self {
        H1Guard {
            io,
            scan: Scan::Head,
            buf: BytesMut::new(),
            cleared: 0,
            searched: 0,
            refusals,
            handed: 0,
            clock: None,
            timeout_written: 0,
        }
    }

    /// Reports head boundaries to `clock` and closes the stream when it expires.
    pub fn with_clock(mut self, clock: Arc<ConnClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// Whether part of a head is held back, waiting for the rest.
    fn partial_head(&self) -> bool {
        self.scan == Scan::Head && self.buf.len() > self.cleared
    }

    /// Checks as much of `buf[cleared..]` as can be checked now.
    fn advance(&mut self) {
        while self.cleared < self.buf.len() {
            match self.scan {
                Scan::Pass | Scan::Refused => {
                    self.cleared = self.buf.len();
                }
                Scan::Head => {
                    if !self.head() {
                        return;
                    }
                }
                Scan::Fixed(left) => {
                    let avail = (self.buf.len() - self.cleared) as u64;
                    let take = avail.min(left);
                    self.cleared += take as usize;
                    self.scan = if take == left {
                        Scan::Head
                    } else {
                        Scan::Fixed(left - take)
                    };
                }
                Scan::Chunked(state) => {
                    self.scan = self.chunked(state);
                }
            }
        }
    }

    /// Parses the head at `cleared`; false while it is incomplete.
    fn head(&mut self) -> bool {
        let bytes = &self.buf[self.cleared..];
        // Parse only when it can decide: once the request line is in (to hand over what is
        // not HTTP/1.x at once), and once the blank line that ends the head is.
        let from = self.searched.saturating_sub(3);
        self.searched = bytes.len();
        let first_line = bytes[from..].contains(&b'\n') && !bytes[..from].contains(&b'\n');
        if !first_line && !ends_head(bytes, from) {
            if bytes.len() <= MAX_HEAD {
                return false;
            }
            self.scan = Scan::Pass;
            return true;
        }
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(bytes, &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if bytes.len() <= MAX_HEAD => {
                return false;
            }
            // Too large, or not HTTP/1.x as httparse reads it (which includes HTTP/2's
            // preface): hyper refuses it or owns it.
            _ => {
                self.scan = Scan::Pass;
                return true;
            }
        };
        let mut lengths = 0usize;
        let mut length = None;
        let mut te = TransferEncoding::default();
        let connect = req.method == Some("CONNECT");
        // A WebSocket handshake, as the service will see it (`http::upgrade::http1_websocket`).
        let (mut websocket, mut upgrade_listed) = (false, false);
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te.add(h.value);
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                websocket |= has_token(h.value, "websocket");
            } else if h.name.eq_ignore_ascii_case("connection") {
                upgrade_listed |= has_token(h.value, "upgrade");
            }
        }
        let refusal = if req.path.is_some_and(|p| p.contains('#')) {
            Some(Refusal::FragmentInTarget)
        } else if te.present && lengths > 0 {
            Some(Refusal::ContentLengthWithTransferEncoding)
        } else if lengths > 1 {
            Some(Refusal::DuplicateContentLength)
        } else if te.present {
            te.refusal()
        } else {
            None
        };
        if let Some(r) = refusal {
            self.buf.truncate(self.cleared);
            self.buf.extend_from_slice(SYNTHETIC);
            self.cleared = self.buf.len();
            self.scan = Scan::Refused;
            self.refusals.put(self.handed, r);
            return true;
        }
        self.cleared += len;
        self.searched = 0;
        self.handed += 1;
        if let Some(c) = &self.clock {
            c.head_complete();
        }
        self.scan = match (te.present, length, lengths) {
            // CONNECT is answered 405 and the connection closed; what follows is not ours.
            _ if connect => Scan::Pass,
            // What follows an accepted upgrade (101) is not HTTP; one that is not accepted
            // closes the connection after its answer (the service says `connection: close`).
            _ if websocket
                && upgrade_listed
                && req.method == Some("GET")
                && !te.present
                && length.is_none_or(|n| n == 0) =>
            {
                Scan::Pass
            }
            (true, _, _) => Scan::Chunked(Chunk::Size { size: 0, digits: 0 }),
            // hyper answers 400 to a bad length.
            (false, None, 1) => Scan::Pass,
            (false, Some(n), _) => Scan::Fixed(n),
            (false, None, _) => Scan::Head,
        };
        true
    }

    /// Follows chunked framing over the unchecked bytes, one step.
    fn chunked(&mut self, state: Chunk) -> Scan {
        if let Chunk::Data(left) = state {
            let avail = (self.buf.len() - self.cleared) as u64;
            let take = avail.min(left);
            self.cleared += take as usize;
            return Scan::Chunked(if take == left {
                Chunk::DataEnd
            } else {
                Chunk::Data(left - take)
            });
        }
        let b = self.buf[self.cleared];
        self.cleared += 1;
        let next = match state {
            Chunk::Size { size, digits } => match (b as char).to_digit(16) {
                Some(d) if digits < 16 => Chunk::Size {
                    size: size * 16 + u64::from(d),
                    digits: digits + 1,
                },
                Some(_) => return Scan::Pass,
                None if digits == 0 => return Scan::Pass,
                None => match b {
                    b'\n' => end_of_size(size),
                    _ => Chunk::Ext { size },
                },
            },
            Chunk::Ext { size } => match b {
                b'\n' => end_of_size(size),
                _ => Chunk::Ext { size },
            },
            // Taken whole, above.
            Chunk::Data(_) => Chunk::DataEnd,
            Chunk::DataEnd => match b {
                b'\n' => Chunk::Size { size: 0, digits: 0 },
                _ => Chunk::DataEnd,
            },
            Chunk::TrailerStart => match b {
                b'\r' => Chunk::LastCr,
                b'\n' => return Scan::Head,
                _ => Chunk::Trailer,
            },
            Chunk::Trailer => match b {
                b'\n' => Chunk::TrailerStart,
                _ => Chunk::Trailer,
            },
            Chunk::LastCr => match b {
                b'\n' => return Scan::Head,
                _ => return Scan::Pass,
            },
        };
        Scan::Chunked(next)
    }
}

/// The `Transfer-Encoding` fields of a head, as a list of codings (RFC 9112 §6.1).
#[derive(Debug, Default)]
struct TransferEncoding {
    present: bool,
    chunked: usize,
    other: bool,
    /// The last coding listed is `chunked`.
    chunked_last: bool,
}

impl TransferEncoding {
    fn add(&mut self, value: &[u8]) {
        self.present = true;
        // RFC 9110 §5.6.1: empty list elements are ignored.
        for coding in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            if coding.is_empty() {
                continue;
            }
            self.chunked_last = coding.eq_ignore_ascii_case(b"chunked");
            if self.chunked_last {
                self.chunked += 1;
            } else {
                self.other = true;
            }
        }
    }

    /// Exactly `chunked` is the only framing Spooky accepts.
    fn refusal(&self) -> Option<Refusal> {
        if !self.chunked_last || self.chunked != 1 {
            // RFC 9112 §6.3: without a final `chunked` the length cannot be known (400);
            // §7: a sender never applies chunked twice.
            Some(Refusal::BadTransferEncoding)
        } else if self.other {
            // §6.1: a coding the server does not implement (`gzip, chunked`) is a 501.
            Some(Refusal::UnsupportedTransferCoding)
        } else {
            None
        }
    }
}

/// Whether `bytes[from..]` holds the blank line that ends a head (`\n\r\n` or `\n\n`, after
/// any empty lines before the request line, which httparse skips).
fn ends_head(bytes: &[u8], from: usize) -> bool {
    let lead = bytes
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let start = from.max(lead);
    bytes.get(start..).is_some_and(|tail| {
        tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
    })
}

fn end_of_size(size: u64) -> Chunk {
    if size == 0 {
        Chunk::TrailerStart
    } else {
        Chunk::Data(size)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for H1Guard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            let expired = this.clock.as_ref().and_then(|c| c.expired_phase());
            if let (Some(phase), 0) = (expired, this.cleared) {
                if phase.awaits_head() || !this.buf.is_empty() {
                    std::task::ready!(this.poll_timeout_reply(cx))?;
                }
                // End of stream: hyper closes the connection.
                return Poll::Ready(Ok(()));
            }
            if this.cleared > 0 {
                let n = this.cleared.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.cleared -= n;
                return Poll::Ready(Ok(()));
            }
            match this.scan {
                // Nothing held back: read straight into hyper's buffer.
                Scan::Pass if this.buf.is_empty() => {
                    return Pin::new(&mut this.io).poll_read(cx, out);
                }
                // Nothing after a refused head is read as HTTP: it is discarded until the
                // service's answer (with `Connection: close`) ends the connection.
                Scan::Refused => loop {
                    let mut sink = [0u8; 4096];
                    let mut rb = ReadBuf::new(&mut sink);
                    std::task::ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
                    if rb.filled().is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                },
                _ => {}
            }
            let partial_before = this.partial_head();
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            if Pin::new(&mut this.io).poll_read(cx, &mut rb)?.is_pending() {
                if let Some(c) = &this.clock {
                    c.wake_on_expiry(cx.waker());
                }
                return Poll::Pending;
            }
            if rb.filled().is_empty() {
                // The client finished; a partial head it left goes to hyper as it is.
                if this.buf.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.scan = Scan::Pass;
            } else {
                this.buf.extend_from_slice(rb.filled());
            }
            this.advance();
            // A head that did not arrive whole in one read starts its timer (one that did
            // costs the clock nothing but `head_complete`).
            if let (false, true, Some(c)) = (partial_before, this.partial_head(), &this.clock) {
                c.head_started();
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> H1Guard<T> {
    /// Writes the whole `408` reply.
    fn poll_timeout_reply(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.timeout_written < TIMEOUT_REPLY.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.io).poll_write(cx, &TIMEOUT_REPLY[self.timeout_written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.timeout_written += n;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for H1Guard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// What hyper would read from `input`, sent in pieces of `step` bytes; and the refusal
    /// left for the request with that index.
    async fn through(input: &[u8], step: usize) -> (Vec<u8>, Option<(u64, Refusal)>) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let refusals = Arc::new(Refusals::default());
        let mut guard = H1Guard::new(server, refusals.clone());
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in input.chunks(step) {
                if client.write_all(piece).await.is_err() {
                    return;
                }
            }
            let _ = client.shutdown().await;
            // Keep the client half open until the guard has read everything.
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        });
        let mut seen = Vec::new();
        guard.read_to_end(&mut seen).await.expect("read");
        drop(guard);
        writer.await.expect("writer");
        let why = (0..8).find_map(|i| refusals.take_for(i).map(|r| (i, r)));
        (seen, why)
    }

    const GOOD: &[u8] = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\nPOST /d HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ,Chunked \r\n\r\n0\r\n\r\n";

    #[tokio::test]
    async fn good_requests_pass_unchanged_whatever_the_read_sizes() {
        for step in [1, 2, 3, 7, 64, 4096] {
            let (seen, why) = through(GOOD, step).await;
            assert_eq!(seen, GOOD, "step {step}");
            assert_eq!(why, None, "step {step}");
        }
    }

    #[tokio::test]
    async fn a_body_that_looks_like_a_bad_head_is_only_a_body() {
        let body = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
        let mut input = format!(
            "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        input.extend_from_slice(body);
        input.extend_from_slice(b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        input.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        input.extend_from_slice(body);
        input.extend_from_slice(b"\r\n0\r\n\r\n");
        for step in [1, 5, 4096] {
            let (seen, why) = through(&input, step).await;
            assert_eq!((seen.len(), why), (input.len(), None), "step {step}");
        }
    }

    #[tokio::test]
    async fn refused_heads_become_the_synthetic_request_after_earlier_ones() {
        let first = b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n";
        let cases: [(&[u8], Refusal); 10] = [
            (
                b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello",
                Refusal::DuplicateContentLength,
            ),
            (
                b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                Refusal::ContentLengthWithTransferEncoding,
            ),
            (
                b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: h\r\nContent-Length: 0\r\n\r\n0\r\n\r\n",
                Refusal::ContentLengthWithTransferEncoding,
            ),
            (
                b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                Refusal::UnsupportedTransferCoding,
            ),
            (
                b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                Refusal::UnsupportedTransferCoding,
            ),
            (
                b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
                Refusal::BadTransferEncoding,
            ),
            (
                b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
                Refusal::BadTransferEncoding,
            ),
            (
                b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                Refusal::BadTransferEncoding,
            ),
            (
                b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \r\n\r\n0\r\n\r\n",
                Refusal::BadTransferEncoding,
            ),
            (
                b"GET /x#frag HTTP/1.1\r\nHost: h\r\n\r\n",
                Refusal::FragmentInTarget,
            ),
        ];
        for (bad, reason) in cases {
            let mut input = first.to_vec();
            input.extend_from_slice(bad);
            input.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n");
            for step in [1, 4096] {
                let (seen, why) = through(&input, step).await;
                let mut expected = first.to_vec();
                expected.extend_from_slice(SYNTHETIC);
                assert_eq!(
                    String::from_utf8_lossy(&seen),
                    String::from_utf8_lossy(&expected),
                    "{reason:?} step {step}"
                );
                assert_eq!(why, Some((1, reason)), "the second request stands for it");
            }
        }
        assert_eq!(
            Refusal::UnsupportedTransferCoding.status(),
            http::StatusCode::NOT_IMPLEMENTED
        );
    }

    /// Found by fuzzing (the harness looked for the refusal among the first 64 requests only):
    /// the synthetic request's index counts every head before it, however many.
    #[tokio::test]
    async fn a_refusal_after_many_pipelined_requests_names_its_own_index() {
        let mut input = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n".repeat(100);
        input.extend_from_slice(b"GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n");
        let refusals = Arc::new(Refusals::default());
        let mut guard = H1Guard::new(
            tokio::io::join(&input[..], tokio::io::sink()),
            refusals.clone(),
        );
        let mut seen = Vec::new();
        guard.read_to_end(&mut seen).await.expect("read");
        assert!(seen.ends_with(SYNTHETIC));
        assert_eq!(refusals.take_for(99), None);
        assert_eq!(refusals.take_for(100), Some(Refusal::FragmentInTarget));
    }

    #[tokio::test]
    async fn what_the_guard_cannot_read_passes_to_hyper() {
        for input in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"[..],
            b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n",
        ] {
            let (seen, why) = through(input, 3).await;
            assert_eq!((seen.as_slice(), why), (input, None));
        }
    }
}
