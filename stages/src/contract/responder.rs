//! How an exchange answers its client, without knowing the protocol: each adapter plugs in a
//! [`ClientSink`] (HTTP/3 writes frames on the request stream; HTTP/1.1 and HTTP/2 hand the
//! response to hyper), and the [`Responder`] renders the proxy's own answers for it — status
//! pages, `Retry-After`, `Allow`, gRPC trailers-only status, `Connection: close` after a bad
//! HTTP/1.1 request, an HTTP/3 stream reset for a malformed one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::BoxError;
use crate::contract::flow::{Reply, status_text};
use crate::contract::reason::Reason;
use crate::contract::response::ResponseBody;
use crate::contract::tunnel::{Tunnel, UdpTunnel};
use crate::http::grpc;

/// RFC 9209: which intermediary answered, and why (on every refusal Spooky answers itself).
const PROXY_STATUS: http::HeaderName = http::HeaderName::from_static("proxy-status");

/// Why a response could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The client went away (or stopped reading) before the response was delivered.
    #[error("client gone: {0}")]
    ClientGone(BoxError),
    /// The backend's body failed mid-stream; the client's stream was reset.
    #[error("upstream body failed: {0}")]
    UpstreamBody(BoxError),
}

/// What a sink did with a response: handed it over at once (hyper takes the whole response),
/// or is writing it (HTTP/3 streams it frame by frame).
pub enum Sending<'a> {
    Done(Result<(), SendError>),
    Writing(Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>>),
}

/// The protocol side of a responder, implemented by each adapter.
pub trait ClientSink: Send + 'static {
    /// Sends the response: its head, then its body to the end. HTTP/3 writes it here;
    /// HTTP/1.1 and HTTP/2 hand it to hyper, which writes it later while the body carries the
    /// exchange's end.
    fn send(&mut self, resp: Response<ResponseBody>) -> Sending<'_>;

    /// Refuses a malformed request the protocol's own way, when it has one (HTTP/3: reset
    /// the stream with H3_MESSAGE_ERROR, RFC 9114 §4.1.2). `false`: answer with a status.
    fn reset_malformed(&mut self) -> bool {
        false
    }

    /// Whether a refusal that must close the connection says so in a header (HTTP/1.1).
    fn closes_by_header(&self) -> bool {
        false
    }

    /// Ready when the client can no longer receive the response.
    fn poll_closed(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }

    /// Answers with `head` (HTTP/1.1 `101`, HTTP/2 `200`) and turns the stream into
    /// `tunnel`, pumped until it ends. A protocol that cannot carry one refuses (the tunnel
    /// and its exchange end at once).
    fn tunnel(&mut self, head: Response<()>, tunnel: Tunnel) -> Sending<'_> {
        let _ = head;
        refuse_tunnel(tunnel.end, "this client's protocol carries no tunnel")
    }

    /// Answers `head` and carries a CONNECT-UDP tunnel in HTTP Datagrams (HTTP/3 only).
    fn udp_tunnel(&mut self, head: Response<()>, tunnel: UdpTunnel) -> Sending<'_> {
        let _ = head;
        refuse_tunnel(tunnel.end, "this client's protocol carries no datagrams")
    }
}

/// A tunnel the sink cannot carry: its exchange ends now, as if the client had gone.
fn refuse_tunnel(end: crate::contract::response::End, why: &'static str) -> Sending<'static> {
    crate::contract::tunnel::finish(
        end,
        &crate::contract::tunnel::Activity::default(),
        crate::contract::tunnel::Ended::ClientGone,
    );
    Sending::Done(Err(SendError::ClientGone(why.into())))
}

/// The client side of an exchange's response.
pub struct Responder {
    /// `None`: detached (benchmarks, engine tests): responses go nowhere.
    sink: Option<Box<dyn ClientSink>>,
    sent: bool,
}

impl Responder {
    pub fn new(sink: impl ClientSink) -> Self {
        Responder {
            sink: Some(Box::new(sink)),
            sent: false,
        }
    }

    /// A responder with no client: it reads each response to its end and drops it.
    pub fn detached() -> Self {
        Responder {
            sink: None,
            sent: false,
        }
    }

    /// Whether a response was handed over (too late for another one).
    pub fn head_sent(&self) -> bool {
        self.sent
    }

    /// Completes when the client can no longer receive the response; never for a protocol
    /// whose cancellation is watched elsewhere (HTTP/3: the connection and the request body).
    pub async fn closed(&mut self) {
        match self.sink.as_mut() {
            Some(s) => std::future::poll_fn(|cx| s.poll_closed(cx)).await,
            None => std::future::pending().await,
        }
    }

    /// Sends a response.
    pub async fn send(&mut self, resp: Response<ResponseBody>) -> Result<(), SendError> {
        self.sent = true;
        match self.sink.as_mut() {
            Some(s) => match s.send(resp) {
                Sending::Done(r) => r,
                Sending::Writing(f) => f.await,
            },
            None => {
                // Detached: read the body to its end, as a client would.
                let mut body = resp.into_body();
                while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                    if let Err(e) = frame {
                        return Err(SendError::UpstreamBody(e));
                    }
                }
                Ok(())
            }
        }
    }

    /// Answers with `head` and runs `tunnel` on the client's stream (see
    /// [`ClientSink::tunnel`]).
    pub async fn tunnel(&mut self, head: Response<()>, tunnel: Tunnel) -> Result<(), SendError> {
        self.open(|s| s.tunnel(head, tunnel)).await
    }

    /// Answers with `head` and runs a CONNECT-UDP tunnel (see [`ClientSink::udp_tunnel`]).
    pub async fn udp_tunnel(
        &mut self,
        head: Response<()>,
        tunnel: UdpTunnel,
    ) -> Result<(), SendError> {
        self.open(|s| s.udp_tunnel(head, tunnel)).await
    }

    /// Hands a tunnel to the sink (a detached responder drops it).
    async fn open(
        &mut self,
        start: impl FnOnce(&mut Box<dyn ClientSink>) -> Sending<'_>,
    ) -> Result<(), SendError> {
        self.sent = true;
        match self.sink.as_mut() {
            Some(s) => match start(s) {
                Sending::Done(r) => r,
                Sending::Writing(f) => f.await,
            },
            None => Ok(()),
        }
    }

    /// The answer to a refusal on this client's protocol, or `None` when the protocol refused
    /// it itself (an HTTP/3 stream reset).
    pub fn rejection(&mut self, reason: Reason, grpc: bool) -> Option<Reply> {
        if reason.malformed() && self.sink.as_mut().is_some_and(|s| s.reset_malformed()) {
            self.sent = true;
            return None;
        }
        if grpc {
            // gRPC clients read the outcome from grpc-status: a trailers-only answer.
            return Some(Reply {
                status: StatusCode::OK,
                headers: grpc::error_headers(reason.grpc_code(), reason.label(), reason.status()),
                body: Bytes::new(),
            });
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Ok(v) = HeaderValue::try_from(reason.proxy_status()) {
            headers.insert(PROXY_STATUS, v);
        }
        if let Some(secs) = reason.retry_after() {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = reason.allow() {
            headers.insert(http::header::ALLOW, HeaderValue::from_static(allow));
        }
        if reason.closes() && self.sink.as_ref().is_some_and(|s| s.closes_by_header()) {
            // After a malformed HTTP/1.1 request, trust nothing else on that connection.
            headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        Some(Reply {
            status: reason.status(),
            headers,
            body: status_text(reason.status(), reason.label()),
        })
    }
}
