//! Graceful shutdown: idle sessions end at once with FATAL 57P01, busy ones may finish (a transaction
//! can still COMMIT) until the drain time runs out, then they end with 57P01 too — in-process through
//! `Proxy::run`'s shutdown future, and once through the `veneer` binary with SIGTERM and SIGINT.

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use veneer_config::Millis;
use veneer_tests::binary::VeneerProcess;
use veneer_tests::client::config;
use veneer_tests::raw::{self, ErrorFields, RawClient};
use veneer_tests::*;

/// Reads until the proxy closes the session and returns the FATAL it sent, checking it is 57P01.
async fn ended_by_shutdown(client: &mut RawClient, what: &str) -> ErrorFields {
    let (messages, end) = within(what, client.read_to_end()).await;
    end.unwrap_or_else(|e| panic!("{what}: {e} after {messages:?}"));
    let error = raw::first_error(&messages);
    assert_eq!(
        (error.severity(), error.code()),
        ("FATAL", "57P01"),
        "{what}: {messages:?}"
    );
    assert_eq!(
        messages.last().map(raw::Message::tag),
        Some(b'E'),
        "{what}: the FATAL must be the last message: {messages:?}"
    );
    error
}

fn status_of(messages: &[raw::Message]) -> Option<u8> {
    messages
        .iter()
        .rev()
        .find(|m| m.tag() == b'Z')
        .map(|m| m.body()[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_end_at_once_with_57p01() {
    // A long drain: idle sessions must not wait for it.
    let mut proxy =
        ProxyHandle::start_with(|s| s.shutdown_drain = Some(Millis(Duration::from_secs(60)))).await;
    let observer = direct_admin().await;
    let (mut raw_client, _) =
        RawClient::startup(proxy.addr(), SUPERUSER, "shutdown-idle-raw").await;
    let driver = connect_as(proxy.addr(), "shutdown-idle-driver").await;
    // A simple query, so nothing is in flight afterwards: query_one would leave the Close of its
    // prepared statement racing the shutdown, and a FATAL that answers that Close is consumed by
    // tokio-postgres as the Close's reply, not reported on the connection.
    driver.batch_execute("SELECT 1").await.unwrap();

    let started = Instant::now();
    proxy.begin_shutdown();
    let error = ended_by_shutdown(&mut raw_client, "idle raw session").await;
    assert!(
        error.message().contains("terminating connection"),
        "{error:?}"
    );
    // tokio-postgres sees the FATAL on its connection task, as it would from a server shutting down.
    let ended = driver
        .closed()
        .await
        .expect_err("the driver's connection was ended by the proxy");
    assert_eq!(ended.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{ended:?}");

    within_for(Duration::from_secs(10), "run() to return", proxy.shutdown())
        .await
        .expect("clean shutdown");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "idle sessions waited for the drain: {:?}",
        started.elapsed()
    );
    wait_backend_gone(&observer, "shutdown-idle-raw", STEP_TIMEOUT).await;
    wait_backend_gone(&observer, "shutdown-idle-driver", STEP_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transaction_can_commit_during_the_drain() {
    let mut proxy =
        ProxyHandle::start_with(|s| s.shutdown_drain = Some(Millis(Duration::from_secs(60)))).await;
    let observer = direct_admin().await;
    observer
        .batch_execute("DROP TABLE IF EXISTS drain_target; CREATE TABLE drain_target (id int)")
        .await
        .unwrap();
    let (mut busy, _) = RawClient::startup(proxy.addr(), SUPERUSER, "shutdown-busy").await;
    let (mut idle, _) = RawClient::startup(proxy.addr(), SUPERUSER, "shutdown-bystander").await;
    let reply = busy
        .query("BEGIN; INSERT INTO drain_target VALUES (1)")
        .await;
    assert_eq!(status_of(&reply), Some(b'T'), "{reply:?}");

    proxy.begin_shutdown();
    // The idle session ending shows the drain has begun.
    ended_by_shutdown(&mut idle, "idle session").await;
    // New clients are no longer served.
    let refused = connect(&config(proxy.addr(), SUPERUSER, None, "shutdown-late")).await;
    assert!(
        refused.is_err(),
        "a new session was accepted during the drain"
    );

    // The transaction goes on and commits; then its session is closed.
    let reply = busy.query("INSERT INTO drain_target VALUES (2)").await;
    assert_eq!(status_of(&reply), Some(b'T'), "{reply:?}");
    let reply = busy.query("COMMIT").await;
    let tag = reply
        .iter()
        .find(|m| m.tag() == b'C')
        .map(|m| m.body().to_vec());
    assert_eq!(tag, Some(b"COMMIT\0".to_vec()), "{reply:?}");
    assert_eq!(status_of(&reply), Some(b'I'));
    ended_by_shutdown(&mut busy, "session after its COMMIT").await;
    within_for(Duration::from_secs(10), "run() to return", proxy.shutdown())
        .await
        .expect("clean shutdown");

    let count: i64 = scalar(&observer, "SELECT count(*) FROM drain_target").await;
    assert_eq!(count, 2, "the transaction committed during the drain");
    observer
        .batch_execute("DROP TABLE drain_target")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_session_ends_at_the_drain_deadline() {
    let drain = Duration::from_millis(1500);
    let mut proxy = ProxyHandle::start_with(|s| s.shutdown_drain = Some(Millis(drain))).await;
    let observer = direct_admin().await;
    let (mut busy, _) = RawClient::startup(proxy.addr(), SUPERUSER, "shutdown-deadline").await;
    busy.send(&raw::query("SELECT pg_sleep(30)")).await;
    wait_backend_active(&observer, "shutdown-deadline", "pg_sleep").await;

    let started = Instant::now();
    proxy.begin_shutdown();
    ended_by_shutdown(&mut busy, "session busy in pg_sleep").await;
    let waited = started.elapsed();
    assert!(
        waited >= drain - Duration::from_millis(100),
        "cut before the deadline: {waited:?}"
    );
    assert!(
        waited < drain + Duration::from_secs(5),
        "cut long after the deadline: {waited:?}"
    );
    within_for(Duration::from_secs(10), "run() to return", proxy.shutdown())
        .await
        .expect("clean shutdown");
    // The upstream backend must not go on running the statement of a session declared terminated.
    wait_backend_gone(&observer, "shutdown-deadline", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_cut_at_the_deadline_does_not_commit() {
    // A client told 57P01 believes its statement was terminated; it must not commit afterwards.
    let drain = Duration::from_millis(500);
    let mut proxy = ProxyHandle::start_with(|s| s.shutdown_drain = Some(Millis(drain))).await;
    let observer = direct_admin().await;
    observer
        .batch_execute("DROP TABLE IF EXISTS cut_target; CREATE TABLE cut_target (id int)")
        .await
        .unwrap();
    let (mut busy, _) = RawClient::startup(proxy.addr(), SUPERUSER, "shutdown-cut").await;
    busy.send(&raw::query(
        "INSERT INTO cut_target SELECT 1 FROM pg_sleep(4)",
    ))
    .await;
    wait_backend_active(&observer, "shutdown-cut", "pg_sleep").await;
    proxy.begin_shutdown();
    ended_by_shutdown(&mut busy, "session busy in an INSERT").await;
    within_for(Duration::from_secs(10), "run() to return", proxy.shutdown())
        .await
        .expect("clean shutdown");
    wait_backend_gone(&observer, "shutdown-cut", STEP_TIMEOUT).await;
    let count: i64 = scalar(&observer, "SELECT count(*) FROM cut_target").await;
    assert_eq!(
        count, 0,
        "the INSERT of a session ended with 57P01 committed after the proxy said it was terminated"
    );
    observer
        .batch_execute("DROP TABLE cut_target")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_sessions_is_prompt() {
    let proxy = ProxyHandle::start().await;
    let addr = proxy.addr();
    let started = Instant::now();
    within_for(Duration::from_secs(5), "run() to return", proxy.shutdown())
        .await
        .expect("clean shutdown");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is still open after run() returned"
    );
}

/// The binary: SIGTERM and SIGINT each start the same drain; the process exits 0 when it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_drains_on_sigterm_and_sigint() {
    for signal in ["TERM", "INT"] {
        let mut veneer = VeneerProcess::start(&["--shutdown-drain", "10s"]).await;
        let app = format!("shutdown-binary-{signal}");
        let (mut idle, _) = RawClient::startup(veneer.addr(), TRUST_USER, &app).await;
        let reply = idle.query("SELECT 1").await;
        assert_eq!(status_of(&reply), Some(b'I'));
        veneer.signal(signal).await;
        let error = ended_by_shutdown(&mut idle, &format!("idle session at SIG{signal}")).await;
        assert!(
            error.message().contains("terminating connection"),
            "{error:?}"
        );
        let status = veneer.wait_exit(Duration::from_secs(10)).await;
        assert!(
            status.success(),
            "veneer exited with {status} after SIG{signal}; output:\n{}",
            veneer.output()
        );
    }
}
