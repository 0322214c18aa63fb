//! Sending the response back to the client on the protocol it came in on: HTTP/3 frames on
//! the request stream, or (HTTP/1.1, HTTP/2) a response handed to hyper's connection task.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h3::error::Code;
use http::{HeaderMap, HeaderValue, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::body::BoxError;
use crate::contract::exchange::Permits;
use crate::contract::flow::Reply;

type H3Send = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// How long a proxy-made response may take to write before the stream is reset.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    HeadSent,
    Finished,
}

// The sink lives inside the boxed exchange state: its size is never moved around.
#[allow(clippy::large_enum_variant)]
enum Sink {
    H3(H3Send),
    /// The service future of an HTTP/1.1 or HTTP/2 request waits on the other end.
    Hyper(Option<oneshot::Sender<Response<ProxyBody>>>),
    Detached,
}

/// The client side of an exchange's response.
pub struct Responder {
    sink: Sink,
    state: State,
}

impl Responder {
    pub(crate) fn h3(stream: H3Send) -> Self {
        Responder {
            sink: Sink::H3(stream),
            state: State::Fresh,
        }
    }

    pub(crate) fn hyper(tx: oneshot::Sender<Response<ProxyBody>>) -> Self {
        Responder {
            sink: Sink::Hyper(Some(tx)),
            state: State::Fresh,
        }
    }

    /// A responder that sends nowhere (benchmarks, unit tests).
    pub fn detached() -> Self {
        Responder {
            sink: Sink::Detached,
            state: State::Fresh,
        }
    }

    /// Whether the response head went out.
    pub fn head_sent(&self) -> bool {
        self.state != State::Fresh
    }

    /// Whether the whole response is handed to hyper (HTTP/1.1, HTTP/2) rather than streamed
    /// frame by frame (HTTP/3).
    pub fn takes_whole_response(&self) -> bool {
        matches!(self.sink, Sink::Hyper(_))
    }

    /// Completes when the client can no longer receive the response (hyper dropped the
    /// request's service future: connection closed or HTTP/2 stream reset). Never completes
    /// for HTTP/3, whose cancellation is watched through the connection and the request body.
    pub async fn closed(&mut self) {
        match &mut self.sink {
            Sink::Hyper(Some(tx)) => tx.closed().await,
            _ => std::future::pending().await,
        }
    }

    /// Whether [`Responder::closed`] has happened.
    pub fn is_closed(&self) -> bool {
        matches!(&self.sink, Sink::Hyper(Some(tx)) if tx.is_closed())
    }

    /// Resets an HTTP/3 stream with H3_MESSAGE_ERROR (a malformed request); `false` when the
    /// protocol has no such reset here.
    pub fn reset_malformed(&mut self) -> bool {
        match &mut self.sink {
            Sink::H3(s) => {
                s.stop_stream(Code::H3_MESSAGE_ERROR);
                self.state = State::Finished;
                true
            }
            _ => false,
        }
    }

    /// Hands a whole response to hyper (HTTP/1.1, HTTP/2).
    pub fn send_response(&mut self, resp: Response<ProxyBody>) -> Result<(), BoxError> {
        self.state = State::Finished;
        match &mut self.sink {
            Sink::Hyper(tx) => match tx.take() {
                Some(tx) => tx.send(resp).map_err(|_| "client gone".into()),
                None => Err("response already sent".into()),
            },
            _ => Err("not an HTTP/1.1 or HTTP/2 exchange".into()),
        }
    }

    pub async fn send_head(&mut self, resp: Response<()>) -> Result<(), BoxError> {
        self.state = State::HeadSent;
        match &mut self.sink {
            Sink::H3(s) => Ok(s.send_response(resp).await?),
            _ => Ok(()),
        }
    }

    pub async fn send_data(&mut self, data: Bytes) -> Result<(), BoxError> {
        match &mut self.sink {
            Sink::H3(s) => Ok(s.send_data(data).await?),
            _ => Ok(()),
        }
    }

    /// Sends trailers and ends the stream.
    pub async fn send_trailers(&mut self, trailers: HeaderMap) -> Result<(), BoxError> {
        if let Sink::H3(s) = &mut self.sink {
            s.send_trailers(trailers).await?;
            // h3 0.0.8: send_trailers does not finish the stream.
            s.finish().await?;
        }
        self.state = State::Finished;
        Ok(())
    }

    /// Ends the stream after the body.
    pub async fn finish(&mut self) -> Result<(), BoxError> {
        if let Sink::H3(s) = &mut self.sink {
            s.finish().await?;
        }
        self.state = State::Finished;
        Ok(())
    }

    /// Writes a whole proxy-made response, bounded in time.
    pub async fn reply(&mut self, reply: Reply) -> Result<(), BoxError> {
        let mut head = Response::new(());
        *head.status_mut() = reply.status;
        *head.headers_mut() = reply.headers;
        if !head.headers().contains_key(http::header::CONTENT_LENGTH)
            && !head.headers().contains_key("grpc-status")
        {
            head.headers_mut().insert(
                http::header::CONTENT_LENGTH,
                HeaderValue::from(reply.body.len()),
            );
        }
        if self.takes_whole_response() {
            let (parts, ()) = head.into_parts();
            return self.send_response(Response::from_parts(parts, ProxyBody::full(reply.body)));
        }
        let write = async {
            self.send_head(head).await?;
            if !reply.body.is_empty() {
                self.send_data(reply.body).await?;
            }
            self.finish().await
        };
        match tokio::time::timeout(REPLY_WRITE_TIMEOUT, write).await {
            Ok(r) => r,
            Err(_) => Err("timed out writing the response".into()),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Sink::H3(s) = &mut self.sink {
            match self.state {
                State::Finished => {}
                // RFC 9114 §4.1.1: an abandoned request is cancelled by resetting the stream.
                State::Fresh => s.stop_stream(Code::H3_REQUEST_CANCELLED),
                // The response was cut short: the client must not take it as complete.
                State::HeadSent => s.stop_stream(Code::H3_INTERNAL_ERROR),
            }
        }
        // Hyper: dropping the sender makes the service answer 502 (or the client is gone).
    }
}

/// A response body for hyper (HTTP/1.1, HTTP/2): a proxy-made body, or the upstream body
/// streamed through. The exchange's permits ride along and are returned when the body ends
/// or is dropped, so caps count an exchange until its last byte is gone.
pub struct ProxyBody {
    inner: Inner,
    permits: Option<Permits>,
    /// A gRPC deadline that ends the body early with DEADLINE_EXCEEDED trailers.
    deadline: Option<Deadline>,
    /// Keeps the client connection's request in flight (its idle timer stopped) until the
    /// body ends or is dropped.
    busy: Option<crate::adapters::tcp::conn_clock::Busy>,
}

/// When a streamed gRPC response must end, and what counts the cut.
pub struct Deadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
    cut: metrics::Counter,
}

impl Deadline {
    pub fn new(at: std::time::Instant, cut: metrics::Counter) -> Deadline {
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(at.into())),
            cut,
        }
    }

    /// Ready once the deadline has passed; counts the cut.
    pub fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let passed = self.sleep.as_mut().poll(cx);
        if passed.is_ready() {
            self.cut.increment(1);
        }
        passed
    }

    /// Waits for the deadline (see [`Deadline::poll_passed`]).
    pub async fn passed(&mut self) {
        std::future::poll_fn(|cx| self.poll_passed(cx)).await;
    }
}

enum Inner {
    Full(Option<Bytes>),
    Upstream(hyper::body::Incoming),
}

impl ProxyBody {
    pub fn full(b: Bytes) -> Self {
        ProxyBody {
            inner: Inner::Full((!b.is_empty()).then_some(b)),
            permits: None,
            deadline: None,
            busy: None,
        }
    }

    /// Holds `busy` until the body ends.
    pub fn hold(mut self, busy: crate::adapters::tcp::conn_clock::Busy) -> Self {
        self.busy = Some(busy);
        self
    }

    /// The upstream body, holding `permits` until it is done.
    pub fn upstream(
        body: hyper::body::Incoming,
        permits: Permits,
        deadline: Option<Deadline>,
    ) -> Self {
        ProxyBody {
            inner: Inner::Upstream(body),
            permits: Some(permits),
            deadline,
            busy: None,
        }
    }
}

impl Body for ProxyBody {
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
            this.deadline = None;
            this.permits = None;
            return Poll::Ready(Some(Ok(Frame::trailers(
                crate::http::grpc::deadline_trailers(),
            ))));
        }
        let polled = match &mut this.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(mut frame))) => {
                    if let Some(t) = frame.trailers_mut() {
                        crate::http::headers::strip_hop_by_hop(t);
                        // The call is over: no second set of trailers.
                        this.deadline = None;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e) as BoxError))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        };
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.permits = None;
            this.deadline = None;
            this.busy = None;
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
