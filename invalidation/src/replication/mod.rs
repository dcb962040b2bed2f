//! Following a database's logical replication stream: a `replication=database` session that logs in
//! (trust, password, md5 or SCRAM-SHA-256), creates a temporary slot (so a dead proxy never pins WAL)
//! or resumes a permanent one, streams from it and reports each committed transaction's changed
//! tables. It acknowledges what it applied with standby status updates, on every keepalive that asks
//! and at least every [`STATUS_INTERVAL`], so the slot follows even an idle database. Asked for a WAL
//! position (`wanted`), it has the server report where it stands until it has applied up to there.
//!
//! The slot decodes with `test_decoding` ([`crate::test_decoding`]) unless the user names a
//! publication of theirs to follow with pgoutput ([`Plugin`]). Veneer creates no publication: one
//! that publishes updates and deletes makes Postgres refuse them on its tables without a replica
//! identity, for every client. On each start it drops the `FOR ALL TABLES` publication older Veneers
//! created, and reports (never touches) one a user made. Setting all this up, up to the first
//! change, is [`slot`]'s; this module runs the stream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut};
use postgres_protocol::escape::escape_identifier;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::commit::Commit;
use crate::conn::{server_error, Conn, Error};
use crate::pgoutput;
use crate::test_decoding::{self, KeySource};

mod slot;

use slot::Started;
pub use slot::{LEGACY_PUBLICATION, LEGACY_PUBLICATION_AS_MADE};

/// Longest wait between two standby status updates.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// Longest the server may stay silent on the stream before the connection counts as lost: a quiet
/// [`STATUS_INTERVAL`], then as long again after asking it to answer.
const SILENCE_LIMIT: Duration = Duration::from_secs(10);

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

/// Microseconds from the Unix epoch to Postgres's (2000-01-01), for standby status updates.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Who the replication session logs in as, and where.
#[derive(Debug, Clone)]
pub struct Login {
    /// A role with the REPLICATION attribute.
    pub user: String,
    /// Its password, if its authentication needs one.
    pub password: Option<String>,
    /// The database to follow.
    pub database: String,
    /// How the slot decodes the WAL.
    pub plugin: Plugin,
    /// The slot's name: unique per stream when temporary, the same on every start when permanent.
    pub slot: String,
    /// Keep the slot when the stream ends (resuming from it on the next start) instead of creating a
    /// temporary one each time.
    pub permanent: bool,
    /// Longest the login may take.
    pub login_timeout: Duration,
    /// Longest the rest of the start may take (creating a slot waits for the transactions in
    /// progress to end).
    pub setup_timeout: Duration,
}

/// How a slot decodes the WAL into changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plugin {
    /// `test_decoding`: every table's changes, no publication needed (the default).
    TestDecoding,
    /// pgoutput, streaming the changes of a publication the user made.
    Pgoutput {
        /// The publication's name.
        publication: String,
    },
}

impl Plugin {
    /// The output plugin's name, as slots record it.
    pub fn name(&self) -> &'static str {
        match self {
            Plugin::TestDecoding => "test_decoding",
            Plugin::Pgoutput { .. } => "pgoutput",
        }
    }
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

/// Where the stream stands, reported on the server's keepalives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The server's WAL end.
    pub server_end: u64,
    /// Everything up to here has been applied.
    pub applied: u64,
}

/// What the stream reports to its owner, and where its decoder learns which columns key rows.
pub trait Sink: KeySource {
    /// Streaming has started: changes from here on will be reported. `published` lists the tables
    /// the publication covers when it is not FOR ALL TABLES (writes to others are not streamed);
    /// `resumed` says where a permanent slot left off (`None` for a new slot, whose stream starts
    /// from now: what committed before is not reported); `timeline` is the server's (a new one
    /// means it was restored to an earlier point and promoted); `start` is the WAL position the
    /// stream starts from (every change before it committed before the stream started).
    fn streaming(
        &mut self,
        published: Option<Vec<String>>,
        resumed: Option<Resumed>,
        timeline: u32,
        start: u64,
    );
    /// A transaction committed.
    fn commit(&mut self, commit: &Commit);
    /// The server reported its WAL end (on a keepalive) and what has been applied.
    fn progress(&mut self, progress: Progress);
    /// What the slot may be told is applied, when `applied` is: the server may drop the WAL before
    /// it, and a permanent slot resumes there. A sink may hold it back to keep what it needs to
    /// resume (see the proxy's `fleet`).
    fn confirmable(&self, applied: u64) -> u64 {
        applied
    }
    /// Something the operator should know about the database's setup (a warning, or an action
    /// taken, when `warning` is false).
    fn note(&mut self, warning: bool, message: String);
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
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    K: Sink,
{
    let mut conn = Conn::new(stream);
    let params = [
        ("database", login.database.as_str()),
        ("replication", "database"),
        ("application_name", "veneer replication"),
        // Commit times are printed in the session's time zone.
        ("TimeZone", "UTC"),
    ];
    let logged_in = conn.login(&login.user, login.password.as_deref(), &params);
    tokio::time::timeout(login.login_timeout, logged_in)
        .await
        .map_err(|_| Error::silent("the login", login.login_timeout))??;
    let started = tokio::time::timeout(login.setup_timeout, conn.start(login, sink))
        .await
        .map_err(|_| Error::silent("the stream's start", login.setup_timeout))??;
    let Started {
        published,
        resumed,
        timeline,
        consistent,
    } = started;
    sink.streaming(published, resumed, timeline, consistent);
    sink.progress(Progress {
        server_end: consistent,
        applied: consistent,
    });
    let decoder = match login.plugin {
        Plugin::TestDecoding => Decoder::Text(test_decoding::Decoder::default()),
        Plugin::Pgoutput { .. } => Decoder::Pgoutput(pgoutput::Decoder::default()),
    };
    conn.stream_changes(sink, decoder, stop, consistent, wanted)
        .await?;
    match tokio::time::timeout(CLOSE_TIMEOUT, conn.close(&login.slot)).await {
        Ok(closed) => closed,
        Err(_) => Err(Error::Protocol(format!(
            "the server did not end the stream within {CLOSE_TIMEOUT:?}; slot {} is dropped when \
             its connection ends",
            login.slot
        ))),
    }
}

/// The decoder of the slot's plugin.
enum Decoder {
    Text(test_decoding::Decoder),
    Pgoutput(pgoutput::Decoder),
}

impl Decoder {
    /// Applies the data of one XLogData, sent at WAL position `start`.
    fn apply(
        &mut self,
        data: &[u8],
        start: u64,
        keys: &dyn KeySource,
    ) -> Result<Option<Commit>, Error> {
        Ok(match self {
            Decoder::Text(decoder) => decoder.apply(data, start, keys),
            Decoder::Pgoutput(decoder) => decoder.apply(data)?,
        })
    }

    fn between_transactions(&self) -> bool {
        match self {
            Decoder::Text(decoder) => decoder.between_transactions(),
            Decoder::Pgoutput(decoder) => decoder.between_transactions(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Applies the stream until it fails, or returns `Ok` when `stop` completes.
    async fn stream_changes<K: Sink>(
        &mut self,
        sink: &mut K,
        mut decoder: Decoder,
        stop: impl std::future::Future<Output = ()>,
        mut applied: u64,
        mut wanted: watch::Receiver<u64>,
    ) -> Result<(), Error> {
        tokio::pin!(stop);
        let mut last_status = tokio::time::Instant::now();
        // Set when a quiet interval made us ask the server for a reply; cleared by anything heard.
        let mut asked_for_reply = false;
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
                        self.status(sink.confirmable(applied), true).await?;
                        last_status = tokio::time::Instant::now();
                    }
                    continue;
                }
            };
            let Ok(message) = next else {
                // Quiet since the last status: ask the server to answer this one, so that a
                // connection nobody serves any more (a server stopped, a host gone) shows. Lost
                // only when a whole interval after asking passed without a word: counted from
                // the question, not from the last message, so a process that was itself paused
                // (SIGSTOP, a VM migrating) asks again on waking rather than dropping a stream
                // that merely had nothing to say.
                if asked_for_reply {
                    return Err(Error::silent("on the stream", SILENCE_LIMIT));
                }
                self.status(sink.confirmable(applied), true).await?;
                asked_for_reply = true;
                last_status = tokio::time::Instant::now();
                continue;
            };
            let (tag, mut body) = message?;
            asked_for_reply = false;
            match tag {
                b'd' => {}
                b'E' => return Err(server_error(&body, "streaming")),
                b'c' => return Err(Error::Protocol("the server ended the stream".into())),
                _ => continue,
            }
            match body.first() {
                Some(b'w') if body.len() >= 25 => {
                    let start = u64::from_be_bytes(body[1..9].try_into().expect("checked length"));
                    body.advance(25);
                    if let Some(commit) = decoder.apply(&body, start, sink)? {
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
                        self.status(sink.confirmable(applied), false).await?;
                        last_status = tokio::time::Instant::now();
                    }
                }
                _ => {
                    return Err(Error::Protocol(format!(
                        "unexpected CopyData starting with {:?}",
                        body.first()
                    )))
                }
            }
        }
    }

    /// Ends streaming (CopyDone, answered by the server's CopyDone, CommandComplete and
    /// ReadyForQuery), drops the slot and logs out.
    async fn close(&mut self, slot: &str) -> Result<(), Error> {
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
    async fn status(&mut self, lsn: u64, reply: bool) -> Result<(), Error> {
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

/// A WAL position from its text form (`16/B374D848`).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some(
        u64::from(u32::from_str_radix(high, 16).ok()?) << 32
            | u64::from(u32::from_str_radix(low, 16).ok()?),
    )
}
