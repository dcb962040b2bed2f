//! The in-process cost of one cache hit, from the request's bytes to the stored answer in hand: the
//! plan looked up by the statement's shape (no parsing), the generation stamp read, the key built from
//! the request's bytes, the store probed. What a real hit adds is the socket I/O around it, which
//! `bench/run` measures end to end.
//!
//! Also counts heap allocations per hit (a counting global allocator), which the hit path keeps at
//! zero: only reference counts change.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use veneer_cache_node::{CacheKey, CacheStore, EmbeddedStore};
use veneer_config::{CacheConfig, Config, Settings};
use veneer_proxy::cache::catalog::{Catalog, KeyColumn};
use veneer_proxy::cache::database::{Action, Database};
use veneer_proxy::cache::digest::Shape;
use veneer_proxy::cache::point::Values;
use veneer_proxy::cache::Digests;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SQL: &[u8] = b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";

fn cache_config() -> CacheConfig {
    Config::resolve(Settings::default())
        .expect("defaults are valid")
        .cache
        .expect("the cache is on by default")
}

fn hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let config = cache_config();
    let digests = Digests::default();
    let db = Database::new("bench".to_owned(), false);
    let mut catalog = Catalog::default();
    catalog.add_relation("pgbench_accounts".to_owned(), "public", "r", "p");
    let aid = KeyColumn {
        name: "aid".to_owned(),
        type_oid: 23,
        usable: true,
        key: true,
    };
    catalog.add_keys("pgbench_accounts".to_owned(), "d", &[aid]);
    db.install_catalog(catalog, db.version());
    let store = EmbeddedStore::new(config.max_bytes);
    // The request as a client sends it: a Query message.
    let mut message = vec![b'Q'];
    message.extend_from_slice(&(4 + SQL.len() as u32 + 1).to_be_bytes());
    message.extend_from_slice(SQL);
    message.push(0);
    let request = Bytes::from(message);
    let mut shape = Shape::default();
    let lookup = |shape: &mut Shape| {
        let plan = db.plan(SQL, shape, &config, &digests);
        let Action::Cache {
            dependencies,
            point: Some(point),
            ..
        } = &plan.action
        else {
            panic!("the statement must be a cacheable point lookup: {plan:?}");
        };
        let row = point.bucket(&Values {
            sql: SQL,
            literals: &shape.literals,
            bind: None,
            same_encoding: &|| true,
        });
        CacheKey {
            scope: veneer_cache_node::Scope([1; 16]),
            stamp: db
                .generations
                .encode(dependencies.stamp(&db.generations, row)),
            request: request.clone(),
            definition: Bytes::new(),
        }
    };
    let answer = Bytes::from(vec![0u8; 80]);
    runtime.block_on(store.put(lookup(&mut shape), answer, Duration::from_secs(3600)));

    let one_hit = |shape: &mut Shape| {
        let key = lookup(shape);
        runtime.block_on(store.get(&key)).expect("stored above")
    };
    one_hit(&mut shape);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let rounds = 100_000;
    for _ in 0..rounds {
        std::hint::black_box(one_hit(&mut shape));
    }
    let per_hit = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / rounds as f64;
    println!("heap allocations per hit: {per_hit:.3}");

    c.bench_function("hit: plan, stamp, key, store lookup", |b| {
        b.iter(|| one_hit(&mut shape))
    });
}

criterion_group!(benches, hit);
criterion_main!(benches);
