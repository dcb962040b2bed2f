//! Read-your-writes for the effects of a write that the proxy cannot name. A write's own tables are
//! bumped as its transaction ends (write-through), but what its triggers, rules or functions changed
//! elsewhere reaches the cache only through the replication stream. A session that committed such a
//! write stays off the cache until the stream has applied the WAL up to its commit: it takes a
//! [`Ticket`] at the commit, and its reads go upstream (no waiting) until the ticket has passed.
//!
//! A ticket's position is where the server's WAL ends, read after the commit, so it is at or past
//! the commit's end. A restart of the stream after the commit passes it too (the new floor covers
//! the commit, see `veneer_invalidation`), which also frees the tickets a stopped stream left
//! unread. One task per followed database reads it for every ticket
//! taken since its last read (one query shared by all the sessions waiting), then has the stream ask
//! the server where it stands, so a ticket passes as soon as the stream has caught up rather than at
//! the next commit.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use veneer_invalidation::replication::INSERTED_END;
use veneer_invalidation::Generations;

use super::service::Service;
use super::Cache;
use crate::error::Error;

/// Wait before reading a position again after a failed read.
const RETRY: Duration = Duration::from_millis(250);

/// One database's fence: how far its stream has applied, and the tickets waiting for a position.
pub struct Fence {
    /// Every transaction that committed before this WAL position has been applied (bumps included).
    applied: AtomicU64,
    /// The ticket the next position read settles, shared by every session that commits before the
    /// read starts.
    next: Mutex<Option<Arc<Ticket>>>,
    /// Wakes the task that reads positions.
    wake: Notify,
    /// The furthest position a ticket waits for, which the stream asks the server to report on.
    wanted: watch::Sender<u64>,
}

/// The WAL position the stream must reach, shared by the sessions that committed before it was read.
#[derive(Debug, Default)]
struct Ticket {
    /// 0 until it has been read.
    lsn: AtomicU64,
}

/// A session's wait for the stream to apply its commit.
#[derive(Debug)]
pub struct Wait {
    ticket: Arc<Ticket>,
    /// The stream's restarts at the commit.
    restarts: u64,
}

impl Default for Fence {
    fn default() -> Self {
        Fence {
            applied: AtomicU64::new(0),
            next: Mutex::new(None),
            wake: Notify::new(),
            wanted: watch::channel(0).0,
        }
    }
}

impl Fence {
    /// The wait of a session whose transaction has just committed, in a database with `generations`.
    pub fn wait(&self, generations: &Generations) -> Wait {
        let restarts = generations.restarts();
        let ticket = Arc::clone(
            self.next
                .lock()
                .expect("not poisoned")
                .get_or_insert_with(Arc::default),
        );
        self.wake.notify_one();
        Wait { ticket, restarts }
    }

    /// Whether the stream has applied everything up to `wait`'s commit (or started afresh after
    /// it).
    pub fn passed(&self, wait: &Wait, generations: &Generations) -> bool {
        let lsn = wait.ticket.lsn.load(Ordering::Acquire);
        (lsn != 0 && self.applied.load(Ordering::Acquire) >= lsn)
            || generations.restarts() > wait.restarts
    }

    /// The stream has applied every transaction that committed before `lsn`.
    pub fn applied(&self, lsn: u64) {
        self.applied.fetch_max(lsn, Ordering::AcqRel);
    }

    /// Every transaction that committed before this WAL position has been applied.
    pub fn applied_lsn(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Has the stream ask the server where it stands until it has applied up to `lsn`.
    pub fn want(&self, lsn: u64) {
        self.wanted.send_if_modified(|w| {
            let further = lsn > *w;
            *w = (*w).max(lsn);
            further
        });
    }

    /// Follows the furthest position a ticket waits for.
    pub fn wanted(&self) -> watch::Receiver<u64> {
        self.wanted.subscribe()
    }

    /// Reads positions for the tickets taken, over a login of `service_user` to `db`; runs until
    /// dropped (with the stream it serves). Failed reads are retried: their tickets wait meanwhile.
    pub async fn settle(&self, cache: &Cache, database: &str) -> Infallible {
        let mut service = Service::new(cache, database, "veneer fence");
        let mut waiting: Vec<Arc<Ticket>> = Vec::new();
        loop {
            if waiting.is_empty() {
                self.wake.notified().await;
            }
            waiting.extend(self.next.lock().expect("not poisoned").take());
            if waiting.is_empty() {
                continue;
            }
            match position(&mut service).await {
                Ok(lsn) => {
                    for ticket in waiting.drain(..) {
                        ticket.lsn.store(lsn, Ordering::Release);
                    }
                    self.want(lsn);
                }
                Err(e) => {
                    tracing::warn!(database = %database, error = %e, retry_in = ?RETRY,
                        "could not read the WAL position for read-your-writes: sessions that \
                         wrote stay off the cache until it is read");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}

/// Where the last WAL record written ends (see [`INSERTED_END`]).
async fn position(service: &mut Service<'_>) -> Result<u64, Error> {
    let rows = service.query(INSERTED_END, &[]).await?;
    Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_passes_once_its_position_is_read_and_applied() {
        let (fence, generations) = (Fence::default(), Generations::default());
        let first = fence.wait(&generations);
        let shared = fence.wait(&generations);
        assert!(
            Arc::ptr_eq(&first.ticket, &shared.ticket),
            "one read serves every waiting session"
        );
        fence.applied(500);
        assert!(!fence.passed(&first, &generations), "no position read yet");
        let taken = fence.next.lock().unwrap().take().unwrap();
        taken.lsn.store(600, Ordering::Release);
        assert!(!fence.passed(&first, &generations));
        let later = fence.wait(&generations);
        assert!(
            !Arc::ptr_eq(&later.ticket, &first.ticket),
            "a later commit waits for a later read"
        );
        fence.applied(600);
        assert!(fence.passed(&first, &generations));
        assert!(!fence.passed(&later, &generations));
    }

    #[test]
    fn a_restart_after_the_commit_passes_a_wait() {
        let (fence, generations) = (Fence::default(), Generations::default());
        generations.restart(10);
        let wait = fence.wait(&generations);
        assert!(
            !fence.passed(&wait, &generations),
            "a restart before the commit does not count"
        );
        generations.bump_global(20);
        assert!(!fence.passed(&wait, &generations), "nor a global change");
        generations.restart(30);
        assert!(fence.passed(&wait, &generations));
    }
}
