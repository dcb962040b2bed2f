//! Opening the upstream connection of a session: TCP (each resolved address in turn, within the
//! connect timeout), then TLS as `upstream_tls` asks.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use veneer_config::{Config, UpstreamTls};

use crate::error::Error;
use crate::stream::Stream;
use crate::tls;

/// SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// An open upstream connection and the address it reached (where CancelRequests for it go).
pub struct Upstream {
    /// The connection, encrypted or not.
    pub stream: Stream,
    /// The address actually connected to.
    pub addr: SocketAddr,
}

/// Connects to the configured upstream; errors name its address.
pub async fn connect(config: &Config) -> Result<Upstream, Error> {
    let target = &config.upstream;
    let tcp = tokio::time::timeout(
        config.connect_timeout,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| {
        let timeout = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("timed out after {:?}", config.connect_timeout),
        );
        Error::upstream_connect(target, timeout)
    })?
    .map_err(|e| Error::upstream_connect(target, e))?;
    let addr = tcp
        .peer_addr()
        .map_err(|e| Error::upstream_connect(target, e))?;
    // Small protocol messages must not wait for Nagle's algorithm.
    tcp.set_nodelay(true)
        .map_err(|e| Error::upstream_connect(target, e))?;
    let stream = match config.upstream_tls {
        UpstreamTls::Disable => Stream::Plain(tcp),
        mode => negotiate_tls(tcp, mode, config).await?,
    };
    Ok(Upstream { stream, addr })
}

async fn negotiate_tls(
    mut tcp: TcpStream,
    mode: UpstreamTls,
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
    match (answer, mode) {
        (b'S', _) => {
            let tls = tls::upstream_connector()
                .connect(tls::server_name(&target.host), tcp)
                .await
                .map_err(|e| Error::upstream_connect(target, e))?;
            Ok(Stream::ClientTls(Box::new(tls)))
        }
        (b'N', UpstreamTls::Require) => Err(Error::upstream_refused(
            target,
            "does not accept TLS, and upstream_tls is require",
        )),
        (b'N', _) => Ok(Stream::Plain(tcp)),
        (other, _) => Err(Error::upstream_refused(
            target,
            &format!("answered SSLRequest with unexpected byte 0x{other:02x}"),
        )),
    }
}
