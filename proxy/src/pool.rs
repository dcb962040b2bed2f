//! Upstream connections kept open after their client logged out, for the next client that sends the
//! same startup message. A new backend costs Postgres a process and the client a login round trip,
//! which is most of the cost of a short connection (a PHP page, a serverless function, `pgbench -C`).
//!
//! Only logins the server accepted without asking for anything (trust) are kept. The proxy relays
//! authentication and holds no secret, so it may hand a backend only to a client the server would have
//! let in unasked: one with the same startup message, arriving from the same place (the proxy). A
//! connection is kept when its client said Terminate with nothing in flight. DISCARD ALL then resets
//! what the session changed (settings, prepared statements, portals, temporary tables, listeners,
//! advisory locks, sequences' state), and the next client is greeted with a replay of the login: the
//! AuthenticationOk, the backend's current ParameterStatus values, its BackendKeyData and
//! ReadyForQuery. A kept connection that sent anything while idle (the server closed it, or reported
//! something) is dropped instead of reused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pgwire::messages::response::{ReadyForQuery, TransactionStatus};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::{Authentication, ParameterStatus};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::metrics::Meters;
use crate::session::state::NameMap;
use crate::stream::Stream;
use crate::upstream::Upstream;
use crate::wire::authored::{encode, TERMINATE};
use crate::wire::frame::{complete_prefix, frames, parameter_status};

/// Kept connections per startup message, at most: as many as PgBouncer's default pool size. Past it a
/// leaving connection is closed, so a burst of clients does not leave a crowd of idle backends.
const MAX_IDLE_PER_LOGIN: usize = 20;

/// Largest message expected in the reply to DISCARD ALL (notices included).
const MAX_RESET_REPLY: usize = 1 << 20;

/// How long the reset (DISCARD ALL) may take before the connection is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// The kept connections, by the raw startup message of their login.
pub struct Pool {
    timeout: Duration,
    idle: Mutex<HashMap<Bytes, Vec<Parked>>>,
    meters: Arc<Meters>,
}

struct Parked {
    stream: Stream,
    addr: SocketAddr,
    /// The login replay the next client receives.
    greeting: Bytes,
    since: Instant,
}

/// A kept connection handed to a new client, with the login replay to send it.
pub struct Reused {
    /// The connection, at ReadyForQuery.
    pub upstream: Upstream,
    /// AuthenticationOk, ParameterStatus values, BackendKeyData, ReadyForQuery.
    pub greeting: Bytes,
}

/// A connection whose client logged out: what the pool needs to keep it.
pub struct Leaving {
    /// The raw startup message of its login.
    pub startup: Bytes,
    /// The connection, with nothing in flight.
    pub stream: Stream,
    /// Where it is connected (for cancel requests).
    pub addr: SocketAddr,
    /// The ParameterStatus values the server reported.
    pub params: NameMap<String>,
    /// The BackendKeyData body.
    pub key: Bytes,
}

impl Pool {
    /// A pool keeping connections for `timeout` (zero: none); a task closes expired ones.
    pub fn new(timeout: Duration, meters: Arc<Meters>) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            timeout,
            idle: Mutex::new(HashMap::new()),
            meters,
        });
        if !timeout.is_zero() {
            tokio::spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Whether connections are kept at all.
    pub fn enabled(&self) -> bool {
        !self.timeout.is_zero()
    }

    /// The most recently kept connection of this login that is still quiet, if any.
    pub fn take(&self, startup: &Bytes) -> Option<Reused> {
        let mut idle = self.idle.lock().expect("pool lock");
        let kept = idle.get_mut(startup)?;
        while let Some(parked) = kept.pop() {
            self.meters.idle_upstreams.decrement(1.0);
            let mut parked = parked;
            if parked.since.elapsed() < self.timeout && quiet(&mut parked.stream) {
                self.meters.reused_upstreams.add(1);
                return Some(Reused {
                    upstream: Upstream {
                        stream: parked.stream,
                        addr: parked.addr,
                    },
                    greeting: parked.greeting,
                });
            }
            close(parked.stream);
        }
        None
    }

    /// Resets a connection whose client logged out and keeps it, or closes it when the reset fails or
    /// the login already has its share kept.
    pub async fn keep(&self, mut leaving: Leaving) {
        let reset = tokio::time::timeout(
            RESET_TIMEOUT,
            reset(&mut leaving.stream, &mut leaving.params),
        );
        if let Err(problem) = reset.await.unwrap_or(Err("timed out")) {
            tracing::debug!(upstream = %leaving.addr, problem, "upstream connection not kept");
            close(leaving.stream);
            return;
        }
        let greeting = greeting(&leaving.params, &leaving.key);
        let mut idle = self.idle.lock().expect("pool lock");
        let kept = idle.entry(leaving.startup).or_default();
        if kept.len() >= MAX_IDLE_PER_LOGIN {
            close(leaving.stream);
            return;
        }
        kept.push(Parked {
            stream: leaving.stream,
            addr: leaving.addr,
            greeting,
            since: Instant::now(),
        });
        self.meters.idle_upstreams.increment(1.0);
        self.meters.kept_upstreams.add(1);
    }

    /// Closes the kept connections older than the timeout (all of them at shutdown, `everything`).
    pub fn expire(&self, everything: bool) {
        let mut idle = self.idle.lock().expect("pool lock");
        for kept in idle.values_mut() {
            let (expired, live): (Vec<Parked>, Vec<Parked>) = std::mem::take(kept)
                .into_iter()
                .partition(|p| everything || p.since.elapsed() >= self.timeout);
            *kept = live;
            self.meters.idle_upstreams.decrement(expired.len() as f64);
            expired.into_iter().for_each(|p| close(p.stream));
        }
        idle.retain(|_, kept| !kept.is_empty());
    }
}

/// Every half timeout, closes what expired, until the pool is gone.
async fn sweep(pool: Weak<Pool>) {
    loop {
        let Some(every) = pool.upgrade().map(|p| p.timeout / 2) else {
            return;
        };
        tokio::time::sleep(every).await;
        match pool.upgrade() {
            Some(pool) => pool.expire(false),
            None => return,
        }
    }
}

/// Whether an idle connection has sent nothing (no close, no message) since it was kept: one read
/// attempt that must find nothing to read yet.
fn quiet(stream: &mut Stream) -> bool {
    let mut probe = [0u8; 1];
    let mut probe = ReadBuf::new(&mut probe);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(stream)
        .poll_read(&mut cx, &mut probe)
        .is_pending()
}

/// Says goodbye as a client would (the server then logs no lost connection) and closes, in a task of
/// its own so that no caller waits for a peer.
fn close(mut stream: Stream) {
    tokio::spawn(async move {
        let goodbye = async {
            let _ = stream.write_all(TERMINATE).await;
            let _ = stream.shutdown().await;
        };
        let _ = tokio::time::timeout(RESET_TIMEOUT, goodbye).await;
    });
}

/// Runs DISCARD ALL; ParameterStatus messages on the way update `params`. Anything but a clean
/// completion at ReadyForQuery(idle) is a failure.
async fn reset(stream: &mut Stream, params: &mut NameMap<String>) -> Result<(), &'static str> {
    let query = encode(&Query::new("DISCARD ALL".to_owned()));
    stream.write_all(&query).await.map_err(|_| "write failed")?;
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if stream.read_buf(&mut buf).await.map_err(|_| "read failed")? == 0 {
            return Err("closed");
        }
        let len = complete_prefix(&mut buf, MAX_RESET_REPLY).map_err(|_| "bad message")?;
        let chunk = buf.split_to(len).freeze();
        let mut ready = false;
        for (tag, body) in frames(&chunk) {
            match tag {
                _ if ready => return Err("bytes after ReadyForQuery"),
                b'C' | b'N' | b'A' => {}
                b'S' => {
                    if let Some((name, value)) = parameter_status(body) {
                        params.insert(name.to_owned(), value.to_owned());
                    }
                }
                b'Z' if body == b"I" => ready = true,
                b'E' => return Err("DISCARD ALL failed"),
                _ => return Err("unexpected message"),
            }
        }
        if ready {
            return if buf.is_empty() {
                Ok(())
            } else {
                Err("bytes after ReadyForQuery")
            };
        }
    }
}

/// The login replay: what a server sends after accepting a trust login.
fn greeting(params: &NameMap<String>, key: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(&encode(&Authentication::Ok));
    for (name, value) in params {
        out.extend_from_slice(&encode(&ParameterStatus::new(name.clone(), value.clone())));
    }
    out.extend_from_slice(b"K");
    out.extend_from_slice(&(key.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&encode(&ReadyForQuery::new(TransactionStatus::Idle)));
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_greeting_is_a_trust_login_reply() {
        let params = NameMap::from_iter([("TimeZone".to_owned(), "UTC".to_owned())]);
        let key = [0, 0, 0, 7, 1, 2, 3, 4];
        let expected = [
            &b"R\0\0\0\x08\0\0\0\0"[..],
            b"S\0\0\0\x11TimeZone\0UTC\0",
            b"K\0\0\0\x0c\0\0\0\x07\x01\x02\x03\x04",
            b"Z\0\0\0\x05I",
        ]
        .concat();
        assert_eq!(&greeting(&params, &key)[..], &expected[..]);
    }
}
