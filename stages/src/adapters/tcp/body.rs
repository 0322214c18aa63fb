//! The HTTP/1.1 and HTTP/2 request body source: hyper's incoming body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::Body;

use crate::body::{BodySource, BoxError, ClientBodyError};

/// An HTTP/1.1 or HTTP/2 request body; trailers read early wait here.
pub struct HyperBody(
    pub(crate) hyper::body::Incoming,
    pub(crate) Option<HeaderMap>,
);

/// hyper's body errors: its HTTP/1.1 decoder reports bad framing as `InvalidInput` or
/// `InvalidData` I/O errors; anything else (EOF, a reset) means the client is gone.
fn client_error(e: hyper::Error) -> BoxError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut malformed = e.is_parse();
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            malformed |= matches!(
                io.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            );
        }
        cur = err.source();
    }
    if malformed {
        ClientBodyError::malformed(Box::new(e))
    } else {
        ClientBodyError::gone(Box::new(e))
    }
}

impl BodySource for HyperBody {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, BoxError>> {
        if self.1.is_some() {
            return Poll::Ready(Ok(None));
        }
        match Pin::new(&mut self.0).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) => Poll::Ready(Ok(Some(d))),
                Err(frame) => {
                    self.1 = Some(frame.into_trailers().unwrap_or_default());
                    Poll::Ready(Ok(None))
                }
            },
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(client_error(e))),
            Poll::Ready(None) => Poll::Ready(Ok(None)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_trailers(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<Option<HeaderMap>, BoxError>> {
        Poll::Ready(Ok(self.1.take()))
    }
}
