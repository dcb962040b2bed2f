//! The harness on its own, without the proxy: the private server starts, every role can log in
//! directly, and the observer sees sessions come and go. If these fail, every other test's failure is
//! about the harness, not the proxy.

use veneer_tests::client::config;
use veneer_tests::raw::RawClient;
use veneer_tests::tools::PgTool;
use veneer_tests::*;

#[tokio::test]
async fn server_runs_with_logical_wal() {
    let admin = direct_admin().await;
    let wal_level: String = scalar(&admin, "SHOW wal_level").await;
    assert_eq!(wal_level, "logical");
    let row = admin
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap();
    assert!(row.get::<_, String>(0).parse::<u32>().unwrap() >= 150_000);
}

#[tokio::test]
async fn every_role_logs_in_directly() {
    let addr = pg().addr();
    for (user, password) in [
        (TRUST_USER, None),
        (MD5_USER, Some(MD5_PASSWORD)),
        (SCRAM_USER, Some(SCRAM_PASSWORD)),
    ] {
        let conn = connect(&config(addr, user, password, "harness-login"))
            .await
            .unwrap_or_else(|e| panic!("{user}: {e:?}"));
        let current_user: String = scalar(&conn, "SELECT current_user::text").await;
        assert_eq!(current_user, user);
    }
    let wrong = connect(&config(addr, MD5_USER, Some("wrong"), "harness-login")).await;
    assert_eq!(wrong.unwrap_err().code().map(|c| c.code()), Some("28P01"));
}

#[tokio::test]
async fn observer_sees_sessions_end() {
    let admin = direct_admin().await;
    let (mut raw, _) = RawClient::startup(pg().addr(), SUPERUSER, "harness-raw").await;
    assert_eq!(backends_named(&admin, "harness-raw").await, 1);
    raw.send(&veneer_tests::raw::terminate()).await;
    wait_backend_gone(&admin, "harness-raw", STEP_TIMEOUT).await;
}

#[tokio::test]
async fn psql_runs_directly() {
    let out = PgTool::psql(pg().addr(), SUPERUSER)
        .args(["-A", "-t"])
        .command("SELECT 40 + 2")
        .run()
        .await;
    out.assert_success("psql");
    assert_eq!(out.stdout.trim(), "42");
}
