//! The fault-injection suite: the `veneer` binary under a steady read/write load, with writes made
//! through it and directly beside it, while the server's walsender is terminated, the server is
//! restarted fast and immediately, paused (SIGSTOP of the postmaster: it takes connections and
//! answers none), and clients are killed mid-query. Checked throughout and afterwards:
//!
//! - no stale read: a read returns at least the last value acknowledged before it started, for a
//!   row written through Veneer; for a row written directly, the last value acknowledged
//!   [`LAG_BOUND`] before it started (by then the stream has applied it, or is down and Veneer
//!   forwards);
//! - no lost write: every acknowledged write is in the table, and nothing more than was sent;
//! - no client left without an answer (a result or an error) for longer than [`ANSWER_BOUND`];
//! - afterwards, Veneer's file descriptors and the server's sessions are back to their baseline, its
//!   memory stays within the cache's bound, and it serves hits again.
//!
//! A test binary of its own (it restarts its server). `VENEER_FAULT_ROUNDS` (1 by default) sets how
//! many rounds of every fault run, `VENEER_FAULT_SEED` the order they come in; `tests/faults/run`
//! runs it long.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use veneer_tests::binary::VeneerProcess;
use veneer_tests::client::config;
use veneer_tests::fuzz::Rng;
use veneer_tests::*;

/// Counters written through Veneer: ids `1..=THROUGH`.
const THROUGH: i32 = 2;
/// Counters written directly: ids `THROUGH + 1..=COUNTERS`.
const COUNTERS: i32 = 4;
/// Rows of about a kilobyte, read at random so the cache fills past its bound and evicts.
const WIDE_ROWS: i32 = 3000;
/// The first rows of those, read most of the time: they stay cached.
const HOT_ROWS: usize = 100;
/// Pause between one writer's writes: enough writes to keep the stream busy, few enough that a
/// counter stays cached between them now and then.
const WRITE_PACE: Duration = Duration::from_millis(10);
/// Veneer's cache bound in this suite: small, so that the rows above overflow it.
const CACHE_MAX_BYTES: u64 = 2 << 20;
/// Veneer's connect timeout in this suite: what a client waits at most while the server is paused.
const CONNECT_TIMEOUT: &str = "2s";
/// Longest a client may wait for any answer.
const ANSWER_BOUND: Duration = Duration::from_secs(10);
/// After this, a direct write must show through Veneer.
const LAG_BOUND: Duration = Duration::from_secs(3);
/// Readers through Veneer.
const READERS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_faults_reads_stay_fresh_writes_stay_and_every_client_is_answered() {
    let rounds: usize = env_number("VENEER_FAULT_ROUNDS", 1);
    let seed: u64 = env_number("VENEER_FAULT_SEED", 1);
    // An acknowledged commit must survive an immediate restart (the test server's default is off).
    veneer_tests::cache::run_direct("ALTER SYSTEM SET synchronous_commit = on").await;
    veneer_tests::cache::run_direct(&format!(
        "SELECT pg_reload_conf();
         CREATE TABLE fi_counter (id int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO fi_counter SELECT g, 0 FROM generate_series(1, {COUNTERS}) g;
         CREATE TABLE fi_wide (id int PRIMARY KEY, body text NOT NULL);
         INSERT INTO fi_wide SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, {WIDE_ROWS}) g;"
    ))
    .await;
    let veneer = VeneerProcess::start(&[
        "--connect-timeout",
        CONNECT_TIMEOUT,
        "--cache-max-bytes",
        &CACHE_MAX_BYTES.to_string(),
    ])
    .await;
    veneer_tests::cache::wait_cache_ready(veneer.addr()).await;
    let direct = direct_admin().await;
    let baseline = Footprint::of(&veneer, &direct).await;
    println!("baseline: {baseline:?}");

    let run = Arc::new(Run::default());
    let mut load = JoinSet::new();
    for id in 1..=COUNTERS {
        let target = if id <= THROUGH {
            veneer.addr()
        } else {
            pg().addr()
        };
        load.spawn(write(run.clone(), target, id));
    }
    for reader in 0..READERS {
        load.spawn(read(run.clone(), veneer.addr(), seed + reader as u64));
    }

    let mut rng = Rng::new(seed);
    for round in 0..rounds {
        let mut faults = vec![
            Fault::WalsenderTerminated,
            Fault::WalsenderTerminated,
            Fault::Restart("fast"),
            Fault::Restart("immediate"),
            Fault::Pause(Duration::from_secs(3)),
            Fault::KillClients(20),
        ];
        for i in (1..faults.len()).rev() {
            faults.swap(i, rng.below(i + 1));
        }
        for fault in faults {
            steady(&run, Duration::from_secs(1)).await;
            println!("round {round}: {fault:?}");
            fault.inject(veneer.addr()).await;
        }
    }
    steady(&run, Duration::from_secs(2)).await;
    run.stop.store(true, Ordering::Relaxed);
    within_for(ANSWER_BOUND * 2, "the load to stop", async {
        while let Some(done) = load.join_next().await {
            done.expect("a load task panicked");
        }
    })
    .await;
    println!("{}", run.summary());

    let stale = run.stale.lock().unwrap().clone();
    assert!(stale.is_empty(), "stale reads: {stale:#?}");
    let unanswered = run.unanswered.lock().unwrap().clone();
    assert!(
        unanswered.is_empty(),
        "left without an answer: {unanswered:#?}"
    );
    // The observer's session did not survive the restarts.
    drop(direct);
    let direct = direct_admin().await;
    run.check_writes(&direct).await;
    assert!(
        run.reads.load(Ordering::Relaxed) > 100 && run.hits_seen(),
        "the load did too little to tell: {}",
        run.summary()
    );

    // Afterwards: every counter as the server has it, hits again, nothing left open.
    let client = connect(&config(veneer.addr(), SUPERUSER, None, "fi-after"))
        .await
        .expect("connect after the faults");
    for id in 1..=COUNTERS {
        let sql = format!("SELECT v FROM fi_counter WHERE id = {id}");
        let server = veneer_tests::cache::first(&direct, &sql).await;
        let seen = veneer_tests::cache::until_seen(&client, &sql, server.as_deref().unwrap()).await;
        assert!(seen < LAG_BOUND, "counter {id} showed after {seen:?}");
    }
    let hits = veneer_tests::cache::figure(&client, "hits").await;
    assert!(
        wait_for(STEP_TIMEOUT, || async {
            veneer_tests::cache::first(&client, "SELECT body FROM fi_wide WHERE id = 1").await;
            veneer_tests::cache::figure(&client, "hits").await > hits
        })
        .await,
        "no hits after the faults"
    );
    drop(client);
    let mut after = Footprint::of(&veneer, &direct).await;
    let settled = wait_for(STEP_TIMEOUT, || {
        let (veneer, direct) = (&veneer, &direct);
        async move {
            let now = Footprint::of(veneer, direct).await;
            now.descriptors <= baseline.descriptors && now.sessions <= baseline.sessions
        }
    })
    .await;
    if settled {
        after = Footprint::of(&veneer, &direct).await;
    }
    println!("after: {after:?}");
    assert!(settled, "not back to the baseline {baseline:?}: {after:?}");
    // The cache holds at most CACHE_MAX_BYTES; what else grew (session buffers, the allocator's
    // free lists) must stay small beside it.
    let bound = baseline.rss + 2 * CACHE_MAX_BYTES + (48 << 20);
    assert!(
        after.rss <= bound,
        "memory grew past the cache's bound: {after:?} (bound {bound} bytes)"
    );
    // Every fault here passes by itself: each retry came within a second, never after 30 s.
    let output = veneer.output();
    let retries: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("replication stream down"))
        .collect();
    assert!(!retries.is_empty(), "no stream loss logged:\n{output}");
    for line in &retries {
        let wait = line
            .split("retry_in=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no retry_in in {line}"));
        let subsecond = ["ms", "µs", "ns"].iter().any(|unit| wait.ends_with(unit))
            || wait
                .trim_end_matches('s')
                .parse::<f64>()
                .is_ok_and(|s| s < 1.0);
        assert!(subsecond, "a retry waited {wait}: {line}");
    }
    println!(
        "{} stream losses logged, each retried within a second",
        retries.len()
    );
    veneer_tests::cache::run_direct("DROP TABLE fi_counter, fi_wide").await;
    veneer_tests::cache::run_direct("ALTER SYSTEM RESET synchronous_commit").await;
    veneer_tests::cache::run_direct("SELECT pg_reload_conf()").await;
}

/// What one run of the load saw.
#[derive(Default)]
struct Run {
    stop: AtomicBool,
    /// Per counter id, every acknowledged value with when it was acknowledged, in order.
    acked: Mutex<BTreeMap<i32, Vec<(Instant, i64)>>>,
    /// Per counter id, writes sent (acknowledged or not).
    sent: Mutex<BTreeMap<i32, u64>>,
    reads: AtomicU64,
    /// Reads that ended in an error (a restart ends sessions; a paused server refuses logins).
    errors: Mutex<BTreeMap<String, u64>>,
    stale: Mutex<Vec<String>>,
    unanswered: Mutex<Vec<String>>,
    /// Hits counted by Veneer, last seen by a reader.
    hits: AtomicU64,
}

impl Run {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn error(&self, what: &str, e: &tokio_postgres::Error) {
        let kind = match e.code() {
            Some(code) => format!("{what} {}", code.code()),
            None if e.is_closed() => format!("{what} closed"),
            None => format!("{what} {}", e.to_string().split(':').next().unwrap_or("")),
        };
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }

    /// Awaits `op`, noting a client left waiting past [`ANSWER_BOUND`] as a failure of the suite.
    async fn answered<T>(&self, what: &str, op: impl std::future::Future<Output = T>) -> Option<T> {
        let started = Instant::now();
        match tokio::time::timeout(ANSWER_BOUND, op).await {
            Ok(out) => Some(out),
            Err(_) => {
                self.unanswered
                    .lock()
                    .unwrap()
                    .push(format!("{what}, waiting since {started:?}"));
                None
            }
        }
    }

    /// The least value of counter `id` a read that started at `started` may return.
    fn floor(&self, id: i32, started: Instant) -> i64 {
        let cutoff = if id <= THROUGH {
            Some(started)
        } else {
            started.checked_sub(LAG_BOUND)
        };
        let Some(cutoff) = cutoff else { return 0 };
        let acked = self.acked.lock().unwrap();
        let history = acked.get(&id).map(Vec::as_slice).unwrap_or_default();
        let before = history.partition_point(|(at, _)| *at < cutoff);
        before.checked_sub(1).map_or(0, |i| history[i].1)
    }

    fn hits_seen(&self) -> bool {
        self.hits.load(Ordering::Relaxed) > 0
    }

    /// Every acknowledged write is in the table, and the table holds no more than was sent.
    async fn check_writes(&self, direct: &Client) {
        let acked = self.acked.lock().unwrap().clone();
        let sent = self.sent.lock().unwrap().clone();
        for id in 1..=COUNTERS {
            let value: i64 =
                scalar(direct, &format!("SELECT v FROM fi_counter WHERE id = {id}")).await;
            let history = acked.get(&id).cloned().unwrap_or_default();
            let last = history.last().map_or(0, |(_, v)| *v);
            let sent = sent.get(&id).copied().unwrap_or(0);
            assert!(
                value >= last && value >= history.len() as i64 && value <= sent as i64,
                "counter {id} is {value}: {} writes acknowledged (the last made it {last}), {sent} sent",
                history.len()
            );
        }
    }

    fn summary(&self) -> String {
        let acked: usize = self.acked.lock().unwrap().values().map(Vec::len).sum();
        format!(
            "{} reads ({} hits seen by the end), {acked} writes acknowledged, errors {:?}",
            self.reads.load(Ordering::Relaxed),
            self.hits.load(Ordering::Relaxed),
            self.errors.lock().unwrap()
        )
    }
}

/// Increments counter `id` at `target` (Veneer or the server) until the run stops, reconnecting
/// whenever a fault ends the session. Each write is its own transaction, acknowledged once COMMIT
/// has answered.
async fn write(run: Arc<Run>, target: SocketAddr, id: i32) {
    let login = config(target, SUPERUSER, None, "fi-writer");
    let sql = format!("BEGIN; UPDATE fi_counter SET v = v + 1 WHERE id = {id} RETURNING v; COMMIT");
    while !run.stopped() {
        let Some(client) = session(&run, &login).await else {
            continue;
        };
        while !run.stopped() {
            *run.sent.lock().unwrap().entry(id).or_default() += 1;
            let Some(result) = run.answered("a write", client.simple_query(&sql)).await else {
                break;
            };
            match result {
                Ok(messages) => {
                    let value = counter_value(&messages);
                    let acked_at = Instant::now();
                    run.acked
                        .lock()
                        .unwrap()
                        .entry(id)
                        .or_default()
                        .push((acked_at, value));
                    tokio::time::sleep(WRITE_PACE).await;
                }
                Err(e) => {
                    run.error("write", &e);
                    break;
                }
            }
        }
    }
}

/// Reads counters and wide rows through Veneer, in both protocols, until the run stops, checking each
/// counter read against the writes acknowledged before it started.
async fn read(run: Arc<Run>, veneer: SocketAddr, seed: u64) {
    let login = config(veneer, SUPERUSER, None, "fi-reader");
    let mut rng = Rng::new(seed);
    while !run.stopped() {
        let Some(client) = session(&run, &login).await else {
            continue;
        };
        let counter = match client
            .prepare("SELECT v FROM fi_counter WHERE id = $1")
            .await
        {
            Ok(statement) => statement,
            Err(e) => {
                run.error("prepare", &e);
                continue;
            }
        };
        let mut n = 0u64;
        while !run.stopped() {
            n += 1;
            if n % 50 == 0 {
                let status = run
                    .answered("status", client.simple_query("SHOW VENEER STATUS"))
                    .await;
                if let Some(Ok(messages)) = status {
                    if let Some(hits) = status_figure(&messages, "hits") {
                        run.hits.fetch_max(hits, Ordering::Relaxed);
                    }
                }
            }
            let id = rng.below(COUNTERS as usize) as i32 + 1;
            let started = Instant::now();
            run.reads.fetch_add(1, Ordering::Relaxed);
            let read = async {
                if n % 2 == 0 {
                    let row = client.query_one(&counter, &[&id]).await?;
                    Ok::<i64, tokio_postgres::Error>(row.get(0))
                } else {
                    let sql = format!("SELECT v FROM fi_counter WHERE id = {id}");
                    let messages = client.simple_query(&sql).await?;
                    Ok(counter_value(&messages))
                }
            };
            let Some(result) = run.answered("a counter read", read).await else {
                break;
            };
            match result {
                Ok(value) => {
                    let floor = run.floor(id, started);
                    if value < floor {
                        run.stale.lock().unwrap().push(format!(
                            "counter {id} read {value}, {floor} was acknowledged before the read \
                             started {:?} ago",
                            started.elapsed()
                        ));
                    }
                }
                Err(e) => {
                    run.error("read", &e);
                    break;
                }
            }
            let rows = if rng.below(5) == 0 {
                WIDE_ROWS as usize
            } else {
                HOT_ROWS
            };
            let wide = format!(
                "SELECT body FROM fi_wide WHERE id = {}",
                rng.below(rows) + 1
            );
            match run
                .answered("a wide read", client.simple_query(&wide))
                .await
            {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    run.error("read", &e);
                    break;
                }
                None => break,
            }
        }
    }
}

/// A session for `login`, or `None` (the error counted) when the login failed or went unanswered.
async fn session(run: &Run, login: &tokio_postgres::Config) -> Option<Client> {
    match run.answered("a login", login.connect(NoTls)).await? {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            Some(client)
        }
        Err(e) => {
            run.error("login", &e);
            // A refused login (the server restarting) is retried without spinning.
            tokio::time::sleep(Duration::from_millis(20)).await;
            None
        }
    }
}

/// The faults the suite injects.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The walsender ended by `pg_terminate_backend`.
    WalsenderTerminated,
    /// `pg_ctl restart -m <mode>`.
    Restart(&'static str),
    /// The postmaster stopped with SIGSTOP for this long: new connections queue unanswered.
    Pause(Duration),
    /// This many clients connect through Veneer, start a query (a slow one, a cached one, a large
    /// one) and vanish mid-query without a Terminate.
    KillClients(usize),
}

impl Fault {
    async fn inject(self, veneer: SocketAddr) {
        match self {
            Fault::WalsenderTerminated => {
                let direct = direct_admin().await;
                let ended: i64 = scalar(
                    &direct,
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication",
                )
                .await;
                // A stream restarting at this moment has no walsender to end.
                println!("  walsenders ended: {ended}");
            }
            Fault::Restart(mode) => {
                tokio::task::spawn_blocking(move || pg().restart(mode))
                    .await
                    .expect("restart the server");
                let login = config(pg().addr(), SUPERUSER, None, "fi-accepting");
                let up = wait_for(STEP_TIMEOUT, || async {
                    login.connect(NoTls).await.is_ok()
                })
                .await;
                assert!(up, "the server did not come back: {}", pg().log());
            }
            Fault::Pause(how_long) => {
                let paused = pg().pause();
                tokio::time::sleep(how_long).await;
                drop(paused);
            }
            Fault::KillClients(count) => {
                let login = config(veneer, SUPERUSER, None, "fi-killed");
                let mut killed = JoinSet::new();
                for i in 0..count {
                    let login = login.clone();
                    killed.spawn(async move {
                        let Ok(Ok((client, connection))) =
                            tokio::time::timeout(ANSWER_BOUND, login.connect(NoTls)).await
                        else {
                            return;
                        };
                        let connection = tokio::spawn(connection);
                        let sql = match i % 3 {
                            0 => "SELECT pg_sleep(5)",
                            1 => "SELECT body FROM fi_wide WHERE id = 7",
                            _ => "SELECT * FROM fi_wide",
                        };
                        let query = client.simple_query(sql);
                        // Gone after the query left, before (or as) its answer comes.
                        let _ =
                            tokio::time::timeout(Duration::from_millis(2 + i as u64), query).await;
                        connection.abort();
                    });
                }
                while killed.join_next().await.is_some() {}
            }
        }
    }
}

/// Lets the load run for `how_long` with no fault.
async fn steady(run: &Run, how_long: Duration) {
    let reads = run.reads.load(Ordering::Relaxed);
    tokio::time::sleep(how_long).await;
    println!(
        "  steady: {} reads",
        run.reads.load(Ordering::Relaxed) - reads
    );
}

/// Veneer's file descriptors and memory, and the server's sessions (other than the observer's).
#[derive(Debug, Clone, Copy)]
struct Footprint {
    descriptors: usize,
    rss: u64,
    sessions: i64,
}

impl Footprint {
    async fn of(veneer: &VeneerProcess, direct: &Client) -> Footprint {
        let pid = veneer.pid();
        let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("read veneer's descriptors")
            .count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024;
        let sessions = scalar(
            direct,
            "SELECT count(*) FROM pg_stat_activity \
             WHERE backend_type IN ('client backend', 'walsender') AND pid <> pg_backend_pid()",
        )
        .await;
        Footprint {
            descriptors,
            rss,
            sessions,
        }
    }
}

/// The first column of the first row of a simple query's answer: a counter.
fn counter_value(messages: &[SimpleQueryMessage]) -> i64 {
    veneer_tests::client::simple_rows(messages)[0][0]
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("a counter")
}

fn status_figure(messages: &[SimpleQueryMessage], name: &str) -> Option<u64> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) if row.get(0) == Some(name) => row.get(1)?.parse().ok(),
        _ => None,
    })
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
