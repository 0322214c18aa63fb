//! The HTTP/1.1 and HTTP/2 responder: hands the whole response to the request's service
//! future, which waits on the other end of a oneshot; hyper writes it. The exchange's end
//! rides in the body, so caps count the exchange until its last byte is written.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::adapters::tcp::conn_clock::Busy;
use crate::body::BoxError;
use crate::contract::responder::{ClientSink, SendError, Sending};
use crate::contract::response::ResponseBody;
use crate::contract::tunnel::{self, Activity, Ended, Tunnel};
use hyper_util::rt::TokioIo;

/// Hands the response to hyper's service future.
pub struct HyperSink {
    tx: Option<oneshot::Sender<Response<ResponseBody>>>,
    /// HTTP/1.1: refusals that must close say `Connection: close`.
    http1: bool,
    /// A request that may become a tunnel (WebSocket): hyper's upgrade of it.
    upgrade: Option<Upgrade>,
}

/// hyper's upgrade of a request, and what the connection holds while a tunnel runs on it
/// (its cap's permit and its timers' busy mark), kept for the tunnel's life.
pub(crate) struct Upgrade {
    pub on: hyper::upgrade::OnUpgrade,
    pub hold: Box<dyn Send + 'static>,
}

impl HyperSink {
    pub(crate) fn new(tx: oneshot::Sender<Response<ResponseBody>>, http1: bool) -> Self {
        HyperSink {
            tx: Some(tx),
            http1,
            upgrade: None,
        }
    }

    /// A sink whose request may be upgraded into a tunnel.
    pub(crate) fn with_upgrade(mut self, upgrade: Upgrade) -> Self {
        self.upgrade = Some(upgrade);
        self
    }
}

impl ClientSink for HyperSink {
    fn send(&mut self, mut resp: Response<ResponseBody>) -> Sending<'_> {
        // The backend's version is not this hop's (hyper's HTTP/1.1 writer panics on
        // HTTP/3.0, what an HTTP/3 backend's response carries); hyper's HTTP/2 ignores it.
        *resp.version_mut() = http::Version::HTTP_11;
        let sent = match self.tx.take() {
            Some(tx) => tx
                .send(resp)
                .map_err(|_| SendError::ClientGone("client gone".into())),
            None => Err(SendError::ClientGone("response already sent".into())),
        };
        Sending::Done(sent)
    }

    fn closes_by_header(&self) -> bool {
        self.http1
    }

    /// Hands hyper the `101` (HTTP/1.1) or `200` (HTTP/2 extended CONNECT); once hyper has
    /// written it and given up the stream, the tunnel runs on its own task (a tunnel lives
    /// for minutes or hours: it holds no stage's concurrency, only its exchange's permits).
    fn tunnel(&mut self, head: Response<()>, tunnel: Tunnel) -> Sending<'_> {
        let Some(upgrade) = self.upgrade.take() else {
            tunnel::finish(tunnel.end, &Activity::default(), Ended::ClientGone);
            return Sending::Done(Err(SendError::ClientGone(
                "request cannot be upgraded".into(),
            )));
        };
        let resp = head.map(|()| ResponseBody::full(Bytes::new()));
        let sent = match self.tx.take() {
            Some(tx) => tx
                .send(resp)
                .map_err(|_| SendError::ClientGone("client gone".into())),
            None => Err(SendError::ClientGone("response already sent".into())),
        };
        if let Err(e) = sent {
            tunnel::finish(tunnel.end, &Activity::default(), Ended::ClientGone);
            return Sending::Done(Err(e));
        }
        tokio::spawn(async move {
            let _hold = upgrade.hold;
            match upgrade.on.await {
                Ok(io) => {
                    tunnel::splice(TokioIo::new(io), tunnel).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "client's upgrade failed");
                    tunnel::finish(tunnel.end, &Activity::default(), Ended::ClientGone);
                }
            }
        });
        Sending::Done(Ok(()))
    }

    /// hyper dropped the request's service future: connection closed or HTTP/2 stream reset.
    fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.tx.as_mut() {
            Some(tx) => tx.poll_closed(cx),
            None => Poll::Pending,
        }
    }
}

/// A response body for hyper: the exchange's, and the connection's `Busy` mark (its idle
/// timer stopped) until the body ends or is dropped.
pub struct ProxyBody {
    inner: ResponseBody,
    busy: Option<Busy>,
}

impl ProxyBody {
    pub fn full(b: Bytes) -> Self {
        ProxyBody::from(ResponseBody::full(b))
    }

    /// Holds `busy` until the body ends.
    pub fn hold(mut self, busy: Busy) -> Self {
        self.busy = Some(busy);
        self
    }
}

impl From<ResponseBody> for ProxyBody {
    fn from(inner: ResponseBody) -> Self {
        ProxyBody { inner, busy: None }
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
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.busy = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
