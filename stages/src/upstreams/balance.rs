//! Balancing among an upstream's backends: one interface for every algorithm.
//!
//! Given the live loads of the candidates (inflight counts and latency estimates) and the
//! request's key, a [`Balancer`] yields backends in preference order: its choice first, then
//! the other candidates from there, so a retry or a full backend moves on to the next one.
//! Only candidates are yielded: backends with `enabled = false` are not members (the health
//! hook of the resilience work takes members out the same way).
//!
//! Every algorithm is weight-aware; each is one match arm here:
//! - `round-robin`: smooth weighted round-robin (nginx's), precomputed into one cycle so a pick
//!   is one atomic increment, shared by every worker.
//! - `random`: weighted, by binary search over cumulative weights.
//! - `least-connections`: the lowest (inflight + 1) / weight; ties broken at random.
//! - `power-of-two`: two weighted random candidates, the less loaded by (inflight + 1) / weight.
//! - `latency-aware`: two weighted random candidates, the lower peak-EWMA latency ×
//!   (inflight + 1) / weight (Finagle's and Linkerd's model). A backend with no sample yet is
//!   taken to be as fast as the one it is compared with, so it gets traffic in proportion to
//!   its load, never a stampede.
//! - `consistent-hash` / `sticky-cid`: a weighted Maglev table (Google's Maglev, as Envoy
//!   builds it) keyed by the request key; one of N backends leaving moves about 1/N of keys.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::config::Balance;

/// How the balancer sees its candidates' load.
pub trait Loads {
    /// Exchanges in flight to backend `i`.
    fn inflight(&self, i: usize) -> usize;
    /// Backend `i`'s latency estimate.
    fn latency(&self, i: usize) -> &PeakEwma;
}

/// The weight-aware balancer of one upstream.
pub struct Balancer {
    algorithm: Balance,
    /// Used when the algorithm needs a request key and the request has none.
    fallback: Balance,
    /// Backend indices that may be chosen.
    members: Vec<usize>,
    weights: Vec<u32>,
    /// Running sums of `weights` (weighted random).
    cumulative: Vec<u64>,
    cycle: Vec<u32>,
    next: AtomicUsize,
    table: Vec<u32>,
}

impl Balancer {
    /// A balancer over `backends` given as (name, weight, enabled); names place them in the
    /// hash table, so a backend keeps its keys while others come and go.
    pub fn new(algorithm: Balance, fallback: Balance, backends: &[(&str, u32, bool)]) -> Self {
        let chosen: Vec<(usize, &str, u32)> = backends
            .iter()
            .enumerate()
            .filter(|(_, (_, w, enabled))| *enabled && *w > 0)
            .map(|(i, (name, w, _))| (i, *name, *w))
            .collect();
        let members: Vec<usize> = chosen.iter().map(|c| c.0).collect();
        let weights: Vec<u32> = chosen.iter().map(|c| c.2).collect();
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, w| {
                *sum += u64::from(*w);
                Some(*sum)
            })
            .collect();
        let hashed = matches!(algorithm, Balance::ConsistentHash | Balance::StickyCid);
        let names: Vec<&str> = chosen.iter().map(|c| c.1).collect();
        Balancer {
            algorithm,
            fallback,
            cycle: smooth_cycle(&weights),
            table: if hashed {
                maglev(&names, &weights)
            } else {
                Vec::new()
            },
            members,
            weights,
            cumulative,
            next: AtomicUsize::new(0),
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Balance {
        self.algorithm
    }

    /// Number of candidates.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// The backends to try for one request, best first. `key` is the request key's hash
    /// (consistent-hash, sticky-cid); without one those fall back to `fallback`.
    pub fn pick<L: Loads + ?Sized>(&self, loads: &L, key: Option<u64>) -> Order<'_> {
        let first = if self.members.is_empty() {
            0
        } else {
            match (self.algorithm, key) {
                (Balance::ConsistentHash | Balance::StickyCid, Some(k))
                    if !self.table.is_empty() =>
                {
                    self.table[(k % self.table.len() as u64) as usize] as usize
                }
                (Balance::ConsistentHash | Balance::StickyCid, _) => {
                    self.first(self.fallback, loads)
                }
                (a, _) => self.first(a, loads),
            }
        };
        Order {
            members: &self.members,
            first,
            k: 0,
        }
    }

    /// The order for a retry: every member, from the one after `backend` (the one that just
    /// failed), without moving the algorithm's state — a retry does not take a turn from
    /// the next request, so a failing backend is not every request's first choice.
    pub fn after(&self, backend: usize) -> Order<'_> {
        let m = self.members.len().max(1);
        let first = self
            .members
            .iter()
            .position(|&b| b == backend)
            .map_or(0, |p| (p + 1) % m);
        Order {
            members: &self.members,
            first,
            k: 0,
        }
    }

    /// The position (in `members`) an unkeyed algorithm chooses.
    fn first<L: Loads + ?Sized>(&self, algorithm: Balance, loads: &L) -> usize {
        let m = self.members.len();
        if m == 1 {
            return 0;
        }
        let load = |p: usize| (loads.inflight(self.members[p]) as u64 + 1, self.weights[p]);
        match algorithm {
            Balance::Random => self.weighted_random(),
            Balance::LeastConnections => {
                let mut best = 0;
                let mut ties = 1;
                for p in 1..m {
                    match cmp_load(load(p), load(best)) {
                        std::cmp::Ordering::Less => {
                            best = p;
                            ties = 1;
                        }
                        std::cmp::Ordering::Equal => {
                            ties += 1;
                            if fastrand::usize(..ties) == 0 {
                                best = p;
                            }
                        }
                        std::cmp::Ordering::Greater => {}
                    }
                }
                best
            }
            Balance::PowerOfTwo => {
                let (a, b) = self.two();
                if cmp_load(load(b), load(a)).is_lt() {
                    b
                } else {
                    a
                }
            }
            Balance::LatencyAware => {
                let (a, b) = self.two();
                let la = loads.latency(self.members[a]).get();
                let lb = loads.latency(self.members[b]).get();
                // A cold backend is taken to be as fast as the one it is compared with, and
                // wins a tie (that is its probe); once it has a request in flight it loses one.
                let (la, lb, prefer_b) = match (la, lb) {
                    (Some(x), Some(y)) => (x, y, false),
                    (Some(x), None) => (x, x, true),
                    (None, Some(y)) => (y, y, false),
                    (None, None) => (1, 1, false),
                };
                let cost = |lat: u64, (inflight, w): (u64, u32)| {
                    u128::from(lat.max(1)) * u128::from(inflight) * 1_000_000 / u128::from(w)
                };
                let (ca, cb) = (cost(la, load(a)), cost(lb, load(b)));
                if cb < ca || (cb == ca && prefer_b) {
                    b
                } else {
                    a
                }
            }
            // Round-robin, and a hashed algorithm named as its own fallback (config refuses it).
            _ => {
                let n = self.cycle.len().max(1);
                self.cycle
                    .get(self.next.fetch_add(1, Ordering::Relaxed) % n)
                    .map_or(0, |p| *p as usize)
            }
        }
    }

    fn weighted_random(&self) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0);
        if total == 0 {
            return 0;
        }
        let r = fastrand::u64(..total);
        self.cumulative.partition_point(|c| *c <= r)
    }

    /// Two different weighted random positions.
    fn two(&self) -> (usize, usize) {
        let m = self.members.len();
        let a = self.weighted_random();
        let mut b = self.weighted_random();
        if b == a {
            b = (a + 1 + fastrand::usize(..m - 1)) % m;
        }
        (a, b)
    }
}

/// (inflight + 1) / weight, compared without division.
fn cmp_load(a: (u64, u32), b: (u64, u32)) -> std::cmp::Ordering {
    (u128::from(a.0) * u128::from(b.1)).cmp(&(u128::from(b.0) * u128::from(a.1)))
}

/// Backends in preference order: the balancer's choice, then the other candidates from there.
pub struct Order<'a> {
    members: &'a [usize],
    first: usize,
    k: usize,
}

impl Iterator for Order<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        let m = self.members.len();
        if self.k >= m {
            return None;
        }
        let i = self.members[(self.first + self.k) % m];
        self.k += 1;
        Some(i)
    }
}

/// The longest precomputed round-robin cycle; larger weight sums are scaled down to it.
const MAX_CYCLE: u64 = 1 << 20;

/// Above this many steps × members, the cycle is built by stride scheduling (O(log n) a
/// step) instead of nginx's O(n) step: as smooth, a different but equally fair order.
const MAX_SMOOTH_WORK: u64 = 1 << 24;

/// Smooth weighted round-robin (nginx), unrolled into one cycle of member positions. Weights
/// are divided by their greatest common divisor first, so `[100, 50]` is a cycle of 3.
pub fn smooth_cycle(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().fold(0u32, |g, w| gcd(g, *w)).max(1);
    let mut weights: Vec<u64> = weights.iter().map(|w| u64::from(*w / g)).collect();
    let total: u64 = weights.iter().sum();
    if total > MAX_CYCLE {
        for w in &mut weights {
            *w = (*w * MAX_CYCLE / total).max(1);
        }
    }
    let total: u64 = weights.iter().sum();
    let mut cycle = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    if total.saturating_mul(weights.len() as u64) <= MAX_SMOOTH_WORK {
        let total = total as i64;
        let mut current = vec![0i64; weights.len()];
        for _ in 0..total {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += *w as i64;
            }
            // The largest current weight; the first index wins ties.
            let best = (0..current.len())
                .max_by_key(|i| (current[*i], std::cmp::Reverse(*i)))
                .unwrap_or(0);
            current[best] -= total;
            cycle.push(best as u32);
        }
    } else {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        // Each member's next virtual time advances by total/weight per pick.
        let mut heap: BinaryHeap<Reverse<(u128, usize)>> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Reverse((u128::from(total) * 1_000_000 / u128::from(*w) / 2, i)))
            .collect();
        for _ in 0..total {
            let Some(Reverse((at, i))) = heap.pop() else {
                break;
            };
            cycle.push(i as u32);
            heap.push(Reverse((
                at + u128::from(total) * 1_000_000 / u128::from(weights[i]),
                i,
            )));
        }
    }
    cycle
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The smallest Maglev table: 65 537 entries (a prime), or a prime ≥ 100 entries per member.
const MAGLEV_MIN: usize = 65_537;

/// A weighted Maglev lookup table of member positions (Eisenbud et al., NSDI 2016; weights
/// as Envoy applies them: a member with half the largest weight takes a turn every other
/// round).
pub fn maglev(names: &[&str], weights: &[u32]) -> Vec<u32> {
    let n = names.len();
    if n == 0 {
        return Vec::new();
    }
    let size = next_prime(MAGLEV_MIN.max(100 * n)) as u64;
    let offset: Vec<u64> = names
        .iter()
        .map(|s| crate::http::key::hash(s.as_bytes()) % size)
        .collect();
    let skip: Vec<u64> = names
        .iter()
        .map(|s| crate::http::key::hash(format!("{s}\0skip").as_bytes()) % (size - 1) + 1)
        .collect();
    let max_w = u64::from(weights.iter().copied().max().unwrap_or(1).max(1));
    let mut target = vec![0u64; n];
    let mut next = vec![0u64; n];
    let mut table = vec![u32::MAX; size as usize];
    let mut filled = 0u64;
    let mut round = 1u64;
    while filled < size {
        for i in 0..n {
            if filled == size {
                break;
            }
            if round * u64::from(weights[i]) < target[i] {
                continue;
            }
            target[i] += max_w;
            loop {
                let c = ((offset[i] + next[i] * skip[i]) % size) as usize;
                next[i] += 1;
                if table[c] == u32::MAX {
                    table[c] = i as u32;
                    filled += 1;
                    break;
                }
            }
        }
        round += 1;
    }
    table
}

fn next_prime(mut n: usize) -> usize {
    let prime = |n: usize| {
        n >= 2
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    };
    while !prime(n) {
        n += 1;
    }
    n
}

/// How fast old latency samples are forgotten (Linkerd's default decay).
const DECAY_NS: f64 = 10e9;

/// A peak-sensitive moving average of response-head latency: a slower sample is taken at
/// once, faster ones pull it down with a 10 s time constant. Updated from every worker
/// without a lock (a lost update under a race is one sample).
#[derive(Debug, Default)]
pub struct PeakEwma {
    ns: AtomicU64,
    at: AtomicU64,
}

impl PeakEwma {
    /// A response head came `rtt` after the request was sent.
    pub fn observe(&self, rtt: Duration) {
        self.observe_at(rtt, now_ns());
    }

    fn observe_at(&self, rtt: Duration, now: u64) {
        let rtt = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX).max(1);
        let prev = self.ns.load(Ordering::Relaxed);
        let last = self.at.swap(now, Ordering::Relaxed);
        let next = if prev == 0 || rtt > prev {
            rtt
        } else {
            let w = (-(now.saturating_sub(last) as f64) / DECAY_NS).exp();
            (prev as f64 * w + rtt as f64 * (1.0 - w)) as u64
        };
        self.ns.store(next.max(1), Ordering::Relaxed);
    }

    /// The estimate in nanoseconds, or `None` before the first sample.
    pub fn get(&self) -> Option<u64> {
        match self.ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(ns),
        }
    }
}

/// Nanoseconds since the first call in this process.
pub fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// [`now_ns`] of an instant already read (no second clock read).
pub fn ns_at(at: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        inflight: Vec<usize>,
        latency: Vec<PeakEwma>,
    }

    impl Fake {
        fn idle(n: usize) -> Fake {
            Fake {
                inflight: vec![0; n],
                latency: (0..n).map(|_| PeakEwma::default()).collect(),
            }
        }
    }

    impl Loads for Fake {
        fn inflight(&self, i: usize) -> usize {
            self.inflight[i]
        }
        fn latency(&self, i: usize) -> &PeakEwma {
            &self.latency[i]
        }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://10.0.0.{i}:80")).collect()
    }

    fn balancer(algorithm: Balance, weights: &[u32]) -> Balancer {
        let names = names(weights.len());
        let list: Vec<(&str, u32, bool)> = names
            .iter()
            .zip(weights)
            .map(|(n, w)| (n.as_str(), *w, true))
            .collect();
        Balancer::new(algorithm, Balance::RoundRobin, &list)
    }

    /// Share of `picks` landing on each backend.
    fn shares(
        b: &Balancer,
        loads: &Fake,
        picks: usize,
        key: impl Fn(usize) -> Option<u64>,
    ) -> Vec<f64> {
        let mut counts = vec![0usize; loads.inflight.len()];
        for i in 0..picks {
            let first = b.pick(loads, key(i)).next().unwrap_or(usize::MAX);
            counts[first] += 1;
        }
        counts.iter().map(|c| *c as f64 / picks as f64).collect()
    }

    fn assert_close(got: &[f64], want: &[f64], tolerance: f64) {
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= tolerance,
                "got {got:?}, want {want:?} ± {tolerance}"
            );
        }
    }

    #[test]
    fn smooth_weighted_cycle() {
        assert_eq!(smooth_cycle(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_cycle(&[100, 50]), vec![0, 1, 0]);
        let huge = smooth_cycle(&[u32::MAX, 1]);
        assert!(huge.len() as u64 <= MAX_CYCLE + 2 && huge.contains(&1));
        // Many members with large, coprime weights: stride scheduling, still by weight.
        let weights: Vec<u32> = (0..1000).map(|i| 1000 + 2 * i + 1).collect();
        let cycle = smooth_cycle(&weights);
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let count = |i: u32| cycle.iter().filter(|p| **p == i).count() as f64;
        for i in [0u32, 500, 999] {
            let want = f64::from(weights[i as usize]) / total as f64 * cycle.len() as f64;
            assert!(
                (count(i) - want).abs() <= want * 0.01 + 1.0,
                "{i}: {} vs {want}",
                count(i)
            );
        }
    }

    /// Picks in a closed loop: `concurrency` requests in flight, the oldest finishing as each
    /// new one starts; a cold backend gets `warm_ms` as its latency when its first request
    /// ends. Returns each backend's share.
    fn closed_loop(
        b: &Balancer,
        loads: &mut Fake,
        picks: usize,
        concurrency: usize,
        warm_ms: u64,
    ) -> Vec<f64> {
        let mut counts = vec![0usize; loads.inflight.len()];
        let mut open = std::collections::VecDeque::new();
        for _ in 0..picks {
            let first = b.pick(&*loads, None).next().unwrap_or(0);
            counts[first] += 1;
            loads.inflight[first] += 1;
            open.push_back(first);
            if open.len() > concurrency
                && let Some(done) = open.pop_front()
            {
                loads.inflight[done] -= 1;
                if loads.latency[done].get().is_none() {
                    loads.latency[done].observe_at(Duration::from_millis(warm_ms), 1);
                }
            }
        }
        counts.iter().map(|c| *c as f64 / picks as f64).collect()
    }

    #[test]
    fn every_algorithm_follows_weights() {
        let weights = [3, 1, 2, 2];
        let want = [3.0 / 8.0, 1.0 / 8.0, 2.0 / 8.0, 2.0 / 8.0];
        // Static algorithms, and the hash over many keys.
        for (algorithm, tolerance) in [
            (Balance::RoundRobin, 0.001),
            (Balance::Random, 0.02),
            (Balance::ConsistentHash, 0.02),
        ] {
            let b = balancer(algorithm, &weights);
            let got = shares(&b, &Fake::idle(4), 40_000, |i| {
                Some(crate::http::key::mix(i as u64))
            });
            assert_close(&got, &want, tolerance);
        }
        // Load-based ones follow weights through the load they see, with equally fast
        // backends: 64 requests in flight.
        for algorithm in [
            Balance::LeastConnections,
            Balance::PowerOfTwo,
            Balance::LatencyAware,
        ] {
            let b = balancer(algorithm, &weights);
            let got = closed_loop(&b, &mut Fake::idle(4), 40_000, 64, 5);
            assert_close(&got, &want, 0.04);
        }
    }

    #[test]
    fn load_based_algorithms_avoid_the_busier_backend() {
        let weights = [4, 2, 2];
        for algorithm in [Balance::LeastConnections, Balance::PowerOfTwo] {
            let b = balancer(algorithm, &weights);
            let mut l = Fake::idle(3);
            // Backend 0 holds more than its share.
            l.inflight = vec![60, 20, 20];
            let got = shares(&b, &l, 10_000, |_| None);
            assert!(
                got[0] < 0.34,
                "{algorithm:?} should avoid the busier backend: {got:?}"
            );
        }
    }

    #[test]
    fn least_connections_breaks_ties_at_random_not_by_index() {
        let b = balancer(Balance::LeastConnections, &[1, 1, 1]);
        let got = shares(&b, &Fake::idle(3), 30_000, |_| None);
        assert_close(&got, &[1.0 / 3.0; 3], 0.03);
    }

    #[test]
    fn latency_aware_avoids_the_slow_backend_and_probes_cold_ones() {
        let b = balancer(Balance::LatencyAware, &[1, 1, 1]);
        let mut loads = Fake::idle(3);
        loads.latency[0].observe_at(Duration::from_millis(200), 1);
        loads.latency[1].observe_at(Duration::from_millis(2), 1);
        // Backend 2 is cold; once its first request ends it is as fast as backend 1.
        let got = closed_loop(&b, &mut loads, 30_000, 16, 2);
        assert!(got[0] < 0.01, "{got:?}");
        assert!(got[2] > 0.3, "a cold backend must get traffic: {got:?}");
        // Not a stampede: with one request of its own in flight, a cold backend already
        // loses to an idle warm one of the same speed.
        let mut loads = Fake::idle(2);
        loads.latency[0].observe_at(Duration::from_millis(2), 1);
        loads.inflight[1] = 1;
        let b = balancer(Balance::LatencyAware, &[1, 1]);
        assert!((0..100).all(|_| b.pick(&loads, None).next() == Some(0)));
    }

    #[test]
    fn peak_ewma_takes_peaks_at_once_and_decays() {
        let e = PeakEwma::default();
        assert_eq!(e.get(), None);
        e.observe_at(Duration::from_millis(10), 1);
        e.observe_at(Duration::from_millis(100), 2);
        assert_eq!(e.get(), Some(100_000_000));
        // One decay time later, a 10 ms sample pulls it about 63 % of the way down.
        e.observe_at(Duration::from_millis(10), 2 + DECAY_NS as u64);
        let v = e.get().unwrap_or(0);
        assert!((40_000_000..=45_000_000).contains(&v), "{v}");
    }

    #[test]
    fn consistent_hash_moves_about_one_nth_of_keys_when_a_backend_leaves() {
        let all = names(10);
        let with: Vec<(&str, u32, bool)> = all.iter().map(|n| (n.as_str(), 1, true)).collect();
        let mut without = with.clone();
        without[3].2 = false;
        let a = Balancer::new(Balance::ConsistentHash, Balance::RoundRobin, &with);
        let b = Balancer::new(Balance::ConsistentHash, Balance::RoundRobin, &without);
        let idle = Fake::idle(10);
        let keys = 20_000u64;
        let mut moved = 0;
        for k in 0..keys {
            let key = Some(crate::http::key::mix(k));
            let x = a.pick(&idle, key).next();
            let y = b.pick(&idle, key).next();
            if x != Some(3) && x != y {
                moved += 1;
            }
        }
        // Keys on the leaving backend must move; of the others, Maglev moves only a few.
        assert!(
            (moved as f64) < keys as f64 * 0.02,
            "moved {moved} of {keys}"
        );
    }

    #[test]
    fn a_key_stays_on_its_backend() {
        let b = balancer(Balance::StickyCid, &[1, 1, 1, 1]);
        let idle = Fake::idle(4);
        for k in 0..100u64 {
            let key = Some(crate::http::key::mix(k));
            let first = b.pick(&idle, key).next();
            assert!((0..50).all(|_| b.pick(&idle, key).next() == first));
        }
    }

    #[test]
    fn order_yields_every_member_once_and_skips_disabled() {
        let list = [
            ("a", 1, true),
            ("b", 1, false),
            ("c", 1, true),
            ("d", 2, true),
        ];
        for algorithm in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::LeastConnections,
            Balance::PowerOfTwo,
            Balance::LatencyAware,
            Balance::ConsistentHash,
        ] {
            let b = Balancer::new(algorithm, Balance::Random, &list);
            let mut order: Vec<usize> = b.pick(&Fake::idle(4), Some(7)).collect();
            order.sort_unstable();
            assert_eq!(order, vec![0, 2, 3], "{algorithm:?}");
        }
        let none = Balancer::new(Balance::RoundRobin, Balance::RoundRobin, &[("a", 1, false)]);
        assert_eq!(none.pick(&Fake::idle(1), None).next(), None);
    }
}
