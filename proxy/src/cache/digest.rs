//! The normalized text of a statement (literals replaced by `?`, comments dropped, whitespace collapsed),
//! which groups statistics by query shape and which query rules match; and the per-statement hints an
//! application writes in a comment (`/* veneer: ttl=5s */`, `/* veneer: nocache */`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

/// A hint written in the statement's comments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// `/* veneer: nocache */`: forward, never store.
    NoCache,
    /// `/* veneer: ttl=5s */`: cache for this long, whatever the rules say.
    Ttl(Duration),
}

/// Normalized text and hint of one statement text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The statement with literals replaced by `?`.
    pub normalized: String,
    /// The last hint its comments hold.
    pub hint: Option<Hint>,
}

/// Normalizes `sql`; text the tokenizer rejects is kept with collapsed whitespace.
pub fn shape(sql: &str) -> Shape {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return Shape {
            normalized: sql.split_whitespace().collect::<Vec<_>>().join(" "),
            hint: None,
        };
    };
    let mut normalized = String::with_capacity(sql.len());
    let mut hint = None;
    let mut pending_space = false;
    for token in &tokens {
        let text = match token {
            Token::Whitespace(w) => {
                if let Whitespace::MultiLineComment(c)
                | Whitespace::SingleLineComment { comment: c, .. } = w
                {
                    hint = parse_hint(c).or(hint);
                }
                pending_space = true;
                continue;
            }
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DollarQuotedString(_) => "?".to_owned(),
            other => other.to_string(),
        };
        if pending_space && !normalized.is_empty() {
            normalized.push(' ');
        }
        pending_space = false;
        normalized.push_str(&text);
    }
    Shape { normalized, hint }
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
        let a = shape("SELECT *  FROM t\n WHERE id = 42 AND name = 'x' -- trailing");
        let b = shape("SELECT * FROM t WHERE id = 7 AND name = 'yy'");
        assert_eq!(a.normalized, b.normalized);
        assert_eq!(a.normalized, "SELECT * FROM t WHERE id = ? AND name = ?");
        assert_eq!(shape("SELECT $1::int").normalized, "SELECT $1::int");
    }

    #[test]
    fn hints_are_read_from_comments() {
        assert_eq!(
            shape("/* veneer: ttl=5s */ SELECT 1").hint,
            Some(Hint::Ttl(Duration::from_secs(5)))
        );
        assert_eq!(
            shape("SELECT 1 -- veneer: nocache").hint,
            Some(Hint::NoCache)
        );
        assert_eq!(shape("/* veneer: ttl=soon */ SELECT 1").hint, None);
        assert_eq!(shape("/* other */ SELECT 1").hint, None);
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
}
