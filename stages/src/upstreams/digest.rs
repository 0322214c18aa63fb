//! An upstream's recent response-head latencies, for percentile hedge delays
//! (`hedge = { delay = "p95" }`): log-scale buckets (4 per power of two of microseconds, so a
//! percentile is known within 19 %), counted over the last 10–20 s in two rotating halves.
//! Recording is one atomic add; a percentile is computed at most every 100 ms and cached
//! (until there are enough samples, every time).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::upstreams::balance::now_ns;

const BUCKETS: usize = 120;
/// Each half of the window.
const HALF: u64 = 10_000_000_000;
/// A cached percentile is this fresh.
const CACHE: u64 = 100_000_000;
/// Fewer samples than this in the window: no percentile (no hedge by percentile).
pub const MIN_SAMPLES: u64 = 20;

struct Half {
    epoch: AtomicU64,
    counts: [AtomicU32; BUCKETS],
}

/// Recent latencies of one upstream.
pub struct LatencyDigest {
    halves: [Half; 2],
    /// (percentile × 1000) << 40 | value in µs, and when it was computed.
    cached: AtomicU64,
    cached_at: AtomicU64,
}

impl Default for LatencyDigest {
    fn default() -> Self {
        let half = || Half {
            epoch: AtomicU64::new(u64::MAX),
            counts: std::array::from_fn(|_| AtomicU32::new(0)),
        };
        LatencyDigest {
            halves: [half(), half()],
            cached: AtomicU64::new(0),
            cached_at: AtomicU64::new(0),
        }
    }
}

/// The bucket of `us` microseconds.
fn bucket(us: u64) -> usize {
    let us = us.max(1);
    let exp = 63 - us.leading_zeros() as usize;
    let sub = if exp >= 2 {
        ((us >> (exp - 2)) & 3) as usize
    } else {
        0
    };
    (exp * 4 + sub).min(BUCKETS - 1)
}

/// The upper bound of bucket `i`, in microseconds.
fn upper(i: usize) -> u64 {
    let exp = i / 4;
    let sub = (i % 4) as u64;
    if exp < 2 {
        return 1u64 << (exp + 1);
    }
    (1u64 << exp) + (sub + 1) * (1u64 << (exp - 2))
}

impl LatencyDigest {
    /// Counts one response head that took `d`, arrived at `now` (`balance::now_ns`).
    pub fn record(&self, d: Duration, now: u64) {
        self.record_at(d, now);
    }

    fn half(&self, now: u64) -> &Half {
        let epoch = now / HALF;
        let h = &self.halves[(epoch % 2) as usize];
        let seen = h.epoch.load(Ordering::Acquire);
        if seen != epoch
            && h.epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for c in &h.counts {
                c.store(0, Ordering::Relaxed);
            }
        }
        h
    }

    fn record_at(&self, d: Duration, now: u64) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.half(now).counts[bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `p`-th percentile (0 < p < 100) of the window, or `None` with too few samples.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        self.percentile_at(p, now_ns())
    }

    fn percentile_at(&self, p: f64, now: u64) -> Option<Duration> {
        let key = ((p * 1000.0) as u64) << 40;
        let cached = self.cached.load(Ordering::Relaxed);
        let at = self.cached_at.load(Ordering::Relaxed);
        if cached & !((1 << 40) - 1) == key && now.saturating_sub(at) < CACHE && at != 0 {
            return Some(Duration::from_micros(cached & ((1 << 40) - 1)));
        }
        let epoch = now / HALF;
        let mut counts = [0u64; BUCKETS];
        for h in &self.halves {
            let e = h.epoch.load(Ordering::Acquire);
            if e == epoch || e.wrapping_add(1) == epoch {
                for (sum, c) in counts.iter_mut().zip(&h.counts) {
                    *sum += u64::from(c.load(Ordering::Relaxed));
                }
            }
        }
        let total: u64 = counts.iter().sum();
        let us = if total < MIN_SAMPLES {
            0
        } else {
            let rank = ((total as f64) * p / 100.0).ceil().max(1.0) as u64;
            let mut seen = 0;
            let mut found = upper(BUCKETS - 1);
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    found = upper(i);
                    break;
                }
            }
            found.min((1 << 40) - 1)
        };
        if us == 0 {
            // Too few samples is not cached: the first ones count at once.
            return None;
        }
        self.cached.store(key | us, Ordering::Relaxed);
        self.cached_at.store(now.max(1), Ordering::Relaxed);
        Some(Duration::from_micros(us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_by_a_quarter_octave() {
        assert_eq!(bucket(1), 0);
        assert!(upper(bucket(1000)) >= 1000);
        assert!(upper(bucket(1000)) <= 1200);
        for us in [3u64, 17, 999, 1_000_000, 30_000_000] {
            let b = bucket(us);
            assert!(upper(b) >= us, "{us}");
            assert!(
                (upper(b) as f64) <= us as f64 * 1.26 + 2.0,
                "{us}: {}",
                upper(b)
            );
        }
    }

    #[test]
    fn percentiles_of_the_window() {
        let d = LatencyDigest::default();
        let t = 50 * HALF;
        for _ in 0..10 {
            d.record_at(Duration::from_millis(1), t);
        }
        assert_eq!(d.percentile_at(95.0, t), None, "too few samples");
        for _ in 0..85 {
            d.record_at(Duration::from_millis(1), t + 1);
        }
        for _ in 0..5 {
            d.record_at(Duration::from_millis(100), t + 1);
        }
        let p50 = d.percentile_at(50.0, t + CACHE).expect("p50");
        assert!(p50 >= Duration::from_millis(1) && p50 < Duration::from_micros(1300));
        let p99 = d.percentile_at(99.0, t + 2 * CACHE).expect("p99");
        assert!(p99 >= Duration::from_millis(100) && p99 < Duration::from_millis(126));
        // Two halves later, it is all forgotten.
        assert_eq!(d.percentile_at(50.0, t + 2 * HALF + CACHE), None);
    }
}
