//! Row-level precision: a point lookup (equality on a row key) depends on its row, so a write to one
//! row, made anywhere, leaves cached lookups of other rows alone, while every read it could change
//! (the row's own lookups under its old and new keys, range reads) is fresh once the replication
//! stream has applied it.

use veneer_config::Replication;
use veneer_tests::cache::{
    figure, first, on, own_database_with, wait_database_cached, write_applied,
};
use veneer_tests::*;

/// Reads `sql` through `client`, which must answer `expected` from the cache.
async fn still_cached(client: &tokio_postgres::Client, sql: &str, expected: &str) {
    let hits = figure(client, "hits").await;
    assert_eq!(first(client, sql).await.as_deref(), Some(expected), "{sql}");
    assert_eq!(
        figure(client, "hits").await,
        hits + 1,
        "{sql} was invalidated"
    );
}

/// Reads each of `sqls` twice, so the second read of each is served from the cache.
async fn warm(client: &tokio_postgres::Client, sqls: &[&str]) {
    for _ in 0..2 {
        for sql in sqls {
            first(client, sql).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_one_row_leaves_other_rows_cached() {
    let direct = own_database_with(
        "rows_pk",
        "CREATE TABLE acct (id int PRIMARY KEY, v text);
             INSERT INTO acct SELECT g, 'v' || g FROM generate_series(1, 10) g;
             SET synchronous_commit = on",
    )
    .await;
    let proxy = ProxyHandle::start().await;
    let client = connect(&on(proxy.addr(), "rows_pk")).await.unwrap();
    wait_database_cached(&client, "rows_pk").await;
    let at = |id: i32| format!("SELECT v FROM acct WHERE id = {id}");
    let range = "SELECT string_agg(v, ',' ORDER BY id) FROM acct WHERE id <= 3";
    let by_param = client
        .prepare("SELECT v FROM acct WHERE id = $1")
        .await
        .unwrap();
    let (a, b) = (at(1), at(2));
    warm(&client, &[&a, &b, range]).await;
    for _ in 0..2 {
        client.query_one(&by_param, &[&3i32]).await.unwrap();
    }
    let write = |sql: &'static str| write_applied(&direct, &client, "rows_pk", sql);

    write("UPDATE acct SET v = 'changed' WHERE id = 1").await;
    let hits = figure(&client, "hits").await;
    assert_eq!(first(&client, &b).await.as_deref(), Some("v2"));
    let three: String = client.query_one(&by_param, &[&3i32]).await.unwrap().get(0);
    assert_eq!(three, "v3");
    assert_eq!(
        figure(&client, "hits").await,
        hits + 2,
        "lookups of other rows (a literal key, a binary parameter) stayed cached"
    );
    assert_eq!(first(&client, &a).await.as_deref(), Some("changed"));
    assert_eq!(
        first(&client, range).await.as_deref(),
        Some("changed,v2,v3")
    );

    // A key that moves: lookups of the old key and of the new one both see it.
    let (old, new) = (at(4), at(40));
    warm(&client, &[&old, &new]).await;
    write("UPDATE acct SET id = 40 WHERE id = 4").await;
    assert_eq!(first(&client, &old).await, None);
    assert_eq!(first(&client, &new).await.as_deref(), Some("v4"));

    // Deleted and inserted rows.
    let (gone, born) = (at(5), at(50));
    warm(&client, &[&gone, &born]).await;
    write("DELETE FROM acct WHERE id = 5").await;
    write("INSERT INTO acct VALUES (50, 'v50')").await;
    assert_eq!(first(&client, &gone).await, None);
    assert_eq!(first(&client, &born).await.as_deref(), Some("v50"));

    // Writes through the proxy are seen by another session at once, and invalidate only the rows
    // they pin: a literal key, a key in a Bind parameter; one that moves a key, the whole table.
    let (mine, bound, neighbour, moved, to) = (at(6), at(8), at(7), at(9), at(90));
    warm(&client, &[&mine, &bound, &neighbour, &moved, &to]).await;
    let writer = connect(&on(proxy.addr(), "rows_pk")).await.unwrap();
    writer
        .batch_execute("UPDATE acct SET v = 'mine' WHERE id = 6")
        .await
        .unwrap();
    writer
        .execute("UPDATE acct SET v = $1 WHERE id = $2", &[&"bound", &8i32])
        .await
        .unwrap();
    assert_eq!(first(&client, &mine).await.as_deref(), Some("mine"));
    assert_eq!(first(&client, &bound).await.as_deref(), Some("bound"));
    still_cached(&client, &neighbour, "v7").await;
    writer
        .batch_execute("UPDATE acct SET id = 90 WHERE id = 9")
        .await
        .unwrap();
    assert_eq!(first(&client, &moved).await, None);
    assert_eq!(first(&client, &to).await.as_deref(), Some("v9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_every_kind_and_partitioned_tables_stay_fresh() {
    let direct = own_database_with(
        "rows_kinds",
        "CREATE TABLE person (email text, name text);
             ALTER TABLE person REPLICA IDENTITY FULL;
             INSERT INTO person VALUES ('a@x', 'Ann'), ('b@x', 'Bob');
             CREATE TABLE tagged (id uuid PRIMARY KEY, v int);
             INSERT INTO tagged VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 1),
                                       ('b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 2);
             CREATE TABLE pair (a int, b text, v int, PRIMARY KEY (a, b));
             INSERT INTO pair VALUES (1, 'x', 1), (1, 'y', 2);
             CREATE TABLE parted (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
             CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (100);
             CREATE TABLE parted_high PARTITION OF parted FOR VALUES FROM (100) TO (200);
             INSERT INTO parted VALUES (1, 'one'), (150, 'many');
             SET synchronous_commit = on",
    )
    .await;
    let proxy = ProxyHandle::start().await;
    let client = connect(&on(proxy.addr(), "rows_kinds")).await.unwrap();
    wait_database_cached(&client, "rows_kinds").await;
    let write = |sql: &'static str| write_applied(&direct, &client, "rows_kinds", sql);

    // REPLICA IDENTITY FULL: any column keys a lookup.
    let (ann, bob, moved) = (
        "SELECT name FROM person WHERE email = 'a@x'",
        "SELECT email FROM person WHERE name = 'Bob'",
        "SELECT name FROM person WHERE email = 'c@x'",
    );
    warm(&client, &[ann, bob, moved]).await;
    write("UPDATE person SET email = 'c@x' WHERE name = 'Ann'").await;
    still_cached(&client, bob, "b@x").await;
    assert_eq!(first(&client, ann).await, None);
    assert_eq!(first(&client, moved).await.as_deref(), Some("Ann"));

    // UUID keys, written in another form than Postgres prints.
    let (upper, other) = (
        "SELECT v FROM tagged WHERE id = '{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}'",
        "SELECT v FROM tagged WHERE id = 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
    );
    warm(&client, &[upper, other]).await;
    write("UPDATE tagged SET v = 10 WHERE id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'").await;
    still_cached(&client, other, "2").await;
    assert_eq!(first(&client, upper).await.as_deref(), Some("10"));

    // A composite primary key.
    let (x, y) = (
        "SELECT v FROM pair WHERE a = 1 AND b = 'x'",
        "SELECT v FROM pair WHERE b = 'y' AND a = 1",
    );
    warm(&client, &[x, y]).await;
    write("UPDATE pair SET v = 10 WHERE a = 1 AND b = 'x'").await;
    still_cached(&client, y, "2").await;
    assert_eq!(first(&client, x).await.as_deref(), Some("10"));

    // The stream reports a partitioned table's changes under the partition that holds the row; reads
    // of the parent see them.
    let (one, count) = (
        "SELECT v FROM parted WHERE id = 1",
        "SELECT count(*) FROM parted",
    );
    warm(&client, &[one, count]).await;
    write("UPDATE parted SET v = 'uno' WHERE id = 1").await;
    assert_eq!(first(&client, one).await.as_deref(), Some("uno"));
    write("INSERT INTO parted VALUES (160, 'more')").await;
    assert_eq!(first(&client, count).await.as_deref(), Some("3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_proxy_invalidate_their_rows_without_the_stream() {
    let _direct = own_database_with(
        "rows_through",
        "CREATE TABLE item (id bigint PRIMARY KEY, v text);
             INSERT INTO item SELECT g, 'v' || g FROM generate_series(1, 5) g;",
    )
    .await;
    // No stream: only the proxy's own write path keeps the cache fresh.
    let proxy = ProxyHandle::start_with(|s| s.replication = Some(Replication::Off)).await;
    let client = connect(&on(proxy.addr(), "rows_through")).await.unwrap();
    wait_database_cached(&client, "rows_through").await;
    let at = |id: i64| format!("SELECT v FROM item WHERE id = {id}");
    let ids: Vec<String> = (1..=5).map(at).collect();
    let all: Vec<&str> = ids.iter().map(String::as_str).collect();
    warm(&client, &all).await;
    let writer = connect(&on(proxy.addr(), "rows_through")).await.unwrap();
    let by_param = writer
        .prepare("UPDATE item SET v = $1 WHERE id = $2")
        .await
        .unwrap();
    writer.execute(&by_param, &[&"two", &2i64]).await.unwrap();
    for sql in [
        "DELETE FROM item WHERE id = 3",
        "INSERT INTO item (id, v) VALUES (6, 'six')",
        "BEGIN",
        "UPDATE item SET v = 'four' WHERE id = '4'",
        "COMMIT",
    ] {
        writer.batch_execute(sql).await.unwrap();
    }
    assert_eq!(first(&client, &ids[1]).await.as_deref(), Some("two"));
    assert_eq!(first(&client, &ids[2]).await, None);
    assert_eq!(first(&client, &ids[3]).await.as_deref(), Some("four"));
    assert_eq!(first(&client, &at(6)).await.as_deref(), Some("six"));
    still_cached(&client, &ids[0], "v1").await;
    still_cached(&client, &ids[4], "v5").await;
}
