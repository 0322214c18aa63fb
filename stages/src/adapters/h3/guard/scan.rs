//! The scan of one request stream, frame by frame: the first HEADERS frame is held until whole
//! and checked, DATA payloads pass as they arrive, trailers are held and checked. Pure: it
//! reads through a closure, so tests and the fuzz target drive it without QUIC.

use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use h3::quic::StreamErrorIncoming;

use super::fields::{check_fields, has_pseudo};
use super::{EMPTY_HEADERS, OnRefuse, Refusal};

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
pub(super) struct Scan {
    mode: Mode,
    /// Checked bytes to hand to h3 before reading on.
    ready: Option<Bytes>,
    limit: usize,
    on_refuse: Option<OnRefuse>,
}

impl Scan {
    pub(super) fn new(limit: usize, on_refuse: OnRefuse) -> Scan {
        Scan {
            mode: Mode::Head(BytesMut::new()),
            ready: None,
            limit,
            on_refuse: Some(on_refuse),
        }
    }

    pub(super) fn passing() -> Scan {
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

    pub(super) fn poll(
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
pub(super) const BAD_TRAILERS: &[u8] = &[0x01, 0x06, 0x00, 0x00, 0x22, b':', b'x', 0x00];

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

pub(super) enum Found {
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
pub(super) fn first_headers(buf: &[u8]) -> Found {
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
