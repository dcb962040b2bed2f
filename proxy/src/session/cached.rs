//! The cache inside a session: client requests are taken in *units* — one simple Query, or an
//! extended-protocol run up to its Sync — and each unit is answered from the cache, loaded lazily
//! from upstream, or forwarded. Responses keep the client's order because a cacheable unit is
//! decided only when the upstream has answered everything before it; other units are forwarded at
//! once, so pass-through pipelining is untouched.
//!
//! A stored answer is the upstream's exact bytes for an equal unit (same scope, same request bytes,
//! same statement definition, same generation stamp), everything after the request up to, not
//! including, ReadyForQuery; a hit replays it and appends ReadyForQuery(idle). Units with an unnamed
//! Parse are answered locally too, so drivers that Parse on every call still cost no round trip; the
//! upstream learns the statement only if a later forwarded message needs it (materialization).
//!
//! Writes are followed as they are forwarded: each remembers the ReadyForQuery that ends its unit, and
//! when a ReadyForQuery shows the transaction over, the generations of what it wrote are bumped before
//! that ReadyForQuery reaches the client (write-through).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::watch;
use veneer_cache_node::{CacheKey, CacheStore, Scope, Tier};
use veneer_invalidation::{Generations, Source};

use super::state::{NameMap, PreparedStatement, TxStatus};
use super::Session;
use crate::cache::admin::{self, Command};
use crate::cache::database::{Action, Attached, Bump, Database, Plan};
use crate::cache::digest::{Digest, Shape};
use crate::cache::fence::Wait;
use crate::cache::point::{Bind, Declared, Values};
use crate::cache::privileges::RoleSession;
use crate::cache::verify::{self, Sample};
use crate::cache::{Cache, DatabaseHold, Flight, FlightGuard};
use crate::error::Error;
use crate::passthrough::Reason;
use crate::wire::frame::{cstr, frames, Header, HEADER_LEN};

/// Distinct statements one cacheable unit may run (a longer pipeline is forwarded).
const MAX_UNIT_STATEMENTS: usize = 4;

/// Bytes of an unfinished extended-protocol run held back while waiting for its Sync; past this the
/// run is forwarded uncached, so a huge pipeline never waits in the proxy.
const MAX_HELD_RUN: usize = 64 * 1024;

/// ReadyForQuery(idle): what ends a replayed answer outside a transaction block.
const READY_IDLE: &[u8] = b"Z\0\0\0\x05I";

/// ReadyForQuery(in a block): what ends one inside a READ ONLY transaction block.
const READY_IN_BLOCK: &[u8] = b"Z\0\0\0\x05T";

/// The cache state of one session.
pub(super) struct SessionCache {
    cache: Arc<Cache>,
    db: Attached,
    /// Database, role, the role's settings digest and startup parameters: the fixed part of the
    /// scope.
    identity: Vec<u8>,
    /// The session's role: its generation and settings (see [`crate::cache::privileges`]).
    role: RoleSession,
    /// The session switched roles (`SET ROLE`, `SET SESSION AUTHORIZATION`) in the settings its
    /// scope was made for: its reads depend on every role's generation.
    role_switched: bool,
    /// The startup parameters that are settings, as a check of a hit replays them (see
    /// [`crate::cache::verify`]); `None` when an `options` string holds more than `-c` settings.
    startup_settings: Option<Vec<(String, String)>>,
    /// `SessionState::scope_version` and the scope computed for it.
    scope: Option<(u64, Scope)>,
    /// A unit taken from the client buffer whose lookup is under way (kept across awaits).
    current: Option<Unit>,
    /// Set while an identical miss of another session is in flight: this one waits for it.
    waiting: Option<(watch::Receiver<()>, tokio::time::Instant)>,
    /// The identical miss this session waited for took longer than the wait allowed: the current
    /// unit goes upstream itself.
    flight_given_up: bool,
    /// The response being teed into the cache.
    fill: Option<Fill>,
    /// Statement and portal plans as forwarded (before the upstream confirms), for write tracking,
    /// with the row key each writes when known.
    statements: NameMap<Forwarded>,
    portals: NameMap<(Arc<Plan>, Option<Key>)>,
    /// ReadyForQuery messages the forwarded requests will produce (the startup's counts as the first),
    /// and how many arrived.
    readies_sent: u64,
    readies_seen: u64,
    /// Writes whose unit has not ended yet.
    writes: VecDeque<Write>,
    /// Writes of the transaction in progress, bumped when it ends.
    committing: Vec<Write>,
    /// A DROP DATABASE just forwarded, not yet sent: the database named, and the number of the
    /// ReadyForQuery that ends it. Its stream is held off before the bytes go out.
    dropping: Option<(String, u64)>,
    /// Holds on dropped databases' streams, each released by the ReadyForQuery numbered with it.
    holds: Vec<(u64, DatabaseHold)>,
    /// The client's unnamed statement was answered locally and does not exist upstream.
    unnamed_stale: bool,
    /// When the upstream became busy with a forwarded request, for the pass-through latency.
    busy_since: Option<Instant>,
    /// The transaction block in progress was declared READ ONLY (see `cache_read_only_transactions`).
    read_only_block: bool,
    /// Set when the session committed a write with effects only the replication stream reports:
    /// its reads stay off the cache until the stream has applied that commit.
    fence: Option<Wait>,
    /// Reused for the shape of each statement looked up, so plan lookups do not allocate (behind an
    /// uncontended lock only because plan lookups happen through shared references).
    shape: Mutex<Shape>,
}

/// A statement as forwarded in a Parse.
struct Forwarded {
    plan: Arc<Plan>,
    /// The row key its text alone gives.
    key: Option<Key>,
    /// The Parse body's parameter types (after the SQL text), for a Bind's parameters to give its
    /// row key.
    types: Bytes,
}

/// Writes of a session that ended before their transaction's end was seen.
pub(super) struct Unsettled {
    cache: Arc<Cache>,
    db: Arc<Database>,
    bumps: Vec<Bump>,
}

impl Unsettled {
    /// Bumps everything the writes may have touched.
    pub(super) fn apply(&self) {
        SessionCache::apply(&self.cache, &self.db, &self.bumps);
    }
}

struct Write {
    /// Number of the ReadyForQuery that ends the write's unit.
    ready: u64,
    bump: Option<Bump>,
    /// Its commit fences the session (see [`Action::Forward`]).
    fence: bool,
    ddl: bool,
}

/// A statement's plan and the row key its text gives.
type Planned = (Arc<Plan>, Option<Key>);

/// A unit taken from the client buffer.
struct Unit {
    bytes: Bytes,
    what: What,
}

/// What a unit is.
enum What {
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
enum Key {
    /// Not read yet (or not a point lookup): the whole table counts.
    #[default]
    Unset,
    /// The key's bucket.
    Bucket(usize),
    /// Not readable, or the unit looks up several keys with one statement: the whole table counts.
    Unknown,
}

impl Key {
    fn bucket(self) -> Option<usize> {
        match self {
            Key::Bucket(b) => Some(b),
            Key::Unset | Key::Unknown => None,
        }
    }
}

/// What the cache needs of a cacheable unit.
#[derive(Default)]
struct Candidate {
    plans: [Option<Arc<Plan>>; MAX_UNIT_STATEMENTS],
    /// The row key each plan looks up.
    keys: [Key; MAX_UNIT_STATEMENTS],
    /// Definition of the statement the unit runs without parsing it (a named or earlier unnamed
    /// one); empty when the unit parses what it runs.
    definition: Bytes,
    /// Where the body of the unit's unnamed Parse sits in the unit's bytes: a hit must apply it to
    /// the session state.
    parse: Option<std::ops::Range<usize>>,
    /// The slot of the plans holding that Parse's plan.
    parse_slot: Option<usize>,
    /// The unit has bound the unnamed portal.
    bound: bool,
}

/// A miss being loaded: the response is collected as slices of the upstream's reads.
struct Fill {
    key: CacheKey,
    ttl: std::time::Duration,
    digest: Arc<Digest>,
    guard: Option<FlightGuard>,
    parts: Vec<Bytes>,
    size: usize,
    started: Instant,
}

/// A fill whose response completed and qualifies for storing.
pub(super) struct Completed {
    fill: Fill,
    response: Bytes,
}

impl SessionCache {
    /// The cache state of a session of `user` on `database` with the startup `params`.
    pub(super) fn new(
        cache: Arc<Cache>,
        user: &str,
        database: &str,
        params: &[(String, String)],
    ) -> SessionCache {
        let db = cache.database(database).attach();
        let role = db.privileges.attach(&db.generations, user);
        let mut identity = Vec::new();
        put_fields(&mut identity, [database, user]);
        identity.extend_from_slice(&role.settings().to_le_bytes());
        put_settings(
            &mut identity,
            params.iter().map(|(k, v)| (k, v)),
            &["user", "database"],
        );
        SessionCache {
            db,
            cache,
            identity,
            role,
            role_switched: false,
            startup_settings: startup_settings(params),
            scope: None,
            current: None,
            waiting: None,
            flight_given_up: false,
            fill: None,
            statements: NameMap::default(),
            portals: NameMap::default(),
            readies_sent: 1,
            readies_seen: 0,
            writes: VecDeque::new(),
            committing: Vec::new(),
            dropping: None,
            holds: Vec::new(),
            unnamed_stale: false,
            busy_since: None,
            read_only_block: false,
            fence: None,
            shape: Mutex::new(Shape::default()),
        }
    }

    /// The plan of statement text `sql` and, when it is a point lookup (or a write of one row key)
    /// whose key the text (or `bind`) gives, what the request's key is.
    fn plan_keyed(
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

    /// A write is being forwarded: bump `bump` (and fence the session, with `fence`) when the
    /// transaction around the unit being sent ends (its unit's ReadyForQuery is the next one this
    /// session sends for).
    fn expect_write(&mut self, bump: Option<Bump>, fence: bool, ddl: bool) {
        self.writes.push_back(Write {
            ready: self.readies_sent + 1,
            bump,
            fence,
            ddl,
        });
    }

    /// Whether the session may be served from the cache as far as its own writes go: not while the
    /// replication stream has yet to apply a commit of its that fenced it.
    fn fence_passed(&mut self) -> bool {
        match &self.fence {
            None => true,
            Some(wait) if self.db.fence.passed(wait, &self.db.generations) => {
                self.fence = None;
                true
            }
            Some(_) => false,
        }
    }

    /// Whether the session waits for another session's identical miss.
    pub(super) fn waiting(&mut self) -> Option<(&mut watch::Receiver<()>, tokio::time::Instant)> {
        self.waiting.as_mut().map(|(rx, deadline)| (rx, *deadline))
    }

    /// The identical miss this session waited for has ended: look again.
    pub(super) fn stop_waiting(&mut self) {
        if let Some((_, deadline)) = self.waiting.take() {
            // The other session's miss may wait on its own client or a stuck upstream: past the
            // bound, this one asks upstream itself.
            self.flight_given_up = tokio::time::Instant::now() >= deadline;
        }
    }

    /// Whether nothing of the session's is in flight, waiting or unsettled, so that its upstream
    /// connection can serve another client.
    pub(super) fn is_quiet(&self) -> bool {
        self.current.is_none()
            && self.waiting.is_none()
            && self.fill.is_none()
            && self.writes.is_empty()
            && self.committing.is_empty()
            && self.dropping.is_none()
            && self.holds.is_empty()
            && self.readies_sent == self.readies_seen
    }

    /// Writes forwarded whose transaction end has not been seen: if the session ends now, they must
    /// still be bumped once the upstream has finished with them.
    pub(super) fn unsettled(&mut self) -> Option<Unsettled> {
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
    fn apply(cache: &Cache, db: &Database, bumps: &[Bump]) {
        for bump in bumps {
            match bump {
                Bump::Tables(tables) => tables
                    .iter()
                    .for_each(|t| db.generations.bump_table_epoch(t)),
                // A key that was not read: the whole table.
                Bump::Row(table, _) => db.generations.bump_table_epoch(table),
                Bump::Key(table, bucket) => {
                    db.generations.bump_table(table);
                    db.generations.bump_row(*bucket);
                }
                Bump::Global => db.generations.bump_global(),
            }
        }
        if !bumps.is_empty() {
            cache.meters.invalidation(Source::WriteThrough);
        }
    }
}

impl Session {
    /// Takes units from the client buffer and serves, loads or forwards them, until the buffer holds no
    /// complete unit or a cacheable unit must wait (for the upstream to answer what came before it, or
    /// for an identical miss in flight). Cancel-safe: the unit under lookup is kept in `current`.
    pub(super) async fn dispatch(&mut self) -> Result<(), Error> {
        loop {
            match &self.cache {
                None => return Ok(()),
                Some(c) if c.waiting.is_some() => return Ok(()),
                Some(c) if c.current.is_some() => {}
                Some(_) => {
                    let Some((len, what)) = self.next_unit()? else {
                        return Ok(());
                    };
                    if !matches!(what, What::Forward(_)) && self.state.awaits_reply() {
                        // Decided once everything before it has been answered.
                        return Ok(());
                    }
                    let bytes = self.client_buf.split_to(len).freeze();
                    self.traffic.from_client += len as u64;
                    if let What::Forward(planned) = what {
                        self.forward_planned(bytes, planned);
                        self.hold_dropped_database().await;
                        continue;
                    }
                    self.cache.as_mut().expect("matched").current = Some(Unit { bytes, what });
                }
            }
            self.decide().await;
        }
    }

    /// If the unit just forwarded drops a database, keeps that database's replication stream off (and
    /// its slot released, which Postgres requires) before the unit goes upstream, until it has ended.
    async fn hold_dropped_database(&mut self) {
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

    /// Serves, loads or forwards the current unit.
    async fn decide(&mut self) {
        let started = Instant::now();
        let Some(c) = self.cache.as_ref() else {
            return;
        };
        let cache = Arc::clone(&c.cache);
        let Some(unit) = c.current.as_ref() else {
            return;
        };
        if let What::Admin(command) = &unit.what {
            let command = command.clone();
            let reply =
                admin::answer(&cache, &command, self.is_admin(), self.state.tx.wire()).await;
            self.to_client.push(reply);
            self.cache.as_mut().expect("checked").current = None;
            return;
        }
        if let Some(reason) = self.uncacheable_state() {
            self.bypass(reason);
            return;
        }
        if !cache.serves(&self.cache.as_ref().expect("checked").db) {
            self.bypass(Reason::ReplicationDown);
            return;
        }
        let c = self.cache.as_mut().expect("checked");
        if !c.db.privileges.ready() {
            self.bypass(Reason::PrivilegesNotChecked);
            return;
        }
        if c.role.uncertain() {
            self.bypass(Reason::RoleSettingsChanged);
            return;
        }
        let newest = match c.current.as_ref().map(|u| &u.what) {
            Some(What::Cacheable(candidate)) => candidate.newest_table(),
            _ => 0,
        };
        if !c.db.privileges.covers(newest) {
            let db = Arc::clone(&c.db);
            let limit = self.shared.config.connect_timeout;
            if !db.privileges.cover(newest, limit).await {
                self.bypass(Reason::PrivilegesNotChecked);
                return;
            }
        }
        if !self.cache.as_mut().expect("checked").fence_passed() {
            self.bypass(Reason::OwnWriteNotApplied);
            return;
        }
        let key = self.key();
        if let Some(response) = cache.store.get(&key).await {
            cache.hot.hit(&key);
            self.serve_hit(response, started, key.stamp);
            return;
        }
        if self.state.tx != TxStatus::Idle {
            // A read-only block's snapshot may be older than the generations just read: its answer
            // must not be stored under them.
            self.bypass(Reason::ReadOnlyTransactionMiss);
            return;
        }
        let c = self.cache.as_mut().expect("checked");
        if std::mem::take(&mut c.flight_given_up) {
            self.bypass(Reason::CoalescedMissTooSlow);
            return;
        }
        let guard = match cache.flight(&key) {
            Flight::Follower(rx) => {
                cache.meters.coalesced.add(1);
                let deadline = tokio::time::Instant::now() + self.shared.config.connect_timeout;
                c.waiting = Some((rx, deadline));
                return;
            }
            Flight::Leader(guard) => guard,
        };
        let unit = c.current.take().expect("checked");
        let What::Cacheable(candidate) = unit.what else {
            unreachable!("admin units returned above and forwarded ones are never current")
        };
        let (ttl, digest) = candidate.ttl_and_digest();
        c.fill = Some(Fill {
            key,
            ttl,
            digest,
            guard: Some(guard),
            parts: Vec::new(),
            size: 0,
            started,
        });
        self.forward(unit.bytes);
    }

    /// A superuser, or a role in admin_users, may run the privileged admin commands.
    fn is_admin(&self) -> bool {
        self.state.params.get("is_superuser").map(String::as_str) == Some("on")
            || self.shared.config.admin_users.contains(&self.user)
    }

    /// Why the session's state rules the cache out right now, if it does.
    fn uncacheable_state(&self) -> Option<Reason> {
        if self.state.tx != TxStatus::Idle && !self.in_read_only_block() {
            Some(Reason::InTransaction)
        } else if self.state.settings.is_opaque() {
            Some(Reason::SessionSettingsUnknown)
        } else if self.state.temp_tables {
            Some(Reason::SessionHasTempTables)
        } else {
            None
        }
    }

    /// Whether hits may be served in the transaction block in progress: one declared READ ONLY, when
    /// the configuration allows it. Such a block cannot write, so it cannot miss its own writes.
    fn in_read_only_block(&self) -> bool {
        self.state.tx == TxStatus::InBlock
            && self
                .cache
                .as_ref()
                .is_some_and(|c| c.read_only_block && c.cache.config.read_only_transactions)
    }

    /// Forwards the current unit uncached, counting why.
    fn bypass(&mut self, reason: Reason) {
        let c = self.cache.as_mut().expect("only called with a cache");
        c.cache.meters.bypass(reason);
        let unit = c.current.take().expect("only called with a current unit");
        self.forward(unit.bytes);
    }

    /// The cache key of the current unit.
    fn key(&mut self) -> CacheKey {
        let version = self.state.scope_version();
        let c = self.cache.as_mut().expect("only called with a cache");
        let scope = match c.scope {
            Some((v, id)) if v == version => id,
            _ => {
                let mut content = c.identity.clone();
                put_settings(&mut content, self.state.params.iter(), &[]);
                content.push(0);
                put_fields(&mut content, self.state.settings.history());
                c.role_switched = self.state.settings.history().any(|sql| switches_role(sql));
                let id = Scope::of(&content);
                c.scope = Some((version, id));
                id
            }
        };
        let unit = c.current.as_ref().expect("only called with a current unit");
        let What::Cacheable(candidate) = &unit.what else {
            unreachable!("keys are only made for cacheable units")
        };
        let mut stamp =
            stamp(&candidate.plans, &candidate.keys, &c.db.generations).max(c.role.generation());
        if c.role_switched {
            stamp = stamp.max(c.db.generations.any_role());
        }
        CacheKey {
            scope,
            stamp,
            request: unit.bytes.clone(),
            definition: candidate.definition.clone(),
        }
    }

    /// Replays a stored answer for the current unit.
    fn serve_hit(&mut self, response: Bytes, started: Instant, stamp: u64) {
        let c = self.cache.as_mut().expect("only called with a cache");
        let unit = c.current.take().expect("only called with a current unit");
        let What::Cacheable(candidate) = unit.what else {
            unreachable!("hits are only looked up for cacheable units")
        };
        // Only with verification on does a hit pay for more than the lookup (see `verify_sample`).
        if let Some(cache) = c.cache.verifier.is_some().then(|| Arc::clone(&c.cache)) {
            let verifier = cache.verifier.as_ref().expect("checked");
            if verifier.sampled() {
                match self.sample(&unit.bytes, &candidate, response.clone(), stamp) {
                    Some(sample) => verifier.submit(&cache, sample),
                    None => cache.meters.verify_skipped("startup_options"),
                }
            }
        }
        let c = self.cache.as_mut().expect("only called with a cache");
        if let Some(range) = candidate.parse.clone() {
            let body = unit.bytes.slice(range);
            // An unnamed Parse's body is its empty name's NUL, then the definition.
            let same = self
                .state
                .statements
                .get("")
                .is_some_and(|s| s.definition[..] == body[1..]);
            if !same {
                self.state.on_local_parse(&body);
                c.unnamed_stale = true;
            }
        }
        let len = response.len();
        let ready = match self.state.tx {
            TxStatus::Idle => READY_IDLE,
            _ => READY_IN_BLOCK,
        };
        self.traffic.to_client += (len + ready.len()) as u64;
        self.to_client.push(response);
        self.to_client.push(Bytes::from_static(ready));
        let elapsed = started.elapsed();
        let (_, digest) = candidate.ttl_and_digest();
        digest.hit(elapsed, len);
        c.cache.meters.hits.add(1);
        c.cache.meters.hit_seconds.record(elapsed);
    }

    /// What a check of the hit of `request` (served as `served` under `stamp`) needs of the
    /// session; `None` when its startup options cannot be replayed.
    fn sample(
        &self,
        request: &Bytes,
        candidate: &Candidate,
        served: Bytes,
        stamp: u64,
    ) -> Option<Sample> {
        let c = self.cache.as_ref()?;
        let mut settings = c.startup_settings.clone()?;
        settings.extend(verify::SETTABLE.iter().filter_map(|name| {
            let value = self.state.params.get(*name)?;
            Some(((*name).to_owned(), value.clone()))
        }));
        // The statement it runs without parsing it, by the name its Bind or Describe gives.
        let statement = (!candidate.definition.is_empty())
            .then(|| {
                frames(request).find_map(|(tag, body)| match tag {
                    b'B' => cstr(cstr(body)?.1).map(|(name, _)| name.to_owned()),
                    b'D' if body.first() == Some(&b'S') => {
                        cstr(&body[1..]).map(|(n, _)| n.to_owned())
                    }
                    _ => None,
                })
            })
            .flatten()
            .map(|name| (name, candidate.definition.clone()));
        let (plans, keys) = (candidate.plans.clone(), candidate.keys);
        let db = Arc::clone(&c.db);
        let (_, digest) = candidate.ttl_and_digest();
        Some(Sample {
            db: Arc::clone(&c.db),
            role: self
                .state
                .params
                .get("session_authorization")
                .unwrap_or(&self.user)
                .clone(),
            settings,
            history: self.state.settings.history().cloned().collect(),
            statement,
            request: request.clone(),
            served,
            stamp,
            restamp: Box::new(move || self::stamp(&plans, &keys, &db.generations)),
            shape: digest.text.clone(),
        })
    }

    /// Sends a unit upstream, following what it does: session state, plans of the statements and
    /// portals it creates, writes it makes, and the unnamed statement it may need recreated first.
    pub(super) fn forward(&mut self, bytes: Bytes) {
        self.forward_planned(bytes, None);
    }

    /// [`Session::forward`], with the plan of the unit's simple Query when already known.
    fn forward_planned(&mut self, bytes: Bytes, mut planned: Option<Planned>) {
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
    pub(super) fn observe_backend(
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

    /// Stores a completed fill, then ends its flight (followers look again and hit). A remote
    /// tier's write leaves the session's I/O loop: it runs on its own task.
    pub(super) async fn store(&self, completed: Completed) {
        let Some(c) = self.cache.as_ref() else {
            return;
        };
        let Completed { fill, response } = completed;
        let cache = Arc::clone(&c.cache);
        let put = async move {
            cache.store.put(fill.key, response, fill.ttl).await;
            drop(fill.guard);
        };
        match c.cache.store {
            Tier::Embedded(_) => put.await,
            Tier::Remote(_) => {
                tokio::spawn(put);
            }
        }
    }

    /// Peeks at the unit at the front of the client buffer: its length and what it is, or `None`
    /// when it is not complete yet.
    fn next_unit(&self) -> Result<Option<(usize, What)>, Error> {
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
    fn extended_unit(&self, buf: &[u8], max: usize) -> Result<Option<(usize, What)>, Error> {
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
    fn extend(
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
    fn uses(
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
    fn same_encoding(&self) -> bool {
        let params = &self.state.params;
        params.get("client_encoding") == params.get("server_encoding")
    }
}

/// The row key `bind` gives to `plan`, when its key comes from Bind parameters.
fn bound_key(plan: &Plan, bind: Bind<'_>, same_encoding: &dyn Fn() -> bool) -> Option<Key> {
    let point = plan.point().filter(|p| p.needs_bind())?;
    Some(
        point
            .bound_bucket(bind, same_encoding)
            .map_or(Key::Unknown, Key::Bucket),
    )
}

/// The stamp of a unit's `plans`, each with the row key it looks up, read from `generations` now.
fn stamp(
    plans: &[Option<Arc<Plan>>; MAX_UNIT_STATEMENTS],
    keys: &[Key; MAX_UNIT_STATEMENTS],
    generations: &Generations,
) -> u64 {
    plans
        .iter()
        .zip(keys)
        .filter_map(|(p, key)| match &p.as_ref()?.action {
            Action::Cache { dependencies, .. } => {
                Some(dependencies.stamp(generations, key.bucket()))
            }
            Action::Forward { .. } => None,
        })
        .max()
        .unwrap_or(0)
}

impl Candidate {
    /// The table its cacheable plans read that was read first the latest (see `TableGeneration::seq`).
    fn newest_table(&self) -> u64 {
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
    fn add(&mut self, plan: Arc<Plan>, key: Option<Key>) -> Option<usize> {
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

    /// The shortest TTL among the unit's statements, and the digest of the first.
    fn ttl_and_digest(&self) -> (std::time::Duration, Arc<Digest>) {
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

impl Fill {
    /// Stops collecting: the answer will not be stored, and waiting sessions go upstream themselves.
    fn abandon(&mut self) {
        self.parts.clear();
        self.guard = None;
    }
}

/// The settings among startup parameters: all but user, database, application_name and replication,
/// with `options` read as its `-c name=value` (or `--name=value`) settings; `None` when it holds
/// anything else.
fn startup_settings(params: &[(String, String)]) -> Option<Vec<(String, String)>> {
    let mut settings = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "user" | "database" | "application_name" | "replication" => {}
            "options" => {
                let mut words = value.split_whitespace();
                while let Some(word) = words.next() {
                    let setting = match word {
                        "-c" => words.next()?,
                        _ => word
                            .strip_prefix("-c")
                            .or_else(|| word.strip_prefix("--"))?,
                    };
                    let (name, value) = setting.split_once('=')?;
                    settings.push((name.replace('-', "_"), value.to_owned()));
                }
            }
            _ => settings.push((name.clone(), value.clone())),
        }
    }
    Some(settings)
}

/// Appends each field NUL-terminated (protocol strings hold no NUL, so the encoding is unambiguous).
fn put_fields<T: AsRef<[u8]>>(out: &mut Vec<u8>, fields: impl IntoIterator<Item = T>) {
    for field in fields {
        out.extend_from_slice(field.as_ref());
        out.push(0);
    }
}

/// Appends settings sorted by name, leaving out `skip` and application_name (which changes no output,
/// so sessions of different applications can share results).
fn put_settings<'a>(
    out: &mut Vec<u8>,
    settings: impl Iterator<Item = (&'a String, &'a String)>,
    skip: &[&str],
) {
    let mut settings: Vec<_> = settings
        .filter(|(k, _)| k.as_str() != "application_name" && !skip.contains(&k.as_str()))
        .collect();
    settings.sort();
    put_fields(out, settings.into_iter().flat_map(|(k, v)| [k, v]));
}

/// Follows one forwarded message for write tracking (and READ ONLY blocks, begun by a simple Query;
/// `default_read_only` is the session's default_transaction_read_only, `same_encoding` whether its
/// client_encoding is the server's, `planned` the plan of a simple Query when already looked up).
fn track(
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
                let types = body.slice_ref(types);
                c.statements
                    .insert(name.to_owned(), Forwarded { plan, key, types });
            }
        }
        b'B' => {
            if let Some((portal, rest)) = cstr(body) {
                let statement = cstr(rest).map(|(s, _)| s).unwrap_or_default();
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
fn begins_block(sql: &[u8], default_read_only: bool) -> Option<bool> {
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
fn note_write(c: &mut SessionCache, plan: &Plan, key: Option<Key>) {
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

/// Whether a `SET` statement of the session's settings history changes its role (`SET ROLE`, `SET
/// SESSION AUTHORIZATION`, their `RESET`s), after which its privileges are another role's.
fn switches_role(sql: &[u8]) -> bool {
    let upper = sql.to_ascii_uppercase();
    upper.windows(4).any(|w| w == b"ROLE") || upper.windows(13).any(|w| w == b"AUTHORIZATION")
}

/// A Parse message recreating `statement` as the unnamed statement.
fn parse_message(statement: &PreparedStatement) -> Bytes {
    let mut message = BytesMut::with_capacity(HEADER_LEN + 1 + statement.definition.len());
    message.put_u8(b'P');
    message.put_u32((4 + 1 + statement.definition.len()) as u32);
    message.put_u8(0);
    message.put_slice(&statement.definition);
    message.freeze()
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
