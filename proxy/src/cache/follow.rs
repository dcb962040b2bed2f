//! Keeps one database's generations in step with writes made anywhere: runs the replication stream
//! of `veneer_invalidation::replication` over a connection of Veneer's own (TLS as configured),
//! applies each commit's changes as bumps, and reconnects with backoff when the stream fails.
//!
//! The stream runs only while the database is wanted ([`super::demand`]): it starts with the first
//! session, ends (dropping its temporary slot) once no session has used the database for
//! `replication_idle_timeout` or when a DROP DATABASE holds it off, and at most
//! `replication_listeners` streams run at once. Whenever the stream is not applying commits the
//! database is marked not streaming, which under `replication = required` makes sessions forward its
//! reads; each start bumps the global epoch and rereads the catalog, since writes and DDL made while
//! nobody listened are unknown.
//!
//! A lost stream is retried at once, then after growing waits with jitter: up to half a second while
//! the cause is one that passes (a connection lost, a server restarting), so a restarted server is
//! followed again within a second of taking connections; up to 30 s for a refusal (a setting, a
//! permission) that will not. A stream that ran healthily for a while starts the waits over.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use veneer_invalidation::commit::{Commit, Ddl};
use veneer_invalidation::conn;
use veneer_invalidation::replication::{self, Login, Plugin, Progress, Resumed, Sink};
use veneer_invalidation::test_decoding::{KeySource, TableKeys};
use veneer_invalidation::{Generations, Source};

use super::database::{Database, Listener};
use super::Cache;
use super::{fleet, slot};
use crate::upstream;

/// The wait after the second failure in a row (the first is retried at once); doubled per failure
/// up to [`PASSING_CAP`] or [`LASTING_CAP`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait after a failure that passes by itself (a lost connection, a restarting server).
const PASSING_CAP: Duration = Duration::from_millis(500);
/// Longest wait after a refusal that does not (a setting, a permission, a missing plugin).
const LASTING_CAP: Duration = Duration::from_secs(30);
/// A stream that ran this long before failing starts the waits over.
const HEALTHY: Duration = Duration::from_secs(10);

/// Makes slot names unique within the process (several proxies may run in one, as in the tests).
static NEXT_SLOT: AtomicU64 = AtomicU64::new(0);

/// Longest a stream's start may take after its login: creating a slot waits for the transactions in
/// progress to end.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// WAL kept by a permanent slot while nobody followed it, past which its resumption is logged as a
/// warning.
const RETAINED_WARNING: u64 = 64 << 20;

/// Applies a stream's reports to a database's generations.
struct Apply<'a> {
    cache: &'a Cache,
    db: &'a Database,
    /// A resumed stream replays what committed while nobody followed: the database counts as
    /// streaming only once it has applied up to this position.
    catch_up: Option<u64>,
    /// The slot outlives the process.
    permanent: bool,
}

impl Apply<'_> {
    /// Marks the database streaming once a resumed stream has caught up.
    fn caught_up(&mut self) {
        if self
            .catch_up
            .is_some_and(|target| self.db.fence.applied_lsn() >= target)
        {
            self.catch_up = None;
            self.db.set_listener(Listener::Streaming);
            tracing::info!(database = %self.db.name, "replication stream caught up with its backlog");
        }
    }
}

impl KeySource for Apply<'_> {
    fn row_keys(&self, name: &str) -> TableKeys {
        self.db.table_keys(name)
    }
}

impl Sink for Apply<'_> {
    fn streaming(
        &mut self,
        published: Option<Vec<String>>,
        resumed: Option<Resumed>,
        timeline: u32,
        start: u64,
    ) {
        self.db.set_published(published);
        if let Some(r) = resumed.filter(|r| r.retained >= RETAINED_WARNING) {
            tracing::warn!(database = %self.db.name, retained_bytes = r.retained,
                "the permanent replication slot kept this much WAL on the server while no stream \
                 followed it; drop it (pg_drop_replication_slot) when no proxy will resume it");
        }
        // Resuming where this process left off, the stream replays whatever committed meanwhile:
        // cached results stay. Otherwise what happened before the stream's start is unknown, and so
        // it is when the server went back in time (restored from a snapshot: its WAL ends before
        // what was applied; or to an earlier point and promoted: a new timeline).
        let applied = self.db.fence.applied_lsn();
        let known = self.db.timeline.swap(timeline, Ordering::AcqRel);
        match resumed {
            Some(r)
                if r.confirmed > 0
                    && r.confirmed <= applied
                    && r.server >= applied
                    && timeline == known =>
            {
                self.db.catalog_changed();
                self.catch_up = Some(r.server);
                self.db.fence.want(r.server);
                tracing::info!(database = %self.db.name,
                    "replication stream resumed from its permanent slot: cached results kept, \
                     served again once what committed meanwhile is applied");
            }
            _ => {
                self.db.restart(start);
                match resumed {
                    // A permanent slot resumed by a new process (or after a gap): what committed
                    // since the slot's position is replayed first. Results stored before under
                    // stamps this floor still computes (a shared tier keeps them) must not be
                    // served until it has been.
                    Some(r) if r.server > start => {
                        self.catch_up = Some(r.server);
                        self.db.fence.want(r.server);
                    }
                    _ => self.db.set_listener(Listener::Streaming),
                }
            }
        }
        tracing::info!(database = %self.db.name, "replication stream following writes");
    }

    fn commit(&mut self, commit: &Commit) {
        let generations = &self.db.generations;
        // Plans made from the old definition (which columns key rows) go first, so no lookup keyed
        // the old way outlives the bumps below.
        if commit.ddl.is_some() || commit.redefined {
            self.db.catalog_changed();
        }
        if commit.privileges {
            self.db.privileges.wake();
        }
        let lsn = commit.end_lsn;
        // A table added to the publication since the stream started: its changes before its first
        // one streamed were never reported (its baseline), so everything cached of it counts as
        // changed here; every proxy of a fleet sees the same first change, so takes the same value.
        for name in commit.changed.iter().chain(&commit.whole) {
            if self.db.newly_published(name) {
                generations.bump_table_epoch(&generations.table(name), lsn);
            }
        }
        for name in &commit.changed {
            generations.bump_table(&generations.table(name), lsn);
        }
        if !crate::faults::stream_row_keys_off() {
            for bucket in commit.keys.iter() {
                generations.bump_row(bucket, lsn);
            }
        }
        for name in &commit.whole {
            generations.bump_table_epoch(&generations.table(name), lsn);
        }
        if commit.ddl == Some(Ddl::Unknown) {
            generations.bump_global(lsn);
        }
        for line in &commit.flushes {
            apply_flush(generations, line, lsn);
        }
        if !commit.changed.is_empty()
            || !commit.whole.is_empty()
            || commit.ddl.is_some()
            || !commit.flushes.is_empty()
        {
            self.cache.meters.invalidation(Source::Replication);
        }
        let delay = SystemTime::now()
            .duration_since(commit.commit_time)
            .unwrap_or_default();
        let tables = commit.changed.iter().chain(&commit.whole);
        self.db.stream.applied(commit.rows, delay, tables);
        self.db.fence.applied(commit.end_lsn);
        self.db.marks.settle(generations, &self.db.fence);
        self.caught_up();
    }

    fn progress(&mut self, progress: Progress) {
        self.db
            .stream
            .behind(progress.server_end.saturating_sub(progress.applied));
        self.db.fence.applied(progress.applied);
        self.db.marks.settle(&self.db.generations, &self.db.fence);
        self.caught_up();
    }

    /// A permanent slot on a shared tier confirms only what a generations snapshot in the tier
    /// covers, so that a restart resumes at a position it can join the fleet's stamps from (see
    /// [`super::fleet`]); unless the snapshots lag too far, when keeping the WAL matters more.
    fn confirmable(&self, applied: u64) -> u64 {
        let covered = self.db.fleet_covered();
        if !self.permanent || covered == 0 || applied.saturating_sub(covered) > RETAINED_WARNING {
            return applied;
        }
        applied.min(covered)
    }

    fn note(&mut self, warning: bool, message: String) {
        if warning {
            tracing::warn!(database = %self.db.name, "{message}");
        } else {
            tracing::info!(database = %self.db.name, "{message}");
        }
    }
}

/// Applies one line of a flush notice (see `veneer_invalidation::commit::FLUSH_PREFIX`) at `lsn`;
/// lines this version does not know are taken as a flush of everything.
fn apply_flush(generations: &Generations, line: &str, lsn: u64) {
    match line.split_once(' ') {
        Some(("table", name)) => generations.bump_table_epoch(&generations.table(name), lsn),
        Some(("role", name)) => generations.bump_role(&generations.role(name), lsn),
        _ => generations.bump_global(lsn),
    }
}

/// Follows `db`'s writes while it is wanted, until the cache is dropped or stops (the connection then
/// closes and the server drops the temporary slot).
pub async fn follow(cache: Weak<Cache>, db: Arc<Database>) {
    let mut backoff = Backoff::default();
    // When the stream was lost and why, for the status: the first failure of the outage.
    let mut down_since: Option<(SystemTime, String)> = None;
    loop {
        db.demand.wanted().await;
        let Some((listeners, cap)) = cache
            .upgrade()
            .map(|c| (Arc::clone(&c.listeners), c.config.replication_listeners))
        else {
            return;
        };
        let permit = match Arc::clone(&listeners).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                db.set_listener(Listener::AtCap(cap));
                tracing::warn!(database = %db.name, replication_listeners = cap,
                    "replication listener cap reached: this database's reads are served as with the \
                     stream down until another database's listener stops");
                tokio::select! {
                    permit = listeners.acquire_owned() => permit.expect("the semaphore is never closed"),
                    () = db.demand.released(Duration::ZERO) => continue,
                }
            }
        };
        let Some(strong) = cache.upgrade() else {
            return;
        };
        db.set_listener(Listener::Starting);
        let idle = strong.config.replication_idle_timeout;
        let started = tokio::time::Instant::now();
        let failure = run(&strong, &db).await.err();
        drop(permit);
        let Some(failure) = failure else {
            backoff = Backoff::default();
            down_since = None;
            let (state, why) = if db.demand.held() {
                (Listener::Held, "a DROP DATABASE of it is running")
            } else {
                (
                    Listener::Idle,
                    "it has had no client for replication_idle_timeout",
                )
            };
            db.set_listener(state);
            tracing::info!(database = %db.name, "replication stream stopped and slot released: {why}");
            continue;
        };
        if started.elapsed() >= HEALTHY {
            backoff = Backoff::default();
            down_since = None;
        }
        db.stream.failures.add(1);
        let wait = backoff.next(failure.passing);
        let (since, first) =
            down_since.get_or_insert_with(|| (SystemTime::now(), failure.message.clone()));
        db.set_listener(Listener::Down {
            why: if *first == failure.message {
                first.clone()
            } else {
                format!("{first}; then: {}", failure.message)
            },
            since: *since,
            retry_at: tokio::time::Instant::now() + wait,
        });
        tracing::warn!(database = %db.name, error = %failure.message, retry_in = ?wait,
            "replication stream down: writes made outside the proxy are not followed until it is back");
        drop(strong);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = db.demand.released(idle) => {}
        }
    }
}

/// Why a stream stopped, and whether the cause passes by itself.
struct Failure {
    message: String,
    /// A lost connection or a server restarting or shutting down: retried quickly.
    passing: bool,
}

impl From<crate::Error> for Failure {
    fn from(e: crate::Error) -> Failure {
        Failure {
            message: e.to_string(),
            passing: true,
        }
    }
}

impl From<conn::Error> for Failure {
    fn from(e: conn::Error) -> Failure {
        let passing = match &e {
            conn::Error::Io(_) => true,
            // Connection failures, and the server shutting down, starting or in recovery.
            conn::Error::Server { code, .. } => code.starts_with("08") || code.starts_with("57P"),
            conn::Error::Protocol(_) | conn::Error::Setup(_) => false,
        };
        Failure {
            message: e.to_string(),
            passing,
        }
    }
}

/// Waits between reconnections: none after the first failure, then growing, with jitter so that
/// proxies that lost their streams together do not come back together.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self, passing: bool) -> Duration {
        self.failures += 1;
        if self.failures == 1 {
            return Duration::ZERO;
        }
        let cap = if passing { PASSING_CAP } else { LASTING_CAP };
        let grown = FIRST_BACKOFF.saturating_mul(1 << (self.failures - 2).min(16));
        let jitter = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            % 400;
        // 80 % to 120 % of the wait.
        grown.min(cap).mul_f64(0.8 + f64::from(jitter) / 1000.0)
    }
}

/// One replication session: returns `Ok` when it was stopped because the database is no longer
/// wanted (its slot is dropped by then), or why it failed.
async fn run(cache: &Cache, db: &Database) -> Result<(), Failure> {
    let permanent = cache.config.replication_slot.as_deref();
    let login = Login {
        user: cache.service.service_user.clone(),
        password: cache.service.service_password.clone(),
        database: db.name.clone(),
        plugin: match &cache.config.publication {
            Some(publication) => Plugin::Pgoutput {
                publication: publication.clone(),
            },
            None => Plugin::TestDecoding,
        },
        slot: match permanent {
            Some(prefix) => permanent_slot(prefix, &db.name),
            None => format!(
                "veneer_{}_{}",
                std::process::id(),
                NEXT_SLOT.fetch_add(1, Ordering::Relaxed)
            ),
        },
        permanent: permanent.is_some(),
        login_timeout: cache.service.connect_timeout,
        setup_timeout: SETUP_TIMEOUT,
    };
    let wanted = db.fence.wanted();
    let connection = upstream::connect(&cache.service, cache.service_tls.as_ref()).await?;
    let mut sink = Apply {
        cache,
        db,
        catch_up: None,
        permanent: permanent.is_some(),
    };
    // A permanent slot's stream runs until a DROP DATABASE needs the slot gone: stopping it while
    // idle would leave the slot holding WAL.
    let idle = match permanent {
        Some(_) => Duration::MAX,
        None => cache.config.replication_idle_timeout,
    };
    let stop = db.demand.released(idle);
    let stream = replication::follow(connection.stream, &login, &mut sink, stop, wanted);
    // Positions for read-your-writes are read while the stream runs, which is what makes them pass.
    tokio::select! {
        followed = stream => followed.map_err(Failure::from),
        never = db.fence.settle(cache, &db.name) => match never {},
        never = slot::watch(cache, db, &login.slot) => match never {},
        never = fleet::sync(cache, db) => match never {},
    }
}

/// The name of the permanent slot of `database`: `<prefix>_<database>`, with characters a slot name
/// cannot hold replaced and, when any were (or the name was cut short), a hash of the full name
/// appended so that distinct databases keep distinct slots.
pub(crate) fn permanent_slot(prefix: &str, database: &str) -> String {
    const MAX_DATABASE: usize = 24;
    let cleaned: String = database
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            lower @ ('a'..='z' | '0'..='9' | '_') => lower,
            _ => '_',
        })
        .take(MAX_DATABASE)
        .collect();
    if cleaned == database {
        return format!("{prefix}_{database}");
    }
    // FNV-1a: stable across builds and versions, unlike the hashers of the standard library.
    let hash = database.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{prefix}_{cleaned}_{hash:08x}")
}

#[cfg(test)]
mod tests {
    use super::permanent_slot;

    #[test]
    fn permanent_slot_names_are_valid_and_distinct() {
        assert_eq!(permanent_slot("veneer", "shop"), "veneer_shop");
        let odd = permanent_slot("veneer", "Shop-EU");
        assert!(odd.starts_with("veneer_shop_eu_"), "{odd}");
        assert_ne!(odd, permanent_slot("veneer", "shop_eu"));
        let long = permanent_slot("p", &"x".repeat(100));
        assert!(long.len() <= 63, "{long}");
        for name in [odd, long] {
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
    }
}
