//! Unit assembly: which client messages make one cacheable unit (a simple Query, or an
//! extended-protocol run up to its Sync), and what the cache needs of it (plans, row keys, the
//! statement definition it runs).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::SessionCache;
use crate::cache::admin::{self, Command};
use crate::cache::database::{Action, Plan};
use crate::cache::digest::Digest;
use crate::cache::point::{Bind, Declared, Values};
use crate::error::Error;
use crate::session::state::PreparedStatement;
use crate::session::Session;
use crate::wire::frame::{cstr, Header, HEADER_LEN};

/// Distinct statements one cacheable unit may run (a longer pipeline is forwarded).
pub(super) const MAX_UNIT_STATEMENTS: usize = 4;

/// Bytes of an unfinished extended-protocol run held back while waiting for its Sync; past this the
/// run is forwarded uncached, so a huge pipeline never waits in the proxy.
pub(super) const MAX_HELD_RUN: usize = 64 * 1024;

/// A statement as forwarded in a Parse.
pub(super) struct Forwarded {
    /// Its text, to plan again when the catalog changes while the statement lives.
    pub(super) sql: Bytes,
    pub(super) plan: Arc<Plan>,
    /// The row key its text alone gives.
    pub(super) key: Option<Key>,
    /// The Parse body's parameter types (after the SQL text), for a Bind's parameters to give its
    /// row key.
    pub(super) types: Bytes,
}

/// A statement's plan and the row key its text gives.
pub(super) type Planned = (Arc<Plan>, Option<Key>);

/// A unit taken from the client buffer.
pub(super) struct Unit {
    pub(super) bytes: Bytes,
    pub(super) what: What,
}

/// What a unit is.
pub(super) enum What {
    /// Forward as it is; for a simple Query, with the plan and row key already looked up for it, so
    /// that following its write does not shape and plan the text a second time.
    Forward(Option<Planned>),
    /// May be answered from the cache.
    Cacheable(Candidate),
    /// An administrative command.
    Admin(Command),
}

/// The row key a statement of a unit looks up, when its plan is a point lookup.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key {
    /// Not read yet (or not a point lookup): the whole table counts.
    #[default]
    Unset,
    /// The key's bucket.
    Bucket(usize),
    /// Not readable, or the unit looks up several keys with one statement: the whole table counts.
    Unknown,
}

impl Key {
    pub(super) fn bucket(self) -> Option<usize> {
        match self {
            Key::Bucket(b) => Some(b),
            Key::Unset | Key::Unknown => None,
        }
    }
}

/// What the cache needs of a cacheable unit.
#[derive(Default)]
pub(super) struct Candidate {
    pub(super) plans: [Option<Arc<Plan>>; MAX_UNIT_STATEMENTS],
    /// The row key each plan looks up.
    pub(super) keys: [Key; MAX_UNIT_STATEMENTS],
    /// Definition of the statement the unit runs without parsing it (a named or earlier unnamed
    /// one); empty when the unit parses what it runs.
    pub(super) definition: Bytes,
    /// Where the body of the unit's unnamed Parse sits in the unit's bytes: a hit must apply it to
    /// the session state.
    pub(super) parse: Option<std::ops::Range<usize>>,
    /// The slot of the plans holding that Parse's plan.
    pub(super) parse_slot: Option<usize>,
    /// The unit has bound the unnamed portal.
    pub(super) bound: bool,
}

impl Candidate {
    /// The table its cacheable plans read that was read first the latest (see `TableGeneration::seq`).
    pub(super) fn newest_table(&self) -> u64 {
        self.plans
            .iter()
            .flatten()
            .filter_map(|p| match &p.action {
                Action::Cache { dependencies, .. } => Some(dependencies.newest_table()),
                Action::Forward { .. } => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Adds a statement's plan and, when known, the row key it looks up; returns the plan's slot,
    /// or `None` when it is not cacheable or the unit runs too many.
    pub(super) fn add(&mut self, plan: Arc<Plan>, key: Option<Key>) -> Option<usize> {
        if !matches!(plan.action, Action::Cache { .. }) {
            return None;
        }
        let slot = match self
            .plans
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| Arc::ptr_eq(p, &plan)))
        {
            Some(slot) => slot,
            None => {
                let slot = self.plans.iter().position(Option::is_none)?;
                self.plans[slot] = Some(plan);
                slot
            }
        };
        if let Some(key) = key {
            self.keys[slot] = match self.keys[slot] {
                Key::Unset => key,
                same if same == key => same,
                // One statement run with two keys in one unit: depend on the whole table.
                _ => Key::Unknown,
            };
        }
        Some(slot)
    }

    /// Counts a hit (`true`) or a miss of the unit against the tables its statements read.
    pub(super) fn count_tables(&self, hit: bool) {
        for plan in self.plans.iter().flatten() {
            if let Action::Cache { used, .. } = &plan.action {
                used.iter().for_each(|t| t.count(hit));
            }
        }
    }

    /// The shortest TTL among the unit's statements, and the digest of the first.
    pub(super) fn ttl_and_digest(&self) -> (std::time::Duration, Arc<Digest>) {
        let mut ttl = None;
        let mut digest = None;
        for plan in self.plans.iter().flatten() {
            if let Action::Cache {
                ttl: t, digest: d, ..
            } = &plan.action
            {
                ttl = Some(ttl.map_or(*t, |x: std::time::Duration| x.min(*t)));
                digest.get_or_insert_with(|| Arc::clone(d));
            }
        }
        (
            ttl.expect("a cacheable unit has a cacheable plan"),
            digest.expect("a cacheable unit has a cacheable plan"),
        )
    }
}

/// The row key `bind` gives to `plan`, when its key comes from Bind parameters.
pub(super) fn bound_key(
    plan: &Plan,
    bind: Bind<'_>,
    same_encoding: &dyn Fn() -> bool,
) -> Option<Key> {
    let point = plan.point().filter(|p| p.needs_bind())?;
    Some(
        point
            .bound_bucket(bind, same_encoding)
            .map_or(Key::Unknown, Key::Bucket),
    )
}

/// A Parse message recreating `statement` as the unnamed statement.
pub(super) fn parse_message(statement: &PreparedStatement) -> Bytes {
    let mut message = BytesMut::with_capacity(HEADER_LEN + 1 + statement.definition.len());
    message.put_u8(b'P');
    message.put_u32((4 + 1 + statement.definition.len()) as u32);
    message.put_u8(0);
    message.put_slice(&statement.definition);
    message.freeze()
}

impl SessionCache {
    /// The plan of statement text `sql` and, when it is a point lookup (or a write of one row key)
    /// whose key the text (or `bind`) gives, what the request's key is.
    pub(super) fn plan_keyed(
        &self,
        sql: &[u8],
        bind: Option<Bind<'_>>,
        same_encoding: &dyn Fn() -> bool,
    ) -> (Arc<Plan>, Option<Key>) {
        let mut shape = self.shape.lock().expect("not poisoned");
        let plan = self
            .db
            .plan(sql, &mut shape, &self.cache.config, &self.cache.digests);
        let key = match plan.point() {
            Some(point) if bind.is_some() || !point.needs_bind() => {
                let values = Values {
                    sql,
                    literals: &shape.literals,
                    bind,
                    same_encoding,
                };
                Some(point.bucket(&values).map_or(Key::Unknown, Key::Bucket))
            }
            _ => None,
        };
        (plan, key)
    }
}

impl Session {
    /// Peeks at the unit at the front of the client buffer: its length and what it is, or `None`
    /// when it is not complete yet.
    pub(super) fn next_unit(&self) -> Result<Option<(usize, What)>, Error> {
        let c = self.cache.as_ref().expect("only called with a cache");
        let max = self.shared.config.max_message_bytes;
        let buf = &self.client_buf[..];
        let Some(first) = Header::peek(buf, max).map_err(Error::client_protocol)? else {
            return Ok(None);
        };
        if buf.len() < first.total_len {
            return Ok(None);
        }
        if self.state.run_open() {
            // The rest of a run the upstream has part of (see `SessionState::run_open`).
            return Ok(Some((first.total_len, What::Forward(None))));
        }
        match first.tag {
            b'Q' => {
                let sql = &buf[HEADER_LEN..first.total_len - 1];
                if let Some(command) = admin::command(sql) {
                    return Ok(Some((first.total_len, What::Admin(command))));
                }
                let (plan, key) = c.plan_keyed(sql, None, &|| self.same_encoding());
                let what = match plan.action {
                    Action::Cache { .. } => {
                        let mut candidate = Candidate::default();
                        candidate.plans[0] = Some(plan);
                        candidate.keys[0] = key.unwrap_or_default();
                        What::Cacheable(candidate)
                    }
                    Action::Forward { .. } => What::Forward(Some((plan, key))),
                };
                Ok(Some((first.total_len, what)))
            }
            b'P' | b'B' | b'D' | b'E' => self.extended_unit(buf, max),
            _ => Ok(Some((first.total_len, What::Forward(None)))),
        }
    }

    /// An extended-protocol run: cacheable when it ends with Sync and holds only Parse (unnamed),
    /// Bind (unnamed portal), Describe and Execute (all rows) of cacheable statements.
    pub(super) fn extended_unit(
        &self,
        buf: &[u8],
        max: usize,
    ) -> Result<Option<(usize, What)>, Error> {
        let mut candidate = Some(Candidate::default());
        let mut offset = 0;
        loop {
            let header = Header::peek(&buf[offset..], max).map_err(Error::client_protocol)?;
            let Some(header) = header.filter(|h| buf.len() - offset >= h.total_len) else {
                // Incomplete: wait for the rest of a promising run, forward the rest.
                if candidate.is_some() && offset < MAX_HELD_RUN {
                    return Ok(None);
                }
                return Ok(Some((offset, What::Forward(None))));
            };
            let body = &buf[offset + HEADER_LEN..offset + header.total_len];
            offset += header.total_len;
            match header.tag {
                b'S' => {
                    let what = match candidate.filter(|c| c.bound || c.parse.is_some()) {
                        Some(c) => What::Cacheable(c),
                        None => What::Forward(None),
                    };
                    return Ok(Some((offset, what)));
                }
                b'P' | b'B' | b'D' | b'E' => {
                    if let Some(c) = candidate.take() {
                        let body_at = offset - header.total_len + HEADER_LEN;
                        candidate = self.extend(c, header.tag, body, body_at, buf);
                    }
                }
                _ => return Ok(Some((offset - header.total_len, What::Forward(None)))),
            }
            if candidate.is_none() && offset >= MAX_HELD_RUN {
                return Ok(Some((offset, What::Forward(None))));
            }
        }
    }

    /// Adds one message to a cacheable run `buf`, or rules the run out (`None`). `body_at` is where
    /// the message's body starts in the run.
    pub(super) fn extend(
        &self,
        mut candidate: Candidate,
        tag: u8,
        body: &[u8],
        body_at: usize,
        buf: &[u8],
    ) -> Option<Candidate> {
        let c = self.cache.as_ref()?;
        match tag {
            b'P' => {
                let (name, rest) = cstr(body)?;
                let (sql, _) = cstr(rest)?;
                if !name.is_empty() || candidate.parse.is_some() {
                    return None;
                }
                let (plan, key) = c.plan_keyed(sql.as_bytes(), None, &|| self.same_encoding());
                candidate.parse_slot = Some(candidate.add(plan, key)?);
                candidate.parse = Some(body_at..body_at + body.len());
            }
            b'B' => {
                let (portal, rest) = cstr(body)?;
                let (statement, _) = cstr(rest)?;
                if !portal.is_empty() {
                    return None;
                }
                candidate = self.uses(candidate, statement, Some(body), buf)?;
                candidate.bound = true;
            }
            b'D' => match body.split_first()? {
                (b'P', b"\0") if candidate.bound => {}
                (b'S', name) => candidate = self.uses(candidate, cstr(name)?.0, None, buf)?,
                _ => return None,
            },
            b'E' => {
                let (portal, rest) = cstr(body)?;
                if !portal.is_empty() || !candidate.bound || rest != [0, 0, 0, 0] {
                    return None;
                }
            }
            _ => return None,
        }
        Some(candidate)
    }

    /// A run refers to `statement` (bound by the Bind body `bind`, if it is a Bind): the unit's own
    /// unnamed Parse (found in the run `buf`), or a statement the upstream confirmed, whose
    /// definition then goes into the key.
    pub(super) fn uses(
        &self,
        mut candidate: Candidate,
        statement: &str,
        bind: Option<&[u8]>,
        buf: &[u8],
    ) -> Option<Candidate> {
        let c = self.cache.as_ref()?;
        let same_encoding = || self.same_encoding();
        if statement.is_empty() {
            if let (Some(range), Some(slot)) = (candidate.parse.clone(), candidate.parse_slot) {
                // The unit's own Parse was planned (and its literals read) already.
                if let Some(body) = bind {
                    let (_, rest) = cstr(&buf[range])?;
                    let (_, types) = cstr(rest)?;
                    let plan = Arc::clone(candidate.plans[slot].as_ref()?);
                    let bind = Bind {
                        body,
                        types: Declared::Wire(types),
                    };
                    let key = bound_key(&plan, bind, &same_encoding);
                    candidate.add(plan, key)?;
                }
                return Some(candidate);
            }
        }
        let prepared = self.state.statements.get(statement)?;
        if !candidate.definition.is_empty() && candidate.definition != prepared.definition {
            return None;
        }
        let bind = bind.map(|body| Bind {
            body,
            types: Declared::Oids(&prepared.param_types),
        });
        let (plan, key) = c.plan_keyed(&prepared.sql, bind, &same_encoding);
        candidate.add(plan, key)?;
        candidate.definition = prepared.definition.clone();
        Some(candidate)
    }

    /// Whether the session's strings arrive in the server's encoding (as the replication stream
    /// reports them), so non-ASCII strings can key rows.
    pub(super) fn same_encoding(&self) -> bool {
        let params = &self.state.params;
        params.get("client_encoding") == params.get("server_encoding")
    }
}
