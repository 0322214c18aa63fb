//! The HTTP/3 request body source: DATA frames and trailers of a request stream.

use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;

use crate::adapters::h3::guard::GuardedRecv;
use crate::body::{BodySource, BoxError, ClientBodyError};

/// The receiving half of an HTTP/3 request stream.
pub struct H3Body(pub(crate) h3::server::RequestStream<GuardedRecv, Bytes>);

/// h3's body errors: a malformed message (e.g. trailers h3 refused) is H3_MESSAGE_ERROR;
/// anything else is a reset or a closed connection.
fn client_error(e: h3::error::StreamError) -> BoxError {
    let malformed = matches!(
        &e,
        h3::error::StreamError::StreamError { code, .. }
            if *code == h3::error::Code::H3_MESSAGE_ERROR
    );
    let e = Box::new(e);
    if malformed {
        ClientBodyError::malformed(e)
    } else {
        ClientBodyError::gone(e)
    }
}

impl BodySource for H3Body {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, BoxError>> {
        match self.0.poll_recv_data(cx) {
            Poll::Ready(Ok(Some(mut buf))) => {
                Poll::Ready(Ok(Some(buf.copy_to_bytes(buf.remaining()))))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(None)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(client_error(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_trailers(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<HeaderMap>, BoxError>> {
        self.0.poll_recv_trailers(cx).map_err(client_error)
    }

    fn stop(&mut self, read_pending: bool) {
        // h3-quinn unwraps a stream parked inside an in-flight read future and would panic.
        if !read_pending {
            // Quinn would send STOP_SENDING with code 0, not a valid HTTP/3 code (RFC 9114
            // §8.1); H3_NO_ERROR tells the client we need no more of the body.
            self.0.stop_sending(h3::error::Code::H3_NO_ERROR);
        }
    }
}
