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

mod fields;
mod scan;
#[cfg(test)]
mod tests;

use std::task::{Context, Poll};

use bytes::Bytes;
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};

use scan::Scan;
pub use scan::scan_bytes;

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
