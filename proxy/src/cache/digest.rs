//! The *shape* of a statement: its text with literals replaced by `?`, comments dropped and whitespace
//! collapsed. Texts of one shape have one plan (the literals cannot change which tables a statement
//! reads, which functions it calls or whether it locks), so plans are memoized by shape: an
//! application that inlines its values (the simple protocol) still parses each query shape once, and a
//! hit computes its shape in a reused buffer without parsing or allocating. Shapes also group the
//! statistics and are what query rules match.
//!
//! Two kinds of text are kept as written because they change the plan: per-statement hints in a
//! comment (`/* veneer: ttl=5s */`, `/* veneer: nocache */`), and the date/time input words ('now',
//! 'today', 'tomorrow', 'yesterday') that Postgres evaluates at execution time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::sql_bytes::{is_ident_start, run, IDENT_CHAR, NUMBER_CHAR};

/// A hint written in the statement's comments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// `/* veneer: nocache */`: forward, never store.
    NoCache,
    /// `/* veneer: ttl=5s */`: cache for this long, whatever the rules say.
    Ttl(Duration),
}

/// String literals whose value depends on when the statement runs.
const TIME_WORDS: &[&[u8]] = &[b"now", b"today", b"tomorrow", b"yesterday"];

/// The shape of one statement text, with where its literals sit: a buffer reused by the caller, so
/// the hit path does not allocate.
#[derive(Debug, Default)]
pub struct Shape {
    /// The shape.
    pub text: Vec<u8>,
    /// Where each literal replaced by `?` sits in the statement text, in order: the values a point
    /// lookup's key is read from.
    pub literals: Vec<std::ops::Range<usize>>,
}

impl Shape {
    /// Computes the shape of `sql`, replacing what the buffer held.
    pub fn of(&mut self, sql: &[u8]) {
        shape_into(sql, &mut self.text, &mut self.literals);
    }
}

/// Writes the shape of `sql` into `out` and the ranges of the literals it replaced into `literals`
/// (both cleared first). One pass over the bytes.
fn shape_into(sql: &[u8], out: &mut Vec<u8>, literals: &mut Vec<std::ops::Range<usize>>) {
    out.clear();
    literals.clear();
    let mut i = 0;
    let mut space = false;
    let push_space = |out: &mut Vec<u8>, space: &mut bool| {
        if *space && !out.is_empty() {
            out.push(b' ');
        }
        *space = false;
    };
    out.reserve(sql.len());
    while i < sql.len() {
        let c = sql[i];
        let rest = &sql[i..];
        let next = rest.get(1).copied();
        match c {
            _ if c.is_ascii_whitespace() => {
                space = true;
                i += 1;
            }
            b'-' if next == Some(b'-') => {
                let end = memchr(b'\n', rest).map_or(sql.len(), |n| i + n);
                keep_hint(&sql[i + 2..end], out, &mut space);
                i = end;
            }
            b'/' if next == Some(b'*') => {
                let end = find(rest, b"*/").map_or(sql.len(), |n| i + n + 2);
                keep_hint(
                    &sql[i + 2..end.saturating_sub(2).max(i + 2)],
                    out,
                    &mut space,
                );
                i = end;
            }
            b'\'' => {
                let end = quoted_end(sql, i, b'\'');
                push_space(out, &mut space);
                let value = &sql[i + 1..end.saturating_sub(1).max(i + 1)];
                let trimmed = value.trim_ascii();
                if TIME_WORDS.iter().any(|w| trimmed.eq_ignore_ascii_case(w)) {
                    out.extend_from_slice(&sql[i..end]);
                } else {
                    out.push(b'?');
                    literals.push(i..end);
                }
                i = end;
            }
            b'"' => {
                let end = quoted_end(sql, i, b'"');
                push_space(out, &mut space);
                out.extend_from_slice(&sql[i..end]);
                i = end;
            }
            b'$' if next.is_some_and(|d| d.is_ascii_digit()) => {
                // A parameter ($1): part of the statement, not a literal.
                let digits = rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
                push_space(out, &mut space);
                out.extend_from_slice(&rest[..1 + digits]);
                i += 1 + digits;
            }
            b'$' if dollar_tag(rest).is_some() => {
                let tag = dollar_tag(rest).expect("checked");
                let body = &rest[tag..];
                let end = find(body, &rest[..tag]).map_or(sql.len(), |n| i + tag + n + tag);
                push_space(out, &mut space);
                out.push(b'?');
                literals.push(i..end);
                i = end;
            }
            b'0'..=b'9' | b'.' if c != b'.' || next.is_some_and(|d| d.is_ascii_digit()) => {
                let len = run(&rest[1..], NUMBER_CHAR);
                push_space(out, &mut space);
                out.push(b'?');
                literals.push(i..i + 1 + len);
                i += 1 + len;
            }
            _ if is_ident_start(c) => {
                let len = 1 + run(&rest[1..], IDENT_CHAR);
                push_space(out, &mut space);
                out.extend_from_slice(&rest[..len]);
                i += len;
            }
            _ => {
                push_space(out, &mut space);
                out.push(c);
                i += 1;
            }
        }
    }
}

/// The shape of `sql` as text, for statistics and rules.
pub fn shape(sql: &[u8]) -> String {
    let mut shape = Shape::default();
    shape.of(sql);
    String::from_utf8_lossy(&shape.text).into_owned()
}

/// The hint a shape holds, if any (the last one wins).
pub fn hint(shape: &str) -> Option<Hint> {
    let mut found = None;
    let mut rest = shape;
    while let Some(at) = rest.find("/*") {
        let after = &rest[at + 2..];
        let end = after.find("*/").unwrap_or(after.len());
        found = parse_hint(&after[..end]).or(found);
        rest = &after[end..];
    }
    found
}

/// Comments are dropped, except hints, which are kept (as /* ... */) because they change the plan.
fn keep_hint(comment: &[u8], out: &mut Vec<u8>, space: &mut bool) {
    *space = true;
    let text = String::from_utf8_lossy(comment);
    if text.trim().starts_with("veneer:") {
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(b"/* ");
        out.extend_from_slice(text.trim().as_bytes());
        out.extend_from_slice(b" */");
    }
}

/// End (exclusive) of a quoted run starting at `start`, where a doubled quote is an escaped one.
fn quoted_end(sql: &[u8], start: usize, quote: u8) -> usize {
    let mut i = start + 1;
    while i < sql.len() {
        if sql[i] == quote {
            if sql.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        // E'...' strings escape quotes with a backslash; treating every backslash as an escape only
        // ever makes a literal end later, which keeps more text in the shape, never less.
        if sql[i] == b'\\' {
            i += 1;
        }
        i += 1;
    }
    sql.len()
}

/// Length of a dollar-quote opening tag (`$$` or `$tag$`) at the front of `rest`.
fn dollar_tag(rest: &[u8]) -> Option<usize> {
    let close = memchr(b'$', &rest[1..])? + 1;
    let tag = &rest[1..close];
    let valid = tag.first().is_none_or(|c| !c.is_ascii_digit())
        && tag.iter().all(|&c| is_ident_start(c) || c.is_ascii_digit());
    valid.then_some(close + 1)
}

fn memchr(byte: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == byte)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_hint(comment: &str) -> Option<Hint> {
    let body = comment.trim().strip_prefix("veneer:")?.trim();
    if body.eq_ignore_ascii_case("nocache") {
        return Some(Hint::NoCache);
    }
    let ttl = body.strip_prefix("ttl=")?;
    humantime::parse_duration(ttl.trim())
        .ok()
        .filter(|d| !d.is_zero())
        .map(Hint::Ttl)
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters; ASCII case is ignored.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi].eq_ignore_ascii_case(&t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Counters of one query shape, updated on the hit path with relaxed atomic adds only.
#[derive(Debug)]
pub struct Digest {
    /// The normalized text.
    pub text: String,
    hits: AtomicU64,
    misses: AtomicU64,
    hit_nanos: AtomicU64,
    miss_nanos: AtomicU64,
    bytes_served: AtomicU64,
}

/// A copy of a digest's counters, for the admin view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DigestStats {
    /// Answers served from the cache.
    pub hits: u64,
    /// Answers fetched upstream (and stored when they qualified).
    pub misses: u64,
    /// Total time of hits, from the request to the reply queued.
    pub hit_nanos: u64,
    /// Total upstream time of misses.
    pub miss_nanos: u64,
    /// Bytes of replies served from the cache.
    pub bytes_served: u64,
}

impl Digest {
    /// Counters for the shape `text`, all zero.
    pub fn new(text: String) -> Digest {
        Digest {
            text,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            hit_nanos: AtomicU64::new(0),
            miss_nanos: AtomicU64::new(0),
            bytes_served: AtomicU64::new(0),
        }
    }

    /// Counts a hit that took `elapsed` and served `bytes`.
    pub fn hit(&self, elapsed: Duration, bytes: usize) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.hit_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        self.bytes_served.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts a miss whose upstream round trip took `elapsed`.
    pub fn miss(&self, elapsed: Duration) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.miss_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn stats(&self) -> DigestStats {
        DigestStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            hit_nanos: self.hit_nanos.load(Ordering::Relaxed),
            miss_nanos: self.miss_nanos.load(Ordering::Relaxed),
            bytes_served: self.bytes_served.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_comments_and_spacing_are_normalized_away() {
        let a = shape(b"SELECT *  FROM t1\n WHERE id = 42 AND name = 'x''y' -- trailing");
        let b = shape(b"SELECT * FROM t1 WHERE id = 7 AND name = 'yy'");
        assert_eq!(a, b);
        assert_eq!(a, "SELECT * FROM t1 WHERE id = ? AND name = ?");
        assert_eq!(
            shape(b"SELECT $1::int, 1.5e3, .5, $$a 'b'$$"),
            "SELECT $1::int, ?, ?, ?"
        );
        assert_eq!(shape(b"SELECT \"Odd 1\" FROM x"), "SELECT \"Odd 1\" FROM x");
    }

    #[test]
    fn time_words_and_hints_stay_in_the_shape() {
        assert_eq!(
            shape(b"SELECT 'now'::timestamptz"),
            "SELECT 'now'::timestamptz"
        );
        assert_eq!(shape(b"SELECT ' Today '::date"), "SELECT ' Today '::date");
        let hinted = shape(b"/* veneer: ttl=5s */ SELECT 1");
        assert_eq!(hinted, "/* veneer: ttl=5s */ SELECT ?");
        assert_eq!(hint(&hinted), Some(Hint::Ttl(Duration::from_secs(5))));
        assert_eq!(
            hint(&shape(b"SELECT 1 -- veneer: nocache")),
            Some(Hint::NoCache)
        );
        assert_eq!(hint(&shape(b"/* veneer: ttl=soon */ SELECT 1")), None);
        assert_eq!(hint(&shape(b"/* other */ SELECT 1")), None);
    }

    #[test]
    fn a_reused_buffer_gives_the_same_shape_and_finds_the_literals() {
        let mut buf = Shape::default();
        buf.of(b"SELECT v FROM t WHERE id = 1");
        let sql = b"SELECT v FROM t WHERE id = 22 AND name = 'it''s' AND d = 'now'";
        buf.of(sql);
        assert_eq!(
            buf.text,
            b"SELECT v FROM t WHERE id = ? AND name = ? AND d = 'now'"
        );
        let literals: Vec<&[u8]> = buf.literals.iter().map(|r| &sql[r.clone()]).collect();
        assert_eq!(literals, [&b"22"[..], b"'it''s'"]);
    }

    #[test]
    fn globs_match_any_run_and_ignore_case() {
        assert!(glob_matches(
            "select * from t where id = ?",
            "SELECT * FROM t WHERE id = ?"
        ));
        assert!(glob_matches(
            "SELECT*FROM settings*",
            "SELECT a FROM settings WHERE x = ?"
        ));
        assert!(!glob_matches("SELECT * FROM t", "SELECT * FROM tt"));
        assert!(glob_matches("*", ""));
    }

    #[test]
    fn unterminated_quotes_and_tags_do_not_panic() {
        for text in [
            &b"SELECT 'abc"[..],
            b"SELECT $tag$ abc",
            b"/* open",
            b"SELECT \"x",
            b"$",
            b"'\\",
        ] {
            shape(text);
        }
    }
}
