//! HTTP/1.1 request framing checks in front of hyper.
//!
//! hyper's parser is lenient where an edge proxy must not be: it merges repeated identical
//! `Content-Length` fields into one, and when `Transfer-Encoding` and `Content-Length` come
//! together it drops the length and goes on (RFC 9112 §6.3 allows both). By the time a request
//! reaches the service both facts are gone. Either one is the classic request-smuggling set-up
//! (another hop may frame the body by the other header), so Spooky refuses them with 400 and
//! closes the connection, as the hygiene rules ask.
//!
//! [`H1Guard`] sits between the client's byte stream (after TLS) and hyper. It holds each
//! request head back until it is complete, checks it, and then follows the body's framing
//! (fixed length or chunked) byte by byte so that it always knows where the next head starts.
//! A refused head never reaches hyper: in its place hyper reads a head it cannot parse, answers
//! it with its own 400 after every earlier response, and the stream then ends, so nothing
//! pipelined behind it runs. Anything the guard does not understand (a parse error, an
//! upgrade, HTTP/2's preface, a head too large) it hands over untouched and stops watching,
//! because hyper then refuses or owns the connection itself; the guard never rejects what it
//! cannot read, so it cannot turn a good request away.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn_clock::ConnClock;

/// Written to a client whose request head did not arrive within `header_timeout`.
const TIMEOUT_REPLY: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// What hyper reads instead of a refused head: an invalid method token, answered 400.
const POISON: &[u8] = b"\x01 / HTTP/1.1\r\n\r\n";

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
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::DuplicateContentLength => "duplicate_content_length",
            Refusal::ContentLengthWithTransferEncoding => "content_length_with_transfer_encoding",
        }
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
    /// Called once when a head is refused.
    on_refuse: Option<Box<dyn FnOnce(Refusal) + Send>>,
    /// The connection's timers: told when heads start and end; when they expire, the guard
    /// answers `408` (if a head was awaited) and ends the stream.
    clock: Option<Arc<ConnClock>>,
    /// Bytes of [`TIMEOUT_REPLY`] written so far.
    timeout_written: usize,
}

impl<T> H1Guard<T> {
    pub fn new(io: T, on_refuse: impl FnOnce(Refusal) + Send + 'static) -> Self {
        H1Guard {
            io,
            scan: Scan::Head,
            buf: BytesMut::new(),
            cleared: 0,
            searched: 0,
            on_refuse: Some(Box::new(on_refuse)),
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
        let mut chunked = None;
        let mut upgrade = req.method == Some("CONNECT");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // As hyper reads it: the last field decides whether chunked is final.
                chunked = Some(
                    h.value
                        .rsplit(|b| *b == b',')
                        .next()
                        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked")),
                );
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        let refusal = if chunked.is_some() && lengths > 0 {
            Some(Refusal::ContentLengthWithTransferEncoding)
        } else if lengths > 1 {
            Some(Refusal::DuplicateContentLength)
        } else {
            None
        };
        if let Some(r) = refusal {
            self.buf.truncate(self.cleared);
            self.buf.extend_from_slice(POISON);
            self.cleared = self.buf.len();
            self.scan = Scan::Refused;
            if let Some(f) = self.on_refuse.take() {
                f(r);
            }
            return true;
        }
        self.cleared += len;
        self.searched = 0;
        if let Some(c) = &self.clock {
            c.head_complete();
        }
        self.scan = match (chunked, length, lengths) {
            // After an upgrade the bytes are not HTTP/1.1 any more.
            _ if upgrade => Scan::Pass,
            (Some(true), _, _) => Scan::Chunked(Chunk::Size { size: 0, digits: 0 }),
            // hyper answers 400 to a transfer coding that is not chunked, or a bad length.
            (Some(false), _, _) | (None, None, 1) => Scan::Pass,
            (None, Some(n), _) => Scan::Fixed(n),
            (None, None, _) => Scan::Head,
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
                Scan::Refused => return Poll::Ready(Ok(())),
                _ => {}
            }
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            if Pin::new(&mut this.io).poll_read(cx, &mut rb)?.is_pending() {
                if let Some(c) = &this.clock {
                    c.wake_on_expiry(cx.waker());
                }
                return Poll::Pending;
            }
            // The first byte of a new head starts its timer.
            if let (Scan::Head, true, false, Some(c)) = (
                this.scan,
                this.buf.is_empty(),
                rb.filled().is_empty(),
                &this.clock,
            ) {
                c.head_started();
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
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncReadExt;

    /// What hyper would read from `input`, sent in pieces of `step` bytes; and the refusal.
    async fn through(input: &[u8], step: usize) -> (Vec<u8>, Option<Refusal>) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let refused = Arc::new(Mutex::new(None));
        let r = refused.clone();
        let mut guard = H1Guard::new(server, move |why| {
            *r.lock().expect("lock") = Some(why);
        });
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // A refusal ends the guard's side early: writes may then fail.
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
        let why = *refused.lock().expect("lock");
        (seen, why)
    }

    const GOOD: &[u8] = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n";

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
    async fn duplicate_lengths_and_length_with_chunked_are_refused_after_earlier_requests() {
        let first = b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n";
        let cases: [(&[u8], Refusal); 3] = [
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
        ];
        for (bad, reason) in cases {
            let mut input = first.to_vec();
            input.extend_from_slice(bad);
            input.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n");
            for step in [1, 4096] {
                let (seen, why) = through(&input, step).await;
                let mut expected = first.to_vec();
                expected.extend_from_slice(POISON);
                assert_eq!(seen, expected, "{reason:?} step {step}");
                assert_eq!(why, Some(reason));
            }
        }
    }

    #[tokio::test]
    async fn what_the_guard_cannot_read_passes_to_hyper() {
        for input in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"[..],
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n",
        ] {
            let (seen, why) = through(input, 3).await;
            assert_eq!((seen.as_slice(), why), (input, None));
        }
    }
}
