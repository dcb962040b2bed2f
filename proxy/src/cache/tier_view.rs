//! What operators see of the tier: `SHOW VENEER NODES` (per node: state, keys, bytes, ops/s, hit
//! ratio, errors, latency), `SHOW VENEER HOT` (the most-hit requests, their node and share of the
//! hits), and the same as metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use veneer_cache_node::remote::shards::Node;
use veneer_cache_node::{CacheKey, CacheStore, Tier};

use super::Cache;

/// The columns of `SHOW VENEER NODES`.
pub const NODE_COLUMNS: [&str; 8] = [
    "node",
    "state",
    "keys",
    "bytes",
    "ops_per_second",
    "hit_ratio",
    "errors",
    "mean_latency_ms",
];

/// One row per node; for the embedded tier, one row for the proxy's own memory.
pub async fn nodes(cache: &Cache) -> Vec<Vec<String>> {
    let remote = match &cache.store {
        Tier::Embedded(store) => {
            let usage = store.usage().await;
            let (hits, misses) = (cache.meters.hits.get(), cache.meters.misses.get());
            return vec![vec![
                "embedded".to_owned(),
                "up".to_owned(),
                usage.entries.to_string(),
                usage.bytes.to_string(),
                String::new(),
                super::admin::ratio(hits, misses),
                "0".to_owned(),
                String::new(),
            ]];
        }
        Tier::Remote(remote) => remote,
    };
    let mut rows = Vec::new();
    for node in remote.nodes() {
        let size = remote.size(node).await;
        let s = &node.stats;
        let (gets, hits) = (load(&s.gets), load(&s.hits));
        let answered = load(&s.answered);
        rows.push(vec![
            node.name.clone(),
            state(node),
            size.map_or_else(|| "?".to_owned(), |(keys, _)| keys.to_string()),
            size.map_or_else(|| "?".to_owned(), |(_, bytes)| bytes.to_string()),
            format!("{:.0}", s.rate()),
            super::admin::ratio(hits, gets - hits.min(gets)),
            load(&s.errors).to_string(),
            if answered == 0 {
                String::new()
            } else {
                format!("{:.3}", load(&s.micros) as f64 / answered as f64 / 1000.0)
            },
        ]);
    }
    rows
}

/// The tier's rows of `SHOW VENEER STATUS`.
pub fn status(cache: &Cache) -> Vec<Vec<String>> {
    let Tier::Remote(remote) = &cache.store else {
        return vec![vec!["tier".to_owned(), "embedded".to_owned()]];
    };
    let nodes = remote.nodes();
    let up = nodes.iter().filter(|n| n.is_up()).count();
    let c = &remote.counters;
    let (others, waits) = (load(&c.others_hits), load(&c.lease_waits));
    let hits = cache.meters.hits.get();
    let mut rows = vec![
        vec![
            "tier".to_owned(),
            cache.config.tier.kind.as_str().to_owned(),
        ],
        vec![
            "tier_nodes_up".to_owned(),
            format!("{up} of {}", nodes.len()),
        ],
        vec![
            "tier_near_hits".to_owned(),
            load(&remote.counters.near_hits).to_string(),
        ],
        vec![
            "tier_forged".to_owned(),
            load(&remote.counters.forged).to_string(),
        ],
        vec![
            "tier_hits_filled_by_others".to_owned(),
            format!(
                "{others} of {hits} hits ({:.1} %): results another proxy stored",
                100.0 * others as f64 / hits.max(1) as f64
            ),
        ],
        vec![
            "tier_leases".to_owned(),
            format!(
                "{} taken; {waits} misses waited for another proxy's fill, {} answered by it; {} \
                 fills not stored (lease expired)",
                load(&c.leases),
                load(&c.lease_wait_hits),
                load(&c.leases_lost)
            ),
        ],
    ];
    for db in cache.databases() {
        let (floor, applied) = (db.generations.floor(), db.fence.applied_lsn());
        rows.push(vec![
            format!("fleet {}", db.name),
            format!(
                "floor {}, applied {} ({} bytes of WAL past the floor), in a snapshot in the \
                 tier up to {}; joined the fleet's stamps {} times; {} marks waiting for the \
                 stream",
                lsn(floor),
                lsn(applied),
                applied.saturating_sub(floor),
                lsn(db.fleet_covered()),
                db.stream.joins.get(),
                db.marks.waiting()
            ),
        ]);
    }
    rows
}

/// A WAL position as Postgres writes it.
fn lsn(position: u64) -> String {
    format!("{:X}/{:X}", position >> 32, position & 0xffff_ffff)
}

fn state(node: &Node) -> String {
    match node.down_cause() {
        None => "up".to_owned(),
        Some((since, cause)) => format!(
            "down for {:.1} s ({cause}); probed every 0.5 s",
            since.elapsed().as_secs_f64()
        ),
    }
}

/// The columns of `SHOW VENEER HOT`.
pub const HOT_COLUMNS: [&str; 4] = ["request", "node", "share_of_hits", "sampled_hits"];

/// The most-hit requests, most first.
pub fn hot(cache: &Cache) -> Vec<Vec<String>> {
    let (top, sampled) = cache.hot.top();
    top.into_iter()
        .map(|c| {
            let node = match &cache.store {
                Tier::Embedded(_) => "embedded".to_owned(),
                Tier::Remote(remote) => remote.owner(&c.key).unwrap_or("?").to_owned(),
            };
            vec![
                describe(&c.key),
                node,
                format!("{:.3}", c.count as f64 / sampled.max(1) as f64),
                format!("{} (± {})", c.count, c.error),
            ]
        })
        .collect()
}

/// The most-hit query shapes (literals replaced by `?`, so no value a client sent leaves the
/// proxy's SQL port), with their share of the sampled hits and their estimated hits, most first:
/// what the metrics endpoint and the status page show without a login. Each sums the hot requests
/// of its shape that the sketch tracks, so a shape of many lukewarm requests may be undercounted.
pub fn hot_shapes(cache: &Cache) -> Vec<(String, f64, u64)> {
    let (top, sampled) = cache.hot.top();
    let mut shapes: Vec<(String, u64)> = Vec::new();
    for c in top {
        let shape = super::digest::shape(describe(&c.key).as_bytes());
        match shapes.iter_mut().find(|(s, _)| *s == shape) {
            Some((_, count)) => *count += c.count,
            None => shapes.push((shape, c.count)),
        }
    }
    shapes.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    shapes
        .into_iter()
        .map(|(shape, count)| {
            let share = count as f64 / sampled.max(1) as f64;
            (shape, share, count * super::hot::SAMPLE)
        })
        .collect()
}

/// The SQL a request runs: a simple query's text, or the statement an extended run parses or
/// executes.
fn describe(key: &CacheKey) -> String {
    let request = &key.request[..];
    let sql = match request.first() {
        Some(b'Q') => request.get(5..request.len().saturating_sub(1)),
        // A Parse: tag, length, statement name, NUL, then the SQL up to its NUL.
        Some(b'P') => request.get(5..).and_then(|body| {
            let name_end = body.iter().position(|&b| b == 0)?;
            let sql = &body[name_end + 1..];
            Some(&sql[..sql.iter().position(|&b| b == 0)?])
        }),
        _ => None,
    };
    let sql = sql.or_else(|| {
        let definition = &key.definition[..];
        Some(&definition[..definition.iter().position(|&b| b == 0)?])
    });
    match sql {
        Some(sql) => String::from_utf8_lossy(sql).into_owned(),
        None => "(extended-protocol request)".to_owned(),
    }
}

/// Copies the tier's figures into the metrics (called every second): per node, and the hot-key and
/// balance signals operators watch (the most-hit request's share of the hits; each node's share).
pub fn report(cache: &Cache) {
    let (top, sampled) = cache.hot.top();
    let hottest = top
        .first()
        .map_or(0.0, |c| c.count as f64 / sampled.max(1) as f64);
    metrics::gauge!("veneer_hot_request_share").set(hottest);
    let Tier::Remote(remote) = &cache.store else {
        return;
    };
    let total_hits: u64 = remote
        .nodes()
        .iter()
        .map(|n| n.stats.hits.load(Ordering::Relaxed))
        .sum();
    metrics::counter!("veneer_tier_near_hits_total").absolute(load(&remote.counters.near_hits));
    metrics::counter!("veneer_tier_forged_total").absolute(load(&remote.counters.forged));
    let c = &remote.counters;
    metrics::counter!("veneer_fleet_hits_filled_by_others_total").absolute(load(&c.others_hits));
    metrics::counter!("veneer_fleet_leases_total").absolute(load(&c.leases));
    metrics::counter!("veneer_fleet_lease_waits_total").absolute(load(&c.lease_waits));
    metrics::counter!("veneer_fleet_lease_wait_hits_total").absolute(load(&c.lease_wait_hits));
    metrics::counter!("veneer_fleet_leases_lost_total").absolute(load(&c.leases_lost));
    for node in remote.nodes() {
        let label = [("node", node.name.clone())];
        let s = &node.stats;
        metrics::gauge!("veneer_tier_node_up", &label).set(f64::from(u8::from(node.is_up())));
        metrics::counter!("veneer_tier_node_gets_total", &label).absolute(load(&s.gets));
        metrics::counter!("veneer_tier_node_hits_total", &label).absolute(load(&s.hits));
        metrics::counter!("veneer_tier_node_sets_total", &label).absolute(load(&s.sets));
        metrics::counter!("veneer_tier_node_errors_total", &label).absolute(load(&s.errors));
        metrics::gauge!("veneer_tier_node_ops_per_second", &label).set(s.rate());
        let share = load(&s.hits) as f64 / total_hits.max(1) as f64;
        metrics::gauge!("veneer_tier_node_hit_share", &label).set(share);
    }
}

/// A counter's value (the tier's counters are plain atomics, read without ordering).
fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
