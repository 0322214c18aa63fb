//! Rate limits per route (`rate_limit = { rate, per, burst, key, max_keys }`): a token bucket
//! per key, kept as GCRA (one "theoretical arrival time" per key, which is a token bucket
//! with `burst` tokens refilled at `rate` per `per`, in one number). Over the limit the route
//! answers 429 with `Retry-After` and `RateLimit-Limit` / `-Remaining` / `-Reset`.
//!
//! Per-key state is bounded: 16 shards of at most `max_keys / 16` keys. A full shard first
//! forgets the keys whose bucket is full again (they are the same as new keys), then, under a
//! flood of distinct keys, an arbitrary one — which starts over with a full burst. A request
//! without the key (the header is absent) shares one bucket with all such requests, so
//! leaving the header out is no way around the limit.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use serde::Deserialize;

use crate::http::key::HashKey;
use crate::units::Dur;

/// `[[routes]] rate_limit = { … }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests allowed per `per`, sustained.
    pub rate: NonZeroU32,
    #[serde(default = "default_per")]
    pub per: Dur,
    /// Requests allowed at once after a quiet spell (default: `rate`).
    pub burst: Option<NonZeroU32>,
    /// Whose bucket: `client-ip`, `header:NAME`, `cookie:NAME`, `query:NAME`, … (absent: one
    /// bucket for the whole route).
    pub key: Option<String>,
    /// Most keys remembered at once.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_per() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_max_keys() -> usize {
    65_536
}

impl RateLimitConfig {
    /// Problems, as (key, message), for validation.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.per.0.is_zero() {
            out.push(("per", "expected a duration above 0".to_string()));
        }
        if self.max_keys == 0 {
            out.push(("max_keys", "expected 1 or more".to_string()));
        }
        if let Some(Err(e)) = self.key.as_deref().map(HashKey::parse) {
            out.push(("key", e));
        }
        out
    }
}

const SHARDS: usize = 16;

/// The outcome of [`RateLimiter::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Requests left in the bucket now.
    pub remaining: u64,
    /// Seconds until the bucket is full again (allowed) or a request would pass (refused).
    pub wait_secs: u64,
}

/// A route's limiter.
pub struct RateLimiter {
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// How far ahead of now the arrival time may run: `interval × (burst − 1)`.
    tolerance: u64,
    burst: u32,
    key: Option<HashKey>,
    per_shard: usize,
    shards: [Mutex<HashMap<u64, u64, foldhash::fast::FixedState>>; SHARDS],
}

impl RateLimiter {
    pub fn build(config: &RateLimitConfig) -> Result<RateLimiter, String> {
        if let Some((k, m)) = config.problems().into_iter().next() {
            return Err(format!("{k}: {m}"));
        }
        let key = config.key.as_deref().map(HashKey::parse).transpose()?;
        let per = u64::try_from(config.per.0.as_nanos()).unwrap_or(u64::MAX);
        let interval = (per / u64::from(config.rate.get())).max(1);
        let burst = config.burst.unwrap_or(config.rate).get();
        Ok(RateLimiter {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst - 1)),
            burst,
            key,
            per_shard: config.max_keys.div_ceil(SHARDS),
            shards: Default::default(),
        })
    }

    /// The key's hash for a request (0 for the route-wide bucket and for requests that do not
    /// carry the key).
    pub fn key_of(&self, head: &http::request::Parts, ip: std::net::IpAddr, conn: u64) -> u64 {
        self.key
            .as_ref()
            .and_then(|k| k.hash(head, ip, conn))
            .unwrap_or(0)
    }

    /// Takes one request from `key`'s bucket at `now` (ns), if it has one.
    pub fn check(&self, key: u64, now: u64) -> Verdict {
        let mut shard = self.shards[(key % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !shard.contains_key(&key) && shard.len() >= self.per_shard {
            // Keys whose bucket is full again are as good as new: forget them first.
            shard.retain(|_, tat| *tat > now);
            if shard.len() >= self.per_shard
                && let Some(&victim) = shard.keys().next()
            {
                shard.remove(&victim);
            }
        }
        let tat = shard.get(&key).copied().unwrap_or(now).max(now);
        let ahead = tat - now;
        if ahead > self.tolerance {
            return Verdict {
                allowed: false,
                remaining: 0,
                wait_secs: secs_ceil(ahead - self.tolerance).max(1),
            };
        }
        let next = tat + self.interval;
        shard.insert(key, next);
        let used = next - now;
        Verdict {
            allowed: true,
            remaining: (self.tolerance + self.interval).saturating_sub(used) / self.interval,
            wait_secs: secs_ceil(used),
        }
    }

    /// `RateLimit-Limit`, `-Remaining`, `-Reset` and, when refused, `Retry-After`.
    pub fn headers(&self, v: Verdict) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(4);
        h.insert("ratelimit-limit", HeaderValue::from(self.burst));
        h.insert("ratelimit-remaining", HeaderValue::from(v.remaining));
        h.insert("ratelimit-reset", HeaderValue::from(v.wait_secs));
        if !v.allowed {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(v.wait_secs));
        }
        h
    }

    /// Keys remembered now (tests and gauges).
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }
}

fn secs_ceil(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn limiter(rate: u32, burst: u32, max_keys: usize) -> RateLimiter {
        RateLimiter::build(&RateLimitConfig {
            rate: NonZeroU32::new(rate).expect("rate"),
            per: Dur(Duration::from_secs(1)),
            burst: NonZeroU32::new(burst),
            key: Some("client-ip".into()),
            max_keys,
        })
        .expect("limiter")
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let l = limiter(10, 5, 100);
        let t = 100 * S;
        let got: Vec<u64> = (0..6).map(|_| l.check(1, t)).map(|v| v.remaining).collect();
        // Five pass (remaining 4..0), the sixth is refused.
        assert_eq!(got, vec![4, 3, 2, 1, 0, 0]);
        assert!(!l.check(1, t).allowed);
        // One more every 100 ms.
        assert!(l.check(1, t + S / 10).allowed);
        assert!(!l.check(1, t + S / 10).allowed);
        // Another key has its own bucket.
        assert!(l.check(2, t).allowed);
        // A quiet second refills the whole burst.
        let later = t + 2 * S;
        assert_eq!((0..10).filter(|_| l.check(1, later).allowed).count(), 5);
    }

    #[test]
    fn a_refusal_says_how_long_to_wait() {
        let l = limiter(1, 1, 100);
        assert!(l.check(7, 10 * S).allowed);
        let v = l.check(7, 10 * S);
        assert!(!v.allowed);
        assert_eq!(v.wait_secs, 1);
        let h = l.headers(v);
        assert_eq!(h["retry-after"], "1");
        assert_eq!(h["ratelimit-limit"], "1");
        assert_eq!(h["ratelimit-remaining"], "0");
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_keys() {
        let l = limiter(10, 10, 64);
        for k in 0..10_000u64 {
            l.check(k, 5 * S);
        }
        assert!(l.keys() <= 64, "{}", l.keys());
        // Keys whose bucket has refilled are forgotten first.
        for k in 20_000..20_064u64 {
            assert!(l.check(k, 60 * S).allowed);
        }
        assert!(l.keys() <= 64);
    }
}
