//! Framing of tagged protocol messages: one tag byte, a big-endian length that counts itself, a body.
//!
//! The framer only peeks headers. It checks the length against a maximum before the caller reserves
//! room for the body, reports "incomplete" as `Ok(None)`, and never copies: callers walk the buffer
//! header by header and forward whole runs of complete messages as one `Bytes`.

use std::fmt;

use bytes::BytesMut;

/// Tag byte plus the length field.
pub const HEADER_LEN: usize = 5;

/// The header of one message at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The message type byte.
    pub tag: u8,
    /// Bytes of the whole message: tag, length field and body.
    pub total_len: usize,
}

impl Header {
    /// Peeks at the header at the front of `buf`: `Ok(None)` until five bytes are there, an error for
    /// a length field that cannot be right or exceeds `max_len` (the whole message's size).
    pub fn peek(buf: &[u8], max_len: usize) -> Result<Option<Header>, FrameError> {
        let Some(head) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let tag = head[0];
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len < 4 {
            return Err(FrameError::BadLength { tag, len });
        }
        let total_len = len + 1;
        if total_len > max_len {
            return Err(FrameError::TooLong {
                tag,
                len,
                max: max_len,
            });
        }
        Ok(Some(Header { tag, total_len }))
    }

    /// The body of this message, if `buf` (starting at the header) holds all of it.
    pub fn body<'a>(&self, buf: &'a [u8]) -> Option<&'a [u8]> {
        buf.get(HEADER_LEN..self.total_len)
    }
}

/// A message that cannot be framed: the stream is out of step and the session must end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is smaller than itself.
    BadLength {
        /// Message type byte.
        tag: u8,
        /// The length field as sent.
        len: usize,
    },
    /// The message is larger than the configured maximum.
    TooLong {
        /// Message type byte.
        tag: u8,
        /// The length field as sent.
        len: usize,
        /// The limit in force.
        max: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadLength { tag, len } => {
                write!(
                    f,
                    "invalid message length {len} for message type {}",
                    Tag(*tag)
                )
            }
            FrameError::TooLong { tag, len, max } => write!(
                f,
                "message of type {} is {len} bytes long, over the limit of {max} bytes",
                Tag(*tag)
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Displays a tag as Postgres does in its messages: the character when printable, else hex.
struct Tag(u8);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "\"{}\"", self.0 as char)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

/// Reads a NUL-terminated string at the front of `buf`, returning it and the rest.
pub fn cstr(buf: &[u8]) -> Option<(&str, &[u8])> {
    let end = buf.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&buf[..end]).ok()?;
    Some((s, &buf[end + 1..]))
}

/// A field of an ErrorResponse or NoticeResponse body (e.g. `b'C'` for the SQLSTATE).
pub fn error_field(body: &[u8], code: u8) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        let end = tail.iter().position(|&b| b == 0)?;
        if field == code {
            return Some(&tail[..end]);
        }
        rest = &tail[end + 1..];
    }
    None
}

/// Length of the run of complete messages at the front of `buf`; reserves room for a partial message
/// that follows them, after checking its length against `max`.
pub fn complete_prefix(buf: &mut BytesMut, max: usize) -> Result<usize, FrameError> {
    let mut offset = 0;
    while let Some(header) = Header::peek(&buf[offset..], max)? {
        let available = buf.len() - offset;
        if available < header.total_len {
            if offset == 0 {
                buf.reserve(header.total_len - available);
            }
            break;
        }
        offset += header.total_len;
    }
    Ok(offset)
}

/// Walks the messages of a chunk made only of complete messages: (tag, body), the body borrowed from
/// the chunk (`Bytes::slice_ref` makes it a `Bytes` where one must be kept).
pub fn frames(chunk: &[u8]) -> impl Iterator<Item = (u8, &[u8])> + '_ {
    let mut rest = chunk;
    std::iter::from_fn(move || {
        let header = Header::peek(rest, usize::MAX).ok()??;
        let (message, tail) = rest.split_at_checked(header.total_len)?;
        rest = tail;
        Some((header.tag, &message[HEADER_LEN..]))
    })
}

/// The name and value of a ParameterStatus body.
pub fn parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let (name, rest) = cstr(body)?;
    Some((name, cstr(rest)?.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn incomplete_header_is_not_an_error() {
        assert_eq!(Header::peek(b"Q\0\0", 100), Ok(None));
    }

    #[test]
    fn whole_message_is_framed() {
        let m = msg(b'Q', b"select 1\0");
        let h = Header::peek(&m, 100).unwrap().unwrap();
        assert_eq!(
            h,
            Header {
                tag: b'Q',
                total_len: m.len()
            }
        );
        assert_eq!(h.body(&m), Some(&b"select 1\0"[..]));
    }

    #[test]
    fn partial_body_is_reported_as_missing() {
        let m = msg(b'Q', b"select 1\0");
        let h = Header::peek(&m[..7], 100).unwrap().unwrap();
        assert_eq!(h.body(&m[..7]), None);
    }

    #[test]
    fn length_below_four_is_rejected() {
        let err = Header::peek(&[b'Q', 0, 0, 0, 3], 100).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid message length 3 for message type \"Q\""
        );
    }

    #[test]
    fn oversized_message_is_rejected_before_its_body_arrives() {
        let err = Header::peek(&[b'd', 0x7f, 0xff, 0xff, 0xff], 1 << 20).unwrap_err();
        assert!(matches!(err, FrameError::TooLong { tag: b'd', .. }));
    }

    #[test]
    fn unknown_tags_frame_like_any_other() {
        let m = msg(0xfe, b"xyz");
        assert_eq!(Header::peek(&m, 100).unwrap().unwrap().total_len, 8);
    }

    #[test]
    fn error_fields_are_found_by_code() {
        let body = b"SERROR\0C57014\0Mcanceled\0\0";
        assert_eq!(error_field(body, b'C'), Some(&b"57014"[..]));
        assert_eq!(error_field(body, b'D'), None);
        assert_eq!(error_field(b"Sbroken", b'C'), None);
    }

    #[test]
    fn cstr_splits_at_nul() {
        assert_eq!(cstr(b"ab\0cd"), Some(("ab", &b"cd"[..])));
        assert_eq!(cstr(b"ab"), None);
    }

    #[test]
    fn complete_prefix_stops_at_a_partial_message_and_reserves_for_it() {
        let mut buf = BytesMut::from(&b"Z\0\0\0\x05I"[..]);
        buf.extend_from_slice(b"D\0\0\x10\x00");
        assert_eq!(complete_prefix(&mut buf, usize::MAX).unwrap(), 6);
        let mut partial = BytesMut::from(&b"D\0\0\x10\x00"[..]);
        assert_eq!(complete_prefix(&mut partial, usize::MAX).unwrap(), 0);
        assert!(partial.capacity() >= 0x1001);
    }

    #[test]
    fn frames_walks_every_message() {
        let chunk = b"1\0\0\0\x042\0\0\0\x04Z\0\0\0\x05I";
        let tags: Vec<u8> = frames(chunk).map(|(t, _)| t).collect();
        assert_eq!(tags, b"12Z");
    }
}
