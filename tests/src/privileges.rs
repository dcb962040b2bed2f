//! Privilege and role changes made directly on the server, seen from sessions through Veneer: roles
//! of a test's own, reads that must become Postgres's own refusal (or its narrowed rows) within a
//! bound, and the check that roles the change did not concern keep their hits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::cache::{figure, run_direct, status, wait_cache_ready};
use crate::client::{config, connect, wait_for, Conn};
use crate::pg::{pg, DATABASE, SUPERUSER};
use crate::proxy::ProxyHandle;

/// How soon a change made directly must show through Veneer: the check runs every 0.5 s; the
/// rest is slack for a loaded machine (the figures are printed).
pub const BOUND: Duration = Duration::from_secs(5);

/// Creates login roles `names` (each test binary's server is new, so none exists yet).
pub async fn create_roles(names: &[&str]) {
    for name in names {
        run_direct(&format!("CREATE ROLE {name} LOGIN")).await;
    }
}

/// A proxy in front of the test database with an observer session and one session of each of a
/// test's roles through it.
pub struct Scene {
    /// The proxy, caching reads of [`DATABASE`].
    pub proxy: ProxyHandle,
    /// A superuser session through it, to read its figures.
    pub observer: Conn,
    /// A session of each role, in the order given.
    pub sessions: Vec<Conn>,
}

/// Creates login roles `roles`, runs `setup` on the test database, starts a proxy and opens the
/// sessions of a [`Scene`].
pub async fn scene(roles: &[&str], setup: &str) -> Scene {
    create_roles(roles).await;
    run_direct(setup).await;
    let proxy = ProxyHandle::start().await;
    wait_cache_ready(proxy.addr()).await;
    let observer = observer(proxy.addr(), DATABASE).await;
    let mut sessions = Vec::new();
    for role in roles {
        sessions.push(session(proxy.addr(), role, DATABASE).await);
    }
    Scene {
        proxy,
        observer,
        sessions,
    }
}

/// A session of `role` at `addr` (Veneer's or the server's), on database `dbname`.
pub async fn session(addr: SocketAddr, role: &str, dbname: &str) -> Conn {
    let mut login = config(addr, role, None, &format!("priv-{role}"));
    login.dbname(dbname);
    connect(&login)
        .await
        .unwrap_or_else(|e| panic!("connect as {role} to {addr}: {e:?}"))
}

/// The rows `sql` returns on `client` (simple protocol), every column as text.
pub async fn rows(
    client: &Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    Ok(crate::client::simple_rows(&client.simple_query(sql).await?))
}

/// Whether `sql` read on `client` was served from the cache, as `observer` (a superuser session on
/// the same proxy) sees it; fails the test if the read does.
pub async fn hit(observer: &Client, client: &Client, sql: &str) -> bool {
    let before = figure(observer, "hits").await;
    rows(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    figure(observer, "hits").await > before
}

/// Reads `sql` on `client` until it is a hit.
pub async fn warm(observer: &Client, client: &Client, sql: &str) {
    let warmed = wait_for(Duration::from_secs(20), || hit(observer, client, sql)).await;
    assert!(warmed, "{sql} never became a hit");
}

/// Warms `sql` for each of `clients`, then waits for two privilege checks of `dbname` (results
/// cached before a role or table was first checked are dropped at that check) and warms again:
/// from then on a change concerns only the roles it concerns.
pub async fn warm_checked(observer: &Client, clients: &[&Client], dbname: &str, sql: &str) {
    for client in clients {
        warm(observer, client, sql).await;
    }
    let checks = privilege_checks(observer, dbname).await;
    let checked = wait_for(Duration::from_secs(20), || async {
        privilege_checks(observer, dbname).await >= checks + 2
    })
    .await;
    assert!(
        checked,
        "privileges were not checked: {:?}",
        status(observer).await
    );
    for client in clients {
        warm(observer, client, sql).await;
    }
}

/// How many privilege checks of `dbname` the proxy ran, from its status.
async fn privilege_checks(observer: &Client, dbname: &str) -> u64 {
    status(observer)
        .await
        .get(&format!("database {dbname}"))
        .and_then(|line| line.split("privileges checked every ").nth(1))
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Reads `sql` on `client` every 10 ms until `done` holds for what it returned; returns how long
/// that took, and fails the test past [`BOUND`] (the figure is printed either way).
pub async fn until(
    what: &str,
    client: &Client,
    sql: &str,
    done: impl Fn(&Result<Vec<Vec<Option<String>>>, tokio_postgres::Error>) -> bool,
) -> Duration {
    let started = Instant::now();
    let limit = started + Duration::from_secs(20);
    loop {
        let read = rows(client, sql).await;
        if done(&read) {
            let took = started.elapsed();
            println!(
                "{what}: through Veneer after {:.0} ms",
                took.as_secs_f64() * 1000.0
            );
            assert!(took < BOUND, "{what}: only after {took:?}");
            return took;
        }
        assert!(Instant::now() < limit, "{what}: never; last read {read:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads `sql` on `via` (through Veneer) until it fails as it does on `direct` (straight to the
/// server, as the same role): the same SQLSTATE and message.
pub async fn until_refused_as_directly(
    what: &str,
    direct: &Client,
    via: &Client,
    sql: &str,
) -> Duration {
    let refusal = rows(direct, sql)
        .await
        .expect_err("the server itself refuses the read");
    let expected = refusal
        .as_db_error()
        .map(|e| (e.code().clone(), e.message().to_owned()));
    until(what, via, sql, |read| {
        read.as_ref()
            .err()
            .and_then(|e| e.as_db_error())
            .map(|e| (e.code().clone(), e.message().to_owned()))
            == expected
    })
    .await
}

/// Reads `sql` on `via` until it returns what it returns on `direct` (the same role straight to the
/// server).
pub async fn until_as_directly(what: &str, direct: &Client, via: &Client, sql: &str) -> Duration {
    let expected = rows(direct, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql} directly: {e:?}"));
    until(what, via, sql, |read| read.as_ref().ok() == Some(&expected)).await
}

/// Checks that `unaffected`'s read of `sql` is still a hit: a role the change did not concern keeps
/// its cached results.
pub async fn keeps_hits(observer: &Client, unaffected: &Client, sql: &str) {
    assert!(
        hit(observer, unaffected, sql).await,
        "{sql}: a role the change did not concern lost its hit"
    );
}

/// A superuser session through the proxy at `addr`, to read its figures.
pub async fn observer(addr: SocketAddr, dbname: &str) -> Conn {
    session(addr, SUPERUSER, dbname).await
}

/// The server's address, for sessions straight to it.
pub fn server() -> SocketAddr {
    pg().addr()
}
