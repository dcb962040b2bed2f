//! Bad client input on raw sockets: truncated, undersized, oversized and unknown messages, garbage
//! instead of a startup packet, and clients that vanish mid-COPY or mid-result. In every case only the
//! offending session ends — with ErrorResponse 08P01 where the client can still be told — the proxy
//! stays up, a bystander session keeps working, the upstream backend is released (watched in
//! `pg_stat_activity`), and no proxy task panics.

use std::time::Duration;

use veneer_tests::raw::{self, Message, RawClient};
use veneer_tests::*;

const MAX_MESSAGE: usize = 1 << 20;

async fn start_proxy() -> ProxyHandle {
    ProxyHandle::start_with(|s| s.max_message_bytes = Some(MAX_MESSAGE)).await
}

/// A session opened before the bad one, which must be unaffected by it.
async fn bystander(proxy: &ProxyHandle, name: &str) -> Conn {
    let conn = connect_as(proxy.addr(), name).await;
    assert_eq!(scalar::<i32>(&conn, "SELECT 1").await, 1);
    conn
}

async fn assert_still_serving(proxy: &ProxyHandle, bystander: &Conn) {
    let row = within(
        "bystander query",
        bystander.query_one("SELECT 'alive'::text", &[]),
    )
    .await
    .expect("the bystander session was disturbed");
    assert_eq!(row.get::<_, String>(0), "alive");
    let fresh = connect_as(proxy.addr(), "bad-fresh").await;
    assert_eq!(scalar::<i32>(&fresh, "SELECT 2").await, 2);
    assert_eq!(worker_panics(), 0, "a proxy task panicked on client input");
}

/// Reads until the proxy closes the connection and checks that everything it sent was an
/// ErrorResponse with one of `codes`; returns the errors.
async fn closed_with(client: &mut RawClient, codes: &[&str]) -> Vec<raw::ErrorFields> {
    let (messages, end) = within("the proxy to close the session", client.read_to_end()).await;
    if let Err(e) = &end {
        // A reset is a close too (the proxy may close with unread input); anything else is not.
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "{e} after {messages:?}"
        );
    }
    let errors: Vec<raw::ErrorFields> = messages.iter().filter_map(Message::error_fields).collect();
    assert_eq!(
        errors.len(),
        messages.len(),
        "only ErrorResponses expected: {messages:?}"
    );
    for error in &errors {
        assert!(codes.contains(&error.code()), "unexpected error {error:?}");
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_message_then_disconnect() {
    let proxy = start_proxy().await;
    let observer = direct_admin().await;
    let other = bystander(&proxy, "bad-truncated-bystander").await;
    let (mut client, _) = RawClient::startup(proxy.addr(), SUPERUSER, "bad-truncated").await;
    assert_eq!(backends_named(&observer, "bad-truncated").await, 1);
    let mut truncated = raw::query("SELECT 'this message is cut short'");
    truncated.truncate(12);
    client.send(&truncated).await;
    client.shutdown_write().await;
    closed_with(&mut client, &["08P01"]).await;
    drop(client);
    wait_backend_gone(&observer, "bad-truncated", STEP_TIMEOUT).await;
    assert_still_serving(&proxy, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_field_below_four() {
    let proxy = start_proxy().await;
    let observer = direct_admin().await;
    let other = bystander(&proxy, "bad-short-bystander").await;
    let (mut client, _) = RawClient::startup(proxy.addr(), SUPERUSER, "bad-short").await;
    client.send(&[b'Q', 0, 0, 0, 2]).await;
    let errors = closed_with(&mut client, &["08P01"]).await;
    assert_eq!(errors.len(), 1, "the client must be told: {errors:?}");
    wait_backend_gone(&observer, "bad-short", STEP_TIMEOUT).await;
    assert_still_serving(&proxy, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_refused_from_its_header() {
    let proxy = start_proxy().await;
    let observer = direct_admin().await;
    let other = bystander(&proxy, "bad-oversized-bystander").await;

    // Just under the limit is served.
    let (mut client, _) = RawClient::startup(proxy.addr(), SUPERUSER, "bad-near-limit").await;
    let sql = format!("SELECT length('{}')", "y".repeat(MAX_MESSAGE - 1000));
    let reply = client.query(&sql).await;
    assert!(reply.iter().any(|m| m.tag() == b'D'), "{reply:?}");
    client.send(&raw::terminate()).await;

    // Over the limit: only the header is sent, so the proxy must decide without the body.
    let (mut client, _) = RawClient::startup(proxy.addr(), SUPERUSER, "bad-oversized").await;
    let mut header = vec![b'Q'];
    header.extend(((2 * MAX_MESSAGE) as i32 + 4).to_be_bytes());
    client.send(&header).await;
    let errors = within_for(
        Duration::from_secs(5),
        "the refusal of an oversized message",
        async { closed_with(&mut client, &["08P01"]).await },
    )
    .await;
    assert_eq!(errors.len(), 1, "the client must be told: {errors:?}");
    wait_backend_gone(&observer, "bad-oversized", STEP_TIMEOUT).await;
    assert_still_serving(&proxy, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_type_gets_the_servers_answer() {
    // The proxy forwards message types it does not know; the server refuses this one with 08P01
    // and ends the session.
    let proxy = start_proxy().await;
    let observer = direct_admin().await;
    let other = bystander(&proxy, "bad-unknown-bystander").await;
    let (mut client, _) = RawClient::startup(proxy.addr(), SUPERUSER, "bad-unknown").await;
    client.send(&raw::message(b'y', b"mystery")).await;
    let errors = closed_with(&mut client, &["08P01"]).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message().contains("121"), "{errors:?}");
    wait_backend_gone(&observer, "bad-unknown", STEP_TIMEOUT).await;
    assert_still_serving(&proxy, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_startup() {
    let proxy = start_proxy().await;
    let other = bystander(&proxy, "bad-garbage-bystander").await;
    let mut bogus_version = Vec::new();
    bogus_version.extend(16i32.to_be_bytes());
    bogus_version.extend(0x1234_5678i32.to_be_bytes());
    bogus_version.extend(b"garbage!");
    let cases: [(&str, Vec<u8>); 5] = [
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        (
            "random bytes",
            (0..200u32).map(|i| (i * 37 % 251) as u8).collect(),
        ),
        ("a length below 8", vec![0, 0, 0, 3, 1, 2, 3]),
        ("an unknown protocol version", bogus_version),
        (
            "a negative length",
            vec![0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0],
        ),
    ];
    for (what, bytes) in cases {
        let mut client = RawClient::connect(proxy.addr()).await;
        // The proxy may close before reading all of it; a failed write is part of that.
        let _ = client.try_send(&bytes).await;
        client.shutdown_write().await;
        // 0A000 is the server's answer to an unsupported protocol version, should the proxy relay it.
        let (messages, end) = within(what, client.read_to_end()).await;
        if let Err(e) = &end {
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "{what}: {e} after {messages:?}"
            );
        }
        for message in &messages {
            let error = message
                .error_fields()
                .unwrap_or_else(|| panic!("{what}: the proxy sent {message:?}"));
            assert!(
                ["08P01", "0A000"].contains(&error.code()),
                "{what}: {error:?}"
            );
        }
    }
    // A client that connects and closes without a word.
    drop(RawClient::connect(proxy.addr()).await);
    assert_still_serving(&proxy, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishes_during_copy_from_stdin() {
    let proxy = start_proxy().await;
    let observer = direct_admin().await;
    observer
        .batch_execute(
            "DROP TABLE IF EXISTS bad_copy_target; CREATE TABLE bad_copy_target (id int, t text)",
        )
        .await
        .unwrap();
    let other = bystander(&proxy, "bad-copy-bystander").await;
    let (mut client, _) = RawClient::startup(proxy.addr(), SUPERUSER, "bad-copy").await;
    client
        .send(&raw::query("COPY bad_copy_target FROM STDIN"))
        .await;
    let response = client.expect_message().await;
    assert_eq!(
        response.tag(),
        b'G',
        "expected CopyInResponse, got {response:?}"
    );
    for i in 0..100 {
        client
            .send(&raw::copy_data(format!("{i}\trow {i}\n").as_bytes()))
            .await;
    }
    // Half a CopyData, then gone: no CopyDone, no CopyFail, no Terminate.
    client
        .send(&raw::copy_data(b"100\tunfinished row\n")[..8])
        .await;
    drop(client);
    wait_backend_gone(&observer, "bad-copy", STEP_TIMEOUT).await;
    let count: i64 = scalar(&observer, "SELECT count(*) FROM bad_copy_target").await;
    assert_eq!(count, 0, "an unfinished COPY must not commit rows");
    observer
        .batch_execute("DROP TABLE bad_copy_target")
        .await
        .unwrap();
    assert_still_serving(&proxy, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishes_during_a_large_result() {
    let proxy = start_proxy().await;
    let observer = direct_admin().await;
    let other = bystander(&proxy, "bad-result-bystander").await;
    let (mut client, _) = RawClient::startup(proxy.addr(), SUPERUSER, "bad-result").await;
    // About 400 MB if it were all read: the backend is still producing it when the client leaves.
    client
        .send(&raw::query(
            "SELECT repeat('z', 4000) FROM generate_series(1, 100000)",
        ))
        .await;
    let first = client.expect_message().await;
    assert_eq!(first.tag(), b'T', "{first:?}");
    for _ in 0..10 {
        assert_eq!(client.expect_message().await.tag(), b'D');
    }
    drop(client);
    wait_backend_gone(&observer, "bad-result", STEP_TIMEOUT).await;
    assert_still_serving(&proxy, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishes_inside_a_transaction() {
    let proxy = start_proxy().await;
    let observer = direct_admin().await;
    observer
        .batch_execute("DROP TABLE IF EXISTS bad_tx_target; CREATE TABLE bad_tx_target (id int)")
        .await
        .unwrap();
    let (mut client, _) = RawClient::startup(proxy.addr(), SUPERUSER, "bad-tx").await;
    let reply = client
        .query("BEGIN; INSERT INTO bad_tx_target VALUES (1)")
        .await;
    assert_eq!(
        reply.last().map(|m| m.body().to_vec()),
        Some(b"T".to_vec()),
        "{reply:?}"
    );
    drop(client);
    wait_backend_gone(&observer, "bad-tx", STEP_TIMEOUT).await;
    let count: i64 = scalar(&observer, "SELECT count(*) FROM bad_tx_target").await;
    assert_eq!(count, 0, "an abandoned transaction must roll back");
    observer
        .batch_execute("DROP TABLE bad_tx_target")
        .await
        .unwrap();
}
