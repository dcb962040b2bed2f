//! Authentication through the proxy: the exchange is relayed, so every method the server offers works
//! (trust, password, md5, SCRAM-SHA-256), and every refusal is the server's own, word for word.

use tokio_postgres::error::DbError;
use veneer_config::UpstreamTls;
use veneer_tests::client::config;
use veneer_tests::tools::PgTool;
use veneer_tests::*;

const LOGINS: [(&str, Option<&str>); 4] = [
    (TRUST_USER, None),
    (PASSWORD_USER, Some(PASSWORD_PASSWORD)),
    (MD5_USER, Some(MD5_PASSWORD)),
    (SCRAM_USER, Some(SCRAM_PASSWORD)),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_logs_in_with_tokio_postgres() {
    let proxy = ProxyHandle::start().await;
    for (user, password) in LOGINS {
        let conn = connect(&config(proxy.addr(), user, password, "auth-login"))
            .await
            .unwrap_or_else(|e| panic!("{user} through the proxy: {e:?}"));
        let row = conn
            .query_one("SELECT current_user::text, session_user::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), user);
        assert_eq!(row.get::<_, String>(1), user);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_logs_in_with_psql() {
    let proxy = ProxyHandle::start().await;
    for (user, password) in LOGINS {
        let mut psql = PgTool::psql(proxy.addr(), user)
            .args(["-A", "-t"])
            .command("SELECT current_user");
        if let Some(password) = password {
            psql = psql.password(password);
        }
        let out = psql.run().await;
        out.assert_success(&format!("psql as {user}"));
        assert_eq!(out.stdout.trim(), user);
    }
}

/// The server's refusal of a login, directly and through the proxy. The direct client does not use
/// TLS, so neither does the proxy's upstream leg: the server names the transport in some refusals.
async fn refusals(
    user: &str,
    password: Option<&str>,
    database: Option<&str>,
) -> (Box<DbError>, Box<DbError>) {
    let proxy = ProxyHandle::start_with(|s| s.upstream_tls = Some(UpstreamTls::Disable)).await;
    let refusal = |addr| {
        let mut config = config(addr, user, password, "auth-refused");
        if let Some(database) = database {
            config.dbname(database);
        }
        async move {
            let err = connect(&config)
                .await
                .expect_err("the login should have been refused");
            let db = err
                .as_db_error()
                .unwrap_or_else(|| panic!("not a server error: {err:?}"))
                .clone();
            Box::new(db)
        }
    };
    let direct = refusal(pg().addr()).await;
    let through = refusal(proxy.addr()).await;
    (direct, through)
}

fn assert_same_refusal(direct: &DbError, through: &DbError, code: &str) {
    assert_eq!(direct.code().code(), code, "direct: {direct:?}");
    assert_eq!(
        through.code(),
        direct.code(),
        "through the proxy: {through:?}"
    );
    assert_eq!(through.message(), direct.message());
    assert_eq!(through.severity(), direct.severity());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_as_directly() {
    for (user, _) in LOGINS.into_iter().skip(1) {
        let (direct, through) = refusals(user, Some("not the password"), None).await;
        assert_same_refusal(&direct, &through, "28P01");
        assert!(through.message().contains(user), "{through:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_role_and_database_are_refused_as_directly() {
    // No pg_hba.conf line matches this role: 28000, naming the host the server saw (the proxy and the
    // test both connect from 127.0.0.1).
    let (direct, through) = refusals("nobody_here", None, None).await;
    assert_same_refusal(&direct, &through, "28000");
    let (direct, through) = refusals(TRUST_USER, None, Some("no_such_database")).await;
    assert_same_refusal(&direct, &through, "3D000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_reports_the_same_wrong_password_error() {
    let proxy = ProxyHandle::start().await;
    // sslmode=disable on both paths: with prefer, psql retries a refused TLS login in plain TCP and
    // prints the refusal twice, which only the direct path (a server with TLS) would show.
    let attempt = |addr| {
        PgTool::psql(addr, SCRAM_USER)
            .password("not the password")
            .conn("sslmode", "disable")
            .command("SELECT 1")
            .run()
    };
    let direct = attempt(pg().addr()).await;
    let through = attempt(proxy.addr()).await;
    assert!(!through.status.success());
    // libpq prefixes the server's address, which differs by port; the server's words must not.
    let server_part = |stderr: &str| {
        stderr
            .split_once("FATAL:")
            .map(|(_, rest)| rest.trim().to_owned())
    };
    let expected = server_part(&direct.stderr).expect("psql names the FATAL error");
    assert_eq!(server_part(&through.stderr), Some(expected), "{through:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_do_not_hold_backends() {
    // A refused login ends the session on both sides; repeated failures must not pile up backends.
    let proxy = ProxyHandle::start().await;
    let observer = direct_admin().await;
    for _ in 0..10 {
        let err = connect(&config(
            proxy.addr(),
            MD5_USER,
            Some("wrong"),
            "auth-failing",
        ))
        .await
        .unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("28P01"));
    }
    wait_backend_gone(&observer, "auth-failing", STEP_TIMEOUT).await;
    // And the proxy still lets the right password in.
    let conn = connect(&config(
        proxy.addr(),
        MD5_USER,
        Some(MD5_PASSWORD),
        "auth-after",
    ))
    .await
    .unwrap();
    assert_eq!(scalar::<i32>(&conn, "SELECT 1").await, 1);
}
