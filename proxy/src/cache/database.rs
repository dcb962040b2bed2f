//! Everything the cache keeps per database: its generations, its catalog snapshot, and the memo of
//! plans by query shape, so a shape is parsed once and a hit only looks its plan up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use veneer_config::{CacheConfig, Replication, RuleTarget, Ttl};
use veneer_invalidation::test_decoding::TableKeys;
use veneer_invalidation::{Dependencies, Generations, Marked, TableGeneration};

use super::catalog::{Catalog, Function, Relation, RowKeys};
use super::classify::{self, Analysis, Equality, Name, RowWrite};
use super::demand::Demand;
use super::digest::{self, Digest, Hint, Shape};
use super::fence::Fence;
use super::marks::{Marker, Marks};
use super::point::Point;
use super::Digests;
use crate::metrics::{DatabaseUse, StreamMeters, TableUse};
use crate::passthrough::Reason;

/// Plans memoized per database, by query shape; past this many the memo starts over.
const MEMO_CAPACITY: usize = 10_000;

/// What to do with one statement text.
#[derive(Debug)]
pub struct Plan {
    /// The catalog version the plan was made with: a plan from an older catalog is made again.
    version: u64,
    /// The decision.
    pub action: Action,
}

/// The decision of a plan.
#[derive(Debug)]
pub enum Action {
    /// A cacheable read.
    Cache {
        /// The generations its results depend on.
        dependencies: Dependencies,
        /// Where its key comes from, when it is a point lookup (`dependencies.point` is set).
        point: Option<Point>,
        /// How long a stored result lives.
        ttl: Duration,
        /// Statistics of its query shape.
        digest: Arc<Digest>,
        /// The hit and miss counters of the tables it reads.
        used: Box<[Arc<TableUse>]>,
    },
    /// Forwarded uncached.
    Forward {
        /// Why, as a metrics label.
        reason: Reason,
        /// What to invalidate when its transaction ends, if it may write.
        bump: Option<Bump>,
        /// It may also change what `bump` does not name (triggers, rules, functions that write),
        /// which only the replication stream reports: the session stays off the cache from its
        /// commit until the stream has applied it (see [`super::fence`]).
        fence: bool,
        /// Whether it may change the catalog (DDL): the snapshot is reread.
        ddl: bool,
        /// The database a DROP DATABASE drops: its replication stream must be off while it runs.
        drops_database: Option<String>,
    },
}

/// What a write invalidates.
#[derive(Debug, Clone)]
pub enum Bump {
    /// These tables as a whole (every query reading them misses afterwards, point lookups included).
    Tables(Vec<Arc<TableGeneration>>),
    /// The rows of this table with the key `point` reads from the request (in a plan: each
    /// request's key is read when it is sent; one whose key cannot be read bumps the whole table).
    Row(Arc<TableGeneration>, Arc<Point>),
    /// The rows of this table whose key hashes to this bucket (a `Row` bump with its key read).
    Key(Arc<TableGeneration>, usize),
    /// Every cached result of the database.
    Global,
}

impl Plan {
    /// Whether the plan was made with `db`'s current catalog. A plan kept past a catalog change (a
    /// prepared statement's, made at its Parse) is made again: made before the catalog was read it
    /// treats every write as touching everything, and made before DDL it may miss a trigger's
    /// effects.
    pub fn is_current(&self, db: &Database) -> bool {
        self.version == db.version()
    }

    /// The point lookup the plan's statement reads, or the row key its write pins.
    pub fn point(&self) -> Option<&Point> {
        match &self.action {
            Action::Cache { point, .. } => point.as_ref(),
            Action::Forward {
                bump: Some(Bump::Row(_, point)),
                ..
            } => Some(point),
            Action::Forward { .. } => None,
        }
    }
}

/// What a database's replication listener is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listener {
    /// Not running: no client has used the database for the idle time (or none yet).
    Idle,
    /// Wanted, but as many listeners as `replication_listeners` allows run for other databases.
    AtCap(usize),
    /// Connecting and setting up its slot.
    Starting,
    /// Applying the database's commits.
    Streaming,
    /// Failed; retried with backoff.
    Down {
        /// The cause, for the status: what ended the stream, then (if another) what the last retry
        /// met.
        why: String,
        /// When the stream was lost (the first failure of the outage).
        since: std::time::SystemTime,
        /// When the next attempt starts.
        retry_at: tokio::time::Instant,
    },
    /// Kept off while a DROP DATABASE of this database runs.
    Held,
}

impl Listener {
    /// Whether a replication connection may be open (and hold a slot) in this state.
    fn connected(&self) -> bool {
        matches!(self, Listener::Starting | Listener::Streaming)
    }
}

/// What a database's catalog reader is doing, for the status while no snapshot is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogState {
    /// Not running: no client has used the database for the idle time (or none yet).
    Idle,
    /// Reading (again, after DDL).
    Reading,
    /// The last read failed, with this error; retried.
    Failing(String),
}

/// A session's use of a database, which keeps the database's background work running; ends with the
/// session.
pub struct Attached(Arc<Database>);

impl std::ops::Deref for Attached {
    type Target = Arc<Database>;

    fn deref(&self) -> &Arc<Database> {
        &self.0
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.0.demand.detach();
    }
}

/// One database as the cache sees it.
pub struct Database {
    /// Its name, from the clients' startup messages.
    pub name: String,
    /// What its cached results depend on.
    pub generations: Generations,
    catalog: RwLock<Option<Arc<Catalog>>>,
    version: AtomicU64,
    memo: RwLock<HashMap<Bytes, Arc<Plan>, foldhash::fast::RandomState>>,
    /// Wakes the catalog reader early (after DDL through the proxy).
    pub(super) reread: Notify,
    /// Mirrors `listener == Streaming`, as one atomic load for every lookup.
    streaming: AtomicBool,
    /// What the replication listener is doing, for the status and for holds waiting on it.
    listener: watch::Sender<Listener>,
    /// Who needs the database's background work.
    pub demand: Demand,
    /// What its replication stream has applied.
    pub stream: StreamMeters,
    /// Its hits and misses, and its tables'.
    pub usage: DatabaseUse,
    /// Where its stream stands, for sessions waiting to read their writes' full effects.
    pub fence: Fence,
    /// Private marks waiting for the stream to report their changes.
    pub marks: Marks,
    /// Its results are stored in a tier other proxies share: marks are cleared once the stream
    /// reports their changes, so stamps become the fleet's again.
    shared: bool,
    /// The `applied` of the newest generations snapshot in the shared tier that covers what this
    /// proxy knows (its own, or one with its floor); 0 while none.
    fleet_covered: AtomicU64,
    /// The server went back in time under this proxy (see [`Database::restart`]).
    diverged: AtomicBool,
    /// Since it did, the shared tier's namespace has yet to be cleared.
    lost_history: AtomicBool,
    /// Who may read what, and the roles' settings.
    pub privileges: super::privileges::Privileges,
    /// What the catalog reader is doing.
    catalog_state: std::sync::Mutex<CatalogState>,
    /// The server's timeline when a permanent slot's stream last started (0: not yet).
    pub(super) timeline: std::sync::atomic::AtomicU32,
    /// The tables the followed publication covers, when it does not cover all tables.
    published: std::sync::Mutex<Option<std::collections::HashSet<String>>>,
    /// Tables outside `published` whose changes the stream has reported.
    streamed_outside: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Database {
    /// A database the cache has not seen before: no catalog yet, so nothing is cached until one is
    /// installed. `shared`: its results go to a tier other proxies may share.
    pub fn new(name: String, shared: bool) -> Database {
        Database {
            stream: StreamMeters::new(&name),
            usage: DatabaseUse::new(&name),
            name,
            generations: Generations::default(),
            catalog: RwLock::new(None),
            version: AtomicU64::new(0),
            memo: RwLock::new(HashMap::default()),
            reread: Notify::new(),
            streaming: AtomicBool::new(false),
            listener: watch::channel(Listener::Idle).0,
            demand: Demand::default(),
            fence: Fence::default(),
            marks: Marks::default(),
            shared,
            fleet_covered: AtomicU64::new(0),
            diverged: AtomicBool::new(false),
            lost_history: AtomicBool::new(false),
            privileges: Default::default(),
            timeline: std::sync::atomic::AtomicU32::new(0),
            catalog_state: std::sync::Mutex::new(CatalogState::Idle),
            published: std::sync::Mutex::new(None),
            streamed_outside: Default::default(),
        }
    }

    /// The catalog version: changes with every snapshot installed or dropped.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Installs a catalog read since version `seen`, unless DDL dropped the snapshot meanwhile (the
    /// read may predate the DDL); plans made with an older snapshot are made again on next use.
    pub fn install_catalog(&self, catalog: Catalog, seen: u64) -> bool {
        let mut slot = self.catalog.write().expect("not poisoned");
        if self.version.load(Ordering::Acquire) != seen {
            return false;
        }
        *slot = Some(Arc::new(catalog));
        self.version.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Whether the replication stream is applying this database's commits now.
    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::Acquire)
    }

    /// What the replication listener is doing now.
    pub fn listener(&self) -> Listener {
        self.listener.borrow().clone()
    }

    /// Records what the replication listener is doing (and so whether the database is streaming).
    pub(super) fn set_listener(&self, state: Listener) {
        self.streaming
            .store(state == Listener::Streaming, Ordering::Release);
        self.stream.down(matches!(state, Listener::Down { .. }));
        self.listener.send_replace(state);
    }

    /// Returns once no replication connection of this database is open (its slot is released).
    pub(super) async fn listener_closed(&self) {
        let mut rx = self.listener.subscribe();
        let _ = rx.wait_for(|l| !l.connected()).await;
    }

    /// A session starts using the database: its background work runs while any session does.
    pub fn attach(self: &Arc<Self>) -> Attached {
        self.demand.attach();
        Attached(Arc::clone(self))
    }

    /// The database as the privilege checks see it.
    pub fn watched(&self) -> super::privileges::Watched<'_> {
        super::privileges::Watched {
            name: &self.name,
            generations: &self.generations,
            privileges: &self.privileges,
            marker: self.marker(),
        }
    }

    /// The database may no longer be the one cached results came from (it was dropped, perhaps
    /// re-created): every result becomes this proxy's own until its stream starts afresh, and the
    /// catalog is read again.
    pub(super) fn reset(&self) {
        self.mark(vec![Marked::Global]);
        self.catalog_changed();
    }

    /// Its stream starts afresh at WAL position `start`: what happened before is unknown (it counts
    /// as changed at `start`), and the catalog is read again.
    pub(super) fn restart(&self, start: u64) {
        if start < self.fence.applied_lsn() {
            // The server's WAL ends before what was applied: it went back in time (a restored
            // snapshot). Its positions will be handed out again, so a shared stamp could meet
            // results of the lost history: from now on this proxy's stamps are its own, for good
            // (a mark nothing clears), and it neither publishes nor takes generations snapshots.
            self.generations.mark(&[Marked::Global]);
            self.diverged.store(true, Ordering::Release);
            self.lost_history.store(true, Ordering::Release);
        }
        self.generations.restart(start);
        self.marks.settle(&self.generations, &self.fence);
        self.catalog_changed();
    }

    /// A change the stream has yet to report touched `targets` (see [`Marks`]).
    pub fn mark(&self, targets: Vec<Marked>) {
        self.marker().mark(targets);
    }

    /// What marking its generations takes.
    pub fn marker(&self) -> Marker<'_> {
        Marker {
            database: &self.name,
            generations: &self.generations,
            fence: &self.fence,
            marks: &self.marks,
            shared: self.shared,
            streams_every_table: self.published.lock().expect("not poisoned").is_none(),
        }
    }

    /// A generations snapshot covering what this proxy knows up to `applied` is in the tier.
    pub(super) fn set_fleet_covered(&self, applied: u64) {
        self.fleet_covered.fetch_max(applied, Ordering::AcqRel);
    }

    /// See [`Database::set_fleet_covered`].
    pub fn fleet_covered(&self) -> u64 {
        self.fleet_covered.load(Ordering::Acquire)
    }

    /// Whether the server went back in time under this proxy: its stamps are its own for good.
    pub(super) fn diverged(&self) -> bool {
        self.diverged.load(Ordering::Acquire)
    }

    /// Whether the server went back in time since the last call: what a shared tier holds may come
    /// from a history the server no longer has.
    pub(super) fn take_lost_history(&self) -> bool {
        self.lost_history.swap(false, Ordering::AcqRel)
    }

    /// Whether its results go to a tier other proxies may share.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Records which tables the publication covers (`None`: all of them).
    pub(super) fn set_published(&self, tables: Option<Vec<String>>) {
        self.streamed_outside.lock().expect("not poisoned").clear();
        *self.published.lock().expect("not poisoned") = tables.map(|t| t.into_iter().collect());
    }

    /// Whether `table`'s changes arrive for the first time although the publication did not cover
    /// it at the stream's start (it was added since, or a row filter or column list lets some of
    /// its changes through). Always false under a publication FOR ALL TABLES.
    pub(super) fn newly_published(&self, table: &str) -> bool {
        let published = self.published.lock().expect("not poisoned");
        match published.as_ref() {
            Some(tables) if !tables.contains(table) => self
                .streamed_outside
                .lock()
                .expect("not poisoned")
                .insert(table.to_owned()),
            _ => false,
        }
    }

    /// Tables the cache has seen that the publication does not cover: writes to them made outside
    /// the proxy are not streamed, so their results are fresh only up to their TTL.
    pub fn outside_publication(&self) -> Vec<String> {
        let published = self.published.lock().expect("not poisoned");
        let Some(published) = published.as_ref() else {
            return Vec::new();
        };
        let mut outside: Vec<String> = self
            .generations
            .tables()
            .into_iter()
            .map(|(name, _)| name.to_string())
            .filter(|name| !published.contains(name))
            .collect();
        outside.sort();
        outside
    }

    /// How the rows of table `name` are keyed in the catalog snapshot (unknown while none is
    /// installed), for the replication stream to read the keys of changed rows.
    pub fn table_keys(&self, name: &str) -> TableKeys {
        match self.catalog.read().expect("not poisoned").as_deref() {
            Some(catalog) => catalog.table_keys(name),
            None => TableKeys::Unknown,
        }
    }

    /// What the catalog reader is doing.
    pub fn catalog_state(&self) -> CatalogState {
        self.catalog_state.lock().expect("not poisoned").clone()
    }

    /// Records what the catalog reader is doing.
    pub(super) fn set_catalog_state(&self, state: CatalogState) {
        *self.catalog_state.lock().expect("not poisoned") = state;
    }

    /// Whether a catalog snapshot is installed.
    pub fn has_catalog(&self) -> bool {
        self.catalog.read().expect("not poisoned").is_some()
    }

    /// DDL passed through the proxy: the snapshot may be wrong, so reads are forwarded until it has
    /// been read again.
    pub fn catalog_changed(&self) {
        *self.catalog.write().expect("not poisoned") = None;
        self.version.fetch_add(1, Ordering::AcqRel);
        self.reread.notify_one();
        // DDL may be a GRANT, a REVOKE, a policy, an owner changed.
        self.privileges.wake();
    }

    /// The plan of statement text `sql`, from the memo (by shape, computed into the caller's reused
    /// `shape` buffer, which then holds where the text's literals are) or made now.
    pub fn plan(
        &self,
        sql: &[u8],
        shape: &mut Shape,
        config: &CacheConfig,
        digests: &Digests,
    ) -> Arc<Plan> {
        shape.of(sql);
        let version = self.version.load(Ordering::Acquire);
        if let Some(plan) = self.memo.read().expect("not poisoned").get(&shape.text[..]) {
            if plan.version == version {
                return Arc::clone(plan);
            }
        }
        let catalog = self.catalog.read().expect("not poisoned").clone();
        let action = match (std::str::from_utf8(sql), std::str::from_utf8(&shape.text)) {
            (Ok(text), Ok(normal)) => {
                let literals = &shape.literals;
                self.decide(text, normal, literals, catalog.as_deref(), config, digests)
            }
            _ => Action::Forward {
                reason: Reason::NotUtf8,
                bump: Some(Bump::Global),
                fence: false,
                ddl: false,
                drops_database: None,
            },
        };
        let plan = Arc::new(Plan { version, action });
        let mut memo = self.memo.write().expect("not poisoned");
        if memo.len() >= MEMO_CAPACITY {
            // Shapes are few in practice; an application that makes more starts the memo over.
            memo.clear();
        }
        memo.insert(Bytes::copy_from_slice(&shape.text), Arc::clone(&plan));
        plan
    }

    fn decide(
        &self,
        sql: &str,
        shape: &str,
        literals: &[std::ops::Range<usize>],
        catalog: Option<&Catalog>,
        config: &CacheConfig,
        digests: &Digests,
    ) -> Action {
        let forward = |reason, bump, ddl| Action::Forward {
            reason,
            bump,
            fence: false,
            ddl,
            drops_database: None,
        };
        // Whether effects the proxy cannot name reach the cache through the stream (the writer
        // fenced until then); if not, a write that may have such effects invalidates everything.
        let followed = config.replication != Replication::Off;
        match classify::analyze(sql) {
            Analysis::Write {
                relations,
                functions,
                rows,
            } => {
                // Updatable views carry the write to tables it does not name; without a catalog the
                // proxy cannot tell.
                let Some(c) = catalog.filter(|c| {
                    relations.iter().all(|r| {
                        matches!(c.relation(r), Some(Relation::Table | Relation::Unlogged))
                    })
                }) else {
                    return forward(Reason::Write, Some(Bump::Global), false);
                };
                let reach = c.reach(&relations);
                let unseen = reach.unseen
                    || functions
                        .iter()
                        .any(|f| c.function(f) == Function::Unsafe { may_write: true });
                if unseen && !followed {
                    return forward(Reason::Write, Some(Bump::Global), false);
                }
                let rows = rows.as_ref().filter(|_| config.row_keys && !reach.cascades);
                let bump = match row_write(&relations, rows, c, literals) {
                    Some(point) => {
                        Bump::Row(self.generations.table(point.table()), Arc::new(point))
                    }
                    None => Bump::Tables(
                        reach
                            .tables
                            .iter()
                            .map(|t| self.generations.table(t))
                            .collect(),
                    ),
                };
                Action::Forward {
                    reason: Reason::Write,
                    bump: Some(bump),
                    fence: unseen,
                    ddl: false,
                    drops_database: None,
                }
            }
            Analysis::Other {
                reason,
                may_write,
                ddl,
            } => Action::Forward {
                reason,
                bump: may_write.then_some(Bump::Global),
                fence: false,
                ddl,
                drops_database: ddl.then(|| classify::dropped_database(sql)).flatten(),
            },
            Analysis::Read {
                relations,
                functions,
                equalities,
            } => {
                let Some(catalog) = catalog else {
                    return forward(Reason::CatalogUnavailable, None, false);
                };
                for f in &functions {
                    match catalog.function(f) {
                        Function::Safe => {}
                        // What it writes shows in the stream.
                        Function::Unsafe { may_write: true } if followed => {
                            return Action::Forward {
                                reason: Reason::VolatileFunction,
                                bump: None,
                                fence: true,
                                ddl: false,
                                drops_database: None,
                            }
                        }
                        Function::Unsafe { may_write } => {
                            return forward(
                                Reason::VolatileFunction,
                                may_write.then_some(Bump::Global),
                                false,
                            )
                        }
                    }
                }
                match self.ttl(shape, &relations, catalog, config) {
                    Ok(ttl) => {
                        let point = point(&relations, &equalities, catalog, literals)
                            .filter(|_| config.row_keys);
                        let dependencies = match &point {
                            Some(p) => Dependencies {
                                tables: Vec::new(),
                                point: Some(self.generations.read_table(p.table())),
                            },
                            None => Dependencies {
                                tables: self.tables(&relations, catalog),
                                point: None,
                            },
                        };
                        let used = match &point {
                            Some(p) => Box::new([self.usage.table(p.table())]) as Box<[_]>,
                            None => relations
                                .iter()
                                .map(|r| self.usage.table(&r.name))
                                .collect(),
                        };
                        Action::Cache {
                            dependencies,
                            point,
                            ttl,
                            digest: digests.get(shape.to_owned()),
                            used,
                        }
                    }
                    Err(reason) => forward(reason, None, false),
                }
            }
        }
    }

    /// How long results of a read live: its hint, else the first matching query rule, else the
    /// shortest TTL of its tables' rules, else the default. System catalogs need a rule or hint.
    fn ttl(
        &self,
        shape: &str,
        relations: &std::collections::BTreeSet<Name>,
        catalog: &Catalog,
        config: &CacheConfig,
    ) -> Result<Duration, Reason> {
        let chosen = match digest::hint(shape) {
            Some(Hint::NoCache) => return Err(Reason::RuleOrHint),
            Some(Hint::Ttl(d)) => Some(d),
            None => match query_rule(config, shape) {
                Some(Ttl::Never) => return Err(Reason::RuleOrHint),
                Some(Ttl::For(d)) => Some(d),
                None => None,
            },
        };
        let mut ttl = chosen.unwrap_or(config.default_ttl);
        for r in relations {
            let rule = table_rule(config, &r.name);
            match catalog.relation(r) {
                Some(Relation::Table) => {}
                Some(Relation::System | Relation::Unlogged)
                    if chosen.is_some() || rule.is_some() => {}
                Some(Relation::System) => return Err(Reason::SystemCatalog),
                Some(Relation::Unlogged) => return Err(Reason::UnloggedTable),
                Some(Relation::Other) | None => return Err(Reason::NotAPlainTable),
            }
            match rule {
                Some(Ttl::Never) if chosen.is_none() => return Err(Reason::RuleOrHint),
                Some(Ttl::For(d)) if chosen.is_none() => ttl = ttl.min(d),
                _ => {}
            }
        }
        Ok(ttl)
    }

    /// The generations of `relations` and of the rest of their partitioning or inheritance trees.
    fn tables(
        &self,
        relations: &std::collections::BTreeSet<Name>,
        catalog: &Catalog,
    ) -> Vec<Arc<TableGeneration>> {
        let mut names: Vec<&str> = relations
            .iter()
            .flat_map(|r| catalog.family(r).iter().map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .map(|name| self.generations.read_table(name))
            .collect()
    }
}

/// The point lookup a read is, if it reads one plain table outside any inheritance tree and pins one
/// of its row keys.
fn point(
    relations: &std::collections::BTreeSet<Name>,
    equalities: &[Equality],
    catalog: &Catalog,
    literals: &[std::ops::Range<usize>],
) -> Option<Point> {
    let table = lone_table(relations, catalog)?;
    Point::plan(&table.name, equalities, catalog.row_keys(table)?, literals)
}

/// The row key a write pins, if it writes one plain table outside any inheritance tree, whose rows
/// are keyed by their identity columns together, and pins the key without assigning it: the write
/// then changes only rows of that key. (Under REPLICA IDENTITY FULL any column keys lookups, and a
/// write changes columns whose old values it does not name.)
fn row_write(
    relations: &std::collections::BTreeSet<Name>,
    rows: Option<&RowWrite>,
    catalog: &Catalog,
    literals: &[std::ops::Range<usize>],
) -> Option<Point> {
    let table = lone_table(relations, catalog)?;
    let keys @ RowKeys::Together(columns) = catalog.row_keys(table)? else {
        return None;
    };
    let rows = rows?;
    if columns.iter().any(|(c, _)| rows.assigned.contains(c)) {
        return None;
    }
    Point::plan(&table.name, &rows.equalities, keys, literals)
}

/// The one plain table outside any inheritance tree `relations` names, if that is what they are.
fn lone_table<'a>(
    relations: &'a std::collections::BTreeSet<Name>,
    catalog: &Catalog,
) -> Option<&'a Name> {
    let [table] = relations.iter().collect::<Vec<_>>()[..] else {
        return None;
    };
    (catalog.relation(table) == Some(Relation::Table) && catalog.family(table).len() == 1)
        .then_some(table)
}

fn query_rule(config: &CacheConfig, normalized: &str) -> Option<Ttl> {
    config.rules.iter().find_map(|rule| match &rule.target {
        RuleTarget::Query(pattern) if digest::glob_matches(pattern, normalized) => Some(rule.ttl),
        _ => None,
    })
}

fn table_rule(config: &CacheConfig, table: &str) -> Option<Ttl> {
    config.rules.iter().find_map(|rule| match &rule.target {
        RuleTarget::Table(name) if name.rsplit('.').next() == Some(table) => Some(rule.ttl),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use veneer_config::{Config, Settings};

    use super::*;
    use crate::cache::catalog::KeyColumn;

    /// The plan of `sql` over a table `t` keyed by `id`, with row keys on or off.
    fn plan(sql: &str, row_keys: bool) -> Arc<Plan> {
        let settings = Settings {
            cache_row_keys: Some(row_keys),
            ..Settings::default()
        };
        plan_with(
            &Database::new("db".to_owned(), false),
            sql,
            settings,
            |_| {},
        )
    }

    /// The plan of `sql` with `settings`, over a table `t` keyed by `id` and whatever `more` adds to
    /// the catalog.
    fn plan_with(
        db: &Database,
        sql: &str,
        settings: Settings,
        more: impl FnOnce(&mut Catalog),
    ) -> Arc<Plan> {
        let config = Config::resolve(settings).expect("valid").cache.expect("on");
        let mut catalog = Catalog::default();
        catalog.add_relation("t".to_owned(), "public", "r", "p");
        more(&mut catalog);
        let id = KeyColumn {
            name: "id".to_owned(),
            type_oid: 23,
            usable: true,
            key: true,
        };
        catalog.add_keys("t".to_owned(), "d", &[id]);
        db.install_catalog(catalog, db.version());
        db.plan(
            sql.as_bytes(),
            &mut Shape::default(),
            &config,
            &Digests::default(),
        )
    }

    #[test]
    fn row_keys_can_be_turned_off() {
        let read = "SELECT v FROM t WHERE id = 1";
        let write = "UPDATE t SET v = 2 WHERE id = 1";
        assert!(plan(read, true).point().is_some());
        assert!(plan(write, true).point().is_some());
        assert!(plan(read, false).point().is_none());
        assert!(plan(write, false).point().is_none());
        assert!(plan("SELECT v FROM t WHERE id > 1", true).point().is_none());
    }

    /// The tables a plan's write bumps in `db`, and whether it fences the session; `None` for the
    /// whole database.
    fn bumped(db: &Database, plan: &Plan) -> Option<(Vec<String>, bool)> {
        let tables = db.generations.tables();
        let name = |t: &Arc<TableGeneration>| {
            let (name, _) = tables
                .iter()
                .find(|(_, g)| Arc::ptr_eq(g, t))
                .expect("known");
            name.to_string()
        };
        let Action::Forward {
            bump: Some(bump),
            fence,
            ..
        } = &plan.action
        else {
            panic!("not a write: {plan:?}")
        };
        let tables = match bump {
            Bump::Tables(tables) => tables.iter().map(name).collect(),
            Bump::Row(table, _) | Bump::Key(table, _) => vec![name(table)],
            Bump::Global => return None,
        };
        Some((tables, *fence))
    }

    #[test]
    fn writes_reach_cascades_and_fence_what_triggers_may_do() {
        let schema = |c: &mut Catalog| {
            for t in ["child", "grandchild", "audited"] {
                c.add_relation(t.to_owned(), "public", "r", "p");
            }
            c.cascade("t".to_owned(), "child".to_owned());
            c.cascade("child".to_owned(), "grandchild".to_owned());
            c.add_opaque("audited".to_owned());
        };
        let write = |sql, replication| {
            let settings = Settings {
                replication: Some(replication),
                ..Settings::default()
            };
            let db = Database::new("db".to_owned(), false);
            bumped(&db, &plan_with(&db, sql, settings, schema))
        };
        let followed = Replication::Required;
        assert_eq!(
            write("DELETE FROM t WHERE id = 1", followed),
            Some((vec!["child".into(), "grandchild".into(), "t".into()], false)),
            "cascades are bumped at once, and the row key gives way to the tables"
        );
        assert_eq!(
            write("UPDATE child SET v = 1", followed),
            Some((vec!["child".into(), "grandchild".into()], false))
        );
        assert_eq!(
            write("UPDATE audited SET v = 1", followed),
            Some((vec!["audited".into()], true)),
            "what a trigger does comes through the stream, the writer fenced until then"
        );
        assert_eq!(
            write("UPDATE audited SET v = 1", Replication::Off),
            None,
            "with no stream, a trigger's reach is the whole database"
        );
    }
}
