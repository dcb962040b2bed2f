//! The cache-node's store: byte keys to byte values, bounded in bytes, with a TTL per entry.
//!
//! Built for a small footprint per entry, since a cache node holds millions of small results: each
//! entry is one allocation holding its key and value, plus a 32-byte record in a dense vector and a
//! 4-byte index in a hash table (about 48 bytes of overhead in all, against Redis's 70 to 100).
//! The keys are split over shards, each behind its own lock, so the threads of a multi-threaded
//! server rarely meet.
//!
//! Admission and eviction follow TinyLFU: a count-min sketch (4-bit counters, halved every so many
//! accesses, so old popularity fades) estimates how often each key was asked for. When a shard is
//! full, the victim is the least frequent of a few entries sampled at random (an expired one goes
//! first), and a new key takes its room only if it has been asked for at least as often. A key read
//! once is then not allowed to push out one read a thousand times.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashbrown::HashTable;

/// Shards of the store (a power of two).
const SHARDS: usize = 64;

/// What an entry costs beyond its key and value bytes: its record, its table slot with the table's
/// spare room, and the allocator's rounding.
pub const ENTRY_OVERHEAD: usize = 48;

/// Entries sampled to choose a victim.
const SAMPLES: usize = 5;

/// Counters per shard in the frequency sketch (four rows of this many 4-bit counters).
const SKETCH_WIDTH: usize = 4096;

/// Accesses per shard after which the sketch is halved.
const SKETCH_PERIOD: u32 = 10 * SKETCH_WIDTH as u32;

/// One entry: its key and value in one allocation.
struct Item {
    data: Box<[u8]>,
    key_len: u32,
    /// Milliseconds since the store's start after which it is gone; `u64::MAX`: never.
    expires: u64,
}

impl Item {
    fn key(&self) -> &[u8] {
        &self.data[..self.key_len as usize]
    }

    fn value(&self) -> &[u8] {
        &self.data[self.key_len as usize..]
    }

    fn weight(&self) -> usize {
        self.data.len() + ENTRY_OVERHEAD
    }
}

/// A count-min sketch of 4-bit counters, packed two to a byte.
struct Sketch {
    counters: Box<[u8]>,
    accesses: u32,
}

impl Sketch {
    fn new() -> Sketch {
        Sketch {
            counters: vec![0; 4 * SKETCH_WIDTH / 2].into_boxed_slice(),
            accesses: 0,
        }
    }

    fn slots(hash: u64) -> [usize; 4] {
        std::array::from_fn(|row| {
            let h = (hash >> (row * 16)) as usize % SKETCH_WIDTH;
            row * SKETCH_WIDTH + h
        })
    }

    fn get(&self, slot: usize) -> u8 {
        (self.counters[slot / 2] >> ((slot % 2) * 4)) & 0xf
    }

    fn estimate(&self, hash: u64) -> u8 {
        Sketch::slots(hash)
            .iter()
            .map(|&s| self.get(s))
            .min()
            .unwrap_or(0)
    }

    fn touch(&mut self, hash: u64) {
        for slot in Sketch::slots(hash) {
            if self.get(slot) < 15 {
                self.counters[slot / 2] += 1 << ((slot % 2) * 4);
            }
        }
        self.accesses += 1;
        if self.accesses >= SKETCH_PERIOD {
            self.accesses = 0;
            for byte in self.counters.iter_mut() {
                *byte = (*byte >> 1) & 0x77;
            }
        }
    }
}

struct Shard {
    items: Vec<Item>,
    /// Indexes into `items`, found by key hash.
    table: HashTable<u32>,
    bytes: usize,
    sketch: Sketch,
    /// State of the shard's sampling generator (xorshift).
    random: u64,
    /// The store's key hasher (every shard holds a copy).
    hasher: foldhash::fast::FixedState,
}

/// Why a write did not store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// SET NX on a key that exists, or SET XX on one that does not.
    Condition,
}

/// Counters of the whole store, for INFO and the metrics.
#[derive(Default)]
pub struct Stats {
    /// Lookups that found a live entry.
    pub hits: AtomicU64,
    /// Lookups that did not.
    pub misses: AtomicU64,
    /// Entries removed to stay within the bound, or not admitted.
    pub evictions: AtomicU64,
    /// Entries removed because their TTL ran out.
    pub expirations: AtomicU64,
}

/// The store.
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::FixedState,
    shard_bytes: usize,
    max_bytes: u64,
    started: Instant,
    /// Hits, misses, evictions, expirations.
    pub stats: Stats,
}

/// How a write is conditioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum When {
    /// Always.
    #[default]
    Always,
    /// Only if the key is absent (NX).
    Absent,
    /// Only if the key is present (XX).
    Present,
}

impl Store {
    /// A store holding at most `max_bytes` (keys, values and per-entry overhead).
    pub fn new(max_bytes: u64) -> Store {
        // Seeded at random: keys come from clients, who must not be able to aim at one bucket.
        let seed = std::collections::hash_map::RandomState::new().hash_one(0u8);
        let hasher = foldhash::fast::FixedState::with_seed(seed);
        let shards = (0..SHARDS)
            .map(|i| {
                Mutex::new(Shard {
                    items: Vec::new(),
                    table: HashTable::new(),
                    bytes: 0,
                    sketch: Sketch::new(),
                    random: 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1),
                    hasher: hasher.clone(),
                })
            })
            .collect();
        Store {
            shards,
            hasher,
            shard_bytes: usize::try_from(max_bytes / SHARDS as u64).unwrap_or(usize::MAX),
            max_bytes,
            started: Instant::now(),
            stats: Stats::default(),
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        &self.shards[(hash >> 58) as usize % SHARDS]
    }

    /// Appends the value of `key` to `out` with `frame` (which writes the reply's header), or
    /// returns false when there is none. The value is copied under the shard's lock, straight into
    /// the reply.
    pub fn get_into(&self, key: &[u8], out: &mut impl FnMut(&[u8])) -> bool {
        let hash = self.hash(key);
        let now = self.now();
        let mut shard = self.shard(hash).lock().expect("not poisoned");
        shard.sketch.touch(hash);
        let found = shard.find(hash, key);
        let live = match found {
            Some(index) if shard.items[index].expires <= now => {
                shard.remove_at(hash, index);
                self.stats.expirations.fetch_add(1, Ordering::Relaxed);
                None
            }
            other => other,
        };
        match live {
            Some(index) => {
                out(shard.items[index].value());
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The value of `key`, copied (for tests and snapshots; the server uses [`Store::get_into`]).
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut value = None;
        self.get_into(key, &mut |v| value = Some(v.to_vec()));
        value
    }

    /// Stores `value` under `key` for `ttl` (`None`: no expiry) when `when` allows.
    pub fn set(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        when: When,
    ) -> Result<(), Refused> {
        let now = self.now();
        let expires = ttl.map_or(u64::MAX, |t| now.saturating_add(t.as_millis() as u64));
        self.insert(key, value, expires, when, now)
    }

    fn insert(
        &self,
        key: &[u8],
        value: &[u8],
        expires: u64,
        when: When,
        now: u64,
    ) -> Result<(), Refused> {
        let hash = self.hash(key);
        let mut data = Vec::with_capacity(key.len() + value.len());
        data.extend_from_slice(key);
        data.extend_from_slice(value);
        let item = Item {
            data: data.into_boxed_slice(),
            key_len: key.len() as u32,
            expires,
        };
        let mut shard = self.shard(hash).lock().expect("not poisoned");
        shard.sketch.touch(hash);
        let existing = shard
            .find(hash, key)
            .filter(|&i| shard.items[i].expires > now);
        match (when, existing) {
            (When::Absent, Some(_)) | (When::Present, None) => return Err(Refused::Condition),
            _ => {}
        }
        if let Some(index) = shard.find(hash, key) {
            shard.remove_at(hash, index);
        }
        let weight = item.weight();
        if weight > self.shard_bytes {
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let candidate = shard.sketch.estimate(hash);
        while shard.bytes + weight > self.shard_bytes {
            let (victim, expired) = shard.victim(now);
            let victim_hash = self.hash(shard.items[victim].key());
            if !expired && shard.sketch.estimate(victim_hash) > candidate {
                // TinyLFU admission: the newcomer is asked for less often than what it would
                // replace. It is dropped (counted as an eviction), as a full cache would soon do.
                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            shard.remove_at(victim_hash, victim);
            let counter = if expired {
                &self.stats.expirations
            } else {
                &self.stats.evictions
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        shard.push(hash, item);
        Ok(())
    }

    /// Removes `key`; whether it was there.
    pub fn delete(&self, key: &[u8]) -> bool {
        let hash = self.hash(key);
        let now = self.now();
        let mut shard = self.shard(hash).lock().expect("not poisoned");
        match shard.find(hash, key) {
            Some(index) => {
                let live = shard.items[index].expires > now;
                shard.remove_at(hash, index);
                live
            }
            None => false,
        }
    }

    /// Removes `key` only if its value is `value` (the compare-and-delete of Valkey's DELIFEQ, for
    /// leases); whether it did.
    pub fn delete_if_equal(&self, key: &[u8], value: &[u8]) -> bool {
        let hash = self.hash(key);
        let now = self.now();
        let mut shard = self.shard(hash).lock().expect("not poisoned");
        match shard.find(hash, key) {
            Some(index)
                if shard.items[index].expires > now && shard.items[index].value() == value =>
            {
                shard.remove_at(hash, index);
                true
            }
            _ => false,
        }
    }

    /// Time left to live of `key`: `None` if absent, `Some(None)` if it never expires.
    pub fn ttl(&self, key: &[u8]) -> Option<Option<Duration>> {
        let hash = self.hash(key);
        let now = self.now();
        let shard = self.shard(hash).lock().expect("not poisoned");
        let item = &shard.items[shard.find(hash, key)?];
        if item.expires <= now {
            return None;
        }
        Some((item.expires != u64::MAX).then(|| Duration::from_millis(item.expires - now)))
    }

    /// Entries held (expired ones not yet removed included).
    pub fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().expect("not poisoned").items.len() as u64)
            .sum()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held, overhead included.
    pub fn bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().expect("not poisoned").bytes as u64)
            .sum()
    }

    /// The bound on [`Store::bytes`].
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Removes everything.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().expect("not poisoned");
            shard.items = Vec::new();
            shard.table = HashTable::new();
            shard.bytes = 0;
        }
    }

    /// Shards a SCAN walks, one per step: cursor `n` reads shard `n`.
    pub fn shard_count(&self) -> usize {
        SHARDS
    }

    /// The live keys of shard `shard` that `keep` accepts.
    pub fn keys_of_shard(&self, shard: usize, keep: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let now = self.now();
        let shard = self.shards[shard].lock().expect("not poisoned");
        shard
            .items
            .iter()
            .filter(|i| i.expires > now && keep(i.key()))
            .map(|i| i.key().to_vec())
            .collect()
    }

    /// Calls `each` with every live entry's key, value and time left (`None`: no expiry), a shard
    /// at a time (for snapshots).
    pub fn for_each(&self, mut each: impl FnMut(&[u8], &[u8], Option<Duration>)) {
        let now = self.now();
        for shard in self.shards.iter() {
            let shard = shard.lock().expect("not poisoned");
            for item in shard.items.iter().filter(|i| i.expires > now) {
                let left =
                    (item.expires != u64::MAX).then(|| Duration::from_millis(item.expires - now));
                each(item.key(), item.value(), left);
            }
        }
    }

    /// Removes some expired entries from every shard (as Redis's active expiry does): a sample of
    /// each, so the cost stays small and bounded whatever the store's size.
    pub fn expire_some(&self) {
        let now = self.now();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().expect("not poisoned");
            for _ in 0..20 {
                if shard.items.is_empty() {
                    break;
                }
                let index = shard.next_random() as usize % shard.items.len();
                if shard.items[index].expires <= now {
                    let hash = self.hash(shard.items[index].key());
                    shard.remove_at(hash, index);
                    self.stats.expirations.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Shard {
    fn find(&self, hash: u64, key: &[u8]) -> Option<usize> {
        self.table
            .find(hash, |&i| self.items[i as usize].key() == key)
            .map(|&i| i as usize)
    }

    fn push(&mut self, hash: u64, item: Item) {
        let index = self.items.len() as u32;
        self.bytes += item.weight();
        self.items.push(item);
        let (items, hasher) = (&self.items, &self.hasher);
        self.table
            .insert_unique(hash, index, |&i| hasher.hash_one(items[i as usize].key()));
    }

    /// Removes the item at `index` (whose key hashes to `hash`), moving the last item into its place.
    fn remove_at(&mut self, hash: u64, index: usize) {
        if let Ok(entry) = self.table.find_entry(hash, |&i| i as usize == index) {
            entry.remove();
        }
        let removed = self.items.swap_remove(index);
        self.bytes -= removed.weight();
        if index < self.items.len() {
            // The former last item now sits at `index`: point its table slot there.
            let moved = self.items.len() as u32;
            let moved_hash = self.hasher.hash_one(self.items[index].key());
            if let Some(slot) = self.table.find_mut(moved_hash, |&i| i == moved) {
                *slot = index as u32;
            }
        }
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.random;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random = x;
        x
    }

    /// A victim for eviction among a few sampled entries: an expired one if any, else the least
    /// frequent. Returns its index and whether it had expired.
    fn victim(&mut self, now: u64) -> (usize, bool) {
        let mut best: Option<(usize, u8)> = None;
        for _ in 0..SAMPLES {
            let index = self.next_random() as usize % self.items.len();
            if self.items[index].expires <= now {
                return (index, true);
            }
            let frequency = self
                .sketch
                .estimate(self.hasher.hash_one(self.items[index].key()));
            if best.is_none_or(|(_, f)| frequency < f) {
                best = Some((index, frequency));
            }
        }
        (best.expect("sampled at least one").0, false)
    }
}
