//! Egress: prepares the upstream response (hop-by-hop fields out, `Via` in, the gRPC deadline
//! on its body) and hands it to the exchange's responder, which writes it on the client's own
//! protocol; the exchange's permits ride in the body until its last byte is gone.

use http::Response;
use serde::Deserialize;

use crate::contract::exchange::Exchange;
use crate::contract::flow::Flow;
use crate::contract::reason::Reason;
use crate::contract::responder::SendError;
use crate::contract::response::{Deadline, ResponseBody};
use crate::http::headers::{append_via, strip_hop_by_hop};

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
    via: Via,
    deadline_cut: metrics::Counter,
}

impl Egress {
    pub fn build(config: &Config, pipeline: &str) -> Self {
        Egress {
            via: config.via,
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
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if self.via == Via::On {
            append_via(&mut parts.headers, "1.1");
        }
        if let Some(route) = &ex.decided.route {
            route.edits.response.apply(&mut parts.headers);
        }
        let status = parts.status;
        // A gRPC deadline still bounds the streamed body.
        let deadline = ex
            .deadline
            .map(|at| Deadline::new(at, self.deadline_cut.clone()));
        // The exchange's permits travel with the body and come back when its last byte is
        // gone (or the client goes), whichever protocol writes it.
        ex.record.mark("egress");
        let end = ex.end(status);
        let body = ResponseBody::upstream(body, deadline).ending(end);
        match ex.responder.send(Response::from_parts(parts, body)).await {
            Ok(()) => Flow::Done,
            Err(SendError::ClientGone(_)) => Flow::Abandon(ex, Reason::ClientGone),
            Err(SendError::UpstreamBody(e)) => {
                tracing::warn!(exchange = ex.id, error = %e, "upstream response body failed");
                Flow::Abandon(ex, Reason::UpstreamBody)
            }
        }
    }
}
