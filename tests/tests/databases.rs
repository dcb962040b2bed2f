//! Several databases behind one proxy: each has its own replication stream, generations and cache
//! entries; a database without a stream (listener cap, idle, dropped) is never served stale.

use std::time::Duration;

use veneer_config::{Millis, Replication};
use veneer_tests::cache::{
    figure, first, on, own_database, status, until_seen, wait_database_cached,
};
use veneer_tests::*;

/// Temporary slots the server holds for database `name`.
async fn slots(direct: &tokio_postgres::Client, name: &str) -> i64 {
    scalar(
        direct,
        &format!("SELECT count(*) FROM pg_replication_slots WHERE database = '{name}'"),
    )
    .await
}

/// The status entry of database `name`.
async fn state_of(client: &tokio_postgres::Client, name: &str) -> String {
    status(client)
        .await
        .get(&format!("database {name}"))
        .cloned()
        .unwrap_or_default()
}

/// Waits until `name`'s status entry satisfies `ok`.
async fn wait_state(client: &tokio_postgres::Client, name: &str, ok: impl Fn(&str) -> bool) {
    let reached = wait_for(Duration::from_secs(20), || async {
        ok(&state_of(client, name).await)
    })
    .await;
    assert!(reached, "database {name}: {}", state_of(client, name).await);
}

/// Creates database `name` with table `items` holding row 1 = `value`.
async fn database_with_items(name: &str, value: &str) -> Conn {
    let direct = own_database(name).await;
    direct
        .batch_execute(&format!(
            "SET synchronous_commit = on;
             CREATE TABLE items (id int PRIMARY KEY, v text);
             INSERT INTO items VALUES (1, '{value}'), (2, 'two')"
        ))
        .await
        .unwrap();
    direct
}

const ITEM: &str = "SELECT v FROM items WHERE id = 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_of_the_same_name_in_two_databases_stay_apart() {
    let direct_a = database_with_items("multi_a", "a").await;
    let _direct_b = database_with_items("multi_b", "b").await;
    let proxy = ProxyHandle::start().await;
    let a = connect(&on(proxy.addr(), "multi_a")).await.unwrap();
    let b = connect(&on(proxy.addr(), "multi_b")).await.unwrap();
    wait_database_cached(&a, "multi_a").await;
    wait_database_cached(&b, "multi_b").await;
    for _ in 0..2 {
        assert_eq!(first(&a, ITEM).await.as_deref(), Some("a"));
        assert_eq!(first(&b, ITEM).await.as_deref(), Some("b"));
    }
    // A write made directly in one database is seen there, through its own stream...
    direct_a
        .batch_execute("UPDATE items SET v = 'a2' WHERE id = 1")
        .await
        .unwrap();
    until_seen(&a, ITEM, "a2").await;
    // ...and a write through the proxy too, while the other database's entry stays cached.
    a.batch_execute("UPDATE items SET v = 'a3' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(first(&a, ITEM).await.as_deref(), Some("a3"));
    let hits = figure(&b, "hits").await;
    assert_eq!(first(&b, ITEM).await.as_deref(), Some("b"));
    assert_eq!(
        figure(&b, "hits").await,
        hits + 1,
        "writes in multi_a evicted multi_b's entry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_listener_cap_a_database_is_forwarded_until_a_stream_frees_up() {
    let _direct_a = database_with_items("cap_a", "a").await;
    let direct_b = database_with_items("cap_b", "b").await;
    let proxy = ProxyHandle::start_with(|s| {
        s.replication_listeners = Some(1);
        s.replication_idle_timeout = Some(Millis(Duration::from_millis(200)));
    })
    .await;
    let a = connect(&on(proxy.addr(), "cap_a")).await.unwrap();
    wait_database_cached(&a, "cap_a").await;
    let b = connect(&on(proxy.addr(), "cap_b")).await.unwrap();
    wait_state(&b, "cap_b", |s| s.contains("cap (1) reached")).await;
    assert!(state_of(&b, "cap_b").await.starts_with("forwarded"));
    // Every read of cap_b goes upstream, so a write made directly is seen at once.
    for value in ["b1", "b2", "b3"] {
        direct_b
            .batch_execute(&format!("UPDATE items SET v = '{value}' WHERE id = 1"))
            .await
            .unwrap();
        assert_eq!(first(&b, ITEM).await.as_deref(), Some(value));
    }
    let direct = direct_admin().await;
    assert_eq!(slots(&direct, "cap_b").await, 0);
    // Once cap_a has no client for the idle time its stream stops, and cap_b gets one.
    drop(a);
    wait_database_cached(&b, "cap_b").await;
    assert_eq!(slots(&direct, "cap_a").await, 0, "cap_a kept its slot");
    assert_eq!(slots(&direct, "cap_b").await, 1);
    first(&b, ITEM).await;
    let hits = figure(&b, "hits").await;
    assert_eq!(first(&b, ITEM).await.as_deref(), Some("b3"));
    assert_eq!(figure(&b, "hits").await, hits + 1, "cap_b is not cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_listener_cap_best_effort_serves_from_the_cache() {
    let _direct_a = database_with_items("cap_best_a", "a").await;
    let _direct_b = database_with_items("cap_best_b", "b").await;
    let proxy = ProxyHandle::start_with(|s| {
        s.replication_listeners = Some(1);
        s.replication = Some(Replication::BestEffort);
    })
    .await;
    let a = connect(&on(proxy.addr(), "cap_best_a")).await.unwrap();
    wait_database_cached(&a, "cap_best_a").await;
    let b = connect(&on(proxy.addr(), "cap_best_b")).await.unwrap();
    wait_state(&b, "cap_best_b", |s| {
        s.starts_with("cached") && s.contains("cap (1) reached")
    })
    .await;
    first(&b, ITEM).await;
    let hits = figure(&b, "hits").await;
    first(&b, ITEM).await;
    assert_eq!(figure(&b, "hits").await, hits + 1);
    // Writes through the proxy still invalidate at once.
    b.batch_execute("UPDATE items SET v = 'b2' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(first(&b, ITEM).await.as_deref(), Some("b2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_database_releases_its_slot_and_comes_back_fresh() {
    let direct = database_with_items("idle_db", "one").await;
    let proxy = ProxyHandle::start_with(|s| {
        s.replication_idle_timeout = Some(Millis(Duration::from_millis(300)));
    })
    .await;
    let observer = connect_as(proxy.addr(), "idle-observer").await;
    let client = connect(&on(proxy.addr(), "idle_db")).await.unwrap();
    wait_database_cached(&client, "idle_db").await;
    first(&client, ITEM).await;
    assert_eq!(slots(&direct, "idle_db").await, 1);
    drop(client);
    wait_state(&observer, "idle_db", |s| s.contains("replication idle")).await;
    assert_eq!(
        slots(&direct, "idle_db").await,
        0,
        "the slot outlived the idle time"
    );
    // A write while nobody follows the database must not leave the old entry served.
    direct
        .batch_execute("UPDATE items SET v = 'two' WHERE id = 1")
        .await
        .unwrap();
    let client = connect(&on(proxy.addr(), "idle_db")).await.unwrap();
    assert_eq!(first(&client, ITEM).await.as_deref(), Some("two"));
    wait_database_cached(&client, "idle_db").await;
    assert_eq!(first(&client, ITEM).await.as_deref(), Some("two"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_dropped_and_recreated_through_the_proxy_serves_nothing_old() {
    let direct_old = database_with_items("recreated", "old").await;
    let proxy = ProxyHandle::start().await;
    let attached = connect(&on(proxy.addr(), "recreated")).await.unwrap();
    wait_database_cached(&attached, "recreated").await;
    assert_eq!(first(&attached, ITEM).await.as_deref(), Some("old"));
    assert_eq!(first(&attached, ITEM).await.as_deref(), Some("old"));
    // Another database is served all along.
    let other = connect_as(proxy.addr(), "recreate-other").await;
    wait_database_cached(&other, DATABASE).await;
    drop(direct_old);

    // Postgres refuses to drop a database with an active slot: Veneer releases its stream first.
    other
        .batch_execute("DROP DATABASE recreated WITH (FORCE)")
        .await
        .unwrap_or_else(|e| panic!("DROP DATABASE through the proxy: {e:?}"));
    let direct = direct_admin().await;
    assert_eq!(slots(&direct, "recreated").await, 0, "a slot leaked");
    assert!(
        attached.simple_query(ITEM).await.is_err(),
        "the dropped database's session should have been ended by FORCE"
    );
    other
        .batch_execute("CREATE DATABASE recreated")
        .await
        .unwrap();
    let mut config = on(pg().addr(), "recreated");
    config.application_name("recreate-direct");
    let (fresh, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    fresh
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'new')",
        )
        .await
        .unwrap();
    let again = connect(&on(proxy.addr(), "recreated")).await.unwrap();
    assert_eq!(first(&again, ITEM).await.as_deref(), Some("new"));
    wait_database_cached(&again, "recreated").await;
    assert_eq!(first(&again, ITEM).await.as_deref(), Some("new"));
    assert_eq!(first(&again, ITEM).await.as_deref(), Some("new"));
    // The other database never stopped working.
    assert_eq!(
        first(&other, "SELECT current_database()").await.as_deref(),
        Some(DATABASE)
    );
}

/// The README's remedy for dropping, directly on the server, a database Veneer follows: the plain
/// drop fails with the error the README quotes; closing the database to new connections, ending the
/// stream (which Veneer would otherwise start again at once) and dropping WITH (FORCE) succeeds while
/// the database still has a client through Veneer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_database_can_be_dropped_directly_as_the_readme_says() {
    let direct_own = database_with_items("dropped_directly", "x").await;
    drop(direct_own);
    let proxy = ProxyHandle::start().await;
    let attached = connect(&on(proxy.addr(), "dropped_directly"))
        .await
        .unwrap();
    wait_database_cached(&attached, "dropped_directly").await;
    let direct = direct_admin().await;
    let refused = direct
        .batch_execute("DROP DATABASE dropped_directly")
        .await
        .expect_err("Postgres refuses while the stream is active");
    let db = refused.as_db_error().expect("a server error");
    assert_eq!(
        db.message(),
        "database \"dropped_directly\" is used by an active logical replication slot"
    );
    assert_eq!(db.detail(), Some("There is 1 active slot."));
    // Three statements, as psql sends the README's three lines (DROP DATABASE refuses a block).
    // Veneer reconnects a lost stream at once: the database first stops taking connections.
    for sql in [
        "ALTER DATABASE dropped_directly ALLOW_CONNECTIONS false",
        "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots \
           WHERE database = 'dropped_directly'",
        "DROP DATABASE dropped_directly WITH (FORCE)",
    ] {
        direct
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("the README's remedy failed: {sql}: {e:?}"));
    }
    assert_eq!(slots(&direct, "dropped_directly").await, 0);
}
