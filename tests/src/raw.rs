//! A raw socket client that speaks just enough of the protocol to send exactly the bytes a test wants
//! and to keep exactly the bytes it gets back.
//!
//! Real drivers hide what the transparency and bad-input tests are about: the byte stream itself, and
//! messages no driver would send (a length field below 4, a truncated message, garbage instead of a
//! startup packet). Messages are built by hand here; replies are framed by tag and length and kept
//! whole, so two streams can be compared byte for byte.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The protocol version 3.0 code of a StartupMessage.
const PROTOCOL_3_0: i32 = 196_608;

/// One backend message, whole: tag, length and body exactly as received.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The bytes of the message, tag and length included.
    pub raw: Bytes,
}

impl Message {
    /// The message type byte.
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    /// The body, after tag and length.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }

    /// The fields of an ErrorResponse or NoticeResponse; `None` for any other message.
    pub fn error_fields(&self) -> Option<ErrorFields> {
        matches!(self.tag(), b'E' | b'N').then(|| ErrorFields::parse(self.body()))
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = self.body();
        let shown = &body[..body.len().min(120)];
        write!(
            f,
            "{}({} bytes: {:?}{})",
            self.tag() as char,
            body.len(),
            String::from_utf8_lossy(shown),
            if body.len() > shown.len() { "…" } else { "" }
        )
    }
}

/// The fields of an ErrorResponse or NoticeResponse, by field code (`S`, `V`, `C`, `M`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields(pub BTreeMap<u8, String>);

impl ErrorFields {
    fn parse(mut body: &[u8]) -> ErrorFields {
        let mut fields = BTreeMap::new();
        while let Some((&code, rest)) = body.split_first() {
            if code == 0 {
                break;
            }
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            fields.insert(code, String::from_utf8_lossy(&rest[..end]).into_owned());
            body = rest.get(end + 1..).unwrap_or_default();
        }
        ErrorFields(fields)
    }

    /// The SQLSTATE (`C`).
    pub fn code(&self) -> &str {
        self.0.get(&b'C').map_or("", String::as_str)
    }

    /// The non-localized severity (`V`), falling back to the localized one (`S`).
    pub fn severity(&self) -> &str {
        self.0
            .get(&b'V')
            .or_else(|| self.0.get(&b'S'))
            .map_or("", String::as_str)
    }

    /// The primary message (`M`).
    pub fn message(&self) -> &str {
        self.0.get(&b'M').map_or("", String::as_str)
    }
}

/// A client socket with a receive buffer and counts of bytes each way.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    /// Bytes written to the socket so far.
    pub sent: u64,
    /// Bytes read from the socket so far.
    pub received: u64,
}

impl RawClient {
    /// Opens a TCP connection to `addr`.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = crate::within("raw connect", TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("set_nodelay");
        RawClient {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            sent: 0,
            received: 0,
        }
    }

    /// Connects and completes a trust-authenticated startup as `user` with `application_name`,
    /// returning every message up to and including the first ReadyForQuery.
    pub async fn startup(
        addr: SocketAddr,
        user: &str,
        application_name: &str,
    ) -> (RawClient, Vec<Message>) {
        let mut client = RawClient::connect(addr).await;
        client
            .send(&startup_message(&[
                ("user", user),
                ("database", crate::DATABASE),
                ("application_name", application_name),
            ]))
            .await;
        let messages = client.read_until_ready().await;
        if messages.iter().any(|m| m.tag() == b'E') {
            panic!(
                "startup through {addr} failed: {:?}",
                first_error(&messages)
            );
        }
        assert_eq!(
            messages.first().map(|m| (m.tag(), m.body().to_vec())),
            Some((b'R', 0i32.to_be_bytes().to_vec())),
            "expected AuthenticationOk first (trust), got {messages:?}"
        );
        (client, messages)
    }

    /// The socket, for a test that must write and read at the same time, and the bytes already read.
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.buf)
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes)
            .await
            .unwrap_or_else(|e| panic!("send {} bytes: {e}", bytes.len()));
    }

    /// Writes `bytes`, reporting failure (the peer may have closed already) instead of panicking.
    pub async fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        crate::within("raw send", self.stream.write_all(bytes)).await?;
        self.sent += bytes.len() as u64;
        Ok(())
    }

    /// Closes the sending side: the peer reads end of file.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Reads one byte (the answer to SSLRequest or GSSENCRequest); `None` at end of file.
    pub async fn read_byte(&mut self) -> Option<u8> {
        if self.buf.is_empty() && self.fill().await.ok()? == 0 {
            return None;
        }
        Some(self.buf.get_u8())
    }

    /// Reads the next whole message; `Ok(None)` at a clean end of file. A connection reset is returned
    /// as the error, since some tests accept it as a way of being closed.
    pub async fn read_message(&mut self) -> io::Result<Option<Message>> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes"));
                let total = usize::try_from(len).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("negative length {len}"))
                })? + 1;
                if total < 5 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("backend message length {len} below 4"),
                    ));
                }
                if self.buf.len() >= total {
                    let raw = self.buf.split_to(total).freeze();
                    return Ok(Some(Message { raw }));
                }
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "end of file inside a message ({} bytes buffered)",
                            self.buf.len()
                        ),
                    ))
                };
            }
        }
    }

    /// Reads the next message, failing the test at end of file or on error.
    pub async fn expect_message(&mut self) -> Message {
        match self.read_message().await {
            Ok(Some(message)) => message,
            Ok(None) => panic!("connection closed while a message was expected"),
            Err(e) => panic!("reading a message: {e}"),
        }
    }

    /// Reads messages up to and including ReadyForQuery.
    pub async fn read_until_ready(&mut self) -> Vec<Message> {
        let mut messages = Vec::new();
        loop {
            let message = self.expect_message().await;
            let done = message.tag() == b'Z';
            messages.push(message);
            if done {
                return messages;
            }
        }
    }

    /// Reads messages until the peer closes the connection (cleanly or by reset); returns them and
    /// whether the end was clean.
    pub async fn read_to_end(&mut self) -> (Vec<Message>, Result<(), io::Error>) {
        let mut messages = Vec::new();
        loop {
            match self.read_message().await {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => return (messages, Ok(())),
                Err(e) => return (messages, Err(e)),
            }
        }
    }

    /// Sends a simple Query and reads its reply up to ReadyForQuery.
    pub async fn query(&mut self, sql: &str) -> Vec<Message> {
        self.send(&query(sql)).await;
        self.read_until_ready().await
    }

    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(64 * 1024);
        let read = crate::within_for(
            Duration::from_secs(30),
            "a read from the server or proxy",
            self.stream.read_buf(&mut self.buf),
        )
        .await?;
        self.received += read as u64;
        Ok(read)
    }
}

/// Frames a frontend message: tag, then length (including itself), then body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A protocol 3.0 StartupMessage with the given parameters.
pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i32(PROTOCOL_3_0);
    for (name, value) in params {
        put_cstr(&mut body, name);
        put_cstr(&mut body, value);
    }
    body.put_u8(0);
    untagged(&body)
}

/// An SSLRequest.
pub fn ssl_request() -> Vec<u8> {
    untagged(&80_877_103i32.to_be_bytes())
}

/// A GSSENCRequest.
pub fn gssenc_request() -> Vec<u8> {
    untagged(&80_877_104i32.to_be_bytes())
}

/// A simple Query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = BytesMut::new();
    put_cstr(&mut body, sql);
    message(b'Q', &body)
}

/// A Parse of `sql` into statement `name` with no declared parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = BytesMut::new();
    put_cstr(&mut body, name);
    put_cstr(&mut body, sql);
    body.put_i16(0);
    message(b'P', &body)
}

/// A Bind of statement `statement` into portal `portal`, with text parameters (`None` is NULL) and
/// one result format code for every column (0 text, 1 binary).
pub fn bind(
    portal: &str,
    statement: &str,
    params: &[Option<&[u8]>],
    result_format: i16,
) -> Vec<u8> {
    let mut body = BytesMut::new();
    put_cstr(&mut body, portal);
    put_cstr(&mut body, statement);
    body.put_i16(0);
    body.put_i16(params.len() as i16);
    for param in params {
        match param {
            Some(value) => {
                body.put_i32(value.len() as i32);
                body.put_slice(value);
            }
            None => body.put_i32(-1),
        }
    }
    body.put_i16(1);
    body.put_i16(result_format);
    message(b'B', &body)
}

/// A Describe of a portal (`P`) or statement (`S`).
pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u8(kind);
    put_cstr(&mut body, name);
    message(b'D', &body)
}

/// An Execute of `portal` with no row limit.
pub fn execute(portal: &str) -> Vec<u8> {
    let mut body = BytesMut::new();
    put_cstr(&mut body, portal);
    body.put_i32(0);
    message(b'E', &body)
}

/// A Sync.
pub fn sync() -> Vec<u8> {
    message(b'S', &[])
}

/// A Terminate.
pub fn terminate() -> Vec<u8> {
    message(b'X', &[])
}

/// A CopyData carrying `data`.
pub fn copy_data(data: &[u8]) -> Vec<u8> {
    message(b'd', data)
}

/// A FunctionCall of the function with `oid`, text arguments, text result: a message type drivers
/// rarely send, which the proxy must pass through all the same.
pub fn function_call(oid: u32, args: &[&[u8]]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u32(oid);
    body.put_i16(0);
    body.put_i16(args.len() as i16);
    for arg in args {
        body.put_i32(arg.len() as i32);
        body.put_slice(arg);
    }
    body.put_i16(0);
    message(b'F', &body)
}

/// The first ErrorResponse among `messages`, failing the test if there is none.
pub fn first_error(messages: &[Message]) -> ErrorFields {
    messages
        .iter()
        .find(|m| m.tag() == b'E')
        .and_then(Message::error_fields)
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got {messages:?}"))
}

fn untagged(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}
