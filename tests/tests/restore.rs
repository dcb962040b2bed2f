//! A server restored to an earlier state under a running Veneer (a file-system snapshot put back, as
//! a cloud volume restore does) must not have Veneer serve results newer than the restored data. With
//! a permanent slot the stream resumes from the slot as the snapshot kept it; the server's WAL then
//! ends before what Veneer had applied, which tells Veneer that what it cached may never have
//! happened. A test binary of its own: it stops and restarts the server.

use std::process::Command;

use veneer_tests::cache::{first, on, own_database_with, wait_database_cached};
use veneer_tests::*;

/// `cp -a`, which keeps the server user's ownership and modes.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restored_to_an_earlier_state_serves_nothing_newer() {
    let direct = own_database_with(
        "restored",
        "CREATE TABLE acct (id int PRIMARY KEY, v int); INSERT INTO acct VALUES (1, 1);
             CREATE TABLE filler (n int);
             CHECKPOINT;",
    )
    .await;
    drop(direct);
    // A shared tier, which outlives the restore: a proxy started afterwards must not take what it
    // holds (results and generations of the lost history) for the server's.
    let node = veneer_tests::tier::RespServer::cache_node(&[]).await;
    let on_tier = |s: &mut veneer_config::Settings| {
        s.cache_tier = Some(veneer_config::CacheTier::Nodes);
        s.cache_nodes = vec![node.address()];
        s.cache_secret = Some("a fleet secret for the tests".to_owned());
        s.cache_tier_timeout = Some(veneer_config::Millis(std::time::Duration::from_millis(200)));
    };
    let proxy = ProxyHandle::start_with(|s| {
        s.replication_slot = Some("rs".to_owned());
        on_tier(s);
    })
    .await;
    let client = connect(&on(proxy.addr(), "restored")).await.unwrap();
    wait_database_cached(&client, "restored").await;
    drop(client);

    let snapshot = TempDir::new("snapshot");
    let saved = snapshot.path().join("data");
    pg().restart_with(|data| copy_dir(data, &saved));

    // After the snapshot: a write, followed and cached.
    let client = connect(&on(proxy.addr(), "restored")).await.unwrap();
    wait_database_cached(&client, "restored").await;
    let direct = connect(&on(pg().addr(), "restored")).await.unwrap();
    let read = "SELECT v FROM acct WHERE id = 1";
    let scaled = "SELECT v * 10 FROM acct WHERE id = 1";
    direct
        // With much WAL in the same transaction: the restored server's WAL then ends well before
        // this commit, so positions up to it are handed out again after the restore.
        .batch_execute(
            "SET synchronous_commit = on; BEGIN; UPDATE acct SET v = 2 WHERE id = 1;
             INSERT INTO filler SELECT generate_series(1, 200000); COMMIT",
        )
        .await
        .unwrap();
    // Once the stream has applied it, reads are stored under the write's position: the stamp a
    // proxy that takes in the fleet's generations computes too.
    veneer_tests::cache::wait_applied_all(&direct, &client, "restored").await;
    assert_eq!(first(&client, read).await.as_deref(), Some("2"));
    // The tier's generations snapshot covers that write.
    let covered = wait_for(std::time::Duration::from_secs(10), || {
        veneer_tests::cache::snapshot_covers_applied(&client, "restored")
    })
    .await;
    assert!(covered, "{:?}", veneer_tests::cache::status(&client).await);
    // Another read of the row, stored under the write's position too. It is one that a later
    // proxy's first read of the table (which goes upstream to check privileges, and stores its
    // answer under the same key) leaves in place.
    assert_eq!(first(&client, scaled).await.as_deref(), Some("20"));
    drop((client, direct));

    // The snapshot put back: the row is 1 again, and the slot is where the snapshot left it.
    pg().restart_with(|data| {
        std::fs::remove_dir_all(data).expect("remove the data directory");
        copy_dir(&saved, data);
    });
    let client = connect(&on(proxy.addr(), "restored")).await.unwrap();
    wait_database_cached(&client, "restored").await;
    assert_eq!(
        first(&client, read).await.as_deref(),
        Some("1"),
        "a result newer than the restored server was served"
    );
    // A proxy started after the restore, on the same tier. Its reads come from a session that
    // starts once the proxy has read the role's settings (a session that starts before has a
    // scope of its own, which would never meet the first proxy's results whatever the stamps).
    let later = ProxyHandle::start_with(on_tier).await;
    let first_session = connect(&on(later.addr(), "restored")).await.unwrap();
    wait_database_cached(&first_session, "restored").await;
    let client = connect(&on(later.addr(), "restored")).await.unwrap();
    // Once it has settled with the tier's generations (taken them in, or published its own).
    let settled = wait_for(std::time::Duration::from_secs(10), || async {
        let row = veneer_tests::cache::status(&client).await["fleet restored"].clone();
        !row.contains("in a snapshot in the tier up to 0/0;")
    })
    .await;
    assert!(settled, "{:?}", veneer_tests::cache::status(&client).await);
    // Once it serves reads of the table from the cache (its privileges are checked: until then a
    // read goes upstream and stores its answer, which would replace a result of the lost history
    // under the same key), with a read nobody made before the restore.
    let serving = wait_for(std::time::Duration::from_secs(10), || {
        veneer_tests::privileges::hit(&client, &client, "SELECT v + 0 FROM acct WHERE id = 1")
    })
    .await;
    assert!(serving, "{:?}", veneer_tests::cache::status(&client).await);
    for (sql, now) in [(scaled, "10"), (read, "1"), (scaled, "10"), (read, "1")] {
        assert_eq!(
            first(&client, sql).await.as_deref(),
            Some(now),
            "a proxy started after the restore served a result of the lost history: {sql}"
        );
    }
}
