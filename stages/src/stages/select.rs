//! Select: picks a backend of the exchange's upstream — weighted smooth round-robin, skipping
//! backends already tried and backends at their inflight cap — and takes its permit.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;

use crate::exchange::Exchange;
use crate::flow::{Flow, Reject};

/// `[stages.select]`: nothing to set yet (the algorithm is per upstream: `balance`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// Weighted smooth round-robin (nginx's algorithm), precomputed into one cycle so the hot
/// path is a single atomic increment.
pub struct RoundRobin {
    cycle: Vec<usize>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
        let mut current = vec![0i64; weights.len()];
        let mut cycle = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for _ in 0..total {
            for (c, w) in current.iter_mut().zip(weights) {
                *c += i64::from(*w);
            }
            let Some((best, _)) = current
                .iter()
                .enumerate()
                .max_by_key(|(i, c)| (**c, -(*i as i64)))
            else {
                break;
            };
            current[best] -= total;
            cycle.push(best);
        }
        RoundRobin {
            cycle,
            next: AtomicUsize::new(0),
        }
    }

    /// The backends to try, in order, for one pick: the next in the cycle first.
    pub fn order(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.cycle.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..self.cycle.len()).map(move |i| self.cycle[(start + i) % n])
    }
}

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
        let Some(upstream) = ex.upstream.clone() else {
            return Flow::Continue(ex);
        };
        // Without a queue stage in the chain, the upstream cap is taken here, without waiting.
        if ex.permits.upstream.is_none() {
            match upstream.cap.try_acquire() {
                Ok(p) => ex.permits.upstream = Some(p),
                Err(_) => return Flow::Reject(ex, Reject::overload("upstream_full")),
            }
        }
        ex.permits.backend = None;
        ex.backend = None;
        let retrying = !ex.attempts.is_empty();
        for i in upstream.balancer.order() {
            if ex.attempts.iter().any(|a| a.backend == i) {
                continue;
            }
            if let Ok(p) = upstream.backends[i].cap.try_acquire() {
                ex.permits.backend = Some(p);
                ex.backend = Some(i);
                return Flow::Continue(ex);
            }
        }
        if retrying {
            // Every other backend was tried or is busy: report the failure that sent us here.
            Flow::Reject(ex, Reject::upstream_connect())
        } else {
            Flow::Reject(ex, Reject::overload("no_backend"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_weighted_cycle() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        assert_eq!(rr.cycle, vec![0, 0, 1, 0, 2, 0, 0]);
        let rr = RoundRobin::new(&[1, 1]);
        let picks: Vec<usize> = (0..4).map(|_| rr.order().next().unwrap_or(9)).collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
    }
}
