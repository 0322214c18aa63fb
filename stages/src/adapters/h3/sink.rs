//! The HTTP/3 responder: writes the response head, body and trailers as frames on the
//! request stream, and resets the stream when an exchange is dropped before it finished.

use std::time::Duration;

use bytes::Bytes;
use h3::error::Code;
use http::Response;
use http_body_util::BodyExt;

use crate::contract::exchange::ConnGone;
use crate::contract::responder::{ClientSink, SendError, Sending};
use crate::contract::response::ResponseBody;
use std::sync::Arc;

use crate::adapters::h3::datagrams::{self, Datagrams};
use crate::contract::tunnel::{self, Activity, Ended, Tunnel, UdpTunnel};
use tokio::io::AsyncReadExt;

type H3Send = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// How long a proxy-made response may take to write before the stream is reset.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    HeadSent,
    Finished,
}

/// The sending half of an HTTP/3 request stream.
pub struct H3Sink {
    stream: H3Send,
    state: State,
    /// The connection's close, watched while the body streams (an idle backend body would
    /// otherwise hold the exchange after the client left).
    conn_gone: ConnGone,
    /// The connection's HTTP Datagrams and this request's stream id (when a route takes
    /// CONNECT-UDP).
    datagrams: Option<(Arc<Datagrams>, u64)>,
}

fn gone(e: impl std::error::Error + Send + Sync + 'static) -> SendError {
    SendError::ClientGone(Box::new(e))
}

impl H3Sink {
    pub(crate) fn new(stream: H3Send, conn_gone: ConnGone) -> Self {
        H3Sink {
            stream,
            state: State::Fresh,
            conn_gone,
            datagrams: None,
        }
    }

    /// A sink that can carry a CONNECT-UDP tunnel in the connection's datagrams.
    pub(crate) fn with_datagrams(mut self, datagrams: Arc<Datagrams>, stream_id: u64) -> Self {
        self.datagrams = Some((datagrams, stream_id));
        self
    }

    /// Answers `head` (`200`, `capsule-protocol: ?1`), then carries UDP payloads both ways
    /// as HTTP Datagrams with context ID 0 (RFC 9298 §5), until the client ends its request
    /// stream or a limit ends the tunnel. Datagrams with another context ID are dropped
    /// (§4); capsules on the stream are read and ignored (none is defined for UDP).
    async fn run_udp(&mut self, head: Response<()>, tunnel: UdpTunnel) -> Result<(), SendError> {
        let UdpTunnel {
            socket,
            mut client_body,
            limits,
            end,
        } = tunnel;
        let activity = Activity::default();
        let Some((datagrams, stream_id)) = self.datagrams.clone() else {
            tunnel::finish(end, &activity, Ended::ClientGone);
            return Err(SendError::ClientGone(
                "no datagrams on this connection".into(),
            ));
        };
        let mut registration = datagrams.register(stream_id);
        self.state = State::HeadSent;
        if let Err(e) = self.stream.send_response(head).await {
            tunnel::finish(end, &activity, Ended::ClientGone);
            return Err(gone(e));
        }
        let _open = tunnel::OpenGauge::open();
        let limit = tunnel::limited(&activity, limits);
        tokio::pin!(limit);
        let mut buf = vec![0u8; 65_536];
        let ended = loop {
            tokio::select! {
                d = registration.rx.recv() => {
                    let Some(d) = d else { break Ended::ClientGone };
                    // Context ID 0 carries a UDP payload; others are unknown here.
                    if let Some((0, at)) = datagrams::varint(&d) {
                        // A connected UDP socket may report an earlier ICMP error; UDP
                        // loses datagrams anyway.
                        let _ = socket.send(&d[at..]).await;
                        activity.moved(&activity.up, d.len() - at);
                    }
                }
                r = socket.recv(&mut buf) => {
                    let Ok(n) = r else { continue };
                    let mut payload = Vec::with_capacity(n + 1);
                    payload.push(0);
                    payload.extend_from_slice(&buf[..n]);
                    if datagrams.send(stream_id, &payload) {
                        activity.moved(&activity.down, n);
                    }
                }
                f = client_body.frame() => match f {
                    None => break Ended::Closed,
                    Some(Err(_)) => break Ended::ClientGone,
                    Some(Ok(_capsules)) => {}
                },
                ended = &mut limit => break ended,
            }
        };
        drop(registration);
        if ended != Ended::ClientGone {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.finish()).await;
            self.state = State::Finished;
        }
        tunnel::finish(end, &activity, ended);
        Ok(())
    }

    async fn write(&mut self, resp: Response<ResponseBody>) -> Result<(), SendError> {
        if resp.body().is_full() {
            // A proxy-made answer: bounded, so a client that does not read cannot hold it.
            return match tokio::time::timeout(REPLY_WRITE_TIMEOUT, self.stream_out(resp)).await {
                Ok(r) => r,
                Err(_) => Err(SendError::ClientGone(
                    "timed out writing the response".into(),
                )),
            };
        }
        self.stream_out(resp).await
    }

    async fn stream_out(&mut self, resp: Response<ResponseBody>) -> Result<(), SendError> {
        let (parts, mut body) = resp.into_parts();
        self.state = State::HeadSent;
        self.stream
            .send_response(Response::from_parts(parts, ()))
            .await
            .map_err(gone)?;
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                () = self.conn_gone.gone() => {
                    return Err(SendError::ClientGone("connection closed".into()));
                }
            };
            match frame {
                None => break,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => self.stream.send_data(data).await.map_err(gone)?,
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.stream.send_trailers(trailers).await.map_err(gone)?;
                            // h3 0.0.8: send_trailers does not finish the stream.
                            break;
                        }
                    }
                },
                // Dropping the sink mid-body resets the client stream.
                Some(Err(e)) => return Err(SendError::UpstreamBody(e)),
            }
        }
        self.stream.finish().await.map_err(gone)?;
        self.state = State::Finished;
        Ok(())
    }
}

impl H3Sink {
    /// Answers `head` (`200`), then runs the tunnel (a CONNECT's, or a WebSocket's, RFC 9220)
    /// between the request stream and the upstream side as the other protocols do
    /// ([`tunnel::splice`]: when Spooky ends it, each side's stream ends cleanly, a WebSocket
    /// after a Close frame 1001 between frames; a client that fails has its stream reset).
    /// The client's DATA frames are read as a byte stream; what goes to the client passes a
    /// pipe into DATA frames, so the copy writes to one `AsyncWrite` whatever the protocol.
    async fn run_tunnel(&mut self, head: Response<()>, tunnel: Tunnel) -> Result<(), SendError> {
        let Tunnel {
            upstream,
            client_body,
            limits,
            end,
            websocket,
        } = tunnel;
        self.state = State::HeadSent;
        if let Err(e) = self.stream.send_response(head).await {
            tunnel::finish(end, &Activity::default(), Ended::ClientGone);
            return Err(gone(e));
        }
        let (mut pipe_out, pipe_in) = tokio::io::simplex(16 * 1024);
        let client = tokio::io::join(tunnel::BodyReader::new(client_body), pipe_in);
        let tunnel = Tunnel {
            upstream,
            client_body: crate::body::RequestBody::empty(),
            limits,
            end,
            websocket,
        };
        let stream = &mut self.stream;
        // To the client until the pipe ends (then FIN) or the client fails (the pipe's
        // writer then fails and the tunnel ends).
        let forward = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match pipe_out.read(&mut buf).await {
                    Ok(0) | Err(_) => return stream.finish().await.is_ok(),
                    Ok(n) => {
                        if stream
                            .send_data(Bytes::copy_from_slice(&buf[..n]))
                            .await
                            .is_err()
                        {
                            return false;
                        }
                    }
                }
            }
        };
        tokio::pin!(forward);
        let splice = tunnel::splice(client, tunnel);
        tokio::pin!(splice);
        let mut finished = None;
        tokio::select! {
            _ = &mut splice => {}
            f = &mut forward => {
                finished = Some(f);
                splice.await;
            }
        }
        let finished = match finished {
            Some(f) => f,
            // The tunnel is over and its pipe closed: what is left reaches the client, then
            // FIN, unless the client does not read (bounded).
            None => tokio::time::timeout(Duration::from_secs(1), forward)
                .await
                .unwrap_or(false),
        };
        if finished {
            self.state = State::Finished;
        }
        Ok(())
    }
}

impl ClientSink for H3Sink {
    fn send(&mut self, resp: Response<ResponseBody>) -> Sending<'_> {
        Sending::Writing(Box::pin(self.write(resp)))
    }

    fn tunnel(&mut self, head: Response<()>, tunnel: Tunnel) -> Sending<'_> {
        Sending::Writing(Box::pin(self.run_tunnel(head, tunnel)))
    }

    fn udp_tunnel(&mut self, head: Response<()>, tunnel: UdpTunnel) -> Sending<'_> {
        Sending::Writing(Box::pin(self.run_udp(head, tunnel)))
    }

    fn reset_malformed(&mut self) -> bool {
        self.stream.stop_stream(Code::H3_MESSAGE_ERROR);
        self.state = State::Finished;
        true
    }
}

impl Drop for H3Sink {
    fn drop(&mut self) {
        match self.state {
            State::Finished => {}
            // RFC 9114 §4.1.1: an abandoned request is cancelled by resetting the stream.
            State::Fresh => self.stream.stop_stream(Code::H3_REQUEST_CANCELLED),
            // The response was cut short: the client must not take it as complete.
            State::HeadSent => self.stream.stop_stream(Code::H3_INTERNAL_ERROR),
        }
    }
}
