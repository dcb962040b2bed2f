//! What the proxy knows of one session, kept current from the messages it forwards: transaction
//! status, ParameterStatus values, the settings history (SET / RESET / DISCARD), prepared statements
//! and portals, and whether temp tables exist. The cache keys results on this state, so it must never
//! claim more than it knows: whenever the traffic does something it cannot follow, the settings are
//! marked `opaque` and the session stops sharing results with others.
//!
//! Requests and responses are matched FIFO (as in rust-postgres' connection): each frontend message
//! that gets a reply pushes a [`Pending`] entry and the backend replies pop them in order, which is what
//! lets pipelined batches be followed and lets an effect (a SET, a Parse) count only once it succeeded.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::sql_scan::{self, Effect, TxControl};
use crate::wire::frame::{cstr, parameter_status};

/// Statements, portals or server parameters by name. Names are hashed with foldhash, not SipHash: they
/// are looked up for every Bind, Execute and forwarded query, and a client choosing colliding names
/// slows only its own session.
pub type NameMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Transaction status as the last ReadyForQuery reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// Not in a transaction block ('I').
    Idle,
    /// In a transaction block ('T').
    InBlock,
    /// In a failed transaction block ('E').
    Failed,
}

impl TxStatus {
    /// The status as a ReadyForQuery message carries it.
    pub fn wire(self) -> pgwire::messages::response::TransactionStatus {
        use pgwire::messages::response::TransactionStatus;
        match self {
            TxStatus::Idle => TransactionStatus::Idle,
            TxStatus::InBlock => TransactionStatus::Transaction,
            TxStatus::Failed => TransactionStatus::Error,
        }
    }
}

/// A prepared statement known to the session (protocol-level Parse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedStatement {
    /// The statement's SQL text, as sent.
    pub sql: Bytes,
    /// Parameter type OIDs the client declared (0 = let the server infer).
    pub param_types: Vec<u32>,
    /// What executing it does to session state.
    pub effect: Effect,
    /// The Parse body after the statement's name (SQL and parameter types), copied out of the read
    /// buffer: what a cache key holds for a request that only names the statement.
    pub definition: Bytes,
}

/// A settings change in force or pending: the statement text as sent, and what kind it is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SettingChange {
    sql: Bytes,
    effect: Effect,
}

/// The SET / RESET / DISCARD history: `committed` is in force for the rest of the session, `in_tx`
/// was made by the current transaction and survives only if it commits.
#[derive(Debug, Default)]
pub struct Settings {
    committed: Vec<Bytes>,
    in_tx: Vec<SettingChange>,
    /// Set once the session did something to its settings the proxy cannot follow.
    opaque: bool,
}

impl Settings {
    /// Statements in force (committed, then the current transaction's), in order.
    pub fn history(&self) -> impl Iterator<Item = &Bytes> {
        self.committed
            .iter()
            .chain(self.in_tx.iter().map(|c| &c.sql))
    }

    /// Whether the settings can no longer be described by the history.
    pub fn is_opaque(&self) -> bool {
        self.opaque
    }

    fn commit(&mut self) {
        for change in self.in_tx.drain(..) {
            match change.effect {
                Effect::ResetAll | Effect::DiscardAll => self.committed.clear(),
                Effect::Setting { local: true } => {}
                _ => self.committed.push(change.sql),
            }
        }
    }

    /// A savepoint rollback or prepared transaction undoes or removes an unknown part of `in_tx`.
    fn lose_track_if_pending(&mut self) {
        if !self.in_tx.is_empty() {
            self.opaque = true;
            self.in_tx.clear();
        }
    }
}

/// A statement or portal name as a request sent it: a slice of the message rather than a copy, since
/// every Bind and Execute carries names. Checked as UTF-8 when taken.
#[derive(Debug)]
struct Name(Bytes);

impl Name {
    /// `name`, which lies in `body`.
    fn of(body: &Bytes, name: &str) -> Name {
        Name(body.slice_ref(name.as_bytes()))
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A frontend request still waiting for its reply.
#[derive(Debug)]
enum Pending {
    /// A simple query; ends at ReadyForQuery.
    Query(QueryProgress),
    Parse {
        name: String,
        statement: Arc<PreparedStatement>,
        /// Sent by the proxy itself (see [`SessionState::on_injected_parse`]): its reply is not the
        /// client's to see.
        silent: bool,
    },
    /// Names are resolved when the reply arrives: by then every earlier Parse has been answered, which
    /// is what makes pipelined Parse/Bind/Execute batches resolve correctly.
    Bind {
        portal: Name,
        statement: Name,
    },
    Describe,
    Execute {
        portal: Name,
    },
    Close {
        kind: u8,
        name: String,
    },
    /// Sync or FunctionCall: ends at ReadyForQuery.
    Sync,
}

/// How far a simple query's statements have completed, and those among the rest with an effect to
/// apply when they complete. Most queries have none, so following them allocates nothing.
#[derive(Debug, Default)]
struct QueryProgress {
    completed: usize,
    /// (statement number, text, effect), in order.
    effects: VecDeque<(usize, Bytes, Effect)>,
}

impl QueryProgress {
    /// The next statement completed: its text and effect, if it has one to apply.
    fn complete_next(&mut self) -> Option<(Bytes, Effect)> {
        let number = self.completed;
        self.completed += 1;
        if self.effects.front()?.0 != number {
            return None;
        }
        self.effects
            .pop_front()
            .map(|(_, sql, effect)| (sql, effect))
    }
}

impl Pending {
    fn ends_at_ready(&self) -> bool {
        matches!(self, Pending::Query(_) | Pending::Sync)
    }
}

/// The session state of one client, driven by [`SessionState::on_frontend`] and
/// [`SessionState::on_backend`] for every message that passes.
#[derive(Debug)]
pub struct SessionState {
    /// From the last ReadyForQuery.
    pub tx: TxStatus,
    /// ParameterStatus values reported by the upstream.
    pub params: NameMap<String>,
    /// SET / RESET / DISCARD history.
    pub settings: Settings,
    /// Protocol-level prepared statements by name ("" is the unnamed one).
    pub statements: NameMap<Arc<PreparedStatement>>,
    /// Open portals by name, with the statement they were bound from.
    pub portals: NameMap<Option<Arc<PreparedStatement>>>,
    /// Whether the session may have temporary tables.
    pub temp_tables: bool,
    /// Whether the session ever created temporary objects: its backend then has a temporary
    /// namespace, which outlives DISCARD ALL, so it is never handed to another client.
    pub used_temp: bool,
    /// The upstream's key for CancelRequests (BackendKeyData body).
    pub backend_key: Option<Bytes>,
    pending: VecDeque<Pending>,
    /// An error arrived since the last ReadyForQuery (the implicit transaction, if any, rolled back).
    error_since_ready: bool,
    /// Extended-protocol messages went upstream since the last Sync (or simple Query): the server
    /// holds their replies until the client's Sync or Flush, and an error skips to the Sync.
    run_open: bool,
    /// Changes whenever ParameterStatus values or the settings history may have changed.
    scope_version: u64,
}

impl Default for SessionState {
    fn default() -> Self {
        SessionState {
            tx: TxStatus::Idle,
            params: NameMap::default(),
            settings: Settings::default(),
            statements: NameMap::default(),
            portals: NameMap::default(),
            temp_tables: false,
            used_temp: false,
            backend_key: None,
            pending: VecDeque::new(),
            error_since_ready: false,
            run_open: false,
            scope_version: 0,
        }
    }
}

impl SessionState {
    /// Whether the session is between transactions with nothing in flight: the only point at which it
    /// can be closed without the client losing work.
    pub fn is_idle(&self) -> bool {
        self.tx == TxStatus::Idle && self.pending.is_empty()
    }

    /// Whether a request sent upstream has not been answered to its end yet.
    pub fn awaits_reply(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether an extended-protocol run forwarded upstream still waits for its Sync: until the Sync
    /// goes too, whatever the client sends belongs to that run (the server answers none of it before
    /// a Sync or Flush, and skips all of it to the Sync after an error), so it must be forwarded.
    pub fn run_open(&self) -> bool {
        self.run_open
    }

    /// Changes whenever what the cache-key scope is made of (ParameterStatus values, the settings
    /// history) may have changed, so the scope is recomputed only then.
    pub fn scope_version(&self) -> u64 {
        self.scope_version
    }

    /// Follows a Parse the proxy sent on its own to recreate the client's unnamed statement upstream
    /// (after hits answered the client's Parse locally); its ParseComplete is swallowed.
    pub fn on_injected_parse(&mut self, statement: Arc<PreparedStatement>) {
        self.pending.push_back(Pending::Parse {
            name: String::new(),
            statement,
            silent: true,
        });
    }

    /// Whether the next ParseComplete answers a Parse the proxy injected.
    pub fn next_reply_is_silent(&self) -> bool {
        matches!(
            self.pending.front(),
            Some(Pending::Parse { silent: true, .. })
        )
    }

    /// A Parse of the unnamed statement answered from the cache: the client now has `body`'s
    /// statement as its unnamed one (the upstream does not; see the session's materialization).
    pub fn on_local_parse(&mut self, body: &Bytes) {
        if let Some((name, statement)) = parse_message(body) {
            self.statements.insert(name, Arc::new(statement));
        }
    }

    /// Follows one complete frontend message (`body` without tag and length).
    pub fn on_frontend(&mut self, tag: u8, body: &Bytes) {
        match tag {
            // A Flush asks for what is pending without ending the run: it opens none.
            b'P' | b'B' | b'D' | b'E' | b'C' => self.run_open = true,
            b'S' | b'Q' | b'F' => self.run_open = false,
            _ => {}
        }
        match tag {
            b'Q' => {
                let sql = body.slice(..body.len().saturating_sub(1));
                let mut progress = QueryProgress::default();
                for (number, statement) in sql_scan::scan(&sql).enumerate() {
                    self.note_sent(&statement.effect);
                    if applies_at_completion(&statement.effect) {
                        let text = sql.slice(statement.span);
                        progress.effects.push_back((number, text, statement.effect));
                    }
                }
                self.pending.push_back(Pending::Query(progress));
            }
            b'P' => match parse_message(body) {
                Some((name, statement)) => {
                    self.note_sent(&statement.effect);
                    self.pending.push_back(Pending::Parse {
                        name,
                        statement: Arc::new(statement),
                        silent: false,
                    });
                }
                None => self.lose_track(),
            },
            b'B' => match cstr(body).and_then(|(portal, rest)| Some((portal, cstr(rest)?.0))) {
                Some((portal, statement)) => self.pending.push_back(Pending::Bind {
                    portal: Name::of(body, portal),
                    statement: Name::of(body, statement),
                }),
                None => self.lose_track(),
            },
            b'D' => self.pending.push_back(Pending::Describe),
            b'E' => match cstr(body) {
                Some((portal, _)) => self.pending.push_back(Pending::Execute {
                    portal: Name::of(body, portal),
                }),
                None => self.lose_track(),
            },
            b'C' => match body
                .split_first()
                .and_then(|(&kind, rest)| Some((kind, cstr(rest)?.0)))
            {
                Some((kind, name)) => self.pending.push_back(Pending::Close {
                    kind,
                    name: name.to_owned(),
                }),
                None => self.lose_track(),
            },
            b'S' | b'F' => self.pending.push_back(Pending::Sync),
            // Flush, Terminate, COPY data and password messages get no reply of their own; unknown
            // types are forwarded and Postgres's reply, if any, ends at the next ReadyForQuery.
            _ => {}
        }
    }

    /// Follows one complete backend message (`body` without tag and length).
    pub fn on_backend(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'1' => match self.pending.pop_front() {
                Some(Pending::Parse {
                    name, statement, ..
                }) => {
                    self.statements.insert(name, statement);
                }
                other => self.out_of_step(other),
            },
            b'2' => match self.pending.pop_front() {
                Some(Pending::Bind { portal, statement }) => {
                    let statement = self.statements.get(statement.as_str()).cloned();
                    self.portals.insert(portal.as_str().to_owned(), statement);
                }
                other => self.out_of_step(other),
            },
            b'3' => match self.pending.pop_front() {
                Some(Pending::Close { kind: b'S', name }) => {
                    self.statements.remove(&name);
                }
                Some(Pending::Close { name, .. }) => {
                    self.portals.remove(&name);
                }
                other => self.out_of_step(other),
            },
            b'T' | b'n' if matches!(self.pending.front(), Some(Pending::Describe)) => {
                self.pending.pop_front();
            }
            b'C' => self.on_command_complete(body),
            b'I' | b's' if matches!(self.pending.front(), Some(Pending::Execute { .. })) => {
                self.pending.pop_front();
            }
            b'E' => self.on_error(),
            b'Z' => {
                self.scope_version += 1;
                self.on_ready(body.first().copied())
            }
            b'S' => {
                self.scope_version += 1;
                if let Some((name, value)) = parameter_status(body) {
                    self.params.insert(name.to_owned(), value.to_owned());
                }
            }
            b'K' => self.backend_key = Some(Bytes::copy_from_slice(body)),
            _ => {}
        }
    }

    fn on_command_complete(&mut self, tag: &[u8]) {
        let completed = match self.pending.front_mut() {
            Some(Pending::Query(progress)) => progress.complete_next(),
            Some(Pending::Execute { portal }) => {
                let statement = self.portals.get(portal.as_str()).cloned().flatten();
                self.pending.pop_front();
                statement.map(|s| (s.sql.clone(), s.effect.clone()))
            }
            // COPY and unknown requests complete inside a Query or Sync we are not tracking closely.
            _ => None,
        };
        if let Some((sql, effect)) = completed {
            self.apply(sql, effect);
        }
        match tag.strip_suffix(b"\0").unwrap_or(tag) {
            b"COMMIT" => self.settings.commit(),
            b"ROLLBACK" => self.settings.in_tx.clear(),
            _ => {}
        }
    }

    /// Applies a statement's effect once its CommandComplete arrives.
    fn apply(&mut self, sql: Bytes, effect: Effect) {
        match effect {
            Effect::Setting { .. } | Effect::ResetAll => {
                self.settings.in_tx.push(SettingChange { sql, effect });
            }
            Effect::DiscardAll => {
                self.settings.in_tx.push(SettingChange { sql, effect });
                self.statements.clear();
                self.temp_tables = false;
            }
            Effect::DiscardTemp => self.temp_tables = false,
            Effect::Deallocate(None) => self.statements.clear(),
            Effect::Deallocate(Some(name)) => self
                .statements
                .retain(|k, _| !k.eq_ignore_ascii_case(&name)),
            Effect::Transaction(TxControl::RollbackToSavepoint)
            | Effect::Transaction(TxControl::PrepareTransaction) => {
                self.settings.lose_track_if_pending()
            }
            Effect::Opaque => self.settings.opaque = true,
            Effect::CreatesTemp | Effect::None => {}
        }
    }

    /// Effects that must hold from the moment a statement is sent, whatever its outcome.
    fn note_sent(&mut self, effect: &Effect) {
        if *effect == Effect::CreatesTemp {
            self.temp_tables = true;
            self.used_temp = true;
        }
    }

    fn on_error(&mut self) {
        self.error_since_ready = true;
        match self.pending.front_mut() {
            Some(Pending::Query(progress)) => progress.effects.clear(),
            Some(Pending::Sync) | None => {}
            Some(_) => {
                // The server skips everything up to the next Sync: so do the replies.
                while self.pending.front().is_some_and(|p| !p.ends_at_ready()) {
                    self.pending.pop_front();
                }
            }
        }
    }

    fn on_ready(&mut self, status: Option<u8>) {
        while let Some(p) = self.pending.pop_front() {
            if p.ends_at_ready() {
                break;
            }
            self.out_of_step(Some(p));
        }
        self.tx = match status {
            Some(b'T') => TxStatus::InBlock,
            Some(b'E') => TxStatus::Failed,
            _ => TxStatus::Idle,
        };
        if self.tx == TxStatus::Idle {
            if self.error_since_ready {
                self.settings.in_tx.clear();
            } else {
                self.settings.commit();
            }
            self.portals.clear();
        }
        self.error_since_ready = false;
    }

    /// A reply that does not match the request at the head of the queue: stop trusting what the
    /// session state says about settings, and resynchronise at the next ReadyForQuery.
    fn out_of_step(&mut self, expected: Option<Pending>) {
        tracing::debug!(?expected, "session tracking out of step with the server");
        self.lose_track();
    }

    fn lose_track(&mut self) {
        self.settings.opaque = true;
        self.pending.retain(Pending::ends_at_ready);
    }
}

/// Whether a statement's effect is applied when its CommandComplete arrives (the others have none, or
/// take effect when sent).
fn applies_at_completion(effect: &Effect) -> bool {
    !matches!(effect, Effect::None | Effect::CreatesTemp)
}

fn parse_message(body: &Bytes) -> Option<(String, PreparedStatement)> {
    let (name, rest) = cstr(body)?;
    let sql_len = rest.iter().position(|&b| b == 0)?;
    let definition = Bytes::copy_from_slice(rest);
    let sql = definition.slice(..sql_len);
    let types = &rest[sql_len + 1..];
    let count = u16::from_be_bytes(types.get(..2)?.try_into().ok()?) as usize;
    let param_types = types
        .get(2..2 + 4 * count)?
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let effect = sql_scan::scan(&sql)
        .next()
        .map_or(Effect::None, |s| s.effect);
    Some((
        name.to_owned(),
        PreparedStatement {
            sql,
            param_types,
            effect,
            definition,
        },
    ))
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
