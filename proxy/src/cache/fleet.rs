//! How a proxy joins the stamps of the other proxies sharing its tier (see
//! `veneer_invalidation::snapshot`): while its stream runs, it reads the fleet's generations
//! snapshot of the database from the tier, takes it in when it covers its own start (its floor then
//! becomes the fleet's, so its keys coincide with theirs), and publishes its own when it is the
//! freshest, so that a proxy started or restarted later can join in turn.
//!
//! A snapshot that does not reach this proxy's start yet is waited for, a little: its publisher
//! renews it every [`PUBLISH_INTERVAL`] (every [`SMALL_INTERVAL`] while it is small), its stream
//! asking the server for its WAL end each time so that it moves on in a quiet database too. Past [`JOIN_WAIT`] without one (every other proxy is gone),
//! this proxy publishes its own, whose higher floor the others then take (raising a floor is always
//! safe), so the fleet converges on one floor either way.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use veneer_cache_node::CacheStore;
use veneer_invalidation::replication::INSERTED_END;
use veneer_invalidation::snapshot;

use super::database::Database;
use super::service::Service;
use super::Cache;

/// How often a proxy that has joined reads and renews the snapshot.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// How often while the snapshot is small (a young fleet, a quiet database), so that proxies
/// started together join each other within a fraction of a second.
const SMALL_INTERVAL: Duration = Duration::from_millis(100);

/// A snapshot under this many bytes is renewed every [`SMALL_INTERVAL`].
const SMALL: usize = 64 << 10;

/// How often a proxy that has not joined yet looks for a snapshot it can take.
const JOIN_POLL: Duration = Duration::from_millis(100);

/// How long a proxy waits for a snapshot reaching its start before publishing its own.
const JOIN_WAIT: Duration = Duration::from_secs(3);

/// How long a snapshot lives in the tier without being renewed.
const SNAPSHOT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Keeps `db`'s generations joined with the fleet's while its stream runs; never returns (it is
/// dropped with the stream). Does nothing unless the tier is shared.
pub async fn sync(cache: &Cache, db: &Database) -> Infallible {
    let Some(remote) = cache.store.remote().filter(|_| db.is_shared()) else {
        return std::future::pending().await;
    };
    let name = format!("generations:{}", db.name);
    let mut waiting_since: Option<Instant> = None;
    let mut published = 0;
    let mut warned = false;
    // Whether a snapshot ahead of this proxy was checked against the server's WAL end.
    let mut history_checked = false;
    loop {
        if db.take_lost_history() {
            tracing::error!(database = %db.name,
                "the server went back in time (restored from a copy): results and generations in \
                 the shared tier may come from a history it no longer has; the tier's namespace \
                 is cleared");
            cache.store.clear().await;
        }
        let floor = db.generations.floor();
        let applied = db.fence.applied_lsn();
        // Until the stream has started, the floor says nothing yet.
        let started = floor > 0 && applied >= floor;
        // A proxy whose server went back in time keeps its stamps to itself for good.
        let mut publish = started && db.is_streaming() && !db.diverged();
        let mut pause = PUBLISH_INTERVAL;
        if started {
            // Have the stream ask the server where its WAL ends (one message on the replication
            // connection): a quiet database's applied position then keeps up with the server,
            // so a snapshot reaches the start of a proxy that just joined without waiting for a
            // commit.
            db.fence.want(applied + 1);
        }
        let theirs = match started && !db.diverged() {
            true => remote.get_fleet(&name).await,
            false => None,
        };
        let ahead = theirs
            .as_deref()
            .and_then(|b| snapshot::header(b).ok())
            .filter(|&(their_applied, _)| their_applied > applied && !history_checked);
        if let Some((their_applied, _)) = ahead {
            match same_history(cache, db, their_applied).await {
                Some(true) => history_checked = true,
                Some(false) => {
                    tracing::error!(database = %db.name, their_applied,
                        "the shared tier holds a generations snapshot from past the server's WAL \
                         end: the server went back in time (restored from a copy), and results \
                         in the tier may come from a history it no longer has; the tier's \
                         namespace is cleared");
                    cache.store.clear().await;
                    history_checked = true;
                    continue;
                }
                // The server could not be asked: no joining this round.
                None => {
                    tokio::time::sleep(JOIN_POLL).await;
                    continue;
                }
            }
        }
        if let Some(bytes) = theirs {
            match snapshot::header(&bytes) {
                Ok((their_applied, their_floor)) if their_floor != floor => {
                    if their_floor > floor || their_applied >= floor {
                        join(db, &bytes);
                        waiting_since = None;
                        continue;
                    }
                    // Not reaching this proxy's start yet: its publisher renews it shortly.
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < JOIN_WAIT {
                        publish = false;
                        pause = JOIN_POLL;
                    }
                }
                // Same floor: only the freshest publishes.
                Ok((their_applied, _)) => {
                    db.set_fleet_covered(their_applied.min(applied));
                    publish &= applied > their_applied;
                }
                Err(e) => {
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(database = %db.name, error = %e,
                            "the tier holds a generations snapshot this version cannot read: it \
                             is replaced by this proxy's");
                    }
                }
            }
        }
        if publish && applied > published {
            let bytes = db.generations.snapshot(applied);
            remote.put_fleet(&name, &bytes, SNAPSHOT_TTL).await;
            db.set_fleet_covered(applied);
            published = applied;
            if bytes.len() < SMALL {
                pause = pause.min(SMALL_INTERVAL);
            }
        }
        if !started {
            pause = JOIN_POLL;
        }
        tokio::time::sleep(pause).await;
    }
}

/// Whether a snapshot that says its publisher applied up to `their_applied` comes from the server's
/// current history: its WAL reaches that far. `None` when the server could not be asked.
async fn same_history(cache: &Cache, db: &Database, their_applied: u64) -> Option<bool> {
    let mut service = Service::new(cache, &db.name, "veneer fleet");
    let rows = service.query(INSERTED_END, &[]).await.ok()?;
    let end = rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64);
    Some(their_applied <= end)
}

/// Takes in the fleet's snapshot `bytes`.
fn join(db: &Database, bytes: &[u8]) {
    match db.generations.adopt(bytes) {
        Ok((applied, true)) => {
            db.stream.joins.add(1);
            tracing::info!(database = %db.name, floor = db.generations.floor(), their_applied = applied,
                "joined the stamps of the proxies sharing the cache tier: results they stored are hits here");
        }
        Ok((_, false)) => {}
        Err(e) => tracing::warn!(database = %db.name, error = %e, "generations snapshot ignored"),
    }
}
