//! RESP, the Redis protocol, as far as a cache node needs it: requests are arrays of bulk strings
//! (what every client library and `redis-benchmark` send) or inline commands (what a person types
//! into `telnet`); replies are written in RESP2 or, after `HELLO 3`, RESP3.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Longest request line (inline command or array header) accepted.
const MAX_LINE: usize = 64 * 1024;

/// Most arguments in one request.
const MAX_ARGS: usize = 1024 * 1024;

/// Largest bulk string accepted: far above any result a proxy stores (`max_result_bytes` is 1 MiB
/// by default), and low enough that a client cannot make a node hold much for it (Redis allows 512
/// MiB).
pub const MAX_BULK: usize = 64 * 1024 * 1024;

/// A request the client broke the protocol with; the connection is closed after the error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// Takes one complete request from the front of `buf` into `args` (emptied first): true when one
/// was taken, false when more bytes are needed. Arguments share the buffer's memory (no copy), and
/// `args` is reused from request to request, so a request costs no allocation of its own.
pub fn parse(buf: &mut BytesMut, args: &mut Vec<Bytes>) -> Result<bool, ProtocolError> {
    args.clear();
    if buf.is_empty() {
        return Ok(false);
    }
    if buf[0] != b'*' {
        return parse_inline(buf, args);
    }
    let Some((count, first)) = number_line(buf, 0)? else {
        return Ok(false);
    };
    if count < 0 {
        buf.advance(first);
        return Ok(true);
    }
    let count = count as usize;
    if count > MAX_ARGS {
        return Err(ProtocolError(format!("invalid multibulk length {count}")));
    }
    // First pass: is the request complete, and well formed?
    let mut at = first;
    for _ in 0..count {
        let Some((start, end)) = bulk(buf, at)? else {
            return Ok(false);
        };
        debug_assert!(start <= end);
        at = end + 2;
    }
    // Second pass, over the request now cut from the buffer: its arguments.
    let frame = buf.split_to(at).freeze();
    let mut at = first;
    for _ in 0..count {
        let (start, end) = bulk(&frame, at)?.expect("checked complete");
        args.push(frame.slice(start..end));
        at = end + 2;
    }
    Ok(true)
}

/// The bulk string whose `$` header is at `at`: where its bytes start and end, or `None` if `buf`
/// does not hold it all yet.
fn bulk(buf: &[u8], at: usize) -> Result<Option<(usize, usize)>, ProtocolError> {
    if at >= buf.len() {
        return Ok(None);
    }
    if buf[at] != b'$' {
        return Err(ProtocolError(format!(
            "expected '$', got '{}'",
            buf[at].escape_ascii()
        )));
    }
    let Some((len, start)) = number_line(buf, at)? else {
        return Ok(None);
    };
    if !(0..=MAX_BULK as i64).contains(&len) {
        return Err(ProtocolError("invalid bulk length".to_owned()));
    }
    let end = start + len as usize;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(ProtocolError("bulk string not ended by CRLF".to_owned()));
    }
    Ok(Some((start, end)))
}

/// `<tag><integer>\r\n` at `at`: the integer and where the next byte is.
fn number_line(buf: &[u8], at: usize) -> Result<Option<(i64, usize)>, ProtocolError> {
    let Some(end) = line_end(&buf[at..])? else {
        return Ok(None);
    };
    let text = &buf[at + 1..at + end];
    let number = std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| ProtocolError(format!("invalid length '{}'", text.escape_ascii())))?;
    Ok(Some((number, at + end + 2)))
}

fn line_end(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some(end)),
        None if buf.len() > MAX_LINE => Err(ProtocolError("too big request line".to_owned())),
        None => Ok(None),
    }
}

fn parse_inline(buf: &mut BytesMut, args: &mut Vec<Bytes>) -> Result<bool, ProtocolError> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_LINE {
            return Err(ProtocolError("too big inline request".to_owned()));
        }
        return Ok(false);
    };
    let line = buf.split_to(end + 1).freeze();
    let text = line.slice(..end);
    let text = text.strip_suffix(b"\r").unwrap_or(&text);
    args.extend(
        text.split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .map(|w| line.slice_ref(w)),
    );
    Ok(true)
}

/// Writes replies in the protocol version the connection chose.
pub struct Writer {
    /// 2 or 3.
    pub protocol: u8,
}

impl Writer {
    /// `+text`.
    pub fn simple(&self, out: &mut BytesMut, text: &str) {
        out.put_u8(b'+');
        out.put_slice(text.as_bytes());
        out.put_slice(b"\r\n");
    }

    /// `-message` (the message starts with its error code, e.g. `ERR`).
    pub fn error(&self, out: &mut BytesMut, message: &str) {
        out.put_u8(b'-');
        out.put_slice(message.replace(['\r', '\n'], " ").as_bytes());
        out.put_slice(b"\r\n");
    }

    /// `:n`.
    pub fn integer(&self, out: &mut BytesMut, n: i64) {
        out.put_u8(b':');
        out.put_slice(n.to_string().as_bytes());
        out.put_slice(b"\r\n");
    }

    /// The header of a bulk string of `len` bytes; the caller writes the bytes and [`Writer::end`].
    pub fn bulk_header(&self, out: &mut BytesMut, len: usize) {
        out.put_u8(b'$');
        out.put_slice(len.to_string().as_bytes());
        out.put_slice(b"\r\n");
    }

    /// The CRLF that ends a bulk string.
    pub fn end(&self, out: &mut BytesMut) {
        out.put_slice(b"\r\n");
    }

    /// A bulk string.
    pub fn bulk(&self, out: &mut BytesMut, bytes: &[u8]) {
        self.bulk_header(out, bytes.len());
        out.put_slice(bytes);
        self.end(out);
    }

    /// The null reply: `$-1` in RESP2, `_` in RESP3.
    pub fn null(&self, out: &mut BytesMut) {
        out.put_slice(if self.protocol >= 3 {
            b"_\r\n"
        } else {
            b"$-1\r\n"
        });
    }

    /// The header of an array of `len` elements.
    pub fn array(&self, out: &mut BytesMut, len: usize) {
        out.put_u8(b'*');
        out.put_slice(len.to_string().as_bytes());
        out.put_slice(b"\r\n");
    }

    /// The header of a map of `len` pairs (a flat array of twice as many in RESP2).
    pub fn map(&self, out: &mut BytesMut, len: usize) {
        if self.protocol >= 3 {
            out.put_u8(b'%');
            out.put_slice(len.to_string().as_bytes());
            out.put_slice(b"\r\n");
        } else {
            self.array(out, len * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(request: &[u8]) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let mut args = Vec::new();
        Ok(parse(&mut BytesMut::from(request), &mut args)?.then_some(args))
    }

    #[test]
    fn arrays_of_bulk_strings_and_inline_commands() {
        let parsed = args(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap().unwrap();
        assert_eq!(parsed, vec![Bytes::from("GET"), Bytes::from("k")]);
        let inline = args(b"set  k v\r\n").unwrap().unwrap();
        assert_eq!(
            inline,
            vec![Bytes::from("set"), Bytes::from("k"), Bytes::from("v")]
        );
    }

    #[test]
    fn an_unfinished_request_waits_for_more_bytes() {
        for cut in 1..20 {
            let whole = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
            if cut < whole.len() {
                assert_eq!(args(&whole[..cut]), Ok(None), "cut at {cut}");
            }
        }
    }

    #[test]
    fn pipelined_requests_come_out_one_by_one() {
        let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n"[..]);
        let mut args = Vec::new();
        assert!(parse(&mut buf, &mut args).unwrap());
        assert!(parse(&mut buf, &mut args).unwrap());
        assert_eq!(args, [Bytes::from("PING")]);
        assert!(buf.is_empty());
    }

    #[test]
    fn broken_requests_are_errors() {
        assert!(args(b"*1\r\n:3\r\n").is_err());
        assert!(args(b"*x\r\n").is_err());
        assert!(args(b"*1\r\n$3\r\nabcd\r\n").is_err());
        assert!(args(b"*1\r\n$-5\r\n").is_err());
    }
}
