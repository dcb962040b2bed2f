//! The most-hit requests, for `SHOW VENEER HOT`: a Space-Saving sketch (a bounded top-k that never
//! undercounts a request in it by more than its recorded error) fed by a sample of the hits, so the
//! hit path pays an atomic increment for most hits and a short lock for one in [`SAMPLE`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use veneer_cache_node::CacheKey;

/// One hit in this many is counted.
pub const SAMPLE: u64 = 16;

/// Requests tracked.
const CAPACITY: usize = 64;

/// A request in the sketch and its estimated share of the sampled hits.
#[derive(Clone)]
pub struct Counted {
    /// The request (its bytes owned, not a slice of a session's buffer).
    pub key: CacheKey,
    /// Sampled hits counted for it (an overestimate by at most `error`).
    pub count: u64,
    /// How much of `count` may belong to requests it replaced.
    pub error: u64,
}

/// The sketch.
#[derive(Default)]
pub struct Hot {
    seen: AtomicU64,
    sampled: AtomicU64,
    counted: Mutex<Vec<Counted>>,
}

impl Hot {
    /// Notes a hit of `key`.
    pub fn hit(&self, key: &CacheKey) {
        if self.seen.fetch_add(1, Ordering::Relaxed) % SAMPLE != 0 {
            return;
        }
        self.sampled.fetch_add(1, Ordering::Relaxed);
        let mut counted = self.counted.lock().expect("not poisoned");
        let same = |c: &&mut Counted| {
            c.key.scope == key.scope
                && c.key.request == key.request
                && c.key.definition == key.definition
        };
        if let Some(c) = counted.iter_mut().find(same) {
            c.count += 1;
            c.key.stamp = key.stamp;
            return;
        }
        let owned = CacheKey {
            scope: key.scope,
            stamp: key.stamp,
            request: Bytes::copy_from_slice(&key.request),
            definition: Bytes::copy_from_slice(&key.definition),
        };
        if counted.len() < CAPACITY {
            counted.push(Counted {
                key: owned,
                count: 1,
                error: 0,
            });
            return;
        }
        let least = counted
            .iter_mut()
            .min_by_key(|c| c.count)
            .expect("the sketch is full");
        *least = Counted {
            key: owned,
            count: least.count + 1,
            error: least.count,
        };
    }

    /// The tracked requests, most hit first, and the sampled hits they are shares of.
    pub fn top(&self) -> (Vec<Counted>, u64) {
        let mut counted = self.counted.lock().expect("not poisoned").clone();
        counted.sort_by_key(|c| std::cmp::Reverse(c.count));
        (counted, self.sampled.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use veneer_cache_node::Scope;

    use super::*;

    fn key(n: u64) -> CacheKey {
        CacheKey {
            scope: Scope([0; 16]),
            stamp: 0,
            request: Bytes::from(format!("Q select {n}")),
            definition: Bytes::new(),
        }
    }

    #[test]
    fn the_hot_requests_rise_to_the_top_among_many_cold_ones() {
        let hot = Hot::default();
        for round in 0..200u64 {
            for _ in 0..(SAMPLE * 3) {
                hot.hit(&key(1));
            }
            for _ in 0..SAMPLE {
                hot.hit(&key(2));
            }
            for cold in 0..SAMPLE {
                hot.hit(&key(1000 + round * SAMPLE + cold));
            }
        }
        let (top, sampled) = hot.top();
        assert_eq!(top[0].key.request, key(1).request);
        assert_eq!(top[1].key.request, key(2).request);
        let share = top[0].count as f64 / sampled as f64;
        assert!((0.5..0.7).contains(&share), "share {share}");
        assert!(top.len() <= CAPACITY);
    }
}
