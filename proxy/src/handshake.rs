//! The start of a client connection, before anything is relayed: TLS and GSSAPI negotiation, then
//! either a CancelRequest or the StartupMessage that opens a session.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::error::Error;
use crate::stream::Stream;
use crate::wire::authored::{error_response, sqlstate, Severity};
use crate::wire::startup::{self, StartupError, StartupMessage, StartupPacket};

/// How long a client may take to send its startup packets (Postgres's authentication_timeout).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Negotiation rounds allowed before the StartupMessage (SSLRequest, then GSSENCRequest, or the
/// reverse); more is a client going round in circles.
const MAX_NEGOTIATIONS: usize = 2;

/// What a new connection asked for.
pub enum Hello {
    /// A session: the (possibly TLS) client stream and its startup message.
    Startup(Stream, StartupMessage),
    /// A cancel request for the backend named by `key` (its BackendKeyData), and the connection it
    /// came on, which closes once the request is relayed (as the server closes its own).
    Cancel(Bytes, Stream),
}

/// Runs the startup phase on a freshly accepted connection. Protocol errors are reported to the client
/// as Postgres would report them before the connection is dropped.
pub async fn greet(tcp: TcpStream, tls: Option<&TlsAcceptor>) -> Result<Hello, Error> {
    let mut client = Stream::Plain(tcp);
    for _ in 0..=MAX_NEGOTIATIONS {
        let packet = match read_packet(&mut client).await {
            Ok(packet) => packet,
            Err(PacketError::Io(e)) => return Err(Error::client_io(e)),
            Err(PacketError::Startup(e)) => return Err(refuse(&mut client, e).await),
        };
        client = match packet {
            StartupPacket::Startup(message) => return Ok(Hello::Startup(client, message)),
            StartupPacket::Cancel { key } => return Ok(Hello::Cancel(key, client)),
            StartupPacket::GssEnc => answer(client, b'N').await?,
            StartupPacket::Ssl => match (client, tls) {
                (Stream::Plain(mut tcp), Some(acceptor)) => {
                    tcp.write_all(b"S").await.map_err(Error::client_io)?;
                    let tls = acceptor
                        .accept(tcp)
                        .await
                        .map_err(|e| Error::tls(format!("client TLS handshake failed: {e}")))?;
                    Stream::ServerTls(Box::new(tls))
                }
                (client, _) => answer(client, b'N').await?,
            },
        };
    }
    Err(refuse(&mut client, StartupError::BadLayout).await)
}

async fn answer(mut client: Stream, byte: u8) -> Result<Stream, Error> {
    client.write_all(&[byte]).await.map_err(Error::client_io)?;
    Ok(client)
}

async fn refuse(client: &mut Stream, e: StartupError) -> Error {
    let code = match e {
        StartupError::UnsupportedVersion { .. } => sqlstate::FEATURE_NOT_SUPPORTED,
        _ => sqlstate::PROTOCOL_VIOLATION,
    };
    let _ = client
        .write_all(&error_response(Severity::Fatal, code, &e.to_string()))
        .await;
    Error::client_protocol(e)
}

enum PacketError {
    Io(std::io::Error),
    Startup(StartupError),
}

/// Reads exactly one packet, never more: bytes after an SSLRequest belong to the TLS handshake.
async fn read_packet(client: &mut Stream) -> Result<StartupPacket, PacketError> {
    let mut head = [0u8; 4];
    client
        .read_exact(&mut head)
        .await
        .map_err(PacketError::Io)?;
    let len = startup::peek_len(&head)
        .map_err(PacketError::Startup)?
        .expect("four bytes hold a length");
    let mut packet = BytesMut::zeroed(len);
    packet[..4].copy_from_slice(&head);
    client
        .read_exact(&mut packet[4..])
        .await
        .map_err(PacketError::Io)?;
    startup::parse(packet.freeze()).map_err(PacketError::Startup)
}
