//! The tier a proxy stores results in, chosen at start: an enum rather than a trait object, so that
//! the embedded tier's hit path stays a direct call with no boxing.

use std::time::Duration;

use bytes::Bytes;
use veneer_config::{CacheTier, TierConfig};

use crate::remote::Remote;
use crate::{CacheKey, CacheStore, EmbeddedStore, Usage};

/// Where results are stored.
pub enum Tier {
    /// In the proxy's memory.
    Embedded(EmbeddedStore),
    /// Outside it (see [`crate::remote`]); boxed, as it is far larger than the embedded store.
    Remote(Box<Remote>),
}

impl Tier {
    /// The tier `config` describes; `max_bytes` bounds the embedded one. Must be called inside a
    /// tokio runtime.
    pub fn new(config: &TierConfig, max_bytes: u64) -> Result<Tier, String> {
        Ok(match config.kind {
            CacheTier::Embedded => Tier::Embedded(EmbeddedStore::new(max_bytes)),
            _ => Tier::Remote(Box::new(Remote::new(config)?)),
        })
    }

    /// The remote tier, when that is what is in use.
    pub fn remote(&self) -> Option<&Remote> {
        match self {
            Tier::Embedded(_) => None,
            Tier::Remote(remote) => Some(remote),
        }
    }
}

impl CacheStore for Tier {
    async fn get(&self, key: &CacheKey) -> Option<Bytes> {
        match self {
            Tier::Embedded(store) => store.get(key).await,
            Tier::Remote(remote) => remote.get(key).await,
        }
    }

    async fn put(&self, key: CacheKey, response: Bytes, ttl: Duration) {
        match self {
            Tier::Embedded(store) => store.put(key, response, ttl).await,
            Tier::Remote(remote) => remote.put(key, response, ttl).await,
        }
    }

    async fn clear(&self) {
        match self {
            Tier::Embedded(store) => store.clear().await,
            Tier::Remote(remote) => remote.clear().await,
        }
    }

    async fn usage(&self) -> Usage {
        match self {
            Tier::Embedded(store) => store.usage().await,
            Tier::Remote(remote) => remote.usage().await,
        }
    }
}
