//! What one proxy knows of a database's changes, as bytes other proxies can adopt: how a proxy that
//! starts (or restarts, or lost its stream) joins the stamps of a fleet sharing a tier.
//!
//! A proxy's stream reports changes from its start on; what changed before is unknown to it, so its
//! floor is its start and its stamps differ from those of proxies that started earlier (they would
//! share no key until each dependency changes again). A snapshot carries the shared part of every
//! generation of a proxy whose knowledge runs, without a gap, from its floor up to `applied`. A proxy
//! whose own knowledge starts at or before `applied` then knows every change from the snapshot's
//! floor on (the snapshot up to `applied`, its stream from its start): it may take the snapshot's
//! floor and values ([`Generations::adopt`]) and compute the same stamps as the publisher. Values
//! only ever rise in a merge; the floor may go down, which is why adopting moves the era of private
//! stamps (see the crate documentation).
//!
//! Layout (all integers big-endian): `VGEN` and a version byte, then `applied`, `floor`, the global
//! and any-role generations (u64 each); then tables (u32 count; each a u16 name length, the name,
//! `any` and `epoch`), row buckets (u32 count; each a u32 bucket and its value) and roles (u32
//! count; each a u16 name length, the name and its value). Values at or below the floor are left
//! out: they say nothing the floor does not.

use std::sync::atomic::Ordering;

use crate::{rows, Generations};

/// The magic and version a snapshot starts with.
const MAGIC: &[u8; 5] = b"VGEN\x01";

/// Why bytes are not a snapshot.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(&'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a generations snapshot: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

/// A snapshot's `applied` and floor, read without taking it in.
pub fn header(bytes: &[u8]) -> Result<(u64, u64), Malformed> {
    let mut r = Reader(bytes);
    if r.take(MAGIC.len())? != MAGIC {
        return Err(Malformed("unknown magic or version"));
    }
    Ok((r.u64()?, r.u64()?))
}

impl Generations {
    /// The shared part of every generation, for a proxy that has applied every change up to
    /// `applied` since its floor.
    pub fn snapshot(&self, applied: u64) -> Vec<u8> {
        let floor = self.floor();
        let above = |v: u64| v > floor;
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(MAGIC);
        for v in [
            applied,
            floor,
            self.global.shared.load(Ordering::Acquire),
            self.any_role.shared.load(Ordering::Acquire),
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        let tables: Vec<_> = self
            .tables()
            .into_iter()
            .map(|(name, t)| (name, t.any().shared, t.epoch().shared))
            .filter(|&(_, any, _)| above(any))
            .collect();
        out.extend_from_slice(&(tables.len() as u32).to_be_bytes());
        for (name, any, epoch) in tables {
            put_name(&mut out, &name);
            out.extend_from_slice(&any.to_be_bytes());
            out.extend_from_slice(&epoch.to_be_bytes());
        }
        let rows: Vec<(u32, u64)> = self
            .rows
            .iter()
            .enumerate()
            .map(|(i, g)| (i as u32, g.shared.load(Ordering::Acquire)))
            .filter(|&(_, v)| above(v))
            .collect();
        out.extend_from_slice(&(rows.len() as u32).to_be_bytes());
        for (bucket, value) in rows {
            out.extend_from_slice(&bucket.to_be_bytes());
            out.extend_from_slice(&value.to_be_bytes());
        }
        let roles: Vec<(String, u64)> = {
            let roles = self.roles.read().expect("not poisoned");
            roles
                .iter()
                .map(|(name, r)| (name.to_string(), r.get().shared))
                .filter(|&(_, v)| above(v))
                .collect()
        };
        out.extend_from_slice(&(roles.len() as u32).to_be_bytes());
        for (name, value) in roles {
            put_name(&mut out, &name);
            out.extend_from_slice(&value.to_be_bytes());
        }
        out
    }

    /// Takes in the snapshot `bytes`: every shared value rises to the snapshot's where that is
    /// higher, and when the snapshot covers this proxy's own start (its `applied` is at or past this
    /// floor) the floor becomes the snapshot's, so stamps coincide with the publisher's. Returns
    /// the snapshot's `applied` and whether the floor changed.
    pub fn adopt(&self, bytes: &[u8]) -> Result<(u64, bool), Malformed> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(Malformed("unknown magic or version"));
        }
        let (applied, floor, global, any_role) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        // Parse everything before changing anything: a malformed snapshot changes nothing.
        let mut tables = Vec::new();
        for _ in 0..r.u32()? {
            tables.push((r.name()?, r.u64()?, r.u64()?));
        }
        let mut buckets = Vec::new();
        for _ in 0..r.u32()? {
            let bucket = r.u32()? as usize;
            if bucket >= rows::ROW_BUCKETS {
                return Err(Malformed("row bucket out of range"));
            }
            buckets.push((bucket, r.u64()?));
        }
        let mut roles = Vec::new();
        for _ in 0..r.u32()? {
            roles.push((r.name()?, r.u64()?));
        }
        if !r.0.is_empty() {
            return Err(Malformed("trailing bytes"));
        }
        self.global.bump(global);
        self.any_role.bump(any_role);
        for (name, any, epoch) in tables {
            let t = self.table(&name);
            t.any.bump(any);
            t.epoch.bump(epoch);
        }
        for (bucket, value) in buckets {
            self.rows[bucket].bump(value);
        }
        for (name, value) in roles {
            self.role(&name).0.bump(value);
        }
        let own = self.floor();
        // Raising the floor is always safe; lowering it is safe only if the snapshot reaches this
        // proxy's own start, so that no change between the two floors is unknown.
        let joined = floor != own && (floor > own || applied >= own);
        if joined {
            self.floor.store(floor, Ordering::Release);
            self.era.fetch_add(1, Ordering::AcqRel);
        }
        Ok((applied, joined))
    }
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
}

/// Reads a snapshot front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed("cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn name(&mut self) -> Result<String, Malformed> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes"));
        String::from_utf8(self.take(len.into())?.to_vec()).map_err(|_| Malformed("name not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dependencies, Stamp};
    use std::sync::Arc;

    fn deps(g: &Generations, table: &str) -> Dependencies {
        Dependencies {
            tables: vec![g.table(table)],
            point: None,
        }
    }

    #[test]
    fn a_later_proxy_joins_the_stamps_of_an_earlier_one() {
        let early = Generations::default();
        early.restart(100);
        early.bump_table(&early.table("orders"), 150);
        early.bump_row(7, 160);
        early.bump_role(&early.role("app"), 170);
        let late = Generations::default();
        late.restart(200);
        late.bump_table(&late.table("items"), 210);
        early.bump_table(&early.table("items"), 210);
        let before = late.encode(deps(&late, "orders").stamp(&late, None));
        assert_eq!(
            before, 200,
            "alone, the late proxy counts everything at its start"
        );

        let (applied, joined) = late.adopt(&early.snapshot(220)).expect("well formed");
        assert!(joined && applied == 220);
        for table in ["orders", "items", "untouched"] {
            assert_eq!(
                late.encode(deps(&late, table).stamp(&late, None)),
                early.encode(deps(&early, table).stamp(&early, None)),
                "{table}"
            );
        }
        assert_eq!(late.row(7), early.row(7));
        assert_eq!(late.role("app").get(), early.role("app").get());
    }

    #[test]
    fn a_snapshot_older_than_the_own_start_does_not_lower_the_floor() {
        let early = Generations::default();
        early.restart(100);
        let late = Generations::default();
        late.restart(300);
        let (_, joined) = late.adopt(&early.snapshot(250)).expect("well formed");
        assert!(!joined, "changes between 250 and 300 would be unknown");
        assert_eq!(late.floor(), 300);
        let later = Generations::default();
        later.restart(400);
        let (_, joined) = late.adopt(&later.snapshot(450)).expect("well formed");
        assert!(joined, "a higher floor is always safe");
        assert_eq!(late.floor(), 400);
    }

    #[test]
    fn joining_moves_private_stamps_and_malformed_snapshots_change_nothing() {
        let early = Generations::default();
        early.restart(100);
        let late = Generations::default();
        late.restart(200);
        let t = late.table("t");
        late.mark(&[crate::Marked::Table(Arc::clone(&t))]);
        let private = late.encode(deps(&late, "t").stamp(&late, None));
        assert!(private >= 1 << 63);
        let bytes = early.snapshot(200);
        for cut in [3, 20, bytes.len() - 1] {
            assert!(late.adopt(&bytes[..cut]).is_err());
        }
        assert_eq!(late.floor(), 200);
        late.adopt(&bytes).expect("well formed");
        let after = late.encode(deps(&late, "t").stamp(&late, None));
        assert!(after >= 1 << 63 && after != private);
        assert_eq!(
            deps(&late, "t").stamp(&late, None),
            Stamp {
                shared: 100,
                private: 1
            }
        );
    }
}
