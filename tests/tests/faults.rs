//! Faults of the server under a running Veneer: how soon the cache serves again after the stream or
//! the server is lost, how much of it survives with each kind of slot, and that every wait inside
//! Veneer is bounded, so a client gets an answer or a proper error whatever the server does. A test
//! binary of its own: it pauses, restarts and crashes the server, so its tests take turns.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_postgres::Client;
use veneer_config::Millis;
use veneer_tests::cache::{
    figure, first, own_database_with, run_direct, stream_failures, wait_cache_ready,
};
use veneer_tests::client::config;
use veneer_tests::*;

/// The tests of this binary stop or pause the one server they share: one at a time.
static SERVER_FAULTS: Mutex<()> = Mutex::const_new(());

/// A proxy that gives up on a silent server after 1 s.
async fn short_connect_timeout_proxy() -> ProxyHandle {
    ProxyHandle::start_with(|s| {
        s.connect_timeout = Some(Millis(Duration::from_secs(1)));
    })
    .await
}

/// Ends every walsender (`direct`: a superuser session straight to the server), as an operator or
/// a failover does; returns how many there were.
async fn end_walsenders(direct: &Client) -> i64 {
    scalar(
        direct,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication",
    )
    .await
}

/// A server that takes connections and never answers (here: its postmaster stopped; in the field: a
/// server restarting, or a host gone silent) leaves a new client with FATAL 08001 within the connect
/// timeout, not waiting forever: the TLS negotiation with the upstream was not bounded, and that was
/// where a client and the replication listener waited for 12 minutes after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_gets_the_client_an_error_in_time() {
    let _turn = SERVER_FAULTS.lock().await;
    let proxy = short_connect_timeout_proxy().await;
    let paused = pg().pause();
    let started = Instant::now();
    let login = config(proxy.addr(), SUPERUSER, None, "faults-silent");
    let refused = within("the login through Veneer", connect(&login))
        .await
        .expect_err("the server answers nothing");
    let waited = started.elapsed();
    drop(paused);
    assert_eq!(
        refused.code().map(|c| c.code()),
        Some("08001"),
        "{refused:?}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
}

/// The faults the recovery is measured after.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The walsender ended by `pg_terminate_backend`, as an operator or a failover does.
    WalsenderTerminated,
    /// `pg_ctl restart -m fast`.
    FastRestart,
    /// `pg_ctl restart -m immediate`: a crash and recovery.
    ImmediateRestart,
}

/// After each fault the cache serves hits again within a second of the server taking connections
/// (the stream restarted, the catalog read again, a miss refilled): the listener retries at once and
/// then every few hundred milliseconds, not after 30 s. The times are printed; the bound asserted is
/// generous for a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_serves_again_within_a_second_of_each_fault() {
    let _turn = SERVER_FAULTS.lock().await;
    run_direct(
        "CREATE TABLE recovery (id int PRIMARY KEY, v int); INSERT INTO recovery VALUES (1, 1);",
    )
    .await;
    let proxy = ProxyHandle::start().await;
    wait_cache_ready(proxy.addr()).await;
    let mut reader = Reader::new(proxy.addr(), "SELECT v FROM recovery WHERE id = 1");
    assert!(
        reader.until_hit().await.is_some(),
        "never a hit before the faults"
    );
    for fault in [
        Fault::WalsenderTerminated,
        Fault::FastRestart,
        Fault::ImmediateRestart,
        Fault::WalsenderTerminated,
    ] {
        let (fault_at, accepting_at) = inject(fault).await;
        let hit_at = reader
            .until_hit()
            .await
            .unwrap_or_else(|| panic!("no hit within {STEP_TIMEOUT:?} of {fault:?}"));
        let after_accepting = hit_at - accepting_at;
        println!(
            "recovery after {fault:?}: hits again {:.0} ms after the fault, {:.0} ms after the \
             server took connections",
            (hit_at - fault_at).as_secs_f64() * 1000.0,
            after_accepting.as_secs_f64() * 1000.0,
        );
        assert!(
            after_accepting < Duration::from_secs(5),
            "hits again only {after_accepting:?} after the server took connections ({fault:?})"
        );
    }
    run_direct("DROP TABLE recovery").await;
}

/// Causes `fault`; returns when it began and when the server took connections again (the same
/// instant for a walsender termination, which leaves the server up).
async fn inject(fault: Fault) -> (Instant, Instant) {
    let mode = match fault {
        Fault::WalsenderTerminated => {
            let direct = direct_admin().await;
            let at = Instant::now();
            let ended = end_walsenders(&direct).await;
            assert!(ended >= 1, "no walsender to terminate");
            return (at, at);
        }
        Fault::FastRestart => "fast",
        Fault::ImmediateRestart => "immediate",
    };
    let at = Instant::now();
    tokio::task::spawn_blocking(move || pg().restart(mode))
        .await
        .expect("restart the server");
    let direct = config(pg().addr(), SUPERUSER, None, "faults-accepting");
    let accepting = wait_for(STEP_TIMEOUT, || async {
        direct.connect(tokio_postgres::NoTls).await.is_ok()
    })
    .await;
    assert!(accepting, "the server did not come back: {}", pg().log());
    (at, Instant::now())
}

/// One cached read, made again and again through a session it opens again whenever the server ended
/// it, telling whether each was served from the cache.
struct Reader {
    addr: std::net::SocketAddr,
    sql: &'static str,
    client: Option<Conn>,
}

impl Reader {
    fn new(addr: std::net::SocketAddr, sql: &'static str) -> Reader {
        Reader {
            addr,
            sql,
            client: None,
        }
    }

    /// Reads until a read is a hit, every 5 ms; returns when, or `None` after [`STEP_TIMEOUT`].
    async fn until_hit(&mut self) -> Option<Instant> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while Instant::now() < deadline {
            if self.hit().await {
                return Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    /// Whether the read was a hit; false when it was forwarded, missed, or its session was lost.
    async fn hit(&mut self) -> bool {
        let client = match self.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => match connect(&config(self.addr, SUPERUSER, None, "faults-reader")).await {
                Ok(client) => client,
                Err(_) => return false,
            },
        };
        let hit = read_was_hit(&client, self.sql).await;
        self.client = Some(client);
        hit.unwrap_or(false)
    }
}

/// Runs `sql` on `client` and tells whether the proxy served it from its cache (its `hits` figure
/// grew by one), or fails when the session does.
async fn read_was_hit(client: &Client, sql: &str) -> Result<bool, tokio_postgres::Error> {
    let before = hits(client).await?;
    client.simple_query(sql).await?;
    Ok(hits(client).await? > before)
}

async fn hits(client: &Client) -> Result<u64, tokio_postgres::Error> {
    let rows = client.simple_query("SHOW VENEER STATUS").await?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("hits") => {
                row.get(1)?.parse().ok()
            }
            _ => None,
        })
        .unwrap_or(0))
}

/// How much of the cache a walsender termination costs with each kind of slot. With the default
/// temporary slot the server drops the slot with the connection, so nothing tells what changed while
/// nobody followed: the cache starts over (one miss per key). A permanent slot resumes where it
/// stopped and the cache stays. The ratio of the first two seconds after the fault is printed for
/// each (the README quotes them); the permanent slot must keep most of the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_ratio_after_a_stream_loss_with_each_slot_kind() {
    let _turn = SERVER_FAULTS.lock().await;
    const KEYS: i32 = 200;
    run_direct(&format!(
        "CREATE TABLE warm (id int PRIMARY KEY, v int); \
         INSERT INTO warm SELECT g, g FROM generate_series(1, {KEYS}) g;"
    ))
    .await;
    let mut ratios = Vec::new();
    for slot in [None, Some("vfaults")] {
        let proxy = ProxyHandle::start_with(|s| s.replication_slot = slot.map(str::to_owned)).await;
        wait_cache_ready(proxy.addr()).await;
        let client = connect_as(proxy.addr(), "faults-warm").await;
        for id in 1..=KEYS {
            first(&client, &format!("SELECT v FROM warm WHERE id = {id}")).await;
        }
        let direct = direct_admin().await;
        let (hits, misses) = (
            figure(&client, "hits").await,
            figure(&client, "misses").await,
        );
        let ended = end_walsenders(&direct).await;
        assert_eq!(ended, 1, "one walsender");
        let window = Instant::now();
        let mut reads = 0u64;
        while window.elapsed() < Duration::from_secs(2) {
            let id = reads as i32 % KEYS + 1;
            first(&client, &format!("SELECT v FROM warm WHERE id = {id}")).await;
            reads += 1;
        }
        let hits = figure(&client, "hits").await - hits;
        let misses = figure(&client, "misses").await - misses;
        let ratio = hits as f64 / reads as f64;
        println!(
            "slot {}: {reads} reads in the 2 s after a walsender termination, {hits} hits, {misses} \
             misses, the rest forwarded: hit ratio {ratio:.3}",
            slot.map_or("temporary", |_| "permanent")
        );
        ratios.push(ratio);
        drop(client);
        proxy.shutdown().await.expect("clean shutdown");
        if let Some(prefix) = slot {
            drop_slot(&direct, &format!("{prefix}_{DATABASE}")).await;
        }
    }
    assert!(
        ratios[1] > 0.8,
        "the permanent slot kept too little of the cache: {ratios:?}"
    );
    run_direct("DROP TABLE warm").await;
}

/// While the stream is down, `SHOW VENEER STATUS` says since when, why (what ended the stream, in
/// the server's words, and what the retries met since) and when the next retry is. Here the
/// walsender is ended while the postmaster is paused, so each retry's login waits out the connect
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_names_the_cause_and_the_next_retry() {
    let _turn = SERVER_FAULTS.lock().await;
    let proxy = short_connect_timeout_proxy().await;
    wait_cache_ready(proxy.addr()).await;
    let client = connect_as(proxy.addr(), "faults-status").await;
    let direct = direct_admin().await;
    let paused = pg().pause();
    let ended = end_walsenders(&direct).await;
    assert_eq!(ended, 1, "one walsender");
    let key = format!("database {DATABASE}");
    let line = std::sync::Mutex::new(String::new());
    let told = wait_for(STEP_TIMEOUT, || async {
        let now = veneer_tests::cache::status(&client).await[&key].clone();
        let told = now.contains("timed out");
        *line.lock().unwrap() = now;
        told
    })
    .await;
    let line = line.into_inner().unwrap();
    drop(paused);
    assert!(told, "the status never named the retry's timeout: {line}");
    let first = "(server ended streaming: terminating connection due to administrator command \
                 (SQLSTATE 57P01); then: could not connect to upstream";
    assert!(
        line.contains("replication down since ") && line.contains(&format!(" UTC {first}")),
        "{line}"
    );
    assert!(line.contains("; retrying "), "{line}");
}

/// The status says why a database's catalog cannot be read, and the cache serves once it can: here
/// Veneer's own login may not connect to the database until it is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_names_why_the_catalog_is_not_read() {
    let _turn = SERVER_FAULTS.lock().await;
    let direct = veneer_tests::cache::own_database("faults_catalog").await;
    run_direct("REVOKE CONNECT ON DATABASE faults_catalog FROM PUBLIC").await;
    let proxy = ProxyHandle::start_with(|s| s.service_user = Some(SERVICE_USER.to_owned())).await;
    let client = connect(&veneer_tests::cache::on(proxy.addr(), "faults_catalog"))
        .await
        .expect("a superuser may connect");
    let line = std::sync::Mutex::new(String::new());
    let told = wait_for(STEP_TIMEOUT, || async {
        let now = veneer_tests::cache::status(&client).await["database faults_catalog"].clone();
        let told = now.contains("catalog not read (") && now.contains("); retrying");
        *line.lock().unwrap() = now;
        told
    })
    .await;
    let line = line.into_inner().unwrap();
    assert!(told, "{line}");
    // The catalog's own words, not the replication part of the line, name the refusal.
    let catalog = line
        .strip_prefix("forwarded: catalog not read (")
        .and_then(|rest| rest.split_once("); retrying"))
        .map(|(why, _)| why);
    assert!(
        catalog.is_some_and(|why| why.contains("permission denied for database")),
        "{line}"
    );
    run_direct(&format!(
        "GRANT CONNECT ON DATABASE faults_catalog TO {SERVICE_USER}"
    ))
    .await;
    veneer_tests::cache::wait_database_cached(&client, "faults_catalog").await;
    drop((client, direct));
    proxy.shutdown().await.expect("clean shutdown");
    run_direct("DROP DATABASE faults_catalog WITH (FORCE)").await;
}

/// A permanent slot the server invalidated (it kept more WAL than `max_slot_wal_keep_size` while no
/// Veneer followed it) is made again, so the stream starts afresh: it was resumed, refused ("can no
/// longer get changes from replication slot"), and the database's reads forwarded for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_slot_the_server_invalidated_is_made_again() {
    let _turn = SERVER_FAULTS.lock().await;
    let slot = format!("vlost_{DATABASE}");
    let status_of =
        format!("SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{slot}'");
    let start = || ProxyHandle::start_with(|s| s.replication_slot = Some("vlost".to_owned()));
    let proxy = start().await;
    wait_cache_ready(proxy.addr()).await;
    proxy.shutdown().await.expect("clean shutdown");
    let direct = direct_admin().await;
    run_direct("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'").await;
    run_direct("SELECT pg_reload_conf()").await;
    run_direct("CREATE TABLE wal_filler (v int)").await;
    let lost = wait_for(STEP_TIMEOUT, || async {
        run_direct("INSERT INTO wal_filler VALUES (1); SELECT pg_switch_wal(); CHECKPOINT").await;
        first(&direct, &status_of).await.as_deref() == Some("lost")
    })
    .await;
    run_direct("ALTER SYSTEM RESET max_slot_wal_keep_size").await;
    run_direct("SELECT pg_reload_conf()").await;
    run_direct("DROP TABLE wal_filler").await;
    assert!(lost, "the server did not invalidate the slot");
    let proxy = start().await;
    wait_cache_ready(proxy.addr()).await;
    assert_eq!(
        first(&direct, &status_of).await.as_deref(),
        Some("reserved")
    );
    proxy.shutdown().await.expect("clean shutdown");
    drop_slot(&direct, &slot).await;
}

/// Drops the permanent slot `name` once its stream has ended: its walsender exits just after the
/// proxy's shutdown.
async fn drop_slot(direct: &Client, name: &str) {
    let drop = format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = '{name}' AND NOT active"
    );
    let dropped = wait_for(STEP_TIMEOUT, || async {
        direct.simple_query(&drop).await.is_ok_and(|messages| {
            messages
                .iter()
                .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        })
    })
    .await;
    assert!(dropped, "the permanent slot {name} stayed in use");
}

/// A proxy process that was itself paused for longer than the stream's silence limit (SIGSTOP here;
/// in the field a VM migrating, a debugger) keeps its stream and its cache when it wakes: silence
/// is counted from a question asked after waking, not from the last message heard before the
/// pause. Before, every pause over 10 s dropped the stream and with it every cached result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_proxy_keeps_its_stream_and_its_cache() {
    let _server = SERVER_FAULTS.lock().await;
    let veneer = veneer_tests::binary::VeneerProcess::start(&["--metrics-listen", "off"]).await;
    let db = "paused_proxy";
    own_database_with(
        db,
        "CREATE TABLE p (id int PRIMARY KEY); INSERT INTO p VALUES (1);",
    )
    .await;
    let client = connect(&veneer_tests::cache::on(veneer.addr(), db))
        .await
        .expect("connect");
    veneer_tests::cache::wait_database_cached(&client, db).await;
    let sql = "SELECT id FROM p WHERE id = 1";
    first(&client, sql).await;
    assert!(
        read_was_hit(&client, sql).await.expect("read"),
        "not cached"
    );
    let failures = stream_failures(&client, db).await;
    veneer.signal("STOP").await;
    tokio::time::sleep(Duration::from_secs(12)).await; // the fault: longer than SILENCE_LIMIT
    veneer.signal("CONT").await;
    // A whole ask-and-wait interval after waking, the stream is the same one and the cache full.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        stream_failures(&client, db).await,
        failures,
        "the pause dropped the stream: {}",
        veneer.output()
    );
    assert!(
        read_was_hit(&client, sql).await.expect("read"),
        "the pause emptied the cache"
    );
}

/// A walsender that stops answering (SIGSTOP here; in the field a server or host hung with the
/// connection open) is noticed: the proxy asks it for a reply after a quiet interval and, hearing
/// nothing for as long again, counts the stream as lost and starts another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_walsender_is_noticed() {
    let _server = SERVER_FAULTS.lock().await;
    let proxy = ProxyHandle::start().await;
    let db = "silent_walsender";
    let direct = own_database_with(db, "CREATE TABLE s (id int PRIMARY KEY);").await;
    let client = connect(&veneer_tests::cache::on(proxy.addr(), db))
        .await
        .expect("connect");
    veneer_tests::cache::wait_database_cached(&client, db).await;
    let failures = stream_failures(&client, db).await;
    let pid: i32 = scalar(
        &direct,
        &format!(
            "SELECT pid FROM pg_stat_replication r JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = '{db}'"
        ),
    )
    .await;
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}");
    };
    signal("STOP");
    let noticed = wait_for(Duration::from_secs(30), || async {
        stream_failures(&client, db).await > failures
    })
    .await;
    signal("CONT");
    assert!(noticed, "a silent walsender went unnoticed for 30 s");
}
