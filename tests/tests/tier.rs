//! Remote cache tiers with real processes: three `veneer-cache-node`s, a private `redis-server` and
//! a three-primary Redis Cluster. Keys spread over the nodes; a killed, restarted or hung node costs
//! misses, never a client error; replicas serve when a node is down; values the tier did not get
//! from Veneer are refused; and reads stay fresh (write-through and replication) on every tier.

use std::time::{Duration, Instant};

use tokio_postgres::SimpleQueryMessage;
use veneer_config::{CacheTier, Millis, Settings};
use veneer_tests::cache::{
    figure, first, on, own_database_with, until_seen, wait_database_cached, write_applied,
};
use veneer_tests::tier::{RedisCluster, Reply, RespServer};
use veneer_tests::tools::PgTool;
use veneer_tests::*;

/// Rows of each test's table.
const ROWS: u32 = 200;

/// A proxy on a remote tier of `kind` over `nodes`, each key on `replicas` further nodes.
async fn proxy_on(
    kind: CacheTier,
    nodes: Vec<String>,
    adjust: impl FnOnce(&mut Settings),
) -> ProxyHandle {
    ProxyHandle::start_with(|s| {
        s.cache_tier = Some(kind);
        s.cache_nodes = nodes;
        // Debug builds on a loaded 2-core machine: a generous deadline, so hits are not lost to
        // scheduling (the hung-node test shows the deadline does its job).
        s.cache_tier_timeout = Some(Millis(Duration::from_millis(100)));
        adjust(s);
    })
    .await
}

/// Creates database `name` with a table of [`ROWS`] rows, and a session on it through `proxy`
/// once the proxy caches it. Returns (through the proxy, direct).
async fn scene(proxy: &ProxyHandle, name: &str) -> (Conn, Conn) {
    let direct = own_database_with(
        name,
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, {ROWS}) g;
             CREATE TABLE mark (n int);"
        ),
    )
    .await;
    let client = connect(&on(proxy.addr(), name)).await.expect("connect");
    wait_database_cached(&client, name).await;
    (client, direct)
}

/// Reads every row by key once; returns how many of the reads were hits.
async fn read_all(client: &Conn) -> u64 {
    let before = figure(client, "hits").await;
    for id in 1..=ROWS {
        let v = first(client, &format!("SELECT v FROM t WHERE id = {id}")).await;
        assert_eq!(v.as_deref(), Some(format!("row {id}").as_str()), "row {id}");
    }
    figure(client, "hits").await - before
}

/// Reads hit once warm; writes through the proxy are read back at once, and writes made directly on the server within
/// the replication bound.
async fn stays_fresh(client: &Conn, direct: &Conn, database: &str) {
    read_all(client).await;
    assert!(read_all(client).await >= u64::from(ROWS) * 9 / 10);
    client
        .batch_execute("UPDATE t SET v = 'through' WHERE id = 1")
        .await
        .expect("update through the proxy");
    assert_eq!(
        first(client, "SELECT v FROM t WHERE id = 1")
            .await
            .as_deref(),
        Some("through"),
        "a write through the proxy was not seen at once"
    );
    direct
        .batch_execute("UPDATE t SET v = 'direct' WHERE id = 2")
        .await
        .expect("update directly");
    let took = until_seen(client, "SELECT v FROM t WHERE id = 2", "direct").await;
    assert!(
        took < Duration::from_secs(5),
        "a direct write took {took:?} to be seen"
    );
    client
        .batch_execute("UPDATE t SET v = 'row ' || id WHERE id <= 2")
        .await
        .expect("restore");
    // Returns once the stream has applied those writes too (they bump what they wrote once more):
    // a later commit, applied, comes after them.
    write_applied(direct, client, database, "INSERT INTO mark VALUES (1)").await;
}

/// The rows of `SHOW VENEER NODES`.
async fn node_rows(client: &Conn) -> Vec<Vec<String>> {
    client
        .simple_query("SHOW VENEER NODES")
        .await
        .expect("SHOW VENEER NODES")
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or_default().to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

async fn three_nodes(extra: &[&str]) -> Vec<RespServer> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(RespServer::cache_node(extra).await);
    }
    nodes
}

fn addresses(nodes: &[RespServer]) -> Vec<String> {
    nodes.iter().map(RespServer::address).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_every_node_and_reads_stay_fresh() {
    let nodes = three_nodes(&[]).await;
    let proxy = proxy_on(CacheTier::Nodes, addresses(&nodes), |_| {}).await;
    let (client, direct) = scene(&proxy, "tier_spread").await;
    assert_eq!(read_all(&client).await, 0, "the first reads are misses");
    assert_eq!(
        read_all(&client).await,
        u64::from(ROWS),
        "the second reads are hits"
    );
    let mut total = 0;
    for node in &nodes {
        let keys = node.results().await;
        assert!(
            keys >= u64::from(ROWS) / 6,
            "node {} holds {keys} of {ROWS} keys",
            node.address()
        );
        total += keys;
    }
    assert_eq!(total, u64::from(ROWS), "each key is on one node");
    let rows = node_rows(&client).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r[1] == "up"), "{rows:?}");
    let hot = client.simple_query("SHOW VENEER HOT").await.expect("HOT");
    assert!(
        hot.iter().any(|m| matches!(m, SimpleQueryMessage::Row(r)
            if r.get(0).is_some_and(|q| q.contains("FROM t WHERE id"))
               && nodes.iter().any(|n| r.get(1) == Some(n.address().as_str())))),
        "SHOW VENEER HOT names no hot request with its node"
    );
    stays_fresh(&client, &direct, "tier_spread").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_pgbench_load_costs_no_client_error_and_replicas_serve() {
    let mut nodes = three_nodes(&[]).await;
    let proxy = proxy_on(CacheTier::Nodes, addresses(&nodes), |s| {
        s.cache_replicas = Some(1);
    })
    .await;
    let (client, _direct) = scene(&proxy, "tier_kill").await;
    read_all(&client).await;
    assert_eq!(read_all(&client).await, u64::from(ROWS));
    let dir = TempDir::new("tier-pgbench");
    let script = dir.path().join("read.sql");
    std::fs::write(
        &script,
        format!("\\set id random(1, {ROWS})\nSELECT v FROM t WHERE id = :id;\n"),
    )
    .expect("write the pgbench script");
    let load = tokio::spawn(
        PgTool::pgbench(proxy.addr(), SUPERUSER)
            .conn("dbname", "tier_kill")
            .args(["-n", "-c", "4", "-j", "2", "-T", "6", "-f"])
            .args([script.to_str().expect("utf-8 path")])
            .limit(Duration::from_secs(60))
            .run(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    nodes[0].stop("KILL").await;
    let out = load.await.expect("pgbench task");
    out.assert_success("pgbench while a cache node was killed");
    assert!(
        out.stdout.contains("number of failed transactions: 0"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    // Every key has a copy on a live node: once the dead one is marked down, reads hit again.
    let hits = read_all(&client).await;
    assert!(
        hits >= u64::from(ROWS) * 9 / 10,
        "{hits} of {ROWS} reads hit with one node of three dead and one replica per key"
    );
    let rows = node_rows(&client).await;
    let dead = nodes[0].address();
    assert!(
        rows.iter()
            .any(|r| r[0] == dead && r[1].starts_with("down")),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_from_its_snapshot_serves_hits_at_once() {
    let dir = TempDir::new("tier-snapshot");
    let snapshot = dir.path().join("node.snapshot");
    let mut node = RespServer::cache_node(&["--snapshot", snapshot.to_str().expect("utf-8")]).await;
    let proxy = proxy_on(CacheTier::Nodes, vec![node.address()], |_| {}).await;
    let (client, _direct) = scene(&proxy, "tier_snapshot").await;
    read_all(&client).await;
    node.stop("TERM").await;
    assert!(snapshot.is_file(), "no snapshot written on SIGTERM");
    node.restart().await;
    assert_eq!(
        node.results().await,
        u64::from(ROWS),
        "the snapshot's entries"
    );
    let hits = read_all(&client).await;
    assert!(
        hits >= u64::from(ROWS) - 1,
        "{hits} of {ROWS} reads hit right after the node came back with its snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_costs_at_most_the_deadline_per_lookup() {
    let nodes = three_nodes(&[]).await;
    let proxy = proxy_on(CacheTier::Nodes, addresses(&nodes), |_| {}).await;
    let (client, _direct) = scene(&proxy, "tier_hung").await;
    read_all(&client).await;
    nodes[1].signal("STOP").await;
    // Every read is answered (the hung node's keys from the server); none waits much longer than
    // the 100 ms deadline, and once the node is marked down its keys are not even asked for.
    let mut slowest = Duration::ZERO;
    for id in 1..=ROWS {
        let started = Instant::now();
        let v = first(&client, &format!("SELECT v FROM t WHERE id = {id}")).await;
        assert_eq!(v, Some(format!("row {id}")));
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(2),
        "a read took {slowest:?} with a hung node"
    );
    let hung = nodes[1].address();
    let rows = node_rows(&client).await;
    assert!(
        rows.iter()
            .any(|r| r[0] == hung && r[1].starts_with("down")),
        "{rows:?}"
    );
    nodes[1].signal("CONT").await;
    let back = wait_for(Duration::from_secs(20), || async {
        node_rows(&client).await.iter().all(|r| r[1] == "up")
    })
    .await;
    assert!(
        back,
        "the node was never probed back: {:?}",
        node_rows(&client).await
    );
    read_all(&client).await;
    assert_eq!(read_all(&client).await, u64::from(ROWS), "all hits again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_and_redis_benchmark_work_against_a_node() {
    let node = RespServer::cache_node(&[]).await;
    assert_eq!(
        node.cli(&["SET", "k", "v", "PX", "60000"]).await.trim(),
        "OK"
    );
    assert_eq!(node.cli(&["GET", "k"]).await.trim(), "v");
    assert_eq!(node.cli(&["DBSIZE"]).await.trim(), "1");
    let info = node.cli(&["INFO"]).await;
    for field in [
        "used_memory:",
        "keyspace_hits:1",
        "evicted_keys:",
        "db0:keys=1",
    ] {
        assert!(info.contains(field), "INFO lacks {field}:\n{info}");
    }
    let bench = tokio::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &node.port.to_string()])
        .args(["-t", "get,set", "-n", "2000", "-d", "200", "-q"])
        .output()
        .await
        .expect("run redis-benchmark");
    let text = String::from_utf8_lossy(&bench.stdout);
    assert!(bench.status.success(), "{text}");
    for command in ["SET:", "GET:"] {
        assert!(
            text.lines()
                .any(|l| l.contains(command) && l.contains("requests per second")),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_server_as_the_tier_refuses_values_veneer_did_not_write() {
    let redis = RespServer::redis(None, &[]).await;
    let proxy = proxy_on(CacheTier::Redis, vec![redis.url()], |s| {
        s.cache_secret = Some("a fleet secret for the tests".to_owned());
    })
    .await;
    let (client, direct) = scene(&proxy, "tier_redis").await;
    stays_fresh(&client, &direct, "tier_redis").await;
    read_all(&client).await;
    assert_eq!(read_all(&client).await, u64::from(ROWS));
    // Someone with write access to Redis replaces every stored answer with their own.
    let keys = redis.keys_matching("veneer:2:*").await;
    assert!(keys.len() >= ROWS as usize, "{} keys stored", keys.len());
    for key in &keys {
        redis.command(&[b"SET", key, b"forged rows"]).await;
    }
    assert_eq!(
        read_all(&client).await,
        0,
        "a forged value was served as a hit"
    );
    let forged = figure(&client, "tier_forged").await;
    assert!(forged >= u64::from(ROWS), "{forged} forged values seen");
    // Veneer's flush clears its own namespace and nothing else.
    redis.cli(&["SET", "someone-else", "x"]).await;
    client.batch_execute("VENEER FLUSH").await.expect("flush");
    assert_eq!(
        redis.keys_matching("veneer:2:*").await,
        Vec::<Vec<u8>>::new()
    );
    assert_eq!(redis.cli(&["GET", "someone-else"]).await.trim(), "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_as_the_tier() {
    let cluster = RedisCluster::start().await;
    let proxy = proxy_on(CacheTier::RedisCluster, cluster.urls(), |_| {}).await;
    let (client, direct) = scene(&proxy, "tier_cluster").await;
    read_all(&client).await;
    assert_eq!(read_all(&client).await, u64::from(ROWS));
    for server in &cluster.servers {
        assert!(server.keys().await > 0, "a primary holds no key");
    }
    stays_fresh(&client, &direct, "tier_cluster").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_password_holds_only_encrypted_values() {
    let node = RespServer::cache_node(&["--password", "node-secret"]).await;
    let url = format!("redis://:node-secret@{}", node.address());
    let proxy = proxy_on(CacheTier::Nodes, vec![url], |s| {
        s.cache_secret = Some("a fleet secret for the tests".to_owned());
        s.cache_encrypt = Some(true);
    })
    .await;
    let (client, direct) = scene(&proxy, "tier_sealed").await;
    stays_fresh(&client, &direct, "tier_sealed").await;
    // Whoever can read the node sees no row.
    let keys = node.keys_matching("veneer:2:*").await;
    assert!(keys.len() >= ROWS as usize, "{} keys stored", keys.len());
    for key in keys {
        let Reply::Bulk(Some(value)) = node.command(&[b"GET", &key]).await else {
            continue; // expired or replaced meanwhile
        };
        assert!(
            !value.windows(4).any(|w| w == b"row "),
            "a stored value holds a row in clear"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_near_cache_answers_hot_reads_and_stays_coherent() {
    let nodes = three_nodes(&[]).await;
    let proxy = proxy_on(CacheTier::Nodes, addresses(&nodes), |s| {
        s.cache_near_bytes = Some(16 << 20);
    })
    .await;
    let (client, direct) = scene(&proxy, "tier_near").await;
    read_all(&client).await;
    read_all(&client).await;
    assert!(figure(&client, "tier_near_hits").await >= u64::from(ROWS));
    stays_fresh(&client, &direct, "tier_near").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_binary_explains_its_settings_and_refuses_bad_ones() {
    let bin = veneer_tests::binary::cache_node_bin().await;
    let run = |args: Vec<String>, env: Option<(&'static str, &'static str)>| {
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args(args).env("NO_COLOR", "1");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        async move { cmd.output().await.expect("run veneer-cache-node") }
    };
    let help = run(vec!["--help".into()], None).await;
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success());
    for flag in [
        "--listen",
        "--max-bytes",
        "--snapshot",
        "--password",
        "--metrics-listen",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
    let dir = TempDir::new("node-config");
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nmax_byte = 5\n").expect("write");
    let refused = [
        (vec!["--max-bytes".into(), "10".into()], None, "max_bytes"),
        (
            vec!["--config".into(), file.to_string_lossy().into_owned()],
            None,
            "max_byte",
        ),
        (
            vec![],
            Some(("VENEER_CACHE_NODE_LISTN", "x")),
            "VENEER_CACHE_NODE_LISTN",
        ),
    ];
    for (args, env, named) in refused {
        let out = run(args.clone(), env).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert!(err.contains(named), "{args:?} {env:?}: {err}");
    }
}
