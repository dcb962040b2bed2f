//! Private marks waiting for the stream (see `veneer_invalidation`, "private"): a change this proxy
//! knows of before its replication stream reports it — a write through it, an operator's flush, a
//! privilege change its checks found — marks what it touched, so that this proxy's results depending
//! on it are its own. Once the stream has applied a WAL position past the change, the shared values
//! tell it to every proxy, and the mark goes, so this proxy's stamps are the fleet's again.
//!
//! Each mark waits on a [`Wait`] of the database's fence: a WAL position read after the change
//! committed, which passes once the stream has applied it (or started afresh after it).

use std::collections::VecDeque;
use std::sync::Mutex;

use veneer_invalidation::commit::FLUSH_PREFIX;
use veneer_invalidation::{Generations, Marked};

use super::fence::{Fence, Wait};
use super::service::Service;
use super::Cache;

/// Marks kept waiting at most; past it the oldest stay set for good (their results stay this
/// proxy's own, which costs sharing, never freshness).
const MAX_PENDING: usize = 65_536;

/// One database's marks waiting for its stream.
#[derive(Default)]
pub struct Marks {
    pending: Mutex<VecDeque<Pending>>,
}

struct Pending {
    targets: Vec<Marked>,
    mark: u64,
    wait: Wait,
}

impl Marks {
    /// Keeps `targets`' mark `mark` until `fence` has passed a position read from now on.
    fn wait(&self, generations: &Generations, fence: &Fence, targets: Vec<Marked>, mark: u64) {
        let wait = fence.wait(generations);
        let mut pending = self.pending.lock().expect("not poisoned");
        if pending.len() >= MAX_PENDING {
            pending.pop_front();
        }
        pending.push_back(Pending {
            targets,
            mark,
            wait,
        });
    }

    /// Clears the marks whose changes the stream has applied. Waits pass in the order they were
    /// taken, so this stops at the first that has not.
    pub fn settle(&self, generations: &Generations, fence: &Fence) {
        let mut pending = self.pending.lock().expect("not poisoned");
        while let Some(first) = pending.front() {
            if !fence.passed(&first.wait, generations) {
                return;
            }
            let done = pending.pop_front().expect("checked");
            generations.unmark(&done.targets, done.mark);
        }
    }

    /// Marks waiting, for the status.
    pub fn waiting(&self) -> usize {
        self.pending.lock().expect("not poisoned").len()
    }
}

/// What marking one database's generations takes.
#[derive(Clone, Copy)]
pub struct Marker<'a> {
    /// The database's name.
    pub database: &'a str,
    /// Its generations.
    pub generations: &'a Generations,
    /// Where its stream stands.
    pub fence: &'a Fence,
    /// Its marks waiting.
    pub marks: &'a Marks,
    /// Its results go to a tier other proxies may share: marks are cleared once the stream reports
    /// their changes (with the embedded tier nothing is shared, and marks simply stay).
    pub shared: bool,
    /// The stream reports the changes of every table (no publication, or one FOR ALL TABLES).
    /// Otherwise a write's marks stay: the stream may never report what it changed, and clearing
    /// them would bring back results stored before it.
    pub streams_every_table: bool,
}

impl Marker<'_> {
    /// Marks `targets` for a change that has committed, until the stream has applied it.
    pub fn mark(&self, targets: Vec<Marked>) {
        let mark = self.generations.mark(&targets);
        if self.shared && self.streams_every_table {
            self.marks.wait(self.generations, self.fence, targets, mark);
        }
    }

    /// Marks `targets` for a change no row records (a flush, a privilege or setting change), and
    /// tells every proxy following the database by writing `line` into the WAL (see
    /// [`FLUSH_PREFIX`]); each applies it when its stream reaches it, this one too, which clears the
    /// mark. If the message cannot be written, the mark stays: this proxy's results stay its own.
    pub async fn tell(&self, cache: &Cache, targets: Vec<Marked>, line: &str) {
        let mark = self.generations.mark(&targets);
        if !self.shared {
            return;
        }
        let mut service = Service::new(cache, self.database, "veneer flush");
        let told = service
            .query(
                "SELECT pg_catalog.pg_logical_emit_message(true, $1::text, $2::text)",
                &[&FLUSH_PREFIX, &line],
            )
            .await;
        match told {
            Ok(_) => self.marks.wait(self.generations, self.fence, targets, mark),
            Err(e) => tracing::warn!(database = %self.database, error = %e, bump = line,
                "could not write a flush notice into the WAL: other proxies sharing the tier keep \
                 the results cached before it until they change"),
        }
    }
}
