//! A server-wide setting that changes results, changed with `ALTER SYSTEM` and a reload: every
//! session of the server sees it, so this binary has the server to itself (in the binary of the
//! other privilege tests, the reload dropped their roles' hits along with everything else).

use veneer_tests::cache::{run_direct, wait_cache_ready};
use veneer_tests::privileges::*;
use veneer_tests::*;

/// A server-wide setting that changes results (`bytea_output`), changed with `ALTER SYSTEM` and a
/// reload: sessions get what Postgres now prints, through Veneer too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_setting_reloaded_changes_answers_through_veneer_too() {
    run_direct(
        "CREATE TABLE by_acct (id int PRIMARY KEY, b bytea); INSERT INTO by_acct VALUES (1, 'ab');",
    )
    .await;
    let proxy = ProxyHandle::start().await;
    wait_cache_ready(proxy.addr()).await;
    let observer = observer(proxy.addr(), DATABASE).await;
    let reader = session(proxy.addr(), SUPERUSER, DATABASE).await;
    let sql = "SELECT b FROM by_acct WHERE id = 1";
    warm(&observer, &reader, sql).await;
    assert_eq!(
        rows(&reader, sql).await.unwrap(),
        [[Some("\\x6162".to_owned())]]
    );
    run_direct("ALTER SYSTEM SET bytea_output = 'escape'").await;
    run_direct("SELECT pg_reload_conf()").await;
    let direct = session(server(), SUPERUSER, DATABASE).await;
    let shown = wait_for(BOUND, || async {
        rows(&direct, sql).await.unwrap() == [[Some("ab".to_owned())]]
    })
    .await;
    assert!(shown, "the server did not reload");
    until_as_directly("bytea_output reloaded", &direct, &reader, sql).await;
    run_direct("ALTER SYSTEM RESET bytea_output").await;
    run_direct("SELECT pg_reload_conf()").await;
}
