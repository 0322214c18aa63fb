//! The response an exchange hands its responder, whatever the protocol: a proxy-made body or
//! the backend's streamed through, bounded by a gRPC deadline, carrying the exchange's end
//! (its permits) until its last byte is gone — so caps count an exchange until then, on every
//! protocol alike.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body::{Body, Frame, SizeHint};

use crate::body::BoxError;
use crate::body::idle::Idle;
use crate::contract::exchange::Permits;
use crate::contract::flow::Reply;
use crate::contract::record::{Outcome, Record};
use crate::http::grpc;
use crate::http::headers::strip_hop_by_hop;
use crate::upstreams::UpstreamBody;

/// When a streamed response must end, and what counts the cut: a gRPC deadline ends it with
/// DEADLINE_EXCEEDED trailers; the route's total timeout cuts it (the client sees the stream
/// reset, HTTP/1.1 the connection closed).
pub struct Deadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
    cut: metrics::Counter,
    grpc: bool,
}

impl Deadline {
    /// A gRPC call's deadline.
    pub fn new(at: std::time::Instant, cut: metrics::Counter) -> Deadline {
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(at.into())),
            cut,
            grpc: true,
        }
    }

    /// The route's `timeouts.total`.
    pub fn total(at: std::time::Instant, cut: metrics::Counter) -> Deadline {
        Deadline {
            grpc: false,
            ..Deadline::new(at, cut)
        }
    }

    /// Ready once the deadline has passed; counts the cut.
    fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let passed = self.sleep.as_mut().poll(cx);
        if passed.is_ready() {
            self.cut.increment(1);
            if self.grpc {
                tracing::info!("gRPC deadline passed while the response streamed");
            } else {
                tracing::info!("total timeout passed while the response streamed");
            }
        }
        passed
    }
}

/// The backend paused its response body longer than `response_body_idle`.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body idle for {0:?}")]
pub struct BodyIdle(std::time::Duration);

/// The route's total timeout passed while the response streamed.
#[derive(Debug, thiserror::Error)]
#[error("total timeout passed while the response streamed")]
pub struct TotalCut;

/// What an exchange holds until the last byte of its response is gone: its permits, and its
/// record (emitted when this is dropped).
#[derive(Default)]
pub struct End {
    pub permits: Permits,
    /// Boxed: the body carrying it is moved several times on its way out, a pointer is
    /// cheaper to move than the record.
    pub record: Option<Box<Record>>,
}

enum Inner {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

/// A response body on its way to the client.
pub struct ResponseBody {
    inner: Inner,
    /// A gRPC deadline or the total timeout, which ends the body early.
    deadline: Option<Deadline>,
    /// The longest pause of the backend's body.
    idle: Option<Idle>,
    end: Option<End>,
}

impl ResponseBody {
    /// A proxy-made body.
    pub fn full(b: Bytes) -> Self {
        ResponseBody {
            inner: Inner::Full((!b.is_empty()).then_some(b)),
            deadline: None,
            idle: None,
            end: None,
        }
    }

    /// The backend's body, streamed through.
    pub fn upstream(body: UpstreamBody, deadline: Option<Deadline>) -> Self {
        ResponseBody {
            inner: Inner::Upstream(body),
            deadline,
            idle: None,
            end: None,
        }
    }

    /// Cuts the backend's body when it pauses longer than `after` (counted in
    /// `spooky_response_body_cut_total{reason="idle"}`).
    pub fn idle_after(mut self, after: std::time::Duration) -> Self {
        self.idle = Some(Idle::new(after));
        self
    }

    /// Carries `end` until the body ends or is dropped.
    pub fn ending(mut self, end: End) -> Self {
        self.end = Some(end);
        self
    }

    /// A whole proxy-made body (written with a bound on time).
    pub fn is_full(&self) -> bool {
        matches!(self.inner, Inner::Full(_))
    }

    /// The body is over: the exchange ends here.
    fn finish(&mut self, outcome: Outcome) {
        if let Some(r) = self.end.as_mut().and_then(|e| e.record.as_mut()) {
            r.ended(outcome);
        }
        self.end = None;
        self.deadline = None;
        self.idle = None;
    }

    fn count_out(&mut self, n: usize) {
        if let Some(r) = self.end.as_mut().and_then(|e| e.record.as_mut()) {
            r.bytes_out += n as u64;
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper need not poll a body that says it has ended (an empty one): it was complete.
        if self.end.is_some() && self.is_end_stream() {
            self.finish(Outcome::Complete);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        // The deadline first, so that a backend that never stops sending is cut too.
        if let Some(Poll::Ready(())) = this.deadline.as_mut().map(|d| d.poll_passed(cx)) {
            // Dropping the upstream body resets the backend's stream.
            this.inner = Inner::Full(None);
            let grpc = this.deadline.as_ref().is_some_and(|d| d.grpc);
            if grpc {
                this.finish(Outcome::Complete);
                return Poll::Ready(Some(Ok(Frame::trailers(grpc::deadline_trailers()))));
            }
            this.finish(Outcome::UpstreamFailed);
            return Poll::Ready(Some(Err(Box::new(TotalCut))));
        }
        let polled = match &mut this.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(mut frame))) => {
                    if let Some(t) = frame.trailers_mut() {
                        strip_hop_by_hop(t);
                        // The call is over: no second set of trailers.
                        this.deadline = None;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        };
        if let Some(idle) = this.idle.as_mut() {
            match &polled {
                Poll::Pending if idle.poll_expired(cx) => {
                    let after = idle.after();
                    // Rare: the handle is looked up here, not carried by every response.
                    metrics::counter!(crate::metrics::RESPONSE_BODY_CUT, "reason" => "idle")
                        .increment(1);
                    tracing::info!(?after, "upstream response body idle: cut");
                    this.inner = Inner::Full(None);
                    this.finish(Outcome::UpstreamFailed);
                    return Poll::Ready(Some(Err(Box::new(BodyIdle(after)))));
                }
                Poll::Ready(Some(Ok(_))) => idle.progressed(),
                _ => {}
            }
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.count_out(d.len());
                }
            }
            Poll::Ready(None) => this.finish(Outcome::Complete),
            Poll::Ready(Some(Err(_))) => this.finish(Outcome::UpstreamFailed),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(body) => body.size_hint(),
        }
    }
}

impl Reply {
    /// The response for a proxy-made reply (`content-length` added, except on a gRPC
    /// trailers-only answer).
    pub fn into_response(self) -> Response<ResponseBody> {
        let len = self.body.len();
        let mut head = Response::new(ResponseBody::full(self.body));
        *head.status_mut() = self.status;
        *head.headers_mut() = self.headers;
        if !head.headers().contains_key(http::header::CONTENT_LENGTH)
            && !head.headers().contains_key("grpc-status")
        {
            head.headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        head
    }
}
