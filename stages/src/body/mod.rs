//! Request bodies: the client's stream read chunk by chunk as the upstream request is written,
//! never buffered whole (a body kept for replay is bounded: see [`replay`]).

pub mod idle;
pub mod replay;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// Boxed error carried through bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's request body failed: the client's fault, never the backend's. Dispatch finds
/// it in the upstream client's error chain and answers for the client (malformed: 400 and
/// close on HTTP/1.1, H3_MESSAGE_ERROR on HTTP/3; gone: `cancelled`), and the backend's
/// request is aborted rather than completed with a truncated body.
#[derive(Debug)]
pub struct ClientBodyError {
    pub fault: BodyFault,
    source: BoxError,
}

/// What went wrong with a client's request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// Bad framing (a chunk size that overflows or is not hex, data past a chunk, a bad
    /// extension, a length that disagrees with the data): 400; HTTP/3 H3_MESSAGE_ERROR.
    Malformed,
    /// The client sent nothing for the route's `request_body_idle` (408).
    Idle,
    /// The body outgrew the route's `max_request_body` (413).
    TooLarge,
    /// The client went away (reset its stream, closed the connection mid-body).
    Gone,
}

impl ClientBodyError {
    fn boxed(fault: BodyFault, source: BoxError) -> BoxError {
        Box::new(ClientBodyError { fault, source })
    }

    /// Bad framing: the client's error (400; HTTP/3 H3_MESSAGE_ERROR).
    pub fn malformed(source: BoxError) -> BoxError {
        ClientBodyError::boxed(BodyFault::Malformed, source)
    }

    /// The client went quiet for longer than the body's idle limit.
    pub fn idle(after: std::time::Duration) -> BoxError {
        ClientBodyError::boxed(BodyFault::Idle, format!("nothing for {after:?}").into())
    }

    /// The client went away mid-body.
    pub fn gone(source: BoxError) -> BoxError {
        ClientBodyError::boxed(BodyFault::Gone, source)
    }

    /// The client's body error in `e`'s source chain, if the failure was the client's.
    pub fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ClientBodyError> {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(c) = err.downcast_ref::<ClientBodyError>() {
                return Some(c);
            }
            cur = err.source();
        }
        None
    }
}

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.fault {
            BodyFault::Malformed => "malformed request body",
            BodyFault::Idle => "client request body idle too long",
            BodyFault::TooLarge => "request body too large",
            BodyFault::Gone => "client stopped sending its request body",
        };
        write!(f, "{what}: {}", self.source)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    Trailers,
    Ended,
    Failed,
}

/// Where a request body comes from: each protocol adapter implements it for its stream.
/// Errors are [`ClientBodyError`]s (malformed or gone).
pub trait BodySource: Send + Sync + 'static {
    /// The next data chunk; `None` once the data ends.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, BoxError>>;
    /// Trailers after the data, if any.
    fn poll_trailers(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<HeaderMap>, BoxError>>;
    /// The body is dropped unread: tell the client no more is needed, if the protocol can.
    /// `read_pending`: a read was left in flight (see the HTTP/3 source).
    fn stop(&mut self, read_pending: bool) {
        let _ = read_pending;
    }
}

/// Request-body bytes forwarded, counted by the body wherever it has gone (the upstream
/// client owns it while it streams).
#[derive(Clone, Default)]
pub struct BytesIn(Arc<AtomicU64>);

impl BytesIn {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The request body of an exchange.
pub struct RequestBody {
    stream: Option<Box<dyn BodySource>>,
    /// `content-length` of the request, if given.
    declared: Option<u64>,
    received: u64,
    /// Bytes read ahead while only watching for a reset (see [`RequestBody::reset`]).
    stash: Option<Bytes>,
    /// Most bytes read ahead into `stash` (`[stages.ingress] read_ahead`).
    read_ahead: usize,
    /// A read is in flight inside h3-quinn: it must not be told to stop sending now (its
    /// stream is parked in the read future and h3-quinn would panic).
    read_pending: bool,
    state: State,
    /// Why the body failed, kept until it is read (the failure found while reading ahead).
    failure: Option<BoxError>,
    /// Forward upstream as an empty body (GET-like request without `content-length`).
    empty_upstream: bool,
    /// Where forwarded bytes are counted (the exchange's record).
    forwarded: Option<BytesIn>,
    /// The client's body went to an attempt: nothing is left here to send again.
    taken: bool,
    /// The client's body, kept for replay by the attempts.
    replay: Option<replay::Replay>,
    /// The longest wait for the client's next frame (`request_body_idle`).
    idle: Option<idle::Idle>,
    /// The most bytes the body may have (the route's `max_request_body`).
    limit: Option<u64>,
}

impl RequestBody {
    /// No body at all.
    pub fn empty() -> Self {
        RequestBody {
            stream: None,
            declared: Some(0),
            received: 0,
            stash: None,
            read_ahead: 0,
            read_pending: false,
            state: State::Ended,
            failure: None,
            empty_upstream: true,
            forwarded: None,
            taken: false,
            replay: None,
            idle: None,
            limit: None,
        }
    }

    /// A body read from an adapter's stream.
    pub fn streaming(
        source: impl BodySource,
        declared: Option<u64>,
        empty_upstream: bool,
        read_ahead: usize,
    ) -> Self {
        RequestBody::reading(Box::new(source), declared, empty_upstream, read_ahead)
    }

    fn reading(
        source: Box<dyn BodySource>,
        declared: Option<u64>,
        empty_upstream: bool,
        read_ahead: usize,
    ) -> Self {
        RequestBody {
            stream: Some(source),
            declared,
            received: 0,
            stash: None,
            read_ahead,
            read_pending: false,
            state: State::Data,
            failure: None,
            empty_upstream,
            forwarded: None,
            taken: false,
            replay: None,
            idle: None,
            limit: None,
        }
    }

    /// The length the client declared (`content-length`), if any.
    pub fn declared(&self) -> Option<u64> {
        self.declared
    }

    /// Fails the body (413 `request_body_too_large`) once it has more than `max` bytes.
    pub fn set_limit(&mut self, max: u64) {
        self.limit = Some(max);
    }

    /// Takes the body out for forwarding, leaving an empty one behind; what it forwards is
    /// counted in `counter`.
    fn take(&mut self, counter: &BytesIn) -> RequestBody {
        let mut body = std::mem::replace(self, RequestBody::empty());
        body.forwarded = Some(counter.clone());
        self.taken = true;
        body
    }

    /// The body of the next attempt to a backend, or `None` when it cannot be sent again
    /// (it went to an earlier attempt and was not kept, or outgrew `limit`). With
    /// `limit > 0` the client's body is kept for replay, up to `limit` bytes; a body that
    /// outgrows it counts in `overflow`.
    pub fn for_attempt(
        &mut self,
        counter: impl FnOnce() -> BytesIn,
        limit: usize,
        overflow: Option<&metrics::Counter>,
    ) -> Option<RequestBody> {
        let idle = self.idle.as_ref().map(idle::Idle::after);
        let body = self.attempt_body(counter, limit, overflow)?;
        Some(match idle {
            Some(after) if body.stream.is_some() => body.idle_after(after),
            _ => body,
        })
    }

    /// Limits how long the client may leave the body waiting (every attempt's body).
    pub fn idle_after(mut self, after: std::time::Duration) -> Self {
        self.idle = Some(idle::Idle::new(after));
        self
    }

    /// Sets [`RequestBody::idle_after`] in place.
    pub fn set_idle(&mut self, after: std::time::Duration) {
        if self.state != State::Ended {
            self.idle = Some(idle::Idle::new(after));
        }
    }

    fn attempt_body(
        &mut self,
        counter: impl FnOnce() -> BytesIn,
        limit: usize,
        overflow: Option<&metrics::Counter>,
    ) -> Option<RequestBody> {
        if let Some(r) = &self.replay {
            return r
                .replayable()
                .then(|| RequestBody::streaming(r.attempt(), r.declared(), false, 0));
        }
        if self.taken {
            return None;
        }
        if self.empty_upstream {
            // Forwarded without a body; the exchange keeps its own (it still watches it for
            // resets), and hyper sends no body at all (never chunked).
            return Some(RequestBody::empty());
        }
        let counter = counter();
        if limit == 0 {
            return Some(self.take(&counter));
        }
        let declared = self.declared;
        let mut source = std::mem::replace(self, RequestBody::empty());
        // The attempts' bodies keep the idle limit; the source under them needs no second.
        self.idle = source.idle.take();
        let r = replay::Replay::new(source, limit, overflow.cloned(), counter);
        // Each attempt checks its length against content-length again: the replayed bytes
        // are the same bytes, and hyper frames the request by its size.
        let body = RequestBody::streaming(r.attempt(), declared, false, 0);
        self.replay = Some(r);
        self.taken = true;
        Some(body)
    }

    /// Whether the request can be sent again as it was: it has no body, or its body was kept
    /// for replay and fit the bound.
    pub fn can_repeat(&self) -> bool {
        match &self.replay {
            Some(r) => r.replayable(),
            None => self.empty_upstream && !self.taken,
        }
    }

    /// Completes if the client resets its request stream while the body is still open. To
    /// notice it, reads ahead up to `read_ahead` bytes (kept for [`Body::poll_frame`]); past
    /// that, or once the body has ended, it only completes on connection close elsewhere.
    pub async fn reset(&mut self) {
        std::future::poll_fn(|cx| self.poll_reset(cx)).await
    }

    fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let stashed = self.stash.as_ref().map_or(0, Bytes::len);
            if stashed >= self.read_ahead || self.state != State::Data {
                return Poll::Pending;
            }
            let Some(stream) = self.stream.as_mut() else {
                return Poll::Pending;
            };
            let polled = stream.poll_data(cx);
            self.read_pending = polled.is_pending();
            match polled {
                Poll::Ready(Ok(Some(chunk))) => {
                    self.received += chunk.len() as u64;
                    if let Err(e) = check_length(self.declared, self.received, self.limit, false) {
                        // Answered when the body is forwarded (after what came before it).
                        self.state = State::Failed;
                        self.failure = Some(e);
                    }
                    self.stash = Some(match self.stash.take() {
                        None => chunk,
                        Some(prev) => {
                            let mut joined =
                                bytes::BytesMut::with_capacity(prev.len() + chunk.len());
                            joined.extend_from_slice(&prev);
                            joined.extend_from_slice(&chunk);
                            joined.freeze()
                        }
                    });
                }
                Poll::Ready(Ok(None)) => {
                    match check_length(self.declared, self.received, self.limit, true) {
                        Ok(()) => self.state = State::Trailers,
                        Err(e) => {
                            self.state = State::Failed;
                            self.failure = Some(e);
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    self.state = State::Failed;
                    let gone =
                        ClientBodyError::find(&*e).is_none_or(|c| c.fault != BodyFault::Malformed);
                    self.failure = Some(e);
                    // A malformed body is answered when it is forwarded; a client that left
                    // cancels the exchange now.
                    if gone {
                        return Poll::Ready(());
                    }
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// What has been received so far against `content-length` (RFC 9114 §4.1.2: a request whose
/// DATA frames disagree with it is malformed) and the route's `limit`.
fn check_length(
    declared: Option<u64>,
    received: u64,
    limit: Option<u64>,
    at_end: bool,
) -> Result<(), BoxError> {
    match declared {
        Some(d) if received > d || (at_end && received != d) => {
            return Err(ClientBodyError::malformed(
                format!("request body has {received} bytes but content-length is {d}").into(),
            ));
        }
        _ => {}
    }
    match limit {
        Some(max) if received > max => Err(ClientBodyError::boxed(
            BodyFault::TooLarge,
            format!("request body passed max_request_body ({max} bytes)").into(),
        )),
        _ => Ok(()),
    }
}

impl RequestBody {
    fn poll_next_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self;
        if let Some(chunk) = this.stash.take() {
            if let Err(e) = check_length(this.declared, this.received, this.limit, false) {
                this.state = State::Failed;
                return Poll::Ready(Some(Err(e)));
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match this.state {
                State::Ended => return Poll::Ready(None),
                State::Failed => {
                    let e = this
                        .failure
                        .take()
                        .unwrap_or_else(|| ClientBodyError::gone("request stream reset".into()));
                    return Poll::Ready(Some(Err(e)));
                }
                State::Data => match stream.poll_data(cx) {
                    Poll::Pending => {
                        this.read_pending = true;
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(Some(chunk))) => {
                        this.read_pending = false;
                        this.received += chunk.len() as u64;
                        if let Err(e) =
                            check_length(this.declared, this.received, this.limit, false)
                        {
                            this.state = State::Failed;
                            return Poll::Ready(Some(Err(e)));
                        }
                        return Poll::Ready(Some(Ok(Frame::data(chunk))));
                    }
                    Poll::Ready(Ok(None)) => {
                        this.read_pending = false;
                        if let Err(e) = check_length(this.declared, this.received, this.limit, true)
                        {
                            this.state = State::Failed;
                            return Poll::Ready(Some(Err(e)));
                        }
                        this.state = State::Trailers;
                    }
                    Poll::Ready(Err(e)) => {
                        this.read_pending = false;
                        this.state = State::Failed;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                State::Trailers => {
                    return match stream.poll_trailers(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(Ok(t)) => {
                            this.state = State::Ended;
                            Poll::Ready(t.map(|t: HeaderMap| Ok(Frame::trailers(t))))
                        }
                        Poll::Ready(Err(e)) => {
                            this.state = State::Failed;
                            Poll::Ready(Some(Err(e)))
                        }
                    };
                }
            }
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = this.poll_next_frame(cx);
        if let Some(idle) = this.idle.as_mut() {
            match &polled {
                Poll::Pending if idle.poll_expired(cx) => {
                    let after = idle.after();
                    this.idle = None;
                    this.state = State::Failed;
                    return Poll::Ready(Some(Err(ClientBodyError::idle(after))));
                }
                Poll::Ready(Some(Ok(_))) => idle.progressed(),
                _ => {}
            }
        }
        if let (Poll::Ready(Some(Ok(frame))), Some(counter)) = (&polled, &this.forwarded)
            && let Some(data) = frame.data_ref()
        {
            counter.add(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.stash.is_none() && matches!(self.state, State::Ended)
    }

    fn size_hint(&self) -> SizeHint {
        match self.declared {
            Some(d) => SizeHint::with_exact(
                d.saturating_sub(self.received) + self.stash.as_ref().map_or(0, |s| s.len() as u64),
            ),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(s) = self.stream.as_mut()
            && matches!(self.state, State::Data | State::Trailers)
        {
            s.stop(self.read_pending);
        }
    }
}
