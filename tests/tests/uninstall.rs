//! `veneer uninstall` removes everything Veneer created in the server — setup's event triggers,
//! function and schema in every database, the publication older Veneers created, the permanent slots
//! of `replication_slot` — and leaves alone what only looks like it (a schema `veneer` of a user's).
//! A test binary of its own: setup and uninstall act on every database of the server.

use tokio_postgres::Client;
use veneer_tests::cache::{on, own_database, own_database_with, wait_database_cached};
use veneer_tests::*;

/// Counts of what Veneer may have left in the database `client` is connected to: event triggers,
/// schemas named veneer, publications and replication slots of any database.
async fn leftovers(client: &Client) -> (i64, i64, i64, i64) {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_event_trigger), \
               (SELECT count(*) FROM pg_namespace WHERE nspname = 'veneer'), \
               (SELECT count(*) FROM pg_publication), \
               (SELECT count(*) FROM pg_replication_slots)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_removes_what_veneer_created_and_nothing_else() {
    let ours = own_database("un_ours").await;
    ours.batch_execute("CREATE PUBLICATION veneer FOR ALL TABLES")
        .await
        .unwrap();
    let theirs = own_database_with(
        "un_theirs",
        "CREATE SCHEMA veneer; CREATE TABLE veneer.keep (v int)",
    )
    .await;
    let setup = binary::operate("setup", &[]).await;
    assert!(
        setup
            .stdout
            .contains("DDL event trigger installed in database un_ours\n"),
        "{}",
        setup.stdout
    );
    assert!(
        setup
            .stdout
            .contains("not installed: a schema veneer exists"),
        "{}",
        setup.stdout
    );
    // A permanent slot, left behind by a proxy that stopped.
    let proxy = ProxyHandle::start_with(|s| s.replication_slot = Some("un".to_owned())).await;
    let client = connect(&on(proxy.addr(), "un_ours")).await.unwrap();
    wait_database_cached(&client, "un_ours").await;
    drop(client);
    proxy.shutdown().await.unwrap();
    // The stream had dropped the old publication already; make it again to see uninstall drop it.
    ours.batch_execute("CREATE PUBLICATION veneer FOR ALL TABLES")
        .await
        .unwrap();
    assert_eq!(leftovers(&ours).await, (2, 1, 1, 1));

    let removed = binary::operate("uninstall", &["--replication-slot", "un"]).await;
    for line in [
        "dropped EVENT TRIGGER veneer_ddl_end in database un_ours",
        "dropped SCHEMA veneer in database template1",
        "dropped PUBLICATION veneer (FOR ALL TABLES, made by an older Veneer) in database un_ours",
        "dropped replication slot un_un_ours in database un_ours",
    ] {
        assert!(removed.stdout.contains(line), "{line}:\n{}", removed.stdout);
    }
    assert_eq!(leftovers(&ours).await, (0, 0, 0, 0));
    let kept: i64 = scalar(&theirs, "SELECT count(*) FROM veneer.keep").await;
    assert_eq!(kept, 0, "the user's schema went");
    let template = connect(&on(pg().addr(), "template1")).await.unwrap();
    assert_eq!(leftovers(&template).await, (0, 0, 0, 0));
    // Running it again finds nothing.
    let again = binary::operate("uninstall", &["--replication-slot", "un"]).await;
    assert!(
        again
            .stdout
            .contains("nothing of Veneer's in database un_ours"),
        "{}",
        again.stdout
    );
}
