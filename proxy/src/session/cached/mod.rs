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
//! This module is the lookup driver (scope, key, hit, miss and fill, bypass); [`unit`] assembles the
//! units and [`writes`] follows the writes forwarded, for write-through invalidation.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::watch;
use veneer_cache_node::remote::fleet::Lease;
use veneer_cache_node::{CacheKey, CacheStore, Scope, Tier};
use veneer_invalidation::{Generations, Stamp};

use super::state::{NameMap, TxStatus};
use super::Session;
use crate::cache::admin;
use crate::cache::database::{Action, Attached, Plan};
use crate::cache::digest::{Digest, Shape};
use crate::cache::fence::Wait;
use crate::cache::privileges::RoleSession;
use crate::cache::verify::{self, Sample};
use crate::cache::{Cache, DatabaseHold, Flight, FlightGuard};
use crate::error::Error;
use crate::passthrough::Reason;
use crate::wire::frame::{cstr, frames};

mod unit;
mod writes;

use unit::{Candidate, Forwarded, Key, Unit, What, MAX_UNIT_STATEMENTS};
use writes::Write;

/// How long a proxy's lease on a missed key in a shared tier lasts: other proxies wait this long
/// at most for its fill before asking the database themselves.
const LEASE: std::time::Duration = std::time::Duration::from_secs(2);

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
        let Some(guard) = self.lease(&cache, &key, guard, started).await else {
            return;
        };
        let c = self.cache.as_mut().expect("checked");
        let unit = c.current.take().expect("checked");
        let What::Cacheable(candidate) = unit.what else {
            unreachable!("admin units returned above and forwarded ones are never current")
        };
        let (ttl, digest) = candidate.ttl_and_digest();
        candidate.count_tables(false);
        c.db.usage.count(false);
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

    /// With a shared tier, takes the key's lease for the fleet before going upstream, or, when
    /// another proxy holds it, waits for that proxy's fill (see `veneer_cache_node::remote::fleet`):
    /// `None` when the wait was answered (the hit is served), else the guard to fill with.
    async fn lease(
        &mut self,
        cache: &Arc<Cache>,
        key: &CacheKey,
        mut guard: FlightGuard,
        started: Instant,
    ) -> Option<FlightGuard> {
        let Some(remote) = cache.store.remote() else {
            return Some(guard);
        };
        match remote.lease(key, LEASE).await {
            Lease::Taken => {
                guard.leased = true;
                // The holder before may have stored and released between this proxy's lookup
                // and its lease: look once more rather than fill a second time.
                if let Some(response) = remote.get(key).await {
                    drop(guard);
                    cache.hot.hit(key);
                    self.serve_hit(response, started, key.stamp);
                    return None;
                }
            }
            Lease::Held => {
                if let Some(response) = remote.await_fill(key, LEASE).await {
                    drop(guard);
                    cache.hot.hit(key);
                    self.serve_hit(response, started, key.stamp);
                    return None;
                }
            }
            Lease::Unavailable => {}
        }
        Some(guard)
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
            stamp: c.db.generations.encode(stamp),
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
        candidate.count_tables(true);
        c.db.usage.count(true);
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
            restamp: Box::new(move || {
                db.generations
                    .encode(self::stamp(&plans, &keys, &db.generations))
            }),
            shape: digest.text.clone(),
        })
    }

    /// Sends a unit upstream, following what it does: session state, plans of the statements and
    /// portals it creates, writes it makes, and the unnamed statement it may need recreated first.
    pub(super) fn forward(&mut self, bytes: Bytes) {
        self.forward_planned(bytes, None);
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
            let leased = fill.guard.as_ref().is_some_and(|g| g.leased);
            // A fill whose lease expired meanwhile leaves the key to the proxy that took it since.
            let lost = match cache.store.remote() {
                Some(remote) if leased => !remote.holds(&fill.key).await,
                _ => false,
            };
            if !lost {
                cache.store.put(fill.key, response, fill.ttl).await;
            }
            drop(fill.guard);
        };
        match c.cache.store {
            Tier::Embedded(_) => put.await,
            Tier::Remote(_) => {
                tokio::spawn(put);
            }
        }
    }
}

/// The stamp of a unit's `plans`, each with the row key it looks up, read from `generations` now.
fn stamp(
    plans: &[Option<Arc<Plan>>; MAX_UNIT_STATEMENTS],
    keys: &[Key; MAX_UNIT_STATEMENTS],
    generations: &Generations,
) -> Stamp {
    plans
        .iter()
        .zip(keys)
        .filter_map(|(p, key)| match &p.as_ref()?.action {
            Action::Cache { dependencies, .. } => {
                Some(dependencies.stamp(generations, key.bucket()))
            }
            Action::Forward { .. } => None,
        })
        .fold(Stamp::default(), Stamp::max)
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

/// Whether a `SET` statement of the session's settings history changes its role (`SET ROLE`, `SET
/// SESSION AUTHORIZATION`, their `RESET`s), after which its privileges are another role's.
fn switches_role(sql: &[u8]) -> bool {
    let upper = sql.to_ascii_uppercase();
    upper.windows(4).any(|w| w == b"ROLE") || upper.windows(13).any(|w| w == b"AUTHORIZATION")
}
