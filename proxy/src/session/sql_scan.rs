//! A lexical scan of SQL text: enough to split a simple-protocol query string into statements and to
//! tell which of them change the session's own state (SET, RESET, DISCARD, DEALLOCATE, temp tables,
//! set_config, procedures). It respects quotes, dollar quotes and comments, and never parses.
//!
//! The scan runs on every simple query the session forwards, so it is one pass over the bytes that
//! allocates nothing: words are compared where they lie, and statements are yielded one at a time.
//! Anything it cannot follow is flagged `opaque`, which makes the session's settings unshareable
//! rather than wrongly shared.

use std::ops::Range;

use crate::sql_bytes::{self, is_ident_char, is_ident_start};

/// How many leading words of a statement are kept: enough for `SET SESSION AUTHORIZATION`,
/// `CREATE GLOBAL TEMPORARY TABLE` and `DEALLOCATE PREPARE name`.
const LEADING_WORDS: usize = 4;

/// One statement of a query string, with what the session needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Byte range of the statement in the query string, without the terminating semicolon.
    pub span: Range<usize>,
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
pub fn scan(sql: &[u8]) -> impl Iterator<Item = Statement> + '_ {
    let mut scanner = Scanner { sql, pos: 0 };
    let plain = scanner.plain_statement();
    plain
        .into_iter()
        .chain(std::iter::from_fn(move || scanner.next_statement()))
}

/// Whether `sql` is one statement that mentions neither temp objects nor set_config and ends in no
/// comment: no `;` but a last one, no `--` or `/*`, and no `temp` or `set_config` anywhere, in any
/// case. Checked in one quick pass, it lets the scan stop after the leading words of most queries
/// (see [`Scanner::plain_statement`]).
///
/// The pass reads eight bytes at a time and looks closer only at `;`, `-`, `/`, `p` and `g` (in
/// either case). `temp` and `set_config` are recognised by their last letters, which are rarer in
/// queries than their first ones, `t` and `s`.
fn is_plain(sql: &[u8]) -> bool {
    let mut chunks = sql.chunks_exact(8);
    let mut at = 0;
    for chunk in chunks.by_ref() {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks of eight"));
        if !plain_where(sql, at, word) {
            return false;
        }
        at += 8;
    }
    // The tail, padded with zero bytes, which match nothing.
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    plain_where(sql, at, u64::from_le_bytes(tail))
}

/// Whether none of the eight bytes `word`, read at `at` in `sql`, is part of a pattern
/// [`is_plain`] rules out.
fn plain_where(sql: &[u8], at: usize, word: u64) -> bool {
    let mut hits = pattern_ends(word);
    while hits != 0 {
        if !plain_at(sql, at + (hits.trailing_zeros() / 8) as usize) {
            return false;
        }
        hits &= hits - 1;
    }
    true
}

/// The high bit of each byte of `word` at which [`is_plain`] looks closer. Setting bit 5
/// of every byte folds upper-case letters onto lower-case ones and leaves `;`, `-` and `/` as they
/// are (it also folds a few control bytes onto them, which [`plain_at`] then finds harmless).
fn pattern_ends(word: u64) -> u64 {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const LOW7: u64 = ONES * 0x7f;
    // High bit set exactly in the bytes of `x` that are zero: no borrow crosses bytes.
    let zero_bytes = |x: u64| !(((x & LOW7) + LOW7) | x | LOW7);
    let folded = word | (ONES * 0x20);
    [b';', b'-', b'/', b'p', b'g'].iter().fold(0, |hits, &b| {
        hits | zero_bytes(folded ^ (ONES * u64::from(b)))
    })
}

/// Whether the byte at `at` is part of none of the patterns [`is_plain`] rules out: a `;` is judged
/// by what follows it, a `/` as the start of `/*`, the other bytes as the ends of their patterns.
fn plain_at(sql: &[u8], at: usize) -> bool {
    let ends = |word: &[u8]| {
        at + 1 >= word.len() && sql[at + 1 - word.len()..=at].eq_ignore_ascii_case(word)
    };
    match sql[at] {
        b';' => sql[at + 1..].iter().all(u8::is_ascii_whitespace),
        b'-' => !ends(b"--"),
        b'/' => !sql[at + 1..].starts_with(b"*"),
        b'p' | b'P' => !ends(b"temp"),
        b'g' | b'G' => !ends(b"set_config"),
        _ => true,
    }
}

struct Scanner<'a> {
    sql: &'a [u8],
    pos: usize,
}

/// A word of a statement, where it lies in the query string.
#[derive(Debug, Default, Clone, Copy)]
struct Word<'a> {
    /// The word as written (a quoted identifier without its quotes).
    text: &'a [u8],
    /// A quoted identifier: compared exactly, never as a keyword.
    quoted: bool,
}

impl Word<'_> {
    /// Whether the word is the keyword `keyword`: unquoted, in any case.
    fn is(&self, keyword: &str) -> bool {
        !self.quoted && self.text.eq_ignore_ascii_case(keyword.as_bytes())
    }

    /// Whether the word names the identifier `ident` (given in lower case): unquoted in any case, or
    /// quoted exactly.
    fn names(&self, ident: &str) -> bool {
        if self.quoted {
            self.text == ident.as_bytes()
        } else {
            self.text.eq_ignore_ascii_case(ident.as_bytes())
        }
    }

    /// The word as a statement name: upper-cased unless quoted.
    fn name(&self) -> String {
        let name = String::from_utf8_lossy(self.text);
        if self.quoted {
            name.into_owned()
        } else {
            name.to_ascii_uppercase()
        }
    }
}

/// What one statement's scan gathered before classification.
#[derive(Default)]
struct Gathered<'a> {
    start: Option<usize>,
    end: usize,
    words: [Word<'a>; LEADING_WORDS],
    word_count: usize,
    mentions_temp: bool,
    mentions_set_config: bool,
}

impl<'a> Scanner<'a> {
    /// The whole text as one statement without effect, when that is clear from its leading words alone:
    /// the text is [plain](is_plain), so only its leading words can give it an effect, and most often
    /// the first word settles it. Then the rest of the statement is not walked, and its span ends
    /// before the text's trailing blanks and `;`. `None` otherwise, with the scanner back at the start.
    fn plain_statement(&mut self) -> Option<Statement> {
        if !is_plain(self.sql) {
            return None;
        }
        let start = match self.first_word() {
            Some((start, word))
                if !FIRST_WORDS_WITH_EFFECT
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(word)) =>
            {
                start
            }
            _ => {
                let g = self.gather(true);
                match (g.start, classify(&g)) {
                    (Some(start), Effect::None) => start,
                    _ => {
                        self.pos = 0;
                        return None;
                    }
                }
            }
        };
        let text = self.sql.trim_ascii_end();
        let end = text
            .strip_suffix(b";")
            .unwrap_or(text)
            .trim_ascii_end()
            .len();
        self.pos = self.sql.len();
        Some(Statement {
            span: start..end.max(start),
            effect: Effect::None,
        })
    }

    /// Where the text's first word starts, and the word, when the text starts with an unquoted word
    /// that is not the `E` of an escape string.
    fn first_word(&self) -> Option<(usize, &'a [u8])> {
        let sql = self.sql;
        let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
        if !is_ident_start(sql[start]) {
            return None;
        }
        let end = start + sql_bytes::run(&sql[start..], sql_bytes::IDENT_CHAR);
        (sql.get(end) != Some(&b'\'')).then(|| (start, &sql[start..end]))
    }

    fn next_statement(&mut self) -> Option<Statement> {
        let g = self.gather(false);
        let start = g.start?;
        let effect = classify(&g);
        Some(Statement {
            span: start..g.end,
            effect,
        })
    }

    /// Walks one statement from the current position, to its end or, with `leading_only`, until its
    /// leading words are known.
    fn gather(&mut self, leading_only: bool) -> Gathered<'a> {
        let bytes = self.sql;
        let mut g = Gathered::default();
        while self.pos < bytes.len() {
            if leading_only && g.word_count == LEADING_WORDS {
                break;
            }
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
                    g.note_word(Word {
                        text: inner,
                        quoted: true,
                    });
                }
                b'$' if self.dollar_tag_len().is_some() => self.skip_dollar_quoted(),
                c if is_ident_start(c) => {
                    let word = self.take_word();
                    let escape =
                        word.eq_ignore_ascii_case(b"e") && bytes.get(self.pos) == Some(&b'\'');
                    if escape {
                        self.skip_string(true);
                    } else {
                        g.note_word(Word {
                            text: word,
                            quoted: false,
                        });
                    }
                }
                _ => self.pos += 1,
            }
            g.start.get_or_insert(start);
            g.end = self.pos;
        }
        g
    }

    fn take_word(&mut self) -> &'a [u8] {
        let rest = &self.sql[self.pos..];
        let len = sql_bytes::run(rest, sql_bytes::IDENT_CHAR);
        self.pos += len;
        &rest[..len]
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

impl<'a> Gathered<'a> {
    fn note_word(&mut self, word: Word<'a>) {
        if word.is("TEMP") || word.is("TEMPORARY") || word.names("pg_temp") {
            self.mentions_temp = true;
        } else if word.names("set_config") {
            self.mentions_set_config = true;
        }
        if let Some(slot) = self.words.get_mut(self.word_count) {
            *slot = word;
            self.word_count += 1;
        }
    }

    /// The `i`th leading word; an empty word past the statement's end.
    fn word(&self, i: usize) -> Word<'a> {
        self.words[..self.word_count]
            .get(i)
            .copied()
            .unwrap_or_default()
    }
}

/// The first words [`classify`] gives an effect to without a mention of temp objects or set_config:
/// a statement that starts with any other word and mentions neither has none.
const FIRST_WORDS_WITH_EFFECT: [&[u8]; 9] = [
    b"SET",
    b"RESET",
    b"DISCARD",
    b"DEALLOCATE",
    b"DO",
    b"CALL",
    b"ROLLBACK",
    b"ABORT",
    b"PREPARE",
];

fn classify(g: &Gathered) -> Effect {
    if g.mentions_set_config {
        return Effect::Opaque;
    }
    let (first, second) = (g.word(0), g.word(1));
    let any = |keywords: &[&str]| keywords.iter().any(|k| first.is(k));
    if first.is("SET") {
        if second.is("LOCAL") {
            Effect::Setting { local: true }
        } else if second.is("CONSTRAINTS") {
            Effect::None
        } else {
            Effect::Setting { local: false }
        }
    } else if first.is("RESET") {
        if second.is("ALL") {
            Effect::ResetAll
        } else {
            Effect::Setting { local: false }
        }
    } else if first.is("DISCARD") {
        if second.is("ALL") {
            Effect::DiscardAll
        } else if second.is("TEMP") || second.is("TEMPORARY") {
            Effect::DiscardTemp
        } else {
            Effect::None
        }
    } else if first.is("DEALLOCATE") {
        let name = if second.is("PREPARE") {
            g.word(2)
        } else {
            second
        };
        Effect::Deallocate((!name.is("ALL")).then(|| name.name()))
    } else if any(&["DO", "CALL"]) {
        Effect::Opaque
    } else if any(&["ROLLBACK", "ABORT"]) && g.words[..g.word_count].iter().any(|w| w.is("TO")) {
        Effect::Transaction(TxControl::RollbackToSavepoint)
    } else if first.is("PREPARE") && second.is("TRANSACTION") {
        Effect::Transaction(TxControl::PrepareTransaction)
    } else if any(&["CREATE", "SELECT", "WITH"]) && g.mentions_temp {
        Effect::CreatesTemp
    } else {
        Effect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan without its quick path.
    fn walked(sql: &[u8]) -> Vec<Statement> {
        let mut scanner = Scanner { sql, pos: 0 };
        std::iter::from_fn(|| scanner.next_statement()).collect()
    }

    #[test]
    fn the_quick_path_agrees_with_the_full_walk() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42 ; ",
            "set x = 1;",
            "select 1; ;",
            "  select 1  ",
            "UPDATE t SET a = 1 WHERE b = 'x'",
            "set search_path = x",
            "SET LOCAL x = 1 ",
            "discard all",
            "deallocate prepare \"S1\"",
            "rollback to savepoint s",
            "select * into temp t from u",
            "select set_config('a', 'b', false)",
            "create table \"pg_temp\".x()",
            "select 1 -- set x = 1",
            "select $tag$ ; $tag$",
            "select E'\\'' , 'a''b' from x where y = $1",
            "",
            "   ",
            "/* only a comment */",
        ] {
            let quick: Vec<Statement> = scan(sql.as_bytes()).collect();
            assert_eq!(quick, walked(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn the_quick_path_agrees_with_the_full_walk_on_token_noise() {
        const TOKENS: [&str; 31] = [
            "select",
            "do",
            "Call",
            "reset",
            "abort",
            "prepare",
            "transaction",
            "E",
            "SET",
            "local",
            "all",
            "to",
            "rollback",
            "discard",
            "deallocate",
            "x",
            "1",
            " ",
            "\n",
            "'",
            "\"",
            "$",
            "$q$",
            "E'",
            "\\",
            "temp",
            "Set_Config(",
            "pg_TEMP",
            ";",
            "--",
            "/*",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            let mut sql = String::new();
            for _ in 0..8 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                sql.push_str(TOKENS[(state % TOKENS.len() as u64) as usize]);
                sql.push(' ');
            }
            let effects = |v: Vec<Statement>| v.into_iter().map(|s| s.effect).collect::<Vec<_>>();
            let quick = effects(scan(sql.as_bytes()).collect());
            assert_eq!(quick, effects(walked(sql.as_bytes())), "{sql:?}");
        }
    }

    /// `is_plain` by its definition, a byte at a time.
    fn plain_by_definition(sql: &[u8]) -> bool {
        let lower = sql.to_ascii_lowercase();
        let has = |pattern: &[u8]| lower.windows(pattern.len()).any(|w| w == pattern);
        let after_semicolon = lower
            .iter()
            .position(|&b| b == b';')
            .map(|i| &lower[i + 1..]);
        after_semicolon.is_none_or(|rest| rest.iter().all(u8::is_ascii_whitespace))
            && !["--", "/*", "temp", "set_config"]
                .iter()
                .any(|p| has(p.as_bytes()))
    }

    #[test]
    fn the_plain_check_finds_each_pattern_at_every_offset_in_either_case() {
        let patterns = [
            "--",
            "/*",
            "temp",
            "TeMP",
            "set_config",
            "SET_CONFIG",
            "; x",
            ";\r\n",
        ];
        for pattern in patterns {
            for before in 0..20 {
                for after in 0..10 {
                    let sql = format!("{}{pattern}{}", "a".repeat(before), "b".repeat(after));
                    let sql = sql.as_bytes();
                    assert_eq!(is_plain(sql), plain_by_definition(sql), "{sql:?}");
                }
            }
        }
    }

    #[test]
    fn the_plain_check_ignores_bytes_that_fold_onto_pattern_ends() {
        // \r, ESC, 0x0f, P and G fold onto `-`, `;`, `/`, `p` and `g`; none of these makes a pattern.
        for sql in [
            "select 1\r\n",
            "a\x1bb",
            "a\x0fb",
            "SELECT P, G FROM pgbench_accounts",
            "x-\r-",
        ] {
            assert!(is_plain(sql.as_bytes()), "{sql:?}");
        }
    }

    fn effects(sql: &str) -> Vec<Effect> {
        scan(sql.as_bytes()).map(|s| s.effect).collect()
    }

    #[test]
    fn splits_on_semicolons_outside_quotes_and_comments() {
        let sql = "select ';' ; set x = 'a;b' /* ; */ -- ;\n; ;select $$;$$, $f$ ; $f$";
        let stmts: Vec<Statement> = scan(sql.as_bytes()).collect();
        assert_eq!(stmts.len(), 3);
        assert_eq!(&sql[stmts[0].span.clone()], "select ';'");
        assert_eq!(stmts[1].effect, Effect::Setting { local: false });
        assert_eq!(&sql[stmts[2].span.clone()], "select $$;$$, $f$ ; $f$");
    }

    #[test]
    fn escape_strings_and_nested_comments() {
        assert_eq!(
            scan(br"select E'\';' ; /* a /* b; */ c; */ select 1").count(),
            2
        );
    }

    #[test]
    fn dollar_parameters_are_not_quotes() {
        assert_eq!(scan(b"select $1; select $2").count(), 2);
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
            effects("discard all; discard temp; discard plans; deallocate all; deallocate prepare S1; deallocate \"Q\"; deallocate \"all\""),
            vec![
                Effect::DiscardAll,
                Effect::DiscardTemp,
                Effect::None,
                Effect::Deallocate(None),
                Effect::Deallocate(Some("S1".into())),
                Effect::Deallocate(Some("Q".into())),
                Effect::Deallocate(Some("all".into())),
            ]
        );
    }

    #[test]
    fn temp_objects() {
        assert_eq!(
            effects("create temp table t(a int); create temporary view v as select 1; select * into temp t2 from t; create table pg_temp.x(a int); create table \"pg_temp\".y(a int); create table tempo(a int)"),
            vec![
                Effect::CreatesTemp,
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
            let _ = scan(sql.as_bytes()).count();
        }
        let _ = scan(&[b'"', 0xc3, b'\'', 0xff, b'E', b'\'', b'\\', 0xc3]).count();
    }
}
