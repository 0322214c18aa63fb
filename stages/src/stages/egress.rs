//! Egress: streams the upstream response — head, body chunks, trailers — to the client on its
//! own protocol, then ends the exchange (dropping it returns every permit).

use http::Response;
use http_body_util::BodyExt;
use serde::Deserialize;

use crate::adapters::responder::{Deadline, ProxyBody};
use crate::contract::exchange::Exchange;
use crate::contract::flow::{Flow, Reject};
use crate::http::headers::{append_via, strip_hop_by_hop};
use crate::metrics::RequestMetrics;

/// Whether the proxy adds itself to `Via` on responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    #[default]
    On,
    Off,
}

/// `[stages.egress]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Add `Via: 1.1 spooky` to responses (RFC 9110 §7.6.3).
    #[serde(default)]
    pub via: Via,
}

/// The running stage.
pub struct Egress {
    requests: RequestMetrics,
    via: Via,
    deadline_cut: metrics::Counter,
}

impl Egress {
    pub fn build(config: &Config, pipeline: &str) -> Self {
        Egress {
            requests: RequestMetrics::new(pipeline),
            via: config.via,
            deadline_cut: metrics::counter!(
                crate::metrics::GRPC_DEADLINE_CUT,
                "pipeline" => pipeline.to_string()
            ),
        }
    }

    pub async fn process(&self, mut ex: Exchange) -> Flow {
        let Some(resp) = ex.response.take() else {
            return Flow::Reject(
                ex,
                Reject::new(http::StatusCode::BAD_GATEWAY, "no_response"),
            );
        };
        let (mut parts, mut body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if self.via == Via::On {
            append_via(&mut parts.headers, "1.1");
        }
        let status = parts.status;
        // A gRPC deadline still bounds the streamed body.
        let mut deadline = ex
            .deadline
            .map(|at| Deadline::new(at, self.deadline_cut.clone()));
        if ex.responder.takes_whole_response() {
            // HTTP/1.1 and HTTP/2: hyper streams the body; the exchange's permits travel with
            // it and come back when the last byte is sent (or the client goes).
            let permits = std::mem::take(&mut ex.permits);
            let resp = Response::from_parts(parts, ProxyBody::upstream(body, permits, deadline));
            return match ex.responder.send_response(resp) {
                Ok(()) => {
                    self.requests.record(status, ex.started);
                    Flow::Done
                }
                Err(_) => Flow::Abandon(ex, "client_gone"),
            };
        }
        let mut head = Response::new(());
        *head.status_mut() = status;
        *head.headers_mut() = parts.headers;
        if ex.responder.send_head(head).await.is_err() {
            return Flow::Abandon(ex, "client_gone");
        }
        let conn = ex.conn.clone();
        let closed = async move {
            match conn {
                Some(c) => {
                    c.closed().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::pin!(closed);
        let passed = async {
            match deadline.as_mut() {
                Some(d) => d.passed().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(passed);
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = &mut closed => return Flow::Abandon(ex, "client_gone"),
                () = &mut passed => {
                    tracing::info!(exchange = ex.id, "gRPC deadline passed while the response streamed");
                    // Dropping the upstream body resets the backend's stream.
                    drop(body);
                    let ended = ex.responder.send_trailers(crate::http::grpc::deadline_trailers()).await;
                    return match ended {
                        Ok(()) => {
                            self.requests.record(status, ex.started);
                            Flow::Done
                        }
                        Err(_) => Flow::Abandon(ex, "client_gone"),
                    };
                }
            };
            let result = match frame {
                None => ex.responder.finish().await,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if data.is_empty() {
                            continue;
                        }
                        match ex.responder.send_data(data).await {
                            Ok(()) => continue,
                            Err(_) => return Flow::Abandon(ex, "client_gone"),
                        }
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(mut trailers) => {
                            strip_hop_by_hop(&mut trailers);
                            ex.responder.send_trailers(trailers).await
                        }
                        Err(_) => continue,
                    },
                },
                Some(Err(e)) => {
                    tracing::warn!(exchange = ex.id, error = %e, "upstream response body failed");
                    // Dropping the responder mid-body resets the client stream.
                    return Flow::Abandon(ex, "upstream_body");
                }
            };
            return match result {
                Ok(()) => {
                    self.requests.record(status, ex.started);
                    Flow::Done
                }
                Err(_) => Flow::Abandon(ex, "client_gone"),
            };
        }
    }
}
