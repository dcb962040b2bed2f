//! Remote tiers: results kept outside the proxy, in `veneer-cache-node`s, Redis, Valkey or a Redis
//! Cluster ([`shards`]), sealed so the tier cannot forge them ([`seal`]), with an optional near cache
//! (the embedded store) in front for hot results.
//!
//! A remote tier is never on the critical path of correctness or availability: a lookup that does not
//! come back within the deadline is a miss, a value that does not open is a miss (and counted), a
//! node that is down is skipped. Keys carry their stamps, so the near cache needs no messages to stay
//! coherent: a bump makes its old entries unreachable as it does the tier's.

pub mod fleet;
pub mod seal;
pub mod shards;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use bytes::Bytes;
use veneer_config::{CacheTier, TierConfig};

use crate::key::Namespace;
use crate::{CacheKey, CacheStore, EmbeddedStore, Usage};
use seal::{Rejected, Seal};
use shards::{Conn, Node, Shards};

/// What a remote tier saw, beyond each node's own counters.
#[derive(Default)]
pub struct Counters {
    /// Lookups answered by the near cache.
    pub near_hits: AtomicU64,
    /// Values that did not open: written without the secret, or altered.
    pub forged: AtomicU64,
    /// Lookups made before the server's namespace was known (misses).
    pub unplaced: AtomicU64,
    /// Hits on results another proxy stored.
    pub others_hits: AtomicU64,
    /// Leases taken (misses this proxy filled for the fleet).
    pub leases: AtomicU64,
    /// Misses that waited for another proxy's fill.
    pub lease_waits: AtomicU64,
    /// Of those, the ones that fill answered.
    pub lease_wait_hits: AtomicU64,
    /// Fills not stored because their lease had expired.
    pub leases_lost: AtomicU64,
}

/// A remote tier as the proxy uses it.
pub struct Remote {
    near: Option<EmbeddedStore>,
    shards: Shards,
    seal: Seal,
    /// Known once the proxy has read the server's identity; until then lookups miss and fills are
    /// kept in the near cache only.
    namespace: RwLock<Option<Namespace>>,
    timeout: Duration,
    /// Random per process: stored with each value, to tell results other proxies filled.
    origin: u64,
    /// The tier's servers are `veneer-cache-node`s, which answer `DELIFEQ` (Redis needs `EVAL`).
    deletes_if_equal: bool,
    /// What it saw.
    pub counters: Counters,
}

/// Bytes before the response in a stored value: the origin of the proxy that stored it.
const ORIGIN: usize = 8;

impl Remote {
    /// The tier `config` describes. Connections open on first use: a tier that cannot be reached
    /// yet only costs misses. Must be called inside a tokio runtime.
    pub fn new(config: &TierConfig) -> Result<Remote, String> {
        let nodes = match config.kind {
            CacheTier::Embedded => return Err("the embedded tier is not remote".to_owned()),
            // A node is host:port, or a URL when it needs a password or TLS; Redis servers are URLs.
            CacheTier::Nodes | CacheTier::Redis => config
                .nodes
                .iter()
                .map(|n| {
                    let (name, url) = match n.contains("://") {
                        true => (redact(n), n.clone()),
                        false => (n.clone(), format!("redis://{n}")),
                    };
                    let conn = Conn::single(&url).map_err(|e| format!("'{name}': {e}"))?;
                    Ok((name, conn))
                })
                .collect::<Result<Vec<_>, String>>(),
            CacheTier::RedisCluster => {
                let name = format!("cluster {}", redact(&config.nodes[0]));
                let conn = Conn::cluster(&config.nodes).map_err(|e| format!("{name}: {e}"))?;
                Ok(vec![(name, conn)])
            }
        }
        .map_err(|e| format!("cache_nodes: {e}"))?;
        Ok(Remote {
            near: (config.near_bytes > 0).then(|| EmbeddedStore::new(config.near_bytes)),
            shards: Shards::new(nodes, config.replicas),
            seal: Seal::new(config.secret.as_deref(), config.encrypt),
            namespace: RwLock::new(None),
            timeout: config.timeout,
            origin: {
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
            },
            deletes_if_equal: config.kind == CacheTier::Nodes,
            counters: Counters::default(),
        })
    }

    /// Places keys in the namespace of the server `system` on `timeline` from now on (its identity
    /// was read, or changed), for the fleet of proxies sharing this one's secret.
    pub fn set_server(&self, system: u64, timeline: u32) {
        let namespace = Namespace::new(system, timeline, self.seal.fleet());
        let mut current = self.namespace.write().expect("not poisoned");
        if current.as_ref() != Some(&namespace) {
            tracing::info!(namespace = %String::from_utf8_lossy(namespace.prefix()),
                "remote cache tier namespace");
            *current = Some(namespace);
        }
    }

    /// The tier's nodes (one for a Redis Cluster).
    pub fn nodes(&self) -> &[Node] {
        self.shards.nodes()
    }

    /// Keys and bytes `node` reports, when it answers in time.
    pub async fn size(&self, node: &Node) -> Option<(u64, u64)> {
        self.shards.size(node).await
    }

    /// The name of the node `key` belongs on, once the namespace is known.
    pub fn owner(&self, key: &CacheKey) -> Option<&str> {
        let stored = self.stored(key)?;
        Some(&self.shards.owner(&stored).name)
    }

    fn stored(&self, key: &CacheKey) -> Option<crate::key::StoredKey> {
        let namespace = self.namespace.read().expect("not poisoned");
        namespace.as_ref().map(|ns| ns.key(key))
    }
}

impl CacheStore for Remote {
    async fn get(&self, key: &CacheKey) -> Option<Bytes> {
        if let Some(near) = &self.near {
            if let Some(response) = near.get(key).await {
                self.counters.near_hits.fetch_add(1, Ordering::Relaxed);
                return Some(response);
            }
        }
        let Some(stored) = self.stored(key) else {
            self.counters.unplaced.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let value = self.shards.get(&stored, self.timeout).await?;
        match self.seal.open(&stored.bytes, &value) {
            Ok((payload, left)) if payload.len() >= ORIGIN => {
                let origin = u64::from_be_bytes(payload[..ORIGIN].try_into().expect("8 bytes"));
                if origin != self.origin {
                    self.counters.others_hits.fetch_add(1, Ordering::Relaxed);
                }
                let response = payload.slice(ORIGIN..);
                if let Some(near) = &self.near {
                    near.put(key.clone(), response.clone(), left).await;
                }
                Some(response)
            }
            Ok(_) | Err(Rejected::Forged) => {
                if self.counters.forged.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        "a value in the remote cache tier failed its MAC check (written without \
                         cache_secret, or altered) and was ignored; veneer_cache_tier_forged_total \
                         counts them"
                    );
                }
                None
            }
            Err(Rejected::Expired) => None,
        }
    }

    async fn put(&self, key: CacheKey, response: Bytes, ttl: Duration) {
        let stored = self.stored(&key);
        if let Some(near) = &self.near {
            near.put(key, response.clone(), ttl).await;
        }
        if let Some(stored) = stored {
            let mut payload = Vec::with_capacity(ORIGIN + response.len());
            payload.extend_from_slice(&self.origin.to_be_bytes());
            payload.extend_from_slice(&response);
            let value = self.seal.seal(&stored.bytes, &payload, ttl);
            self.shards.set(&stored, value, ttl).await;
        }
    }

    /// Empties the near cache and deletes this proxy's namespace from every node that is up. In a
    /// Redis Cluster the keys stay until their TTL (they are unreachable already).
    async fn clear(&self) {
        if let Some(near) = &self.near {
            near.clear().await;
        }
        let prefix = self
            .namespace
            .read()
            .expect("not poisoned")
            .as_ref()
            .map(|ns| ns.prefix().to_vec());
        if let Some(prefix) = prefix {
            self.shards.clear(&prefix).await;
        }
    }

    /// The near cache's usage (the nodes report their own, see [`Remote::size`]).
    async fn usage(&self) -> Usage {
        match &self.near {
            Some(near) => near.usage().await,
            None => Usage::default(),
        }
    }
}

/// A redis URL without its password, for logs and diagnostics.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_kept_out_of_names() {
        assert_eq!(
            super::redact("rediss://app:s3cret@cache.example:6380/0"),
            "rediss://app:***@cache.example:6380/0"
        );
        assert_eq!(super::redact("redis://h:1"), "redis://h:1");
    }
}
