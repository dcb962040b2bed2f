//! Continuous verification (`verify_sample`): a sampled share of the hits is asked again upstream,
//! off the client's path, and compared with what the cache served. It is an operator's proof that
//! "never stale" holds in their own workload, and an alarm when it does not.
//!
//! Veneer holds no client's secrets, so it asks as `service_user`, in a READ ONLY transaction that
//! takes on the client's identity (`SET LOCAL SESSION AUTHORIZATION` when the service login is a
//! superuser, else `SET LOCAL ROLE`, which needs membership in the client's role) and settings
//! (the reported parameters, startup parameters and SET history the cache key holds), sends the
//! client's request bytes as they were, and rolls back. The answers are compared message by message
//! (rows in any order unless the query orders them).
//!
//! Where the query's tables changed between the hit and the check, the sample proves nothing: once
//! the check's answer is in, the verifier waits until the replication stream has applied the WAL up
//! to then, and counts the sample only if the hit's stamp is still current. A sample that cannot be
//! made (the role cannot be taken, a setting not replayed in a transaction) is counted as skipped,
//! with its reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use postgres_protocol::escape::{escape_identifier, escape_literal};
use postgres_protocol::message::frontend;
use tokio::sync::mpsc;
use veneer_invalidation::conn::{Conn, Error as ConnError};

use super::database::Database;
use super::Cache;
use crate::stream::Stream;
use crate::upstream;
use crate::wire::frame::frames;

/// Samples waiting for the verifier; past this many, new ones are skipped (`busy`).
const QUEUE: usize = 64;

/// Longest a check may take, the wait for the stream included.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for the replication stream to apply the check's WAL before the sample is skipped.
const STREAM_WAIT: Duration = Duration::from_secs(10);

/// Reported parameters that change output and can be set in a transaction: the check takes on the
/// client's values of these.
pub const SETTABLE: &[&str] = &[
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "client_encoding",
    "standard_conforming_strings",
    "search_path",
];

/// One hit to check.
pub struct Sample {
    /// The database the hit was served from.
    pub db: Arc<Database>,
    /// The client's session user (its `session_authorization`).
    pub role: String,
    /// Settings to take on, by name: the client's reported parameters and startup parameters.
    pub settings: Vec<(String, String)>,
    /// The client's SET / RESET history, replayed in order.
    pub history: Vec<Bytes>,
    /// A prepared statement the request runs without parsing it: its name and Parse definition.
    pub statement: Option<(String, Bytes)>,
    /// The request, as the client sent it (a Query, or an extended-protocol run to its Sync).
    pub request: Bytes,
    /// What the cache served for it, without ReadyForQuery.
    pub served: Bytes,
    /// The stamp the hit was served under.
    pub stamp: u64,
    /// Reads the stamp the same request would get now.
    pub restamp: Box<dyn Fn() -> u64 + Send>,
    /// The query's shape, for the log; whether it orders its rows.
    pub shape: String,
}

/// The verifier of one cache: decides which hits are sampled and checks them in a task of its own.
pub struct Verifier {
    /// Share of hits checked.
    rate: f64,
    queue: mpsc::Sender<Sample>,
    /// The queue's receiving end until the task that drains it starts (on the first sample).
    pending: Mutex<Option<mpsc::Receiver<Sample>>>,
}

impl Verifier {
    /// A verifier checking `rate` of the hits (0 < rate ≤ 1).
    pub fn new(rate: f64) -> Verifier {
        let (queue, pending) = mpsc::channel(QUEUE);
        Verifier {
            rate,
            queue,
            pending: Mutex::new(Some(pending)),
        }
    }

    /// Whether this hit is to be checked: a draw of a per-thread generator, so a workload's rhythm
    /// cannot line up with the sampling.
    pub fn sampled(&self) -> bool {
        thread_local! {
            static STATE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        }
        let draw = STATE.with(|state| {
            let mut x = state.get();
            if x == 0 {
                // Seeded from the clock and the thread's own state's address.
                let clock = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                x = (clock ^ (state as *const _ as u64).rotate_left(32)) | 1;
            }
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            state.set(x);
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        });
        ((draw >> 11) as f64 / (1u64 << 53) as f64) < self.rate
    }

    /// Queues `sample` for checking (skipped when the queue is full).
    pub fn submit(&self, cache: &Arc<Cache>, sample: Sample) {
        if let Some(samples) = self.pending.lock().expect("not poisoned").take() {
            tokio::spawn(run(Arc::downgrade(cache), samples));
        }
        if self.queue.try_send(sample).is_err() {
            cache.meters.verify_skipped("busy");
        }
    }
}

/// Checks samples one after another until the cache is dropped, over one login per database.
async fn run(cache: Weak<Cache>, mut samples: mpsc::Receiver<Sample>) {
    let mut sessions: HashMap<String, Conn<Stream>> = HashMap::new();
    while let Some(sample) = samples.recv().await {
        let Some(cache) = cache.upgrade() else {
            return;
        };
        let name = sample.db.name.clone();
        let mut conn = match sessions.remove(&name) {
            Some(conn) => conn,
            None => match login(&cache, &name).await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!(database = %name, error = %e, "verification login failed");
                    cache.meters.verify_skipped("login");
                    continue;
                }
            },
        };
        let checked = tokio::time::timeout(CHECK_TIMEOUT, check(&cache, &mut conn, sample))
            .await
            .unwrap_or_else(|_| Err(ConnError::silent("a check", CHECK_TIMEOUT)));
        match checked {
            Ok(()) => {
                sessions.insert(name, conn);
            }
            // The session is in an unknown state: the next sample logs in again.
            Err(e) => {
                tracing::debug!(database = %name, error = %e, "verification session failed");
                cache.meters.verify_skipped("connection");
            }
        }
    }
}

async fn login(cache: &Cache, database: &str) -> Result<Conn<Stream>, String> {
    let upstream = upstream::connect(&cache.service, cache.service_tls.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let mut conn = Conn::new(upstream.stream);
    let params = [
        ("database", database),
        ("application_name", "veneer verify"),
    ];
    let logged_in = conn.login(
        &cache.service.service_user,
        cache.service.service_password.as_deref(),
        &params,
    );
    let limit = cache.service.connect_timeout;
    tokio::time::timeout(limit, logged_in)
        .await
        .map_err(|_| ConnError::silent("the login", limit).to_string())?
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Checks one sample; `Err` only when the session itself failed.
async fn check(cache: &Cache, conn: &mut Conn<Stream>, sample: Sample) -> Result<(), ConnError> {
    // Take on the client's identity and settings.
    let who = escape_identifier(&sample.role);
    let mut setup = vec![
        "BEGIN READ ONLY".to_owned(),
        if conn.superuser {
            format!("SET LOCAL SESSION AUTHORIZATION {who}")
        } else {
            format!("SET LOCAL ROLE {who}")
        },
    ];
    for (name, value) in &sample.settings {
        setup.push(format!(
            "SELECT pg_catalog.set_config({}, {}, true)",
            escape_literal(name),
            escape_literal(value)
        ));
    }
    for statement in &sample.history {
        setup.push(String::from_utf8_lossy(statement).into_owned());
    }
    for sql in &setup {
        frontend::query(sql, &mut conn.out).map_err(ConnError::Io)?;
    }
    conn.flush().await?;
    let taken = replies(conn, setup.len()).await?;
    if taken.iter().any(|(tag, _)| *tag == b'E') {
        rollback(conn).await?;
        cache.meters.verify_skipped("identity_or_settings");
        return Ok(());
    }
    // Ask again, as the client asked.
    if let Some((name, definition)) = &sample.statement {
        conn.out.put_u8(b'P');
        conn.out
            .put_u32((4 + name.len() + 1 + definition.len()) as u32);
        conn.out.put_slice(name.as_bytes());
        conn.out.put_u8(0);
        conn.out.put_slice(definition);
    }
    conn.out.put_slice(&sample.request);
    conn.flush().await?;
    let mut answer = replies(conn, 1).await?;
    if let Some((name, _)) = sample.statement.as_ref().filter(|(n, _)| !n.is_empty()) {
        // The injected Parse's reply is not part of the answer, and its statement goes again.
        if let Some(at) = answer.iter().position(|(tag, _)| *tag == b'1') {
            answer.remove(at);
        }
        frontend::close(b'S', name, &mut conn.out).map_err(ConnError::Io)?;
        frontend::sync(&mut conn.out);
        conn.flush().await?;
        replies(conn, 1).await?;
    } else if sample.statement.is_some() {
        if let Some(at) = answer.iter().position(|(tag, _)| *tag == b'1') {
            answer.remove(at);
        }
    }
    rollback(conn).await?;

    // Count it only if what it read has not changed since the hit.
    let db = &sample.db;
    if db.is_streaming() {
        let wait = db.fence.wait(&db.generations);
        let deadline = Instant::now() + STREAM_WAIT;
        while !db.fence.passed(&wait, &db.generations) {
            if Instant::now() >= deadline {
                cache.meters.verify_skipped("stream_behind");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    if (sample.restamp)() != sample.stamp {
        cache.meters.verify_skipped("changed");
        return Ok(());
    }
    let ordered = sample.shape.to_ascii_lowercase().contains("order by");
    cache.meters.verify_samples.add(1);
    if !same_answer(&sample.served, &answer, ordered) {
        cache.meters.verify_mismatches.add(1);
        tracing::warn!(database = %db.name, role = %sample.role, query = %sample.shape,
            "verification: a cached answer differs from what the server answers now, and nothing \
             the cache follows changed in between");
    }
    Ok(())
}

/// The messages up to the `count`th ReadyForQuery, ReadyForQuery excluded.
async fn replies(conn: &mut Conn<Stream>, count: usize) -> Result<Vec<(u8, Bytes)>, ConnError> {
    let mut messages = Vec::new();
    let mut ready = 0;
    while ready < count {
        let (tag, body) = conn.read().await?;
        if tag == b'Z' {
            ready += 1;
        } else {
            messages.push((tag, body));
        }
    }
    Ok(messages)
}

async fn rollback(conn: &mut Conn<Stream>) -> Result<(), ConnError> {
    frontend::query("ROLLBACK", &mut conn.out).map_err(ConnError::Io)?;
    conn.flush().await?;
    replies(conn, 1).await.map(drop)
}

/// Whether the answer `got` says what `served` (raw messages) said. Notices, parameter changes and
/// notifications are not part of an answer; rows compare in any order unless `ordered`.
fn same_answer(served: &[u8], got: &[(u8, Bytes)], ordered: bool) -> bool {
    let answer = |messages: &mut dyn Iterator<Item = (u8, &[u8])>| -> Vec<(u8, Vec<u8>)> {
        let mut kept: Vec<(u8, Vec<u8>)> = messages
            .filter(|(tag, _)| !matches!(tag, b'N' | b'S' | b'A'))
            .map(|(tag, body)| (tag, body.to_vec()))
            .collect();
        if !ordered {
            // Sort each run of rows on its own: results of several statements stay apart.
            let mut start = 0;
            while start < kept.len() {
                let end = kept[start..]
                    .iter()
                    .position(|(tag, _)| *tag != b'D')
                    .map_or(kept.len(), |n| start + n);
                kept[start..end].sort();
                start = end + 1;
            }
        }
        kept
    };
    let served = answer(&mut frames(served));
    let got = answer(&mut got.iter().map(|(tag, body)| (*tag, &body[..])));
    served == got
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_u8(tag);
        out.put_u32(4 + body.len() as u32);
        out.put_slice(body);
        out.to_vec()
    }

    fn got(messages: &[(u8, &[u8])]) -> Vec<(u8, Bytes)> {
        messages
            .iter()
            .map(|(t, b)| (*t, Bytes::copy_from_slice(b)))
            .collect()
    }

    #[test]
    fn answers_compare_rows_in_order_only_when_the_query_orders() {
        let served = [
            message(b'T', b"desc"),
            message(b'D', b"row 1"),
            message(b'D', b"row 2"),
            message(b'C', b"SELECT 2\0"),
        ]
        .concat();
        let swapped = got(&[
            (b'T', b"desc"),
            (b'N', b"a notice"),
            (b'D', b"row 2"),
            (b'D', b"row 1"),
            (b'C', b"SELECT 2\0"),
        ]);
        assert!(same_answer(&served, &swapped, false));
        assert!(!same_answer(&served, &swapped, true));
        let changed = got(&[
            (b'T', b"desc"),
            (b'D', b"row 1"),
            (b'D', b"row 3"),
            (b'C', b"SELECT 2\0"),
        ]);
        assert!(!same_answer(&served, &changed, false));
        let refused = got(&[(b'E', b"permission denied")]);
        assert!(!same_answer(&served, &refused, false));
    }

    #[test]
    fn a_rate_samples_about_its_share() {
        let verifier = Verifier::new(0.25);
        let drawn = (0..40_000).filter(|_| verifier.sampled()).count();
        assert!((9_000..11_000).contains(&drawn), "{drawn}");
        assert_eq!(
            (0..1000).filter(|_| Verifier::new(1.0).sampled()).count(),
            1000
        );
    }
}
