//! Several Veneers sharing one tier, as real processes: three `veneer-cache-node`s (or a Redis), two
//! or three `veneer` processes, one Postgres. A result one proxy stored is a hit through another; a
//! write through one is read at once through it and, once their streams apply it, through the
//! others, never stale after; a stampede over the proxies reaches the database once; a restarted
//! proxy joins the others' stamps and hits again within seconds; a lease left by a dead proxy only
//! delays a miss.

use std::time::{Duration, Instant};

use veneer_tests::binary::VeneerProcess;
use veneer_tests::cache::{figure, first, on, own_database_with, status, wait_database_cached};
use veneer_tests::tier::RespServer;
use veneer_tests::*;

/// Rows of each test's table.
const ROWS: u32 = 100;

/// The fleet's secret: proxies share results only under one.
const SECRET: &str = "a fleet secret of the tests";

/// A `veneer` process on the tier `kind` over `nodes`.
async fn proxy(kind: &str, nodes: &[String]) -> VeneerProcess {
    VeneerProcess::start(&[
        "--cache-tier",
        kind,
        "--cache-nodes",
        &nodes.join(","),
        "--cache-secret",
        SECRET,
        // Debug builds on a loaded 2-core machine: a generous deadline, so hits are not lost to
        // scheduling.
        "--cache-tier-timeout",
        "200ms",
    ])
    .await
}

/// Three cache-nodes and their addresses.
async fn three_nodes() -> (Vec<RespServer>, Vec<String>) {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(RespServer::cache_node(&[]).await);
    }
    let addresses = nodes.iter().map(RespServer::address).collect();
    (nodes, addresses)
}

/// Creates database `name` with a table `t` of [`ROWS`] rows; returns a direct session on it.
async fn database(name: &str) -> Conn {
    own_database_with(
        name,
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, {ROWS}) g;
             CREATE TABLE other (id int PRIMARY KEY, v text); INSERT INTO other VALUES (1, 'x');"
        ),
    )
    .await
}

/// A session on `name` through `proxy`, once the proxy caches the database and has joined the
/// fleet's stamps (its floor is the others', when there are others).
async fn session(proxy: &VeneerProcess, name: &str) -> Conn {
    let client = connect(&on(proxy.addr(), name)).await.expect("connect");
    wait_database_cached(&client, name).await;
    // A first read of the table: its privileges are checked before any result of it is served.
    first(&client, "SELECT count(*) FROM t").await;
    client
}

/// The "floor" of `database` in the proxy's fleet status row.
async fn floor(client: &Conn, database: &str) -> String {
    veneer_tests::cache::fleet_position(client, database, "floor ")
        .await
        .unwrap_or_default()
}

/// Waits until every session's proxy has the same floor for `database` (they joined each other).
async fn joined(clients: &[&Conn], database: &str) {
    let same = wait_for(Duration::from_secs(30), || async {
        let mut floors = Vec::new();
        for c in clients {
            floors.push(floor(c, database).await);
        }
        floors.windows(2).all(|w| w[0] == w[1])
    })
    .await;
    let mut rows = Vec::new();
    for c in clients {
        rows.push(status(c).await[&format!("fleet {database}")].clone());
    }
    assert!(same, "the proxies never shared a floor: {rows:#?}");
}

/// Cacheable reads that went upstream (misses) through the proxies of `clients`.
async fn misses(clients: &[&Conn]) -> u64 {
    let mut total = 0;
    for c in clients {
        total += figure(c, "misses").await;
    }
    total
}

/// The status rows of a proxy's tier and fleet, for a failure's message.
async fn tier_rows(client: &Conn) -> Vec<(String, String)> {
    status(client)
        .await
        .into_iter()
        .filter(|(k, _)| k.starts_with("tier") || k.starts_with("fleet") || k.contains("miss"))
        .collect()
}

/// Waits until `sql` through `client` answers `expected`; returns how long that took.
async fn seen_within(client: &Conn, sql: &str, expected: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = first(client, sql).await;
        if now.as_deref() == Some(expected) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{sql} still answers {now:?}, not {expected:?}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_stored_through_one_proxy_is_a_hit_through_another_and_writes_stay_fresh() {
    let (_nodes, addresses) = three_nodes().await;
    let _direct = database("fleet_share").await;
    let (a, b) = (
        proxy("nodes", &addresses).await,
        proxy("nodes", &addresses).await,
    );
    let (ca, cb) = (
        session(&a, "fleet_share").await,
        session(&b, "fleet_share").await,
    );
    joined(&[&ca, &cb], "fleet_share").await;

    let read = "SELECT v FROM t WHERE id = 7";
    let before = misses(&[&ca, &cb]).await;
    assert_eq!(first(&ca, read).await.as_deref(), Some("row 7"));
    assert_eq!(first(&cb, read).await.as_deref(), Some("row 7"));
    assert_eq!(
        misses(&[&ca, &cb]).await - before,
        1,
        "a read through A then B is one upstream query"
    );
    let shared = status(&cb).await["tier_hits_filled_by_others"].clone();
    assert!(!shared.starts_with("0 of"), "{shared}");

    // A write through A (from a session that waits for its commit to be flushed, as a server's
    // default does; the tests' server does not): read at once through A, through B once its stream
    // applies it.
    let writer = connect(&on(a.addr(), "fleet_share"))
        .await
        .expect("connect");
    writer
        .batch_execute("SET synchronous_commit = on")
        .await
        .expect("set");
    let mut windows = Vec::new();
    for round in 0..20 {
        let value = format!("round {round}");
        let sql = "SELECT v FROM t WHERE id = 7";
        first(&cb, sql).await;
        first(&ca, sql).await;
        writer
            .batch_execute(&format!("UPDATE t SET v = '{value}' WHERE id = 7"))
            .await
            .expect("write through A");
        assert_eq!(
            first(&ca, sql).await.as_deref(),
            Some(value.as_str()),
            "a write through A is read at once through A"
        );
        windows.push(seen_within(&cb, sql, &value, Duration::from_secs(5)).await);
        for c in [&ca, &cb] {
            assert_eq!(first(c, sql).await.as_deref(), Some(value.as_str()));
        }
    }
    windows.sort();
    println!(
        "write through A not yet seen through B: median {:?}, worst {:?}",
        windows[windows.len() / 2],
        windows[windows.len() - 1]
    );

    // A write made directly on the server is seen through both.
    _direct
        .batch_execute("UPDATE t SET v = 'direct' WHERE id = 8")
        .await
        .expect("direct write");
    for c in [&ca, &cb] {
        seen_within(
            c,
            "SELECT v FROM t WHERE id = 8",
            "direct",
            Duration::from_secs(5),
        )
        .await;
    }
    // An operator's flush through A reaches B too. First the read must be cached through B: the
    // direct write above may still be on its way through either proxy's stream (a first read of
    // row 8 goes upstream, so seeing it proves neither stream applied it), and its late invalidation
    // rightly drops a fill made meanwhile; once both streams are past it, a fill stays.
    let count = "SELECT count(*) FROM t WHERE v LIKE 'row%'";
    let cached = wait_for(Duration::from_secs(5), || {
        veneer_tests::privileges::hit(&cb, &cb, count)
    })
    .await;
    assert!(
        cached,
        "cached before the flush: {:#?}",
        tier_rows(&cb).await
    );
    ca.batch_execute("VENEER FLUSH ALL").await.expect("flush");
    let flushed = wait_for(Duration::from_secs(5), || async {
        let before = figure(&cb, "misses").await;
        first(&cb, count).await;
        figure(&cb, "misses").await > before
    })
    .await;
    assert!(flushed, "VENEER FLUSH through A never reached B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_over_three_proxies_missing_one_key_reach_the_database_once() {
    let (_nodes, addresses) = three_nodes().await;
    let _direct = database("fleet_storm").await;
    let mut proxies = Vec::new();
    let mut probes = Vec::new();
    for _ in 0..3 {
        let p = proxy("nodes", &addresses).await;
        probes.push(session(&p, "fleet_storm").await);
        proxies.push(p);
    }
    let refs: Vec<&Conn> = probes.iter().collect();
    joined(&refs, "fleet_storm").await;
    let mut clients = Vec::new();
    for i in 0..50 {
        let client = connect(&on(proxies[i % 3].addr(), "fleet_storm"))
            .await
            .expect("connect");
        clients.push(client);
    }
    for round in 0..3 {
        let before = misses(&refs).await;
        let sql = format!("SELECT v, {round} FROM t WHERE id = 3");
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len()));
        let mut reads = tokio::task::JoinSet::new();
        for client in clients.drain(..) {
            let (barrier, sql) = (barrier.clone(), sql.clone());
            reads.spawn(async move {
                barrier.wait().await;
                let answer = first(&client, &sql).await;
                (client, answer)
            });
        }
        while let Some(done) = reads.join_next().await {
            let (client, answer) = done.expect("a reader");
            assert_eq!(answer.as_deref(), Some("row 3"));
            clients.push(client);
        }
        let went = misses(&refs).await - before;
        if went != 1 {
            let mut rows = Vec::new();
            for c in &refs {
                rows.push(tier_rows(c).await);
            }
            panic!(
                "round {round}: 50 clients over 3 proxies went upstream {went} times: {rows:#?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_proxy_joins_the_fleet_and_hits_again_within_seconds() {
    let (_nodes, addresses) = three_nodes().await;
    let direct = database("fleet_restart").await;
    let b = proxy("nodes", &addresses).await;
    let cb = session(&b, "fleet_restart").await;
    let mut a = proxy("nodes", &addresses).await;
    let ca = session(&a, "fleet_restart").await;
    joined(&[&ca, &cb], "fleet_restart").await;
    for id in 1..=ROWS {
        first(&ca, &format!("SELECT v FROM t WHERE id = {id}")).await;
    }
    drop(ca);
    a.signal("KILL").await;
    a.wait_exit(Duration::from_secs(10)).await;
    // Changes while A is away: B's stream follows them, A's new stream starts after them.
    direct
        .batch_execute("UPDATE t SET v = 'while away' WHERE id = 5")
        .await
        .expect("write while A is away");
    let a = proxy("nodes", &addresses).await;
    let restarted = Instant::now();
    let ca = session(&a, "fleet_restart").await;
    joined(&[&ca, &cb], "fleet_restart").await;
    let took = restarted.elapsed();
    // Its first pass over the rows hits what the old process stored (the row changed meanwhile
    // aside, read fresh).
    let before = figure(&ca, "hits").await;
    for id in 1..=ROWS {
        let v = first(&ca, &format!("SELECT v FROM t WHERE id = {id}")).await;
        let expected = if id == 5 {
            "while away".to_owned()
        } else {
            format!("row {id}")
        };
        assert_eq!(v.as_deref(), Some(expected.as_str()), "row {id}");
    }
    let hits = figure(&ca, "hits").await - before;
    println!("restarted proxy serving again after {took:?}; its first pass: {hits} hits of {ROWS}");
    assert!(
        hits >= u64::from(ROWS) * 9 / 10,
        "{hits} hits of {ROWS}: {:?}",
        status(&ca).await
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_mid_fill_delays_the_others_at_most_its_lease_and_leaves_nothing_stale() {
    let redis = RespServer::redis(None, &[]).await;
    let nodes = vec![redis.url()];
    let direct = database("fleet_kill").await;
    let (mut a, b) = (proxy("redis", &nodes).await, proxy("redis", &nodes).await);
    let (ca, cb) = (
        session(&a, "fleet_kill").await,
        session(&b, "fleet_kill").await,
    );
    joined(&[&ca, &cb], "fleet_kill").await;
    let read = "SELECT v FROM t WHERE id = 9";
    let before = misses(&[&ca, &cb]).await;
    first(&ca, read).await;
    assert_eq!(first(&cb, read).await.as_deref(), Some("row 9"));
    let went = misses(&[&ca, &cb]).await - before;
    assert_eq!(
        went,
        1,
        "shared through Redis: {:#?} {:#?}",
        tier_rows(&ca).await,
        tier_rows(&cb).await
    );

    // A slow read through A: A takes the key's lease, then dies before it can fill.
    let slow = "SELECT count(*), max(v) FROM t, generate_series(1, 200000) g";
    let (ca, in_flight) = {
        let ca = std::sync::Arc::new(ca);
        let reader = std::sync::Arc::clone(&ca);
        (
            ca,
            tokio::spawn(async move { reader.simple_query(slow).await.is_err() }),
        )
    };
    let leased = wait_for(Duration::from_secs(10), || async {
        !redis.keys_matching("*:lease").await.is_empty()
    })
    .await;
    assert!(leased, "A never took the lease");
    a.signal("KILL").await;
    a.wait_exit(Duration::from_secs(10)).await;
    assert!(in_flight.await.expect("reader"), "A's client saw A die");
    drop(ca);
    // B finds the dead proxy's lease, waits at most its length, then asks the database itself.
    let started = Instant::now();
    let expected = (ROWS * 200_000).to_string();
    assert_eq!(first(&cb, slow).await.as_deref(), Some(expected.as_str()));
    let waited = started.elapsed();
    println!("a miss behind a dead proxy's lease answered after {waited:?}");
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    // Nothing stale: a write is seen by the next read of every kind.
    direct
        .batch_execute("UPDATE t SET v = 'zz' WHERE id = 1")
        .await
        .expect("write");
    seen_within(&cb, read, "row 9", Duration::from_secs(1)).await;
    let max = "SELECT max(v) FROM t";
    seen_within(&cb, max, "zz", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_proxy_with_a_permanent_slot_restarts_warm() {
    let (_nodes, addresses) = three_nodes().await;
    let direct = database("fleet_alone").await;
    let args = |nodes: &str| {
        vec![
            "--cache-tier".to_owned(),
            "nodes".to_owned(),
            "--cache-nodes".to_owned(),
            nodes.to_owned(),
            "--cache-secret".to_owned(),
            SECRET.to_owned(),
            "--cache-tier-timeout".to_owned(),
            "200ms".to_owned(),
            "--replication-slot".to_owned(),
            "fleet_alone".to_owned(),
        ]
    };
    let nodes = addresses.join(",");
    let start = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        VeneerProcess::start(&refs).await
    };
    let mut a = start(args(&nodes)).await;
    let ca = session(&a, "fleet_alone").await;
    first(&ca, "SELECT v FROM other WHERE id = 1").await;
    for id in 1..=ROWS {
        first(&ca, &format!("SELECT v FROM t WHERE id = {id}")).await;
    }
    // A snapshot covering what it applied is in the tier (published every second).
    let covered = wait_for(Duration::from_secs(10), || {
        veneer_tests::cache::snapshot_covers_applied(&ca, "fleet_alone")
    })
    .await;
    assert!(covered, "{:?}", status(&ca).await);
    let old_floor = floor(&ca, "fleet_alone").await;
    drop(ca);
    a.signal("KILL").await;
    a.wait_exit(Duration::from_secs(10)).await;
    // A write while it is away, to another table: the stream replays it before serving (a table
    // written meanwhile may count as changed as a whole, when the replay comes before the catalog).
    direct
        .batch_execute("UPDATE other SET v = 'while away' WHERE id = 1")
        .await
        .expect("write while away");
    let a = start(args(&nodes)).await;
    let ca = session(&a, "fleet_alone").await;
    // Its stamps are those of before: the floor it resumed at, or the snapshot's once taken in.
    let rejoined = wait_for(Duration::from_secs(10), || async {
        floor(&ca, "fleet_alone").await == old_floor
    })
    .await;
    assert!(rejoined, "{:?}", status(&ca).await);
    assert_eq!(
        first(&ca, "SELECT v FROM other WHERE id = 1")
            .await
            .as_deref(),
        Some("while away")
    );
    let before = figure(&ca, "hits").await;
    for id in 1..=ROWS {
        let v = first(&ca, &format!("SELECT v FROM t WHERE id = {id}")).await;
        assert_eq!(v.as_deref(), Some(format!("row {id}").as_str()), "row {id}");
    }
    let hits = figure(&ca, "hits").await - before;
    assert!(hits >= u64::from(ROWS) * 9 / 10, "{hits} hits of {ROWS}");
    drop(ca);
    drop(a);
    let gone = wait_for(Duration::from_secs(20), || async {
        direct
            .batch_execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'fleet_alone%' AND NOT active")
            .await
            .is_ok()
            && veneer_tests::client::scalar::<i64>(
                &direct,
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'fleet_alone%'",
            )
            .await
                == 0
    })
    .await;
    assert!(gone, "the permanent slot was left behind");
}

/// The mixed workload's staleness check, through three proxies at once: clients on every proxy
/// read and write keys of one table (and a session writes directly) concurrently; then, once every
/// proxy's stream has applied everything, every key read through every proxy equals the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_workload_through_three_proxies_leaves_no_stale_row() {
    const KEYS: i32 = 50;
    let (_nodes, addresses) = three_nodes().await;
    let direct = database("fleet_mixed").await;
    direct
        .batch_execute(&format!(
            "CREATE TABLE mix (id int PRIMARY KEY, n int);
             INSERT INTO mix SELECT g, 0 FROM generate_series(1, {KEYS}) g"
        ))
        .await
        .expect("table");
    let mut proxies = Vec::new();
    let mut probes = Vec::new();
    for _ in 0..3 {
        let p = proxy("nodes", &addresses).await;
        probes.push(session(&p, "fleet_mixed").await);
        proxies.push(p);
    }
    let refs: Vec<&Conn> = probes.iter().collect();
    joined(&refs, "fleet_mixed").await;
    let mut work = tokio::task::JoinSet::new();
    for (i, p) in proxies
        .iter()
        .enumerate()
        .flat_map(|(i, p)| [(i, p), (i + 3, p)])
    {
        let client = connect(&on(p.addr(), "fleet_mixed"))
            .await
            .expect("connect");
        work.spawn(async move {
            // A fixed pseudo-random sequence per client.
            let mut x = 0x9e37_79b9_u32.wrapping_mul(i as u32 + 1);
            for _ in 0..300 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let id = (x % KEYS as u32) as i32 + 1;
                if x % 10 == 0 {
                    client
                        .batch_execute(&format!("UPDATE mix SET n = n + 1 WHERE id = {id}"))
                        .await
                        .expect("write through a proxy");
                } else {
                    first(&client, &format!("SELECT n FROM mix WHERE id = {id}")).await;
                }
            }
        });
    }
    let outside = connect(&on(pg().addr(), "fleet_mixed"))
        .await
        .expect("direct");
    work.spawn(async move {
        for round in 0..100 {
            outside
                .batch_execute(&format!(
                    "UPDATE mix SET n = n + 1 WHERE id = {}",
                    round % KEYS + 1
                ))
                .await
                .expect("direct write");
        }
    });
    while let Some(done) = work.join_next().await {
        done.expect("a client");
    }
    // Every proxy has applied everything committed.
    for c in &probes {
        veneer_tests::cache::wait_applied_all(&direct, c, "fleet_mixed").await;
    }
    let mut stale = Vec::new();
    for id in 1..=KEYS {
        let sql = format!("SELECT n FROM mix WHERE id = {id}");
        let truth = first(&direct, &sql).await;
        for (p, c) in probes.iter().enumerate() {
            let served = first(c, &sql).await;
            if served != truth {
                stale.push((p, id, served, truth.clone()));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale rows (proxy, id, served, actual): {stale:?}"
    );
}

/// A proxy waiting for another's fill stops waiting when that proxy gives its lease back without
/// storing (here the answer is an error, which is never cached), rather than for the lease's length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_given_up_by_its_lease_holder_does_not_hold_the_others_up() {
    let (nodes, addresses) = three_nodes().await;
    let direct = database("fleet_gave_up").await;
    let (a, b) = (
        proxy("nodes", &addresses).await,
        proxy("nodes", &addresses).await,
    );
    let (ca, cb) = (
        session(&a, "fleet_gave_up").await,
        session(&b, "fleet_gave_up").await,
    );
    joined(&[&ca, &cb], "fleet_gave_up").await;
    // An answer that takes a while, then fails: division by zero on the last row.
    let failing =
        |n: u32| format!("SELECT count(*) FROM generate_series(1, {n}) g WHERE 1 / ({n} - g) >= 0");
    let n = 2_000_000;
    let started = Instant::now();
    assert!(direct.simple_query(&failing(n)).await.is_err());
    let alone = started.elapsed();
    let sql = failing(n);
    let ca = std::sync::Arc::new(ca);
    let first_reader = {
        let (ca, sql) = (std::sync::Arc::clone(&ca), sql.clone());
        tokio::spawn(async move { ca.simple_query(&sql).await.is_err() })
    };
    let waits_before = status(&cb).await["tier_leases"].clone();
    // B asks once A holds the lease.
    let leased = wait_for(Duration::from_secs(10), || async {
        for node in &nodes {
            if !node.keys_matching("*:lease").await.is_empty() {
                return true;
            }
        }
        false
    })
    .await;
    assert!(leased, "A never took the lease");
    let started = Instant::now();
    assert!(
        cb.simple_query(&sql).await.is_err(),
        "the error reaches B's client"
    );
    let waited = started.elapsed();
    assert!(
        first_reader.await.expect("reader"),
        "the error reaches A's client"
    );
    println!(
        "the query alone: {alone:?}; through B while A held the lease: {waited:?} ({waits_before})"
    );
    assert!(
        waited < Duration::from_millis(1800) + alone,
        "B waited {waited:?} for a lease whose holder stored nothing (the query alone takes {alone:?})"
    );
}

/// A write through a proxy to a table its stream does not follow (outside a chosen publication)
/// keeps the writer's results of it apart for good: the stream will never report the change, so
/// the results stored before it must not come back once the stream has moved past the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_table_outside_the_publication_stays_seen_by_its_writer() {
    let (_nodes, addresses) = three_nodes().await;
    let direct = database("fleet_outside").await;
    direct
        .batch_execute(
            "CREATE TABLE t_out (id int PRIMARY KEY, v int); INSERT INTO t_out VALUES (1, 0);
             CREATE PUBLICATION part FOR TABLE t",
        )
        .await
        .expect("setup");
    let a = VeneerProcess::start(&[
        "--cache-tier",
        "nodes",
        "--cache-nodes",
        &addresses.join(","),
        "--cache-secret",
        SECRET,
        "--cache-tier-timeout",
        "200ms",
        "--publication",
        "part",
    ])
    .await;
    let ca = session(&a, "fleet_outside").await;
    let read = "SELECT v FROM t_out WHERE id = 1";
    assert_eq!(first(&ca, read).await.as_deref(), Some("0"));
    assert_eq!(first(&ca, read).await.as_deref(), Some("0"), "cached");
    ca.batch_execute("UPDATE t_out SET v = 1 WHERE id = 1")
        .await
        .expect("write through the proxy");
    assert_eq!(first(&ca, read).await.as_deref(), Some("1"));
    // The stream moves past that write: a later write to a followed table is applied.
    ca.batch_execute("UPDATE t SET v = 'later' WHERE id = 1")
        .await
        .expect("a later write");
    seen_within(
        &ca,
        "SELECT v FROM t WHERE id = 1",
        "later",
        Duration::from_secs(5),
    )
    .await;
    let applied = wait_for(Duration::from_secs(10), || async {
        status(&ca).await["fleet fleet_outside"].contains("0 marks waiting")
    })
    .await;
    assert!(applied, "{:?}", status(&ca).await);
    for _ in 0..3 {
        assert_eq!(
            first(&ca, read).await.as_deref(),
            Some("1"),
            "the writer's own write to a table outside the publication was lost"
        );
    }
}
