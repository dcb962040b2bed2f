//! Generations: the invalidation core of Veneer (see ARCHITECTURE.md, "Generations").
//!
//! A cached result is stored under a *stamp* read from the generations it depends on **before** its
//! query went upstream. Every change bumps a generation to a value higher than any value handed out
//! before, so the stamp of every later read differs from the stamp of every earlier one: older
//! entries become unreachable at once, whatever tier holds them, and a fill that raced a write is
//! stored under the old stamp and never read. Invalidation is O(1) and needs no scan of the cache.
//!
//! Values come from one monotonic clock per [`Generations`]. Nothing here assumes they are small local
//! counters: a stamp is only ever compared for equality, so a later version may take them from the
//! WAL (commit LSNs), which every proxy following the same stream computes alike.

pub mod commit;
pub mod conn;
pub mod pgoutput;
pub mod replication;
pub mod rows;
pub mod test_decoding;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The generations of one table.
#[derive(Debug, Default)]
pub struct TableGeneration {
    /// When a cacheable read first depended on the table ([`Generations::read_table`]), in that
    /// order, from 1; 0 until then. What a check that covered every table read so far can be
    /// compared with.
    seq: AtomicU64,
    /// Bumped by every change to the table; what queries that read the table as a whole depend on.
    any: AtomicU64,
    /// Bumped only by whole-table events (TRUNCATE, schema change, flush); what every query of the
    /// table depends on, point lookups included.
    epoch: AtomicU64,
}

impl TableGeneration {
    /// The value a query reading the whole table depends on.
    pub fn any(&self) -> u64 {
        self.any.load(Ordering::Acquire)
    }

    /// The value every query of the table depends on, point lookups included.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Its place in the order tables were first read (from 1; 0: never read).
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }
}

/// What one role may read and how names resolve for it, as a generation: bumped when its privileges,
/// memberships or the row-level security that applies to it change, so that its sessions miss
/// every result cached before while other roles keep theirs.
#[derive(Debug, Default)]
pub struct RoleGeneration(AtomicU64);

impl RoleGeneration {
    /// The value every result a session of the role reads depends on.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
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

/// The generations of one database: per table, per row-key bucket (see [`rows`]), and global.
#[derive(Debug)]
pub struct Generations {
    clock: AtomicU64,
    global: AtomicU64,
    tables: RwLock<HashMap<Arc<str>, Arc<TableGeneration>>>,
    rows: Box<[AtomicU64]>,
    roles: RwLock<HashMap<Arc<str>, Arc<RoleGeneration>>>,
    /// Bumped with every role's: what sessions that switched roles (`SET ROLE`) depend on.
    any_role: AtomicU64,
    /// Tables read so far (see [`TableGeneration::seq`]).
    read_tables: AtomicU64,
}

impl Default for Generations {
    fn default() -> Self {
        Generations {
            clock: AtomicU64::new(0),
            global: AtomicU64::new(0),
            tables: RwLock::default(),
            rows: (0..rows::ROW_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            roles: RwLock::default(),
            any_role: AtomicU64::new(0),
            read_tables: AtomicU64::new(0),
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

    /// The global epoch, which every cached result depends on.
    pub fn global(&self) -> u64 {
        self.global.load(Ordering::Acquire)
    }

    /// A change to some rows of `table`: queries reading the table as a whole miss from now on.
    pub fn bump_table(&self, table: &TableGeneration) {
        bump(&table.any, self.tick());
    }

    /// A whole-table event (TRUNCATE, DDL, flush): every query of `table` misses from now on.
    pub fn bump_table_epoch(&self, table: &TableGeneration) {
        let v = self.tick();
        bump(&table.epoch, v);
        bump(&table.any, v);
    }

    /// A change to the rows whose keys hash to `bucket` (see [`rows::RowKey`]): point lookups of
    /// those keys miss from now on. The table's own generation is bumped separately.
    pub fn bump_row(&self, bucket: usize) {
        bump(&self.rows[bucket % rows::ROW_BUCKETS], self.tick());
    }

    /// The generation of row-key bucket `bucket`.
    pub fn row(&self, bucket: usize) -> u64 {
        self.rows[bucket % rows::ROW_BUCKETS].load(Ordering::Acquire)
    }

    /// Something changed that the proxy cannot place: every cached result of the database misses.
    pub fn bump_global(&self) {
        bump(&self.global, self.tick());
    }

    /// The generation of role `name`, created on first use; sessions keep the `Arc`.
    pub fn role(&self, name: &str) -> Arc<RoleGeneration> {
        if let Some(r) = self.roles.read().expect("not poisoned").get(name) {
            return Arc::clone(r);
        }
        let mut roles = self.roles.write().expect("not poisoned");
        Arc::clone(roles.entry(Arc::from(name)).or_default())
    }

    /// What `role` may read changed: its sessions miss every result cached before.
    pub fn bump_role(&self, role: &RoleGeneration) {
        let v = self.tick();
        bump(&role.0, v);
        bump(&self.any_role, v);
    }

    /// The highest generation of any role: what a session that switched roles depends on.
    pub fn any_role(&self) -> u64 {
        self.any_role.load(Ordering::Acquire)
    }

    /// Every table the database has seen, for status and flushes.
    pub fn tables(&self) -> Vec<(Arc<str>, Arc<TableGeneration>)> {
        let tables = self.tables.read().expect("not poisoned");
        tables
            .iter()
            .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
            .collect()
    }

    /// A value higher than every value handed out before.
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// Raises `counter` to `value`: concurrent bumps never move a generation backwards.
fn bump(counter: &AtomicU64, value: u64) {
    counter.fetch_max(value, Ordering::AcqRel);
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

    /// The stamp of a result read now: the highest generation among its dependencies and the global
    /// epoch. Every bump hands out a value above all earlier ones, so any bump of a dependency makes
    /// every later stamp differ from every earlier one. `row` is the bucket of the point lookup's
    /// key, when it has one.
    pub fn stamp(&self, generations: &Generations, row: Option<usize>) -> u64 {
        let tables = self
            .tables
            .iter()
            .map(|t| t.any())
            .fold(generations.global(), u64::max);
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
    fn a_bump_of_any_dependency_changes_the_stamp_and_others_do_not() {
        let g = Generations::default();
        let (a, b, c) = (g.table("a"), g.table("b"), g.table("c"));
        let deps = Dependencies {
            tables: vec![Arc::clone(&a), Arc::clone(&b)],
            point: None,
        };
        let s0 = deps.stamp(&g, None);
        g.bump_table(&c);
        assert_eq!(
            deps.stamp(&g, None),
            s0,
            "an unrelated table leaves the stamp alone"
        );
        g.bump_table(&b);
        let s1 = deps.stamp(&g, None);
        assert_ne!(s1, s0);
        g.bump_table_epoch(&a);
        let s2 = deps.stamp(&g, None);
        assert!(s2 != s1 && s2 != s0);
        g.bump_global();
        let s3 = deps.stamp(&g, None);
        assert_eq!(c.seq(), 0, "written, never read");
        let (r1, r2) = (g.read_table("c"), g.read_table("a"));
        assert!(r1.seq() > 0 && r2.seq() > r1.seq() && g.read_table("c").seq() == r1.seq());
        let (bob, alice) = (g.role("bob"), g.role("alice"));
        let (b0, a0, any0) = (bob.get(), alice.get(), g.any_role());
        g.bump_role(&bob);
        assert!(bob.get() > b0 && g.any_role() > any0 && bob.get() > s3);
        assert_eq!(alice.get(), a0, "another role's bump leaves a role alone");
        assert!(![s0, s1, s2].contains(&s3));
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
        g.bump_row(other);
        g.bump_table(&t);
        assert_eq!(point.stamp(&g, Some(mine)), s0, "another row's change");
        assert_ne!(point.stamp(&g, None), s0, "no key: the whole table counts");
        g.bump_row(mine);
        let s1 = point.stamp(&g, Some(mine));
        assert_ne!(s1, s0);
        g.bump_table_epoch(&t);
        assert_ne!(point.stamp(&g, Some(mine)), s1, "TRUNCATE or DDL");
    }

    #[test]
    fn the_same_name_gives_the_same_generation() {
        let g = Generations::default();
        assert!(Arc::ptr_eq(&g.table("t"), &g.table("t")));
        assert_eq!(g.tables().len(), 1);
    }
}
