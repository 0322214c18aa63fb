//! Select: picks a backend of the exchange's upstream for each attempt (hedge-retry runs it)
//! — the upstream's balancer orders the candidates (`upstreams::balance`), select skips
//! backends already tried and backends at their inflight cap — and takes its permit. When
//! every candidate is at its cap, the exchange waits for one up to the queue stage's
//! deadline (`[stages.select] when_full = "wait"`, with a queue stage), or is answered 503
//! `no_backend` at once (`when_full = "shed"`). A backend whose circuit breaker is open is
//! skipped; when that leaves none, 503 `breaker_open`.

use std::time::Duration;

use serde::Deserialize;

use crate::contract::exchange::Exchange;
use crate::contract::reason::Reason;

/// `[stages.select]`: nothing to set yet (the algorithm is per upstream: `balance`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// The running stage.
pub struct Select {
    /// When every candidate is at its `max_inflight`: wait this long for one (the queue
    /// stage's deadline), or, `None`, answer 503 at once (`when_full = "shed"`, or no queue
    /// stage in the chain).
    wait: Option<Duration>,
}

/// How waiting for a backend ended.
pub enum Waited {
    Got,
    Refused(Reason),
    Cancelled,
}

impl Select {
    pub fn build(_config: &Config, wait: Option<Duration>) -> Self {
        Select { wait }
    }

    /// Whether an exchange refused `NoBackend` by [`Select::pick`] may wait for a backend.
    pub fn waits(&self) -> bool {
        self.wait.is_some()
    }

    /// Every candidate was at its cap: waits (up to the queue deadline) for the first of
    /// them to have room, and takes its permit.
    pub async fn wait_for_backend(&self, ex: &mut Exchange) -> Waited {
        let (Some(limit), Some(upstream)) = (self.wait, ex.decided.upstream.clone()) else {
            return Waited::Refused(Reason::NoBackend);
        };
        let key = upstream
            .hash_key
            .as_ref()
            .and_then(|k| k.hash(&ex.head, ex.client.ip, ex.client.conn));
        let candidates: Vec<usize> = upstream
            .balancer
            .pick(upstream.backends.as_slice(), key)
            .filter(|i| !ex.decided.attempts.iter().any(|a| a.backend == *i))
            .collect();
        let by_health = upstream.filters_by_health();
        let candidates: Vec<usize> = candidates
            .into_iter()
            .filter(|i| !by_health || upstream.backends[*i].available())
            .filter(|i| {
                upstream.backends[*i]
                    .breaker
                    .as_ref()
                    .is_none_or(|b| !b.is_open())
            })
            .collect();
        if candidates.is_empty() {
            return Waited::Refused(Reason::NoBackend);
        }
        let acquires = candidates.iter().map(|&i| {
            let cap = upstream.backends[i].cap.clone();
            Box::pin(async move { (i, cap.acquire().await) })
        });
        let waited = {
            let any = tokio::time::timeout(limit, futures::future::select_all(acquires));
            tokio::select! {
                r = any => Some(r),
                () = ex.cancelled() => None,
            }
        };
        match waited {
            Some(Ok(((i, Ok(permit)), _, _))) => {
                let Ok(ticket) = upstream.backends[i].admit() else {
                    return Waited::Refused(Reason::BreakerOpen);
                };
                ex.permits.backend = Some(permit);
                ex.permits.breaker = ticket;
                ex.decided.backend = Some(i);
                Waited::Got
            }
            Some(Ok(((_, Err(_)), _, _))) => Waited::Refused(Reason::ShuttingDown),
            Some(Err(_elapsed)) => Waited::Refused(Reason::QueueDeadline),
            None => Waited::Cancelled,
        }
    }

    /// Picks the backend of the next attempt and takes its permit (and its breaker's
    /// ticket): the next in the balancer's order that was not tried yet, is available, has
    /// room and whose breaker lets it. `reuse`: when no untried backend is left, a tried one
    /// may be taken again (an upstream's own `retry` policy, with one backend left).
    pub fn pick(&self, ex: &mut Exchange, reuse: bool) -> Result<(), Reason> {
        self.pick_avoiding(ex, reuse, None)
    }

    /// [`Select::pick`], never choosing `avoid` (a hedge goes to another backend than the
    /// attempt it races).
    pub fn pick_avoiding(
        &self,
        ex: &mut Exchange,
        reuse: bool,
        avoid: Option<usize>,
    ) -> Result<(), Reason> {
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
        ex.permits.breaker = None;
        ex.decided.backend = None;
        let key = upstream
            .hash_key
            .as_ref()
            .and_then(|k| k.hash(&ex.head, ex.client.ip, ex.client.conn));
        // Health (active and passive) takes backends out, unless none is left.
        let by_health = upstream.filters_by_health();
        let mut broken = false;
        for pass in [false, true] {
            if pass && (!reuse || ex.decided.attempts.is_empty()) {
                break;
            }
            let order = match (avoid, ex.decided.attempts.last()) {
                (Some(b), _) => upstream.balancer.after(b),
                (None, Some(last)) => upstream.balancer.after(last.backend),
                (None, None) => upstream.balancer.pick(upstream.backends.as_slice(), key),
            };
            for i in order {
                let tried = ex.decided.attempts.iter().any(|a| a.backend == i);
                if tried != pass || avoid == Some(i) {
                    continue;
                }
                let backend = &upstream.backends[i];
                if by_health && !backend.available() {
                    continue;
                }
                let Ok(permit) = backend.cap.try_acquire() else {
                    continue;
                };
                let Ok(ticket) = backend.admit() else {
                    broken = true;
                    continue;
                };
                ex.permits.backend = Some(permit);
                ex.permits.breaker = ticket;
                ex.decided.backend = Some(i);
                return Ok(());
            }
        }
        match ex.decided.attempts.last() {
            // Every other backend was tried or is busy: report the failure that sent us here.
            Some(last) => Err(last.error.reason()),
            None if broken => Err(Reason::BreakerOpen),
            None => Err(Reason::NoBackend),
        }
    }
}
