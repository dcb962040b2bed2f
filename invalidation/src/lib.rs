//! Generations: the invalidation core of Veneer (see ARCHITECTURE.md, "Generations").
//!
//! A cached result is stored under a *stamp* read from the generations it depends on **before** its
//! query went upstream; a change moves a generation, so every later read computes another stamp and
//! older entries become unreachable at once, whatever tier holds them. A fill that raced a write is
//! stored under the old stamp and never read. Invalidation is O(1) and needs no scan of the cache.
//!
//! A generation has two parts ([`Stamp`]):
//!
//! - **shared**: the WAL position (commit end) of the last change to it the replication stream
//!   applied, and never less than the *floor*, the position from which this proxy knows every
//!   change. Every proxy that applied the same stream and shares the floor computes the same values,
//!   so proxies sharing a tier share keys.
//! - **private**: a *mark* from a clock of this process, set by a change the proxy knows of before
//!   its stream reports it (a write through it, an operator's flush, a privilege change its checks
//!   found), and cleared once the stream has applied a WAL position past that change. A stamp with
//!   a private part is encoded with this process's origin, so no other proxy can compute it.
//!
//! The invariant, and why it holds (ARCHITECTURE.md, "Stamps across a fleet"): *an entry found under
//! a shared stamp `S` was filled by a query that saw every commit at or before `S`, and a proxy
//! computes `S` only when every change it knows to what the request depends on is at or before `S`.*
//! A filler computes `S` from commits it applied (committed, so visible to its later query) or from
//! its floor (everything before it had committed when its stream started). A reader's `S` is the
//! maximum of its floor and the last changes it applied to each dependency; it knows every change
//! from its floor on, and changes before its floor are at or before `S`. So whoever computes `S`
//! may serve what anyone stored under `S`. A private stamp is only ever computed by one process,
//! whose marks come from a monotonic clock and whose era changes whenever its shared values may go
//! back (see [`Generations::adopt`]), so it is never computed twice for different contents.

pub mod commit;
pub mod conn;
pub mod pgoutput;
pub mod replication;
pub mod rows;
pub mod snapshot;
pub mod test_decoding;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The two parts of a generation, or of a stamp (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    /// A WAL position every proxy that applied the same stream computes alike.
    pub shared: u64,
    /// A mark of this process; 0 when none.
    pub private: u64,
}

impl Stamp {
    /// The stamp of a result depending on both: each part's maximum.
    pub fn max(self, other: Stamp) -> Stamp {
        Stamp {
            shared: self.shared.max(other.shared),
            private: self.private.max(other.private),
        }
    }
}

/// One generation: a shared WAL position and a private mark.
#[derive(Debug, Default)]
pub struct Generation {
    shared: AtomicU64,
    private: AtomicU64,
}

impl Generation {
    /// Its value now.
    pub fn get(&self) -> Stamp {
        Stamp {
            shared: self.shared.load(Ordering::Acquire),
            private: self.private.load(Ordering::Acquire),
        }
    }

    /// The stream applied a change to it that ends at WAL position `lsn`.
    fn bump(&self, lsn: u64) {
        self.shared.fetch_max(lsn, Ordering::AcqRel);
    }

    /// A change the stream has yet to report: `mark` (from the private clock) until it has.
    fn mark(&self, mark: u64) {
        self.private.fetch_max(mark, Ordering::AcqRel);
    }

    /// The stream has reported the change marked `mark`: clears the mark unless a later one came.
    fn unmark(&self, mark: u64) {
        let _ = self
            .private
            .compare_exchange(mark, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The generations of one table.
#[derive(Debug, Default)]
pub struct TableGeneration {
    /// When a cacheable read first depended on the table ([`Generations::read_table`]), in that
    /// order, from 1; 0 until then. What a check that covered every table read so far can be
    /// compared with.
    seq: AtomicU64,
    /// Moved by every change to the table; what queries that read the table as a whole depend on.
    any: Generation,
    /// Moved only by whole-table events (TRUNCATE, schema change, flush); what every query of the
    /// table depends on, point lookups included.
    epoch: Generation,
}

impl TableGeneration {
    /// The value a query reading the whole table depends on.
    pub fn any(&self) -> Stamp {
        self.any.get()
    }

    /// The value every query of the table depends on, point lookups included.
    pub fn epoch(&self) -> Stamp {
        self.epoch.get()
    }

    /// Its place in the order tables were first read (from 1; 0: never read).
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }
}

/// What one role may read and how names resolve for it, as a generation: moved when its privileges,
/// memberships or the row-level security that applies to it change, so that its sessions miss
/// every result cached before while other roles keep theirs.
#[derive(Debug, Default)]
pub struct RoleGeneration(Generation);

impl RoleGeneration {
    /// The value every result a session of the role reads depends on.
    pub fn get(&self) -> Stamp {
        self.0.get()
    }
}

/// Where a bump came from, for the invalidation metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A write that passed through the proxy, applied when it committed.
    WriteThrough,
    /// The replication listener, at a Commit.
    Replication,
    /// An administrator's flush.
    Admin,
}

/// What a private mark was set on, to clear it once the stream has reported the change.
#[derive(Debug, Clone)]
pub enum Marked {
    /// Queries reading the table as a whole.
    Table(Arc<TableGeneration>),
    /// Every query of the table.
    TableEpoch(Arc<TableGeneration>),
    /// Point lookups of keys in the bucket.
    Row(usize),
    /// Every result of the database.
    Global,
    /// Every result read by the role's sessions (and by sessions that switched roles).
    Role(Arc<RoleGeneration>),
}

/// The generations of one database: per table, per row-key bucket (see [`rows`]), per role, and
/// global, with the floor and the private clock.
#[derive(Debug)]
pub struct Generations {
    /// Every change before this WAL position counts as made at it (see the module documentation).
    floor: AtomicU64,
    global: Generation,
    tables: RwLock<HashMap<Arc<str>, Arc<TableGeneration>>>,
    rows: Box<[Generation]>,
    roles: RwLock<HashMap<Arc<str>, Arc<RoleGeneration>>>,
    /// Moved with every role's: what sessions that switched roles (`SET ROLE`) depend on.
    any_role: Generation,
    /// Tables read so far (see [`TableGeneration::seq`]).
    read_tables: AtomicU64,
    /// The private marks handed out so far.
    clock: AtomicU64,
    /// Random per process: what makes private stamps this process's own.
    origin: u64,
    /// Moved whenever shared values may go back (the floor raised after a gap, or lowered when
    /// joining the fleet's): part of every private stamp.
    era: AtomicU64,
    /// Times the floor was raised because the stream started afresh.
    restarts: AtomicU64,
}

impl Default for Generations {
    fn default() -> Self {
        Generations {
            floor: AtomicU64::new(0),
            global: Generation::default(),
            tables: RwLock::default(),
            rows: (0..rows::ROW_BUCKETS)
                .map(|_| Generation::default())
                .collect(),
            roles: RwLock::default(),
            any_role: Generation::default(),
            read_tables: AtomicU64::new(0),
            clock: AtomicU64::new(0),
            origin: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
            era: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
        }
    }
}

impl Generations {
    /// The generations of table `name`, created on first use. Callers keep the `Arc` (for instance in
    /// a memoized query plan) so that reading a stamp costs a few atomic loads and no lookup.
    ///
    /// Tables are named by their relation name without schema: a write to `a.t` then also invalidates
    /// reads of `b.t`, which costs a miss but can never leave a result stale, whatever the search_path.
    pub fn table(&self, name: &str) -> Arc<TableGeneration> {
        if let Some(t) = self.tables.read().expect("not poisoned").get(name) {
            return Arc::clone(t);
        }
        let mut tables = self.tables.write().expect("not poisoned");
        Arc::clone(tables.entry(Arc::from(name)).or_default())
    }

    /// [`Generations::table`], for a cacheable read that depends on it: the first such read gives
    /// the table its place in [`TableGeneration::seq`].
    pub fn read_table(&self, name: &str) -> Arc<TableGeneration> {
        let table = self.table(name);
        if table.seq() == 0 {
            let next = self.read_tables.fetch_add(1, Ordering::AcqRel) + 1;
            let _ = table
                .seq
                .compare_exchange(0, next, Ordering::AcqRel, Ordering::Acquire);
        }
        table
    }

    /// What every cached result depends on: the floor and the global generation.
    pub fn global(&self) -> Stamp {
        let floor = Stamp {
            shared: self.floor.load(Ordering::Acquire),
            private: 0,
        };
        floor.max(self.global.get())
    }

    /// The floor: every change before it counts as made at it.
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    /// The stream applied a change to some rows of `table`, ending at `lsn`.
    pub fn bump_table(&self, table: &TableGeneration, lsn: u64) {
        table.any.bump(lsn);
    }

    /// The stream applied a whole-table event (TRUNCATE, DDL, flush) ending at `lsn`.
    pub fn bump_table_epoch(&self, table: &TableGeneration, lsn: u64) {
        table.epoch.bump(lsn);
        table.any.bump(lsn);
    }

    /// The stream applied a change, ending at `lsn`, to rows whose keys hash to `bucket` (see
    /// [`rows::RowKey`]). The table's own generation is bumped separately.
    pub fn bump_row(&self, bucket: usize, lsn: u64) {
        self.rows[bucket % rows::ROW_BUCKETS].bump(lsn);
    }

    /// The generation of row-key bucket `bucket`.
    pub fn row(&self, bucket: usize) -> Stamp {
        self.rows[bucket % rows::ROW_BUCKETS].get()
    }

    /// The stream applied, at `lsn`, something the proxy cannot place: every result misses.
    pub fn bump_global(&self, lsn: u64) {
        self.global.bump(lsn);
    }

    /// The generation of role `name`, created on first use; sessions keep the `Arc`.
    pub fn role(&self, name: &str) -> Arc<RoleGeneration> {
        if let Some(r) = self.roles.read().expect("not poisoned").get(name) {
            return Arc::clone(r);
        }
        let mut roles = self.roles.write().expect("not poisoned");
        Arc::clone(roles.entry(Arc::from(name)).or_default())
    }

    /// The stream applied, at `lsn`, a change of what `role` may read.
    pub fn bump_role(&self, role: &RoleGeneration, lsn: u64) {
        role.0.bump(lsn);
        self.any_role.bump(lsn);
    }

    /// The highest generation of any role: what a session that switched roles depends on.
    pub fn any_role(&self) -> Stamp {
        self.any_role.get()
    }

    /// Sets a private mark on each of `targets`, for a change this proxy knows of before its stream
    /// reports it: from now on, results depending on them are this process's own until
    /// [`Generations::unmark`] with the mark returned.
    pub fn mark(&self, targets: &[Marked]) -> u64 {
        let mark = self.clock.fetch_add(1, Ordering::AcqRel) + 1;
        self.each(targets, |g| g.mark(mark));
        mark
    }

    /// The stream has applied the change `targets` were marked `mark` for (its shared values now
    /// tell it): the marks go, unless a later one replaced them.
    pub fn unmark(&self, targets: &[Marked], mark: u64) {
        self.each(targets, |g| g.unmark(mark));
    }

    /// Calls `f` on every generation `targets` name.
    fn each(&self, targets: &[Marked], f: impl Fn(&Generation)) {
        for target in targets {
            match target {
                Marked::Table(t) => f(&t.any),
                Marked::TableEpoch(t) => {
                    f(&t.epoch);
                    f(&t.any);
                }
                Marked::Row(bucket) => f(&self.rows[bucket % rows::ROW_BUCKETS]),
                Marked::Global => f(&self.global),
                Marked::Role(r) => {
                    f(&r.0);
                    f(&self.any_role);
                }
            }
        }
    }

    /// The stream starts afresh at `start` (a new slot, a gap): changes before it are unknown, so
    /// everything counts as changed at `start` at least.
    pub fn restart(&self, start: u64) {
        self.floor.fetch_max(start, Ordering::AcqRel);
        self.era.fetch_add(1, Ordering::AcqRel);
        self.restarts.fetch_add(1, Ordering::AcqRel);
    }

    /// Times the stream started afresh: a commit made before a restart is covered by the new floor.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Acquire)
    }

    /// The encoded stamp a cache key carries. A stamp without a private part is its WAL position,
    /// below 2⁶³, the same in every proxy; one with a private part is a hash of both parts, this
    /// process's origin and its era, with the top bit set, which no other process computes.
    pub fn encode(&self, stamp: Stamp) -> u64 {
        if stamp.private == 0 {
            return stamp.shared;
        }
        let era = self.era.load(Ordering::Acquire);
        let h = mix(self.origin ^ mix(era ^ mix(stamp.shared ^ mix(stamp.private))));
        (1 << 63) | (h >> 1)
    }

    /// Every table the database has seen, for status and flushes.
    pub fn tables(&self) -> Vec<(Arc<str>, Arc<TableGeneration>)> {
        let tables = self.tables.read().expect("not poisoned");
        tables
            .iter()
            .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
            .collect()
    }
}

/// splitmix64's finalizer: spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// What a cached result depends on, resolved once per statement so a stamp costs only atomic loads.
#[derive(Debug, Clone, Default)]
pub struct Dependencies {
    /// Tables read as a whole.
    pub tables: Vec<Arc<TableGeneration>>,
    /// The table of a point lookup: the result depends on its epoch and on the looked-up key's
    /// bucket, or on the whole table when the key's value could not be read.
    pub point: Option<Arc<TableGeneration>>,
}

impl Dependencies {
    /// The latest [`TableGeneration::seq`] among the tables depended on.
    pub fn newest_table(&self) -> u64 {
        self.tables
            .iter()
            .chain(&self.point)
            .map(|t| t.seq())
            .max()
            .unwrap_or(0)
    }

    /// The stamp of a result read now: the maximum of its dependencies and the global generation.
    /// `row` is the bucket of the point lookup's key, when it has one.
    pub fn stamp(&self, generations: &Generations, row: Option<usize>) -> Stamp {
        let tables = self
            .tables
            .iter()
            .map(|t| t.any())
            .fold(generations.global(), Stamp::max);
        match (&self.point, row) {
            (None, _) => tables,
            (Some(t), Some(bucket)) => tables.max(t.epoch()).max(generations.row(bucket)),
            (Some(t), None) => tables.max(t.any()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_to_any_dependency_changes_the_stamp_and_others_do_not() {
        let g = Generations::default();
        g.restart(10);
        let (a, b, c) = (g.table("a"), g.table("b"), g.table("c"));
        let deps = Dependencies {
            tables: vec![Arc::clone(&a), Arc::clone(&b)],
            point: None,
        };
        let s0 = deps.stamp(&g, None);
        assert_eq!(s0.shared, 10, "nothing known since the floor");
        g.bump_table(&c, 20);
        assert_eq!(deps.stamp(&g, None), s0, "an unrelated table");
        g.bump_table(&b, 30);
        let s1 = deps.stamp(&g, None);
        assert_eq!(s1.shared, 30);
        g.bump_table_epoch(&a, 40);
        let s2 = deps.stamp(&g, None);
        g.bump_global(50);
        let s3 = deps.stamp(&g, None);
        assert!(s0 != s1 && s1 != s2 && s2 != s3 && s3.shared == 50);
        assert_eq!(c.seq(), 0, "written, never read");
        let (r1, r2) = (g.read_table("c"), g.read_table("a"));
        assert!(r1.seq() > 0 && r2.seq() > r1.seq() && g.read_table("c").seq() == r1.seq());
        let (bob, alice) = (g.role("bob"), g.role("alice"));
        let (a0, any0) = (alice.get(), g.any_role());
        g.bump_role(&bob, 60);
        assert!(bob.get().shared == 60 && g.any_role() != any0);
        assert_eq!(alice.get(), a0, "another role's change leaves a role alone");
    }

    #[test]
    fn a_point_lookup_depends_on_its_row_and_whole_table_events_only() {
        let g = Generations::default();
        let t = g.table("t");
        let point = Dependencies {
            tables: vec![],
            point: Some(Arc::clone(&t)),
        };
        let (mine, other) = (7, 8);
        let s0 = point.stamp(&g, Some(mine));
        g.bump_row(other, 5);
        g.bump_table(&t, 5);
        assert_eq!(point.stamp(&g, Some(mine)), s0, "another row's change");
        assert_ne!(point.stamp(&g, None), s0, "no key: the whole table counts");
        g.bump_row(mine, 6);
        let s1 = point.stamp(&g, Some(mine));
        assert_ne!(s1, s0);
        g.bump_table_epoch(&t, 7);
        assert_ne!(point.stamp(&g, Some(mine)), s1, "TRUNCATE or DDL");
    }

    #[test]
    fn the_same_name_gives_the_same_generation() {
        let g = Generations::default();
        assert!(Arc::ptr_eq(&g.table("t"), &g.table("t")));
        assert_eq!(g.tables().len(), 1);
    }

    #[test]
    fn two_proxies_that_applied_the_same_stream_compute_the_same_keys() {
        let (a, b) = (Generations::default(), Generations::default());
        for g in [&a, &b] {
            g.restart(100);
            g.bump_table(&g.table("t"), 120);
            g.bump_row(3, 120);
        }
        let deps = |g: &Generations| Dependencies {
            tables: vec![g.table("t")],
            point: None,
        };
        assert_eq!(
            a.encode(deps(&a).stamp(&a, None)),
            b.encode(deps(&b).stamp(&b, None))
        );
        assert_eq!(a.encode(a.row(3)), 120);
    }

    #[test]
    fn a_mark_makes_stamps_private_until_the_stream_reports_the_change() {
        let (a, b) = (Generations::default(), Generations::default());
        for g in [&a, &b] {
            g.restart(100);
        }
        let deps = |g: &Generations| Dependencies {
            tables: vec![g.table("t")],
            point: None,
        };
        let shared = a.encode(deps(&a).stamp(&a, None));
        let targets = [Marked::Table(a.table("t"))];
        let first = a.mark(&targets);
        let private = a.encode(deps(&a).stamp(&a, None));
        assert!(private >= 1 << 63 && private != shared);
        assert_ne!(
            private,
            b.encode(Stamp {
                shared: 100,
                private: first
            }),
            "another process's mark of the same value is another stamp"
        );
        let second = a.mark(&targets);
        let later = a.encode(deps(&a).stamp(&a, None));
        assert_ne!(later, private, "every mark is a new stamp");
        a.unmark(&targets, first);
        assert_eq!(
            a.encode(deps(&a).stamp(&a, None)),
            later,
            "an earlier mark's clearing leaves a later mark"
        );
        a.bump_table(&a.table("t"), 130);
        b.bump_table(&b.table("t"), 130);
        a.unmark(&targets, second);
        assert_eq!(
            a.encode(deps(&a).stamp(&a, None)),
            b.encode(deps(&b).stamp(&b, None)),
            "once applied, the stamp is the fleet's again"
        );
    }
}
