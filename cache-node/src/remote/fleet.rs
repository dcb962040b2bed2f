//! What proxies sharing a remote tier do together besides sharing results: single flight across
//! proxies through leases, and small values of their own (the generations snapshots by which a
//! proxy joins the others' stamps).
//!
//! **Leases**, as memcache's at Facebook: the first proxy to miss a key takes a short lease beside it
//! (`SET <key>:lease <token> NX PX <ms>` on the key's node) and looks for the value once more (a
//! holder before it may have stored and released since its first lookup); the others find it taken
//! and wait for the value instead of asking the database too, up to the lease's length, after which
//! they go upstream themselves (the holder may have died). The holder stores only while it still holds the
//! lease, then releases it with a compare-and-delete: `DELIFEQ` on a `veneer-cache-node` (as in
//! Valkey 9), a one-line `EVAL` on Redis. Keys carry their stamps, so a late fill is never read
//! stale whatever happens to a lease: leases only spare the database a stampede.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Remote;
use crate::key::StoredKey;
use crate::CacheKey;

/// Longest a lease operation or a fleet value's read or write waits for a node.
const FLEET_OP: Duration = Duration::from_millis(500);

/// The first wait between two looks for a value another proxy is filling; doubled up to
/// [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(1);
/// The longest wait between two looks.
const MAX_POLL: Duration = Duration::from_millis(8);

/// Compare-and-delete for servers without `DELIFEQ`.
const DEL_IF_EQ: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// What asking for a key's lease gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// This proxy fills the key.
    Taken,
    /// Another proxy is filling it.
    Held,
    /// The tier did not answer: go upstream without one.
    Unavailable,
}

impl Remote {
    /// Asks for the lease of `key` for `length`, in this proxy's name (its origin: within a proxy,
    /// single flight makes one session the key's filler).
    pub async fn lease(&self, key: &CacheKey, length: Duration) -> Lease {
        let Some(lease) = self.stored(key).map(|k| k.lease()) else {
            return Lease::Unavailable;
        };
        let ms = length.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        let mut cmd = redis::cmd("SET");
        cmd.arg(&lease.bytes)
            .arg(self.origin)
            .arg("NX")
            .arg("PX")
            .arg(ms);
        match self
            .shards
            .on_first::<Option<String>>(&lease, &cmd, FLEET_OP)
            .await
        {
            Ok(Some(_)) => {
                self.counters.leases.fetch_add(1, Ordering::Relaxed);
                Lease::Taken
            }
            Ok(None) => Lease::Held,
            Err(_) => Lease::Unavailable,
        }
    }

    /// Whether this proxy still holds `key`'s lease.
    pub async fn holds(&self, key: &CacheKey) -> bool {
        let Some(lease) = self.stored(key).map(|k| k.lease()) else {
            return false;
        };
        let held: Result<Option<u64>, _> = self
            .shards
            .on_first(&lease, redis::cmd("GET").arg(&lease.bytes), FLEET_OP)
            .await;
        let holds = held.is_ok_and(|h| h == Some(self.origin));
        if !holds {
            self.counters.leases_lost.fetch_add(1, Ordering::Relaxed);
        }
        holds
    }

    /// Gives `key`'s lease back, if this proxy still holds it.
    pub async fn release(&self, key: &CacheKey) {
        let Some(lease) = self.stored(key).map(|k| k.lease()) else {
            return;
        };
        let mut cmd;
        if self.deletes_if_equal {
            cmd = redis::cmd("DELIFEQ");
            cmd.arg(&lease.bytes).arg(self.origin);
        } else {
            cmd = redis::cmd("EVAL");
            cmd.arg(DEL_IF_EQ).arg(1).arg(&lease.bytes).arg(self.origin);
        }
        let _ = self
            .shards
            .on_first::<redis::Value>(&lease, &cmd, FLEET_OP)
            .await;
    }

    /// Waits up to `limit` for another proxy's fill of `key`, looking again and again (each look an
    /// ordinary lookup); `None` when none came, or when the lease went without a value (the holder
    /// did not store: an answer too large, or not one to keep).
    pub async fn await_fill(&self, key: &CacheKey, limit: Duration) -> Option<Bytes> {
        self.counters.lease_waits.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + limit;
        let mut pause = FIRST_POLL;
        loop {
            if let Some(found) = self.filled(key).await {
                return Some(found);
            }
            if !self.leased(key).await {
                // Released or expired: a value stored just before is still worth a look.
                return self.filled(key).await;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(MAX_POLL);
        }
    }

    /// `key`'s value, counted as a wait answered.
    async fn filled(&self, key: &CacheKey) -> Option<Bytes> {
        let found = crate::CacheStore::get(self, key).await;
        if found.is_some() {
            self.counters
                .lease_wait_hits
                .fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Whether anyone holds `key`'s lease (a tier that does not answer counts as yes: the wait's
    /// deadline bounds it).
    async fn leased(&self, key: &CacheKey) -> bool {
        let Some(lease) = self.stored(key).map(|k| k.lease()) else {
            return false;
        };
        self.shards
            .on_first::<bool>(&lease, redis::cmd("EXISTS").arg(&lease.bytes), FLEET_OP)
            .await
            .unwrap_or(true)
    }

    /// The proxies' own value `name` (not a result), sealed like results; `None` when absent, not
    /// readable in time, or not opening.
    pub async fn get_fleet(&self, name: &str) -> Option<Bytes> {
        let stored = self.fleet_key(name)?;
        let value = self.shards.get(&stored, FLEET_OP).await?;
        self.seal.open(&stored.bytes, &value).ok().map(|(v, _)| v)
    }

    /// Stores the proxies' own value `name` for `ttl`.
    pub async fn put_fleet(&self, name: &str, value: &[u8], ttl: Duration) {
        if let Some(stored) = self.fleet_key(name) {
            let sealed = self.seal.seal(&stored.bytes, value, ttl);
            self.shards.set(&stored, sealed, ttl).await;
        }
    }

    /// Where value `name` lives: `<namespace>fleet:<name>`, placed by its name.
    fn fleet_key(&self, name: &str) -> Option<StoredKey> {
        let namespace = self.namespace.read().expect("not poisoned");
        let prefix = namespace.as_ref()?.prefix();
        let mut bytes = Vec::with_capacity(prefix.len() + 6 + name.len());
        bytes.extend_from_slice(prefix);
        bytes.extend_from_slice(b"fleet:");
        bytes.extend_from_slice(name.as_bytes());
        Some(StoredKey {
            bytes,
            route: crate::key::seed(name),
        })
    }
}
