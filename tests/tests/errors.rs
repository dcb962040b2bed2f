//! Errors a user sees from the proxy itself: an unreachable upstream (08001, naming the address, never
//! a silent close), too many clients (53300), and an upstream that ends a session (its own FATAL
//! reaches the client).

use tokio_postgres::error::SqlState;
use veneer_config::HostPort;
use veneer_tests::client::config;
use veneer_tests::raw::{self, RawClient};
use veneer_tests::tools::PgTool;
use veneer_tests::*;

/// A local port with nothing listening on it.
fn closed_port() -> u16 {
    free_port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_reported_with_its_address() {
    let port = closed_port();
    let proxy =
        ProxyHandle::start_with(|s| s.upstream = Some(HostPort::new("127.0.0.1", port))).await;
    let upstream = format!("127.0.0.1:{port}");

    let err = connect(&config(proxy.addr(), SUPERUSER, None, "errors-unreachable"))
        .await
        .expect_err("the upstream is down");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got {err:?}"));
    assert_eq!(
        db.code(),
        &SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
        "{db:?}"
    );
    assert!(
        db.message().contains(&upstream),
        "the message must name {upstream}: {db:?}"
    );

    // psql shows the same.
    let out = PgTool::psql(proxy.addr(), SUPERUSER)
        .command("SELECT 1")
        .run()
        .await;
    assert!(!out.status.success());
    assert!(out.stderr.contains(&upstream), "{out:?}");

    // The proxy is still up and keeps answering.
    let err = connect(&config(proxy.addr(), SUPERUSER, None, "errors-unreachable"))
        .await
        .expect_err("the upstream is still down");
    assert_eq!(
        err.code(),
        Some(&SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION)
    );
    proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_client_connections_gets_53300() {
    let proxy = ProxyHandle::start_with(|s| s.max_client_connections = Some(2)).await;
    let observer = direct_admin().await;
    let first = connect_as(proxy.addr(), "errors-limit-held").await;
    let second = connect_as(proxy.addr(), "errors-limit-held").await;

    let err = connect(&config(proxy.addr(), SUPERUSER, None, "errors-limit-third"))
        .await
        .expect_err("a third session is over the limit");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(db.code(), &SqlState::TOO_MANY_CONNECTIONS, "{db:?}");
    assert_eq!(db.severity(), "FATAL");
    // The refused client never reached the server.
    assert_eq!(backends_named(&observer, "errors-limit-third").await, 0);
    // The two held sessions are unaffected.
    for conn in [&first, &second] {
        assert_eq!(scalar::<i32>(conn, "SELECT 1").await, 1);
    }

    // A freed slot is usable again once the proxy has seen the session end.
    drop(first);
    let admitted = wait_for(STEP_TIMEOUT, || async {
        match connect(&config(proxy.addr(), SUPERUSER, None, "errors-limit-again")).await {
            Ok(conn) => conn.query_one("SELECT 1", &[]).await.is_ok(),
            Err(e) => {
                assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e:?}");
                false
            }
        }
    })
    .await;
    assert!(
        admitted,
        "the slot of a closed session was never given back"
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_ending_a_session_reaches_the_client() {
    let proxy = ProxyHandle::start().await;
    let observer = direct_admin().await;
    let (mut client, _) = RawClient::startup(proxy.addr(), SUPERUSER, "errors-terminated").await;
    let row = observer
        .query_one(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'errors-terminated'",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    let (messages, _) = within("the session to end", client.read_to_end()).await;
    let error = raw::first_error(&messages);
    assert_eq!(
        (error.severity(), error.code()),
        ("FATAL", "57P01"),
        "{messages:?}"
    );
    assert!(
        error.message().contains("administrator command"),
        "{error:?}"
    );
    // The proxy serves new sessions as before.
    let conn = connect_as(proxy.addr(), "errors-after-terminate").await;
    assert_eq!(scalar::<i32>(&conn, "SELECT 1").await, 1);
}
