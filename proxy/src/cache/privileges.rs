//! Who may read what, and what a name means, for the roles that read through the cache.
//!
//! Privileges, role memberships and attributes, row-level security and the settings a role or
//! database gets from `ALTER ROLE/DATABASE … SET` are not in the replication stream, and a change
//! made directly on the server reaches no session through Veneer. So Veneer checks them itself,
//! every `privilege_check` (at once when its event trigger, installed by `veneer setup`, reports a
//! GRANT, a REVOKE or a policy's DDL, or when such a statement passes through Veneer):
//!
//! - A **gate**, one small query: hashes of the ACLs, owners and row-level security of the tables
//!   the cache has results of, their columns' ACLs and policies, every schema's ACL, every role's
//!   attributes and memberships and the ACLs of functions that have one. Its cost grows with the
//!   tables cached, not with the database; when it takes long, checks come less often (at most a
//!   twentieth of the server's time). A table read for the first time is brought under the gate by
//!   a small query of its own before any of its results is stored (its first read waits for it).
//! - When the gate moved, a **per-role check** of each role reading through Veneer: for each cached
//!   table, whether the role may read it (or which columns), whether row-level security applies to
//!   it and which policies; which functions it may execute. A role whose answers changed has its
//!   generation bumped ([`veneer_invalidation::RoleGeneration`], part of every stamp its sessions
//!   read): its sessions miss every result cached before, and other roles keep their hits. A
//!   generation per role rather than one privilege epoch, because a GRANT to one role must not
//!   empty the cache of all the others.
//! - **Settings** from `pg_db_role_setting` (every role's, read whole: the table is small) give each
//!   role a digest that is part of its sessions' scope, taken when a session starts, since Postgres
//!   applies them at a session's start. A session that started while its role's settings changed
//!   (between the two checks around the change) cannot tell which it got and stays off the cache.
//!   Server-wide settings that change results, changed by `ALTER SYSTEM` and a reload, bump the
//!   whole database.
//!
//! Until the first check has passed, and while checks fail, the database's reads are forwarded.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use veneer_invalidation::{Generations, Marked, RoleGeneration, Stamp};

use super::marks::Marker;
use super::service::Service;
use super::Cache;
use crate::error::Error;

/// Settings that change what a query returns or which relation a name means, and that Postgres does
/// not report to the client (those it reports are in every session's scope already). Their
/// server-wide values are watched; a session's own are in its scope through its `SET`s, its startup
/// packet and its role's digest.
const RESULT_SETTINGS: &[&str] = &[
    "array_nulls",
    "bytea_output",
    "default_text_search_config",
    "extra_float_digits",
    "gin_fuzzy_search_limit",
    "lc_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "quote_all_identifiers",
    "row_security",
    "search_path",
    "timezone_abbreviations",
    "transform_null_equals",
    "xmlbinary",
    "xmloption",
];

/// `(SELECT coalesce(sum(hashtext(<columns joined>)), 0) FROM <from>)`: an order-free hash of rows.
fn sum_of(columns: &str, from: &str) -> String {
    format!("(SELECT coalesce(sum(hashtext(concat_ws(',', {columns}))), 0) FROM {from})")
}

/// The gate's hash of everything that decides who may read the tables named by `$n` (an array of
/// relation names): their ACLs, owners, schemas and row-level security, their columns' ACLs and
/// their policies. A sum over the tables, so that the hash of a set grows by the hash of the tables
/// added to it.
fn gate(n: u8) -> String {
    let tables = format!("c.relname = ANY(${n}) AND c.relkind IN ('r','p','v','m','f')");
    format!(
        "{} + 3 * {} + 5 * {}",
        sum_of(
            "c.oid, c.relowner, c.relacl, c.relrowsecurity, c.relforcerowsecurity, c.relnamespace",
            &format!("pg_catalog.pg_class c WHERE {tables}")
        ),
        sum_of(
            "a.attrelid, a.attnum, a.attacl",
            &format!(
                "pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                 WHERE {tables} AND a.attacl IS NOT NULL"
            )
        ),
        sum_of(
            "p.oid, p.polcmd, p.polpermissive, p.polroles, \
             pg_catalog.pg_get_expr(p.polqual, p.polrelid)",
            &format!(
                "pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid \
                 WHERE {tables}"
            )
        ),
    )
}

/// The gate for the tables named by `$1`, the part that does not depend on the tables (schemas,
/// roles, memberships, functions with an ACL), the server-wide settings named by `$2`, every role's
/// and the database's settings, and the microseconds the server spent on it so far.
fn check_sql() -> String {
    let global = format!(
        "concat_ws('/', {}, {}, {}, {})",
        sum_of("n.oid, n.nspowner, n.nspacl", "pg_catalog.pg_namespace n"),
        sum_of(
            "r.oid, r.rolname, r.rolsuper, r.rolinherit, r.rolbypassrls",
            "pg_catalog.pg_roles r"
        ),
        sum_of("m.roleid, m.member", "pg_catalog.pg_auth_members m"),
        sum_of(
            "p.oid, p.proowner, p.proacl",
            "pg_catalog.pg_proc p WHERE p.proacl IS NOT NULL"
        ),
    );
    format!(
        "SELECT {}, {global}, \
           (SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_catalog.pg_settings \
             WHERE name = ANY($2) \
               AND source NOT IN ('database', 'user', 'database user', 'session', 'client')), \
           (SELECT array_agg(concat_ws(E'\\t', s.setdatabase <> 0, coalesce(r.rolname, ''), \
                   s.setconfig::text) ORDER BY s.setdatabase, s.setrole) \
              FROM pg_catalog.pg_db_role_setting s LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.setrole \
             WHERE s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database \
                                          WHERE datname = pg_catalog.current_database()))), \
           (extract(epoch FROM pg_catalog.clock_timestamp() - pg_catalog.statement_timestamp()) \
              * 1000000)::int8",
        gate(1)
    )
}

/// For each role named in `$1` and each table named in `$2`: a hash of whether the role may read
/// it (else which columns), whether it may use its schema, and, when it may read some of it,
/// whether row-level security applies to it and the policies that do (a table a role cannot read
/// at all has no results of the role's to narrow); and for each role, under table oid 0, which functions with an ACL it
/// may execute.
const PER_ROLE_SQL: &str = "\
SELECT r.rolname, c.oid::int8, hashtext(concat_ws('|', \
         has_table_privilege(r.oid, c.oid, 'SELECT'), \
         CASE WHEN NOT has_table_privilege(r.oid, c.oid, 'SELECT') THEN \
           (SELECT string_agg(a.attnum::text, ',' ORDER BY a.attnum) FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
               AND has_column_privilege(r.oid, c.oid, a.attnum, 'SELECT')) END, \
         has_schema_privilege(r.oid, c.relnamespace, 'USAGE'), \
         CASE WHEN has_any_column_privilege(r.oid, c.oid, 'SELECT') THEN concat_ws('|', \
           c.relrowsecurity AND (c.relforcerowsecurity OR NOT pg_has_role(r.oid, c.relowner, 'USAGE')) \
             AND NOT r.rolbypassrls AND NOT r.rolsuper, \
           (SELECT string_agg(concat_ws(',', p.polname, p.polcmd, p.polpermissive, \
                     pg_catalog.pg_get_expr(p.polqual, p.polrelid)), ';' ORDER BY p.polname) \
              FROM pg_catalog.pg_policy p \
             WHERE p.polrelid = c.oid \
               AND EXISTS (SELECT 1 FROM unnest(p.polroles) pr \
                            WHERE pr = 0 OR pg_has_role(r.oid, pr, 'USAGE')))) END))::int8 \
  FROM pg_catalog.pg_roles r CROSS JOIN pg_catalog.pg_class c \
 WHERE r.rolname = ANY($1) AND c.relname = ANY($2) AND c.relkind IN ('r','p','v','m','f') \
UNION ALL \
SELECT r.rolname, 0, coalesce((SELECT sum(hashtext(concat_ws(',', p.oid, \
         has_function_privilege(r.oid, p.oid, 'EXECUTE')))) \
    FROM pg_catalog.pg_proc p WHERE p.proacl IS NOT NULL), 0) \
  FROM pg_catalog.pg_roles r WHERE r.rolname = ANY($1)";

/// One database's watch over privileges and role settings.
pub struct Privileges {
    /// Checks started so far: a session notes the count when it starts (see [`RoleSession`]).
    checks: AtomicU64,
    /// The last check passed: the database may be served from the cache.
    ready: AtomicBool,
    /// The roles reading through the cache, and every role's settings digest.
    roles: Mutex<Roles>,
    /// Wakes the checker for a full check (a notice in the stream, a GRANT through Veneer).
    wake: Notify,
    /// Wakes the checker to cover tables read for the first time.
    uncovered: Notify,
    /// Why the last check failed, for the status.
    failure: Mutex<Option<String>>,
    /// How long the last full check's gate took the server, in microseconds: what the interval
    /// between checks stretches by (see [`MAX_SHARE`]), and the status shows.
    last_micros: AtomicU64,
    /// What the checks know, kept while the database is not wanted so that the next check compares
    /// with the last: a change made meanwhile is found like any other.
    known: tokio::sync::Mutex<Known>,
    /// Every table read up to this one (see `TableGeneration::seq`) is covered by the checks: a
    /// read of a table read for the first time later waits for a check before it is cached, since a change made to the
    /// table before the check that first covers it could not be told from how it always was.
    covered: watch::Sender<u64>,
    /// `covered`'s value, read by every cacheable read with one atomic load (no lock).
    covered_now: AtomicU64,
}

impl Default for Privileges {
    fn default() -> Self {
        Privileges {
            checks: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            roles: Mutex::default(),
            wake: Notify::new(),
            uncovered: Notify::new(),
            failure: Mutex::new(None),
            last_micros: AtomicU64::new(0),
            known: tokio::sync::Mutex::default(),
            covered: watch::channel(0).0,
            covered_now: AtomicU64::new(0),
        }
    }
}

#[derive(Default)]
struct Roles {
    /// Settings digest of roles with settings of their own; others have `default`.
    digests: HashMap<String, u64>,
    default: u64,
    /// Roles with sessions through Veneer.
    watched: HashMap<String, Arc<RoleWatch>>,
}

/// What the checker keeps about one role that reads through the cache.
struct RoleWatch {
    generation: Arc<RoleGeneration>,
    /// The role's settings digest as last read.
    settings: AtomicU64,
    /// Checks at which its settings changed, with the digest after: a session that started around
    /// one of them cannot tell which settings it got.
    changes: Mutex<Vec<(u64, u64)>>,
    /// Grows with `changes`, so sessions re-examine them only when there is something new.
    changes_seen: AtomicU64,
}

/// A session's view of its role: what its cached reads depend on.
pub struct RoleSession {
    role: Arc<RoleWatch>,
    /// The role's settings digest when the session started: part of its scope.
    settings: u64,
    /// Checks started before the session did.
    started_after: u64,
    /// `changes_seen` when the changes were last examined.
    examined: u64,
    /// The session started around a change of its role's settings.
    uncertain: bool,
}

impl RoleSession {
    /// The role's settings digest at the session's start, for its scope.
    pub fn settings(&self) -> u64 {
        self.settings
    }

    /// The role's generation, part of the stamp of every result the session reads.
    pub fn generation(&self) -> Stamp {
        self.role.generation.get()
    }

    /// Whether the session cannot tell which of its role's settings it started with. One atomic load
    /// unless a change came since the last call.
    pub fn uncertain(&mut self) -> bool {
        let seen = self.role.changes_seen.load(Ordering::Acquire);
        if seen != self.examined {
            self.examined = seen;
            let changes = self.role.changes.lock().expect("not poisoned");
            // A change found by check k happened after check k-1 read the catalog; a session that
            // started before check k-1 did started before it. One that started later, with the
            // digest from before the change, may have the settings from after.
            self.uncertain |= changes
                .iter()
                .any(|&(k, after)| self.started_after + 1 >= k && self.settings != after);
        }
        self.uncertain
    }
}

impl Privileges {
    /// A session of `role` starts.
    pub fn attach(&self, generations: &Generations, role: &str) -> RoleSession {
        let mut roles = self.roles.lock().expect("not poisoned");
        let digest = roles.digests.get(role).copied().unwrap_or(roles.default);
        let watch = Arc::clone(roles.watched.entry(role.to_owned()).or_insert_with(|| {
            Arc::new(RoleWatch {
                generation: generations.role(role),
                settings: AtomicU64::new(digest),
                changes: Mutex::new(Vec::new()),
                changes_seen: AtomicU64::new(0),
            })
        }));
        drop(roles);
        RoleSession {
            settings: watch.settings.load(Ordering::Acquire),
            examined: watch.changes_seen.load(Ordering::Acquire),
            role: watch,
            started_after: self.checks.load(Ordering::Acquire),
            uncertain: false,
        }
    }

    /// Whether the last check passed: until then, and after a failed one, reads are forwarded.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Checks at once: something that changes privileges passed through Veneer or the stream.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether the checks cover every table read up to `seq` (see [`Privileges::cover`]).
    pub fn covers(&self, seq: u64) -> bool {
        self.covered_now.load(Ordering::Acquire) >= seq
    }

    /// Has a check cover the tables read up to `seq`, waiting at most `limit`; whether it did. A
    /// table's first reads wait for this once, for the few milliseconds a check takes.
    pub async fn cover(&self, seq: u64, limit: Duration) -> bool {
        let mut covered = self.covered.subscribe();
        self.uncovered.notify_one();
        tokio::time::timeout(limit, covered.wait_for(|c| *c >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The status line: how the checks go, made every `privilege_check` or, when they take long,
    /// less often (see [`MAX_SHARE`]).
    pub fn status(&self, privilege_check: Duration) -> String {
        let took = Duration::from_micros(self.last_micros.load(Ordering::Relaxed));
        let interval = interval(privilege_check, took);
        match &*self.failure.lock().expect("not poisoned") {
            Some(e) => format!("privileges not checked ({e}); retrying"),
            None if self.ready() => format!(
                "privileges checked every {:.1} s: {} checks, the last took the server {:.1} ms",
                interval.as_secs_f64(),
                self.checks.load(Ordering::Relaxed),
                self.last_micros.load(Ordering::Relaxed) as f64 / 1000.0
            ),
            None => "privileges not checked yet".to_owned(),
        }
    }

    /// Forgets the checks: the database is no longer wanted, and its next user starts them over.
    pub fn reset(&self) {
        self.ready.store(false, Ordering::Release);
        *self.failure.lock().expect("not poisoned") = None;
    }
}

/// What the checker knows between checks.
#[derive(Default)]
pub struct Known {
    /// The tables (by name) the checks cover, and the gate's hash of them.
    tables: HashSet<String>,
    gate: i64,
    /// The gate's part that does not depend on the tables; `None` before the first full check.
    global: Option<String>,
    server_settings: Option<String>,
    /// The full check before this one found a change.
    changed_before: bool,
    /// Each role asked so far, with its answers per table oid (0: functions).
    answers: HashMap<String, HashMap<i64, i64>>,
    /// Changes the last check found, to be marked and told to the fleet (see
    /// [`Marker::tell`]): what they touched and the flush notice's line.
    found: Vec<(Vec<Marked>, String)>,
}

/// One database as the checks see it.
#[derive(Clone, Copy)]
pub struct Watched<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its generations, where roles and the database are bumped.
    pub generations: &'a Generations,
    /// Its privileges' state.
    pub privileges: &'a Privileges,
    /// What marking its generations takes.
    pub marker: Marker<'a>,
}

/// Checks `db`'s privileges in full every `privilege_check` and when woken, and covers tables read
/// for the first time when asked; runs until cancelled.
pub async fn watch(cache: &Cache, db: Watched<'_>) -> Infallible {
    let mut known = db.privileges.known.lock().await;
    let mut service = Service::new(cache, db.name, "veneer privileges");
    let mut next_full = tokio::time::Instant::now();
    let mut full_wanted = false;
    loop {
        let full = std::mem::take(&mut full_wanted) || tokio::time::Instant::now() >= next_full;
        let checked = if full {
            let result = full_check(db, &mut service, &mut known).await;
            let took = Duration::from_micros(db.privileges.last_micros.load(Ordering::Relaxed));
            next_full = tokio::time::Instant::now() + interval(cache.config.privilege_check, took);
            result
        } else {
            cover(db, &mut service, &mut known).await
        };
        for (targets, line) in std::mem::take(&mut known.found) {
            db.marker.tell(cache, targets, &line).await;
        }
        match checked {
            Ok(covered) => {
                db.privileges.covered_now.store(covered, Ordering::Release);
                db.privileges.covered.send_replace(covered);
                if full {
                    *db.privileges.failure.lock().expect("not poisoned") = None;
                    db.privileges.ready.store(true, Ordering::Release);
                }
            }
            Err(e) => {
                if db.privileges.ready.swap(false, Ordering::AcqRel) {
                    tracing::warn!(database = %db.name, error = %e,
                        "cannot check privileges: reads of this database are forwarded uncached until it can");
                }
                *db.privileges.failure.lock().expect("not poisoned") = Some(e.to_string());
                // Retried in full, after the interval.
                next_full = tokio::time::Instant::now() + cache.config.privilege_check;
            }
        }
        tokio::select! {
            () = tokio::time::sleep_until(next_full) => {}
            () = db.privileges.wake.notified() => full_wanted = true,
            () = db.privileges.uncovered.notified() => {}
        }
    }
}

/// Full checks take at most this share of the server's time (one core): with very many tables
/// cached, a check takes the server long enough that the interval grows past `privilege_check`.
/// The server's own time, not the time Veneer waited, so that a busy proxy does not stretch it.
const MAX_SHARE: u32 = 20;

/// The wait before the next full check, after one that took `took`: `privilege_check`, or longer
/// when checks take long (see [`MAX_SHARE`]).
fn interval(privilege_check: Duration, took: Duration) -> Duration {
    privilege_check.max(took * MAX_SHARE)
}

/// Brings the tables read since the last check under the checks: adds their gate hash to the known
/// one and the known roles' answers for them. Returns the newest table covered.
async fn cover(
    db: Watched<'_>,
    service: &mut Service<'_>,
    known: &mut Known,
) -> Result<u64, Error> {
    // Tables the stream or writes named but no cacheable read depends on have no results to guard.
    let read: Vec<_> = db
        .generations
        .tables()
        .into_iter()
        .filter(|(_, t)| t.seq() > 0)
        .collect();
    let newest = read.iter().map(|(_, t)| t.seq()).max().unwrap_or(0);
    let new: Vec<String> = read
        .iter()
        .map(|(name, _)| name.to_string())
        .filter(|name| !known.tables.contains(name))
        .collect();
    if new.is_empty() {
        return Ok(newest);
    }
    let rows = service
        .query(&format!("SELECT {}", gate(1)), &[&new])
        .await?;
    let gate: i64 = rows
        .first()
        .ok_or_else(|| Error::privileges(db.name, "the gate returned no row"))?
        .get(0);
    let roles: Vec<&String> = known.answers.keys().collect();
    let rows = service.query(PER_ROLE_SQL, &[&roles, &new]).await?;
    for (role, answers) in answers_of(rows) {
        known.answers.entry(role).or_default().extend(answers);
    }
    known.gate = known.gate.wrapping_add(gate);
    known.tables.extend(new);
    Ok(newest)
}

/// One full check (see the module's documentation); returns the newest table covered.
async fn full_check(
    db: Watched<'_>,
    service: &mut Service<'_>,
    known: &mut Known,
) -> Result<u64, Error> {
    let k = db.privileges.checks.fetch_add(1, Ordering::AcqRel) + 1;
    let newest = cover(db, service, known).await?;
    let tables: Vec<&String> = known.tables.iter().collect();
    let settings = RESULT_SETTINGS.to_vec();
    let rows = service.query(&check_sql(), &[&tables, &settings]).await?;
    let row = rows
        .first()
        .ok_or_else(|| Error::privileges(db.name, "the check returned no row"))?;
    let (gate, global): (i64, String) = (row.get(0), row.get(1));
    let server_settings: Option<String> = row.get(2);
    let role_settings: Option<Vec<String>> = row.get(3);
    let server_micros: i64 = row.get(4);
    db.privileges
        .last_micros
        .store(server_micros.max(0) as u64, Ordering::Relaxed);

    let first = known.global.is_none();
    let changed =
        !first && (known.global.as_deref() != Some(global.as_str()) || known.gate != gate);
    if !first && known.server_settings != server_settings {
        tracing::info!(database = %db.name,
            "server-wide settings that change results changed: every cached result of the database is dropped");
        known.found.push((vec![Marked::Global], "*".to_owned()));
    }
    settle_settings(db, k, &role_settings.unwrap_or_default(), first);

    let roles: Vec<String> = {
        let watched = db.privileges.roles.lock().expect("not poisoned");
        watched.watched.keys().cloned().collect()
    };
    // On a change every role is asked again; otherwise only roles never asked.
    let asked: Vec<String> = if first || changed {
        roles.clone()
    } else {
        roles
            .iter()
            .filter(|r| !known.answers.contains_key(*r))
            .cloned()
            .collect()
    };
    if !asked.is_empty() {
        let rows = service.query(PER_ROLE_SQL, &[&asked, &tables]).await?;
        settle_answers(db, known, &asked, answers_of(rows), first, changed);
    }
    known.changed_before = changed;
    known.global = Some(global);
    known.gate = gate;
    known.server_settings = server_settings;
    Ok(newest)
}

/// The rows of [`PER_ROLE_SQL`], by role and table oid.
fn answers_of(rows: Vec<tokio_postgres::Row>) -> HashMap<String, HashMap<i64, i64>> {
    let mut answers: HashMap<String, HashMap<i64, i64>> = HashMap::new();
    for row in rows {
        answers
            .entry(row.get(0))
            .or_default()
            .insert(row.get(1), row.get(2));
    }
    answers
}

/// Compares each watched role's answers with the last ones: a role whose answer for a table it had
/// one for changed is bumped. A role answered for the first time is bumped when this check or the
/// one before found a change: its first sessions may have cached results before the change, while
/// the check before did not know the role yet. (A table's results wait for the first check that
/// covers it: see [`Privileges::cover`].)
fn settle_answers(
    db: Watched<'_>,
    known: &mut Known,
    roles: &[String],
    mut answers: HashMap<String, HashMap<i64, i64>>,
    first: bool,
    changed: bool,
) {
    let watched = db.privileges.roles.lock().expect("not poisoned");
    for role in roles {
        let now = answers.remove(role).unwrap_or_default();
        let moved = match known.answers.get(role) {
            None => changed || known.changed_before,
            Some(was) => was.iter().any(|(oid, hash)| now.get(oid) != Some(hash)),
        };
        if let Some(watch) = watched.watched.get(role).filter(|_| moved && !first) {
            tracing::info!(database = %db.name, role = %role,
                "privileges, row-level security, memberships or attributes of the role changed: its \
                 cached results are dropped");
            known.found.push((
                vec![Marked::Role(Arc::clone(&watch.generation))],
                format!("role {role}"),
            ));
        }
        known.answers.insert(role.clone(), now);
    }
}

/// Takes every role's settings digest from `rows` (`in_database<TAB>role<TAB>config`, the role
/// empty for the database's own), recording, for the watched roles whose digest changed, that check
/// `k` found it.
fn settle_settings(db: Watched<'_>, k: u64, rows: &[String], first: bool) {
    let mut database_level = String::new();
    let mut own: HashMap<String, String> = HashMap::new();
    for row in rows {
        let mut parts = row.splitn(3, '\t');
        let (Some(in_database), Some(role), Some(config)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if role.is_empty() {
            database_level.push_str(config);
        } else {
            let entry = own.entry(role.to_owned()).or_default();
            entry.push_str(in_database);
            entry.push_str(config);
        }
    }
    let digest = |own: &str| {
        let mut hasher = foldhash::quality::FixedState::with_seed(11).build_hasher();
        hasher.write(database_level.as_bytes());
        hasher.write_u8(0);
        hasher.write(own.as_bytes());
        // 0 stays free for "not read yet".
        hasher.finish().max(1)
    };
    let default = digest("");
    let digests: HashMap<String, u64> = own.iter().map(|(r, c)| (r.clone(), digest(c))).collect();
    let mut roles = db.privileges.roles.lock().expect("not poisoned");
    for (name, watch) in &roles.watched {
        let now = digests.get(name).copied().unwrap_or(default);
        if watch.settings.swap(now, Ordering::AcqRel) != now && !first {
            tracing::info!(database = %db.name, role = %name,
                "the role's settings changed: its new sessions get a scope of their own");
            watch.changes.lock().expect("not poisoned").push((k, now));
            watch.changes_seen.fetch_add(1, Ordering::AcqRel);
        }
    }
    roles.digests = digests;
    roles.default = default;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Db {
        generations: Generations,
        privileges: Privileges,
        fence: super::super::fence::Fence,
        marks: super::super::marks::Marks,
    }

    impl Db {
        fn watched(&self) -> Watched<'_> {
            Watched {
                name: "d",
                generations: &self.generations,
                privileges: &self.privileges,
                marker: Marker {
                    database: "d",
                    generations: &self.generations,
                    fence: &self.fence,
                    marks: &self.marks,
                    shared: false,
                    streams_every_table: true,
                },
            }
        }
    }

    /// Check `k` starts, then reads `rows` of pg_db_role_setting.
    fn check(db: &Db, k: u64, rows: &[&str]) {
        db.privileges.checks.store(k, Ordering::Release);
        let rows: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
        settle_settings(db.watched(), k, &rows, k == 1);
    }

    #[test]
    fn sessions_that_started_around_a_change_of_their_roles_settings_are_uncertain() {
        let db = Db {
            generations: Generations::default(),
            privileges: Privileges::default(),
            fence: Default::default(),
            marks: Default::default(),
        };
        check(&db, 1, &[]);
        let mut old = db.privileges.attach(&db.generations, "bob");
        let mut other = db.privileges.attach(&db.generations, "alice");
        check(&db, 2, &[]);
        // The change commits after check 2 read the catalog; these sessions may or may not have it.
        let mut during = db.privileges.attach(&db.generations, "bob");
        db.privileges.checks.store(3, Ordering::Release);
        let mut racing = db.privileges.attach(&db.generations, "bob");
        check(&db, 3, &["false\tbob\t{search_path=s2}"]);
        let mut after = db.privileges.attach(&db.generations, "bob");
        assert!(
            !old.uncertain(),
            "started before check 2 began: before the change"
        );
        assert!(during.uncertain() && racing.uncertain());
        assert!(!after.uncertain());
        assert_ne!(after.settings(), old.settings());
        assert!(!other.uncertain());
        assert_eq!(
            other.settings(),
            old.settings(),
            "no settings: the default digest"
        );
        // A database-wide change reaches every role.
        check(
            &db,
            4,
            &["true\t\t{search_path=s3}", "false\tbob\t{search_path=s2}"],
        );
        let alice = db.privileges.attach(&db.generations, "alice");
        assert_ne!(alice.settings(), other.settings());
    }
}
