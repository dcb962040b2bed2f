//! Point lookups: reads of one table whose WHERE clause pins the row key (the primary key, the
//! replica identity index, or any column of a REPLICA IDENTITY FULL table). Their results depend on
//! that key's row bucket and the table's epoch, not on every change to the table, so a write to one
//! row leaves cached lookups of other rows alone.
//!
//! A plan is shared by every text of one shape, so it records where the key's values come from — the
//! n-th literal of the text, or the n-th Bind parameter — and each request reads them to find its
//! bucket. A value that cannot be read canonically (see `veneer_invalidation::rows`) leaves the
//! request depending on the whole table, which is always safe.

use std::ops::Range;

use veneer_invalidation::rows::{KeyType, KeyValue, RowKey};

use super::catalog::RowKeys;
use super::classify::{Equality, Operand};
use crate::wire::frame::cstr;

/// Where a point lookup's key comes from.
#[derive(Debug)]
pub struct Point {
    table: String,
    /// One part per key column, in column name order.
    parts: Vec<Part>,
}

#[derive(Debug)]
struct Part {
    column: String,
    kind: KeyType,
    source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The n-th literal of the statement text.
    Literal(usize),
    /// The n-th Bind parameter.
    Param(usize),
}

/// What a request gives to read a key from.
pub struct Values<'a> {
    /// The statement text and where its literals sit.
    pub sql: &'a [u8],
    /// The ranges of `sql`'s literals.
    pub literals: &'a [Range<usize>],
    /// The Bind that runs the statement, if any.
    pub bind: Option<Bind<'a>>,
    /// Whether the session's client_encoding is the server's: strings then arrive as the stream
    /// reports them. Otherwise only ASCII strings key rows. Asked only for a non-ASCII string.
    pub same_encoding: &'a dyn Fn() -> bool,
}

/// A Bind message's parameters, with the types the statement declared for them.
#[derive(Clone, Copy)]
pub struct Bind<'a> {
    /// The Bind body.
    pub body: &'a [u8],
    /// Declared parameter types (0, or missing: the server infers them).
    pub types: Declared<'a>,
}

/// The parameter types a statement declared.
#[derive(Clone, Copy)]
pub enum Declared<'a> {
    /// As the session state keeps them.
    Oids(&'a [u32]),
    /// As a Parse body carries them after the SQL text (a count, then the OIDs), read in place.
    Wire(&'a [u8]),
}

impl Declared<'_> {
    /// The type declared for parameter `n` (0 when none is).
    fn get(self, n: usize) -> u32 {
        match self {
            Declared::Oids(oids) => oids.get(n).copied().unwrap_or(0),
            Declared::Wire(wire) => {
                let count = wire
                    .get(..2)
                    .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                wire.get(2 + n * 4..6 + n * 4)
                    .filter(|_| n < usize::from(count))
                    .map_or(0, |t| u32::from_be_bytes([t[0], t[1], t[2], t[3]]))
            }
        }
    }
}

impl Point {
    /// The point lookup a read of `table` is, if its `equalities` pin every column of a key of
    /// `keys`. `literals` are the ranges of the literals of `sql`, the text being planned.
    pub fn plan(
        table: &str,
        equalities: &[Equality],
        keys: &RowKeys,
        literals: &[Range<usize>],
    ) -> Option<Point> {
        let source = |e: &Equality| match e.operand {
            Operand::Param(n) => Some(Source::Param(n)),
            Operand::Literal(at) => literals
                .iter()
                .position(|r| r.start == at)
                .map(Source::Literal),
        };
        let part = |column: &str, kind: KeyType| {
            let source = equalities
                .iter()
                .filter(|e| e.column == column)
                .find_map(source)?;
            Some(Part {
                column: column.to_owned(),
                kind,
                source,
            })
        };
        let parts = match keys {
            RowKeys::Together(columns) => columns
                .iter()
                .map(|(c, kind)| part(c, *kind))
                .collect::<Option<Vec<_>>>()?,
            RowKeys::Each(columns) => vec![columns.iter().find_map(|(c, kind)| part(c, *kind))?],
        };
        Some(Point {
            table: table.to_owned(),
            parts,
        })
    }

    /// The table looked up.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Whether the key is read from Bind parameters.
    pub fn needs_bind(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p.source, Source::Param(_)))
    }

    /// The bucket of a key read from Bind parameters alone (a key with a literal part is then not
    /// readable).
    pub fn bound_bucket(&self, bind: Bind<'_>, same_encoding: &dyn Fn() -> bool) -> Option<usize> {
        self.bucket(&Values {
            sql: b"",
            literals: &[],
            bind: Some(bind),
            same_encoding,
        })
    }

    /// The bucket of the key `values` give, or `None` when a value cannot be read canonically.
    pub fn bucket(&self, values: &Values<'_>) -> Option<usize> {
        let mut key = RowKey::new(&self.table);
        for part in &self.parts {
            let value = match part.source {
                Source::Literal(n) => {
                    literal(part.kind, &values.sql[values.literals.get(n)?.clone()])
                }
                Source::Param(n) => param(part.kind, values.bind?, n),
            }?;
            if let KeyValue::Bytes(b) = value {
                if !b.is_ascii() && !(values.same_encoding)() {
                    return None;
                }
            }
            key.column(&part.column, value);
        }
        Some(key.bucket())
    }
}

/// A literal's value: a number, or a single-quoted string without escapes.
fn literal(kind: KeyType, text: &[u8]) -> Option<KeyValue<'_>> {
    match text {
        [b'\'', inner @ .., b'\''] if !inner.contains(&b'\'') && !inner.contains(&b'\\') => {
            kind.from_text(inner)
        }
        [b'\'', ..] => None,
        number if kind == KeyType::Int => kind.from_text(number),
        _ => None,
    }
}

/// Parameter `n` of a Bind, if its declared type compares with the column as sent.
fn param<'a>(kind: KeyType, bind: Bind<'a>, n: usize) -> Option<KeyValue<'a>> {
    if !kind.accepts_param(bind.types.get(n)) {
        return None;
    }
    let (_, rest) = cstr(bind.body)?;
    let (_, mut rest) = cstr(rest)?;
    let formats = i16_at(&mut rest)? as usize;
    let format_codes = rest.get(..formats * 2)?;
    rest = &rest[formats * 2..];
    let binary = match formats {
        0 => false,
        1 => format_codes[1] == 1,
        _ => *format_codes.get(n * 2 + 1)? == 1,
    };
    let count = i16_at(&mut rest)? as usize;
    if n >= count {
        return None;
    }
    for i in 0..=n {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        // NULL: no row has a NULL key equal to anything.
        let len = usize::try_from(len).ok()?;
        let value = rest.get(..len)?;
        rest = &rest[len..];
        if i == n {
            return if binary {
                kind.from_binary(value)
            } else {
                kind.from_text(value)
            };
        }
    }
    None
}

fn i16_at(rest: &mut &[u8]) -> Option<i16> {
    let v = i16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
    *rest = &rest[2..];
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(params: &[Option<&[u8]>], formats: &[i16]) -> Vec<u8> {
        let mut b = b"\0\0".to_vec();
        b.extend((formats.len() as i16).to_be_bytes());
        for f in formats {
            b.extend(f.to_be_bytes());
        }
        b.extend((params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    b.extend((v.len() as i32).to_be_bytes());
                    b.extend(*v);
                }
                None => b.extend((-1i32).to_be_bytes()),
            }
        }
        b.extend(0i16.to_be_bytes());
        b
    }

    fn key(table: &str, columns: &[(&str, KeyValue)]) -> usize {
        let mut key = RowKey::new(table);
        for (c, v) in columns {
            key.column(c, *v);
        }
        key.bucket()
    }

    /// The literal ranges of a text with one literal.
    fn one(range: Range<usize>) -> Vec<Range<usize>> {
        std::iter::once(range).collect()
    }

    /// The bucket `point` finds in `sql`, a text that is one literal.
    fn lone_literal(point: &Point, sql: &[u8], same: bool) -> Option<usize> {
        point.bucket(&Values {
            sql,
            literals: &one(0..sql.len()),
            bind: None,
            same_encoding: &move || same,
        })
    }

    fn eq(column: &str, operand: Operand) -> Equality {
        Equality {
            column: column.into(),
            operand,
        }
    }

    #[test]
    fn literals_and_parameters_give_the_key_the_stream_reports() {
        let keys = RowKeys::Together(vec![
            ("a".into(), KeyType::Int),
            ("b".into(), KeyType::Text),
        ]);
        let sql = b"SELECT * FROM t WHERE b = 'x' AND a = 7";
        let literals = [26..29, 38..39];
        let point = Point::plan(
            "t",
            &[eq("b", Operand::Literal(26)), eq("a", Operand::Literal(38))],
            &keys,
            &literals,
        )
        .expect("both key columns pinned");
        assert!(!point.needs_bind());
        let values = Values {
            sql,
            literals: &literals,
            bind: None,
            same_encoding: &|| false,
        };
        let expected = key(
            "t",
            &[("a", KeyValue::Int(7)), ("b", KeyValue::Bytes(b"x"))],
        );
        assert_eq!(point.bucket(&values), Some(expected));

        let by_params = Point::plan(
            "t",
            &[eq("a", Operand::Param(1)), eq("b", Operand::Param(0))],
            &keys,
            &[],
        )
        .expect("pinned by parameters");
        assert!(by_params.needs_bind());
        let seven = 7i32.to_be_bytes();
        let body = bind(&[Some(b"x"), Some(&seven)], &[0, 1]);
        let with = |types| by_params.bound_bucket(Bind { body: &body, types }, &|| false);
        let wire = [0, 2, 0, 0, 0, 25, 0, 0, 0, 23];
        assert_eq!(with(Declared::Oids(&[])), Some(expected));
        assert_eq!(with(Declared::Oids(&[25, 23])), Some(expected));
        assert_eq!(with(Declared::Wire(&wire)), Some(expected));
        assert_eq!(with(Declared::Oids(&[1042, 23])), None, "bpchar");
        let null = bind(&[Some(b"x"), None], &[]);
        let null = Bind {
            body: &null,
            types: Declared::Oids(&[]),
        };
        assert_eq!(by_params.bound_bucket(null, &|| false), None);
    }

    #[test]
    fn a_key_must_be_pinned_whole_and_read_plainly() {
        let keys = RowKeys::Together(vec![("a".into(), KeyType::Int), ("b".into(), KeyType::Int)]);
        assert!(Point::plan("t", &[eq("a", Operand::Param(0))], &keys, &[]).is_none());
        let full = RowKeys::Each(vec![
            ("email".into(), KeyType::Text),
            ("id".into(), KeyType::Int),
        ]);
        let point = Point::plan("t", &[eq("id", Operand::Literal(0))], &full, &one(0..4))
            .expect("any column of a FULL identity");
        let read = |sql: &'static [u8], same: bool| lone_literal(&point, sql, same);
        assert!(read(b"'12'", false).is_some());
        assert_eq!(read(b"'12'", false), read(b"12", false));
        assert_eq!(read(b"1.5", false), None);
        let text =
            Point::plan("t", &[eq("email", Operand::Literal(0))], &full, &one(0..4)).expect("text");
        let read = |sql: &'static [u8], same: bool| lone_literal(&text, sql, same);
        assert!(read(b"'a@b'", false).is_some());
        assert_eq!(read(b"'it''s'", false), None);
        assert_eq!(read(b"'a\\b'", false), None);
        assert_eq!(read("'é'".as_bytes(), false), None);
        assert!(read("'é'".as_bytes(), true).is_some());
    }
}
