//! Request bodies: the client's stream read chunk by chunk as the upstream request is written,
//! never buffered whole.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// Boxed error carried through bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type H3Recv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    Trailers,
    Ended,
    Failed,
}

/// The request body of an exchange.
pub struct RequestBody {
    stream: Option<H3Recv>,
    /// `content-length` of the request, if given.
    declared: Option<u64>,
    received: u64,
    /// A chunk read while only watching for a reset (see [`RequestBody::reset`]).
    stash: Option<Bytes>,
    state: State,
    /// Forward upstream as an empty body (GET-like request without `content-length`).
    empty_upstream: bool,
}

impl RequestBody {
    /// No body at all.
    pub fn empty() -> Self {
        RequestBody {
            stream: None,
            declared: Some(0),
            received: 0,
            stash: None,
            state: State::Ended,
            empty_upstream: true,
        }
    }

    /// The body of an HTTP/3 request stream.
    pub(crate) fn h3(stream: H3Recv, declared: Option<u64>, empty_upstream: bool) -> Self {
        RequestBody {
            stream: Some(stream),
            declared,
            received: 0,
            stash: None,
            state: State::Data,
            empty_upstream,
        }
    }

    /// Whether the request is forwarded without a body (so repeating it is safe).
    pub fn is_empty_request(&self) -> bool {
        self.empty_upstream
    }

    /// Takes the body out for forwarding, leaving an empty one behind.
    pub fn take(&mut self) -> RequestBody {
        std::mem::replace(self, RequestBody::empty())
    }

    /// Completes if the client resets its request stream while the body is still open. Reads
    /// at most one chunk ahead (kept for [`Body::poll_frame`]) to notice it; never completes
    /// once the body has ended.
    pub async fn reset(&mut self) {
        std::future::poll_fn(|cx| self.poll_reset(cx)).await
    }

    fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.stash.is_some() || self.state != State::Data {
            return Poll::Pending;
        }
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Pending;
        };
        match stream.poll_recv_data(cx) {
            Poll::Ready(Ok(Some(mut buf))) => {
                let chunk = buf.copy_to_bytes(buf.remaining());
                self.received += chunk.len() as u64;
                self.stash = Some(chunk);
                Poll::Pending
            }
            Poll::Ready(Ok(None)) => {
                self.state = State::Trailers;
                Poll::Pending
            }
            Poll::Ready(Err(_)) => {
                self.state = State::Failed;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

}

/// RFC 9114 §4.1.2: a request whose DATA frames disagree with content-length is malformed.
fn check_length(declared: Option<u64>, received: u64, at_end: bool) -> Result<(), BoxError> {
    match declared {
        Some(d) if received > d || (at_end && received != d) => {
            Err(format!("request body has {received} bytes but content-length is {d}").into())
        }
        _ => Ok(()),
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
        if let Some(chunk) = this.stash.take() {
            if let Err(e) = check_length(this.declared, this.received, false) {
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
                State::Failed => return Poll::Ready(Some(Err("request stream reset".into()))),
                State::Data => match stream.poll_recv_data(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Some(mut buf))) => {
                        let chunk = buf.copy_to_bytes(buf.remaining());
                        this.received += chunk.len() as u64;
                        if let Err(e) = check_length(this.declared, this.received, false) {
                            this.state = State::Failed;
                            return Poll::Ready(Some(Err(e)));
                        }
                        return Poll::Ready(Some(Ok(Frame::data(chunk))));
                    }
                    Poll::Ready(Ok(None)) => {
                        if let Err(e) = check_length(this.declared, this.received, true) {
                            this.state = State::Failed;
                            return Poll::Ready(Some(Err(e)));
                        }
                        this.state = State::Trailers;
                    }
                    Poll::Ready(Err(e)) => {
                        this.state = State::Failed;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                },
                State::Trailers => {
                    return match stream.poll_recv_trailers(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(Ok(t)) => {
                            this.state = State::Ended;
                            Poll::Ready(t.map(|t: HeaderMap| Ok(Frame::trailers(t))))
                        }
                        Poll::Ready(Err(e)) => {
                            this.state = State::Failed;
                            Poll::Ready(Some(Err(Box::new(e))))
                        }
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stash.is_none() && matches!(self.state, State::Ended)
    }

    fn size_hint(&self) -> SizeHint {
        match self.declared {
            Some(d) => SizeHint::with_exact(d.saturating_sub(self.received) + self.stash.as_ref().map_or(0, |s| s.len() as u64)),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(s) = self.stream.as_mut()
            && matches!(self.state, State::Data | State::Trailers)
        {
            // Quinn would send STOP_SENDING with code 0, not a valid HTTP/3 code (RFC 9114
            // §8.1); H3_NO_ERROR tells the client we need no more of the body.
            s.stop_sending(h3::error::Code::H3_NO_ERROR);
        }
    }
}

/// What dispatch sends upstream: nothing, or the client's body as it arrives.
pub enum UpstreamBody {
    Empty,
    Stream(RequestBody),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Stream(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Stream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Stream(b) => b.size_hint(),
        }
    }
}
