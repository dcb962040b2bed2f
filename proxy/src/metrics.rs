//! Prometheus metrics. Handles are registered once and kept, so counting on the hit path is one atomic
//! add; the exporter (metrics-exporter-prometheus) serves them over HTTP at `metrics_listen`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use veneer_invalidation::Source;

use crate::error::Error;
use crate::passthrough::Reason;

/// Latency buckets, in seconds: from a few microseconds (hits) to seconds (slow queries).
const BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the Prometheus recorder, before any handle is registered (counting is a no-op
/// without it); its text is served by [`crate::status`] at `/metrics`.
pub fn install(addr: SocketAddr) -> Result<PrometheusHandle, Error> {
    PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .map_err(|e| Error::metrics(addr, e))?
        .install_recorder()
        .map_err(|e| Error::metrics(addr, e))
}

/// A counter exported to Prometheus that the proxy can also read back (for `SHOW VENEER STATUS`; the
/// metrics crate's handles are write-only).
pub struct Tally {
    exported: Counter,
    value: AtomicU64,
}

impl Tally {
    fn new(exported: Counter) -> Tally {
        Tally {
            exported,
            value: AtomicU64::new(0),
        }
    }

    /// Counts `n` more.
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
        self.exported.increment(n);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// The proxy's metric handles.
pub struct Meters {
    /// Requests answered from the cache.
    pub hits: Tally,
    /// Cacheable requests fetched upstream.
    pub misses: Tally,
    /// Requests forwarded uncached, all reasons.
    pub bypasses: Tally,
    /// The same per reason, indexed as [`Reason::ALL`].
    pub bypass_reasons: Box<[Tally]>,
    /// Misses that waited for an identical miss in flight instead of going upstream.
    pub coalesced: Tally,
    /// Time of a hit, request to reply queued.
    pub hit_seconds: Histogram,
    /// Upstream time of a cacheable miss.
    pub miss_seconds: Histogram,
    /// Upstream time of a forwarded request.
    pub passthrough_seconds: Histogram,
    /// Protocol messages the proxy sent upstream for clients.
    pub upstream_messages: Tally,
    /// Client sessions open.
    pub client_connections: Gauge,
    /// Upstream connections open for client sessions.
    pub upstream_connections: Gauge,
    /// Upstream connections kept open between clients (see [`crate::pool`]).
    pub idle_upstreams: Gauge,
    /// Upstream connections kept after their client logged out.
    pub kept_upstreams: Tally,
    /// Client sessions that got a kept upstream connection instead of a new login.
    pub reused_upstreams: Tally,
    /// Entries in the cache.
    pub entries: Gauge,
    /// Bytes held by the cache.
    pub bytes: Gauge,
    /// The bound on them (`max_bytes`; a remote tier's nodes' own bounds in total).
    pub max_bytes: Gauge,
    /// Entries evicted to stay within the bound.
    pub evictions: Counter,
    /// Entries expired at their TTL.
    pub expirations: Counter,
    /// Hits checked against the server (`verify_sample`), where nothing they read changed meanwhile.
    pub verify_samples: Tally,
    /// Checked hits whose answer differed from the server's.
    pub verify_mismatches: Tally,
    /// Sampled hits not checked (all reasons; per reason in Prometheus only).
    pub verify_skips: Tally,
}

impl Default for Meters {
    fn default() -> Self {
        Meters {
            hits: Tally::new(counter!("veneer_cache_hits_total")),
            misses: Tally::new(counter!("veneer_cache_misses_total")),
            // Exported per reason; the total is only read back.
            bypasses: Tally::new(Counter::noop()),
            bypass_reasons: Reason::ALL
                .iter()
                .map(|r| Tally::new(counter!("veneer_cache_bypasses_total", "reason" => r.label())))
                .collect(),
            coalesced: Tally::new(counter!("veneer_cache_coalesced_total")),
            hit_seconds: histogram!("veneer_request_duration_seconds", "path" => "hit"),
            miss_seconds: histogram!("veneer_request_duration_seconds", "path" => "miss"),
            passthrough_seconds: histogram!("veneer_request_duration_seconds", "path" => "passthrough"),
            upstream_messages: Tally::new(counter!("veneer_upstream_messages_total")),
            client_connections: gauge!("veneer_client_connections"),
            upstream_connections: gauge!("veneer_upstream_connections"),
            idle_upstreams: gauge!("veneer_upstream_idle_connections"),
            kept_upstreams: Tally::new(counter!("veneer_upstream_kept_total")),
            reused_upstreams: Tally::new(counter!("veneer_upstream_reused_total")),
            entries: gauge!("veneer_cache_entries"),
            bytes: gauge!("veneer_cache_bytes"),
            max_bytes: gauge!("veneer_cache_max_bytes"),
            evictions: counter!("veneer_cache_evictions_total"),
            expirations: counter!("veneer_cache_expirations_total"),
            verify_samples: Tally::new(counter!("veneer_verify_samples_total")),
            verify_mismatches: Tally::new(counter!("veneer_verify_mismatches_total")),
            verify_skips: Tally::new(Counter::noop()),
        }
    }
}

/// What one database's replication stream has done, exported with a `database` label and readable
/// for the status.
pub struct StreamMeters {
    /// Transactions applied.
    pub transactions: Tally,
    /// Rows inserted, updated or deleted by them.
    pub rows: Tally,
    /// Times the stream failed (lost, or refused at its start), each followed by a retry.
    pub failures: Tally,
    /// Times this proxy took in the generations of the proxies sharing its tier (see
    /// `cache::fleet`).
    pub joins: Tally,
    /// Commit-to-apply delay of each transaction.
    delay: Histogram,
    /// The same of the last transaction applied.
    last_delay: Gauge,
    /// 1 while the stream is down (lost or refused, waiting to retry), else 0: what an alert on
    /// freshness watches.
    is_down: Gauge,
    /// Bytes of WAL the server had beyond what was applied, at its last report.
    lag_bytes: Gauge,
    last_lag_bytes: AtomicU64,
    /// Bytes of WAL the slot makes the server keep, at the last look.
    retained_bytes: Gauge,
    last_retained_bytes: AtomicU64,
    last_delay_micros: AtomicU64,
    /// `veneer_table_invalidations_total` of each table seen, registered once per table rather than
    /// looked up (labels built, registry hashed) at every commit. Only the stream's task counts here.
    table_invalidations: std::sync::Mutex<std::collections::HashMap<String, Counter>>,
    database: String,
}

impl StreamMeters {
    /// The meters of database `name`'s stream.
    pub fn new(name: &str) -> StreamMeters {
        let database = name.to_owned();
        StreamMeters {
            transactions: Tally::new(
                counter!("veneer_replication_transactions_total", "database" => database.clone()),
            ),
            rows: Tally::new(
                counter!("veneer_replication_rows_total", "database" => database.clone()),
            ),
            failures: Tally::new(
                counter!("veneer_replication_failures_total", "database" => database.clone()),
            ),
            joins: Tally::new(counter!("veneer_fleet_joins_total", "database" => database.clone())),
            delay: histogram!("veneer_replication_delay_seconds", "database" => database.clone()),
            last_delay: gauge!("veneer_replication_lag_seconds", "database" => database.clone()),
            is_down: gauge!("veneer_replication_down", "database" => database.clone()),
            lag_bytes: gauge!("veneer_replication_lag_bytes", "database" => database.clone()),
            last_lag_bytes: AtomicU64::new(0),
            retained_bytes: gauge!("veneer_replication_slot_retained_bytes", "database" => database.clone()),
            last_retained_bytes: AtomicU64::new(u64::MAX),
            last_delay_micros: AtomicU64::new(0),
            table_invalidations: Default::default(),
            database,
        }
    }

    /// A transaction was applied `delay` after its commit, invalidating `tables`.
    pub fn applied<'a>(
        &self,
        rows: u64,
        delay: std::time::Duration,
        tables: impl IntoIterator<Item = &'a String>,
    ) {
        self.transactions.add(1);
        self.rows.add(rows);
        self.delay.record(delay);
        self.last_delay.set(delay.as_secs_f64());
        self.last_delay_micros
            .store(delay.as_micros() as u64, Ordering::Relaxed);
        let mut counters = self
            .table_invalidations
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for table in tables {
            if let Some(counter) = counters.get(table) {
                counter.increment(1);
                continue;
            }
            let counter = counter!("veneer_table_invalidations_total", "database" => self.database.clone(), "table" => table.clone());
            counter.increment(1);
            counters.insert(table.clone(), counter);
        }
    }

    /// The stream went down (`true`) or is otherwise (starting, streaming, idle).
    pub fn down(&self, down: bool) {
        self.is_down.set(f64::from(u8::from(down)));
    }

    /// The server reported how far behind the stream is, in bytes of WAL.
    pub fn behind(&self, bytes: u64) {
        self.lag_bytes.set(bytes as f64);
        self.last_lag_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The slot makes the server keep `bytes` of WAL.
    pub fn retained(&self, bytes: u64) {
        self.retained_bytes.set(bytes as f64);
        self.last_retained_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The WAL the slot retained at the last look, once looked at.
    pub fn last_retained(&self) -> Option<u64> {
        Some(self.last_retained_bytes.load(Ordering::Relaxed)).filter(|&b| b != u64::MAX)
    }

    /// The last lag figures: bytes of WAL behind, and the last transaction's commit-to-apply delay.
    pub fn lag(&self) -> (u64, std::time::Duration) {
        (
            self.last_lag_bytes.load(Ordering::Relaxed),
            std::time::Duration::from_micros(self.last_delay_micros.load(Ordering::Relaxed)),
        )
    }
}

impl Meters {
    /// A request forwarded although it might have been cacheable, by reason.
    pub fn bypass(&self, reason: Reason) {
        self.bypasses.add(1);
        self.bypass_reasons[reason.index()].add(1);
    }

    /// A sampled hit that was not checked, and why.
    pub fn verify_skipped(&self, reason: &'static str) {
        self.verify_skips.add(1);
        counter!("veneer_verify_skipped_total", "reason" => reason).increment(1);
    }

    /// A bump of generations, by where it came from.
    pub fn invalidation(&self, source: Source) {
        let source = match source {
            Source::WriteThrough => "write_through",
            Source::Replication => "replication",
            Source::Admin => "admin",
        };
        counter!("veneer_invalidations_total", "source" => source).increment(1);
    }
}

/// Tables per database with their own `table` label in the per-table hit and miss counters; the
/// others share the label [`OTHER_TABLES`], so a schema of thousands of tables cannot blow up the
/// exported series.
pub const MAX_TABLES: usize = 100;

/// The `table` label of the tables beyond [`MAX_TABLES`].
pub const OTHER_TABLES: &str = "(other)";

/// Hits and misses of the cacheable reads of one table, exported with `database` and `table` labels.
/// A plan holds its tables' handles, so counting is an atomic add per table read.
pub struct TableUse {
    hits: Counter,
    misses: Counter,
}

impl std::fmt::Debug for TableUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TableUse")
    }
}

impl TableUse {
    /// Counts a hit (`true`) or a miss of a read of the table.
    pub fn count(&self, hit: bool) {
        if hit {
            self.hits.increment(1);
        } else {
            self.misses.increment(1);
        }
    }
}

/// One database's cache use, for the per-database hit ratio (exported and on the status page) and
/// the handles of its tables' counters.
pub struct DatabaseUse {
    /// Hits of reads of the database.
    pub hits: Tally,
    /// Misses of reads of the database.
    pub misses: Tally,
    tables: std::sync::Mutex<std::collections::HashMap<String, Arc<TableUse>>>,
    other: std::sync::OnceLock<Arc<TableUse>>,
    database: String,
}

impl DatabaseUse {
    /// The counters of database `name`.
    pub fn new(name: &str) -> DatabaseUse {
        let database = name.to_owned();
        DatabaseUse {
            hits: Tally::new(
                counter!("veneer_database_cache_hits_total", "database" => database.clone()),
            ),
            misses: Tally::new(
                counter!("veneer_database_cache_misses_total", "database" => database.clone()),
            ),
            tables: Default::default(),
            other: std::sync::OnceLock::new(),
            database,
        }
    }

    /// Counts a hit (`true`) or a miss of a read of the database.
    pub fn count(&self, hit: bool) {
        if hit {
            self.hits.add(1);
        } else {
            self.misses.add(1);
        }
    }

    /// The counters of `table`, registered at its first use (when a plan reading it is made).
    pub fn table(&self, table: &str) -> Arc<TableUse> {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = tables.get(table) {
            return Arc::clone(known);
        }
        if tables.len() >= MAX_TABLES {
            let other = self
                .other
                .get_or_init(|| Arc::new(table_use(&self.database, OTHER_TABLES)));
            return Arc::clone(other);
        }
        let made = Arc::new(table_use(&self.database, table));
        tables.insert(table.to_owned(), Arc::clone(&made));
        made
    }
}

/// The per-table counters of `table` in `database`.
fn table_use(database: &str, table: &str) -> TableUse {
    let labels = [
        ("database", database.to_owned()),
        ("table", table.to_owned()),
    ];
    TableUse {
        hits: counter!("veneer_table_cache_hits_total", &labels),
        misses: counter!("veneer_table_cache_misses_total", &labels),
    }
}
