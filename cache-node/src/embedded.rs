//! The embedded tier: an in-process moka cache bounded in bytes, with TinyLFU admission and eviction
//! and a TTL per entry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::Expiry;

use crate::{CacheKey, CacheStore, Usage};

/// What one entry costs on the heap beyond its key and response bytes: moka's entry, deque and
/// timer-wheel nodes and its share of the hash table, the `Bytes` headers, and the allocator's own
/// cost for each of these blocks. Measured (tests/entry_overhead.rs: about 564 bytes); counting it
/// keeps a cache of many small results within its bound too.
const ENTRY_OVERHEAD: usize = 576;

/// A stored response and how long it may live.
#[derive(Clone)]
struct Entry {
    response: Bytes,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<CacheKey, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &CacheKey, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
}

#[derive(Default)]
struct Removals {
    evictions: AtomicU64,
    expirations: AtomicU64,
}

/// The default cache tier, inside the proxy process. Keys are hashed with foldhash rather than SipHash:
/// every hit hashes its whole request, and the keys are not chosen by an adversary who could aim at
/// collisions any more cheaply than by sending the requests themselves.
pub struct EmbeddedStore {
    cache: Cache<CacheKey, Entry, foldhash::fast::RandomState>,
    max_bytes: u64,
    removals: Arc<Removals>,
}

impl EmbeddedStore {
    /// A store holding at most `max_bytes` (stored bytes plus per-entry overhead).
    pub fn new(max_bytes: u64) -> EmbeddedStore {
        let removals = Arc::new(Removals::default());
        let counted = Arc::clone(&removals);
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &CacheKey, entry: &Entry| {
                let weight = key.len() + entry.response.len() + ENTRY_OVERHEAD;
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_, _, cause| match cause {
                RemovalCause::Size => {
                    counted.evictions.fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Expired => {
                    counted.expirations.fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            })
            .build_with_hasher(foldhash::fast::RandomState::default());
        EmbeddedStore {
            cache,
            max_bytes,
            removals,
        }
    }
}

impl CacheStore for EmbeddedStore {
    async fn get(&self, key: &CacheKey) -> Option<Bytes> {
        self.cache.get(key).await.map(|e| e.response)
    }

    /// The key's fields are copied: the proxy's keys are slices of a session's read buffer, and a
    /// stored slice would keep that whole buffer (16 KiB) alive for as long as the entry, far beyond
    /// the bytes the entry is weighed at. The response is stored as given: the session assembles it
    /// in a buffer of its exact size.
    async fn put(&self, key: CacheKey, response: Bytes, ttl: Duration) {
        let key = CacheKey {
            request: Bytes::copy_from_slice(&key.request),
            definition: Bytes::copy_from_slice(&key.definition),
            ..key
        };
        self.cache.insert(key, Entry { response, ttl }).await;
    }

    fn clear(&self) {
        self.cache.invalidate_all();
    }

    async fn usage(&self) -> Usage {
        self.cache.run_pending_tasks().await;
        Usage {
            entries: self.cache.entry_count(),
            bytes: self.cache.weighted_size(),
            max_bytes: self.max_bytes,
            evictions: self.removals.evictions.load(Ordering::Relaxed),
            expirations: self.removals.expirations.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> CacheKey {
        CacheKey {
            scope: 1,
            stamp: n,
            request: Bytes::from(format!("Q select {n}")),
            definition: Bytes::new(),
        }
    }

    #[tokio::test]
    async fn stores_and_returns_the_exact_bytes() {
        let store = EmbeddedStore::new(1 << 20);
        store
            .put(key(1), Bytes::from_static(b"rows"), Duration::from_secs(60))
            .await;
        assert_eq!(store.get(&key(1)).await.as_deref(), Some(&b"rows"[..]));
        assert_eq!(store.get(&key(2)).await, None);
    }

    #[tokio::test]
    async fn a_stored_key_keeps_no_larger_buffer_alive() {
        let buffer = Bytes::from(vec![b'Q'; 16 * 1024]);
        let sliced = CacheKey {
            scope: 1,
            stamp: 1,
            request: buffer.slice(..80),
            definition: buffer.slice(80..100),
        };
        let store = EmbeddedStore::new(1 << 20);
        store
            .put(
                sliced.clone(),
                Bytes::from_static(b"rows"),
                Duration::from_secs(60),
            )
            .await;
        assert_eq!(store.get(&sliced).await.as_deref(), Some(&b"rows"[..]));
        drop(sliced);
        assert!(
            buffer.is_unique(),
            "the stored key still refers to the buffer it was cut from"
        );
    }

    #[tokio::test]
    async fn ten_times_the_bound_stays_within_it() {
        let bound = 64 * 1024;
        let store = EmbeddedStore::new(bound);
        for n in 0..(10 * bound / 1024) {
            store
                .put(
                    key(n),
                    Bytes::from(vec![7u8; 1024]),
                    Duration::from_secs(60),
                )
                .await;
        }
        let usage = store.usage().await;
        assert!(usage.bytes <= bound, "{usage:?}");
        assert!(usage.entries > 0 && usage.evictions > 0, "{usage:?}");
    }

    #[tokio::test]
    async fn an_entry_expires_at_its_ttl() {
        let store = EmbeddedStore::new(1 << 20);
        store
            .put(key(1), Bytes::from_static(b"x"), Duration::ZERO)
            .await;
        assert_eq!(store.get(&key(1)).await, None);
    }
}
