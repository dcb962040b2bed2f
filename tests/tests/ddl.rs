//! DDL and large transactions made outside the proxy: with `veneer setup`'s event trigger, DDL reaches
//! the replication stream and invalidates what it changed; transactions larger than the server's
//! logical_decoding_work_mem invalidate at their commit, whether the server spills them (test_decoding)
//! or streams them while they run (pgoutput protocol 2, with a publication of the user's).
//! A test binary of its own: the setup installs the trigger in every database of its server.

use veneer_tests::cache::{
    figure, first, on, own_database, own_database_with, status, until_seen, wait_database_cached,
};
use veneer_tests::*;

/// Runs `veneer setup` against the test server, as a user would, once for the binary: every test
/// calls it first, before making its database (which then inherits the trigger from template1), so
/// no setup runs while another test creates a database from template1 or makes DDL of its own.
async fn setup() {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let output = binary::operate("setup", &[]).await;
        assert!(
            output.stdout.contains("installed in database template1\n"),
            "{}",
            output.stdout
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_made_elsewhere_invalidates_once_set_up() {
    setup().await;
    let direct = own_database_with("ddl_db", "SET synchronous_commit = on;
             CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a'), (2, 'b');
             CREATE FUNCTION tag(int) RETURNS text IMMUTABLE LANGUAGE sql AS 'SELECT ''old'' || $1';",).await;
    let proxy = ProxyHandle::start().await;
    let client = connect(&on(proxy.addr(), "ddl_db")).await.unwrap();
    wait_database_cached(&client, "ddl_db").await;
    let (row, count, tagged) = (
        "SELECT * FROM items WHERE id = 1",
        "SELECT count(*) FROM items",
        "SELECT tag(id) FROM items WHERE id = 1",
    );
    for sql in [row, count, tagged, row, count, tagged] {
        first(&client, sql).await;
    }
    assert!(figure(&client, "hits").await >= 3);

    // A column added directly shows in SELECT * (DDL writes no rows: only the trigger reports it).
    direct
        .batch_execute("ALTER TABLE items ADD COLUMN extra int DEFAULT 7")
        .await
        .unwrap();
    let widened = wait_for(STEP_TIMEOUT, || async {
        let rows = client.simple_query(row).await.unwrap();
        rows.iter().any(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.len() == 3,
            _ => false,
        })
    })
    .await;
    assert!(widened, "SELECT * kept the old columns");

    // A table dropped and created again, empty: no row change is streamed, the DDL notice is.
    direct
        .batch_execute("DROP TABLE items; CREATE TABLE items (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    until_seen(&client, count, "0").await;

    // A function replaced changes what cached reads calling it return.
    direct
        .batch_execute("INSERT INTO items VALUES (1, 'a')")
        .await
        .unwrap();
    until_seen(&client, tagged, "old1").await;
    direct
        .batch_execute(
            "CREATE OR REPLACE FUNCTION tag(int) RETURNS text IMMUTABLE LANGUAGE sql AS 'SELECT ''new'' || $1'",
        )
        .await
        .unwrap();
    until_seen(&client, tagged, "new1").await;
}

/// A transaction of 100,000 rows (and an aborted one of 20,000) made directly in a database of its
/// own, followed by a proxy with `publication` set or not; returns the database's
/// `pg_stat_replication_slots` counts of transactions streamed and spilled to disk.
async fn large_transactions(database: &str, publication: Option<&str>) -> (i64, i64) {
    setup().await;
    let direct = own_database(database).await;
    direct
        .batch_execute(
            "SET synchronous_commit = on;
             CREATE TABLE big (id int PRIMARY KEY, v int); INSERT INTO big VALUES (0, 0);
             CREATE PUBLICATION big_only FOR TABLE big;",
        )
        .await
        .unwrap();
    let publication = publication.map(str::to_owned);
    let proxy = ProxyHandle::start_with(|s| s.publication = publication).await;
    let client = connect(&on(proxy.addr(), database)).await.unwrap();
    wait_database_cached(&client, database).await;
    let count = "SELECT count(*) FROM big";
    assert_eq!(first(&client, count).await.as_deref(), Some("1"));
    // An aborted transaction changes nothing.
    direct
        .batch_execute(
            "BEGIN; INSERT INTO big SELECT g, g FROM generate_series(1, 20000) g; ROLLBACK",
        )
        .await
        .unwrap();
    direct
        .batch_execute("INSERT INTO big SELECT g, g FROM generate_series(1, 100000) g")
        .await
        .unwrap();
    until_seen(&client, count, "100001").await;
    let replication = status(&client).await[&format!("replication {database}")].clone();
    let rows: u64 = replication
        .split(" rows applied")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{replication}"));
    assert!(rows >= 100_000, "{replication}");
    let row = direct
        .query_one(
            "SELECT coalesce(sum(stream_txns), 0)::int8, coalesce(sum(spill_txns), 0)::int8 \
             FROM pg_stat_replication_slots WHERE slot_name IN \
               (SELECT slot_name FROM pg_replication_slots WHERE database = $1)",
            &[&database],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_invalidates_at_its_commit() {
    // test_decoding gets a transaction whole at its commit: the server spills a large one to disk.
    let (_, spilled) = large_transactions("ddl_big", None).await;
    assert!(spilled >= 1, "the transaction was not spilled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_transaction_of_a_chosen_publication_invalidates_at_its_commit() {
    // pgoutput protocol 2 streams it while it runs.
    let (streamed, _) = large_transactions("ddl_big_streamed", Some("big_only")).await;
    assert!(
        streamed >= 1,
        "the transactions were not streamed in progress"
    );
}

/// With setup, DDL that changes what reads of other tables return is seen at once: a table made
/// unlogged (its writes leave the stream) and a table joining an inheritance tree (its rows join
/// reads of the parent, which the command does not name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_that_changes_what_the_stream_sees_is_followed_once_set_up() {
    setup().await;
    let direct = own_database_with(
        "ddl_blind",
        "SET synchronous_commit = on;
             CREATE TABLE becomes (id int PRIMARY KEY, v int); INSERT INTO becomes VALUES (1, 1);
             CREATE TABLE parent (id int, v int); INSERT INTO parent VALUES (1, 1);
             CREATE TABLE kid (id int, v int); INSERT INTO kid VALUES (2, 2);",
    )
    .await;
    let proxy = ProxyHandle::start().await;
    let client = connect(&on(proxy.addr(), "ddl_blind")).await.unwrap();
    wait_database_cached(&client, "ddl_blind").await;
    let (becomes, family) = (
        "SELECT v FROM becomes WHERE id = 1",
        "SELECT count(*) FROM parent",
    );
    for sql in [becomes, family, becomes, family] {
        first(&client, sql).await;
    }
    direct
        .batch_execute("ALTER TABLE kid INHERIT parent")
        .await
        .unwrap();
    until_seen(&client, family, "2").await;
    direct
        .batch_execute("ALTER TABLE becomes SET UNLOGGED")
        .await
        .unwrap();
    // Once the notice is applied, the table's reads go upstream: a write no stream reports shows.
    veneer_tests::cache::wait_unlogged_forwarded(&direct, &client, "becomes").await;
}
