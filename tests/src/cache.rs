//! Looking at the proxy's cache from a test: its `SHOW VENEER STATUS` figures, and waiting until the
//! cache is ready for a database (its catalog has been read, so cacheable reads are cached).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::client::{connect, connect_as, direct_admin, wait_for, Conn};

/// The rows of `SHOW VENEER STATUS`, by name.
pub async fn status(client: &Client) -> HashMap<String, String> {
    let messages = client
        .simple_query("SHOW VENEER STATUS")
        .await
        .unwrap_or_else(|e| panic!("SHOW VENEER STATUS: {e:?}"));
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some((
                row.get(0).unwrap_or_default().to_owned(),
                row.get(1).unwrap_or_default().to_owned(),
            )),
            _ => None,
        })
        .collect()
}

/// One numeric figure of the status (hits, misses, upstream_messages, bytes, ...).
pub async fn figure(client: &Client, name: &str) -> u64 {
    let status = status(client).await;
    status
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {status:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{name} in {status:?}: {e}"))
}

/// Waits until the proxy at `addr` caches reads of the test database: its first session starts the
/// catalog read and the replication stream, which must both be up before reads are cached.
pub async fn wait_cache_ready(addr: SocketAddr) {
    let client = connect_as(addr, "veneer-tests-cache-ready").await;
    wait_database_cached(&client, crate::DATABASE).await;
}

/// Waits until the proxy `client` is connected to caches reads of `database` (a session on that
/// database must have started it).
pub async fn wait_database_cached(client: &Client, database: &str) {
    let key = format!("database {database}");
    let ready = wait_for(Duration::from_secs(20), || async {
        status(client)
            .await
            .get(&key)
            .is_some_and(|s| s.starts_with("cached"))
    })
    .await;
    assert!(
        ready,
        "the cache never became ready: {:?}",
        status(client).await
    );
}

/// Runs `sql` on a direct superuser session (test set-up, or a write the proxy does not see).
pub async fn run_direct(sql: &str) {
    crate::direct_admin()
        .await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// The first column of every row `sql` returns, as text (simple protocol).
pub async fn column(client: &Client, sql: &str) -> Vec<Option<String>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
            _ => None,
        })
        .collect()
}

/// The first column of the first row `sql` returns (simple protocol).
pub async fn first(client: &Client, sql: &str) -> Option<String> {
    column(client, sql).await.into_iter().next().flatten()
}

/// Reads `sql` through `client` until it returns `expected`; returns how long that took.
pub async fn until_seen(client: &Client, sql: &str, expected: &str) -> Duration {
    let started = Instant::now();
    let seen = wait_for(Duration::from_secs(20), || async {
        first(client, sql).await.as_deref() == Some(expected)
    })
    .await;
    assert!(
        seen,
        "{sql} never returned {expected}: {:?}",
        first(client, sql).await
    );
    started.elapsed()
}

/// Creates database `name` and returns a superuser session on it, straight to the server. Postgres
/// refuses to copy template1 while another session is connected to it (`veneer setup` and
/// `uninstall` visit it), so a refusal for that reason is retried.
pub async fn own_database(name: &str) -> Conn {
    let admin = direct_admin().await;
    let sql = format!("CREATE DATABASE {name}");
    let created = wait_for(Duration::from_secs(20), || async {
        match admin.batch_execute(&sql).await {
            Ok(()) => true,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => false,
            Err(e) => panic!("{sql}: {e:?}"),
        }
    })
    .await;
    assert!(created, "{sql}: template1 stayed in use for 20 s");
    connect(&on(crate::pg().addr(), name))
        .await
        .unwrap_or_else(|e| panic!("connect to {name}: {e:?}"))
}

/// [`own_database`], then `setup` run on it (its tables, its rows).
pub async fn own_database_with(name: &str, setup: &str) -> Conn {
    let direct = own_database(name).await;
    direct
        .batch_execute(setup)
        .await
        .unwrap_or_else(|e| panic!("set-up of {name}: {e:?}"));
    direct
}

/// A superuser connection configuration for database `name` at `addr`.
pub fn on(addr: SocketAddr, name: &str) -> tokio_postgres::Config {
    let mut config = crate::client::config(addr, crate::SUPERUSER, None, "veneer-tests");
    config.dbname(name);
    config
}

/// How many transactions the proxy's replication stream of `database` has applied.
pub async fn applied(client: &Client, database: &str) -> u64 {
    let status = status(client).await;
    status
        .get(&format!("replication {database}"))
        .and_then(|row| row.split(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs the write `sql` on `direct` (a session straight to the server, not through the proxy) and
/// returns once the proxy's stream of `database` has applied it: from then on no read through the
/// proxy may miss it.
pub async fn write_applied(direct: &Client, client: &Client, database: &str, sql: &str) {
    let before = applied(client, database).await;
    direct
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let seen = wait_for(Duration::from_secs(20), || async {
        applied(client, database).await > before
    })
    .await;
    assert!(
        seen,
        "the stream never applied {sql}: {:?}",
        status(client).await
    );
}

/// Ends the proxy's replication stream of `database` from the server's side (`direct`, a superuser
/// session straight to it) and returns once the proxy `client` is connected to has noticed (it counts
/// the failure; it may have started again already, since the first retry is immediate).
pub async fn lose_stream(direct: &Client, client: &Client, database: &str) {
    let before = stream_failures(client, database).await;
    let killed: i64 = crate::client::scalar(
        direct,
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE backend_type = 'walsender' AND datname = '{database}'"
        ),
    )
    .await;
    assert!(killed >= 1, "no walsender of the proxy found");
    let noticed = wait_for(Duration::from_secs(20), || async {
        stream_failures(client, database).await > before
    })
    .await;
    assert!(noticed, "the proxy did not notice the lost stream");
}

/// How many times the proxy's stream of `database` failed, from its status line.
pub async fn stream_failures(client: &Client, database: &str) -> u64 {
    let status = status(client).await;
    status
        .get(&format!("replication {database}"))
        .and_then(|row| {
            row.strip_suffix(" failures")?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Waits until the proxy `client` is connected to forwards reads of `table` (columns `id`, `v`; a
/// row `id = 1`), which was just made unlogged on `direct`, then checks that a write no stream
/// reports shows through the proxy at once.
pub async fn wait_unlogged_forwarded(direct: &Client, client: &Client, table: &str) {
    let read = format!("SELECT v FROM {table} WHERE id = 1");
    let forwarded = wait_for(Duration::from_secs(20), || async {
        let hits = figure(client, "hits").await;
        first(client, &read).await;
        figure(client, "hits").await == hits
    })
    .await;
    assert!(
        forwarded,
        "{table}, made unlogged, is still served from the cache"
    );
    direct
        .batch_execute(&format!("UPDATE {table} SET v = 5 WHERE id = 1"))
        .await
        .unwrap();
    assert_eq!(first(client, &read).await.as_deref(), Some("5"));
}

/// A WAL position of the proxy's `fleet <database>` status row, the word after `label` (`"floor "`,
/// `"applied "`, `"tier up to "`), as Postgres writes it; `None` without such a row.
pub async fn fleet_position(client: &Client, database: &str, label: &str) -> Option<String> {
    let status = status(client).await;
    let row = status.get(&format!("fleet {database}"))?;
    row.split(label)
        .nth(1)
        .and_then(|rest| rest.split([' ', ';', ',']).next())
        .map(str::to_owned)
}

/// A WAL position from its text form (`16/B374D848`).
pub fn lsn(text: &str) -> u64 {
    let (high, low) = text.split_once('/').expect("a WAL position");
    u64::from_str_radix(high, 16).expect("hex") << 32 | u64::from_str_radix(low, 16).expect("hex")
}

/// Waits until the stream of `database` in the proxy `client` is connected to has applied the
/// server's WAL up to where it ends now (read on `direct`, a session straight to the server).
pub async fn wait_applied_all(direct: &Client, client: &Client, database: &str) {
    let end: String = crate::client::scalar(direct, "SELECT pg_current_wal_lsn()::text").await;
    let applied = wait_for(Duration::from_secs(20), || async {
        let at = fleet_position(client, database, "applied ").await;
        at.as_deref().map(lsn) >= Some(lsn(&end))
    })
    .await;
    assert!(
        applied,
        "the stream never applied up to {end}: {:?}",
        status(client).await
    );
}

/// Whether a generations snapshot in the shared tier covers everything the proxy applied.
pub async fn snapshot_covers_applied(client: &Client, database: &str) -> bool {
    let applied = fleet_position(client, database, "applied ").await;
    applied.is_some() && applied == fleet_position(client, database, "tier up to ").await
}
