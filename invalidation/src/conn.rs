//! A session of Veneer's own with the server, spoken message by message: the login (trust,
//! password, md5 or SCRAM-SHA-256), simple queries, and raw reads and writes for what the protocol
//! crates do not cover (the replication stream's CopyBoth, a verifier replaying a client's request
//! bytes).

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::pgoutput;

/// Why a session of Veneer's own failed.
#[derive(Debug)]
pub enum Error {
    /// The connection failed.
    Io(std::io::Error),
    /// The server refused something, with its SQLSTATE and message.
    Server {
        /// SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
        /// What the session was doing.
        during: &'static str,
    },
    /// The server sent something this session does not understand.
    Protocol(String),
    /// The database is not set up for following it, and setting it up would harm it.
    Setup(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "connection failed: {e}"),
            Error::Server {
                code,
                message,
                during,
            } => {
                // Class 57 is an operator's or a shutdown's doing, not a refusal of the request.
                let verb = if code.starts_with("57") {
                    "ended"
                } else {
                    "refused"
                };
                write!(f, "server {verb} {during}: {message} (SQLSTATE {code})")?;
                match hint(code, message) {
                    Some(hint) => write!(f, "; {hint}"),
                    None => Ok(()),
                }
            }
            Error::Protocol(what) => write!(f, "protocol: {what}"),
            Error::Setup(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// The server did not answer `during` within `limit`.
    pub fn silent(during: &str, limit: std::time::Duration) -> Error {
        Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the server did not answer {during} within {limit:?}"),
        ))
    }
}

/// What to do about the refusals a setup can cause.
fn hint(code: &str, message: &str) -> Option<&'static str> {
    Some(match code {
        "55000" if message.contains("wal_level") => {
            "set wal_level = logical in postgresql.conf and restart Postgres"
        }
        "58P01" if message.contains("test_decoding") => {
            "the server lacks the test_decoding plugin: install PostgreSQL's contrib package, or \
             set publication to follow a publication you made with pgoutput"
        }
        "42501" => "service_user needs the REPLICATION attribute: ALTER ROLE <service_user> REPLICATION",
        "53400" => {
            "all replication slots are in use: raise max_replication_slots on the server or lower \
             replication_listeners"
        }
        "53300" => {
            "all WAL senders are in use: raise max_wal_senders on the server or lower \
             replication_listeners"
        }
        "28000" if message.contains("pg_hba.conf") => {
            "pg_hba.conf must allow service_user to connect to this database (a replication=database \
             connection matches the database's own name)"
        }
        _ => return None,
    })
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<pgoutput::DecodeError> for Error {
    fn from(e: pgoutput::DecodeError) -> Self {
        Error::Protocol(e.to_string())
    }
}

/// A session of Veneer's own with the server, message by message: what the replication stream and
/// the verifier of cached answers speak over.
pub struct Conn<S> {
    stream: S,
    buf: BytesMut,
    /// Messages to send at the next [`Conn::flush`].
    pub out: BytesMut,
    /// The server's major version, from its `server_version` parameter.
    pub server_major: u32,
    /// Whether the login is a superuser's, from its `is_superuser` parameter.
    pub superuser: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// A session over `stream`, not logged in yet.
    pub fn new(stream: S) -> Conn<S> {
        Conn {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            out: BytesMut::new(),
            server_major: 0,
            superuser: false,
        }
    }

    /// Sends what [`Conn::out`] holds.
    pub async fn flush(&mut self) -> Result<(), Error> {
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// The next backend message: tag and body.
    pub async fn read(&mut self) -> Result<(u8, Bytes), Error> {
        loop {
            if let Some(header) = backend::Header::parse(&self.buf)? {
                let total = header.len() as usize + 1;
                if self.buf.len() >= total {
                    let mut message = self.buf.split_to(total).freeze();
                    message.advance(5);
                    return Ok((header.tag(), message));
                }
                self.buf.reserve(total - self.buf.len());
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Logs in as `user` (trust, password, md5 or SCRAM-SHA-256) with the startup parameters
    /// `params` (database, and any others), up to the first ReadyForQuery.
    pub async fn login(
        &mut self,
        user: &str,
        password: Option<&str>,
        params: &[(&str, &str)],
    ) -> Result<(), Error> {
        let all = std::iter::once(("user", user)).chain(params.iter().copied());
        frontend::startup_message(all, &mut self.out)?;
        self.flush().await?;
        let password = password.unwrap_or("").as_bytes();
        let mut scram = None;
        loop {
            let (tag, body) = self.read().await?;
            match tag {
                b'R' => {
                    let code = body
                        .get(..4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                    let data = body.slice(4.min(body.len())..);
                    match code {
                        Some(0) => {}
                        Some(3) => frontend::password_message(password, &mut self.out)?,
                        Some(5) => {
                            let salt: [u8; 4] = data
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| {
                                    Error::Protocol("md5 request without salt".into())
                                })?;
                            let hash = md5_hash(user.as_bytes(), password, salt);
                            frontend::password_message(hash.as_bytes(), &mut self.out)?;
                        }
                        Some(10) => {
                            let offered = data
                                .split(|&b| b == 0)
                                .any(|m| m == sasl::SCRAM_SHA_256.as_bytes());
                            if !offered {
                                return Err(Error::Protocol(
                                    "the server offers no SASL mechanism Veneer supports".into(),
                                ));
                            }
                            let s = sasl::ScramSha256::new(
                                password,
                                sasl::ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(
                                sasl::SCRAM_SHA_256,
                                s.message(),
                                &mut self.out,
                            )?;
                            scram = Some(s);
                        }
                        Some(11) => {
                            let s = scram.as_mut().ok_or_else(|| {
                                Error::Protocol("SASL continue without a start".into())
                            })?;
                            s.update(&data)?;
                            frontend::sasl_response(s.message(), &mut self.out)?;
                        }
                        Some(12) => {
                            let s = scram.as_mut().ok_or_else(|| {
                                Error::Protocol("SASL final without a start".into())
                            })?;
                            s.finish(&data)?;
                        }
                        other => {
                            return Err(Error::Protocol(format!(
                                "unsupported authentication request {other:?}"
                            )))
                        }
                    }
                    self.flush().await?;
                }
                b'E' => return Err(server_error(&body, "the login")),
                b'S' => {
                    let mut fields = body.split(|&b| b == 0);
                    let (name, value) = (fields.next(), fields.next().unwrap_or_default());
                    match name {
                        Some(b"server_version") => {
                            self.server_major = std::str::from_utf8(value)
                                .ok()
                                .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
                                .and_then(|major| major.parse().ok())
                                .unwrap_or(0);
                        }
                        Some(b"is_superuser") => self.superuser = value == b"on",
                        _ => {}
                    }
                }
                b'Z' => return Ok(()),
                _ => {}
            }
        }
    }

    /// Runs `sql`; returns the first column of its rows.
    pub async fn simple(
        &mut self,
        sql: &str,
        during: &'static str,
    ) -> Result<Vec<Option<String>>, Error> {
        let rows = self.rows(sql, during).await?;
        Ok(rows.iter().map(|row| column(row, 0)).collect())
    }

    /// Runs `sql`; returns its DataRow bodies.
    pub async fn rows(&mut self, sql: &str, during: &'static str) -> Result<Vec<Bytes>, Error> {
        frontend::query(sql, &mut self.out)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, body) = self.read().await?;
            match tag {
                b'D' => rows.push(body),
                b'E' => error = Some(server_error(&body, during)),
                b'Z' => return error.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }
}

/// Column `n` of a DataRow body, as text; `None` for NULL or a short row.
pub fn column(body: &[u8], n: usize) -> Option<String> {
    let mut at = 2;
    for _ in 0..n {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4 + usize::try_from(len).unwrap_or(0);
    }
    let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
    let value = body.get(at + 4..at + 4 + usize::try_from(len).ok()?)?;
    Some(String::from_utf8_lossy(value).into_owned())
}

pub fn server_error(body: &[u8], during: &'static str) -> Error {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|&b| b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            Some((b'M', v)) => message = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    Error::Server {
        code,
        message,
        during,
    }
}
