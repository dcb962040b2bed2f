//! The sharding client: keys spread over independent RESP servers (`veneer-cache-node`s, or plain
//! Redis / Valkey servers), each key also written to `replicas` further ones.
//!
//! Placement is rendezvous hashing (highest random weight): a key's nodes are the ones with the
//! highest scores `mix(route ^ seed(node))`. Adding or removing a node moves only the keys whose top
//! scores it holds, about 1/N of them, whatever its place in the list (jump hash would tie keys to
//! node *positions*, so removing any node but the last would move most keys); and a key's replicas
//! are simply its next-best nodes, so the keys of a node that fails fall over to their replicas,
//! spread over every other node, with nothing rehashed. With a handful of nodes, scoring each one per
//! lookup costs nanoseconds.
//!
//! Each node has one multiplexed connection (requests pipelined from every session) that reconnects
//! on its own. A node that fails [`DOWN_AFTER`] times in a row, deadlines included, is marked down:
//! lookups skip it (to its replica, or a miss) until a probe finds it answering again.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_read_routing::RandomReplicaStrategy;
use redis::Value;
use tokio::sync::OnceCell;

use crate::key::{mix, seed, StoredKey};

/// Consecutive failures that mark a node down.
pub const DOWN_AFTER: u32 = 3;

/// How often down nodes are probed, and node rates sampled.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Longest a probe, a write or an admin query waits for a node.
const SLOW_OP: Duration = Duration::from_secs(1);

/// Keys asked for per SCAN step of a flush.
const SCAN_COUNT: usize = 1000;

/// How a node is reached.
pub enum Conn {
    /// One server, over one multiplexed connection that reconnects on its own.
    Single(ConnectionManager),
    /// A Redis Cluster, whose client follows the slot map, MOVED and ASK, and reads replicas.
    Cluster(Arc<OnceCell<ClusterConnection>>),
}

impl Conn {
    /// A connection to the server at `url` (redis:// or rediss://), opened on first use.
    pub fn single(url: &str) -> Result<Conn, String> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(SLOW_OP))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        ConnectionManager::new_lazy_with_config(client, config)
            .map(Conn::Single)
            .map_err(|e| e.to_string())
    }

    /// A connection to the cluster of which `urls` name some members; it is opened in the
    /// background (until then every operation fails, which is a miss).
    pub fn cluster(urls: &[String]) -> Result<Conn, String> {
        let client = ClusterClient::builder(urls.iter().map(String::as_str))
            .read_routing_strategy(RandomReplicaStrategy)
            .connection_timeout(SLOW_OP)
            .response_timeout(SLOW_OP)
            .retries(2)
            .build()
            .map_err(|e| e.to_string())?;
        let cell = Arc::new(OnceCell::new());
        let opened = Arc::downgrade(&cell);
        tokio::spawn(async move {
            loop {
                let Some(cell) = opened.upgrade() else { return };
                match client.get_async_connection().await {
                    Ok(conn) => {
                        let _ = cell.set(conn);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reach the Redis Cluster yet: lookups miss");
                        drop(cell);
                        tokio::time::sleep(PROBE_INTERVAL).await;
                    }
                }
            }
        });
        Ok(Conn::Cluster(cell))
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, String> {
        let answered = match self {
            Conn::Single(conn) => {
                let mut conn = conn.clone();
                match cmd.query_async(&mut conn).await {
                    // The connection broke (a restarted node): the manager opens a new one, which
                    // the same request may use at once (within the caller's deadline).
                    Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                        cmd.query_async(&mut conn).await
                    }
                    answered => answered,
                }
            }
            Conn::Cluster(cell) => {
                let Some(conn) = cell.get() else {
                    return Err("not connected to the cluster yet".to_owned());
                };
                cmd.query_async(&mut conn.clone()).await
            }
        };
        answered.map_err(|e| e.to_string())
    }
}

/// One server of the tier (or a whole Redis Cluster, which places keys itself).
pub struct Node {
    /// As configured (host:port, or a URL without its password).
    pub name: String,
    seed: u64,
    conn: Conn,
    down: AtomicBool,
    failures: AtomicU32,
    /// Why it was marked down, and when.
    cause: Mutex<Option<(Instant, String)>>,
    /// Client-side counters, for SHOW VENEER NODES and the metrics.
    pub stats: NodeStats,
}

/// What one proxy saw of one node.
#[derive(Default)]
pub struct NodeStats {
    /// Lookups sent.
    pub gets: AtomicU64,
    /// Lookups answered with a value.
    pub hits: AtomicU64,
    /// Values written.
    pub sets: AtomicU64,
    /// Failed operations, deadlines included.
    pub errors: AtomicU64,
    /// Sum of the answered operations' latencies, in microseconds.
    pub micros: AtomicU64,
    /// Operations answered.
    pub answered: AtomicU64,
    /// Operations per second over the last probe interval, as f64 bits.
    rate: AtomicU64,
    /// Operations counted at the last sample.
    sampled: AtomicU64,
}

impl NodeStats {
    /// Operations per second lately.
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }

    fn sample(&self, interval: Duration) {
        let ops = self.gets.load(Ordering::Relaxed) + self.sets.load(Ordering::Relaxed);
        let before = self.sampled.swap(ops, Ordering::Relaxed);
        let rate = ops.saturating_sub(before) as f64 / interval.as_secs_f64();
        self.rate.store(rate.to_bits(), Ordering::Relaxed);
    }
}

impl Node {
    /// Whether lookups use it.
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Acquire)
    }

    /// When it was marked down and why; `None` while up.
    pub fn down_cause(&self) -> Option<(Instant, String)> {
        self.cause.lock().expect("not poisoned").clone()
    }

    /// Runs `cmd` within `limit`, keeping the node's health and counters.
    async fn run<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        limit: Duration,
    ) -> Result<T, String> {
        let started = Instant::now();
        let outcome = tokio::time::timeout(limit, self.conn.query::<T>(cmd)).await;
        match outcome {
            Ok(Ok(value)) => {
                let micros = started.elapsed().as_micros() as u64;
                self.stats.micros.fetch_add(micros, Ordering::Relaxed);
                self.stats.answered.fetch_add(1, Ordering::Relaxed);
                self.failures.store(0, Ordering::Relaxed);
                Ok(value)
            }
            Ok(Err(e)) => Err(self.failed(e)),
            Err(_) => Err(self.failed(format!("no answer within {limit:?}"))),
        }
    }

    fn failed(&self, cause: String) -> String {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= DOWN_AFTER && !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(node = %self.name, cause = %cause,
                "cache node marked down: its keys are read from their replicas, or missed, until it answers again");
            *self.cause.lock().expect("not poisoned") = Some((Instant::now(), cause.clone()));
        }
        cause
    }

    /// Asks a down node whether it answers again.
    async fn probe(&self) {
        let ping = redis::cmd("PING");
        let answered = tokio::time::timeout(SLOW_OP, self.conn.query::<String>(&ping)).await;
        if matches!(answered, Ok(Ok(_))) {
            self.failures.store(0, Ordering::Relaxed);
            self.down.store(false, Ordering::Release);
            *self.cause.lock().expect("not poisoned") = None;
            tracing::info!(node = %self.name, "cache node answers again: back in use");
        }
    }
}

/// The nodes of a sharded tier.
pub struct Shards {
    nodes: Arc<[Node]>,
    replicas: usize,
}

impl Shards {
    /// A client of `nodes` (each named, for placement and diagnostics), each key on `1 + replicas`
    /// of them. Probes run while the client lives. Must be called inside a tokio runtime.
    pub fn new(nodes: Vec<(String, Conn)>, replicas: usize) -> Shards {
        let nodes: Arc<[Node]> = nodes
            .into_iter()
            .map(|(name, conn)| Node {
                seed: seed(&name),
                name,
                conn,
                down: AtomicBool::new(false),
                failures: AtomicU32::new(0),
                cause: Mutex::new(None),
                stats: NodeStats::default(),
            })
            .collect();
        tokio::spawn(probe(Arc::downgrade(&nodes)));
        Shards { nodes, replicas }
    }

    /// Every node, in configured order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The indexes of `key`'s nodes, best first: its node, then its replicas.
    fn ranked(&self, key: &StoredKey) -> impl Iterator<Item = usize> {
        let mut scored: Vec<(u64, usize)> = (0..self.nodes.len())
            .map(|i| (mix(key.route ^ self.nodes[i].seed), i))
            .collect();
        scored.sort_unstable_by_key(|&(score, _)| std::cmp::Reverse(score));
        scored.into_iter().take(1 + self.replicas).map(|(_, i)| i)
    }

    /// The indexes of `key`'s nodes that are up, best first.
    fn placed(&self, key: &StoredKey) -> Vec<usize> {
        self.ranked(key)
            .filter(|&i| self.nodes[i].is_up())
            .collect()
    }

    /// The node `key` belongs on (its replicas aside).
    pub fn owner(&self, key: &StoredKey) -> &Node {
        let first = self.ranked(key).next().expect("a tier has nodes");
        &self.nodes[first]
    }

    /// The value of `key` from the first of its nodes that is up, within `limit`. A fault is a miss.
    pub async fn get(&self, key: &StoredKey, limit: Duration) -> Option<Vec<u8>> {
        let node = &self.nodes[*self.placed(key).first()?];
        node.stats.gets.fetch_add(1, Ordering::Relaxed);
        let value: Option<Vec<u8>> = node
            .run(redis::cmd("GET").arg(&key.bytes), limit)
            .await
            .ok()?;
        if value.is_some() {
            node.stats.hits.fetch_add(1, Ordering::Relaxed);
        }
        value
    }

    /// Writes `value` under `key` on each of its nodes that is up, to expire after `ttl`. Returns
    /// once the first has answered; the replicas' writes finish in the background.
    pub async fn set(&self, key: &StoredKey, value: Vec<u8>, ttl: Duration) {
        let ms = ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key.bytes).arg(value).arg("PX").arg(ms);
        let placed = self.placed(key);
        let Some((&first, replicas)) = placed.split_first() else {
            return;
        };
        for &i in replicas {
            self.nodes[i].stats.sets.fetch_add(1, Ordering::Relaxed);
            let nodes = Arc::clone(&self.nodes);
            let cmd = cmd.clone();
            tokio::spawn(async move {
                let _ = nodes[i].run::<Value>(&cmd, SLOW_OP).await;
            });
        }
        let node = &self.nodes[first];
        node.stats.sets.fetch_add(1, Ordering::Relaxed);
        let _ = node.run::<Value>(&cmd, SLOW_OP).await;
    }

    /// Runs `cmd` on the first of `key`'s nodes that is up (its owner, or the replica standing in
    /// for it), within `limit`: for what must happen in one place, such as a lease.
    pub async fn on_first<T: redis::FromRedisValue>(
        &self,
        key: &StoredKey,
        cmd: &redis::Cmd,
        limit: Duration,
    ) -> Result<T, String> {
        let Some(&first) = self.placed(key).first() else {
            return Err("every node of the key is down".to_owned());
        };
        self.nodes[first].run(cmd, limit).await
    }

    /// Deletes every key starting with `prefix` from every node that is up (SCAN and UNLINK, a step
    /// at a time, so no node stalls); keys of other namespaces stay.
    pub async fn clear(&self, prefix: &[u8]) {
        let mut pattern = escape_glob(prefix);
        pattern.push(b'*');
        for node in self.nodes.iter().filter(|n| n.is_up()) {
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let Ok((next, keys)) = node.run::<(u64, Vec<Vec<u8>>)>(&scan, SLOW_OP).await else {
                    break;
                };
                if !keys.is_empty() {
                    let _ = node
                        .run::<Value>(redis::cmd("UNLINK").arg(keys), SLOW_OP)
                        .await;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
    }

    /// Keys and bytes a node reports holding (DBSIZE, INFO memory), when it answers in time.
    pub async fn size(&self, node: &Node) -> Option<(u64, u64)> {
        let keys: u64 = node.run(&redis::cmd("DBSIZE"), SLOW_OP).await.ok()?;
        let info: String = node
            .run(redis::cmd("INFO").arg("memory"), SLOW_OP)
            .await
            .ok()?;
        let bytes = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())?;
        Some((keys, bytes))
    }
}

/// `prefix` with glob's special characters escaped, for SCAN MATCH.
fn escape_glob(prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 8);
    for &b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// Probes down nodes and samples rates every [`PROBE_INTERVAL`] while the nodes are in use.
async fn probe(nodes: Weak<[Node]>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(nodes) = nodes.upgrade() else {
            return;
        };
        for node in nodes.iter() {
            node.stats.sample(PROBE_INTERVAL);
            if !node.is_up() {
                node.probe().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:6380")).collect()
    }

    /// Where each of `keys` goes among `nodes` (by name), rendezvous-style.
    fn owners(nodes: &[String], keys: u64) -> Vec<String> {
        (0..keys)
            .map(|k| {
                let route = mix(k);
                nodes
                    .iter()
                    .max_by_key(|n| mix(route ^ seed(n)))
                    .expect("nodes")
                    .clone()
            })
            .collect()
    }

    #[test]
    fn keys_spread_evenly_and_a_new_node_moves_about_its_share() {
        let three = names(3);
        let before = owners(&three, 30_000);
        for node in &three {
            let share = before.iter().filter(|o| *o == node).count();
            assert!((9_000..11_000).contains(&share), "{node}: {share} of 30000");
        }
        let four = names(4);
        let after = owners(&four, 30_000);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        // A fourth node takes a quarter of the keys, all of them from the others.
        assert!((6_500..8_500).contains(&moved), "{moved} of 30000 moved");
        assert!(before
            .iter()
            .zip(&after)
            .all(|(a, b)| a == b || b == &four[3]));
    }

    #[test]
    fn removing_any_node_moves_only_its_keys() {
        let three = names(3);
        let before = owners(&three, 30_000);
        let without_first = owners(&three[1..], 30_000);
        assert!(before
            .iter()
            .zip(&without_first)
            .all(|(a, b)| a == b || a == &three[0]));
    }
}
