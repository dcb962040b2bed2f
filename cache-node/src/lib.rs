//! Veneer's cache tier: what a stored result is keyed by, the [`CacheStore`] trait every tier
//! implements, the embedded tier ([`EmbeddedStore`], moka) that is the default, the remote tiers
//! ([`remote`]: the sharded `veneer-cache-node` tier, Redis, Valkey, Redis Cluster) and the
//! `veneer-cache-node` server itself ([`node`]).
//!
//! Stores are dumb on purpose. Freshness lives in the key (its generation stamp, see
//! `veneer-invalidation`), so a store never scans or invalidates by predicate: it maps keys to the
//! stored response bytes, bounds its memory and expires entries at their TTL.

mod embedded;
pub mod key;
pub mod node;
pub mod remote;
mod tier;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

pub use embedded::EmbeddedStore;
pub use key::{Namespace, Scope};
pub use tier::Tier;

/// What a stored response answers. Two requests share an entry only when every field is equal, which
/// is when Postgres would have sent both the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Database, role and output-affecting settings, by content.
    pub scope: Scope,
    /// The generations the result depends on, read before the request went upstream.
    pub stamp: u64,
    /// The client's request exactly as sent: a Query message, or an extended-protocol run up to Sync
    /// (statement text, parameter values and formats, result formats, protocol flavor).
    pub request: Bytes,
    /// The definition (SQL and parameter types) of a named prepared statement the request runs, which
    /// the request itself names only; empty when it runs none.
    pub definition: Bytes,
}

/// How full a store is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Entries held.
    pub entries: u64,
    /// Bytes held, per-entry overhead included.
    pub bytes: u64,
    /// The configured bound on `bytes`.
    pub max_bytes: u64,
    /// Entries removed to stay within the bound.
    pub evictions: u64,
    /// Entries removed because their TTL ran out.
    pub expirations: u64,
}

/// A cache tier. A fault inside a tier is a miss, never an error: the caller then asks upstream.
pub trait CacheStore: Send + Sync + 'static {
    /// The response stored under `key`, if any.
    fn get(&self, key: &CacheKey) -> impl Future<Output = Option<Bytes>> + Send;

    /// Stores `response` under `key` for at most `ttl`.
    fn put(&self, key: CacheKey, response: Bytes, ttl: Duration)
        -> impl Future<Output = ()> + Send;

    /// Drops every entry of this proxy's (they are already unreachable after a global bump; this
    /// frees the memory). Entries others keep in a shared tier stay.
    fn clear(&self) -> impl Future<Output = ()> + Send;

    /// Current usage, with pending bookkeeping applied first so the figures are exact.
    fn usage(&self) -> impl Future<Output = Usage> + Send;
}
