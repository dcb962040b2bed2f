//! The embedded tier: an in-process moka cache bounded in bytes, with TinyLFU admission and eviction
//! and a TTL per entry.
//!
//! Moka keys a request's [`Slot`] (its key without the generation stamp), and the entry carries the
//! stamp of the answer it holds: one version per request. A refill after an invalidation replaces
//! the entry in place, keeping the request's access history, rather than adding a key TinyLFU has
//! never seen beside an unreachable old version. Keyed with the stamp, a cache at its bound turned
//! away the refills of its most-read rows whenever they were written (a new key starts at frequency
//! zero), while the old versions held their room until evicted.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::Expiry;

use crate::{CacheKey, CacheStore, Scope, Usage};

/// What one entry costs on the heap beyond its key and response bytes: moka's entry, deque and
/// timer-wheel nodes and its share of the hash table, the `Bytes` headers, and the allocator's own
/// cost for each of these blocks. Measured (tests/entry_overhead.rs: about 564 bytes); counting it
/// keeps a cache of many small results within its bound too.
const ENTRY_OVERHEAD: usize = 576;

/// Where a request's answer is kept: everything in its [`CacheKey`] but the stamp.
struct Slot {
    scope: Scope,
    request: Bytes,
    definition: Bytes,
}

impl Slot {
    /// The slot of `key` with bytes of its own. The proxy's keys are slices of a session's read
    /// buffer, and a stored slice would keep that whole buffer (16 KiB) alive for as long as the
    /// entry, far beyond the bytes the entry is weighed at.
    fn owned(key: &CacheKey) -> Slot {
        Slot {
            scope: key.scope,
            request: Bytes::copy_from_slice(&key.request),
            definition: Bytes::copy_from_slice(&key.definition),
        }
    }
}

/// What identifies a slot, read alike from a stored [`Slot`] and from a lookup's [`CacheKey`], so
/// that a hit looks the slot up with the key's own bytes instead of building a `Slot` (two `Bytes`
/// clones and drops on every lookup).
trait SlotView: Sync {
    fn parts(&self) -> (Scope, &[u8], &[u8]);
}

impl SlotView for Slot {
    fn parts(&self) -> (Scope, &[u8], &[u8]) {
        (self.scope, &self.request, &self.definition)
    }
}

impl SlotView for CacheKey {
    fn parts(&self) -> (Scope, &[u8], &[u8]) {
        (self.scope, &self.request, &self.definition)
    }
}

impl<'a> Borrow<dyn SlotView + 'a> for Slot {
    fn borrow(&self) -> &(dyn SlotView + 'a) {
        self
    }
}

impl PartialEq for dyn SlotView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn SlotView + '_ {}

impl Hash for dyn SlotView + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

// A slot compares and hashes exactly as its view does, as `Borrow` requires.
impl PartialEq for Slot {
    fn eq(&self, other: &Slot) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for Slot {}

impl Hash for Slot {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

/// A stored response, the stamp it answers for, and how long it may live.
#[derive(Clone)]
struct Entry {
    stamp: u64,
    response: Bytes,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<Slot, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &Slot, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    /// A replaced entry is a new answer: it lives for its own TTL from now.
    fn expire_after_update(
        &self,
        _: &Slot,
        entry: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
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
    cache: Cache<Slot, Entry, foldhash::fast::RandomState>,
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
            .weigher(|slot: &Slot, entry: &Entry| {
                let (_, request, definition) = slot.parts();
                let weight =
                    request.len() + definition.len() + entry.response.len() + ENTRY_OVERHEAD;
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
        let entry = self.cache.get(key as &dyn SlotView).await?;
        (entry.stamp == key.stamp).then_some(entry.response)
    }

    /// Replaces whatever version the request's slot held. The response is stored as given: the
    /// session assembles it in a buffer of its exact size. Two fills of one request under different
    /// stamps can finish out of order; the older then replaces the newer, and the next lookup
    /// misses and fills again.
    async fn put(&self, key: CacheKey, response: Bytes, ttl: Duration) {
        let entry = Entry {
            stamp: key.stamp,
            response,
            ttl,
        };
        self.cache.insert(Slot::owned(&key), entry).await;
    }

    async fn clear(&self) {
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
            scope: Scope([1; 16]),
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
            scope: Scope([1; 16]),
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
    async fn a_new_stamp_replaces_the_old_version() {
        let store = EmbeddedStore::new(1 << 20);
        let stamped = |stamp| CacheKey { stamp, ..key(1) };
        for (stamp, rows) in [(1, &b"old"[..]), (2, &b"new"[..])] {
            let rows = Bytes::from_static(rows);
            store
                .put(stamped(stamp), rows, Duration::from_secs(60))
                .await;
        }
        assert_eq!(store.get(&stamped(1)).await, None);
        assert_eq!(store.get(&stamped(2)).await.as_deref(), Some(&b"new"[..]));
        assert_eq!(store.usage().await.entries, 1);
    }

    #[tokio::test]
    async fn a_full_cache_keeps_a_hot_row_that_keeps_changing() {
        let store = EmbeddedStore::new(64 * 1024);
        // Cold entries, each read twice, fill the store to its bound.
        for n in 1..=200 {
            store
                .put(key(n), Bytes::from(vec![0u8; 200]), Duration::from_secs(60))
                .await;
            store.get(&key(n)).await;
            store.get(&key(n)).await;
        }
        assert!(store.usage().await.evictions > 0);
        // A hot request, written after every few reads: each write moves it to a new stamp.
        let hot = |stamp| CacheKey {
            scope: Scope([2; 16]),
            stamp,
            request: Bytes::from_static(b"Q hot row"),
            definition: Bytes::new(),
        };
        let mut served = 0;
        for stamp in 0..50 {
            if store.get(&hot(stamp)).await.is_none() {
                store
                    .put(
                        hot(stamp),
                        Bytes::from_static(b"row"),
                        Duration::from_secs(60),
                    )
                    .await;
            }
            store.usage().await; // admission runs here
            for _ in 0..5 {
                served += usize::from(store.get(&hot(stamp)).await.is_some());
            }
        }
        assert!(
            served >= 45 * 5,
            "{served} of 250 reads of the hot row were hits"
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
