//! The stable byte form of a cache key, for tiers outside the process.
//!
//! A remote tier outlives the proxy process and may be shared, so nothing in a stored key may depend
//! on one process or one build: scopes are named by a content hash rather than an interned id, and
//! every hash is SHA-256 (a specified output), truncated to 128 bits. The layout, version 2:
//!
//! ```text
//! veneer:2:<system identifier>:<timeline>:<fleet, 16 hex digits>:         (the namespace, ASCII)
//! <scope: 16 bytes><request and definition: 16 bytes><stamp: 8 bytes, big-endian>
//! ```
//!
//! The namespace holds the server's system identifier and timeline, so two servers sharing one tier
//! never meet and a failover or point-in-time restore (a new timeline) starts afresh. Stamps are
//! WAL positions every proxy following the server computes alike, or values private to one process
//! that no other computes (see `veneer_invalidation`), so every proxy of a fleet shares one
//! namespace: a result one stored is a hit for all. The fleet is named by a value derived from its
//! secret (`cache_secret`), so proxies with another secret, or none (a random one each), keep
//! apart rather than overwrite each other's values and count them forged. (Version 1 had a
//! per-process stamp origin there.) The namespace is ASCII so that `SCAN MATCH <namespace>*` finds exactly the
//! keys of one namespace, which is how a flush clears its own keys and nobody else's.

use ring::digest::{Context, SHA256};

use crate::CacheKey;

/// The version of the layout above; a change of layout takes the next number.
const FORMAT: u32 = 2;

/// A scope (database, role, settings) named by its content: equal contents give equal scopes in
/// every process and build; different contents collide with probability 2⁻¹²⁸.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scope(pub [u8; 16]);

impl Scope {
    /// The scope described by `content`.
    pub fn of(content: &[u8]) -> Scope {
        Scope(sha256_128(&[content]))
    }
}

/// The first 128 bits of SHA-256 over `parts`, each preceded by its length so that the boundaries
/// between parts are part of what is hashed.
fn sha256_128(parts: &[&[u8]]) -> [u8; 16] {
    let mut context = Context::new(&SHA256);
    for part in parts {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    let digest = context.finish();
    let mut out = [0; 16];
    out.copy_from_slice(&digest.as_ref()[..16]);
    out
}

/// Where the keys of every proxy following one server live in a tier (see the module
/// documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    prefix: Box<[u8]>,
}

impl Namespace {
    /// The namespace of results read from the server `system` on `timeline`, shared by the proxies
    /// of `fleet` (see the module documentation).
    pub fn new(system: u64, timeline: u32, fleet: u64) -> Namespace {
        Namespace {
            prefix: format!("veneer:{FORMAT}:{system}:{timeline}:{fleet:016x}:")
                .into_bytes()
                .into(),
        }
    }

    /// The ASCII prefix every key of the namespace starts with.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The stored form of `key`.
    pub fn key(&self, key: &CacheKey) -> StoredKey {
        let request = sha256_128(&[&key.request, &key.definition]);
        let mut bytes = Vec::with_capacity(self.prefix.len() + 40);
        bytes.extend_from_slice(&self.prefix);
        bytes.extend_from_slice(&key.scope.0);
        bytes.extend_from_slice(&request);
        bytes.extend_from_slice(&key.stamp.to_be_bytes());
        let half = |b: &[u8; 16]| u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
        StoredKey {
            bytes,
            route: half(&key.scope.0) ^ half(&request) ^ key.stamp.wrapping_mul(MIX),
        }
    }
}

/// An odd constant with well-spread bits (2⁶⁴ / φ), for mixing 64-bit values.
const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// A key in its stored form, with the 64 bits a sharded tier places it by: taken from its SHA-256
/// parts, so every proxy places a key on the same node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The bytes stored.
    pub bytes: Vec<u8>,
    /// Where it goes (see [`mix`]).
    pub route: u64,
}

impl StoredKey {
    /// The key of its lease (see `remote::fleet`), on the same node.
    pub fn lease(&self) -> StoredKey {
        let mut bytes = Vec::with_capacity(self.bytes.len() + 6);
        bytes.extend_from_slice(&self.bytes);
        bytes.extend_from_slice(b":lease");
        StoredKey {
            bytes,
            route: self.route,
        }
    }
}

/// splitmix64's finalizer: a fixed bijection that spreads every input bit over the output, so
/// scores of one key on different nodes are independent.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(MIX);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable 64-bit name of `text` (a node's address), for placing keys on it.
pub fn seed(text: &str) -> u64 {
    u64::from_be_bytes(
        sha256_128(&[text.as_bytes()])[..8]
            .try_into()
            .expect("8 bytes"),
    )
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn key(request: &'static [u8], definition: &'static [u8]) -> CacheKey {
        CacheKey {
            scope: Scope::of(b"db\0role\0"),
            stamp: 7,
            request: Bytes::from_static(request),
            definition: Bytes::from_static(definition),
        }
    }

    #[test]
    fn the_layout_is_stable() {
        // Pinned (and checked with Python's hashlib): a change here strands every key a running
        // fleet has stored; a new layout takes a new FORMAT instead.
        let stored = Namespace::new(7716083852855388320, 1, 0xabc)
            .key(&key(b"Q select 1", b""))
            .bytes;
        let prefix = b"veneer:2:7716083852855388320:1:0000000000000abc:";
        assert_eq!(&stored[..prefix.len()], prefix);
        assert_eq!(stored.len(), prefix.len() + 40);
        assert_eq!(&stored[stored.len() - 8..], &7u64.to_be_bytes());
        let hex: String = stored[prefix.len()..prefix.len() + 32]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "d84cf0f38702be4eab0f7219b02b775d61fce1b58657675f8d64f4b7288eb0aa"
        );
    }

    #[test]
    fn part_boundaries_are_hashed() {
        let ns = Namespace::new(1, 1, 1);
        assert_ne!(
            ns.key(&key(b"ab", b"c")).bytes,
            ns.key(&key(b"a", b"bc")).bytes
        );
    }

    #[test]
    fn servers_timelines_and_fleets_are_apart() {
        let k = key(b"Q select 1", b"");
        let keys = [
            Namespace::new(1, 1, 1).key(&k).bytes,
            Namespace::new(2, 1, 1).key(&k).bytes,
            Namespace::new(1, 2, 1).key(&k).bytes,
            Namespace::new(1, 1, 2).key(&k).bytes,
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
