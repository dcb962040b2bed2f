//! One client session: relays messages both ways between the client and its own upstream connection,
//! unchanged and uncopied, while [`SessionState`] follows what they do to the session.
//!
//! The driver is a single task waiting on reads and writes of both sockets at once, so the state needs
//! no lock and neither direction ever waits on the other (see [`outbox`]); it polls only the sources
//! that woke it (see [`wakes`]). Each read is walked header by
//! header; the complete messages at its front are split off as one `Bytes` and queued whole, so a
//! pipelined batch costs one write however many messages it holds. Only whole messages are forwarded,
//! which keeps the client stream at a message boundary whenever the proxy has to speak itself (errors,
//! shutdown).

mod cached;
mod outbox;
mod sql_scan;
pub mod state;
mod wakes;

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use cached::{Completed, SessionCache};
use outbox::Outbox;
use wakes::{Source, Wakes};

pub use state::{SessionState, TxStatus};

use crate::cancel::Registration;
use crate::error::{Error, Kind};
use crate::shared::{Phase, Shared};
use crate::stream::{ReadHalf, Stream, WriteHalf};
use crate::upstream::Upstream;
use crate::wire::authored::{error_response, sqlstate, Severity, TERMINATE};
use crate::wire::frame::{complete_prefix, error_field, frames, Header, HEADER_LEN};
use crate::wire::startup::StartupMessage;

/// Read buffers start at this size and are topped up to it; results larger than this stream through
/// in several reads.
const READ_CHUNK: usize = 16 * 1024;

/// Upstream messages are bounded only by the protocol's length field: Postgres is trusted to send
/// what it means, and a row is as large as the data in it.
const MAX_BACKEND_MESSAGE: usize = u32::MAX as usize;

/// SASL mechanisms are listed in AuthenticationSASL (R, code 10).
const AUTH_SASL: [u8; 4] = 10u32.to_be_bytes();

/// The mechanism that binds SCRAM to the TLS channel; see [`Session::relay_upstream`].
const SCRAM_PLUS: &[u8] = b"SCRAM-SHA-256-PLUS";

/// How long the last bytes of a session may take to be written: a peer that stopped reading must
/// not hold the session (and its connection slot) open.
const FAREWELL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a session that ended with writes in flight waits for the upstream to finish them before
/// it bumps their generations a last time (see [`Session::run`]).
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Client bytes held in the proxy while a cacheable unit waits, past which the client is not read.
const MAX_HELD_CLIENT_BYTES: usize = 1 << 20;

/// Why a session ended, for the connection-closed log line.
#[derive(Debug)]
pub enum End {
    /// The client closed its connection (after Terminate, or not).
    ClientClosed,
    /// The upstream closed the connection.
    UpstreamClosed,
    /// The proxy is shutting down.
    Shutdown,
    /// An error ended the session; the client was told if it could be.
    Failed(Error),
}

/// Bytes relayed in each direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct Traffic {
    /// From the client to the upstream.
    pub from_client: u64,
    /// From the upstream to the client.
    pub to_client: u64,
}

/// A client session in its relaying phase: the startup message has gone upstream.
pub struct Session {
    client_rd: ReadHalf,
    client_wr: WriteHalf,
    upstream_rd: ReadHalf,
    upstream_wr: WriteHalf,
    /// The client reached the proxy over TLS.
    client_tls: bool,
    client_buf: BytesMut,
    upstream_buf: BytesMut,
    to_client: Outbox,
    to_upstream: Outbox,
    state: SessionState,
    shared: std::sync::Arc<Shared>,
    upstream_addr: std::net::SocketAddr,
    /// Keeps the backend's cancel key routable while the session lives.
    cancel: Option<Registration>,
    /// The client sent Terminate. It is not forwarded: the session ends there, and the upstream
    /// connection is either kept for another client (see [`crate::pool`]) or told goodbye by the proxy.
    client_terminated: bool,
    /// The raw startup message: the login a kept upstream connection can serve again.
    startup: Bytes,
    /// A replication connection (never kept: it streams WAL, not sessions).
    replication: bool,
    /// The server asked the client for something during the login (a password, SASL): only logins
    /// it accepted unasked may be handed to another client.
    challenged: bool,
    /// Tag of the last message forwarded to the client, to tell a clean upstream close from a crash.
    last_to_client: u8,
    traffic: Traffic,
    /// The role the client logged in as.
    user: String,
    /// The cache's state for this session; `None` when caching is off.
    cache: Option<SessionCache>,
    /// Which event sources the I/O loop must poll.
    wakes: Wakes,
}

/// What the I/O loop's wait ended with.
enum Event {
    /// Bytes (0 at the end of the stream) read into the client buffer, or the read's error.
    ClientRead(io::Result<usize>),
    /// Bytes read into the upstream buffer, or the read's error.
    UpstreamRead(io::Result<usize>),
    /// Some bytes were written while draining, after which the session may have become idle.
    Wrote,
    /// Writing to one side failed.
    WriteFailed(Error),
    /// The identical miss this session waited for has ended.
    FlightOver,
    /// The server's phase changed; `false` when the server is gone.
    PhaseChanged(bool),
}

impl Session {
    /// Starts relaying for `client`, whose `startup` message has been sent on `upstream`.
    pub fn new(
        client: Stream,
        upstream: Upstream,
        shared: std::sync::Arc<Shared>,
        startup: &StartupMessage,
        greeting: Option<Bytes>,
    ) -> Session {
        // Replication connections (pg_basebackup, logical subscribers) speak walsender commands and
        // stream WAL: nothing there is cacheable, and those commands are no writes to invalidate.
        let replication = startup.param("replication").is_some();
        let cache = shared.cache.as_ref().filter(|_| !replication).map(|cache| {
            SessionCache::new(
                std::sync::Arc::clone(cache),
                startup.user(),
                startup.database(),
                &startup.params,
            )
        });
        let client_tls = client.is_tls();
        let wakes = Wakes::new(client_tls, upstream.stream.is_tls());
        let mut upstream_buf = BytesMut::with_capacity(READ_CHUNK);
        // A kept connection's login replay is relayed as if the upstream had just sent it.
        if let Some(greeting) = greeting {
            upstream_buf.extend_from_slice(&greeting);
        }
        let (client_rd, client_wr) = client.into_split();
        let (upstream_rd, upstream_wr) = upstream.stream.into_split();
        Session {
            client_rd,
            client_wr,
            upstream_rd,
            upstream_wr,
            client_tls,
            client_buf: BytesMut::with_capacity(READ_CHUNK),
            upstream_buf,
            to_client: Outbox::default(),
            to_upstream: Outbox::default(),
            state: SessionState::default(),
            shared,
            upstream_addr: upstream.addr,
            cancel: None,
            client_terminated: false,
            startup: startup.raw.clone(),
            replication,
            challenged: false,
            last_to_client: 0,
            traffic: Traffic::default(),
            user: startup.user().to_owned(),
            cache,
            wakes,
        }
    }

    /// Relays until either side closes, an error, or shutdown; then closes both sides properly.
    pub async fn run(mut self, mut phase: watch::Receiver<Phase>) -> (End, Traffic) {
        let end = self.relay(&mut phase).await;
        let keep = self.may_keep_upstream(&end, *phase.borrow());
        let farewell = async {
            if matches!(end, End::Shutdown) {
                self.cancel_in_flight().await;
            }
            self.finish(&end, keep).await;
        };
        if tokio::time::timeout(FAREWELL_TIMEOUT, farewell)
            .await
            .is_err()
        {
            tracing::debug!("peer did not take the session's last bytes in time");
        }
        if keep {
            let (traffic, pool) = (self.traffic, std::sync::Arc::clone(&self.shared.pool));
            if let Some(leaving) = self.leaving() {
                tokio::spawn(async move { pool.keep(leaving).await });
            }
            return (end, traffic);
        }
        if let Some(unsettled) = self.cache.as_mut().and_then(SessionCache::unsettled) {
            // Writes whose end was never seen may still commit upstream: bump now, and again once the
            // upstream has closed (it finishes the statement before it reads the Terminate), so a read
            // in between cannot leave an old result cached under the new generation.
            unsettled.apply();
            let mut upstream = self.upstream_rd;
            tokio::spawn(async move {
                let mut sink = [0u8; 4096];
                let drained =
                    async { while matches!(upstream.read(&mut sink).await, Ok(n) if n > 0) {} };
                let _ = tokio::time::timeout(SETTLE_TIMEOUT, drained).await;
                unsettled.apply();
            });
        }
        (end, self.traffic)
    }

    /// Relays until the session ends. The shutdown watch is polled by the I/O loop, as one more of its
    /// event sources, through a future that lives across many I/O events instead of one made anew
    /// for each.
    async fn relay(&mut self, phase: &mut watch::Receiver<Phase>) -> End {
        if !self.upstream_buf.is_empty() {
            if let Err(e) = self.relay_upstream() {
                return End::Failed(e);
            }
        }
        loop {
            let now = *phase.borrow_and_update();
            if self.must_close(now) {
                return End::Shutdown;
            }
            let changed = std::pin::pin!(phase.changed());
            if let Some(end) = self.relay_io(now == Phase::Draining, changed).await {
                return end;
            }
        }
    }

    /// The I/O event loop. Returns the session's end, or `None` when the phase changed or, when
    /// `draining`, the session has become idle. Each turn waits for one event, in order of priority,
    /// with the writes that are possible done on the way, and handles it.
    async fn relay_io<P>(&mut self, draining: bool, mut phase: Pin<&mut P>) -> Option<End>
    where
        P: Future<Output = Result<(), watch::error::RecvError>>,
    {
        self.wakes.keep(Source::PHASE);
        loop {
            if self.client_terminated {
                return Some(End::ClientClosed);
            }
            if draining && self.must_close(Phase::Draining) {
                return None;
            }
            top_up(&mut self.client_buf);
            top_up(&mut self.upstream_buf);
            let holding = self.cache.is_some() && held_back(&self.client_buf);
            let event = {
                let waiting = self.cache.as_mut().and_then(SessionCache::waiting);
                let in_flight = waiting.is_some();
                let mut flight_over = std::pin::pin!(async {
                    if let Some((rx, deadline)) = waiting {
                        let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
                    }
                });
                let wakes = &self.wakes;
                poll_fn(|cx| {
                    wakes.register(cx.waker());
                    // Writes first, then results, then requests: drain before taking in more.
                    let to_client = &mut self.to_client;
                    let wrote =
                        match drain(wakes, Source::CLIENT_WRITE, to_client, &mut self.client_wr) {
                            Ok(wrote) => wrote,
                            Err(e) => return Poll::Ready(Event::WriteFailed(Error::client_io(e))),
                        };
                    let to_upstream = &mut self.to_upstream;
                    let wrote = match drain(
                        wakes,
                        Source::UPSTREAM_WRITE,
                        to_upstream,
                        &mut self.upstream_wr,
                    ) {
                        Ok(also) => wrote | also,
                        Err(e) => return Poll::Ready(Event::WriteFailed(Error::upstream_io(e))),
                    };
                    if draining && wrote {
                        return Poll::Ready(Event::Wrote);
                    }
                    if !self.to_client.is_full() {
                        let read = self.upstream_rd.read_buf(&mut self.upstream_buf);
                        if let Poll::Ready(read) = wakes.poll(Source::UPSTREAM_READ, read) {
                            return Poll::Ready(Event::UpstreamRead(read));
                        }
                    }
                    if !self.to_upstream.is_full() && !holding {
                        let read = self.client_rd.read_buf(&mut self.client_buf);
                        if let Poll::Ready(read) = wakes.poll(Source::CLIENT_READ, read) {
                            return Poll::Ready(Event::ClientRead(read));
                        }
                    }
                    if in_flight && flight_over.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::FlightOver);
                    }
                    wakes
                        .poll(Source::PHASE, phase.as_mut())
                        .map(|changed| Event::PhaseChanged(changed.is_ok()))
                })
                .await
            };
            match event {
                Event::WriteFailed(e) => return Some(End::Failed(e)),
                Event::ClientRead(Err(e)) => return Some(End::Failed(Error::client_io(e))),
                Event::UpstreamRead(Err(e)) => return Some(End::Failed(Error::upstream_io(e))),
                Event::Wrote => {}
                Event::UpstreamRead(Ok(0)) => return Some(End::UpstreamClosed),
                Event::UpstreamRead(Ok(_)) => {
                    match self.relay_upstream() {
                        Ok(Some(completed)) => self.store(completed).await,
                        Ok(None) => {}
                        Err(e) => return Some(End::Failed(e)),
                    }
                    if let Err(e) = self.dispatch().await {
                        return Some(End::Failed(e));
                    }
                }
                Event::ClientRead(Ok(0)) => return Some(End::ClientClosed),
                Event::ClientRead(Ok(_)) => {
                    if let Err(e) = self.relay_client().await {
                        return Some(End::Failed(e));
                    }
                }
                Event::FlightOver => {
                    if let Some(c) = self.cache.as_mut() {
                        c.stop_waiting();
                    }
                    if let Err(e) = self.dispatch().await {
                        return Some(End::Failed(e));
                    }
                }
                // The server gone without saying so ends the session as at a shutdown deadline.
                Event::PhaseChanged(alive) => return (!alive).then_some(End::Shutdown),
            }
        }
    }

    /// During a drain a session closes as soon as it is idle; at the deadline, whatever it is doing.
    fn must_close(&self, phase: Phase) -> bool {
        match phase {
            Phase::Running => false,
            Phase::Draining => {
                self.state.is_idle()
                    && self.client_buf.is_empty()
                    && self.to_client.is_empty()
                    && self.to_upstream.is_empty()
            }
            Phase::Terminating => true,
        }
    }

    /// Queues the complete client messages at the front of the buffer for the upstream, or, with the
    /// cache on, hands them to [`Session::dispatch`].
    async fn relay_client(&mut self) -> Result<(), Error> {
        let max = self.shared.config.max_message_bytes;
        let len = complete_prefix(&mut self.client_buf, max).map_err(Error::client_protocol)?;
        if self.cache.is_some() {
            return self.dispatch().await;
        }
        if len == 0 {
            return Ok(());
        }
        let chunk = self.client_buf.split_to(len).freeze();
        let mut end = len;
        let mut offset = 0;
        for (tag, body) in frames(&chunk) {
            self.state.on_frontend(tag, &chunk.slice_ref(body));
            if tag == b'X' {
                self.client_terminated = true;
                end = offset;
                break;
            }
            offset += HEADER_LEN + body.len();
        }
        self.traffic.from_client += len as u64;
        self.to_upstream.push(chunk.slice(..end));
        Ok(())
    }

    /// Queues the complete upstream messages at the front of the buffer for the client.
    ///
    /// One message may be changed. An upstream reached over TLS offers SCRAM-SHA-256-PLUS, and a client
    /// on plain TCP to the proxy must refuse that offer (libpq: "server offered SCRAM-SHA-256-PLUS
    /// authentication over a non-SSL connection", a defence against a man in the middle). For such a
    /// client the mechanism is removed from the list, so it uses SCRAM-SHA-256 and tells the server it
    /// has no channel to bind, which the server accepts. Clients on TLS to the proxy see the list
    /// unchanged: hiding it from them would look like a downgrade attack (see the README).
    ///
    /// With the cache on, replies to Parse messages the proxy injected are dropped, and each message
    /// is shown to the cache (which tees answers into fills and settles writes at ReadyForQuery);
    /// the fill a ReadyForQuery completed is returned for storing.
    fn relay_upstream(&mut self) -> Result<Option<Completed>, Error> {
        let len = complete_prefix(&mut self.upstream_buf, MAX_BACKEND_MESSAGE).map_err(|e| {
            Error::upstream_io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        if len == 0 {
            return Ok(None);
        }
        let chunk = self.upstream_buf.split_to(len).freeze();
        // Messages replaced (or dropped, with `None`); empty unless auth or an injected Parse.
        let mut edits: Vec<(std::ops::Range<usize>, Option<Bytes>)> = Vec::new();
        let mut completed = None;
        let mut offset = 0;
        for (tag, body) in frames(&chunk) {
            let dropped = tag == b'1' && self.state.next_reply_is_silent();
            self.state.on_backend(tag, body);
            let end = offset + HEADER_LEN + body.len();
            if tag == b'R' {
                // Anything but AuthenticationOk asks the client for something.
                self.challenged |= body[..] != [0, 0, 0, 0];
            }
            match tag {
                b'K' => {
                    self.cancel = Some(
                        self.shared
                            .cancels
                            .register(chunk.slice_ref(body), self.upstream_addr),
                    );
                }
                b'R' if !self.client_tls && body.starts_with(&AUTH_SASL) => {
                    if let Some(m) = without_scram_plus(body) {
                        edits.push((offset..end, Some(m)));
                    }
                }
                _ => {}
            }
            if dropped {
                edits.push((offset..end, None));
            } else {
                self.last_to_client = tag;
            }
            if self.cache.is_some() {
                if let Some(done) = self.observe_backend(tag, body, &chunk, offset..end, dropped) {
                    completed = Some(done);
                }
            }
            offset = end;
        }
        let (mut from, mut sent) = (0, 0);
        for (range, replacement) in edits {
            let parts = [Some(chunk.slice(from..range.start)), replacement];
            for part in parts.into_iter().flatten() {
                sent += part.len();
                self.to_client.push(part);
            }
            from = range.end;
        }
        sent += len - from;
        self.to_client.push(chunk.slice(from..));
        self.traffic.to_client += sent as u64;
        Ok(completed)
    }

    /// At the drain deadline a statement may still be running upstream. Closing the socket would not
    /// stop it (a busy backend does not read), and a client told 57P01 must not see its statement
    /// commit afterwards. So, as Postgres's own fast shutdown does, the statement is cancelled; what the
    /// upstream answers up to the cancellation is still relayed (a statement that finished first shows
    /// its result), and the cancellation's own error and what follows it are replaced by the 57P01.
    async fn cancel_in_flight(&mut self) {
        let Some(key) = self.state.backend_key.clone() else {
            return;
        };
        if !self.state.awaits_reply() {
            return;
        }
        self.shared.cancels.cancel(&key).await;
        while self.state.awaits_reply() {
            top_up(&mut self.upstream_buf);
            match self.upstream_rd.read_buf(&mut self.upstream_buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let Ok(len) = complete_prefix(&mut self.upstream_buf, MAX_BACKEND_MESSAGE) else {
                return;
            };
            let chunk = self.upstream_buf.split_to(len).freeze();
            let mut offset = 0;
            for (tag, body) in frames(&chunk) {
                if tag == b'E'
                    && error_field(body, b'C') == Some(sqlstate::QUERY_CANCELED.as_bytes())
                {
                    self.to_client.push(chunk.slice(..offset));
                    return;
                }
                self.state.on_backend(tag, body);
                offset += HEADER_LEN + body.len();
            }
            self.to_client.push(chunk);
        }
    }

    /// Delivers what was already relayed, tells the client why the session ends (when it can still
    /// hear it) and says goodbye upstream, unless the upstream connection is to be kept.
    async fn finish(&mut self, end: &End, keep: bool) {
        let notice = match end {
            End::Shutdown => Some(error_response(
                Severity::Fatal,
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command",
            )),
            End::UpstreamClosed if !self.state.is_idle() && self.last_to_client != b'E' => {
                Some(error_response(
                    Severity::Fatal,
                    sqlstate::CONNECTION_FAILURE,
                    &format!(
                        "upstream {} closed the connection unexpectedly",
                        self.upstream_addr
                    ),
                ))
            }
            End::Failed(e) => e
                .sqlstate()
                .map(|code| error_response(Severity::Fatal, code, &e.to_string())),
            _ => None,
        };
        let client_gone = match end {
            End::ClientClosed => true,
            End::Failed(e) => e.kind() == Kind::ClientIo,
            _ => false,
        };
        if !client_gone {
            if let Some(message) = notice {
                self.to_client.push(message);
            }
            let _ = self.to_client.write_all(&mut self.client_wr).await;
            let _ = self.client_wr.shutdown().await;
        }
        if keep {
            return;
        }
        self.to_upstream.push(Bytes::from_static(TERMINATE));
        let _ = self.to_upstream.write_all(&mut self.upstream_wr).await;
        let _ = self.upstream_wr.shutdown().await;
    }

    /// Whether the upstream connection can serve another client of the same login once reset (when
    /// the operator opted into reuse): the client said Terminate with nothing in flight or
    /// unsettled, after a login the server accepted unasked, without creating temporary objects,
    /// while the proxy keeps serving.
    fn may_keep_upstream(&self, end: &End, phase: Phase) -> bool {
        self.shared.pool.enabled()
            && matches!(end, End::ClientClosed)
            && self.client_terminated
            && phase == Phase::Running
            && !self.replication
            && !self.challenged
            && self.state.backend_key.is_some()
            && !self.state.used_temp
            && self.state.is_idle()
            && self.to_upstream.is_empty()
            && self.upstream_buf.is_empty()
            && self.cache.as_ref().is_none_or(SessionCache::is_quiet)
    }

    /// The upstream connection and what the pool needs to greet its next client.
    fn leaving(self) -> Option<crate::pool::Leaving> {
        Some(crate::pool::Leaving {
            startup: self.startup,
            stream: Stream::unsplit(self.upstream_rd, self.upstream_wr)?,
            addr: self.upstream_addr,
            params: self.state.params,
            key: self.state.backend_key?,
        })
    }
}

/// Writes from `outbox` to `dest` for as long as `source` is due and the destination takes bytes.
/// Returns whether anything was written.
fn drain<W: AsyncWrite + Unpin>(
    wakes: &Wakes,
    source: Source,
    outbox: &mut Outbox,
    dest: &mut W,
) -> io::Result<bool> {
    let mut wrote = false;
    while !outbox.is_empty() {
        match wakes.poll(source, poll_fn(|cx| outbox.poll_write_some(cx, dest))) {
            Poll::Ready(written) => {
                written?;
                wrote = true;
            }
            Poll::Pending => break,
        }
    }
    Ok(wrote)
}

/// Keeps room for one more read without reallocating in the steady state: once the `Bytes` split off
/// earlier are dropped, `reserve` reclaims their space.
fn top_up(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// Whether complete client messages worth [`MAX_HELD_CLIENT_BYTES`] wait undispatched: a cacheable
/// unit waits (for earlier answers, or an identical miss) and the client keeps pipelining. Reading
/// then pauses, as it does when the upstream is slow; a single large message still being read is
/// not held back.
fn held_back(buf: &[u8]) -> bool {
    buf.len() >= MAX_HELD_CLIENT_BYTES
        && Header::peek(buf, usize::MAX)
            .ok()
            .flatten()
            .is_some_and(|h| buf.len() >= h.total_len)
}

/// AuthenticationSASL without SCRAM-SHA-256-PLUS, or `None` when it is not offered.
fn without_scram_plus(body: &[u8]) -> Option<Bytes> {
    let mechanisms = &body[AUTH_SASL.len()..];
    let listed: Vec<&[u8]> = mechanisms
        .split(|&b| b == 0)
        .filter(|m| !m.is_empty())
        .collect();
    if !listed.contains(&SCRAM_PLUS) {
        return None;
    }
    let mut kept = Vec::from(AUTH_SASL);
    for m in listed.into_iter().filter(|m| *m != SCRAM_PLUS) {
        kept.extend_from_slice(m);
        kept.push(0);
    }
    kept.push(0);
    let mut message = BytesMut::with_capacity(HEADER_LEN + kept.len());
    message.extend_from_slice(b"R");
    message.extend_from_slice(&(kept.len() as u32 + 4).to_be_bytes());
    message.extend_from_slice(&kept);
    Some(message.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_plus_is_removed_and_the_rest_kept() {
        let body = [&AUTH_SASL[..], b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"].concat();
        let message = without_scram_plus(&body).unwrap();
        assert_eq!(&message[..], b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0");
        let plain = [&AUTH_SASL[..], b"SCRAM-SHA-256\0\0"].concat();
        assert_eq!(without_scram_plus(&plain), None);
    }
}
