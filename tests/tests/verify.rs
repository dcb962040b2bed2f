//! Continuous verification (`verify_sample`): sampled hits are asked again upstream, as the client's
//! role with its settings, and compared with what was served. Fresh hits are confirmed in every
//! driver style; an answer the cache cannot know is stale (here: with replication off, a write made
//! elsewhere) is caught and counted.

use std::time::Duration;

use veneer_config::Replication;
use veneer_tests::cache::{figure, first, run_direct, status, wait_cache_ready};
use veneer_tests::raw::{self, RawClient};
use veneer_tests::*;

/// Waits until the proxy `client` is connected to has checked `n` hits in all.
async fn wait_verified(client: &tokio_postgres::Client, n: u64) {
    let done = wait_for(Duration::from_secs(20), || async {
        figure(client, "verified").await >= n
    })
    .await;
    assert!(
        done,
        "fewer than {n} hits verified: {:?}",
        status(client).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_hits_are_confirmed_in_every_style_and_role() {
    run_direct(&format!(
        "CREATE TABLE verify_items (id int PRIMARY KEY, v text, at timestamptz);
         INSERT INTO verify_items SELECT g, 'v' || g, '2024-01-01 12:00+00' FROM generate_series(1, 20) g;
         GRANT SELECT ON verify_items TO {TRUST_USER};"
    ))
    .await;
    let proxy = ProxyHandle::start_with(|s| s.verify_sample = Some(1.0)).await;
    wait_cache_ready(proxy.addr()).await;
    let client = connect_as(proxy.addr(), "verify-simple").await;
    // Simple protocol, ordered and not, with a setting of the session's own.
    client
        .batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    for sql in [
        "SELECT v, at FROM verify_items WHERE id = 3",
        "SELECT v FROM verify_items WHERE id < 10",
        "SELECT v FROM verify_items ORDER BY id DESC",
    ] {
        first(&client, sql).await;
        first(&client, sql).await;
    }
    // Another role, through the extended protocol with an unnamed statement and a named one.
    let (mut raw_client, _) = RawClient::startup(proxy.addr(), TRUST_USER, "verify-raw").await;
    let mut unnamed = raw::parse("", "SELECT v FROM verify_items WHERE id = $1");
    unnamed.extend(raw::bind("", "", &[Some(b"5")], 0));
    unnamed.extend(raw::execute(""));
    unnamed.extend(raw::sync());
    let mut prepare = raw::parse("named", "SELECT v FROM verify_items WHERE id = $1");
    prepare.extend(raw::sync());
    raw_client.send(&prepare).await;
    raw_client.read_until_ready().await;
    let mut named = raw::bind("", "named", &[Some(b"6")], 0);
    named.extend(raw::execute(""));
    named.extend(raw::sync());
    for request in [&unnamed, &unnamed, &named, &named] {
        raw_client.send(request).await;
        raw_client.read_until_ready().await;
    }
    let hits = figure(&client, "hits").await;
    assert!(hits >= 5, "{:?}", status(&client).await);
    wait_verified(&client, hits).await;
    assert_eq!(figure(&client, "verify_mismatches").await, 0);
    assert_eq!(
        figure(&client, "verify_skipped").await,
        0,
        "{:?}",
        status(&client).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_cache_cannot_know_is_stale_is_caught() {
    run_direct(
        "CREATE TABLE verify_unseen (id int PRIMARY KEY, v text); INSERT INTO verify_unseen VALUES (1, 'old');",
    )
    .await;
    // Without the replication stream a write made elsewhere is not seen (results live to their TTL).
    let proxy = ProxyHandle::start_with(|s| {
        s.verify_sample = Some(1.0);
        s.replication = Some(Replication::Off);
    })
    .await;
    wait_cache_ready(proxy.addr()).await;
    let client = connect_as(proxy.addr(), "verify-unseen").await;
    let sql = "SELECT v FROM verify_unseen WHERE id = 1";
    first(&client, sql).await;
    assert_eq!(first(&client, sql).await.as_deref(), Some("old"));
    wait_verified(&client, 1).await;
    assert_eq!(figure(&client, "verify_mismatches").await, 0);
    run_direct("UPDATE verify_unseen SET v = 'new' WHERE id = 1").await;
    assert_eq!(
        first(&client, sql).await.as_deref(),
        Some("old"),
        "the write was seen after all: this test needs a stale hit"
    );
    wait_verified(&client, 2).await;
    assert_eq!(figure(&client, "verify_mismatches").await, 1);
}
