//! Select: picks a backend of the exchange's upstream for each attempt (hedge-retry runs it)
//! — the upstream's balancer orders the candidates (`upstreams::balance`), select skips
//! backends already tried and backends at their inflight cap — and takes its permit.

use serde::Deserialize;

use crate::contract::exchange::Exchange;
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

    /// Picks the backend of the next attempt and takes its permit: the next in the
    /// balancer's order that was not tried yet and has room.
    pub fn pick(&self, ex: &mut Exchange) -> Result<(), Reason> {
        let Some(upstream) = ex.decided.upstream.clone() else {
            return Ok(());
        };
        // Without a queue stage in the chain, the upstream cap is taken here, without waiting.
        if ex.permits.upstream.is_none() {
            match upstream.cap.try_acquire() {
                Ok(p) => ex.permits.upstream = Some(p),
                Err(_) => return Err(Reason::UpstreamFull),
            }
        }
        ex.permits.backend = None;
        ex.decided.backend = None;
        let key = upstream
            .hash_key
            .as_ref()
            .and_then(|k| k.hash(&ex.head, ex.client.addr.ip(), ex.client.conn));
        for i in upstream.balancer.pick(upstream.backends.as_slice(), key) {
            if ex.decided.attempts.iter().any(|a| a.backend == i) {
                continue;
            }
            if let Ok(p) = upstream.backends[i].cap.try_acquire() {
                ex.permits.backend = Some(p);
                ex.decided.backend = Some(i);
                return Ok(());
            }
        }
        match ex.decided.attempts.last() {
            // Every other backend was tried or is busy: report the failure that sent us here.
            Some(last) => Err(last.error.reason()),
            None => Err(Reason::NoBackend),
        }
    }
}
