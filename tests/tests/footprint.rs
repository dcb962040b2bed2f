//! No footprint: running Veneer changes nothing any client of the database sees or can do, whether
//! it connects through Veneer or not. Tables without a primary key stay writable (before and after
//! `veneer setup`, and after a primary key is dropped), Veneer follows writes without a publication
//! and with a service login that is no superuser, and it drops the FOR ALL TABLES publication older
//! Veneers created while leaving anyone else's alone.
//! A test binary of its own: `veneer setup` installs its trigger in every database of the server.

use tokio_postgres::Client;
use veneer_tests::cache::{
    figure, first, on, own_database_with, until_seen, wait_database_cached, write_applied,
};
use veneer_tests::*;

/// Updates and deletes a row of each of `tables` (each with columns `a int, b text` and a row `a =
/// 1`), then puts the row back, failing the test on any refusal.
async fn write_each(client: &Client, tables: &[&str], how: &str) {
    for table in tables {
        let sql = format!(
            "UPDATE {table} SET b = 'updated' WHERE a = 1; DELETE FROM {table} WHERE a = 1; \
             INSERT INTO {table} VALUES (1, 'x')"
        );
        client
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{how}: {sql}: {e:?}"));
    }
}

async fn publications(client: &Client) -> i64 {
    scalar(client, "SELECT count(*) FROM pg_publication").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_without_a_primary_key_stay_writable_for_everyone() {
    let direct = own_database_with(
        "fp_nopk",
        "SET synchronous_commit = on;
             CREATE TABLE before_start (a int, b text); INSERT INTO before_start VALUES (1, 'x');
             CREATE TABLE keyed (a int PRIMARY KEY, b text); INSERT INTO keyed VALUES (1, 'x');",
    )
    .await;
    let proxy = ProxyHandle::start().await;
    let client = connect(&on(proxy.addr(), "fp_nopk")).await.unwrap();
    wait_database_cached(&client, "fp_nopk").await;
    client
        .batch_execute("CREATE TABLE through_veneer (a int, b text); INSERT INTO through_veneer VALUES (1, 'x')")
        .await
        .unwrap();
    direct
        .batch_execute(
            "CREATE TABLE made_directly (a int, b text); INSERT INTO made_directly VALUES (1, 'x')",
        )
        .await
        .unwrap();
    let tables = ["before_start", "through_veneer", "made_directly", "keyed"];
    write_each(&direct, &tables, "directly").await;
    write_each(&client, &tables, "through Veneer").await;

    // Reads of a table without a primary key are cached (once the catalog is read again after the
    // DDL above) and follow writes made elsewhere.
    wait_database_cached(&client, "fp_nopk").await;
    let read = "SELECT b FROM before_start WHERE a = 1";
    first(&client, read).await;
    let hits = figure(&client, "hits").await;
    assert_eq!(first(&client, read).await.as_deref(), Some("x"));
    assert_eq!(figure(&client, "hits").await, hits + 1, "not cached");
    direct
        .batch_execute("UPDATE before_start SET b = 'seen' WHERE a = 1")
        .await
        .unwrap();
    until_seen(&client, read, "seen").await;
    direct
        .batch_execute("UPDATE before_start SET b = 'x' WHERE a = 1")
        .await
        .unwrap();

    // A table that loses its primary key stays writable.
    direct
        .batch_execute("ALTER TABLE keyed DROP CONSTRAINT keyed_pkey")
        .await
        .unwrap();
    write_each(&direct, &["keyed"], "directly, without its key").await;
    write_each(&client, &["keyed"], "through Veneer, without its key").await;

    // And so after `veneer setup`, for tables old and new.
    binary::operate("setup", &[]).await;
    direct
        .batch_execute(
            "CREATE TABLE after_setup (a int, b text); INSERT INTO after_setup VALUES (1, 'x')",
        )
        .await
        .unwrap();
    let tables = [&tables[..], &["after_setup"]].concat();
    write_each(&direct, &tables, "directly, after setup").await;
    write_each(&client, &tables, "through Veneer, after setup").await;
    assert_eq!(publications(&direct).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_veneers_publication_is_dropped_and_others_are_left_alone() {
    let legacy = own_database_with(
        "fp_legacy",
        "CREATE TABLE nopk (a int, b text); INSERT INTO nopk VALUES (1, 'x');
             CREATE PUBLICATION veneer FOR ALL TABLES;",
    )
    .await;
    let refused = legacy
        .batch_execute("UPDATE nopk SET b = 'y'")
        .await
        .expect_err("the publication of older Veneers refuses updates of tables without a key");
    assert!(
        format!("{refused:?}").contains("replica identity"),
        "{refused:?}"
    );
    let users = own_database_with(
        "fp_users",
        "CREATE PUBLICATION veneer FOR ALL TABLES WITH (publish = 'insert');
             CREATE PUBLICATION app FOR ALL TABLES;",
    )
    .await;
    let proxy = ProxyHandle::start().await;
    for database in ["fp_legacy", "fp_users"] {
        let client = connect(&on(proxy.addr(), database)).await.unwrap();
        wait_database_cached(&client, database).await;
    }
    assert_eq!(publications(&legacy).await, 0, "the old publication stayed");
    legacy
        .batch_execute("UPDATE nopk SET b = 'y'; DELETE FROM nopk")
        .await
        .unwrap();
    assert_eq!(
        publications(&users).await,
        2,
        "someone's publication was touched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_login_without_superuser_follows_writes_by_row() {
    let direct = own_database_with(
        "fp_service",
        "SET synchronous_commit = on;
             CREATE TABLE acct (id int PRIMARY KEY, v int);
             INSERT INTO acct SELECT g, g FROM generate_series(1, 3) g;",
    )
    .await;
    let superuser: bool = scalar(
        &direct,
        &format!("SELECT rolsuper FROM pg_roles WHERE rolname = '{SERVICE_USER}'"),
    )
    .await;
    assert!(!superuser);
    let proxy = ProxyHandle::start_with(|s| s.service_user = Some(SERVICE_USER.to_owned())).await;
    let client = connect(&on(proxy.addr(), "fp_service")).await.unwrap();
    wait_database_cached(&client, "fp_service").await;
    let (one, two) = (
        "SELECT v FROM acct WHERE id = 1",
        "SELECT v FROM acct WHERE id = 2",
    );
    for sql in [one, two, one, two] {
        first(&client, sql).await;
    }
    write_applied(
        &direct,
        &client,
        "fp_service",
        "UPDATE acct SET v = 10 WHERE id = 1",
    )
    .await;
    assert_eq!(first(&client, one).await.as_deref(), Some("10"));
    let hits = figure(&client, "hits").await;
    assert_eq!(first(&client, two).await.as_deref(), Some("2"));
    assert_eq!(
        figure(&client, "hits").await,
        hits + 1,
        "a write to row 1 invalidated row 2"
    );
}
