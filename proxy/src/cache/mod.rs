//! The query-result cache as sessions use it: per-database plans and generations ([`database`]), the
//! store ([`Store`], behind `veneer_cache_node::CacheStore`), cache-key scopes, single-flight of
//! identical misses, statistics, and the catalog readers that keep plans honest.

pub mod admin;
pub mod catalog;
pub mod classify;
pub mod database;
mod demand;
pub mod digest;
pub mod fence;
mod fleet;
mod follow;
pub mod hot;
pub mod marks;
pub(crate) use follow::permanent_slot;
pub mod point;
pub mod privileges;
mod service;
mod slot;
pub mod tier_view;
pub mod verify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsConnector;
use veneer_cache_node::{CacheKey, CacheStore, Tier};
use veneer_config::{CacheConfig, Config, Replication};
use veneer_invalidation::Marked;

use crate::metrics::Meters;
use catalog::Catalog;
use database::{CatalogState, Database};
use digest::Digest;

/// Query shapes tracked at most; further shapes share one "other" entry.
const MAX_DIGESTS: usize = 10_000;

/// Quiet time after DDL before the catalog is read again (see [`settle`]).
const DDL_SETTLE: Duration = Duration::from_millis(50);

/// Longest a catalog read may take before it counts as failed (and is tried again).
const CATALOG_TIMEOUT: Duration = Duration::from_secs(60);

/// Catalog reads that fail are retried at least this often.
const CATALOG_RETRY: Duration = Duration::from_secs(5);

/// Digests by normalized text, shared by every database.
#[derive(Default)]
pub struct Digests(Mutex<HashMap<String, Arc<Digest>>>);

impl Digests {
    /// The digest of `normalized`, created on first use.
    pub fn get(&self, normalized: String) -> Arc<Digest> {
        let mut map = self.0.lock().expect("not poisoned");
        if map.len() >= MAX_DIGESTS && !map.contains_key(&normalized) {
            return Arc::clone(
                map.entry("(other query shapes)".to_owned())
                    .or_insert_with_key(|k| Arc::new(Digest::new(k.clone()))),
            );
        }
        Arc::clone(
            map.entry(normalized)
                .or_insert_with_key(|k| Arc::new(Digest::new(k.clone()))),
        )
    }

    /// Every digest, for the admin view.
    pub fn all(&self) -> Vec<Arc<Digest>> {
        self.0
            .lock()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect()
    }
}

/// The cache, shared by every session.
pub struct Cache {
    /// Its settings.
    pub config: CacheConfig,
    /// Where results are stored.
    pub store: Tier,
    /// Statistics per query shape.
    pub digests: Digests,
    /// The most-hit requests.
    pub hot: hot::Hot,
    /// When the proxy started, for the status.
    pub started: Instant,
    /// Metric handles.
    pub meters: Arc<Meters>,
    /// Checks a sample of the hits against the server (`verify_sample`), when on.
    pub verifier: Option<verify::Verifier>,
    databases: Mutex<HashMap<String, Arc<Database>>>,
    flights: Mutex<HashMap<CacheKey, watch::Receiver<()>>>,
    /// Permits for replication streams running at once (`replication_listeners`).
    listeners: Arc<Semaphore>,
    service: Config,
    service_tls: Option<TlsConnector>,
    /// Set when the proxy has shut down: background tasks (catalog readers, replication streams) end.
    stopped: watch::Sender<bool>,
}

/// Longest wait for a database's replication stream to close before a DROP DATABASE goes on.
const HOLD_WAIT: Duration = Duration::from_secs(10);

/// Keeps a database's replication stream off (see [`Cache::hold_database`]).
pub struct DatabaseHold(Arc<Database>);

impl Drop for DatabaseHold {
    fn drop(&mut self) {
        self.0.reset();
        self.0.demand.unhold();
    }
}

/// Whether a miss goes upstream itself or waits for an identical one already there.
pub enum Flight {
    /// Go upstream; the guard ends the flight (waking followers) when dropped.
    Leader(FlightGuard),
    /// Wait until the receiver reports its sender gone, then look again.
    Follower(watch::Receiver<()>),
}

/// The leader's hold on a flight. Dropped after the result is stored, or when it will not be.
pub struct FlightGuard {
    cache: Arc<Cache>,
    key: CacheKey,
    _done: watch::Sender<()>,
    /// The flight also holds the key's lease in the shared tier, released with it.
    pub leased: bool,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.cache
            .flights
            .lock()
            .expect("not poisoned")
            .remove(&self.key);
        if self.leased {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (cache, key) = (Arc::clone(&self.cache), self.key.clone());
                runtime.spawn(async move {
                    if let Some(remote) = cache.store.remote() {
                        remote.release(&key).await;
                    }
                });
            }
        }
    }
}

impl Cache {
    /// A cache with `config`; `service` and `tls` make Veneer's own catalog connections. Fails when
    /// the remote tier's addresses cannot be used.
    pub fn new(
        config: CacheConfig,
        service: Config,
        tls: Option<TlsConnector>,
        meters: Arc<Meters>,
    ) -> Result<Cache, crate::Error> {
        let store = Tier::new(&config.tier, config.max_bytes).map_err(crate::Error::tier)?;
        Ok(Cache {
            meters,
            verifier: (config.verify_sample > 0.0)
                .then(|| verify::Verifier::new(config.verify_sample)),
            store,
            digests: Digests::default(),
            hot: hot::Hot::default(),
            started: Instant::now(),
            databases: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            listeners: Arc::new(Semaphore::new(config.replication_listeners)),
            config,
            service,
            service_tls: tls,
            stopped: watch::channel(false).0,
        })
    }

    /// The cache's view of `name`; the first use starts reading its catalog.
    pub fn database(self: &Arc<Self>, name: &str) -> Arc<Database> {
        let mut databases = self.databases.lock().expect("not poisoned");
        if let Some(db) = databases.get(name) {
            return Arc::clone(db);
        }
        let db = Arc::new(Database::new(
            name.to_owned(),
            self.store.remote().is_some(),
        ));
        databases.insert(name.to_owned(), Arc::clone(&db));
        self.spawn_background(keep_catalog(Arc::downgrade(self), Arc::clone(&db)));
        if self.config.replication != Replication::Off {
            self.spawn_background(follow::follow(Arc::downgrade(self), Arc::clone(&db)));
        }
        db
    }

    /// Keeps `name`'s replication stream off until the returned hold is dropped, and returns once its
    /// slot is released: a DROP DATABASE is refused while a slot of the database is active. Dropping
    /// the hold resets what the cache knew of the database, which may be a new one by then. `None`
    /// when no session has used the database through the proxy (it then has no stream).
    pub async fn hold_database(&self, name: &str) -> Option<DatabaseHold> {
        let db = self
            .databases
            .lock()
            .expect("not poisoned")
            .get(name)
            .cloned()?;
        db.demand.hold();
        let hold = DatabaseHold(db);
        // Bounded: a listener that cannot close is left to the server, which then refuses the drop.
        let _ = tokio::time::timeout(HOLD_WAIT, hold.0.listener_closed()).await;
        Some(hold)
    }

    /// Ends the background work of every database (catalog readers, replication streams, whose
    /// temporary slots the server then drops). Called once the proxy has shut down.
    pub fn stop(&self) {
        self.stopped.send_replace(true);
    }

    /// Runs `task` until it ends or [`Cache::stop`] is called.
    fn spawn_background(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut stopped = self.stopped.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                () = task => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
        });
    }

    /// Every database in use.
    pub fn databases(&self) -> Vec<Arc<Database>> {
        let databases = self.databases.lock().expect("not poisoned");
        databases.values().cloned().collect()
    }

    /// Places a remote tier's keys in the namespace of the server `catalog` was read from.
    fn learn_server(&self, catalog: &Catalog) {
        if let Some(remote) = self.store.remote() {
            let (system, timeline) = catalog.server;
            remote.set_server(system, timeline);
        }
    }

    /// Whether results of `db` may be served now: not while its replication stream is down, unless the
    /// configuration accepts TTL-bounded staleness then.
    pub fn serves(&self, db: &Database) -> bool {
        self.config.replication != Replication::Required || db.is_streaming()
    }

    /// Joins the flight of `key`, or starts it.
    pub fn flight(self: &Arc<Self>, key: &CacheKey) -> Flight {
        let mut flights = self.flights.lock().expect("not poisoned");
        if let Some(rx) = flights.get(key) {
            return Flight::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        flights.insert(key.clone(), rx);
        Flight::Leader(FlightGuard {
            cache: Arc::clone(self),
            key: key.clone(),
            _done: tx,
            leased: false,
        })
    }

    /// Makes every database's older entries unreachable, for every proxy sharing the tier (see
    /// [`marks::Marker::tell`]), then drops what the tier holds.
    pub async fn flush_all(&self) {
        for db in self.databases() {
            db.marker().tell(self, vec![Marked::Global], "*").await;
        }
        self.store.clear().await;
    }

    /// Makes every stored result that read `table` unreachable, in every database, for every proxy
    /// sharing the tier; returns how many databases knew the table.
    pub async fn flush_table(&self, table: &str) -> usize {
        let mut flushed = 0;
        for db in self.databases() {
            if let Some((_, t)) = db
                .generations
                .tables()
                .into_iter()
                .find(|(name, _)| &**name == table)
            {
                let line = format!("table {table}");
                db.marker()
                    .tell(self, vec![Marked::TableEpoch(t)], &line)
                    .await;
                flushed += 1;
            }
        }
        flushed
    }
}

/// How often the store's size is copied into the metrics.
const USAGE_INTERVAL: Duration = Duration::from_secs(1);

/// Copies the store's usage (entries, bytes, evictions, expirations) into the metrics every
/// [`USAGE_INTERVAL`], until the cache is dropped. The store counts these itself; gauges cannot be
/// computed at scrape time with the metrics crate.
pub async fn report_usage(cache: Weak<Cache>) {
    let mut tick = tokio::time::interval(USAGE_INTERVAL);
    loop {
        tick.tick().await;
        let Some(cache) = cache.upgrade() else {
            return;
        };
        let usage = cache.store.usage().await;
        cache.meters.entries.set(usage.entries as f64);
        cache.meters.bytes.set(usage.bytes as f64);
        cache.meters.max_bytes.set(usage.max_bytes as f64);
        cache.meters.evictions.absolute(usage.evictions);
        cache.meters.expirations.absolute(usage.expirations);
        tier_view::report(&cache);
    }
}

/// Keeps one database's catalog snapshot current while the database is wanted: read at once, then
/// every `catalog_refresh`, and straight after DDL through the proxy. Once the database is released
/// (no client for the idle time) the snapshot is dropped, since nothing follows its DDL then. Ends
/// when the cache stops or is dropped.
async fn keep_catalog(cache: Weak<Cache>, db: Arc<Database>) {
    loop {
        db.set_catalog_state(CatalogState::Idle);
        db.demand.wanted().await;
        let Some(strong) = cache.upgrade() else {
            return;
        };
        let idle = strong.config.replication_idle_timeout;
        tokio::select! {
            () = refresh_catalog(&cache, &db) => return,
            never = privileges::watch(&strong, db.watched()) => match never {},
            () = db.demand.released(idle) => {
                db.catalog_changed();
                db.privileges.reset();
            }
        }
    }
}

/// Reads the catalog again and again; returns when the cache is dropped.
async fn refresh_catalog(cache: &Weak<Cache>, db: &Database) {
    let mut failing = false;
    loop {
        let Some(cache) = cache.upgrade() else {
            return;
        };
        let version = db.version();
        if !db.has_catalog() {
            db.set_catalog_state(CatalogState::Reading);
        }
        let load = Catalog::load(&cache.service, cache.service_tls.as_ref(), &db.name);
        let loaded = tokio::time::timeout(CATALOG_TIMEOUT, load)
            .await
            .unwrap_or_else(|_| Err(crate::Error::catalog_timeout(&db.name, CATALOG_TIMEOUT)));
        let wait = match loaded {
            Ok(catalog) => {
                cache.learn_server(&catalog);
                if failing {
                    tracing::info!(database = %db.name, "catalog read again: caching resumes");
                }
                failing = false;
                if db.install_catalog(catalog, version) {
                    cache.config.catalog_refresh
                } else {
                    // DDL arrived while reading: read again once it has settled.
                    DDL_SETTLE
                }
            }
            Err(e) => {
                db.set_catalog_state(CatalogState::Failing(e.to_string()));
                if !failing {
                    tracing::warn!(database = %db.name, error = %e,
                        "cannot read the catalog: reads of this database are forwarded uncached until it can");
                }
                failing = true;
                cache.config.catalog_refresh.min(CATALOG_RETRY)
            }
        };
        drop(cache);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = db.reread.notified() => settle(db).await,
        }
    }
}

/// Returns once no DDL has been reported for [`DDL_SETTLE`]. A burst of DDL (a migration, a test
/// suite's set-up) would otherwise have the catalog read after every statement, each read taking its
/// turn on the runtime with the sessions; reads are forwarded meanwhile either way.
async fn settle(db: &Database) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(DDL_SETTLE) => return,
            _ = db.reread.notified() => {}
        }
    }
}
