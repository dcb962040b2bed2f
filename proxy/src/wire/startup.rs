//! The untagged packets a client sends before its session starts: SSLRequest, GSSENCRequest,
//! CancelRequest and the StartupMessage itself. Each is a length (counting itself) and a 32-bit code.

use bytes::{Buf, Bytes};

use super::frame::cstr;

/// Postgres's own bound on a startup packet (MAX_STARTUP_PACKET_LENGTH), checked before buffering.
pub const MAX_STARTUP_LEN: usize = 10_000;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
/// Also used by [`crate::cancel`] to write the requests it relays.
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// One startup-phase packet, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS.
    Ssl,
    /// The client asks for GSSAPI encryption.
    GssEnc,
    /// Cancel the query running on the backend named by `key` (process id and secret).
    Cancel {
        /// The backend key: everything after the request code.
        key: Bytes,
    },
    /// The session's StartupMessage.
    Startup(StartupMessage),
}

/// A StartupMessage: protocol version and parameters (user, database, options, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// The whole packet as received, relayed to the upstream unchanged.
    pub raw: Bytes,
    /// Requested protocol version: major in the high 16 bits.
    pub version: u32,
    /// Parameters in the order sent.
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// A parameter's value, if the client sent it.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The role the client logs in as.
    pub fn user(&self) -> &str {
        self.param("user").unwrap_or("")
    }

    /// The database, which defaults to the user name as in Postgres.
    pub fn database(&self) -> &str {
        self.param("database").unwrap_or_else(|| self.user())
    }
}

/// Why a startup packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    /// The length field is out of range.
    #[error("invalid length of startup packet")]
    BadLength,
    /// The parameter list is not NUL-terminated name/value strings.
    #[error("invalid startup packet layout: expected terminator as last byte")]
    BadLayout,
    /// A protocol major version other than 3.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedVersion {
        /// Requested major version.
        major: u32,
        /// Requested minor version.
        minor: u32,
    },
}

/// Peeks the length of the packet at the front of `buf`: `Ok(None)` until four bytes are there.
pub fn peek_len(buf: &[u8]) -> Result<Option<usize>, StartupError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(StartupError::BadLength);
    }
    Ok(Some(len))
}

/// Classifies one complete packet (length field included).
pub fn parse(raw: Bytes) -> Result<StartupPacket, StartupError> {
    let mut body = raw.slice(4..);
    let code = body.get_u32();
    match code {
        SSL_REQUEST => Ok(StartupPacket::Ssl),
        GSSENC_REQUEST => Ok(StartupPacket::GssEnc),
        CANCEL_REQUEST => Ok(StartupPacket::Cancel { key: body }),
        version if version >> 16 == 3 => {
            let params = parse_params(&body)?;
            Ok(StartupPacket::Startup(StartupMessage {
                raw,
                version,
                params,
            }))
        }
        version => Err(StartupError::UnsupportedVersion {
            major: version >> 16,
            minor: version & 0xffff,
        }),
    }
}

fn parse_params(mut buf: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        match buf {
            [0] => return Ok(params),
            [] => return Err(StartupError::BadLayout),
            _ => {
                let (name, rest) = cstr(buf).ok_or(StartupError::BadLayout)?;
                let (value, rest) = cstr(rest).ok_or(StartupError::BadLayout)?;
                params.push((name.to_owned(), value.to_owned()));
                buf = rest;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, body: &[u8]) -> Bytes {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        Bytes::from(v)
    }

    #[test]
    fn startup_message_params_are_read() {
        let p = packet(196_608, b"user\0alice\0database\0shop\0\0");
        let StartupPacket::Startup(m) = parse(p).unwrap() else {
            panic!("not a startup message")
        };
        assert_eq!(m.user(), "alice");
        assert_eq!(m.database(), "shop");
    }

    #[test]
    fn database_defaults_to_user() {
        let StartupPacket::Startup(m) = parse(packet(196_608, b"user\0bob\0\0")).unwrap() else {
            panic!("not a startup message")
        };
        assert_eq!(m.database(), "bob");
    }

    #[test]
    fn requests_are_recognised() {
        assert_eq!(parse(packet(SSL_REQUEST, b"")).unwrap(), StartupPacket::Ssl);
        assert_eq!(
            parse(packet(GSSENC_REQUEST, b"")).unwrap(),
            StartupPacket::GssEnc
        );
        let cancel = parse(packet(CANCEL_REQUEST, &[0, 0, 0, 7, 1, 2, 3, 4])).unwrap();
        assert!(matches!(cancel, StartupPacket::Cancel { key, .. } if key.len() == 8));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(
            peek_len(b"GET / HTTP/1.1\r\n"),
            Err(StartupError::BadLength)
        );
        assert_eq!(peek_len(&[0, 0, 0, 4]), Err(StartupError::BadLength));
        assert_eq!(
            parse(packet(2 << 16, b"\0")),
            Err(StartupError::UnsupportedVersion { major: 2, minor: 0 })
        );
        assert_eq!(
            parse(packet(196_608, b"user\0x")),
            Err(StartupError::BadLayout)
        );
    }
}
