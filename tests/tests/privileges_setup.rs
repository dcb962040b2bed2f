//! Privileges changed directly on the server with `veneer setup`'s event trigger installed: a
//! GRANT, a REVOKE or a policy's DDL reaches Veneer through the replication stream, milliseconds
//! after its commit, rather than at the next check (here made rare, so that only the stream can
//! explain the bound). A test binary of its own: the setup installs the trigger in every database.

use veneer_config::Millis;
use veneer_tests::cache::{run_direct, wait_cache_ready};
use veneer_tests::privileges::*;
use veneer_tests::*;

/// The REVOKE of the issue, with setup: bob is refused within the replication lag; alice, whom
/// it does not concern, keeps her hits (the GRANT or REVOKE no longer counts as DDL of unknown
/// reach, which emptied the whole database's cache); a policy created directly narrows bob's rows
/// as fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_setup_a_revoke_or_policy_made_directly_is_seen_within_the_lag() {
    binary::operate("setup", &[]).await;
    create_roles(&["su_bob", "su_alice"]).await;
    run_direct(
        "CREATE TABLE su_acct (id int PRIMARY KEY, v int);
         INSERT INTO su_acct SELECT g, g FROM generate_series(1, 10) g;
         GRANT SELECT ON su_acct TO su_bob, su_alice;",
    )
    .await;
    let proxy = ProxyHandle::start_with(|s| {
        s.privilege_check = Some(Millis(std::time::Duration::from_secs(30)));
    })
    .await;
    wait_cache_ready(proxy.addr()).await;
    let observer = observer(proxy.addr(), DATABASE).await;
    let (bob, alice) = (
        session(proxy.addr(), "su_bob", DATABASE).await,
        session(proxy.addr(), "su_alice", DATABASE).await,
    );
    let (point, all) = (
        "SELECT v FROM su_acct WHERE id = 9",
        "SELECT count(*) FROM su_acct",
    );
    for sql in [point, all] {
        for client in [&bob, &alice] {
            warm(&observer, client, sql).await;
        }
    }
    // Tables and roles seen for the first time are dropped once at the first check after them;
    // with checks this rare, wake one through the stream and warm again.
    run_direct("GRANT SELECT ON su_acct TO su_alice").await;
    for sql in [point, all] {
        for client in [&bob, &alice] {
            warm(&observer, client, sql).await;
        }
    }
    let direct_bob = session(server(), "su_bob", DATABASE).await;
    // synchronous_commit on, as servers run by default (the test server's is off): the commit is
    // flushed, and so decoded, at once rather than within the WAL writer's delay.
    run_direct(
        "SET synchronous_commit = on; ALTER TABLE su_acct ENABLE ROW LEVEL SECURITY;
         CREATE POLICY su_few ON su_acct FOR SELECT TO su_bob, su_alice USING (id <= 3);",
    )
    .await;
    let rls = until_as_directly("policy made directly, with setup", &direct_bob, &bob, all).await;
    for client in [&bob, &alice] {
        warm(&observer, client, point).await;
    }
    run_direct("SET synchronous_commit = on; REVOKE SELECT ON su_acct FROM su_bob").await;
    let revoke =
        until_refused_as_directly("REVOKE made directly, with setup", &direct_bob, &bob, point)
            .await;
    keeps_hits(&observer, &alice, point).await;
    // Far below the 30 s between checks: the stream told.
    assert!(rls.as_secs() < 5 && revoke.as_secs() < 5);
}
