//! Client TLS at the proxy: with a certificate configured, psql (`sslmode=require`) and tokio-postgres
//! (rustls) get an encrypted session and every authentication method still works inside it; without
//! one, SSLRequest is answered 'N', so `sslmode=require` fails and `sslmode=prefer` falls back to plain.

use tokio_postgres::config::SslMode;
use veneer_tests::client::config;
use veneer_tests::raw::{self, RawClient};
use veneer_tests::tls::{NoVerifyTls, TestCert};
use veneer_tests::tools::PgTool;
use veneer_tests::*;

async fn tls_proxy(cert: &TestCert) -> ProxyHandle {
    let (cert, key) = (cert.cert.clone(), cert.key.clone());
    ProxyHandle::start_with(move |s| {
        s.tls_cert = Some(cert);
        s.tls_key = Some(key);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_with_sslmode_require() {
    let cert = TestCert::generate();
    let proxy = tls_proxy(&cert).await;
    let out = PgTool::psql(proxy.addr(), SUPERUSER)
        .conn("sslmode", "require")
        .command("\\conninfo")
        .args(["-A", "-t"])
        .command("SELECT 40 + 2")
        .run()
        .await;
    out.assert_success("psql sslmode=require");
    assert!(out.stdout.contains("SSL connection"), "{out:?}");
    assert!(out.stdout.lines().any(|l| l.trim() == "42"), "{out:?}");

    // Password methods inside TLS. SCRAM cannot be bound to this TLS session, which the upstream never
    // sees: the documented limit is channel_binding=disable.
    for (user, password) in [(MD5_USER, MD5_PASSWORD), (SCRAM_USER, SCRAM_PASSWORD)] {
        let out = PgTool::psql(proxy.addr(), user)
            .password(password)
            .conn("sslmode", "require")
            .conn("channel_binding", "disable")
            .args(["-A", "-t"])
            .command("SELECT current_user")
            .run()
            .await;
        out.assert_success(&format!("psql sslmode=require as {user}"));
        assert_eq!(out.stdout.trim(), user);
    }
    // Without it, the test server (TLS upstream, so it offers SCRAM-SHA-256-PLUS) refuses the login
    // with its own message, which the client sees unchanged.
    let out = PgTool::psql(proxy.addr(), SCRAM_USER)
        .password(SCRAM_PASSWORD)
        .conn("sslmode", "require")
        .command("SELECT 1")
        .run()
        .await;
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("channel binding"), "{out:?}");

    // Plain clients are still served by a proxy that offers TLS.
    let out = PgTool::psql(proxy.addr(), SUPERUSER)
        .conn("sslmode", "disable")
        .args(["-A", "-t"])
        .command("SELECT 'plain'")
        .run()
        .await;
    out.assert_success("psql sslmode=disable");
    assert_eq!(out.stdout.trim(), "plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_over_rustls() {
    let cert = TestCert::generate();
    let proxy = tls_proxy(&cert).await;
    for (user, password) in [
        (TRUST_USER, None),
        (MD5_USER, Some(MD5_PASSWORD)),
        (SCRAM_USER, Some(SCRAM_PASSWORD)),
    ] {
        let mut config = config(proxy.addr(), user, password, "tls-driver");
        config.ssl_mode(SslMode::Require);
        let (client, connection) = within("TLS connect", config.connect(NoVerifyTls::default()))
            .await
            .unwrap_or_else(|e| panic!("TLS connect as {user}: {e:?}"));
        tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT current_user::text, length(repeat('t', 1000000))",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), user);
        assert_eq!(row.get::<_, i32>(1), 1_000_000);
        // A large result streams through the encrypted side too.
        let rows = client
            .query(
                "SELECT g, repeat('v', 200) FROM generate_series(1, 5000) g",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 5000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_require_fails_and_prefer_falls_back() {
    let proxy = ProxyHandle::start().await;
    let mut client = RawClient::connect(proxy.addr()).await;
    client.send(&raw::ssl_request()).await;
    assert_eq!(client.read_byte().await, Some(b'N'));

    let out = PgTool::psql(proxy.addr(), SUPERUSER)
        .conn("sslmode", "require")
        .command("SELECT 1")
        .run()
        .await;
    assert!(
        !out.status.success(),
        "sslmode=require succeeded without TLS: {out:?}"
    );
    assert!(out.stderr.contains("SSL"), "{out:?}");

    let out = PgTool::psql(proxy.addr(), SUPERUSER)
        .conn("sslmode", "prefer")
        .args(["-A", "-t"])
        .command("SELECT 'fallback'")
        .run()
        .await;
    out.assert_success("psql sslmode=prefer");
    assert_eq!(out.stdout.trim(), "fallback");

    // tokio-postgres with TLS required fails the same way; with prefer it connects in plain.
    let mut config = config(proxy.addr(), SUPERUSER, None, "tls-none");
    config.ssl_mode(SslMode::Require);
    assert!(config.connect(NoVerifyTls::default()).await.is_err());
    config.ssl_mode(SslMode::Prefer);
    let (client, connection) = config.connect(NoVerifyTls::default()).await.unwrap();
    tokio::spawn(connection);
    assert_eq!(scalar::<i32>(&client, "SELECT 3").await, 3);
}

/// Both legs encrypted and both directions full at once: tokio-postgres pipelines requests that carry
/// 64 kB each while the replies, as large, come back, so the session keeps writing to each TLS leg
/// while reading from it. (Each leg drives one TLS state machine from two halves, and a session polls
/// a half only when its waker fired; the waker both halves of a TLS leg share for that reason is
/// checked in the session's unit tests: rustls did not make one half wait on the other's direction
/// here, with or without it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_full_both_ways_through_two_tls_legs() {
    let cert = TestCert::generate();
    let (cert_path, key_path) = (cert.cert.clone(), cert.key.clone());
    let proxy = ProxyHandle::start_with(move |s| {
        s.tls_cert = Some(cert_path);
        s.tls_key = Some(key_path);
        s.upstream_tls = Some(veneer_config::UpstreamTls::Require);
    })
    .await;
    let mut config = config(proxy.addr(), SUPERUSER, None, "tls-both-ways");
    config.ssl_mode(SslMode::Require);
    let (client, connection) = within("TLS connect", config.connect(NoVerifyTls::default()))
        .await
        .expect("TLS connect");
    tokio::spawn(connection);
    let statement = client.prepare("SELECT $1::text, $2::int4").await.unwrap();
    let payload = "p".repeat(64 * 1024);
    let queries = (0..200i32).map(|i| {
        let (client, statement, payload) = (&client, &statement, &payload);
        async move {
            let row = client.query_one(statement, &[payload, &i]).await?;
            Ok::<(usize, i32), tokio_postgres::Error>((row.get::<_, String>(0).len(), row.get(1)))
        }
    });
    let replies = within(
        "200 pipelined 64 kB round trips",
        futures_util::future::try_join_all(queries),
    )
    .await
    .unwrap();
    let expected: Vec<(usize, i32)> = (0..200).map(|i| (payload.len(), i)).collect();
    assert_eq!(replies, expected);
}
