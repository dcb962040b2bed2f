//! Server sessions: by default every client gets a new one of its own, as it would directly. With
//! `pool_idle_timeout` set (opt-in), after a clean logout from a login the server accepted unasked
//! (trust), the backend is reset with DISCARD ALL and serves the next client with the same startup
//! message. Logins that asked for a password, sessions that ended mid-transaction or created
//! temporary objects, and backends that died while kept are never handed on.

use std::time::Duration;

use veneer_config::Millis;
use veneer_tests::cache::figure;
use veneer_tests::client::config;
use veneer_tests::*;

/// A proxy that keeps upstream connections for a minute.
async fn reusing_proxy() -> ProxyHandle {
    ProxyHandle::start_with(|s| s.pool_idle_timeout = Some(Millis(Duration::from_secs(60)))).await
}

/// Waits until the proxy has kept `n` upstream connections in all (its status counts them).
async fn wait_kept(status: &tokio_postgres::Client, n: u64) {
    let kept = wait_for(STEP_TIMEOUT, || async {
        figure(status, "upstream_kept").await >= n
    })
    .await;
    assert!(
        kept,
        "the proxy did not keep upstream connection number {n}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_logout_leaves_a_reset_backend_for_the_same_login() {
    let proxy = reusing_proxy().await;
    let status = connect_as(proxy.addr(), "pool-status").await;
    let login = config(proxy.addr(), TRUST_USER, None, "pool-reuse");

    let first = connect(&login).await.unwrap();
    let pid: i32 = scalar(&first, "SELECT pg_backend_pid()").await;
    let fresh_work_mem: String = scalar(&first, "SHOW work_mem").await;
    first
        .batch_execute(
            "SET work_mem = '7MB'; SET application_name = 'pool-changed'; \
             PREPARE kept_statement AS SELECT 1; LISTEN kept_channel; \
             SELECT pg_advisory_lock(4242)",
        )
        .await
        .unwrap();
    drop(first);
    wait_kept(&status, 1).await;

    let second = connect(&login).await.unwrap();
    assert_eq!(
        scalar::<i32>(&second, "SELECT pg_backend_pid()").await,
        pid,
        "the same login got a new backend"
    );
    assert_eq!(figure(&status, "upstream_reused").await, 1);
    assert_eq!(
        scalar::<String>(&second, "SHOW work_mem").await,
        fresh_work_mem
    );
    assert_eq!(
        scalar::<String>(&second, "SHOW application_name").await,
        "pool-reuse"
    );
    for (what, sql) in [
        (
            "prepared statements",
            "SELECT count(*) FROM pg_prepared_statements WHERE name = 'kept_statement'",
        ),
        (
            "listened channels",
            "SELECT count(*) FROM pg_listening_channels()",
        ),
        (
            "advisory locks",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        ),
    ] {
        assert_eq!(
            scalar::<i64>(&second, sql).await,
            0,
            "{what} survived the reset"
        );
    }
    // The replayed BackendKeyData routes cancel requests to the kept backend.
    let cancel = second.cancel_token();
    let sleeping = second.simple_query("SELECT pg_sleep(30)");
    let observer = direct_admin().await;
    let cancelled = async {
        wait_backend_active(&observer, "pool-reuse", "pg_sleep").await;
        cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    };
    let (slept, ()) = within("the cancelled sleep", async {
        tokio::join!(sleeping, cancelled)
    })
    .await;
    let err = slept.expect_err("the sleep should have been cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"));

    // Another startup message (here another application_name) is another login.
    let other = connect(&config(proxy.addr(), TRUST_USER, None, "pool-other"))
        .await
        .unwrap();
    assert_ne!(scalar::<i32>(&other, "SELECT pg_backend_pid()").await, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_of_password_logins_unclean_ends_and_dead_kept_ones_are_not_handed_on() {
    let proxy = reusing_proxy().await;
    let status = connect_as(proxy.addr(), "pool-refusal-status").await;
    let observer = direct_admin().await;

    // A login that asked for a password: the proxy could not check the next client's.
    let md5 = config(proxy.addr(), MD5_USER, Some(MD5_PASSWORD), "pool-md5");
    drop(connect(&md5).await.unwrap());
    wait_backend_gone(&observer, "pool-md5", STEP_TIMEOUT).await;

    // A session that ended inside a transaction block.
    let in_block = connect(&config(proxy.addr(), TRUST_USER, None, "pool-block"))
        .await
        .unwrap();
    in_block.batch_execute("BEGIN").await.unwrap();
    drop(in_block);
    wait_backend_gone(&observer, "pool-block", STEP_TIMEOUT).await;

    // A session that created temporary objects: its temporary namespace outlives DISCARD ALL.
    let temp = connect(&config(proxy.addr(), TRUST_USER, None, "pool-temp"))
        .await
        .unwrap();
    temp.batch_execute("CREATE TEMP TABLE pool_temp (x int)")
        .await
        .unwrap();
    temp.batch_execute("DISCARD ALL").await.unwrap();
    drop(temp);
    wait_backend_gone(&observer, "pool-temp", STEP_TIMEOUT).await;
    assert_eq!(figure(&status, "upstream_kept").await, 0);

    // A kept backend that dies while idle is dropped, and the next client gets a new one.
    let login = config(proxy.addr(), TRUST_USER, None, "pool-dies");
    let first = connect(&login).await.unwrap();
    let pid: i32 = scalar(&first, "SELECT pg_backend_pid()").await;
    drop(first);
    wait_kept(&status, 1).await;
    observer
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let gone = wait_for(STEP_TIMEOUT, || async {
        let n: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;
    assert!(gone, "the kept backend was not terminated");
    let second = connect(&login).await.unwrap();
    assert_ne!(scalar::<i32>(&second, "SELECT pg_backend_pid()").await, pid);
    assert_eq!(scalar::<i32>(&second, "SELECT 1").await, 1);
    assert_eq!(figure(&status, "upstream_reused").await, 0);
}

/// Waits until the session of `application_name` has ended upstream or its backend was kept.
async fn session_over(
    status: &tokio_postgres::Client,
    observer: &tokio_postgres::Client,
    name: &str,
) {
    let over = wait_for(STEP_TIMEOUT, || async {
        backends_named(observer, name).await == 0 || figure(status, "upstream_kept").await > 0
    })
    .await;
    assert!(over, "the session of {name} never ended");
}

/// Runs, through `addr`, a session that creates a temporary table, then a second session of the same
/// login that uses the temporary namespace; returns what each statement of the second answered.
async fn after_temp_use(addr: std::net::SocketAddr, name: &str) -> Vec<String> {
    let status = connect_as(addr, &format!("{name}-status")).await;
    let observer = direct_admin().await;
    let login = config(addr, TRUST_USER, None, name);
    let first = connect(&login).await.unwrap();
    first
        .batch_execute("CREATE TEMP TABLE fresh_temp (x int)")
        .await
        .unwrap();
    drop(first);
    if addr == pg().addr() {
        wait_backend_gone(&observer, name, STEP_TIMEOUT).await;
    } else {
        session_over(&status, &observer, name).await;
    }
    let second = connect(&login).await.unwrap();
    let mut answers = Vec::new();
    for sql in [
        "SET search_path TO pg_temp",
        "SELECT 'pg_temp.nothing'::regclass",
        "BEGIN",
        "CREATE TABLE pg_temp.fresh_prepared (x int)",
        "PREPARE TRANSACTION 'fresh_temp'",
        "ROLLBACK",
    ] {
        answers.push(match second.batch_execute(sql).await {
            Ok(()) => format!("{sql}: ok"),
            Err(e) => format!("{sql}: {:?}", e.as_db_error().map(|d| d.message())),
        });
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_gets_a_new_server_session_by_default() {
    let proxy = ProxyHandle::start().await;
    let status = connect_as(proxy.addr(), "fresh-status").await;
    let observer = direct_admin().await;
    let login = config(proxy.addr(), TRUST_USER, None, "fresh-pid");
    let first = connect(&login).await.unwrap();
    let pid: i32 = scalar(&first, "SELECT pg_backend_pid()").await;
    drop(first);
    session_over(&status, &observer, "fresh-pid").await;
    let second = connect(&login).await.unwrap();
    assert_ne!(
        scalar::<i32>(&second, "SELECT pg_backend_pid()").await,
        pid,
        "two connections shared a server session"
    );
    assert_eq!(figure(&status, "upstream_kept").await, 0);

    // What a session leaves in its backend (here a temporary namespace) is not seen by the next.
    let direct = after_temp_use(pg().addr(), "fresh-temp-direct").await;
    let through = after_temp_use(proxy.addr(), "fresh-temp-proxy").await;
    assert_eq!(through, direct);
    assert!(
        direct[4].contains("cannot PREPARE a transaction that has operated on temporary objects"),
        "{direct:?}"
    );
}
