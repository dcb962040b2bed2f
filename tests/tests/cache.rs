//! The query-result cache against a real server: hits are byte-identical to direct answers and cost no
//! upstream traffic in every driver style; writes through the proxy are visible at once to every
//! session; what must not be cached is not; identical concurrent misses go upstream once; the memory
//! bound holds; the admin commands work.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;
use veneer_tests::cache::{column, figure, run_direct as setup, status, wait_cache_ready};
use veneer_tests::raw::{self, Message, RawClient};
use veneer_tests::*;

/// Starts a proxy and waits until it caches reads.
async fn cached_proxy() -> ProxyHandle {
    let proxy = ProxyHandle::start().await;
    wait_cache_ready(proxy.addr()).await;
    proxy
}

/// The same SQL through the extended protocol, unnamed statement, binary results.
fn extended_binary(sql: &str, params: &[Option<&[u8]>]) -> Vec<u8> {
    let mut bytes = raw::parse("", sql);
    bytes.extend(raw::bind("", "", params, 1));
    bytes.extend(raw::describe(b'P', ""));
    bytes.extend(raw::execute(""));
    bytes.extend(raw::sync());
    bytes
}

async fn reply(client: &mut RawClient, request: &[u8]) -> Vec<Vec<u8>> {
    client.send(request).await;
    let messages = within("reply", client.read_until_ready()).await;
    messages.iter().map(|m: &Message| m.raw.to_vec()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_are_byte_identical_to_direct_answers() {
    setup(
        "CREATE TABLE cache_types (id int PRIMARY KEY, n numeric, ts timestamptz, arr int[], \
           tarr text[], j json, jb jsonb, b bytea, t text, nothing int, f float8, u uuid, d date, \
           iv interval);
         INSERT INTO cache_types VALUES
           (1, 123456789012345678901234567890.123456789, '2024-02-29 12:34:56.789+05:30', \
            ARRAY[1, NULL, 3], ARRAY['a', NULL], '{\"a\": [1, {\"b\": null}]}', '{\"b\": 2, \"a\": 1}', \
            '\\xdeadbeef00ff', 'ü', NULL, 'NaN', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', \
            '2024-01-01', '1 year 2 mons 3 days 04:05:06.7'),
           (2, 'NaN', 'infinity', '{}', '{}', '[]', '\"x\"', '', repeat('x', 200000), 7, \
            '-Infinity', NULL, NULL, NULL),
           (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
    )
    .await;
    let wide: Vec<String> = (1..=400).map(|i| format!("id * {i} AS c{i}")).collect();
    let queries = [
        "SELECT * FROM cache_types ORDER BY id".to_owned(),
        "SELECT n, ts, arr FROM cache_types WHERE id = 1".to_owned(),
        format!("SELECT {} FROM cache_types", wide.join(", ")),
        "SELECT id, g, md5(g::text) FROM cache_types, generate_series(1, 5000) g".to_owned(),
        "SELECT * FROM cache_types WHERE false".to_owned(),
    ];
    let proxy = cached_proxy().await;
    let (mut direct, _) = RawClient::startup(pg().addr(), SUPERUSER, "cache-identical").await;
    let (mut through, _) = RawClient::startup(proxy.addr(), SUPERUSER, "cache-identical").await;
    let observer = connect_as(proxy.addr(), "cache-identical-observer").await;
    let mut requests = Vec::new();
    for sql in &queries {
        requests.push(raw::query(sql));
        requests.push(extended_binary(sql, &[]));
    }
    requests.push(extended_binary(
        "SELECT t FROM cache_types WHERE id = $1",
        &[Some(b"2")],
    ));
    for request in &requests {
        let expected = reply(&mut direct, request).await;
        let miss = reply(&mut through, request).await;
        let hits = figure(&observer, "hits").await;
        let hit = reply(&mut through, request).await;
        assert_eq!(
            figure(&observer, "hits").await,
            hits + 1,
            "not a hit: {request:?}"
        );
        assert_eq!(miss, expected, "the miss differs from the direct answer");
        assert_eq!(hit, expected, "the hit differs from the direct answer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_cost_no_upstream_traffic_in_any_driver_style() {
    setup(
        "CREATE TABLE cache_styles (id int PRIMARY KEY, v text);
         INSERT INTO cache_styles SELECT g, 'value ' || g FROM generate_series(1, 100) g;",
    )
    .await;
    let proxy = cached_proxy().await;
    let client = connect_as(proxy.addr(), "cache-styles").await;
    let sent = || figure(&client, "upstream_messages");

    // The simple protocol.
    let sql = "SELECT v FROM cache_styles WHERE id = 7";
    column(&client, sql).await;
    let before = sent().await;
    for _ in 0..100 {
        assert_eq!(column(&client, sql).await, vec![Some("value 7".into())]);
    }
    assert_eq!(sent().await, before, "simple protocol hits went upstream");

    // Parse/Bind/Describe/Execute/Sync with the unnamed statement on every call (psycopg 3,
    // node-postgres, pgjdbc before its prepare threshold).
    let (mut raw_client, _) = RawClient::startup(proxy.addr(), SUPERUSER, "cache-styles-raw").await;
    let unnamed = extended_binary("SELECT v FROM cache_styles WHERE id = $1", &[Some(b"8")]);
    let first = reply(&mut raw_client, &unnamed).await;
    let before = sent().await;
    for _ in 0..100 {
        assert_eq!(reply(&mut raw_client, &unnamed).await, first);
    }
    assert_eq!(
        sent().await,
        before,
        "unnamed extended-protocol hits went upstream"
    );

    // A named statement prepared once, then Bind/Execute/Sync per call.
    let statement = client
        .prepare("SELECT v FROM cache_styles WHERE id = $1")
        .await
        .unwrap();
    client.query(&statement, &[&9i32]).await.unwrap();
    let before = sent().await;
    for _ in 0..100 {
        let rows = client.query(&statement, &[&9i32]).await.unwrap();
        assert_eq!(rows[0].get::<_, &str>(0), "value 9");
    }
    assert_eq!(
        sent().await,
        before,
        "named prepared statement hits went upstream"
    );

    // After hits answered its Parse locally, a Bind of the unnamed statement alone still works: the
    // proxy recreates the statement upstream first.
    let mut rebind = raw::bind("", "", &[Some(b"10")], 0);
    rebind.extend(raw::execute(""));
    rebind.extend(raw::sync());
    let answer = reply(&mut raw_client, &rebind).await;
    assert!(
        answer
            .iter()
            .any(|m| m[0] == b'D' && m.ends_with(b"value 10")),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_mixing_hits_and_misses_keep_order_and_errors() {
    setup(
        "CREATE TABLE cache_pipe (id int PRIMARY KEY, v text);
         INSERT INTO cache_pipe SELECT g, 'p' || g FROM generate_series(1, 10) g;",
    )
    .await;
    let proxy = cached_proxy().await;
    let (mut direct, _) = RawClient::startup(pg().addr(), SUPERUSER, "cache-pipe").await;
    let (mut through, _) = RawClient::startup(proxy.addr(), SUPERUSER, "cache-pipe").await;
    let warm = extended_binary("SELECT v FROM cache_pipe WHERE id = $1", &[Some(b"1")]);
    reply(&mut through, &warm).await;
    // Hit, miss, error (its unit fails alone), hit, write, read of the write: one write, six answers.
    let units = [
        warm.clone(),
        extended_binary("SELECT v FROM cache_pipe WHERE id = $1", &[Some(b"2")]),
        extended_binary("SELECT v::int FROM cache_pipe WHERE id = $1", &[Some(b"3")]),
        warm.clone(),
        raw::query("UPDATE cache_pipe SET v = 'changed' WHERE id = 1"),
        warm.clone(),
    ];
    let batch: Vec<u8> = units.concat();
    let mut answers = Vec::new();
    for client in [&mut direct, &mut through] {
        client.send(&batch).await;
        let mut replies = Vec::new();
        for _ in &units {
            let reply = within("pipelined reply", client.read_until_ready()).await;
            replies.push(reply.iter().map(|m| m.raw.to_vec()).collect::<Vec<_>>());
        }
        answers.push(replies);
        // Undo the write for the second run.
        client
            .send(&raw::query("UPDATE cache_pipe SET v = 'p1' WHERE id = 1"))
            .await;
        client.read_until_ready().await;
    }
    assert_eq!(
        answers[1], answers[0],
        "the pipeline's answers differ from the direct ones"
    );
    assert!(
        answers[0][2].iter().any(|m| m[0] == b'E'),
        "the third unit must fail"
    );
    assert!(
        answers[0][5].iter().any(|m| m.ends_with(b"changed")),
        "the last read must see the write"
    );
}

/// psycopg 3's `executemany` pipelines statements with no Sync between them and one Sync at the end.
/// When the first part has gone upstream before the last statement and its Sync arrive, that last
/// statement looks like a unit of its own: held until the upstream answered what came before, it
/// waited for replies the upstream never sends without the Sync it held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_forwarded_without_its_sync_takes_the_rest_of_the_run_along() {
    setup(
        "CREATE TABLE cache_unsynced (id int PRIMARY KEY, v text);
         INSERT INTO cache_unsynced VALUES (1, 'one');",
    )
    .await;
    let proxy = cached_proxy().await;
    let observer = direct_admin().await;
    let statement = |sql: &str| {
        let mut bytes = raw::parse("", sql);
        bytes.extend(raw::bind("", "", &[], 0));
        bytes.extend(raw::describe(b'P', ""));
        bytes.extend(raw::execute(""));
        bytes
    };
    let cached = statement("SELECT v FROM cache_unsynced WHERE id = 1");
    let blocking = statement("SELECT pg_advisory_lock(4711), pg_advisory_unlock(4711)");
    let mut answers = Vec::new();
    for (addr, name) in [
        (pg().addr(), "unsynced-direct"),
        (proxy.addr(), "unsynced-proxy"),
    ] {
        let (mut client, _) = RawClient::startup(addr, SUPERUSER, name).await;
        // Warm the cache with the last statement of the run, so it would be a hit on its own.
        reply(&mut client, &[&cached[..], &raw::sync()].concat()).await;
        reply(&mut client, &[&cached[..], &raw::sync()].concat()).await;
        observer
            .batch_execute("SELECT pg_advisory_lock(4711)")
            .await
            .unwrap();
        // The first statement goes upstream alone and is known to run there before the rest is sent.
        client.send(&blocking).await;
        wait_backend_active(&observer, name, "pg_advisory_lock(4711), ").await;
        client
            .send(&[&cached[..], &raw::sync(), &raw::message(b'H', &[])].concat())
            .await;
        observer
            .batch_execute("SELECT pg_advisory_unlock(4711)")
            .await
            .unwrap();
        let answer = within("the pipelined run's answer", client.read_until_ready()).await;
        answers.push(answer.iter().map(|m| m.raw.to_vec()).collect::<Vec<_>>());
    }
    assert_eq!(
        answers[1], answers[0],
        "the run's answers differ from direct"
    );
    assert_eq!(answers[0].len(), 11, "{:?}", answers[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_proxy_are_read_at_once_by_every_session() {
    setup(
        "CREATE TABLE cache_ryw (id int PRIMARY KEY, v int); INSERT INTO cache_ryw VALUES (1, 0);",
    )
    .await;
    let proxy = cached_proxy().await;
    let writer = connect_as(proxy.addr(), "cache-ryw-writer").await;
    let other = connect_as(proxy.addr(), "cache-ryw-other").await;
    let read_sql = "SELECT v FROM cache_ryw WHERE id = 1";
    let prepared_write = writer
        .prepare("UPDATE cache_ryw SET v = $1 WHERE id = 1")
        .await
        .unwrap();
    let prepared_read = other.prepare(read_sql).await.unwrap();
    let mut stale = Vec::new();
    for round in 1..=1000i32 {
        let value = round;
        match round % 3 {
            0 => {
                writer
                    .simple_query(&format!("UPDATE cache_ryw SET v = {value} WHERE id = 1"))
                    .await
                    .unwrap();
            }
            1 => {
                writer.simple_query("BEGIN").await.unwrap();
                writer
                    .simple_query(&format!("UPDATE cache_ryw SET v = {value} WHERE id = 1"))
                    .await
                    .unwrap();
                writer.simple_query("COMMIT").await.unwrap();
            }
            _ => {
                writer.execute(&prepared_write, &[&value]).await.unwrap();
            }
        }
        let expected = Some(value.to_string());
        for (who, got) in [
            ("writer", column(&writer, read_sql).await),
            ("writer again", column(&writer, read_sql).await),
            ("other session", column(&other, read_sql).await),
            (
                "other session, prepared",
                vec![Some(
                    other
                        .query_one(&prepared_read, &[])
                        .await
                        .unwrap()
                        .get::<_, i32>(0)
                        .to_string(),
                )],
            ),
        ] {
            if got != vec![expected.clone()] {
                stale.push(format!("round {round} {who}: {got:?}"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{} stale reads: {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
    assert!(
        figure(&other, "hits").await >= 1000,
        "reads after a write were not cached"
    );
}

/// Runs `sql` three times on `client` and checks that none of it was served from the cache.
async fn assert_not_cached(client: &tokio_postgres::Client, sql: &str) {
    let hits = figure(client, "hits").await;
    for _ in 0..3 {
        client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    assert_eq!(
        figure(client, "hits").await,
        hits,
        "{sql} was served from the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_may_change_or_is_private_is_never_cached() {
    setup(
        "CREATE TABLE cache_never (id int PRIMARY KEY, v text);
         INSERT INTO cache_never VALUES (1, 'a');
         CREATE VIEW cache_never_view AS SELECT * FROM cache_never;
         CREATE TABLE cache_never_log (n int PRIMARY KEY);
         CREATE SEQUENCE cache_never_seq;
         CREATE FUNCTION cache_never_touch() RETURNS int VOLATILE LANGUAGE sql
           AS 'INSERT INTO cache_never_log VALUES (1) RETURNING n';
         CREATE FUNCTION cache_never_peek() RETURNS bigint STABLE LANGUAGE sql
           AS 'SELECT count(*) FROM cache_never_log';
         CREATE FUNCTION cache_never_label(int) RETURNS text IMMUTABLE LANGUAGE sql
           AS 'SELECT v FROM cache_never WHERE id = $1';",
    )
    .await;
    let proxy = cached_proxy().await;
    let client = connect_as(proxy.addr(), "cache-never").await;
    for sql in [
        "SELECT random()",
        "SELECT now()",
        "SELECT CURRENT_TIMESTAMP",
        "SELECT clock_timestamp()",
        "SELECT nextval('cache_never_seq')",
        "SELECT last_value FROM cache_never_seq",
        "SELECT v FROM cache_never WHERE id = 1 FOR UPDATE",
        "SELECT relname FROM pg_class WHERE relname = 'cache_never'",
        "SELECT * FROM information_schema.tables WHERE table_name = 'cache_never'",
        "SELECT * FROM cache_never_view",
        "SELECT cache_never_peek()",
        // Declared IMMUTABLE but reading a table: its result would not depend on the table.
        "SELECT cache_never_label(1)",
        "SELECT gen_random_uuid()",
        "SELECT txid_current()",
        "SELECT table_to_xml('cache_never', true, false, '')",
        "SELECT pg_backend_pid()",
        "SELECT v, random() FROM cache_never",
    ] {
        assert_not_cached(&client, sql).await;
    }
    // A volatile function that writes: not cached, and its write invalidates what it touched.
    let peek = "SELECT count(*) FROM cache_never_log";
    assert_eq!(column(&client, peek).await, vec![Some("0".into())]);
    column(&client, "SELECT cache_never_touch()").await;
    assert_eq!(column(&client, peek).await, vec![Some("1".into())]);
    // Inside a transaction block everything is forwarded.
    client.simple_query("BEGIN").await.unwrap();
    assert_not_cached(&client, "SELECT v FROM cache_never WHERE id = 1").await;
    client.simple_query("COMMIT").await.unwrap();
    // A session with temp tables (which may shadow any name) is not served from the cache.
    let temp = connect_as(proxy.addr(), "cache-never-temp").await;
    column(&temp, "SELECT v FROM cache_never WHERE id = 1").await;
    temp.simple_query("CREATE TEMP TABLE cache_never (id int, v text)")
        .await
        .unwrap();
    temp.simple_query("INSERT INTO cache_never VALUES (1, 'temp')")
        .await
        .unwrap();
    assert_eq!(
        column(&temp, "SELECT v FROM cache_never WHERE id = 1").await,
        vec![Some("temp".into())]
    );
    assert_not_cached(&temp, "SELECT v FROM cache_never WHERE id = 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_row_security_and_settings_each_get_their_own_answers() {
    setup(&format!(
        "CREATE TABLE cache_grants (v text PRIMARY KEY); INSERT INTO cache_grants VALUES ('secret');
         GRANT SELECT ON cache_grants TO {TRUST_USER};
         CREATE TABLE cache_rls (owner text, v text PRIMARY KEY);
         INSERT INTO cache_rls VALUES ('{TRUST_USER}', 'trust row'), ('{MD5_USER}', 'md5 row');
         ALTER TABLE cache_rls ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own ON cache_rls USING (owner = current_user);
         GRANT SELECT ON cache_rls TO {TRUST_USER}, {MD5_USER};
         CREATE SCHEMA cache_a; CREATE SCHEMA cache_b;
         CREATE TABLE cache_a.t (v text PRIMARY KEY); INSERT INTO cache_a.t VALUES ('from a');
         CREATE TABLE cache_b.t (v text PRIMARY KEY); INSERT INTO cache_b.t VALUES ('from b');
         GRANT USAGE ON SCHEMA cache_a, cache_b TO {TRUST_USER};
         GRANT SELECT ON cache_a.t, cache_b.t TO {TRUST_USER};"
    ))
    .await;
    let proxy = cached_proxy().await;
    let superuser = connect_as(proxy.addr(), "cache-roles").await;
    let trusted = connect(&client::config(
        proxy.addr(),
        TRUST_USER,
        None,
        "cache-roles",
    ))
    .await
    .unwrap();
    let md5 = connect(&client::config(
        proxy.addr(),
        MD5_USER,
        Some(MD5_PASSWORD),
        "cache-roles",
    ))
    .await
    .unwrap();
    let grants = "SELECT v FROM cache_grants";
    for _ in 0..2 {
        assert_eq!(
            column(&superuser, grants).await,
            vec![Some("secret".into())]
        );
        assert_eq!(column(&trusted, grants).await, vec![Some("secret".into())]);
        let denied = md5.simple_query(grants).await.unwrap_err();
        assert_eq!(denied.code().map(|c| c.code()), Some("42501"), "{denied:?}");
    }
    let rls = "SELECT v FROM cache_rls ORDER BY v";
    for _ in 0..2 {
        assert_eq!(column(&trusted, rls).await, vec![Some("trust row".into())]);
        assert_eq!(column(&md5, rls).await, vec![Some("md5 row".into())]);
    }
    // Settings that change output: each session gets answers for its own.
    let tokyo = connect_as(proxy.addr(), "cache-settings").await;
    tokyo
        .batch_execute("SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'SQL, DMY'")
        .await
        .unwrap();
    let utc = connect_as(proxy.addr(), "cache-settings").await;
    utc.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let ts = "SELECT '2024-02-29 12:34:56+00'::timestamptz::text FROM cache_grants";
    for _ in 0..2 {
        assert_eq!(
            column(&tokyo, ts).await,
            vec![Some("29/02/2024 21:34:56 JST".into())]
        );
        assert_eq!(
            column(&utc, ts).await,
            vec![Some("2024-02-29 12:34:56+00".into())]
        );
    }
    let a = connect(&client::config(
        proxy.addr(),
        TRUST_USER,
        None,
        "cache-path-a",
    ))
    .await
    .unwrap();
    a.batch_execute("SET search_path = cache_a").await.unwrap();
    let b = connect(&client::config(
        proxy.addr(),
        TRUST_USER,
        None,
        "cache-path-b",
    ))
    .await
    .unwrap();
    b.batch_execute("SET search_path = cache_b").await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            column(&a, "SELECT v FROM t").await,
            vec![Some("from a".into())]
        );
        assert_eq!(
            column(&b, "SELECT v FROM t").await,
            vec![Some("from b".into())]
        );
    }
    assert!(
        figure(&superuser, "hits").await >= 8,
        "{:?}",
        status(&superuser).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_misses_go_upstream_once() {
    setup(
        "CREATE TABLE cache_flight (v int PRIMARY KEY); INSERT INTO cache_flight SELECT generate_series(1, 1000);",
    )
    .await;
    let proxy = cached_proxy().await;
    let observer = connect_as(proxy.addr(), "cache-flight-observer").await;
    // Hold the table locked so that the first execution waits upstream while the others arrive.
    let locker = direct_admin().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE cache_flight IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let sql = "SELECT sum(v) FROM cache_flight";
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(Arc::new(connect_as(proxy.addr(), "cache-flight").await));
    }
    let coalesced = figure(&observer, "coalesced").await;
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| {
            let c = Arc::clone(c);
            tokio::spawn(async move { column(&c, sql).await })
        })
        .collect();
    let all_waiting = wait_for(Duration::from_secs(20), || async {
        figure(&observer, "coalesced").await == coalesced + 49
    })
    .await;
    assert!(all_waiting, "{:?}", status(&observer).await);
    // The leader's query may reach the server after the followers have joined its flight.
    let lock_waits =
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cache-flight' \
         AND wait_event_type = 'Lock'";
    let leader_arrived = wait_for(Duration::from_secs(20), || async {
        scalar::<i64>(&locker, lock_waits).await > 0
    })
    .await;
    assert!(
        leader_arrived,
        "the leader's query never reached the server"
    );
    let waiting_upstream: i64 = scalar(&locker, lock_waits).await;
    assert_eq!(
        waiting_upstream, 1,
        "more than one execution reached the server"
    );
    locker.batch_execute("COMMIT").await.unwrap();
    for task in tasks {
        let answer = within("coalesced answer", task).await.unwrap();
        assert_eq!(answer, vec![Some("500500".into())]);
    }
    assert_eq!(figure(&observer, "coalesced").await, coalesced + 49);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_stays_within_its_memory_bound() {
    let bound: u64 = 1 << 20;
    let proxy = ProxyHandle::start_with(|s| s.cache_max_bytes = Some(bound)).await;
    wait_cache_ready(proxy.addr()).await;
    let client = connect_as(proxy.addr(), "cache-bound").await;
    // 200 distinct results of 50 kB: ten times the bound.
    for i in 0..200 {
        column(&client, &format!("SELECT repeat('x', 50000), {i}")).await;
    }
    let status = status(&client).await;
    let bytes: u64 = status["bytes"].parse().unwrap();
    let entries: u64 = status["entries"].parse().unwrap();
    assert!(
        bytes <= bound,
        "{bytes} bytes held over a bound of {bound}: {status:?}"
    );
    assert!(entries > 0 && status["evictions"] != "0", "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_flush_and_report() {
    setup(
        "CREATE TABLE cache_admin (v int PRIMARY KEY); INSERT INTO cache_admin VALUES (1);
         CREATE TABLE cache_admin_other (v int PRIMARY KEY); INSERT INTO cache_admin_other VALUES (2);",
    )
    .await;
    let proxy = cached_proxy().await;
    let client = connect_as(proxy.addr(), "cache-admin").await;
    let (one, two) = (
        "SELECT v FROM cache_admin",
        "SELECT v FROM cache_admin_other",
    );
    for sql in [one, two, one, two] {
        column(&client, sql).await;
    }
    let hits = figure(&client, "hits").await;
    client
        .simple_query("VENEER FLUSH TABLE cache_admin")
        .await
        .unwrap();
    column(&client, one).await;
    column(&client, two).await;
    assert_eq!(
        figure(&client, "hits").await,
        hits + 1,
        "only the other table stays cached"
    );
    client.simple_query("veneer flush all").await.unwrap();
    column(&client, two).await;
    assert_eq!(
        figure(&client, "hits").await,
        hits + 1,
        "flush all dropped everything"
    );

    let rows = client.simple_query("SHOW VENEER QUERIES").await.unwrap();
    let shapes: HashSet<String> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
            _ => None,
        })
        .collect();
    assert!(shapes.contains(one) && shapes.contains(two), "{shapes:?}");
    let literal = client
        .simple_query("SELECT v FROM cache_admin WHERE v = 42")
        .await
        .unwrap();
    drop(literal);
    let rows = client.simple_query("SHOW VENEER QUERIES").await.unwrap();
    assert!(
        rows.iter().any(|m| matches!(m, SimpleQueryMessage::Row(r)
            if r.get(0) == Some("SELECT v FROM cache_admin WHERE v = ?"))),
        "literals are replaced in query shapes"
    );

    // Unprivileged roles may look at the status but not flush or list others' queries.
    let trusted = connect(&client::config(
        proxy.addr(),
        TRUST_USER,
        None,
        "cache-admin",
    ))
    .await
    .unwrap();
    status(&trusted).await;
    for command in ["VENEER FLUSH ALL", "SHOW VENEER QUERIES"] {
        let err = trusted.simple_query(command).await.unwrap_err();
        assert_eq!(
            err.code().map(|c| c.code()),
            Some("42501"),
            "{command}: {err:?}"
        );
    }
    let err = client
        .simple_query("SHOW VENEER NONSENSE")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42601"), "{err:?}");
    // The session is still usable after the errors.
    assert_eq!(column(&trusted, "SELECT 1").await, vec![Some("1".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_hints_steer_caching() {
    setup(
        "CREATE TABLE cache_rule_never (v int PRIMARY KEY); INSERT INTO cache_rule_never VALUES (1);
         CREATE TABLE cache_rule_free (v int PRIMARY KEY); INSERT INTO cache_rule_free VALUES (1);",
    )
    .await;
    let proxy = ProxyHandle::start_with(|s| {
        s.cache_rules = vec![
            "table:cache_rule_never=never".parse().unwrap(),
            "query:SELECT v FROM cache_rule_free WHERE v = ?=never"
                .parse()
                .unwrap(),
        ]
    })
    .await;
    wait_cache_ready(proxy.addr()).await;
    let client = connect_as(proxy.addr(), "cache-rules").await;
    assert_not_cached(&client, "SELECT v FROM cache_rule_never").await;
    assert_not_cached(&client, "SELECT v FROM cache_rule_free WHERE v = 1").await;
    assert_not_cached(
        &client,
        "/* veneer: nocache */ SELECT v FROM cache_rule_free",
    )
    .await;
    // A hint overrides a table rule.
    let hinted = "/* veneer: ttl=30s */ SELECT v FROM cache_rule_never";
    column(&client, hinted).await;
    let hits = figure(&client, "hits").await;
    column(&client, hinted).await;
    assert_eq!(figure(&client, "hits").await, hits + 1);
    // System catalogs are cached only under a rule or hint.
    let catalog =
        "/* veneer: ttl=5s */ SELECT count(*) FROM pg_class WHERE relname = 'cache_rule_free'";
    column(&client, catalog).await;
    column(&client, catalog).await;
    assert_eq!(figure(&client, "hits").await, hits + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_through_the_proxy_is_seen_at_once() {
    setup("CREATE TABLE cache_ddl (v int PRIMARY KEY); INSERT INTO cache_ddl VALUES (1);").await;
    let proxy = cached_proxy().await;
    let client = connect_as(proxy.addr(), "cache-ddl").await;
    let sql = "SELECT * FROM cache_ddl";
    for _ in 0..2 {
        assert_eq!(column(&client, sql).await, vec![Some("1".into())]);
    }
    client
        .batch_execute("ALTER TABLE cache_ddl RENAME COLUMN v TO w")
        .await
        .unwrap();
    let rows = client.simple_query(sql).await.unwrap();
    let renamed = rows.iter().any(|m| {
        matches!(m, SimpleQueryMessage::Row(r)
        if r.columns()[0].name() == "w")
    });
    assert!(renamed, "the old column name was served after the rename");
    // The table becomes a view: never served from the cache again.
    client
        .batch_execute("DROP TABLE cache_ddl; CREATE VIEW cache_ddl AS SELECT 2 AS w")
        .await
        .unwrap();
    assert_eq!(column(&client, sql).await, vec![Some("2".into())]);
    wait_cache_ready(proxy.addr()).await;
    assert_not_cached(&client, sql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transactions_are_served_only_when_allowed() {
    setup("CREATE TABLE cache_ro (v int PRIMARY KEY); INSERT INTO cache_ro VALUES (1);").await;
    let sql = "SELECT v FROM cache_ro";
    for allowed in [false, true] {
        let proxy =
            ProxyHandle::start_with(|s| s.cache_read_only_transactions = Some(allowed)).await;
        wait_cache_ready(proxy.addr()).await;
        let client = connect_as(proxy.addr(), "cache-ro").await;
        column(&client, sql).await;
        client.simple_query("BEGIN READ ONLY").await.unwrap();
        let hits = figure(&client, "hits").await;
        assert_eq!(column(&client, sql).await, vec![Some("1".into())]);
        let served = figure(&client, "hits").await - hits;
        assert_eq!(served, u64::from(allowed), "allowed = {allowed}");
        // A miss inside the block is forwarded and not stored.
        column(&client, "SELECT v + 1 FROM cache_ro").await;
        client.simple_query("COMMIT").await.unwrap();
        let hits = figure(&client, "hits").await;
        column(&client, "SELECT v + 1 FROM cache_ro").await;
        assert_eq!(
            figure(&client, "hits").await,
            hits,
            "a read-only block's miss was stored"
        );
        // A read-write block is never served.
        client.simple_query("BEGIN").await.unwrap();
        assert_not_cached(&client, sql).await;
        client.simple_query("COMMIT").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_oversized_results_are_not_stored() {
    let proxy = ProxyHandle::start_with(|s| s.max_result_bytes = Some(10_000)).await;
    wait_cache_ready(proxy.addr()).await;
    let client = connect_as(proxy.addr(), "cache-unstored").await;
    let hits = figure(&client, "hits").await;
    for _ in 0..3 {
        let err = client.simple_query("SELECT 1 / 0").await.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("22012"), "{err:?}");
    }
    // Larger than max_result_bytes: streamed through, asked upstream each time.
    let big = "SELECT repeat('x', 20000)";
    for _ in 0..3 {
        assert_eq!(
            column(&client, big).await[0].as_ref().map(String::len),
            Some(20000)
        );
    }
    assert_eq!(
        figure(&client, "hits").await,
        hits,
        "an error or an oversized result was stored"
    );
    // A result under the bound is stored.
    column(&client, "SELECT repeat('x', 2000)").await;
    column(&client, "SELECT repeat('x', 2000)").await;
    assert_eq!(figure(&client, "hits").await, hits + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pipelining_behind_a_waiting_unit_is_not_buffered_without_bound() {
    setup(
        "CREATE TABLE cache_pressure (v int PRIMARY KEY); INSERT INTO cache_pressure VALUES (1);",
    )
    .await;
    let proxy = cached_proxy().await;
    let locker = direct_admin().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE cache_pressure IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let (client, _) = RawClient::startup(proxy.addr(), SUPERUSER, "cache-pressure").await;
    // The first query waits upstream on the lock; every cacheable query behind it waits its turn.
    let blocked = raw::query("SELECT count(*) FROM cache_pressure");
    let padding = "x".repeat(1000);
    let behind = raw::query(&format!(
        "SELECT v FROM cache_pressure WHERE v = 1 /* {padding} */"
    ));
    let count = 32 * 1024 * 1024 / behind.len();
    let mut batch = blocked.clone();
    for _ in 0..count {
        batch.extend_from_slice(&behind);
    }
    // Far more than socket buffers and the proxy's hold-back bound: the proxy must stop reading, so
    // the send cannot complete while the first query is blocked.
    let (stream, _) = client.into_parts();
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        writer.write_all(&batch).await.map(|()| writer)
    });
    let mut sender = std::pin::pin!(sender);
    let early = tokio::time::timeout(Duration::from_secs(3), &mut sender).await;
    assert!(
        early.is_err(),
        "32 MiB were taken in while the session was held back"
    );
    locker.batch_execute("COMMIT").await.unwrap();
    // Once the first query completes, everything is read and answered, in order.
    let answered = within("the rest of the batch", async {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let mut readies = 0;
        let mut chunk = vec![0u8; 1 << 16];
        while readies < count + 1 {
            let n = reader.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the proxy closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            let mut offset = 0;
            while buf.len() >= offset + 5 {
                let len =
                    u32::from_be_bytes(buf[offset + 1..offset + 5].try_into().unwrap()) as usize;
                if buf.len() < offset + 1 + len {
                    break;
                }
                readies += usize::from(buf[offset] == b'Z');
                offset += 1 + len;
            }
            buf.drain(..offset);
        }
        readies
    })
    .await;
    assert_eq!(answered, count + 1);
    within("the send to finish", sender).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_connections_pass_through_without_touching_the_cache() {
    setup(
        "CREATE TABLE cache_walsender (v int PRIMARY KEY); INSERT INTO cache_walsender VALUES (1);",
    )
    .await;
    let proxy = cached_proxy().await;
    let client = connect_as(proxy.addr(), "cache-walsender").await;
    let sql = "SELECT v FROM cache_walsender";
    column(&client, sql).await;
    let mut walsender = RawClient::connect(proxy.addr()).await;
    walsender
        .send(&raw::startup_message(&[
            ("user", SUPERUSER),
            ("database", DATABASE),
            ("replication", "database"),
        ]))
        .await;
    walsender.read_until_ready().await;
    let reply = walsender.query("IDENTIFY_SYSTEM").await;
    assert!(reply.iter().any(|m| m.tag() == b'D'), "{reply:?}");
    // A walsender command is not a write: the cached read stays cached.
    let hits = figure(&client, "hits").await;
    column(&client, sql).await;
    assert_eq!(figure(&client, "hits").await, hits + 1);
}

/// A session waiting for another's identical miss waits only so long: the other may be held by its
/// own client (which stopped reading a large answer) or by anything else, and directly this client
/// would have had its answer. Past `connect_timeout` it asks upstream itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_does_not_wait_without_bound_for_another_sessions_miss() {
    let proxy = ProxyHandle::start_with(|s| {
        s.max_result_bytes = Some(64 << 20);
        s.connect_timeout = Some(veneer_config::Millis(Duration::from_secs(1)));
    })
    .await;
    wait_cache_ready(proxy.addr()).await;
    // About 20 MB: more than the sockets and the proxy hold for a client that does not read.
    let large =
        raw::query("SELECT repeat('x', 1000) FROM generate_series(1, 20000) AS g -- flight");
    let (mut stuck, _) = RawClient::startup(proxy.addr(), SUPERUSER, "cache-flight").await;
    stuck.send(&large).await;
    let observer = direct_admin().await;
    wait_backend_active(&observer, "cache-flight", "-- flight").await;
    let (mut waiting, _) = RawClient::startup(proxy.addr(), SUPERUSER, "cache-flight").await;
    waiting.send(&large).await;
    let answer = within("the second session's answer", waiting.read_until_ready()).await;
    assert_eq!(answer.iter().filter(|m| m.tag() == b'D').count(), 20_000);
    drop(stuck);
}

/// Transactions sent as one query (`BEGIN; UPDATE ... RETURNING ...; COMMIT`, as a driver's batch
/// or an app's multi-statement string) write their tables, not the schema: a steady stream of them
/// keeps other reads cached and the written table fresh. They counted as DDL, and each one had the
/// catalog read again, so the catalog never settled and every read was forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_multi_statement_writes_keeps_the_cache_on() {
    setup(
        "CREATE TABLE batched (id int PRIMARY KEY, v int NOT NULL); INSERT INTO batched VALUES (1, 0);
         CREATE TABLE beside_batched (id int PRIMARY KEY, v int); INSERT INTO beside_batched VALUES (1, 1);",
    )
    .await;
    let proxy = cached_proxy().await;
    let writer = connect_as(proxy.addr(), "batched-writer").await;
    let reader = connect_as(proxy.addr(), "batched-reader").await;
    let beside = "SELECT v FROM beside_batched WHERE id = 1";
    let (hits, mut beside_hits) = (figure(&reader, "hits").await, 0);
    for round in 1..=40 {
        writer
            .simple_query("BEGIN; UPDATE batched SET v = v + 1 WHERE id = 1 RETURNING v; COMMIT")
            .await
            .unwrap();
        let read = column(&reader, "SELECT v FROM batched WHERE id = 1").await;
        assert_eq!(read, [Some(round.to_string())], "stale after write {round}");
        let before = figure(&reader, "hits").await;
        column(&reader, beside).await;
        beside_hits += figure(&reader, "hits").await - before;
    }
    assert!(
        beside_hits >= 35,
        "{beside_hits} of 40 reads beside the writes were hits ({} hits in all): {:?}",
        figure(&reader, "hits").await - hits,
        status(&reader).await
    );
}

/// A statement prepared while the proxy has no catalog (here: right after DDL through it, which drops
/// the catalog until it is read again) is planned again once the catalog is back: its writes then
/// invalidate what they touch, not every result of the database at each execution, as a pool that
/// prepares its statements at startup would otherwise have them do for the life of its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_before_the_catalog_is_read_is_planned_again() {
    setup(
        "CREATE TABLE replan_kept (id int PRIMARY KEY, v int); INSERT INTO replan_kept VALUES (1, 1);",
    )
    .await;
    let proxy = cached_proxy().await;
    let client = connect_as(proxy.addr(), "cache-replan").await;
    client
        .batch_execute(
            "CREATE TABLE replan_written (id int PRIMARY KEY, v int);
             INSERT INTO replan_written VALUES (1, 1)",
        )
        .await
        .unwrap();
    let update = client
        .prepare("UPDATE replan_written SET v = v + 1 WHERE id = $1")
        .await
        .unwrap();
    // The catalog is back once a read of the new table is served from the cache.
    let back = wait_for(Duration::from_secs(20), || {
        veneer_tests::privileges::hit(
            &client,
            &client,
            "SELECT v FROM replan_written WHERE id = 1",
        )
    })
    .await;
    assert!(back, "the catalog was never read again after the DDL");

    let read = "SELECT v FROM replan_kept WHERE id = 1";
    column(&client, read).await;
    let hits = figure(&client, "hits").await;
    column(&client, read).await;
    assert_eq!(figure(&client, "hits").await, hits + 1, "cached");
    for round in 1..=3 {
        client.execute(&update, &[&1i32]).await.unwrap();
        assert_eq!(column(&client, read).await, vec![Some("1".into())]);
        assert_eq!(
            figure(&client, "hits").await,
            hits + 1 + round,
            "a write of another table's row dropped the result (execution {round})"
        );
    }
    assert_eq!(
        column(&client, "SELECT v FROM replan_written WHERE id = 1").await,
        vec![Some("4".into())],
        "the writes are read at once"
    );
}
