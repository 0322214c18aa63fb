//! Balancing among an upstream's backends: the order in which select tries them.

use std::sync::atomic::{AtomicUsize, Ordering};

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
