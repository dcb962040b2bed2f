//! Privileges, role memberships and attributes, row-level security and role or database settings
//! changed directly on the server, without `veneer setup`: within the bound the role concerned gets
//! through Veneer what it gets directly (Postgres's own refusal, its narrowed rows, another table),
//! and roles the change did not concern keep their hits. Each test has roles and tables of its own.

use veneer_tests::cache::{own_database_with, run_direct, wait_cache_ready, wait_database_cached};
use veneer_tests::privileges::*;
use veneer_tests::*;

/// The case of the issue: `REVOKE SELECT ON acct FROM bob`, made directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_made_directly_refuses_the_role_and_spares_the_others() {
    let Scene {
        proxy,
        observer,
        sessions,
    } = scene(
        &["rv_bob", "rv_alice"],
        "CREATE TABLE rv_acct (id int PRIMARY KEY, v int); INSERT INTO rv_acct VALUES (9, 2354);
         GRANT SELECT ON rv_acct TO rv_bob, rv_alice;",
    )
    .await;
    let Ok([bob, alice]) = <[Conn; 2]>::try_from(sessions) else {
        unreachable!("two roles")
    };
    let sql = "SELECT v FROM rv_acct WHERE id = 9";
    warm_checked(&observer, &[&bob, &alice], DATABASE, sql).await;
    run_direct("REVOKE SELECT ON rv_acct FROM rv_bob").await;
    let direct_bob = session(server(), "rv_bob", DATABASE).await;
    until_refused_as_directly("REVOKE made directly", &direct_bob, &bob, sql).await;
    // A session that starts now is refused too.
    let new_bob = session(proxy.addr(), "rv_bob", DATABASE).await;
    rows(&new_bob, sql).await.expect_err("refused");
    keeps_hits(&observer, &alice, sql).await;
}

/// A column-level REVOKE: the column read is refused; the role's other reads and other roles go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_revoke_made_directly_refuses_that_column() {
    let Scene {
        proxy: _proxy,
        observer,
        sessions,
    } = scene(
        &["col_bob", "col_alice"],
        "CREATE TABLE col_acct (id int PRIMARY KEY, v int, w int); INSERT INTO col_acct VALUES (9, 1, 2);
         GRANT SELECT (id, v, w) ON col_acct TO col_bob; GRANT SELECT ON col_acct TO col_alice;",
    )
    .await;
    let Ok([bob, alice]) = <[Conn; 2]>::try_from(sessions) else {
        unreachable!("two roles")
    };
    let sql = "SELECT v FROM col_acct WHERE id = 9";
    warm_checked(&observer, &[&bob, &alice], DATABASE, sql).await;
    run_direct("REVOKE SELECT (v) ON col_acct FROM col_bob").await;
    let direct_bob = session(server(), "col_bob", DATABASE).await;
    until_refused_as_directly("column REVOKE made directly", &direct_bob, &bob, sql).await;
    assert_eq!(
        rows(&bob, "SELECT w FROM col_acct WHERE id = 9")
            .await
            .unwrap(),
        [[Some("2".to_owned())]]
    );
    keeps_hits(&observer, &alice, sql).await;
}

/// A role membership revoked directly (no event trigger reports it): the privileges that came with
/// it are gone through Veneer too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_revoked_directly_takes_its_privileges_along() {
    let Scene {
        proxy: _proxy,
        observer,
        sessions,
    } = scene(
        &["mem_bob", "mem_alice"],
        "CREATE ROLE mem_readers NOLOGIN; GRANT mem_readers TO mem_bob, mem_alice;
         CREATE TABLE mem_acct (id int PRIMARY KEY, v int); INSERT INTO mem_acct VALUES (9, 7);
         GRANT SELECT ON mem_acct TO mem_readers;",
    )
    .await;
    let Ok([bob, alice]) = <[Conn; 2]>::try_from(sessions) else {
        unreachable!("two roles")
    };
    let sql = "SELECT v FROM mem_acct WHERE id = 9";
    warm_checked(&observer, &[&bob, &alice], DATABASE, sql).await;
    run_direct("REVOKE mem_readers FROM mem_bob").await;
    let direct_bob = session(server(), "mem_bob", DATABASE).await;
    until_refused_as_directly("membership revoked directly", &direct_bob, &bob, sql).await;
    keeps_hits(&observer, &alice, sql).await;
}

/// Row-level security turned on for a cached table, then a policy narrowed, both directly: the role
/// the policies apply to gets the rows Postgres gives it; the owner, whom they do not bind, keeps
/// its hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_enabled_and_narrowed_directly_narrows_the_rows() {
    let Scene {
        proxy: _proxy,
        observer,
        sessions,
    } = scene(
        &["rls_bob", "rls_owner"],
        "CREATE TABLE rls_acct (id int PRIMARY KEY, v int);
         INSERT INTO rls_acct SELECT g, g FROM generate_series(1, 10) g;
         ALTER TABLE rls_acct OWNER TO rls_owner; GRANT SELECT ON rls_acct TO rls_bob;",
    )
    .await;
    let Ok([bob, owner]) = <[Conn; 2]>::try_from(sessions) else {
        unreachable!("two roles")
    };
    let direct_bob = session(server(), "rls_bob", DATABASE).await;
    let sql = "SELECT count(*) FROM rls_acct";
    warm_checked(&observer, &[&bob, &owner], DATABASE, sql).await;
    run_direct(
        "ALTER TABLE rls_acct ENABLE ROW LEVEL SECURITY;
         CREATE POLICY rls_few ON rls_acct FOR SELECT TO rls_bob USING (id <= 3);",
    )
    .await;
    until_as_directly(
        "row-level security enabled directly",
        &direct_bob,
        &bob,
        sql,
    )
    .await;
    keeps_hits(&observer, &owner, sql).await;
    warm(&observer, &bob, sql).await;
    run_direct("ALTER POLICY rls_few ON rls_acct USING (id <= 1)").await;
    until_as_directly("policy narrowed directly", &direct_bob, &bob, sql).await;
    keeps_hits(&observer, &owner, sql).await;
}

/// `ALTER ROLE … NOBYPASSRLS` made directly: the role's reads of a table with row-level security
/// are narrowed by its policies from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobypassrls_made_directly_narrows_the_rows() {
    let Scene {
        proxy,
        observer,
        sessions,
    } = scene(
        &["byp_bob", "byp_alice"],
        "ALTER ROLE byp_bob BYPASSRLS;
         CREATE TABLE byp_acct (id int PRIMARY KEY, v int);
         INSERT INTO byp_acct SELECT g, g FROM generate_series(1, 10) g;
         ALTER TABLE byp_acct ENABLE ROW LEVEL SECURITY;
         CREATE POLICY byp_few ON byp_acct FOR SELECT USING (id <= 2);
         GRANT SELECT ON byp_acct TO byp_bob, byp_alice;",
    )
    .await;
    let Ok([bob, alice]) = <[Conn; 2]>::try_from(sessions) else {
        unreachable!("two roles")
    };
    let sql = "SELECT count(*) FROM byp_acct";
    warm_checked(&observer, &[&bob, &alice], DATABASE, sql).await;
    assert_eq!(rows(&bob, sql).await.unwrap(), [[Some("10".to_owned())]]);
    run_direct("ALTER ROLE byp_bob NOBYPASSRLS").await;
    // A role's attributes are read at its session's start: the change binds new sessions.
    let direct_bob = session(server(), "byp_bob", DATABASE).await;
    let new_bob = session(proxy.addr(), "byp_bob", DATABASE).await;
    until_as_directly("NOBYPASSRLS made directly", &direct_bob, &new_bob, sql).await;
    keeps_hits(&observer, &alice, sql).await;
}

/// `ALTER ROLE bob SET search_path` made directly: bob's next session reads the other schema's
/// table, as it does directly; a session of bob's from before keeps its own search_path and its
/// answers; another role keeps its hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_search_path_set_directly_resolves_names_as_postgres_does() {
    let Scene {
        proxy,
        observer,
        sessions,
    } = scene(
        &["sp_bob", "sp_alice"],
        "CREATE SCHEMA sp_other; CREATE TABLE sp_acct (id int PRIMARY KEY, v int);
         CREATE TABLE sp_other.sp_acct (id int PRIMARY KEY, v int);
         INSERT INTO sp_acct VALUES (9, 2354); INSERT INTO sp_other.sp_acct VALUES (9, -1);
         GRANT USAGE ON SCHEMA sp_other TO sp_bob, sp_alice;
         GRANT SELECT ON sp_acct, sp_other.sp_acct TO sp_bob, sp_alice;",
    )
    .await;
    let Ok([old_bob, alice]) = <[Conn; 2]>::try_from(sessions) else {
        unreachable!("two roles")
    };
    let sql = "SELECT v FROM sp_acct WHERE id = 9";
    warm_checked(&observer, &[&old_bob, &alice], DATABASE, sql).await;
    run_direct("ALTER ROLE sp_bob SET search_path = sp_other, public").await;
    let direct_bob = session(server(), "sp_bob", DATABASE).await;
    assert_eq!(
        rows(&direct_bob, sql).await.unwrap(),
        [[Some("-1".to_owned())]]
    );
    // Sessions that start from now on: within the bound, each reads what it reads directly.
    new_sessions_read(
        "search_path set for the role directly",
        proxy.addr(),
        "sp_bob",
        DATABASE,
        sql,
        "-1",
    )
    .await;
    for _ in 0..3 {
        let bob = session(proxy.addr(), "sp_bob", DATABASE).await;
        assert_eq!(rows(&bob, sql).await.unwrap(), [[Some("-1".to_owned())]]);
    }
    assert_eq!(
        rows(&old_bob, sql).await.unwrap(),
        [[Some("2354".to_owned())]],
        "a session from before keeps its search_path"
    );
    keeps_hits(&observer, &alice, sql).await;
}

/// `ALTER DATABASE … SET search_path` made directly: new sessions of every role on that database
/// resolve names the new way through Veneer too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_search_path_set_directly_resolves_names_as_postgres_does() {
    create_roles(&["dsp_bob"]).await;
    let owner = own_database_with(
        "priv_dsp",
        "CREATE SCHEMA dsp_other; CREATE TABLE dsp_acct (id int PRIMARY KEY, v int);
             CREATE TABLE dsp_other.dsp_acct (id int PRIMARY KEY, v int);
             INSERT INTO dsp_acct VALUES (9, 2354); INSERT INTO dsp_other.dsp_acct VALUES (9, -1);
             GRANT USAGE ON SCHEMA dsp_other TO dsp_bob;
             GRANT SELECT ON dsp_acct, dsp_other.dsp_acct TO dsp_bob;",
    )
    .await;
    let proxy = ProxyHandle::start().await;
    let observer = observer(proxy.addr(), "priv_dsp").await;
    wait_database_cached(&observer, "priv_dsp").await;
    let bob = session(proxy.addr(), "dsp_bob", "priv_dsp").await;
    let sql = "SELECT v FROM dsp_acct WHERE id = 9";
    warm_checked(&observer, &[&bob], "priv_dsp", sql).await;
    run_direct("ALTER DATABASE priv_dsp SET search_path = dsp_other, public").await;
    new_sessions_read(
        "search_path set for the database directly",
        proxy.addr(),
        "dsp_bob",
        "priv_dsp",
        sql,
        "-1",
    )
    .await;
    for _ in 0..3 {
        let bob = session(proxy.addr(), "dsp_bob", "priv_dsp").await;
        assert_eq!(rows(&bob, sql).await.unwrap(), [[Some("-1".to_owned())]]);
    }
    assert_eq!(rows(&bob, sql).await.unwrap(), [[Some("2354".to_owned())]]);
    drop((bob, observer, owner));
    proxy.shutdown().await.expect("clean shutdown");
}

/// Opens sessions of `role` through the proxy at `addr` until one reads `expected` with `sql`;
/// prints how long that took and fails past the bound.
async fn new_sessions_read(
    what: &str,
    addr: std::net::SocketAddr,
    role: &str,
    dbname: &str,
    sql: &str,
    expected: &str,
) {
    let started = std::time::Instant::now();
    let seen = wait_for(BOUND, || async {
        let fresh = session(addr, role, dbname).await;
        rows(&fresh, sql).await.unwrap() == [[Some(expected.to_owned())]]
    })
    .await;
    println!(
        "{what}: new sessions through Veneer after {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert!(seen, "{what}: new sessions kept reading the old answer");
}

/// A REVOKE made right after a table's first reads: the check that first covers the table must not
/// take the revoked state for how it always was. A table's results are stored only once a check
/// covers it (its first reads wait the few milliseconds that takes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_right_after_a_tables_first_read_is_seen() {
    create_roles(&["fr_bob"]).await;
    run_direct(
        "CREATE TABLE fr_acct (id int PRIMARY KEY, v int); INSERT INTO fr_acct VALUES (9, 1);
         GRANT SELECT ON fr_acct TO fr_bob;",
    )
    .await;
    let proxy = ProxyHandle::start().await;
    wait_cache_ready(proxy.addr()).await;
    let observer = observer(proxy.addr(), DATABASE).await;
    let bob = session(proxy.addr(), "fr_bob", DATABASE).await;
    let sql = "SELECT v FROM fr_acct WHERE id = 9";
    warm(&observer, &bob, sql).await;
    run_direct("REVOKE SELECT ON fr_acct FROM fr_bob").await;
    let direct_bob = session(server(), "fr_bob", DATABASE).await;
    until_refused_as_directly("REVOKE right after a first read", &direct_bob, &bob, sql).await;
}
