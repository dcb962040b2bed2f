//! The embedded store's bound is in bytes: each entry is weighed at its key and response plus a fixed
//! overhead for what the store keeps beside them (moka's node, deque and timer entries, its share of
//! the hash table). This measures what an entry really costs on the heap, with a counting allocator
//! (this file is its own test binary, so nothing else allocates meanwhile), and checks the weight
//! against it: an overhead set too low lets the process grow past the configured bound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use veneer_cache_node::{CacheKey, CacheStore, EmbeddedStore};

/// What the C allocator adds to each block: its 8-byte header and the rounding to 16 bytes.
const PER_ALLOCATION: isize = 16;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_BLOCKS: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes in use, each block counted with the allocator's own cost.
fn heap_in_use() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed) + PER_ALLOCATION * LIVE_BLOCKS.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "current_thread")]
async fn entries_are_weighed_at_what_they_cost() {
    // A point read's request and answer, a mid-sized pair, a large answer.
    for (request_len, response_len) in [(100, 16_000), (70, 80), (200, 1_000)] {
        let entries: u32 = 20_000;
        let store = EmbeddedStore::new(1 << 40);
        let before = heap_in_use();
        for n in 0..entries {
            let mut request = format!("Q{n:08}").into_bytes();
            request.resize(request_len, b' ');
            let key = CacheKey {
                scope: veneer_cache_node::Scope([1; 16]),
                stamp: 0,
                request: request.into(),
                definition: Bytes::new(),
            };
            let response = Bytes::from(vec![1u8; response_len]);
            store.put(key, response, Duration::from_secs(3600)).await;
        }
        let usage = store.usage().await;
        assert_eq!(usage.entries, entries as u64);
        let cost = (heap_in_use() - before) as f64 / f64::from(entries);
        let weight = usage.bytes as f64 / f64::from(entries);
        assert!(
            cost <= weight && weight <= cost * 1.25,
            "{request_len} B requests, {response_len} B responses: an entry costs {cost:.0} B \
             on the heap and is weighed at {weight:.0} B"
        );
    }
}
