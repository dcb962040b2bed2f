//! Byte classes of SQL text, shared by the two passes every forwarded statement gets: the session's
//! scan for state changes ([`crate::session`]) and the cache's shaping ([`crate::cache::digest`]).
//! Looked up in one table rather than computed byte by byte.

/// Bytes that may start an identifier or keyword (non-ASCII bytes count, as in Postgres).
const IDENT_START: u8 = 1;
/// Bytes that may continue one.
pub const IDENT_CHAR: u8 = 2;
/// Bytes that may continue a numeric literal (digits, letters of exponents and suffixes, `.`, `_`).
pub const NUMBER_CHAR: u8 = 4;

const TABLE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            table[c] |= IDENT_START | IDENT_CHAR;
        }
        if b.is_ascii_digit() || b == b'$' {
            table[c] |= IDENT_CHAR;
        }
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' {
            table[c] |= NUMBER_CHAR;
        }
        c += 1;
    }
    table
};

/// Whether `byte` is in `class`.
fn is(byte: u8, class: u8) -> bool {
    TABLE[byte as usize] & class != 0
}

/// Whether `byte` may start an identifier or keyword.
pub fn is_ident_start(byte: u8) -> bool {
    is(byte, IDENT_START)
}

/// Whether `byte` may continue an identifier or keyword.
pub fn is_ident_char(byte: u8) -> bool {
    is(byte, IDENT_CHAR)
}

/// Length of the run of bytes of class `class` at the front of `bytes`.
pub fn run(bytes: &[u8], class: u8) -> usize {
    bytes
        .iter()
        .position(|&b| !is(b, class))
        .unwrap_or(bytes.len())
}
