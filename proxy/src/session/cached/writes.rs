//! Write tracking: writes are followed as they are forwarded; each remembers the ReadyForQuery
//! that ends its unit, and when a ReadyForQuery shows the transaction over, the generations of
//! what it wrote are bumped before that ReadyForQuery reaches the client (write-through).

use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use veneer_invalidation::{Marked, Source};

use super::unit::{bound_key, parse_message, Forwarded, Key, Planned};
use super::{Completed, SessionCache};
use crate::cache::admin;
use crate::cache::database::{Action, Bump, Database, Plan};
use crate::cache::point::{Bind, Declared};
use crate::cache::Cache;
use crate::session::Session;
use crate::wire::frame::{cstr, frames, HEADER_LEN};

/// Writes of a session that ended before their transaction's end was seen.
pub(in crate::session) struct Unsettled {
    pub(super) cache: Arc<Cache>,
    pub(super) db: Arc<Database>,
    pub(super) bumps: Vec<Bump>,
}

impl Unsettled {
    /// Bumps everything the writes may have touched.
    pub(in crate::session) fn apply(&self) {
        SessionCache::apply(&self.cache, &self.db, &self.bumps);
    }
}

/// A write forwarded, waiting for the end of its transaction.
pub(super) struct Write {
    /// Number of the ReadyForQuery that ends the write's unit.
    pub(super) ready: u64,
    pub(super) bump: Option<Bump>,
    /// Its commit fences the session (see [`Action::Forward`]).
    pub(super) fence: bool,
    pub(super) ddl: bool,
}

/// Follows one forwarded message for write tracking (and READ ONLY blocks, begun by a simple Query;
/// `default_read_only` is the session's default_transaction_read_only, `same_encoding` whether its
/// client_encoding is the server's, `planned` the plan of a simple Query when already looked up).
pub(super) fn track(
    c: &mut SessionCache,
    tag: u8,
    body: &Bytes,
    default_read_only: bool,
    same_encoding: bool,
    planned: Option<Planned>,
) {
    let same_encoding = move || same_encoding;
    match tag {
        b'Q' => {
            let sql = &body[..body.len().saturating_sub(1)];
            if admin::command(sql).is_none() {
                let (plan, key) =
                    planned.unwrap_or_else(|| c.plan_keyed(sql, None, &same_encoding));
                note_write(c, &plan, key);
            }
            if let Some(read_only) = begins_block(sql, default_read_only) {
                c.read_only_block = read_only;
            }
            c.readies_sent += 1;
        }
        b'P' => {
            if let Some((name, rest)) = cstr(body) {
                let (sql, types) =
                    cstr(rest).map_or((&b""[..], &b""[..]), |(s, t)| (s.as_bytes(), t));
                let (plan, key) = c.plan_keyed(sql, None, &same_encoding);
                if name.is_empty() {
                    c.unnamed_stale = false;
                }
                let forwarded = Forwarded {
                    sql: body.slice_ref(sql),
                    plan,
                    key,
                    types: body.slice_ref(types),
                };
                c.statements.insert(name.to_owned(), forwarded);
            }
        }
        b'B' => {
            if let Some((portal, rest)) = cstr(body) {
                let statement = cstr(rest).map(|(s, _)| s).unwrap_or_default();
                replan_if_stale(c, statement, &same_encoding);
                match c.statements.get(statement) {
                    Some(forwarded) => {
                        let bind = Bind {
                            body,
                            types: Declared::Wire(&forwarded.types),
                        };
                        let key =
                            bound_key(&forwarded.plan, bind, &same_encoding).or(forwarded.key);
                        let plan = Arc::clone(&forwarded.plan);
                        c.portals.insert(portal.to_owned(), (plan, key))
                    }
                    None => c.portals.remove(portal),
                };
            }
        }
        b'E' => {
            let portal = cstr(body).map(|(p, _)| p).unwrap_or_default();
            match c.portals.get(portal).cloned() {
                Some((plan, key)) => note_write(c, &plan, key),
                // A portal the proxy did not see bound (or a cursor): it may do anything.
                None => c.expect_write(Some(Bump::Global), false, true),
            }
        }
        b'C' => {
            if let Some((kind, name)) = body.split_first() {
                let name = cstr(name).map(|(n, _)| n).unwrap_or_default();
                if *kind == b'S' {
                    c.statements.remove(name);
                } else {
                    c.portals.remove(name);
                }
            }
        }
        b'F' => {
            c.expect_write(Some(Bump::Global), false, true);
            c.readies_sent += 1;
        }
        b'S' => c.readies_sent += 1,
        _ => {}
    }
}

/// Whether `sql` begins a transaction block, and if so whether a READ ONLY one: `BEGIN` or
/// `START TRANSACTION` with READ ONLY (or with no access mode while the session's default is read
/// only). Only a statement alone in its query counts: anything else is not recognized, which only
/// costs hits.
pub(super) fn begins_block(sql: &[u8], default_read_only: bool) -> Option<bool> {
    let text = std::str::from_utf8(sql).ok()?;
    let text = text.trim().trim_end_matches(';');
    // Every forwarded query passes here: turn the rest away before allocating.
    let opening = text.get(..5)?;
    if !opening.eq_ignore_ascii_case("BEGIN") && !opening.eq_ignore_ascii_case("START") {
        return None;
    }
    if text.contains(';') {
        return None;
    }
    let words: Vec<String> = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_uppercase)
        .collect();
    let modes = match words.first().map(String::as_str) {
        Some("BEGIN") => &words[1..],
        Some("START") if words.get(1).map(String::as_str) == Some("TRANSACTION") => &words[2..],
        _ => return None,
    };
    let has = |a: &str, b: &str| modes.windows(2).any(|w| w[0] == a && w[1] == b);
    Some(if has("READ", "ONLY") {
        true
    } else if has("READ", "WRITE") {
        false
    } else {
        default_read_only
    })
}

/// Remembers what a forwarded statement may write (the row `key` it writes, when its plan pins one),
/// to bump when its transaction ends, and which database it drops.
pub(super) fn note_write(c: &mut SessionCache, plan: &Plan, key: Option<Key>) {
    if let Action::Forward {
        bump,
        fence,
        ddl,
        drops_database,
        ..
    } = &plan.action
    {
        if bump.is_some() || *fence {
            let bump = bump
                .as_ref()
                .map(|bump| match (bump, key.and_then(Key::bucket)) {
                    (Bump::Row(table, _), Some(bucket)) => Bump::Key(Arc::clone(table), bucket),
                    (bump, _) => bump.clone(),
                });
            c.expect_write(bump, *fence, *ddl);
        }
        if let Some(name) = drops_database {
            c.dropping = Some((name.clone(), c.readies_sent + 1));
        }
    }
}

/// Plans prepared statement `name` again if the catalog changed since its Parse, so that what its
/// executions bump follows the catalog as a simple Query's does.
fn replan_if_stale(c: &mut SessionCache, name: &str, same_encoding: &dyn Fn() -> bool) {
    let Some(forwarded) = c.statements.get(name) else {
        return;
    };
    if forwarded.plan.is_current(&c.db) {
        return;
    }
    let sql = forwarded.sql.clone();
    let (plan, key) = c.plan_keyed(&sql, None, same_encoding);
    if let Some(forwarded) = c.statements.get_mut(name) {
        (forwarded.plan, forwarded.key) = (plan, key);
    }
}

impl SessionCache {
    /// A write is being forwarded: bump `bump` (and fence the session, with `fence`) when the
    /// transaction around the unit being sent ends (its unit's ReadyForQuery is the next one this
    /// session sends for).
    pub(super) fn expect_write(&mut self, bump: Option<Bump>, fence: bool, ddl: bool) {
        self.writes.push_back(Write {
            ready: self.readies_sent + 1,
            bump,
            fence,
            ddl,
        });
    }

    /// Whether the session may be served from the cache as far as its own writes go: not while the
    /// replication stream has yet to apply a commit of its that fenced it.
    pub(super) fn fence_passed(&mut self) -> bool {
        match &self.fence {
            None => true,
            Some(wait) if self.db.fence.passed(wait, &self.db.generations) => {
                self.fence = None;
                true
            }
            Some(_) => false,
        }
    }

    /// Writes forwarded whose transaction end has not been seen: if the session ends now, they must
    /// still be bumped once the upstream has finished with them.
    pub(in crate::session) fn unsettled(&mut self) -> Option<Unsettled> {
        let bumps: Vec<Bump> = self
            .committing
            .drain(..)
            .chain(self.writes.drain(..))
            .filter_map(|w| w.bump)
            .collect();
        (!bumps.is_empty()).then(|| Unsettled {
            cache: Arc::clone(&self.cache),
            db: Arc::clone(&self.db),
            bumps,
        })
    }

    /// Bumps what `bumps` name in `db`.
    ///
    /// The write has committed but the stream has yet to report it: what it touched is marked (see
    /// [`crate::cache::marks`]), so this proxy's sessions read it at once while other proxies of a
    /// fleet see it when their streams apply it.
    pub(super) fn apply(cache: &Cache, db: &Database, bumps: &[Bump]) {
        if bumps.is_empty() {
            return;
        }
        let mut targets = Vec::new();
        for bump in bumps {
            match bump {
                Bump::Tables(tables) => {
                    targets.extend(tables.iter().cloned().map(Marked::TableEpoch));
                }
                // A key that was not read: the whole table.
                Bump::Row(table, _) => targets.push(Marked::TableEpoch(Arc::clone(table))),
                Bump::Key(table, bucket) => {
                    targets.push(Marked::Table(Arc::clone(table)));
                    targets.push(Marked::Row(*bucket));
                }
                Bump::Global => targets.push(Marked::Global),
            }
        }
        db.mark(targets);
        cache.meters.invalidation(Source::WriteThrough);
    }
}

impl Session {
    /// If the unit just forwarded drops a database, keeps that database's replication stream off (and
    /// its slot released, which Postgres requires) before the unit goes upstream, until it has ended.
    pub(super) async fn hold_dropped_database(&mut self) {
        let Some(c) = self.cache.as_mut() else {
            return;
        };
        let Some((name, ready)) = c.dropping.take() else {
            return;
        };
        if let Some(hold) = c.cache.hold_database(&name).await {
            c.holds.push((ready, hold));
        }
    }

    /// [`Session::forward`], with the plan of the unit's simple Query when already known.
    pub(super) fn forward_planned(&mut self, bytes: Bytes, mut planned: Option<Planned>) {
        let same_encoding = self.same_encoding();
        let Some(c) = self.cache.as_mut() else {
            self.to_upstream.push(bytes);
            return;
        };
        if let Some((plan, _)) = &planned {
            if let Action::Forward { reason, .. } = plan.action {
                c.cache.meters.bypass(reason);
            }
        }
        if !self.state.awaits_reply() && c.busy_since.is_none() {
            c.busy_since = Some(Instant::now());
        }
        let default_read_only = self
            .state
            .params
            .get("default_transaction_read_only")
            .is_some_and(|v| v == "on");
        let mut sent_from = 0;
        let mut offset = 0;
        let mut messages = 0;
        for (tag, body) in frames(&bytes) {
            let body = bytes.slice_ref(body);
            messages += 1;
            let needs_unnamed = match tag {
                b'B' => cstr(&body).and_then(|(_, rest)| cstr(rest)).map(|(s, _)| s) == Some(""),
                b'D' | b'C' => &body[..] == b"S\0",
                _ => false,
            };
            if needs_unnamed && c.unnamed_stale {
                if let Some(statement) = self.state.statements.get("").cloned() {
                    self.to_upstream.push(bytes.slice(sent_from..offset));
                    sent_from = offset;
                    self.to_upstream.push(parse_message(&statement));
                    self.state.on_injected_parse(statement);
                    messages += 1;
                }
                c.unnamed_stale = false;
            }
            track(
                c,
                tag,
                &body,
                default_read_only,
                same_encoding,
                planned.take(),
            );
            self.state.on_frontend(tag, &body);
            if tag == b'X' {
                // Not forwarded: see `Session::client_terminated`.
                self.client_terminated = true;
                break;
            }
            offset += HEADER_LEN + body.len();
        }
        self.to_upstream.push(bytes.slice(sent_from..offset));
        c.cache.meters.upstream_messages.add(messages);
    }

    /// Follows one backend message for the cache: tees it into a fill, and at ReadyForQuery settles
    /// the writes whose transaction ended. `range` is where the message sits in `chunk`. Returns the
    /// completed fill when this ReadyForQuery ended one that qualifies for storing.
    pub(in crate::session) fn observe_backend(
        &mut self,
        tag: u8,
        body: &[u8],
        chunk: &Bytes,
        range: std::ops::Range<usize>,
        dropped: bool,
    ) -> Option<Completed> {
        let c = self.cache.as_mut()?;
        let max = c.cache.config.max_result_bytes;
        if let Some(fill) = &mut c.fill {
            // Errors are never stored; asynchronous messages (notifications, notices, parameter
            // changes) and replies the proxy swallowed are not part of an answer to replay.
            let unfit = matches!(tag, b'E' | b'A' | b'N' | b'S') || dropped;
            if unfit || fill.size + range.len() > max {
                fill.abandon();
            } else if tag != b'Z' && fill.guard.is_some() {
                fill.parts.push(chunk.slice(range.clone()));
                fill.size += range.len();
            }
        }
        if tag != b'Z' {
            return None;
        }
        c.readies_seen += 1;
        let seen = c.readies_seen;
        c.holds.retain(|(ready, _)| *ready > seen);
        while c.writes.front().is_some_and(|w| w.ready <= c.readies_seen) {
            let write = c.writes.pop_front().expect("checked");
            c.committing.push(write);
        }
        let idle = body.first() == Some(&b'I');
        if idle {
            c.read_only_block = false;
        }
        if idle && !c.committing.is_empty() {
            let bumps: Vec<Bump> = c.committing.iter().filter_map(|w| w.bump.clone()).collect();
            SessionCache::apply(&c.cache, &c.db, &bumps);
            if c.committing.iter().any(|w| w.ddl) {
                c.db.catalog_changed();
            }
            if c.committing.iter().any(|w| w.fence) {
                c.fence = Some(c.db.fence.wait(&c.db.generations));
            }
            c.committing.clear();
        }
        let quiet = !self.state.awaits_reply();
        let fill = c.fill.take();
        let elapsed = c.busy_since.filter(|_| quiet).map(|t| t.elapsed());
        if quiet {
            c.busy_since = None;
        }
        match fill {
            Some(mut fill) => {
                let elapsed = fill.started.elapsed();
                fill.digest.miss(elapsed);
                c.cache.meters.misses.add(1);
                c.cache.meters.miss_seconds.record(elapsed);
                if !idle || fill.guard.is_none() {
                    return None;
                }
                let mut response = BytesMut::with_capacity(fill.size);
                for part in fill.parts.drain(..) {
                    response.put(part);
                }
                Some(Completed {
                    fill,
                    response: response.freeze(),
                })
            }
            None => {
                if let Some(elapsed) = elapsed {
                    c.cache.meters.passthrough_seconds.record(elapsed);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::begins_block;

    #[test]
    fn read_only_blocks_are_recognized_only_when_declared() {
        assert_eq!(begins_block(b"BEGIN READ ONLY", false), Some(true));
        assert_eq!(
            begins_block(
                b"start transaction isolation level serializable, read only;",
                false
            ),
            Some(true)
        );
        assert_eq!(begins_block(b"BEGIN", true), Some(true));
        assert_eq!(begins_block(b"BEGIN READ WRITE", true), Some(false));
        assert_eq!(begins_block(b"BEGIN", false), Some(false));
        assert_eq!(
            begins_block(b"BEGIN READ ONLY; INSERT INTO t VALUES (1)", false),
            None
        );
        assert_eq!(begins_block(b"SELECT 'BEGIN READ ONLY'", false), None);
    }
}
