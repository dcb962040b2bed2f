//! A decoder for the output of `test_decoding`, the logical decoding plugin that ships with every
//! PostgreSQL (in contrib) and that managed services offer. Veneer follows writes through it by
//! default because it needs no publication: a publication that publishes updates and deletes makes
//! Postgres refuse UPDATE and DELETE on every table it covers that has no replica identity, for
//! every client of the database, which a cache must never do. test_decoding also reports changes to
//! such tables (as table-level changes, since their old rows are not logged).
//!
//! Each XLogData carries one line, with the options Veneer asks for (`include-xids '0'`,
//! `include-timestamp '1'`):
//!
//! ```text
//! BEGIN
//! table public.accounts: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:2 note[text]:'it''s'
//! table public.a, public.b: TRUNCATE: (no-flags)
//! message: transactional: 1 prefix: veneer.ddl, sz: 7 content:orders
//! COMMIT (at 2026-12-06 00:28:06.414093+00)
//! ```
//!
//! Names are quoted as `quote_identifier` does, values as their type's text output (numbers and
//! booleans bare, everything else in single quotes with quotes doubled), `null`, or
//! `unchanged-toast-datum`. Old images (`old-key:` and deletes) leave NULL columns out. The output
//! does not say which columns key a table's rows, so [`Decoder`] asks a [`KeySource`] (the proxy's
//! catalog, the same one point lookups are planned from) and checks its answer against each row:
//! a row that does not fit what the catalog says (a key column missing, of another type, an update
//! of a REPLICA IDENTITY FULL table without its old row) marks the table redefined, which changes it
//! as a whole and has the catalog read again.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::commit::{Commit, Pending, DDL_PREFIX, FLUSH_PREFIX, PRIVILEGES_PREFIX};
use crate::rows::{KeyType, RowKey, RowKeys, RowSet};

/// What the catalog says of the rows of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableKeys {
    /// The catalog does not know the table (not read yet, being read again, or the table is newer):
    /// a change to it changes it as a whole.
    Unknown,
    /// Point lookups of the table are never keyed (no usable replica identity): a change to it is a
    /// change to the table.
    Unkeyed,
    /// Point lookups are keyed by these columns.
    Keyed(Arc<RowKeys>),
}

/// Where the decoder learns which columns key a table's rows.
pub trait KeySource {
    /// The keys of table `name` (without schema).
    fn row_keys(&self, name: &str) -> TableKeys;
}

/// One value of a row image.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value<'a> {
    Null,
    /// A TOASTed value that did not change, not sent.
    Unchanged,
    /// The value's text output, unquoted.
    Text(Cow<'a, [u8]>),
}

/// One column of a row image.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Column<'a> {
    name: Cow<'a, str>,
    type_name: &'a [u8],
    value: Value<'a>,
}

/// A row image: its columns, as printed.
type Image<'a> = Vec<Column<'a>>;

/// What kind of change a line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Insert,
    Update,
    Delete,
}

/// One line of output.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    Begin,
    Commit(Option<SystemTime>),
    Change {
        table: Cow<'a, str>,
        op: Op,
        /// The old key or row (updates and deletes), when logged.
        old: Option<Image<'a>>,
        /// The new row (inserts and updates).
        new: Option<Image<'a>>,
    },
    /// A change to `table` whose rows could not be read.
    Unreadable {
        table: Cow<'a, str>,
    },
    Truncate(Vec<Cow<'a, str>>),
    /// A transactional logical decoding message.
    Message {
        prefix: &'a [u8],
        content: &'a [u8],
    },
    /// Output that concerns no cached result (a message outside any transaction).
    Ignored,
    /// Something this decoder does not know.
    Other,
}

/// Turns test_decoding lines into committed transactions.
#[derive(Default)]
pub struct Decoder {
    current: Pending,
    in_transaction: bool,
    /// A hash of the column names and types of each table's rows, as last seen: a different one
    /// means the table was redefined.
    shapes: HashMap<String, u64>,
}

/// What reading the keys of a change found.
enum Keyed {
    /// Its keys were added.
    Read,
    /// A value could not be read as a key: the table changed as a whole.
    Unreadable,
    /// The rows do not fit the catalog's description: the table was redefined.
    Mismatch,
}

impl Decoder {
    /// Whether no transaction is open.
    pub fn between_transactions(&self) -> bool {
        !self.in_transaction
    }

    /// Applies one line, which the server sent at WAL position `start` (for a COMMIT, the end of the
    /// commit record); returns the transaction it committed, if any.
    pub fn apply(&mut self, line: &[u8], start: u64, keys: &dyn KeySource) -> Option<Commit> {
        match parse(line) {
            Line::Begin => {
                self.current = Pending::default();
                self.in_transaction = true;
            }
            Line::Commit(at) => {
                self.in_transaction = false;
                let pending = std::mem::take(&mut self.current);
                return Some(pending.commit(start, at.unwrap_or_else(SystemTime::now)));
            }
            Line::Change {
                table,
                op,
                old,
                new,
            } => {
                if let Some(new) = &new {
                    if self.reshaped(&table, new) {
                        self.current.redefined(&table);
                    }
                }
                // Nothing more to read once the table counts as changed as a whole.
                let set = self.current.change(&table)?;
                let keyed = match keys.row_keys(&table) {
                    TableKeys::Unknown => Keyed::Unreadable,
                    TableKeys::Unkeyed => Keyed::Read,
                    TableKeys::Keyed(row_keys) => {
                        collect(&row_keys, &table, op, old.as_ref(), new.as_ref(), set)
                    }
                };
                match keyed {
                    Keyed::Read => {}
                    Keyed::Unreadable => self.current.whole(&table),
                    Keyed::Mismatch => self.current.redefined(&table),
                }
            }
            Line::Unreadable { table } => {
                self.current.change(&table);
                self.current.whole(&table);
            }
            Line::Truncate(tables) => tables.iter().for_each(|t| self.current.whole(t)),
            Line::Message { prefix, content } if prefix == DDL_PREFIX.as_bytes() => {
                self.current.note_ddl(content);
            }
            Line::Message { prefix, .. } if prefix == PRIVILEGES_PREFIX.as_bytes() => {
                self.current.note_privileges();
            }
            Line::Message { prefix, content } if prefix == FLUSH_PREFIX.as_bytes() => {
                self.current.note_flush(content);
            }
            Line::Message { .. } | Line::Ignored => {}
            // Output this decoder cannot read may have changed anything.
            Line::Other => self.current.note_ddl(b"*"),
        }
        None
    }

    /// Records the shape (column names and types) of a full row of `table`; whether it differs from
    /// the last one seen.
    fn reshaped(&mut self, table: &str, row: &Image<'_>) -> bool {
        static STATE: foldhash::quality::FixedState = foldhash::quality::FixedState::with_seed(7);
        let mut hasher = STATE.build_hasher();
        for column in row {
            hasher.write(column.name.as_bytes());
            hasher.write_u8(0);
            hasher.write(column.type_name);
            hasher.write_u8(0);
        }
        let shape = hasher.finish();
        match self.shapes.get_mut(table) {
            Some(seen) if *seen == shape => false,
            Some(seen) => {
                *seen = shape;
                true
            }
            None => {
                self.shapes.insert(table.to_owned(), shape);
                false
            }
        }
    }
}

/// Adds the row keys of a change to `set`, checking the rows against the catalog's `keys`.
fn collect(
    keys: &RowKeys,
    table: &str,
    op: Op,
    old: Option<&Image<'_>>,
    new: Option<&Image<'_>>,
    set: &mut RowSet,
) -> Keyed {
    match keys {
        RowKeys::Together(columns) => {
            // Without an old image the key did not change (an update) or is not logged at all (a
            // delete from a table without an identity, which the catalog would not key).
            if op == Op::Delete && old.is_none() {
                return Keyed::Mismatch;
            }
            for image in [old, new].into_iter().flatten() {
                let mut key = RowKey::new(table);
                let mut null = false;
                for (name, t) in columns {
                    match column(image, name, *t) {
                        // Old images leave NULLs out, and no key column is NULL.
                        None | Some((_, false)) => return Keyed::Mismatch,
                        // No row with a NULL key is found by equality.
                        Some((Value::Null, true)) => null = true,
                        Some((Value::Unchanged, true)) => return Keyed::Unreadable,
                        Some((Value::Text(text), true)) => match t.from_text(text) {
                            Some(v) => key.column(name, v),
                            None => return Keyed::Unreadable,
                        },
                    }
                }
                if !null {
                    set.insert(key.bucket());
                }
            }
        }
        RowKeys::Each(columns) => {
            // REPLICA IDENTITY FULL logs the old row of every update and delete.
            if op != Op::Insert && old.is_none() {
                return Keyed::Mismatch;
            }
            for (image, is_new) in [(old, false), (new, true)] {
                let Some(image) = image else { continue };
                for (name, t) in columns {
                    match column(image, name, *t) {
                        Some((_, false)) => return Keyed::Mismatch,
                        // A full row lists every column; an old one leaves out its NULLs.
                        None if is_new => return Keyed::Mismatch,
                        None | Some((Value::Null, true)) => {}
                        // The new row's unsent value equals the old row's, already added.
                        Some((Value::Unchanged, true)) if is_new && old.is_some() => {}
                        Some((Value::Unchanged, true)) => return Keyed::Unreadable,
                        Some((Value::Text(text), true)) => match t.from_text(text) {
                            Some(v) => {
                                let mut key = RowKey::new(table);
                                key.column(name, v);
                                set.insert(key.bucket());
                            }
                            None => return Keyed::Unreadable,
                        },
                    }
                }
            }
        }
    }
    Keyed::Read
}

/// The value of column `name` in `image`, and whether its printed type is `t`.
fn column<'a>(image: &'a Image<'a>, name: &str, t: KeyType) -> Option<(&'a Value<'a>, bool)> {
    image
        .iter()
        .find(|c| c.name == name)
        .map(|c| (&c.value, type_is(t, c.type_name)))
}

/// Whether a column printed with type `name` (as `format_type` prints it) has key type `t`.
fn type_is(t: KeyType, name: &[u8]) -> bool {
    match t {
        KeyType::Int => matches!(name, b"smallint" | b"integer" | b"bigint"),
        KeyType::Text => matches!(name, b"text" | b"character varying"),
        KeyType::Uuid => name == b"uuid",
    }
}

/// Reads one line.
fn parse(line: &[u8]) -> Line<'_> {
    if line == b"BEGIN" || line.starts_with(b"BEGIN ") {
        return Line::Begin;
    }
    if let Some(rest) = line.strip_prefix(b"COMMIT") {
        let at = find(rest, b"(at ").and_then(|i| {
            let stamp = &rest[i + 4..];
            let end = stamp.iter().position(|&b| b == b')')?;
            parse_timestamp(std::str::from_utf8(&stamp[..end]).ok()?)
        });
        return Line::Commit(at);
    }
    if let Some(rest) = line.strip_prefix(b"table ") {
        return parse_table_line(rest);
    }
    if let Some(rest) = line.strip_prefix(b"message: transactional: 1 prefix: ") {
        return parse_message(rest).unwrap_or(Line::Other);
    }
    if line.starts_with(b"message: transactional: 0 ") {
        // Not part of a transaction: Veneer emits none.
        return Line::Ignored;
    }
    Line::Other
}

/// `<prefix>, sz: <n> content:<n bytes>`.
fn parse_message(rest: &[u8]) -> Option<Line<'_>> {
    let at = find(rest, b", sz: ")?;
    let (prefix, rest) = (&rest[..at], &rest[at + 6..]);
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let size: usize = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let content = rest[digits..].strip_prefix(b" content:")?;
    Some(Line::Message {
        prefix,
        content: content.get(..size)?,
    })
}

/// What follows `table `: a change of one table, or a TRUNCATE of several.
fn parse_table_line(rest: &[u8]) -> Line<'_> {
    let mut r = Reader(rest);
    let mut tables = Vec::new();
    loop {
        let Some(table) = r.qualified_name() else {
            return Line::Other;
        };
        tables.push(table);
        if !r.eat(b", ") {
            break;
        }
    }
    if !r.eat(b": ") {
        return Line::Other;
    }
    let op = if r.eat(b"INSERT:") {
        Op::Insert
    } else if r.eat(b"UPDATE:") {
        Op::Update
    } else if r.eat(b"DELETE:") {
        Op::Delete
    } else if r.eat(b"TRUNCATE:") {
        return Line::Truncate(tables);
    } else {
        return Line::Other;
    };
    if tables.len() != 1 {
        return Line::Other;
    }
    let table = tables.pop().expect("one table");
    match parse_images(&mut r, op) {
        Some((old, new)) => Line::Change {
            table,
            op,
            old,
            new,
        },
        None => Line::Unreadable { table },
    }
}

/// The row images of a change, after its `OP:`.
#[allow(clippy::type_complexity)]
fn parse_images<'a>(r: &mut Reader<'a>, op: Op) -> Option<(Option<Image<'a>>, Option<Image<'a>>)> {
    if r.eat(b" (no-tuple-data)") {
        return r.0.is_empty().then_some((None, None));
    }
    let old = if op == Op::Update && r.eat(b" old-key:") {
        let old = r.columns()?;
        if !r.eat(b" new-tuple:") {
            return None;
        }
        Some(old)
    } else {
        None
    };
    let image = r.columns()?;
    if !r.0.is_empty() {
        return None;
    }
    Some(match op {
        Op::Delete => (Some(image), None),
        Op::Insert | Op::Update => (old, Some(image)),
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// Consumes `prefix` if the rest starts with it.
    fn eat(&mut self, prefix: &[u8]) -> bool {
        match self.0.strip_prefix(prefix) {
            Some(rest) => {
                self.0 = rest;
                true
            }
            None => false,
        }
    }

    /// `schema.name`, either part quoted as `quote_identifier` quotes; returns the name.
    fn qualified_name(&mut self) -> Option<Cow<'a, str>> {
        self.identifier(b'.')?;
        if !self.eat(b".") {
            return None;
        }
        self.identifier(b':')
    }

    /// An identifier: `"…"` with `""` for a quote, or bare up to `stop` (or `,` or `[`).
    fn identifier(&mut self, stop: u8) -> Option<Cow<'a, str>> {
        if let Some(rest) = self.0.strip_prefix(b"\"") {
            let (text, rest) = quoted(rest, b'"')?;
            self.0 = rest;
            return match text {
                Cow::Borrowed(b) => std::str::from_utf8(b).ok().map(Cow::Borrowed),
                Cow::Owned(v) => String::from_utf8(v).ok().map(Cow::Owned),
            };
        }
        let end = self
            .0
            .iter()
            .position(|&b| b == stop || b == b',' || b == b'[')?;
        let (name, rest) = self.0.split_at(end);
        self.0 = rest;
        (!name.is_empty())
            .then(|| std::str::from_utf8(name).ok().map(Cow::Borrowed))
            .flatten()
    }

    /// ` name[type]:value` repeated, up to the end or ` new-tuple:`.
    fn columns(&mut self) -> Option<Image<'a>> {
        let mut columns = Vec::new();
        while !self.0.is_empty() && !self.0.starts_with(b" new-tuple:") {
            if !self.eat(b" ") {
                return None;
            }
            let name = self.identifier(b'[')?;
            if !self.eat(b"[") {
                return None;
            }
            let end = find(self.0, b"]:")?;
            let type_name = &self.0[..end];
            self.0 = &self.0[end + 2..];
            let value = self.value()?;
            columns.push(Column {
                name,
                type_name,
                value,
            });
        }
        Some(columns)
    }

    fn value(&mut self) -> Option<Value<'a>> {
        if let Some(rest) = self.0.strip_prefix(b"'") {
            let (text, rest) = quoted(rest, b'\'')?;
            self.0 = rest;
            return Some(Value::Text(text));
        }
        let end = self
            .0
            .iter()
            .position(|&b| b == b' ')
            .unwrap_or(self.0.len());
        let (token, rest) = self.0.split_at(end);
        self.0 = rest;
        // Numbers, booleans and bit strings (`B'0101'`) are printed without spaces.
        Some(match token {
            b"null" => Value::Null,
            b"unchanged-toast-datum" => Value::Unchanged,
            _ => Value::Text(Cow::Borrowed(token)),
        })
    }
}

/// Text up to the closing `quote` (a doubled one stands for itself); the text and what follows.
fn quoted(text: &[u8], quote: u8) -> Option<(Cow<'_, [u8]>, &[u8])> {
    let mut owned: Option<Vec<u8>> = None;
    let mut i = 0;
    loop {
        let at = i + text[i..].iter().position(|&b| b == quote)?;
        if text.get(at + 1) == Some(&quote) {
            let buf = owned.get_or_insert_with(Vec::new);
            buf.extend_from_slice(&text[i..=at]);
            i = at + 2;
            continue;
        }
        let value = match owned {
            Some(mut buf) => {
                buf.extend_from_slice(&text[i..at]);
                Cow::Owned(buf)
            }
            None => Cow::Borrowed(&text[..at]),
        };
        return Some((value, &text[at + 1..]));
    }
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A `timestamptz` as the server prints it in ISO style (`2026-12-06 00:28:06.414093+00`, the offset
/// possibly with minutes and seconds).
fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let (date, rest) = text.split_once(' ')?;
    let split = rest.find(['+', '-'])?;
    let (time, offset) = rest.split_at(split);
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut hms = clock.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (hms.next()??, hms.next()??, hms.next()??);
    let micros: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<6}").get(..6)?.parse().ok()?
    };
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let mut parts = offset[1..].split(':').map(|p| p.parse::<i64>().ok());
    let offset_seconds = sign * (parts.next()?? * 3600 + parts.next().flatten().unwrap_or(0) * 60)
        + sign * parts.next().flatten().unwrap_or(0);
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_seconds;
    let since_epoch = u64::try_from(seconds).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(since_epoch) + Duration::from_micros(micros as u64))
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
#[path = "test_decoding_tests.rs"]
mod tests;
