//! Messages the proxy writes on its own behalf, encoded with pgwire's message types.

use bytes::{Bytes, BytesMut};
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::Message;

/// SQLSTATE codes the proxy reports itself, named as in Postgres's errcodes.
pub mod sqlstate {
    /// The upstream could not be reached (sqlclient_unable_to_establish_sqlconnection).
    pub const CONNECTION_REJECTED: &str = "08001";
    /// The upstream connection broke (connection_failure).
    pub const CONNECTION_FAILURE: &str = "08006";
    /// The client broke the protocol.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// Over the connection limit.
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// A statement was cancelled (query_canceled).
    pub const QUERY_CANCELED: &str = "57014";
    /// The proxy is shutting down.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// An unsupported protocol version or request.
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
}

/// Severity of an ErrorResponse the proxy sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

/// Encodes an ErrorResponse as Postgres would send it (severity twice: localized and not).
pub fn error_response(severity: Severity, code: &str, message: &str) -> Bytes {
    let severity = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    encode(&ErrorResponse::new(vec![
        (b'S', severity.to_owned()),
        (b'V', severity.to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.to_owned()),
    ]))
}

/// Encodes one message the proxy writes itself (all far below pgwire's size limit).
pub fn encode(message: &impl Message) -> Bytes {
    let mut buf = BytesMut::with_capacity(message.message_length() + 1);
    message
        .encode(&mut buf)
        .expect("a message the proxy writes is far below pgwire's size limit");
    buf.freeze()
}

/// A Terminate message, sent upstream when the client went away without one.
pub const TERMINATE: &[u8] = &[b'X', 0, 0, 0, 4];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_layout() {
        let b = error_response(Severity::Fatal, "57P01", "bye");
        let expected = b"E\0\0\0\x1fSFATAL\0VFATAL\0C57P01\0Mbye\0\0";
        assert_eq!(&b[..], &expected[..]);
    }
}
