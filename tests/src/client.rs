//! tokio-postgres helpers: connecting to the server or the proxy, and watching `pg_stat_activity` on a
//! direct connection to see what the proxy did upstream (whether a session's backend was released,
//! whether a query is running yet).
//!
//! Sessions under test set a unique `application_name`; that is how a test finds its own backend among
//! the other tests' sessions on the shared server.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config, NoTls};

use crate::pg::{pg, DATABASE, SUPERUSER};

/// A client and the task driving its connection. The task's result matters to some tests: an error
/// the server (or proxy) sends while no query is pending — such as the FATAL 57P01 of a shutdown —
/// surfaces only there.
#[derive(Debug)]
pub struct Conn {
    /// The client, for queries.
    pub client: Client,
    /// The connection task; it ends with the connection, with an error if the peer sent one.
    pub task: JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Deref for Conn {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Conn {
    /// Waits for the connection to end and returns how it ended.
    pub async fn closed(self) -> Result<(), tokio_postgres::Error> {
        let Conn { client, task } = self;
        // Keep the client alive while waiting: dropping it would close the connection ourselves.
        let result = crate::within("connection to end", task).await;
        drop(client);
        result.expect("connection task panicked")
    }
}

/// A connection configuration for `addr` (the server's or the proxy's), with the given role, password
/// and `application_name`. TLS is off so that what is tested is the plain wire path.
pub fn config(
    addr: SocketAddr,
    user: &str,
    password: Option<&str>,
    application_name: &str,
) -> Config {
    let mut config = Config::new();
    config
        .host(addr.ip().to_string())
        .port(addr.port())
        .user(user)
        .dbname(DATABASE)
        .application_name(application_name)
        .connect_timeout(Duration::from_secs(10));
    if let Some(password) = password {
        config.password(password);
    }
    config
}

/// Connects with `config` and spawns the connection task.
pub async fn connect(config: &Config) -> Result<Conn, tokio_postgres::Error> {
    let (client, connection) = crate::within("connect", config.connect(NoTls)).await?;
    let task = tokio::spawn(connection);
    Ok(Conn { client, task })
}

/// Connects to `addr` as the superuser with `application_name`, failing the test on error: the common
/// case of "a working session through the proxy".
pub async fn connect_as(addr: SocketAddr, application_name: &str) -> Conn {
    connect(&config(addr, SUPERUSER, None, application_name))
        .await
        .unwrap_or_else(|e| panic!("connect to {addr} as {SUPERUSER}: {e:?}"))
}

/// A superuser session straight to the server, bypassing the proxy: the test's independent observer.
pub async fn direct_admin() -> Conn {
    connect_as(pg().addr(), "veneer-tests-observer").await
}

/// The single value `sql` returns (first column of its one row); the test fails if the query does.
pub async fn scalar<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    client: &Client,
    sql: &str,
) -> T {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

/// Number of server backends whose `application_name` is `name`.
pub async fn backends_named(observer: &Client, name: &str) -> i64 {
    let row = observer
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .expect("query pg_stat_activity");
    row.get(0)
}

/// Waits until no server backend has `application_name` `name`: the proxy released the upstream
/// connection of a session that ended. Fails the test after `limit`.
pub async fn wait_backend_gone(observer: &Client, name: &str, limit: Duration) {
    let gone = wait_for(limit, || async {
        backends_named(observer, name).await == 0
    })
    .await;
    assert!(
        gone,
        "the upstream backend of session '{name}' was still in pg_stat_activity after {limit:?}"
    );
}

/// Waits until the backend with `application_name` `name` is running a statement containing
/// `query_part`, so a test can act on a query that is known to be in progress (cancel it, shut down).
pub async fn wait_backend_active(observer: &Client, name: &str, query_part: &str) {
    let pattern = format!("%{query_part}%");
    let active = wait_for(crate::STEP_TIMEOUT, || async {
        let row = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                 AND state = 'active' AND query LIKE $2",
                &[&name, &pattern],
            )
            .await
            .expect("query pg_stat_activity");
        row.get::<_, i64>(0) > 0
    })
    .await;
    assert!(
        active,
        "session '{name}' never started running '{query_part}'"
    );
}

/// Rows of a simple query, as text, with NULL as `None`.
pub fn simple_rows(messages: &[tokio_postgres::SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Polls `check` every 20 ms until it returns true or `limit` passes; returns whether it did. This is
/// the one way tests wait for something they cannot be told about (a backend exiting, a port opening).
pub async fn wait_for<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
