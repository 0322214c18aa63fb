//! Egress: prepares the upstream response (hop-by-hop fields out, `Via` in, the gRPC deadline
//! on its body) and hands it to the exchange's responder, which writes it on the client's own
//! protocol; the exchange's permits ride in the body until its last byte is gone.

use http::Response;
use serde::Deserialize;

use http::HeaderValue;
use hyper_util::rt::TokioIo;

use crate::body::RequestBody;
use crate::contract::exchange::{ClientProtocol, Exchange};
use crate::contract::flow::Flow;
use crate::contract::reason::Reason;
use crate::contract::responder::SendError;
use crate::contract::response::{Deadline, ResponseBody};
use crate::contract::tunnel::{Limits, Tunnel};
use crate::http::headers::{append_via, strip_hop_by_hop};
use crate::http::upgrade;
use crate::units::Dur;
use crate::upstreams::UpstreamBody;

/// Whether the proxy adds itself to `Via` on responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    #[default]
    On,
    Off,
}

/// `[stages.egress]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Add `Via: 1.1 spooky` to responses (RFC 9110 §7.6.3).
    #[serde(default)]
    pub via: Via,
    /// The longest the backend may pause its response body before it is cut (`"0s"`: no
    /// limit); a route's `timeouts.response_body_idle` overrides it.
    #[serde(default = "default_body_idle")]
    pub response_body_idle: Dur,
    /// The longest a tunnel (WebSocket) may carry no byte either way before it is closed
    /// (`"0s"`: no limit); a route's `timeouts.tunnel_idle` overrides it.
    #[serde(default = "default_tunnel_idle")]
    pub tunnel_idle: Dur,
}

fn default_tunnel_idle() -> Dur {
    Dur(std::time::Duration::from_secs(300))
}

fn default_body_idle() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            via: Via::default(),
            response_body_idle: default_body_idle(),
            tunnel_idle: default_tunnel_idle(),
        }
    }
}

/// The running stage.
pub struct Egress {
    via: Via,
    deadline_cut: metrics::Counter,
    response_body_idle: Option<std::time::Duration>,
    total_cut: metrics::Counter,
    tunnel_idle: Option<std::time::Duration>,
}

impl Egress {
    pub fn build(config: &Config, pipeline: &str) -> Self {
        Egress {
            via: config.via,
            response_body_idle: Some(config.response_body_idle.0).filter(|d| !d.is_zero()),
            tunnel_idle: Some(config.tunnel_idle.0).filter(|d| !d.is_zero()),
            total_cut: metrics::counter!(crate::metrics::RESPONSE_BODY_CUT, "reason" => "total"),
            deadline_cut: metrics::counter!(
                crate::metrics::GRPC_DEADLINE_CUT,
                "pipeline" => pipeline.to_string()
            ),
        }
    }

    pub async fn process(&self, mut ex: Exchange) -> Flow {
        let Some(resp) = ex.response.take() else {
            return Flow::Reject(ex, Reason::ChainIncomplete);
        };
        if ex.tunnel.is_some() && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            return self.tunnel(ex, resp).await;
        }
        if ex.tunnel == Some(crate::contract::tunnel::TunnelKind::WebSocket)
            && resp.status().is_success()
            && ex.client.protocol != ClientProtocol::Http1
        {
            // A backend that answered the handshake 2xx without switching (an HTTP/2 backend
            // reached by ALPN, which saw a plain GET): over extended CONNECT a 2xx means the
            // tunnel is open (RFC 8441 §5), so it must not reach the client as it is.
            tracing::debug!(exchange = ex.id, status = %resp.status(), "WebSocket handshake answered without a switch");
            return Flow::Reject(ex, Reason::UpstreamUpgrade);
        }
        let (mut parts, body) = resp.into_parts();
        self.head(&ex, &mut parts.headers);
        let status = parts.status;
        // A gRPC deadline, or the route's total timeout, still bounds the streamed body.
        let deadline = match (ex.deadline, ex.total_deadline) {
            (Some(g), Some(t)) if t < g => Some(Deadline::total(t, self.total_cut.clone())),
            (Some(g), _) => Some(Deadline::new(g, self.deadline_cut.clone())),
            (None, Some(t)) => Some(Deadline::total(t, self.total_cut.clone())),
            (None, None) => None,
        };
        let idle = ex
            .decided
            .route
            .as_ref()
            .and_then(|r| r.timeouts.response_body_idle)
            .map(|d| d.0)
            // gRPC streams may be quiet for long: only a route's own limit applies to them.
            .or(self.response_body_idle.filter(|_| !ex.grpc));
        // The exchange's permits travel with the body and come back when its last byte is
        // gone (or the client goes), whichever protocol writes it.
        ex.record.mark("egress");
        let end = ex.end(status);
        let mut body = ResponseBody::upstream(body, deadline);
        if let Some(after) = idle {
            body = body.idle_after(after);
        }
        let body = body.ending(end);
        match ex.responder.send(Response::from_parts(parts, body)).await {
            Ok(()) => Flow::Done,
            Err(SendError::ClientGone(_)) => Flow::Abandon(ex, Reason::ClientGone),
            Err(SendError::UpstreamBody(e)) => {
                tracing::warn!(exchange = ex.id, error = %e, "upstream response body failed");
                Flow::Abandon(ex, Reason::UpstreamBody)
            }
        }
    }

    /// The response head's fields as the client gets them: hop-by-hop ones out, the request
    /// id and `Via` in, the route's edits applied.
    fn head(&self, ex: &Exchange, headers: &mut http::HeaderMap) {
        strip_hop_by_hop(headers);
        // Room for what this adds (the request id, Via, Alt-Svc) at once: a backend's map
        // is made as large as what it sent, and would otherwise grow twice.
        headers.reserve(4);
        ex.stamp(headers);
        if self.via == Via::On {
            append_via(headers, "1.1");
        }
        if let Some(route) = &ex.decided.route {
            route.edits.response.apply(headers);
        }
    }

    /// The backend accepted a WebSocket (`101`): the client is answered on its protocol
    /// (HTTP/1.1 `101` with the backend's accept; HTTP/2 `200`, RFC 8441 §5) and the two
    /// connections become one tunnel.
    async fn tunnel(&self, mut ex: Exchange, mut resp: Response<UpstreamBody>) -> Flow {
        let upgrading = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        let accept = parts.headers.remove(upgrade::SEC_WEBSOCKET_ACCEPT);
        self.head(&ex, &mut parts.headers);
        let upstream = match upgrading.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(exchange = ex.id, error = %e, "backend's WebSocket upgrade failed");
                return Flow::Reject(ex, Reason::UpstreamUpgrade);
            }
        };
        if ex.client.protocol == ClientProtocol::Http1 {
            // The client's own key was forwarded: the backend's accept answers it.
            let h = &mut parts.headers;
            h.insert(
                http::header::CONNECTION,
                HeaderValue::from_static("upgrade"),
            );
            h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
            // An HTTP/2 backend (RFC 8441) has no accept: Spooky answers the client's key.
            let accept = accept.or_else(|| {
                let key = ex.head.headers.get(upgrade::SEC_WEBSOCKET_KEY)?;
                HeaderValue::from_str(&upgrade::accept_for(key.as_bytes())).ok()
            });
            if let Some(a) = accept {
                h.insert(upgrade::SEC_WEBSOCKET_ACCEPT, a);
            }
        } else {
            parts.status = http::StatusCode::OK;
        }
        let route = ex.decided.route.as_ref();
        let limits = Limits {
            idle: route
                .and_then(|r| r.timeouts.tunnel_idle)
                .map(|d| d.0)
                .or(self.tunnel_idle),
            until: ex.total_deadline.map(tokio::time::Instant::from_std),
        };
        ex.record.mark("egress");
        let end = ex.end(parts.status);
        let client_body = std::mem::replace(&mut ex.body, RequestBody::empty());
        let tunnel = Tunnel {
            upstream: Box::new(TokioIo::new(upstream)),
            client_body,
            limits,
            end,
            websocket: true,
        };
        match ex
            .responder
            .tunnel(Response::from_parts(parts, ()), tunnel)
            .await
        {
            Ok(()) => Flow::Done,
            Err(_) => Flow::Abandon(ex, Reason::ClientGone),
        }
    }
}
