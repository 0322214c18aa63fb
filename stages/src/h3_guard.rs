//! HTTP/3 request checks that h3 cannot make: field order, repeated pseudo-headers, `:status`
//! in a request, and pseudo-headers in trailers.
//!
//! h3 0.0.8 decodes a request's HEADERS frame into a parsed head with no field order, keeping
//! the last of repeated pseudo-headers. RFC 9114 §4.3 makes a request malformed when a
//! pseudo-header follows a regular field or appears twice (§4.3.1: "exactly one value"), to be
//! answered with a stream error H3_MESSAGE_ERROR (§4.1.2).
//!
//! [`GuardedConn`] wraps the QUIC connection handed to h3. On each request stream it holds the
//! bytes back until the first HEADERS frame is complete and reads the field lines' *names* from
//! the QPACK block (static-table references and literal names; values are skipped by length).
//! A malformed head is replaced by an empty field section, which h3 refuses as it refuses any
//! head without `:method` — the stream is reset with H3_MESSAGE_ERROR and the connection goes
//! on. After the first HEADERS frame, or for anything it cannot read (dynamic-table references,
//! which Spooky does not enable; a head larger than the limit; a stream that starts with
//! something else), the guard steps aside and h3 decides, so it never refuses what it did not
//! fully read.
//!
//! After a good head the guard follows the stream's frames: DATA payloads pass as they arrive
//! (only frame headers are read), and a trailing HEADERS frame is held until whole. Trailers
//! naming a pseudo-header (RFC 9114 §4.3), which h3 would silently drop, are replaced by a field
//! section h3 refuses with H3_MESSAGE_ERROR; the request body then fails as the client's error.

use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};

/// What replaces a malformed HEADERS frame: a HEADERS frame with an empty field section.
const EMPTY_HEADERS: &[u8] = &[0x01, 0x02, 0x00, 0x00];

/// Why a head was refused (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    PseudoAfterField,
    RepeatedPseudo,
    /// `:status` is a response pseudo-header (RFC 9114 §4.3.1: a request with it is
    /// malformed); h3 0.0.8 would ignore it.
    ResponsePseudoInRequest,
    /// A pseudo-header in the request's trailers (RFC 9114 §4.3); h3 0.0.8 drops it.
    PseudoInTrailers,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::PseudoAfterField => "pseudo_after_field",
            Refusal::RepeatedPseudo => "repeated_pseudo",
            Refusal::ResponsePseudoInRequest => "status_in_request",
            Refusal::PseudoInTrailers => "pseudo_in_trailers",
        }
    }
}

/// Called for each refused head.
pub type OnRefuse = std::sync::Arc<dyn Fn(Refusal) + Send + Sync>;

/// A QUIC connection whose request streams are checked before h3 reads them.
pub struct GuardedConn {
    inner: h3_quinn::Connection,
    /// Opens the server's own streams for h3, as the connection itself and as its opener.
    opener: GuardedOpen,
    limit: usize,
    on_refuse: OnRefuse,
}

impl GuardedConn {
    /// `limit`: the largest head (in bytes of the stream) the guard waits for.
    pub fn new(conn: quinn::Connection, limit: usize, on_refuse: OnRefuse) -> Self {
        let inner = h3_quinn::Connection::new(conn);
        let opener = GuardedOpen(<h3_quinn::Connection as quic::Connection<Bytes>>::opener(
            &inner,
        ));
        GuardedConn {
            inner,
            opener,
            limit,
            on_refuse,
        }
    }
}

impl quic::Connection<Bytes> for GuardedConn {
    type RecvStream = h3_quinn::RecvStream;
    type OpenStreams = GuardedOpen;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        <h3_quinn::Connection as quic::Connection<Bytes>>::poll_accept_recv(&mut self.inner, cx)
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        let stream = std::task::ready!(
            <h3_quinn::Connection as quic::Connection<Bytes>>::poll_accept_bidi(
                &mut self.inner,
                cx
            )
        )?;
        Poll::Ready(Ok(Guarded {
            inner: stream,
            scan: Scan::new(self.limit, self.on_refuse.clone()),
        }))
    }

    fn opener(&self) -> Self::OpenStreams {
        self.opener.clone()
    }
}

impl quic::OpenStreams<Bytes> for GuardedConn {
    type BidiStream = GuardedBidi;
    type SendStream = h3_quinn::SendStream<Bytes>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        self.opener.poll_open_bidi(cx)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        self.opener.poll_open_send(cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        self.opener.close(code, reason)
    }
}

/// The connection's stream opener (a server opens only its control and QPACK streams; a
/// bidirectional stream it opened is not a request to check).
#[derive(Clone)]
pub struct GuardedOpen(h3_quinn::OpenStreams);

impl quic::OpenStreams<Bytes> for GuardedOpen {
    type BidiStream = GuardedBidi;
    type SendStream = h3_quinn::SendStream<Bytes>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        let stream = std::task::ready!(
            <h3_quinn::OpenStreams as quic::OpenStreams<Bytes>>::poll_open_bidi(&mut self.0, cx)
        )?;
        Poll::Ready(Ok(Guarded {
            inner: stream,
            scan: Scan::passing(),
        }))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        <h3_quinn::OpenStreams as quic::OpenStreams<Bytes>>::poll_open_send(&mut self.0, cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        <h3_quinn::OpenStreams as quic::OpenStreams<Bytes>>::close(&mut self.0, code, reason)
    }
}

/// A stream checked on its way into h3: a request stream, or its receiving half once h3
/// split it off (the check goes with it).
pub struct Guarded<S> {
    inner: S,
    scan: Scan,
}

/// A request stream.
pub type GuardedBidi = Guarded<h3_quinn::BidiStream<Bytes>>;

/// The receiving half of a request stream.
pub type GuardedRecv = Guarded<h3_quinn::RecvStream>;

impl quic::BidiStream<Bytes> for GuardedBidi {
    type SendStream = h3_quinn::SendStream<Bytes>;
    type RecvStream = GuardedRecv;

    fn split(self) -> (Self::SendStream, Self::RecvStream) {
        let (send, recv) = self.inner.split();
        (
            send,
            Guarded {
                inner: recv,
                scan: self.scan,
            },
        )
    }
}

impl<S: quic::RecvStream<Buf = Bytes>> quic::RecvStream for Guarded<S> {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let inner = &mut self.inner;
        self.scan.poll(cx, |cx| inner.poll_data(cx))
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code)
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

impl quic::SendStream<Bytes> for GuardedBidi {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.inner.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.inner.reset(reset_code)
    }

    fn send_id(&self) -> StreamId {
        self.inner.send_id()
    }
}

/// What the scan of one stream is doing.
enum Mode {
    /// Holding bytes back until the first HEADERS frame is complete.
    Head(BytesMut),
    /// Following the frames after the head: DATA (and unknown) payloads pass as they come;
    /// a trailing HEADERS frame is held until whole and checked.
    Body {
        /// Payload bytes of the current frame still to pass.
        skip: u64,
        /// An incomplete frame header or trailers frame, held back.
        partial: BytesMut,
    },
    /// Not watching any more: everything passes.
    Pass,
}

/// The check of one request stream: its head, then its trailers.
struct Scan {
    mode: Mode,
    /// Checked bytes to hand to h3 before reading on.
    ready: Option<Bytes>,
    limit: usize,
    on_refuse: Option<OnRefuse>,
}

impl Scan {
    fn new(limit: usize, on_refuse: OnRefuse) -> Scan {
        Scan {
            mode: Mode::Head(BytesMut::new()),
            ready: None,
            limit,
            on_refuse: Some(on_refuse),
        }
    }

    fn passing() -> Scan {
        Scan {
            mode: Mode::Pass,
            ready: None,
            limit: 0,
            on_refuse: None,
        }
    }

    fn refuse(&mut self, why: Refusal) {
        if let Some(f) = self.on_refuse.take() {
            f(why);
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        mut read: impl FnMut(&mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        loop {
            if let Some(b) = self.ready.take() {
                return Poll::Ready(Ok(Some(b)));
            }
            if let Mode::Pass = self.mode {
                return read(cx);
            }
            let chunk = match std::task::ready!(read(cx)) {
                Err(e) => {
                    self.mode = Mode::Pass;
                    return Poll::Ready(Err(e));
                }
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    // The stream ended inside a frame: h3 decides what that means.
                    let rest = match std::mem::replace(&mut self.mode, Mode::Pass) {
                        Mode::Head(held) | Mode::Body { partial: held, .. } => held.freeze(),
                        Mode::Pass => Bytes::new(),
                    };
                    if rest.is_empty() {
                        return Poll::Ready(Ok(None));
                    }
                    self.ready = Some(rest);
                    continue;
                }
            };
            let out = match &mut self.mode {
                Mode::Head(held) => {
                    if held.is_empty()
                        && let Some(end) = whole_and_well_formed(&chunk, self.limit)
                    {
                        // The usual case: the first chunk holds the whole head, which is
                        // fine: it goes on as it is, uncopied; what follows it is followed.
                        self.body_after_head(chunk, end)
                    } else {
                        held.extend_from_slice(&chunk);
                        match first_headers(held) {
                            Found::NeedMore if held.len() <= self.limit => continue,
                            // Too large (decided by where the frame ends, never by how much
                            // was read so far), or not a request the guard can read.
                            Found::NeedMore | Found::Other => {
                                let held = std::mem::take(held).freeze();
                                self.mode = Mode::Pass;
                                held
                            }
                            Found::Headers { end, .. } if end > self.limit => {
                                let held = std::mem::take(held).freeze();
                                self.mode = Mode::Pass;
                                held
                            }
                            Found::Headers { frame, start, end } => {
                                let held = std::mem::take(held).freeze();
                                match check_fields(&held[start..end]) {
                                    Ok(()) => self.body_after_head(held, end),
                                    Err(why) => {
                                        // h3 resets the stream on the empty head.
                                        let mut fixed = BytesMut::with_capacity(held.len());
                                        fixed.extend_from_slice(&held[..frame]);
                                        fixed.extend_from_slice(EMPTY_HEADERS);
                                        fixed.extend_from_slice(&held[end..]);
                                        self.mode = Mode::Pass;
                                        self.refuse(why);
                                        fixed.freeze()
                                    }
                                }
                            }
                        }
                    }
                }
                Mode::Body { .. } => self.follow(chunk),
                Mode::Pass => chunk,
            };
            if !out.is_empty() {
                return Poll::Ready(Ok(Some(out)));
            }
        }
    }

    /// `bytes` holds the checked head up to `end`: hands the head on, and follows the rest.
    fn body_after_head(&mut self, bytes: Bytes, end: usize) -> Bytes {
        self.mode = Mode::Body {
            skip: 0,
            partial: BytesMut::new(),
        };
        let rest = self.follow(bytes.slice(end..));
        if rest.is_empty() {
            return bytes.slice(..end);
        }
        self.ready = Some(rest);
        bytes.slice(..end)
    }

    /// Follows body frames over `chunk`; what may be handed to h3 now.
    fn follow(&mut self, chunk: Bytes) -> Bytes {
        let Mode::Body { skip, partial } = &mut self.mode else {
            return chunk;
        };
        let data = if partial.is_empty() {
            chunk
        } else {
            partial.extend_from_slice(&chunk);
            std::mem::take(partial).freeze()
        };
        let mut at = 0;
        loop {
            if *skip > 0 {
                let take = (*skip).min((data.len() - at) as u64);
                at += take as usize;
                *skip -= take;
            }
            if at == data.len() {
                return data;
            }
            let Some((kind, n)) = varint(&data[at..]) else {
                partial.extend_from_slice(&data[at..]);
                return data.slice(..at);
            };
            let Some((len, m)) = varint(&data[at + n..]) else {
                partial.extend_from_slice(&data[at..]);
                return data.slice(..at);
            };
            let start = at + n + m;
            if kind != 0x01 {
                // DATA, or a frame h3 judges: its payload passes.
                *skip = len;
                at = start;
                continue;
            }
            // Trailers: held until whole, then checked; nothing known may follow them. Too
            // large ones (by their declared end, whatever has arrived) are h3's.
            let end = usize::try_from(len)
                .ok()
                .and_then(|l| start.checked_add(l))
                .filter(|end| end - at <= self.limit);
            match end {
                Some(end) if end <= data.len() => {
                    let pseudo = has_pseudo(&data[start..end]);
                    self.mode = Mode::Pass;
                    if !pseudo {
                        return data;
                    }
                    // RFC 9114 §4.3: pseudo-headers are not allowed in trailers. h3 would drop
                    // them silently; an unknown pseudo name makes it refuse the trailers
                    // (H3_MESSAGE_ERROR).
                    let mut fixed = BytesMut::with_capacity(data.len());
                    fixed.extend_from_slice(&data[..at]);
                    fixed.extend_from_slice(BAD_TRAILERS);
                    fixed.extend_from_slice(&data[end..]);
                    self.refuse(Refusal::PseudoInTrailers);
                    return fixed.freeze();
                }
                Some(_) => {
                    partial.extend_from_slice(&data[at..]);
                    return data.slice(..at);
                }
                None => {
                    self.mode = Mode::Pass;
                    return data;
                }
            }
        }
    }
}

/// Runs the request-stream check over `input` read in pieces of `step` bytes, returning what
/// h3 would read and the refusal, if any. For the fuzz targets and tests: the check runs
/// without a QUIC stream.
#[doc(hidden)]
pub fn scan_bytes(input: &[u8], step: usize, limit: usize) -> (Vec<u8>, Option<Refusal>) {
    let refused = std::sync::Arc::new(std::sync::Mutex::new(None));
    let r = refused.clone();
    let mut scan = Scan::new(
        limit,
        std::sync::Arc::new(move |why| {
            if let Ok(mut slot) = r.lock() {
                *slot = Some(why);
            }
        }),
    );
    let mut pieces = input.chunks(step.max(1)).map(Bytes::copy_from_slice);
    let mut out = Vec::new();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    while let Poll::Ready(Ok(Some(b))) = scan.poll(&mut cx, |_| Poll::Ready(Ok(pieces.next()))) {
        out.extend_from_slice(&b);
    }
    let why = refused.lock().ok().and_then(|s| *s);
    (out, why)
}

/// What replaces trailers that carry a pseudo-header: a field section with the unknown
/// pseudo-header `:x`, which h3 refuses with H3_MESSAGE_ERROR.
const BAD_TRAILERS: &[u8] = &[0x01, 0x06, 0x00, 0x00, 0x22, b':', b'x', 0x00];

/// Whether a QPACK field section (readable without the dynamic table) names a pseudo-header.
fn has_pseudo(block: &[u8]) -> bool {
    let Some(mut b) = fields_after_prefix(block) else {
        return false;
    };
    while let Some(&first) = b.first() {
        match field_line(b, first) {
            Some((Name::Pseudo(_), _)) => return true,
            Some((Name::Regular, rest)) => b = rest,
            None => return false,
        }
    }
    false
}

/// Where a whole first HEADERS frame at the start of `buf` ends, if it ends within `limit` and
/// its fields are in order, unrepeated and a request's.
fn whole_and_well_formed(buf: &[u8], limit: usize) -> Option<usize> {
    match first_headers(buf) {
        Found::Headers { start, end, .. }
            if end <= limit && check_fields(&buf[start..end]).is_ok() =>
        {
            Some(end)
        }
        _ => None,
    }
}

enum Found {
    NeedMore,
    /// The first HEADERS frame begins at `frame`; its payload is `buf[start..end]`.
    Headers {
        frame: usize,
        start: usize,
        end: usize,
    },
    /// The stream does not start as a request the guard can read.
    Other,
}

/// Finds the first HEADERS frame, skipping unknown (reserved, greasing) frame types.
fn first_headers(buf: &[u8]) -> Found {
    let mut at = 0;
    loop {
        let Some((kind, n)) = varint(&buf[at..]) else {
            return Found::NeedMore;
        };
        let Some((len, m)) = varint(&buf[at + n..]) else {
            return Found::NeedMore;
        };
        let start = at + n + m;
        let Some(end) = usize::try_from(len).ok().and_then(|l| start.checked_add(l)) else {
            return Found::Other;
        };
        match kind {
            0x01 if end <= buf.len() => {
                return Found::Headers {
                    frame: at,
                    start,
                    end,
                };
            }
            0x01 => return Found::NeedMore,
            // Any frame h3 defines other than HEADERS is h3's to refuse here.
            0x00 | 0x03..=0x0d => return Found::Other,
            _ if end <= buf.len() => at = end,
            _ => return Found::NeedMore,
        }
    }
}

/// A QUIC variable-length integer (RFC 9000 §16) and its size.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let size = 1usize << (first >> 6);
    let bytes = b.get(..size)?;
    let mut v = u64::from(first & 0x3f);
    for &x in &bytes[1..] {
        v = (v << 8) | u64::from(x);
    }
    Some((v, size))
}

/// A QPACK/HPACK prefixed integer with an `n`-bit prefix (RFC 7541 §5.1) and its size.
fn prefixed(b: &[u8], n: u8) -> Option<(u64, usize)> {
    let max = (1u64 << n) - 1;
    let v = u64::from(*b.first()?) & max;
    if v < max {
        return Some((v, 1));
    }
    let mut v = v;
    let mut shift = 0u32;
    for (i, &x) in b.iter().enumerate().skip(1) {
        if shift > 56 {
            return None;
        }
        v = v.checked_add(u64::from(x & 0x7f) << shift)?;
        shift += 7;
        if x & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Pseudo-header fields, as bits, for the repeat check.
const METHOD: u8 = 1;
const SCHEME: u8 = 2;
const AUTHORITY: u8 = 4;
const PATH: u8 = 8;
const STATUS: u8 = 16;
const PROTOCOL: u8 = 32;

enum Name {
    Regular,
    /// A pseudo-header: its bit, or 0 when not known (unknown names are h3's to refuse).
    Pseudo(u8),
}

/// The QPACK static table (RFC 9204 Appendix A) by what its names are.
fn static_name(index: u64) -> Option<Name> {
    Some(match index {
        0 => Name::Pseudo(AUTHORITY),
        1 => Name::Pseudo(PATH),
        15..=21 => Name::Pseudo(METHOD),
        22 | 23 => Name::Pseudo(SCHEME),
        24..=28 | 63..=71 => Name::Pseudo(STATUS),
        2..=98 => Name::Regular,
        _ => return None,
    })
}

fn literal_name(name: &[u8], huffman: bool) -> Name {
    if huffman {
        // ':' is the 7-bit Huffman code 1011100 (RFC 7541 Appendix B); codes are prefix-free.
        return match name.first() {
            Some(b) if b >> 1 == 0b101_1100 => Name::Pseudo(0),
            _ => Name::Regular,
        };
    }
    match name {
        b":method" => Name::Pseudo(METHOD),
        b":scheme" => Name::Pseudo(SCHEME),
        b":authority" => Name::Pseudo(AUTHORITY),
        b":path" => Name::Pseudo(PATH),
        b":status" => Name::Pseudo(STATUS),
        b":protocol" => Name::Pseudo(PROTOCOL),
        [b':', ..] => Name::Pseudo(0),
        _ => Name::Regular,
    }
}

/// Skips a string literal with an `n`-bit length prefix; the bytes after it.
fn skip_string(b: &[u8], n: u8) -> Option<&[u8]> {
    let (len, used) = prefixed(b, n)?;
    let len = usize::try_from(len).ok()?;
    b.get(used.checked_add(len)?..)
}

/// Checks the order and uniqueness of pseudo-headers in a request's QPACK field section, and
/// that it holds no response pseudo-header. `Ok` also
/// when the section cannot be read here (h3 reads it then).
fn check_fields(block: &[u8]) -> Result<(), Refusal> {
    let Some(fields) = fields_after_prefix(block) else {
        return Ok(());
    };
    let mut b = fields;
    let mut regular = false;
    let mut seen = 0u8;
    while let Some(&first) = b.first() {
        let (name, rest) = match field_line(b, first) {
            Some(x) => x,
            None => return Ok(()),
        };
        b = rest;
        match name {
            Name::Regular => regular = true,
            Name::Pseudo(STATUS) => return Err(Refusal::ResponsePseudoInRequest),
            Name::Pseudo(_) if regular => return Err(Refusal::PseudoAfterField),
            Name::Pseudo(bit) if bit & seen != 0 => return Err(Refusal::RepeatedPseudo),
            Name::Pseudo(bit) => seen |= bit,
        }
    }
    Ok(())
}

/// The field lines after the section prefix, if the section uses no dynamic table.
fn fields_after_prefix(block: &[u8]) -> Option<&[u8]> {
    let (required_insert_count, n) = prefixed(block, 8)?;
    if required_insert_count != 0 {
        return None;
    }
    let (_, m) = prefixed(block.get(n..)?, 7)?;
    block.get(n + m..)
}

/// One field line's name and the bytes after the line (RFC 9204 §4.5).
fn field_line(b: &[u8], first: u8) -> Option<(Name, &[u8])> {
    if first & 0x80 != 0 {
        // Indexed field line: static only.
        if first & 0x40 == 0 {
            return None;
        }
        let (index, n) = prefixed(b, 6)?;
        Some((static_name(index)?, &b[n..]))
    } else if first & 0x40 != 0 {
        // Literal field line with name reference: static only; then the value.
        if first & 0x10 == 0 {
            return None;
        }
        let (index, n) = prefixed(b, 4)?;
        Some((static_name(index)?, skip_string(&b[n..], 7)?))
    } else if first & 0x20 != 0 {
        // Literal field line with literal name; then the value.
        let huffman = first & 0x08 != 0;
        let (len, n) = prefixed(b, 3)?;
        let end = n.checked_add(usize::try_from(len).ok()?)?;
        let name = b.get(n..end)?;
        Some((literal_name(name, huffman), skip_string(&b[end..], 7)?))
    } else {
        // Post-base references need the dynamic table.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field section of literal names (no Huffman), as a peer might write it.
    fn section(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut b = vec![0, 0];
        for (n, v) in fields {
            // Name length: 3-bit prefix, then one continuation byte (names here are short).
            if n.len() < 7 {
                b.push(0x20 | n.len() as u8);
            } else {
                b.push(0x27);
                b.push((n.len() - 7) as u8);
            }
            b.extend_from_slice(n.as_bytes());
            b.push(v.len() as u8);
            b.extend_from_slice(v.as_bytes());
        }
        b
    }

    const GOOD: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/"),
    ];

    #[test]
    fn order_and_repeats() {
        let ok = [&GOOD[..], &[("x-a", "1")]].concat();
        assert_eq!(check_fields(&section(&ok)), Ok(()));
        let after = [&GOOD[..1], &[("x-a", "1")], &GOOD[1..]].concat();
        assert_eq!(
            check_fields(&section(&after)),
            Err(Refusal::PseudoAfterField)
        );
        let twice = [&GOOD[..], &[(":path", "/other")]].concat();
        assert_eq!(check_fields(&section(&twice)), Err(Refusal::RepeatedPseudo));
        // Static references: 0xd1 = indexed static 17 (:method GET), 0xc1 = :path /,
        // 0x5f 0x0e = literal with static name 15+14 = 29 (accept, a regular name), value "x".
        let statics = [0, 0, 0xd1, 0xc1, 0x5f, 0x0e, 0x01, b'x', 0xc1];
        assert_eq!(check_fields(&statics), Err(Refusal::PseudoAfterField));
        let statics_twice = [0, 0, 0xd1, 0xd1];
        assert_eq!(check_fields(&statics_twice), Err(Refusal::RepeatedPseudo));
        // A Huffman-coded literal name that starts with ':' (1011100 then padding).
        let huffman = [0, 0, 0x5f, 0x0e, 0x01, b'x', 0x29, 0xb9, 0x00];
        assert_eq!(check_fields(&huffman), Err(Refusal::PseudoAfterField));
    }

    #[test]
    fn what_cannot_be_read_is_left_to_h3() {
        // A dynamic-table reference in the prefix.
        assert_eq!(check_fields(&[0x01, 0x00, 0x80]), Ok(()));
        // Truncated.
        assert_eq!(check_fields(&[0x00, 0x00, 0x2f]), Ok(()));
    }

    #[test]
    fn frames() {
        let block = section(&GOOD);
        let mut stream = vec![0x21, 0x01, 0xff]; // a reserved frame type, one byte
        stream.push(0x01);
        stream.push(block.len() as u8);
        stream.extend_from_slice(&block);
        match first_headers(&stream) {
            Found::Headers { frame, start, end } => {
                assert_eq!(&stream[start..end], &block[..]);
                assert_eq!(frame, 3);
            }
            _ => panic!("HEADERS not found"),
        }
        assert!(matches!(first_headers(&stream[..4]), Found::NeedMore));
        assert!(matches!(first_headers(&[0x00, 0x01, 0x00]), Found::Other));
    }

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind];
        match payload.len() {
            n @ 0..64 => f.push(n as u8),
            n => f.extend_from_slice(&(0x4000 | n as u16).to_be_bytes()),
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn trailers_with_pseudo_headers_are_replaced_whatever_the_read_sizes() {
        let head = frame(0x01, &section(&GOOD));
        // DATA whose payload looks like a HEADERS frame with a pseudo-header: only data.
        let decoy = frame(0x01, &section(&[(":path", "/x")]));
        let good_trailers = frame(0x01, &section(&[("x-t", "1")]));
        let bad_trailers = frame(0x01, &section(&[(":path", "/other")]));
        let mut good = head.clone();
        good.extend(frame(0x00, &decoy));
        good.extend(frame(0x21, b"grease"));
        good.extend(frame(0x00, b"hello"));
        good.extend(&good_trailers);
        let mut bad = good[..good.len() - good_trailers.len()].to_vec();
        bad.extend(&bad_trailers);
        let mut fixed = good[..good.len() - good_trailers.len()].to_vec();
        fixed.extend(BAD_TRAILERS);
        for step in [1, 2, 3, 5, 8, 64, 4096] {
            assert_eq!(
                scan_bytes(&good, step, 4096),
                (good.clone(), None),
                "step {step}"
            );
            assert_eq!(
                scan_bytes(&bad, step, 4096),
                (fixed.clone(), Some(Refusal::PseudoInTrailers)),
                "step {step}"
            );
        }
    }

    #[test]
    fn status_in_a_request_is_refused() {
        let with_status = [&GOOD[..], &[(":status", "200")]].concat();
        assert_eq!(
            check_fields(&section(&with_status)),
            Err(Refusal::ResponsePseudoInRequest)
        );
    }

    /// Found by fuzzing: whether a head was too large to check depended on how much of the
    /// stream had arrived, so the same bytes were refused or passed by their read sizes. The
    /// limit now applies to where the frame ends.
    #[test]
    fn the_limit_is_decided_by_the_frame_not_by_the_reads() {
        let long = "v".repeat(40);
        let after = [&GOOD[..1], &[("x-long", long.as_str())], &GOOD[1..]].concat();
        let stream = frame(0x01, &section(&after));
        let limit = stream.len() - 1;
        for step in [1, 7, stream.len()] {
            assert_eq!(
                scan_bytes(&stream, step, limit),
                (stream.clone(), None),
                "step {step}"
            );
        }
        let mut trailers = frame(0x01, &section(&GOOD));
        let head_len = trailers.len();
        trailers.extend(frame(
            0x01,
            &section(&[(":path", long.as_str()), ("x-pad", long.as_str())]),
        ));
        let limit = trailers.len() - head_len - 1;
        assert!(limit >= head_len);
        for step in [1, 3, trailers.len()] {
            assert_eq!(
                scan_bytes(&trailers, step, limit),
                (trailers.clone(), None),
                "step {step}"
            );
        }
    }
}
