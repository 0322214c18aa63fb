//! Select: picks a backend of the exchange's upstream — weighted smooth round-robin, skipping
//! backends already tried and backends at their inflight cap — and takes its permit.

use serde::Deserialize;

use crate::contract::exchange::Exchange;
use crate::contract::flow::Flow;
use crate::contract::reason::Reason;

/// `[stages.select]`: nothing to set yet (the algorithm is per upstream: `balance`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// The running stage.
pub struct Select;

impl Select {
    pub fn build(_config: &Config) -> Self {
        Select
    }

    pub async fn process(&self, ex: Exchange) -> Flow {
        self.decide(ex)
    }

    pub fn decide(&self, mut ex: Exchange) -> Flow {
        let Some(upstream) = ex.decided.upstream.clone() else {
            return Flow::Continue(ex);
        };
        // Without a queue stage in the chain, the upstream cap is taken here, without waiting.
        if ex.permits.upstream.is_none() {
            match upstream.cap.try_acquire() {
                Ok(p) => ex.permits.upstream = Some(p),
                Err(_) => return Flow::Reject(ex, Reason::UpstreamFull),
            }
        }
        ex.permits.backend = None;
        ex.decided.backend = None;
        let retrying = !ex.decided.attempts.is_empty();
        for i in upstream.balancer.order() {
            if ex.decided.attempts.iter().any(|a| a.backend == i) {
                continue;
            }
            if let Ok(p) = upstream.backends[i].cap.try_acquire() {
                ex.permits.backend = Some(p);
                ex.decided.backend = Some(i);
                return Flow::Continue(ex);
            }
        }
        if retrying {
            // Every other backend was tried or is busy: report the failure that sent us here.
            Flow::Reject(ex, Reason::UpstreamConnect)
        } else {
            Flow::Reject(ex, Reason::NoBackend)
        }
    }
}
