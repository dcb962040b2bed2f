//! TLS between the proxy and the upstream (`upstream_tls`). The test server has `ssl = on` and a role,
//! TLS_USER, that pg_hba.conf admits only over TLS, so whether a session of that role gets in through
//! the proxy shows whether the proxy's upstream leg is encrypted. The server itself reports it too, in
//! pg_stat_ssl.

use tokio_postgres::error::SqlState;
use veneer_config::UpstreamTls;
use veneer_tests::client::config;
use veneer_tests::*;

async fn proxy_with(mode: UpstreamTls) -> ProxyHandle {
    ProxyHandle::start_with(move |s| s.upstream_tls = Some(mode)).await
}

/// Connects through `proxy` expecting the proxy to refuse with 08001 naming `upstream` (`why` says
/// what the refusal stands for), and returns the message.
async fn refused_upstream(
    proxy: &ProxyHandle,
    application_name: &str,
    upstream: std::net::SocketAddr,
    why: &str,
) -> String {
    let Err(err) = connect(&config(proxy.addr(), SUPERUSER, None, application_name)).await else {
        panic!("{why}");
    };
    let db = err
        .as_db_error()
        .expect("an ErrorResponse, never a silent close");
    assert_eq!(
        db.code(),
        &SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION
    );
    let message = db.message().to_owned();
    assert!(message.contains(&upstream.to_string()), "{message}");
    message
}

/// Whether the server sees the session's own backend as encrypted.
async fn backend_uses_tls(conn: &Conn) -> bool {
    conn.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .await
    .expect("read pg_stat_ssl")
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_and_prefer_encrypt_the_upstream_leg() {
    for mode in [UpstreamTls::Require, UpstreamTls::Prefer] {
        let proxy = proxy_with(mode).await;
        let conn = connect(&config(proxy.addr(), TLS_USER, None, "upstream-tls"))
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: a TLS-only role must get in: {e:?}"));
        assert!(
            backend_uses_tls(&conn).await,
            "{mode:?}: backend not on TLS"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_keeps_the_upstream_leg_plain() {
    let proxy = proxy_with(UpstreamTls::Disable).await;
    let conn = connect_as(proxy.addr(), "upstream-plain").await;
    assert!(!backend_uses_tls(&conn).await);
    // The server's own refusal reaches the client unchanged.
    let Err(err) = connect(&config(proxy.addr(), TLS_USER, None, "upstream-plain")).await else {
        panic!("a TLS-only role must be rejected over plain TCP");
    };
    let db = err
        .as_db_error()
        .expect("a server error, not a closed socket");
    assert_eq!(db.code(), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
    assert!(db.message().contains("no encryption"), "{}", db.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_is_refused_with_the_address() {
    // The inner proxy has no certificate, so it answers SSLRequest with 'N' as a server without TLS does.
    let plain = proxy_with(UpstreamTls::Disable).await;
    let inner = plain.addr();
    let outer = ProxyHandle::start_with(move |s| {
        s.upstream = Some(veneer_config::HostPort::new("127.0.0.1", inner.port()));
        s.upstream_tls = Some(UpstreamTls::Require);
    })
    .await;
    let message = refused_upstream(
        &outer,
        "upstream-require",
        inner,
        "require must not fall back to plain TCP",
    )
    .await;
    assert!(message.contains("TLS"), "{message}");

    // With prefer, the same chain falls back to plain TCP and works.
    let fallback = ProxyHandle::start_with(move |s| {
        s.upstream = Some(veneer_config::HostPort::new("127.0.0.1", inner.port()));
        s.upstream_tls = Some(UpstreamTls::Prefer);
    })
    .await;
    let conn = connect_as(fallback.addr(), "upstream-prefer-fallback").await;
    assert!(!backend_uses_tls(&conn).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_accepts_the_servers_authority() {
    let ca = pg().ca_cert();
    let proxy = ProxyHandle::start_with(move |s| {
        s.upstream_tls = Some(UpstreamTls::VerifyFull);
        s.upstream_tls_root_cert = Some(ca);
    })
    .await;
    let conn = connect(&config(proxy.addr(), TLS_USER, None, "upstream-verify"))
        .await
        .unwrap_or_else(|e| panic!("verify-full against the server's own authority: {e:?}"));
    assert!(backend_uses_tls(&conn).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_certificate_from_another_authority() {
    let stranger = veneer_tests::tls::TestCert::generate();
    let ca = stranger.ca.clone();
    let proxy = ProxyHandle::start_with(move |s| {
        s.upstream_tls = Some(UpstreamTls::VerifyFull);
        s.upstream_tls_root_cert = Some(ca);
    })
    .await;
    let message = refused_upstream(
        &proxy,
        "upstream-verify",
        pg().addr(),
        "a certificate from an unknown authority must be refused",
    )
    .await;
    assert!(message.contains("certificate"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_root_certificate_stops_the_proxy_at_start() {
    let settings = veneer_config::Settings {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        upstream: Some(pg().upstream()),
        upstream_tls: Some(UpstreamTls::VerifyFull),
        upstream_tls_root_cert: Some("/nonexistent/ca.pem".into()),
        ..Default::default()
    };
    let config =
        veneer_config::Config::resolve(settings).expect("the settings themselves are valid");
    let Err(err) = veneer_proxy::Proxy::bind(config).await else {
        panic!("a proxy that cannot verify its upstream must not start");
    };
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
