//! Opening the upstream connection of a session: TCP (each resolved address in turn, within the
//! connect timeout), then TLS as `upstream_tls` asks.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use veneer_config::{Config, UpstreamTls};

use crate::error::Error;
use crate::stream::Stream;
use crate::tls;

/// Logs in to `database` as `service_user` over a connection of its own (TLS as configured), for
/// Veneer's own queries (catalog reads, `veneer setup`). Returns the client and its connection task,
/// which ends once the client is dropped.
pub async fn service_login(
    config: &Config,
    tls: Option<&TlsConnector>,
    database: &str,
    application_name: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), Error> {
    let upstream = connect(config, tls).await?;
    let mut login = tokio_postgres::Config::new();
    login
        .user(&config.service_user)
        .dbname(database)
        .application_name(application_name);
    if let Some(password) = &config.service_password {
        login.password(password);
    }
    let (client, connection) = tokio::time::timeout(
        config.connect_timeout,
        login.connect_raw(upstream.stream, tokio_postgres::NoTls),
    )
    .await
    .map_err(|_| {
        let timeout = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {:?}", config.connect_timeout),
        );
        Error::service("login", &config.service_user, database, timeout)
    })?
    .map_err(|e| Error::service("login", &config.service_user, database, e))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, driver))
}

/// SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// An open upstream connection and the address it reached (where CancelRequests for it go).
pub struct Upstream {
    /// The connection, encrypted or not.
    pub stream: Stream,
    /// The address actually connected to.
    pub addr: SocketAddr,
}

/// Connects to the configured upstream, with TLS through `tls` (built once by
/// [`tls::upstream_connector`]; `None` when the mode is disable); errors name the upstream's address.
/// The whole of it, TLS negotiation included, is bounded by `connect_timeout`: a server that takes
/// the connection and never answers (stopped, or restarting) must not hold anyone waiting.
pub async fn connect(config: &Config, tls: Option<&TlsConnector>) -> Result<Upstream, Error> {
    let target = &config.upstream;
    tokio::time::timeout(config.connect_timeout, open(config, tls))
        .await
        .map_err(|_| Error::upstream_connect(target, timed_out(config)))?
}

/// The error of a connection attempt that ran out of `connect_timeout`.
fn timed_out(config: &Config) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("timed out after {:?}", config.connect_timeout),
    )
}

/// Whether the upstream answers, for readiness checks: connects and asks whether it speaks TLS,
/// reads the one-byte answer, and hangs up. Postgres logs nothing for a client that leaves after
/// that answer (unlike a connection closed before a startup message).
pub async fn probe(config: &Config) -> Result<(), Error> {
    let target = &config.upstream;
    let asked = async {
        let mut tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
        tcp.write_all(&SSL_REQUEST).await?;
        tcp.read_u8().await
    };
    match tokio::time::timeout(config.connect_timeout, asked).await {
        Ok(Ok(b'S' | b'N')) => Ok(()),
        Ok(Ok(_)) => Err(Error::upstream_refused(
            target,
            "answered the TLS request with something other than S or N: is it PostgreSQL?",
        )),
        Ok(Err(e)) => Err(Error::upstream_connect(target, e)),
        Err(_) => Err(Error::upstream_connect(target, timed_out(config))),
    }
}

async fn open(config: &Config, tls: Option<&TlsConnector>) -> Result<Upstream, Error> {
    let target = &config.upstream;
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| Error::upstream_connect(target, e))?;
    let addr = tcp
        .peer_addr()
        .map_err(|e| Error::upstream_connect(target, e))?;
    // Small protocol messages must not wait for Nagle's algorithm.
    tcp.set_nodelay(true)
        .map_err(|e| Error::upstream_connect(target, e))?;
    let stream = match tls {
        None => Stream::Plain(tcp),
        Some(connector) => negotiate_tls(tcp, connector, config).await?,
    };
    Ok(Upstream { stream, addr })
}

async fn negotiate_tls(
    mut tcp: TcpStream,
    connector: &TlsConnector,
    config: &Config,
) -> Result<Stream, Error> {
    let target = &config.upstream;
    tcp.write_all(&SSL_REQUEST)
        .await
        .map_err(|e| Error::upstream_connect(target, e))?;
    let answer = tcp
        .read_u8()
        .await
        .map_err(|e| Error::upstream_connect(target, e))?;
    match (answer, config.upstream_tls) {
        (b'S', _) => {
            let tls = connector
                .connect(tls::server_name(&target.host), tcp)
                .await
                .map_err(|e| Error::upstream_connect(target, e))?;
            Ok(Stream::ClientTls(Box::new(tls)))
        }
        (b'N', UpstreamTls::Prefer | UpstreamTls::Disable) => Ok(Stream::Plain(tcp)),
        (b'N', UpstreamTls::Require | UpstreamTls::VerifyFull) => Err(Error::upstream_refused(
            target,
            "does not accept TLS, and upstream_tls asks for it",
        )),
        (other, _) => Err(Error::upstream_refused(
            target,
            &format!("answered SSLRequest with unexpected byte 0x{other:02x}"),
        )),
    }
}
