//! Following a database's logical replication stream: a `replication=database` session that logs in
//! (trust, password, md5 or SCRAM-SHA-256), makes sure the publication exists, creates a temporary
//! pgoutput slot (so a dead proxy never pins WAL) or resumes a permanent one, streams from it and
//! reports each committed transaction's changed tables. It acknowledges what it applied with standby
//! status updates, on every keepalive that asks and at least every [`STATUS_INTERVAL`], so the slot
//! follows even an idle database. Asked for a WAL position (`wanted`), it has the server report where it stands until
//! it has applied up to there.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::escape::{escape_identifier, escape_literal};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::pgoutput::{self, Column, Event, Field, Tuple};
use crate::rows::{KeyType, RowKey, RowSet};

/// Longest wait between two standby status updates.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Ordinary tables with no usable replica identity (none, or the default with no primary key).
const UNIDENTIFIED_TABLES: &str = "SELECT format('%I.%I', n.nspname, c.relname) \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' \
       AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
         (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))) \
     ORDER BY 1 LIMIT 20";

/// The end of the last WAL record inserted, as a byte count: every transaction that committed before
/// it ran ends at or before it, whether its commit was flushed yet or not. The insert position
/// itself points past the header of a page when it stands at the page's start (24 bytes, 40 at the
/// start of a segment), where no record ends, and a stream reports record ends: the header is taken
/// off so that a stream that has applied everything reaches the figure.
pub const INSERTED_END: &str = "SELECT (CASE WHEN p % s = 40 THEN p - 40 \
     WHEN p % b = 24 THEN p - 24 ELSE p END)::int8 \
     FROM (SELECT pg_catalog.pg_current_wal_insert_lsn() - '0/0'::pg_lsn AS p, \
       pg_catalog.current_setting('wal_block_size')::numeric AS b, \
       pg_catalog.pg_size_bytes(pg_catalog.current_setting('wal_segment_size')) AS s) w";

/// Rows of one table a transaction may change before the table counts as changed as a whole: the
/// row-key buckets are shared by every table of a database, so bumping the keys of a large batch
/// would evict much of every other table's point lookups along with them.
const ROW_KEYS_PER_TABLE: u32 = 1024;

/// Microseconds from the Unix epoch to Postgres's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Who the replication session logs in as, and where.
#[derive(Debug, Clone)]
pub struct Login {
    /// A role with the REPLICATION attribute (and, to create a FOR ALL TABLES publication, superuser).
    pub user: String,
    /// Its password, if its authentication needs one.
    pub password: Option<String>,
    /// The database to follow.
    pub database: String,
    /// The publication to stream (created FOR ALL TABLES when missing).
    pub publication: String,
    /// The slot's name: unique per stream when temporary, the same on every start when permanent.
    pub slot: String,
    /// Keep the slot when the stream ends (resuming from it on the next start) instead of creating a
    /// temporary one each time.
    pub permanent: bool,
}

/// A permanent slot the stream resumed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// Everything before this WAL position was confirmed applied; the stream starts there.
    pub confirmed: u64,
    /// WAL the slot kept on the server while nobody streamed from it, in bytes.
    pub retained: u64,
    /// The server's WAL when the stream resumed ([`INSERTED_END`]): what committed before it (while
    /// nobody followed) is replayed first.
    pub server: u64,
}

/// What one committed transaction changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Tables whose rows changed.
    pub changed: Vec<String>,
    /// The row-key buckets of the changed rows, old and new keys (see [`crate::rows`]).
    pub keys: RowSet,
    /// Tables changed as a whole: truncated, their definition changed, named by a DDL notice, or
    /// changed in rows whose keys could not be read.
    pub whole: Vec<String>,
    /// A relation's description changed (a column, its type or the replica identity): plans made
    /// from the old definition must be made again.
    pub redefined: bool,
    /// DDL the transaction reported through Veneer's event trigger (see [`DDL_PREFIX`]).
    pub ddl: Option<Ddl>,
    /// Rows inserted, updated or deleted.
    pub rows: u64,
    /// WAL position just past the commit.
    pub end_lsn: u64,
    /// When it committed on the server.
    pub commit_time: SystemTime,
}

/// DDL reported in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ddl {
    /// It changed the tables listed in [`Commit::whole`] (and perhaps indexes): the catalog is read
    /// again.
    Tables,
    /// It changed something whose reach Veneer cannot tell (a function, a type, a view): every cached
    /// result of the database is invalid, and the catalog is read again.
    Unknown,
}

/// Prefix of the logical decoding messages Veneer's event trigger emits at DDL: the content is the
/// names of the tables the DDL changed, one per line, with a line `*` when it changed something else.
pub const DDL_PREFIX: &str = "veneer.ddl";

/// Where the stream stands, reported on the server's keepalives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The server's WAL end.
    pub server_end: u64,
    /// Everything up to here has been applied.
    pub applied: u64,
}

/// Why following the stream stopped.
#[derive(Debug)]
pub enum ReplicationError {
    /// The connection failed.
    Io(std::io::Error),
    /// The server refused something, with its SQLSTATE and message.
    Server {
        /// SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
        /// What the session was doing.
        during: &'static str,
    },
    /// The server sent something this session does not understand.
    Protocol(String),
    /// The database is not set up for following it, and setting it up would harm it.
    Setup(String),
}

impl fmt::Display for ReplicationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicationError::Io(e) => write!(f, "replication connection failed: {e}"),
            ReplicationError::Server {
                code,
                message,
                during,
            } => {
                write!(f, "server refused {during}: {message} (SQLSTATE {code})")?;
                match hint(code, message) {
                    Some(hint) => write!(f, "; {hint}"),
                    None => Ok(()),
                }
            }
            ReplicationError::Protocol(what) => write!(f, "replication protocol: {what}"),
            ReplicationError::Setup(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for ReplicationError {}

/// What to do about the refusals a setup can cause.
fn hint(code: &str, message: &str) -> Option<&'static str> {
    Some(match code {
        "55000" if message.contains("wal_level") => {
            "set wal_level = logical in postgresql.conf and restart Postgres"
        }
        "42501" if message.contains("publication") => {
            "create the publication once as a superuser (CREATE PUBLICATION veneer FOR ALL TABLES), \
             or make service_user a superuser"
        }
        "42501" => "service_user needs the REPLICATION attribute: ALTER ROLE <service_user> REPLICATION",
        "53400" => {
            "all replication slots are in use: raise max_replication_slots on the server or lower \
             replication_listeners"
        }
        "53300" => {
            "all WAL senders are in use: raise max_wal_senders on the server or lower \
             replication_listeners"
        }
        "28000" if message.contains("pg_hba.conf") => {
            "pg_hba.conf must allow service_user to connect to this database (a replication=database \
             connection matches the database's own name)"
        }
        _ => return None,
    })
}

impl From<std::io::Error> for ReplicationError {
    fn from(e: std::io::Error) -> Self {
        ReplicationError::Io(e)
    }
}

impl From<pgoutput::DecodeError> for ReplicationError {
    fn from(e: pgoutput::DecodeError) -> Self {
        ReplicationError::Protocol(e.to_string())
    }
}

/// What the stream reports to its owner.
pub trait Sink {
    /// Streaming has started: changes from here on will be reported. `published` lists the tables
    /// the publication covers when it is not FOR ALL TABLES (writes to others are not streamed);
    /// `resumed` says where a permanent slot left off (`None` for a new slot, whose stream starts
    /// from now: what committed before is not reported).
    fn streaming(&mut self, published: Option<Vec<String>>, resumed: Option<Resumed>);
    /// A transaction committed.
    fn commit(&mut self, commit: &Commit);
    /// The server reported its WAL end (on a keepalive) and what has been applied.
    fn progress(&mut self, progress: Progress);
}

/// Longest wait for the server to end the stream and drop the slot when asked to stop; past it the
/// connection is simply closed (the server then drops the temporary slot on its own, a little later).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Logs in on `stream`, starts streaming and reports commits to `sink` until the stream fails, or
/// until `stop` completes: then the stream is ended, the slot dropped (a permanent one too) and the
/// session closed before this returns `Ok`, so the slot is gone once it has returned. Whenever
/// `wanted` names a WAL position past what has been applied, the server is asked where it stands
/// (keepalives report it), so that [`Progress::applied`] reaches the position without waiting for
/// the next commit.
pub async fn follow<S, K>(
    stream: S,
    login: &Login,
    sink: &mut K,
    stop: impl std::future::Future<Output = ()>,
    wanted: watch::Receiver<u64>,
) -> Result<(), ReplicationError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    K: Sink,
{
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(64 * 1024),
        out: BytesMut::new(),
        server_major: 0,
    };
    conn.login(login).await?;
    conn.ensure_publication(&login.publication).await?;
    let published = conn.published_tables(&login.publication).await?;
    let resumed = if login.permanent {
        conn.existing_slot(&login.slot).await?
    } else {
        None
    };
    let consistent = match resumed {
        Some(resumed) => resumed.confirmed,
        None => conn.create_slot(login).await?,
    };
    // Protocol 2 (Postgres 14 and later) streams large transactions while they run, so the server
    // does not spill them to disk first, and passes on Veneer's DDL messages.
    let options = if conn.server_major >= 14 {
        "proto_version '2', streaming 'on', messages 'true'"
    } else {
        "proto_version '1'"
    };
    let start = format!(
        "START_REPLICATION SLOT {} LOGICAL 0/0 ({options}, publication_names {})",
        escape_identifier(&login.slot),
        escape_literal(&escape_identifier(&login.publication))
    );
    frontend::query(&start, &mut conn.out)?;
    conn.flush().await?;
    loop {
        let (tag, body) = conn.read().await?;
        match tag {
            b'W' => break,
            b'E' => return Err(server_error(&body, "starting replication")),
            b'N' | b'S' => {}
            other => {
                return Err(ReplicationError::Protocol(format!(
                    "expected CopyBothResponse, got '{}'",
                    other as char
                )))
            }
        }
    }
    sink.streaming(published, resumed);
    sink.progress(Progress {
        server_end: consistent,
        applied: consistent,
    });
    conn.stream_changes(sink, stop, consistent, wanted).await?;
    match tokio::time::timeout(CLOSE_TIMEOUT, conn.close(&login.slot)).await {
        Ok(closed) => closed,
        Err(_) => Err(ReplicationError::Protocol(format!(
            "the server did not end the stream within {CLOSE_TIMEOUT:?}; slot {} is dropped when \
             its connection ends",
            login.slot
        ))),
    }
}

struct Conn<S> {
    stream: S,
    buf: BytesMut,
    out: BytesMut,
    /// The server's major version, from its `server_version` parameter.
    server_major: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn flush(&mut self) -> Result<(), ReplicationError> {
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// The next backend message: tag and body.
    async fn read(&mut self) -> Result<(u8, Bytes), ReplicationError> {
        loop {
            if let Some(header) = backend::Header::parse(&self.buf)? {
                let total = header.len() as usize + 1;
                if self.buf.len() >= total {
                    let mut message = self.buf.split_to(total).freeze();
                    message.advance(5);
                    return Ok((header.tag(), message));
                }
                self.buf.reserve(total - self.buf.len());
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ReplicationError::Io(
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
        }
    }

    async fn login(&mut self, login: &Login) -> Result<(), ReplicationError> {
        let params = [
            ("user", login.user.as_str()),
            ("database", login.database.as_str()),
            ("replication", "database"),
            ("application_name", "veneer replication"),
        ];
        frontend::startup_message(params, &mut self.out)?;
        self.flush().await?;
        let password = login.password.as_deref().unwrap_or("").as_bytes();
        let mut scram = None;
        loop {
            let (tag, body) = self.read().await?;
            match tag {
                b'R' => {
                    let code = body
                        .get(..4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                    let data = body.slice(4.min(body.len())..);
                    match code {
                        Some(0) => {}
                        Some(3) => frontend::password_message(password, &mut self.out)?,
                        Some(5) => {
                            let salt: [u8; 4] = data
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| {
                                    ReplicationError::Protocol("md5 request without salt".into())
                                })?;
                            let hash = md5_hash(login.user.as_bytes(), password, salt);
                            frontend::password_message(hash.as_bytes(), &mut self.out)?;
                        }
                        Some(10) => {
                            let offered = data
                                .split(|&b| b == 0)
                                .any(|m| m == sasl::SCRAM_SHA_256.as_bytes());
                            if !offered {
                                return Err(ReplicationError::Protocol(
                                    "the server offers no SASL mechanism Veneer supports".into(),
                                ));
                            }
                            let s = sasl::ScramSha256::new(
                                password,
                                sasl::ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(
                                sasl::SCRAM_SHA_256,
                                s.message(),
                                &mut self.out,
                            )?;
                            scram = Some(s);
                        }
                        Some(11) => {
                            let s = scram.as_mut().ok_or_else(|| {
                                ReplicationError::Protocol("SASL continue without a start".into())
                            })?;
                            s.update(&data)?;
                            frontend::sasl_response(s.message(), &mut self.out)?;
                        }
                        Some(12) => {
                            let s = scram.as_mut().ok_or_else(|| {
                                ReplicationError::Protocol("SASL final without a start".into())
                            })?;
                            s.finish(&data)?;
                        }
                        other => {
                            return Err(ReplicationError::Protocol(format!(
                                "unsupported authentication request {other:?}"
                            )))
                        }
                    }
                    self.flush().await?;
                }
                b'E' => return Err(server_error(&body, "the replication login")),
                b'S' => {
                    let mut fields = body.split(|&b| b == 0);
                    if fields.next() == Some(b"server_version") {
                        self.server_major = fields
                            .next()
                            .and_then(|v| std::str::from_utf8(v).ok())
                            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
                            .and_then(|major| major.parse().ok())
                            .unwrap_or(0);
                    }
                }
                b'Z' => return Ok(()),
                _ => {}
            }
        }
    }

    /// Runs `sql`; returns the first column of its rows.
    async fn simple(
        &mut self,
        sql: &str,
        during: &'static str,
    ) -> Result<Vec<Option<String>>, ReplicationError> {
        let rows = self.rows(sql, during).await?;
        Ok(rows.iter().map(|row| column(row, 0)).collect())
    }

    /// Runs `sql`; returns its DataRow bodies.
    async fn rows(
        &mut self,
        sql: &str,
        during: &'static str,
    ) -> Result<Vec<Bytes>, ReplicationError> {
        frontend::query(sql, &mut self.out)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, body) = self.read().await?;
            match tag {
                b'D' => rows.push(body),
                b'E' => error = Some(server_error(&body, during)),
                b'Z' => return error.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    /// Creates the stream's slot; returns its consistent point. Transactions that committed before
    /// it are not streamed.
    async fn create_slot(&mut self, login: &Login) -> Result<u64, ReplicationError> {
        let created = self
            .rows(
                &format!(
                    "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
                    escape_identifier(&login.slot),
                    if login.permanent { "" } else { " TEMPORARY" }
                ),
                "creating a replication slot",
            )
            .await?;
        created
            .first()
            .and_then(|row| column(row, 1))
            .as_deref()
            .and_then(parse_lsn)
            .ok_or_else(|| {
                ReplicationError::Protocol(
                    "CREATE_REPLICATION_SLOT gave no consistent point".into(),
                )
            })
    }

    /// The permanent slot `name` as a previous stream left it, if it exists and can be resumed.
    async fn existing_slot(&mut self, name: &str) -> Result<Option<Resumed>, ReplicationError> {
        let rows = self
            .rows(
                &format!(
                    "SELECT plugin, active::text, confirmed_flush_lsn::text, \
                       (pg_catalog.pg_current_wal_lsn() - restart_lsn)::int8::text, \
                       (database = pg_catalog.current_database())::text, ({INSERTED_END})::text \
                     FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
                    escape_literal(name)
                ),
                "looking up the replication slot",
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let field = |n| column(row, n).unwrap_or_default();
        if field(0) != "pgoutput" || field(4) != "true" {
            return Err(ReplicationError::Setup(format!(
                "replication slot {name} exists but is not a pgoutput slot of this database \
                 (plugin {}): choose another replication_slot prefix",
                field(0)
            )));
        }
        if field(1) == "true" {
            return Err(ReplicationError::Setup(format!(
                "replication slot {name} is in use by another connection (another proxy with the \
                 same replication_slot prefix?)"
            )));
        }
        let confirmed = parse_lsn(&field(2)).ok_or_else(|| {
            ReplicationError::Protocol(format!("slot {name} has no confirmed position"))
        })?;
        Ok(Some(Resumed {
            confirmed,
            retained: field(3).parse().unwrap_or(0),
            server: field(5).parse().unwrap_or(u64::MAX),
        }))
    }

    async fn ensure_publication(&mut self, name: &str) -> Result<(), ReplicationError> {
        let exists = self
            .simple(
                &format!(
                    "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {}",
                    escape_literal(name)
                ),
                "looking up the publication",
            )
            .await?;
        if exists.is_empty() {
            // A FOR ALL TABLES publication makes Postgres refuse UPDATE and DELETE on tables without a
            // replica identity: creating it then would break the application's writes.
            let unidentified = self
                .simple(
                    UNIDENTIFIED_TABLES,
                    "looking for tables without a replica identity",
                )
                .await?;
            if !unidentified.is_empty() {
                let names: Vec<String> = unidentified.into_iter().flatten().collect();
                return Err(ReplicationError::Setup(format!(
                    "publication {name} does not exist, and creating it FOR ALL TABLES would make \
                     Postgres refuse UPDATE and DELETE on tables without a replica identity ({}); \
                     give them a primary key or REPLICA IDENTITY, or create the publication yourself",
                    names.join(", ")
                )));
            }
            self.simple(
                &format!(
                    "CREATE PUBLICATION {} FOR ALL TABLES",
                    escape_identifier(name)
                ),
                "creating the publication",
            )
            .await?;
        }
        Ok(())
    }

    /// The tables a publication covers, or `None` when it covers all tables. A publication that
    /// leaves out some kind of change (`publish` without insert, update, delete or truncate) covers
    /// none: the stream would miss those changes to any table.
    async fn published_tables(
        &mut self,
        name: &str,
    ) -> Result<Option<Vec<String>>, ReplicationError> {
        let coverage = self
            .simple(
                &format!(
                    "SELECT CASE WHEN NOT (pubinsert AND pubupdate AND pubdelete AND pubtruncate) \
                       THEN 'partial' WHEN puballtables THEN 'all' ELSE 'listed' END \
                     FROM pg_catalog.pg_publication WHERE pubname = {}",
                    escape_literal(name)
                ),
                "reading the publication",
            )
            .await?;
        match coverage.first().cloned().flatten().as_deref() {
            Some("all") => return Ok(None),
            Some("partial") => return Ok(Some(Vec::new())),
            _ => {}
        }
        let tables = self
            .simple(
                &format!(
                    "SELECT tablename FROM pg_catalog.pg_publication_tables WHERE pubname = {}",
                    escape_literal(name)
                ),
                "listing the publication's tables",
            )
            .await?;
        Ok(Some(tables.into_iter().flatten().collect()))
    }

    /// Applies the stream until it fails, or returns `Ok` when `stop` completes.
    async fn stream_changes<K: Sink>(
        &mut self,
        sink: &mut K,
        stop: impl std::future::Future<Output = ()>,
        mut applied: u64,
        mut wanted: watch::Receiver<u64>,
    ) -> Result<(), ReplicationError> {
        tokio::pin!(stop);
        let mut decoder = Decoder::default();
        let mut last_status = tokio::time::Instant::now();
        let mut asking = true;
        loop {
            let wait = STATUS_INTERVAL.saturating_sub(last_status.elapsed());
            let next = tokio::select! {
                next = tokio::time::timeout(wait, self.read()) => next,
                () = &mut stop => return Ok(()),
                changed = wanted.changed(), if asking => {
                    // A dropped sender wants nothing more.
                    asking = changed.is_ok();
                    if asking && *wanted.borrow_and_update() > applied {
                        self.status(applied, true).await?;
                        last_status = tokio::time::Instant::now();
                    }
                    continue;
                }
            };
            let Ok(message) = next else {
                self.status(applied, false).await?;
                last_status = tokio::time::Instant::now();
                continue;
            };
            let (tag, mut body) = message?;
            match tag {
                b'd' => {}
                b'E' => return Err(server_error(&body, "streaming")),
                b'c' => {
                    return Err(ReplicationError::Protocol(
                        "the server ended the stream".into(),
                    ))
                }
                _ => continue,
            }
            match body.first() {
                Some(b'w') if body.len() >= 25 => {
                    body.advance(25);
                    if let Some(commit) = decoder.apply(&body)? {
                        sink.commit(&commit);
                        applied = applied.max(commit.end_lsn);
                    }
                }
                Some(b'k') if body.len() >= 18 => {
                    let wal_end =
                        u64::from_be_bytes(body[1..9].try_into().expect("checked length"));
                    // Between transactions nothing is pending, so the slot may move to the server's
                    // WAL end: an idle database does not pin WAL. Within one (or with streamed ones
                    // open) it stays at the last commit applied.
                    if decoder.between_transactions() {
                        applied = applied.max(wal_end);
                    }
                    sink.progress(Progress {
                        server_end: wal_end,
                        applied,
                    });
                    // While a position is wanted, every keepalive is answered: an answer re-arms
                    // the server's report of its position the next time it has caught up.
                    if body[17] == 1 || *wanted.borrow() > applied {
                        self.status(applied, false).await?;
                        last_status = tokio::time::Instant::now();
                    }
                }
                _ => {
                    return Err(ReplicationError::Protocol(format!(
                        "unexpected CopyData starting with {:?}",
                        body.first()
                    )))
                }
            }
        }
    }

    /// Ends streaming (CopyDone, answered by the server's CopyDone, CommandComplete and
    /// ReadyForQuery), drops the slot and logs out.
    async fn close(&mut self, slot: &str) -> Result<(), ReplicationError> {
        frontend::copy_done(&mut self.out);
        self.flush().await?;
        loop {
            let (tag, body) = self.read().await?;
            match tag {
                b'Z' => break,
                b'E' => return Err(server_error(&body, "ending the stream")),
                _ => {}
            }
        }
        self.simple(
            &format!("DROP_REPLICATION_SLOT {} WAIT", escape_identifier(slot)),
            "dropping the replication slot",
        )
        .await?;
        frontend::terminate(&mut self.out);
        self.flush().await
    }

    /// A standby status update: everything up to `lsn` is written, flushed and applied. With `reply`,
    /// the server answers at once with a keepalive that says where it stands.
    async fn status(&mut self, lsn: u64, reply: bool) -> Result<(), ReplicationError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64)
            - PG_EPOCH_MICROS;
        // CopyData around 'r', written, flushed and applied positions, the clock, whether to reply.
        const UPDATE_LEN: u32 = 1 + 3 * 8 + 8 + 1;
        self.out.put_u8(b'd');
        self.out.put_u32(4 + UPDATE_LEN);
        self.out.put_u8(b'r');
        for _ in 0..3 {
            self.out.put_u64(lsn);
        }
        self.out.put_i64(now);
        self.out.put_u8(u8::from(reply));
        self.flush().await
    }
}

/// What a transaction has done so far.
#[derive(Default)]
struct Pending {
    /// Tables whose rows changed, with how many rows.
    changed: HashMap<u32, u32>,
    keys: RowSet,
    whole: HashSet<u32>,
    redefined: bool,
    /// Tables named by DDL notices.
    named: Vec<String>,
    ddl: Option<Ddl>,
    rows: u64,
}

impl Pending {
    fn note_ddl(&mut self, content: &[u8]) {
        for line in String::from_utf8_lossy(content).lines() {
            if line == "*" {
                self.ddl = Some(Ddl::Unknown);
            } else if !line.is_empty() {
                self.named.push(line.to_owned());
                self.ddl.get_or_insert(Ddl::Tables);
            }
        }
        self.ddl.get_or_insert(Ddl::Unknown);
    }
}

/// A relation as its description says: its name, the description itself (to notice a change) and
/// which columns key its rows.
struct Known {
    name: String,
    definition: Vec<u8>,
    keys: Keys,
}

/// Which columns of a relation's rows give row keys, each as (position, name, type), by name.
enum Keys {
    /// The replica identity's key columns together (a primary key or an index).
    Together(Vec<(usize, String, KeyType)>),
    /// Each column on its own (REPLICA IDENTITY FULL): a point lookup may use any of them.
    Each(Vec<(usize, String, KeyType)>),
    /// None: no point lookup of the table can be keyed (no identity, or a key of another type).
    No,
}

impl Keys {
    fn of(identity: u8, columns: &[Column]) -> Keys {
        let mut usable: Vec<(usize, String, KeyType)> = Vec::new();
        let mut all_usable = true;
        for (i, column) in columns.iter().enumerate() {
            if identity != b'f' && !column.key {
                continue;
            }
            match KeyType::of(column.type_oid) {
                Some(t) => usable.push((i, column.name.clone(), t)),
                None => all_usable = false,
            }
        }
        usable.sort_by(|a, b| a.1.cmp(&b.1));
        match identity {
            b'f' => Keys::Each(usable),
            _ if all_usable && !usable.is_empty() => Keys::Together(usable),
            _ => Keys::No,
        }
    }

    /// Adds the keys of the rows in `tuples` to `keys`; `false` when one could not be read (a value
    /// not sent), so the whole table must count as changed.
    fn collect(&self, table: &str, tuples: &[Tuple<'_>], keys: &mut RowSet) -> bool {
        let has_old = tuples.iter().any(|t| t.kind != b'N');
        for tuple in tuples {
            let value = |i: usize| tuple.values.get(i).copied().unwrap_or(Field::Null);
            match self {
                Keys::Together(columns) => {
                    let mut key = RowKey::new(table);
                    for (i, name, t) in columns {
                        match value(*i) {
                            // No row with a NULL key is found by equality.
                            Field::Null => break,
                            Field::Text(text) => match t.from_text(text) {
                                Some(v) => key.column(name, v),
                                None => return false,
                            },
                            Field::Unchanged | Field::Binary(_) => return false,
                        }
                    }
                    if columns.iter().all(|(i, ..)| value(*i) != Field::Null) {
                        keys.insert(key.bucket());
                    }
                }
                Keys::Each(columns) => {
                    for (i, name, t) in columns {
                        match value(*i) {
                            Field::Null => {}
                            // The new row's unsent value equals the old row's, already added.
                            Field::Unchanged if tuple.kind == b'N' && has_old => {}
                            Field::Text(text) => match t.from_text(text) {
                                Some(v) => {
                                    let mut key = RowKey::new(table);
                                    key.column(name, v);
                                    keys.insert(key.bucket());
                                }
                                None => return false,
                            },
                            Field::Unchanged | Field::Binary(_) => return false,
                        }
                    }
                }
                Keys::No => {}
            }
        }
        true
    }
}

/// Turns pgoutput messages into committed transactions: the plain transaction in progress, and the
/// streamed ones (protocol 2), each gathered under its top-level transaction id until it commits.
#[derive(Default)]
struct Decoder {
    /// Relations by OID.
    relations: HashMap<u32, Known>,
    current: Pending,
    in_transaction: bool,
    streamed: HashMap<u32, Pending>,
    /// The streamed transaction whose block is open.
    streaming: Option<u32>,
}

impl Decoder {
    fn between_transactions(&self) -> bool {
        !self.in_transaction && self.streamed.is_empty()
    }

    /// Where the changes of the message being applied go.
    fn pending(&mut self) -> &mut Pending {
        match self.streaming {
            Some(xid) => self.streamed.entry(xid).or_default(),
            None => &mut self.current,
        }
    }

    /// Applies one pgoutput message; returns the transaction it committed, if any.
    fn apply(&mut self, message: &[u8]) -> Result<Option<Commit>, ReplicationError> {
        match pgoutput::decode(message, self.streaming.is_some())? {
            Event::Begin => {
                self.current = Pending::default();
                self.in_transaction = true;
            }
            Event::Relation {
                oid,
                name,
                identity,
                columns,
                definition,
                ..
            } => {
                // Descriptions are sent again for each streamed transaction and after cache
                // invalidations; only a different one means the definition changed.
                let changed = self
                    .relations
                    .get(&oid)
                    .is_some_and(|known| known.definition != definition);
                let keys = Keys::of(identity, &columns);
                self.relations.insert(
                    oid,
                    Known {
                        name,
                        definition,
                        keys,
                    },
                );
                if changed {
                    let pending = self.pending();
                    pending.whole.insert(oid);
                    pending.redefined = true;
                }
            }
            Event::Change { oid, tuples } => {
                let pending = match self.streaming {
                    Some(xid) => self.streamed.entry(xid).or_default(),
                    None => &mut self.current,
                };
                let rows = pending.changed.entry(oid).or_default();
                *rows += 1;
                pending.rows += 1;
                let read = *rows <= ROW_KEYS_PER_TABLE
                    && !pending.whole.contains(&oid)
                    && self.relations.get(&oid).is_some_and(|known| {
                        known.keys.collect(&known.name, &tuples, &mut pending.keys)
                    });
                if !read {
                    pending.whole.insert(oid);
                }
            }
            Event::Truncate { oids } => self.pending().whole.extend(oids),
            Event::Message { prefix, content } if prefix == DDL_PREFIX => {
                self.pending().note_ddl(&content);
            }
            Event::Commit {
                end_lsn,
                commit_time,
            } => {
                self.in_transaction = false;
                let pending = std::mem::take(&mut self.current);
                return Ok(Some(self.commit(pending, end_lsn, commit_time)));
            }
            Event::StreamStart { xid } => self.streaming = Some(xid),
            Event::StreamStop => self.streaming = None,
            Event::StreamCommit {
                xid,
                end_lsn,
                commit_time,
            } => {
                let pending = self.streamed.remove(&xid).unwrap_or_default();
                return Ok(Some(self.commit(pending, end_lsn, commit_time)));
            }
            Event::StreamAbort { xid, subxid } => {
                // A subtransaction's changes are not told apart: keeping them only costs misses.
                if xid == subxid {
                    self.streamed.remove(&xid);
                }
            }
            Event::Message { .. } | Event::Other => {}
        }
        Ok(None)
    }

    fn commit(&self, pending: Pending, end_lsn: u64, commit_time: i64) -> Commit {
        let names = |oids: &mut dyn Iterator<Item = &u32>| -> Vec<String> {
            oids.filter_map(|o| self.relations.get(o).map(|known| known.name.clone()))
                .collect()
        };
        let mut whole = names(&mut pending.whole.iter());
        whole.extend(pending.named);
        Commit {
            changed: names(&mut pending.changed.keys()),
            keys: pending.keys,
            whole,
            redefined: pending.redefined,
            ddl: pending.ddl,
            rows: pending.rows,
            end_lsn,
            commit_time: UNIX_EPOCH
                + Duration::from_micros((commit_time + PG_EPOCH_MICROS).max(0) as u64),
        }
    }
}

/// Column `n` of a DataRow body, as text; `None` for NULL or a short row.
fn column(body: &[u8], n: usize) -> Option<String> {
    let mut at = 2;
    for _ in 0..n {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4 + usize::try_from(len).unwrap_or(0);
    }
    let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
    let value = body.get(at + 4..at + 4 + usize::try_from(len).ok()?)?;
    Some(String::from_utf8_lossy(value).into_owned())
}

/// A WAL position from its text form (`16/B374D848`).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some(
        u64::from(u32::from_str_radix(high, 16).ok()?) << 32
            | u64::from(u32::from_str_radix(low, 16).ok()?),
    )
}

fn server_error(body: &[u8], during: &'static str) -> ReplicationError {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|&b| b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            Some((b'M', v)) => message = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    ReplicationError::Server {
        code,
        message,
        during,
    }
}
