//! A lexical scan of SQL text: enough to split a simple-protocol query string into statements and to
//! tell which of them change the session's own state (SET, RESET, DISCARD, DEALLOCATE, temp tables,
//! set_config, procedures). It respects quotes, dollar quotes and comments, and never parses.
//!
//! The scan runs on every simple query the session forwards, so it is one pass over the bytes with no
//! allocation beyond the statement list. Anything it cannot follow is flagged `opaque`, which makes the
//! session's settings unshareable rather than wrongly shared.

use std::ops::Range;

/// How many leading words of a statement are kept: enough for `SET SESSION AUTHORIZATION`,
/// `CREATE GLOBAL TEMPORARY TABLE` and `DEALLOCATE PREPARE name`.
const LEADING_WORDS: usize = 4;

/// One statement of a query string, with what the session needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Byte range of the statement in the query string, without the terminating semicolon.
    pub span: Range<usize>,
    /// The first words, upper-cased; quoted identifiers are kept as written.
    pub words: Vec<String>,
    /// What running it does to session state.
    pub effect: Effect,
}

/// The session-state effect of a statement, decided from its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing the session tracks.
    None,
    /// SET / RESET / DISCARD (other than the cases below): changes settings.
    Setting {
        /// `SET LOCAL`: lasts only to the end of the transaction.
        local: bool,
    },
    /// `RESET ALL` or `DISCARD ALL`: settings back to the session's defaults.
    ResetAll,
    /// `DISCARD ALL` also drops prepared statements and temp tables (it is a ResetAll too).
    DiscardAll,
    /// `DISCARD TEMP`: temp tables dropped.
    DiscardTemp,
    /// `DEALLOCATE name`, or every statement when `None`. The name is upper-cased (quoted names kept as
    /// written), so callers match it case-insensitively: forgetting a statement that still exists only
    /// costs caching, never correctness.
    Deallocate(Option<String>),
    /// Creates a temporary object (CREATE TEMP …, SELECT … INTO TEMP, pg_temp).
    CreatesTemp,
    /// Ends or rewinds a transaction in a way settings history must follow.
    Transaction(TxControl),
    /// Runs code whose effect on settings cannot be seen (set_config, DO, CALL).
    Opaque,
}

/// Transaction control statements that matter to the settings history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxControl {
    /// ROLLBACK TO SAVEPOINT: undoes part of a transaction the history cannot locate.
    RollbackToSavepoint,
    /// PREPARE TRANSACTION: the transaction leaves the session.
    PrepareTransaction,
}

/// Splits `sql` into statements and classifies each; empty statements are skipped, as Postgres does.
/// Works on bytes: the client's encoding need not be UTF-8, and every keyword that matters is ASCII.
pub fn scan(sql: &[u8]) -> Vec<Statement> {
    let mut scanner = Scanner::new(sql);
    let mut out = Vec::new();
    while let Some(stmt) = scanner.next_statement() {
        out.push(stmt);
    }
    out
}

struct Scanner<'a> {
    sql: &'a [u8],
    pos: usize,
}

/// What one statement's scan gathered before classification.
#[derive(Default)]
struct Gathered {
    start: Option<usize>,
    end: usize,
    words: Vec<String>,
    mentions_temp: bool,
    mentions_set_config: bool,
}

impl<'a> Scanner<'a> {
    fn new(sql: &'a [u8]) -> Self {
        Scanner { sql, pos: 0 }
    }

    fn next_statement(&mut self) -> Option<Statement> {
        let bytes = self.sql;
        let mut g = Gathered::default();
        while self.pos < bytes.len() {
            let start = self.pos;
            let b = bytes[self.pos];
            match b {
                b';' => {
                    self.pos += 1;
                    if g.start.is_some() {
                        break;
                    }
                    continue;
                }
                b'-' if bytes.get(self.pos + 1) == Some(&b'-') => {
                    self.skip_line_comment();
                    continue;
                }
                b'/' if bytes.get(self.pos + 1) == Some(&b'*') => {
                    self.skip_block_comment();
                    continue;
                }
                c if c.is_ascii_whitespace() => {
                    self.pos += 1;
                    continue;
                }
                b'\'' => self.skip_string(false),
                b'"' => {
                    self.skip_quoted_ident();
                    let inner = bytes
                        .get(start + 1..self.pos.saturating_sub(1))
                        .unwrap_or(b"");
                    g.note_word(String::from_utf8_lossy(inner).into_owned());
                }
                b'$' if self.dollar_tag_len().is_some() => self.skip_dollar_quoted(),
                c if is_ident_start(c) => {
                    let word = self.take_word();
                    let escape =
                        word.eq_ignore_ascii_case(b"e") && bytes.get(self.pos) == Some(&b'\'');
                    if escape {
                        self.skip_string(true);
                    } else {
                        g.note_word(String::from_utf8_lossy(word).to_ascii_uppercase());
                    }
                }
                _ => self.pos += 1,
            }
            g.start.get_or_insert(start);
            g.end = self.pos;
        }
        let start = g.start?;
        let effect = classify(&g);
        Some(Statement {
            span: start..g.end,
            words: g.words,
            effect,
        })
    }

    fn take_word(&mut self) -> &'a [u8] {
        let start = self.pos;
        while self.pos < self.sql.len() && is_ident_char(self.sql[self.pos]) {
            self.pos += 1;
        }
        &self.sql[start..self.pos]
    }

    fn skip_line_comment(&mut self) {
        let bytes = self.sql;
        while self.pos < bytes.len() && bytes[self.pos] != b'\n' {
            self.pos += 1;
        }
    }

    fn skip_block_comment(&mut self) {
        let bytes = self.sql;
        let mut depth = 0usize;
        while self.pos < bytes.len() {
            if bytes[self.pos..].starts_with(b"/*") {
                depth += 1;
                self.pos += 2;
            } else if bytes[self.pos..].starts_with(b"*/") {
                depth -= 1;
                self.pos += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.pos += 1;
            }
        }
    }

    /// Skips a '…' literal starting at the quote; `backslash_escapes` for E'…' strings.
    fn skip_string(&mut self, backslash_escapes: bool) {
        let bytes = self.sql;
        self.pos += 1;
        while self.pos < bytes.len() {
            match bytes[self.pos] {
                b'\\' if backslash_escapes => self.pos += 2,
                b'\'' if bytes.get(self.pos + 1) == Some(&b'\'') => self.pos += 2,
                b'\'' => {
                    self.pos += 1;
                    return;
                }
                _ => self.pos += 1,
            }
        }
        self.pos = self.pos.min(bytes.len());
    }

    fn skip_quoted_ident(&mut self) {
        let bytes = self.sql;
        self.pos += 1;
        while self.pos < bytes.len() {
            if bytes[self.pos] == b'"' {
                if bytes.get(self.pos + 1) == Some(&b'"') {
                    self.pos += 2;
                    continue;
                }
                self.pos += 1;
                return;
            }
            self.pos += 1;
        }
    }

    /// Length of a `$tag$` opener at the current position (`$1` is a parameter, not a tag).
    fn dollar_tag_len(&self) -> Option<usize> {
        let rest = &self.sql[self.pos + 1..];
        if rest.first().is_some_and(|c| c.is_ascii_digit()) {
            return None;
        }
        let close = rest.iter().position(|&c| !is_ident_char(c) || c == b'$')?;
        (rest[close] == b'$').then_some(close + 2)
    }

    fn skip_dollar_quoted(&mut self) {
        let len = self.dollar_tag_len().unwrap_or(2);
        let tag = &self.sql[self.pos..self.pos + len];
        let body_start = self.pos + len;
        let rest = &self.sql[body_start..];
        self.pos = match rest.windows(tag.len()).position(|w| w == tag) {
            Some(at) => body_start + at + tag.len(),
            None => self.sql.len(),
        };
    }
}

impl Gathered {
    fn note_word(&mut self, word: String) {
        match word.as_str() {
            "TEMP" | "TEMPORARY" | "PG_TEMP" => self.mentions_temp = true,
            "SET_CONFIG" => self.mentions_set_config = true,
            _ => {}
        }
        if self.words.len() < LEADING_WORDS {
            self.words.push(word);
        }
    }
}

fn classify(g: &Gathered) -> Effect {
    let w = |i: usize| g.words.get(i).map(String::as_str).unwrap_or("");
    if g.mentions_set_config {
        return Effect::Opaque;
    }
    match (w(0), w(1)) {
        ("SET", "LOCAL") => Effect::Setting { local: true },
        ("SET", "CONSTRAINTS") => Effect::None,
        ("SET", _) => Effect::Setting { local: false },
        ("RESET", "ALL") => Effect::ResetAll,
        ("RESET", _) => Effect::Setting { local: false },
        ("DISCARD", "ALL") => Effect::DiscardAll,
        ("DISCARD", "TEMP" | "TEMPORARY") => Effect::DiscardTemp,
        ("DISCARD", _) => Effect::None,
        ("DEALLOCATE", next) => {
            let name = if next == "PREPARE" { w(2) } else { next };
            Effect::Deallocate((name != "ALL").then(|| name.to_owned()))
        }
        ("DO" | "CALL", _) => Effect::Opaque,
        ("ROLLBACK" | "ABORT", _) if g.words.iter().any(|x| x == "TO") => {
            Effect::Transaction(TxControl::RollbackToSavepoint)
        }
        ("PREPARE", "TRANSACTION") => Effect::Transaction(TxControl::PrepareTransaction),
        ("CREATE" | "SELECT" | "WITH", _) if g.mentions_temp => Effect::CreatesTemp,
        _ => Effect::None,
    }
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effects(sql: &str) -> Vec<Effect> {
        scan(sql.as_bytes()).into_iter().map(|s| s.effect).collect()
    }

    #[test]
    fn splits_on_semicolons_outside_quotes_and_comments() {
        let sql = "select ';' ; set x = 'a;b' /* ; */ -- ;\n; ;select $$;$$, $f$ ; $f$";
        let stmts = scan(sql.as_bytes());
        assert_eq!(stmts.len(), 3);
        assert_eq!(&sql[stmts[0].span.clone()], "select ';'");
        assert_eq!(stmts[1].effect, Effect::Setting { local: false });
        assert_eq!(&sql[stmts[2].span.clone()], "select $$;$$, $f$ ; $f$");
    }

    #[test]
    fn escape_strings_and_nested_comments() {
        let stmts = scan(br"select E'\';' ; /* a /* b; */ c; */ select 1");
        assert_eq!(stmts.len(), 2);
    }

    #[test]
    fn dollar_parameters_are_not_quotes() {
        assert_eq!(scan(b"select $1; select $2").len(), 2);
    }

    #[test]
    fn setting_statements() {
        assert_eq!(
            effects("SET LOCAL search_path = x; reset all; Reset timezone; set constraints all deferred"),
            vec![
                Effect::Setting { local: true },
                Effect::ResetAll,
                Effect::Setting { local: false },
                Effect::None
            ]
        );
        assert_eq!(
            effects("select set_config('a','b',false)"),
            vec![Effect::Opaque]
        );
        assert_eq!(
            effects("do $$ begin perform 1; end $$"),
            vec![Effect::Opaque]
        );
    }

    #[test]
    fn discard_and_deallocate() {
        assert_eq!(
            effects("discard all; discard temp; discard plans; deallocate all; deallocate prepare S1; deallocate \"Q\""),
            vec![
                Effect::DiscardAll,
                Effect::DiscardTemp,
                Effect::None,
                Effect::Deallocate(None),
                Effect::Deallocate(Some("S1".into())),
                Effect::Deallocate(Some("Q".into())),
            ]
        );
    }

    #[test]
    fn temp_objects() {
        assert_eq!(
            effects("create temp table t(a int); create temporary view v as select 1; select * into temp t2 from t; create table pg_temp.x(a int); create table tempo(a int)"),
            vec![
                Effect::CreatesTemp,
                Effect::CreatesTemp,
                Effect::CreatesTemp,
                Effect::CreatesTemp,
                Effect::None
            ]
        );
    }

    #[test]
    fn savepoint_rollback_is_told_apart() {
        assert_eq!(
            effects("rollback to savepoint a; rollback; prepare transaction 'x'"),
            vec![
                Effect::Transaction(TxControl::RollbackToSavepoint),
                Effect::None,
                Effect::Transaction(TxControl::PrepareTransaction)
            ]
        );
    }

    #[test]
    fn unterminated_input_does_not_panic() {
        for sql in [
            "select 'abc",
            "select \"abc",
            "select $q$ abc",
            "/* abc",
            "select E'\\",
            "$",
            "$a",
            "\"é",
        ] {
            let _ = scan(sql.as_bytes());
        }
        let _ = scan(&[b'"', 0xc3, b'\'', 0xff, b'E', b'\'', b'\\', 0xc3]);
    }
}
