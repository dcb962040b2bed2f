//! A decoder for the pgoutput logical replication protocol (versions 1 and 2, the latter with
//! streamed in-progress transactions): only what invalidation needs — which relations a transaction
//! changed, the values of changed rows (as slices of the message, for their keys), where and when it
//! commits, and logical decoding messages (Veneer's DDL notices). See the PostgreSQL documentation, "Logical
//! Replication Message Formats".
//!
//! Veneer streams pgoutput only from a publication the user made and named (`publication`): its
//! default, [`crate::test_decoding`], needs none. pgoutput describes each relation (its replica
//! identity's columns included) in the stream itself, so [`Decoder`] keys rows from those
//! descriptions.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::commit::{Commit, Pending, DDL_PREFIX, FLUSH_PREFIX, PRIVILEGES_PREFIX};
use crate::rows::{KeyType, RowKey, RowSet};

/// One pgoutput message, reduced to what invalidation uses; row values borrow from the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// A transaction starts.
    Begin,
    /// Describes a relation (sent before the first change to it in a session or streamed
    /// transaction, and again when its cached description was invalidated).
    Relation {
        /// The relation's OID.
        oid: u32,
        /// Its schema.
        schema: String,
        /// Its name.
        name: String,
        /// Its replica identity setting: `d` (primary key), `i` (an index), `f` (full row), `n`.
        identity: u8,
        /// Its columns, in the order row values come.
        columns: Vec<Column>,
        /// The whole description (replica identity and columns): a definition change shows as a
        /// different description.
        definition: Vec<u8>,
    },
    /// One row of a relation was inserted, updated or deleted.
    Change {
        /// The relation's OID.
        oid: u32,
        /// The row images sent: the old key or old row (updates and deletes, when the server sends
        /// one), then the new row (inserts and updates).
        tuples: Vec<Tuple<'a>>,
    },
    /// Relations were truncated.
    Truncate {
        /// Their OIDs.
        oids: Vec<u32>,
    },
    /// The transaction committed.
    Commit {
        /// The WAL position just past its commit record.
        end_lsn: u64,
        /// Commit time, microseconds since 2000-01-01 (Postgres's epoch).
        commit_time: i64,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        /// Its prefix, which says who sent it.
        prefix: String,
        /// Its content.
        content: Vec<u8>,
    },
    /// A streamed block of an in-progress transaction starts; the changes up to [`Event::StreamStop`]
    /// belong to transaction `xid`.
    StreamStart {
        /// The top-level transaction.
        xid: u32,
    },
    /// The streamed block ends.
    StreamStop,
    /// A streamed transaction committed.
    StreamCommit {
        /// The top-level transaction.
        xid: u32,
        /// The WAL position just past its commit record.
        end_lsn: u64,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
    },
    /// A streamed transaction, or one of its subtransactions, aborted.
    StreamAbort {
        /// The top-level transaction.
        xid: u32,
        /// The aborted (sub)transaction: equal to `xid` when the whole transaction aborted.
        subxid: u32,
    },
    /// Origin and Type messages: nothing to invalidate.
    Other,
}

/// One column of a relation description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type's OID.
    pub type_oid: u32,
    /// Whether it is part of the replica identity key.
    pub key: bool,
}

/// One row image of a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple<'a> {
    /// `K` (the old key), `O` (the old row) or `N` (the new row).
    pub kind: u8,
    /// Its values, one per column of the relation.
    pub values: Vec<Field<'a>>,
}

/// One value of a row image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    /// NULL (also every non-key column of an old-key image).
    Null,
    /// A TOASTed value that did not change, not sent.
    Unchanged,
    /// The value's text form.
    Text(&'a [u8]),
    /// The value's binary form (only with the `binary` option, which Veneer does not ask for).
    Binary(&'a [u8]),
}

/// A message that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The message's type byte.
    pub tag: u8,
    /// What was wrong.
    pub problem: &'static str,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pgoutput message '{}': {}",
            self.tag as char, self.problem
        )
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one pgoutput message (the payload of an XLogData). `in_stream` says whether it arrived
/// between Stream Start and Stream Stop, where data messages carry their transaction id first.
pub fn decode(message: &[u8], in_stream: bool) -> Result<Event<'_>, DecodeError> {
    let Some((&tag, body)) = message.split_first() else {
        return Err(DecodeError {
            tag: 0,
            problem: "empty message",
        });
    };
    let short = DecodeError {
        tag,
        problem: "message too short",
    };
    let mut r = Reader(body);
    if in_stream && matches!(tag, b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M') {
        r.u32().ok_or(short.clone())?;
    }
    let event = match tag {
        b'B' => Event::Begin,
        b'C' => {
            let _flags = r.u8().ok_or(short.clone())?;
            let _commit_lsn = r.u64().ok_or(short.clone())?;
            Event::Commit {
                end_lsn: r.u64().ok_or(short.clone())?,
                commit_time: r.i64().ok_or(short)?,
            }
        }
        b'R' => {
            let definition = r.0.to_vec();
            let oid = r.u32().ok_or(short.clone())?;
            let schema = r.cstr().ok_or(short.clone())?;
            let name = r.cstr().ok_or(short.clone())?;
            let identity = r.u8().ok_or(short.clone())?;
            let count = r.u16().ok_or(short.clone())?;
            let columns = (0..count)
                .map(|_| {
                    let flags = r.u8()?;
                    let name = r.cstr()?;
                    let type_oid = r.u32()?;
                    let _modifier = r.u32()?;
                    Some(Column {
                        name,
                        type_oid,
                        key: flags & 1 == 1,
                    })
                })
                .collect::<Option<Vec<_>>>()
                .ok_or(short)?;
            Event::Relation {
                oid,
                schema,
                name,
                identity,
                columns,
                definition,
            }
        }
        b'I' | b'U' | b'D' => {
            let oid = r.u32().ok_or(short.clone())?;
            let mut tuples = Vec::with_capacity(2);
            while let Some(kind) = r.u8() {
                if !matches!(kind, b'K' | b'O' | b'N') {
                    return Err(DecodeError {
                        tag,
                        problem: "unknown row image kind",
                    });
                }
                tuples.push(r.tuple(kind).ok_or(short.clone())?);
            }
            Event::Change { oid, tuples }
        }
        b'T' => {
            let count = r.u32().ok_or(short.clone())?;
            let _options = r.u8().ok_or(short.clone())?;
            let oids = (0..count)
                .map(|_| r.u32())
                .collect::<Option<Vec<_>>>()
                .ok_or(short)?;
            Event::Truncate { oids }
        }
        b'M' => {
            let _flags = r.u8().ok_or(short.clone())?;
            let _lsn = r.u64().ok_or(short.clone())?;
            let prefix = r.cstr().ok_or(short.clone())?;
            let len = r.u32().ok_or(short.clone())? as usize;
            let content = r.0.get(..len).ok_or(short)?.to_vec();
            Event::Message { prefix, content }
        }
        b'S' => Event::StreamStart {
            xid: r.u32().ok_or(short)?,
        },
        b'E' => Event::StreamStop,
        b'c' => {
            let xid = r.u32().ok_or(short.clone())?;
            let _flags = r.u8().ok_or(short.clone())?;
            let _commit_lsn = r.u64().ok_or(short.clone())?;
            Event::StreamCommit {
                xid,
                end_lsn: r.u64().ok_or(short.clone())?,
                commit_time: r.i64().ok_or(short)?,
            }
        }
        b'A' => Event::StreamAbort {
            xid: r.u32().ok_or(short.clone())?,
            subxid: r.u32().ok_or(short)?,
        },
        b'O' | b'Y' => Event::Other,
        _ => {
            return Err(DecodeError {
                tag,
                problem: "unknown message type",
            })
        }
    };
    Ok(event)
}

/// Microseconds from the Unix epoch to Postgres's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A relation as its description says: its name, the description itself (to notice a change) and
/// which columns key its rows.
struct Known {
    name: String,
    definition: Vec<u8>,
    keys: Keys,
}

/// Which columns of a relation's rows give row keys, each as (position, name, type), by name.
enum Keys {
    /// The replica identity's key columns together (a primary key or an index).
    Together(Vec<(usize, String, KeyType)>),
    /// Each column on its own (REPLICA IDENTITY FULL): a point lookup may use any of them.
    Each(Vec<(usize, String, KeyType)>),
    /// None: no point lookup of the table can be keyed (no identity, or a key of another type).
    No,
}

impl Keys {
    fn of(identity: u8, columns: &[Column]) -> Keys {
        let mut usable: Vec<(usize, String, KeyType)> = Vec::new();
        let mut all_usable = true;
        for (i, column) in columns.iter().enumerate() {
            if identity != b'f' && !column.key {
                continue;
            }
            match KeyType::of(column.type_oid) {
                Some(t) => usable.push((i, column.name.clone(), t)),
                None => all_usable = false,
            }
        }
        usable.sort_by(|a, b| a.1.cmp(&b.1));
        match identity {
            b'f' => Keys::Each(usable),
            _ if all_usable && !usable.is_empty() => Keys::Together(usable),
            _ => Keys::No,
        }
    }

    /// Adds the keys of the rows in `tuples` to `keys`; `false` when one could not be read (a value
    /// not sent), so the whole table must count as changed.
    fn collect(&self, table: &str, tuples: &[Tuple<'_>], keys: &mut RowSet) -> bool {
        let has_old = tuples.iter().any(|t| t.kind != b'N');
        for tuple in tuples {
            let value = |i: usize| tuple.values.get(i).copied().unwrap_or(Field::Null);
            match self {
                Keys::Together(columns) => {
                    let mut key = RowKey::new(table);
                    for (i, name, t) in columns {
                        match value(*i) {
                            // No row with a NULL key is found by equality.
                            Field::Null => break,
                            Field::Text(text) => match t.from_text(text) {
                                Some(v) => key.column(name, v),
                                None => return false,
                            },
                            Field::Unchanged | Field::Binary(_) => return false,
                        }
                    }
                    if columns.iter().all(|(i, ..)| value(*i) != Field::Null) {
                        keys.insert(key.bucket());
                    }
                }
                Keys::Each(columns) => {
                    for (i, name, t) in columns {
                        match value(*i) {
                            Field::Null => {}
                            // The new row's unsent value equals the old row's, already added.
                            Field::Unchanged if tuple.kind == b'N' && has_old => {}
                            Field::Text(text) => match t.from_text(text) {
                                Some(v) => {
                                    let mut key = RowKey::new(table);
                                    key.column(name, v);
                                    keys.insert(key.bucket());
                                }
                                None => return false,
                            },
                            Field::Unchanged | Field::Binary(_) => return false,
                        }
                    }
                }
                Keys::No => {}
            }
        }
        true
    }
}

/// Turns pgoutput messages into committed transactions: the plain transaction in progress, and the
/// streamed ones (protocol 2), each gathered under its top-level transaction id until it commits.
#[derive(Default)]
pub struct Decoder {
    /// Relations by OID.
    relations: HashMap<u32, Known>,
    current: Pending,
    in_transaction: bool,
    streamed: HashMap<u32, Pending>,
    /// The streamed transaction whose block is open.
    streaming: Option<u32>,
}

impl Decoder {
    /// Whether no transaction is open (nor any streamed one waiting for its end).
    pub fn between_transactions(&self) -> bool {
        !self.in_transaction && self.streamed.is_empty()
    }

    /// Where the changes of the message being applied go.
    fn pending(&mut self) -> &mut Pending {
        match self.streaming {
            Some(xid) => self.streamed.entry(xid).or_default(),
            None => &mut self.current,
        }
    }

    /// Applies one pgoutput message; returns the transaction it committed, if any.
    pub fn apply(&mut self, message: &[u8]) -> Result<Option<Commit>, DecodeError> {
        match decode(message, self.streaming.is_some())? {
            Event::Begin => {
                self.current = Pending::default();
                self.in_transaction = true;
            }
            Event::Relation {
                oid,
                name,
                identity,
                columns,
                definition,
                ..
            } => {
                // Descriptions are sent again for each streamed transaction and after cache
                // invalidations; only a different one means the definition changed.
                let changed = self
                    .relations
                    .get(&oid)
                    .is_some_and(|known| known.definition != definition);
                let keys = Keys::of(identity, &columns);
                if changed {
                    self.pending().redefined(&name);
                }
                self.relations.insert(
                    oid,
                    Known {
                        name,
                        definition,
                        keys,
                    },
                );
            }
            Event::Change { oid, tuples } => {
                // Every change follows its relation's description.
                let Some(known) = self.relations.get(&oid) else {
                    return Ok(None);
                };
                let pending = match self.streaming {
                    Some(xid) => self.streamed.entry(xid).or_default(),
                    None => &mut self.current,
                };
                let read = pending
                    .change(&known.name)
                    .is_none_or(|keys| known.keys.collect(&known.name, &tuples, keys));
                if !read {
                    pending.whole(&known.name);
                }
            }
            Event::Truncate { oids } => {
                let names: Vec<String> = oids
                    .iter()
                    .filter_map(|o| self.relations.get(o).map(|k| k.name.clone()))
                    .collect();
                let pending = self.pending();
                names.iter().for_each(|name| pending.whole(name));
            }
            Event::Message { prefix, content } if prefix == DDL_PREFIX => {
                self.pending().note_ddl(&content);
            }
            Event::Message { prefix, .. } if prefix == PRIVILEGES_PREFIX => {
                self.pending().note_privileges();
            }
            Event::Message { prefix, content } if prefix == FLUSH_PREFIX => {
                self.pending().note_flush(&content);
            }
            Event::Commit {
                end_lsn,
                commit_time,
            } => {
                self.in_transaction = false;
                let pending = std::mem::take(&mut self.current);
                return Ok(Some(pending.commit(end_lsn, system_time(commit_time))));
            }
            Event::StreamStart { xid } => self.streaming = Some(xid),
            Event::StreamStop => self.streaming = None,
            Event::StreamCommit {
                xid,
                end_lsn,
                commit_time,
            } => {
                let pending = self.streamed.remove(&xid).unwrap_or_default();
                return Ok(Some(pending.commit(end_lsn, system_time(commit_time))));
            }
            Event::StreamAbort { xid, subxid } => {
                // A subtransaction's changes are not told apart: keeping them only costs misses.
                if xid == subxid {
                    self.streamed.remove(&xid);
                }
            }
            Event::Message { .. } | Event::Other => {}
        }
        Ok(None)
    }
}

/// A time in microseconds since Postgres's epoch.
fn system_time(pg_micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros((pg_micros + PG_EPOCH_MICROS).max(0) as u64)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// TupleData: a column count, then per column a kind byte and, for values, a length and bytes.
    fn tuple(&mut self, kind: u8) -> Option<Tuple<'a>> {
        let count = self.u16()?;
        let values = (0..count)
            .map(|_| match self.u8()? {
                b'n' => Some(Field::Null),
                b'u' => Some(Field::Unchanged),
                format @ (b't' | b'b') => {
                    let len = self.u32()? as usize;
                    let value = self.0.get(..len)?;
                    self.0 = &self.0[len..];
                    Some(if format == b't' {
                        Field::Text(value)
                    } else {
                        Field::Binary(value)
                    })
                }
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Tuple { kind, values })
    }

    fn u16(&mut self) -> Option<u16> {
        self.take::<2>().map(u16::from_be_bytes)
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_be_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.take::<8>().map(i64::from_be_bytes)
    }

    fn cstr(&mut self) -> Option<String> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let s = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_invalidation_needs() {
        let mut relation = vec![b'R'];
        relation.extend(16385u32.to_be_bytes());
        relation.extend(b"public\0accounts\0");
        relation.extend([b'd', 0, 2]); // replica identity, two columns
        relation.extend(b"\x01id\0\0\0\0\x17\xff\xff\xff\xff");
        relation.extend(b"\0note\0\0\0\0\x19\xff\xff\xff\xff");
        assert_eq!(
            decode(&relation, false),
            Ok(Event::Relation {
                oid: 16385,
                schema: "public".into(),
                name: "accounts".into(),
                identity: b'd',
                columns: vec![
                    Column {
                        name: "id".into(),
                        type_oid: 23,
                        key: true
                    },
                    Column {
                        name: "note".into(),
                        type_oid: 25,
                        key: false
                    }
                ],
                definition: relation[1..].to_vec(),
            })
        );
        let mut update = vec![b'U'];
        update.extend(16385u32.to_be_bytes());
        update.extend(b"K\0\x02t\0\0\0\x017n");
        update.extend(b"N\0\x02t\0\0\0\x018u");
        assert_eq!(
            decode(&update, false),
            Ok(Event::Change {
                oid: 16385,
                tuples: vec![
                    Tuple {
                        kind: b'K',
                        values: vec![Field::Text(b"7"), Field::Null]
                    },
                    Tuple {
                        kind: b'N',
                        values: vec![Field::Text(b"8"), Field::Unchanged]
                    }
                ]
            })
        );
        let mut truncate = vec![b'T'];
        truncate.extend(2u32.to_be_bytes());
        truncate.push(0);
        truncate.extend(1u32.to_be_bytes());
        truncate.extend(2u32.to_be_bytes());
        assert_eq!(
            decode(&truncate, false),
            Ok(Event::Truncate { oids: vec![1, 2] })
        );
        let mut commit = vec![b'C', 0];
        commit.extend(7u64.to_be_bytes());
        commit.extend(9u64.to_be_bytes());
        commit.extend(11i64.to_be_bytes());
        assert_eq!(
            decode(&commit, false),
            Ok(Event::Commit {
                end_lsn: 9,
                commit_time: 11
            })
        );
        let mut message = vec![b'M', 1];
        message.extend(5u64.to_be_bytes());
        message.extend(b"veneer.ddl\0");
        message.extend(3u32.to_be_bytes());
        message.extend(b"a.b");
        assert_eq!(
            decode(&message, false),
            Ok(Event::Message {
                prefix: "veneer.ddl".into(),
                content: b"a.b".to_vec()
            })
        );
    }

    #[test]
    fn streamed_messages_carry_their_transaction() {
        let mut start = vec![b'S'];
        start.extend(700u32.to_be_bytes());
        start.push(1);
        assert_eq!(decode(&start, false), Ok(Event::StreamStart { xid: 700 }));
        let mut insert = vec![b'I'];
        insert.extend(701u32.to_be_bytes()); // a subtransaction's xid
        insert.extend(16385u32.to_be_bytes());
        insert.extend(b"N\0\0");
        assert_eq!(
            decode(&insert, true),
            Ok(Event::Change {
                oid: 16385,
                tuples: vec![Tuple {
                    kind: b'N',
                    values: vec![]
                }]
            })
        );
        assert_eq!(decode(b"E", true), Ok(Event::StreamStop));
        let mut commit = vec![b'c'];
        commit.extend(700u32.to_be_bytes());
        commit.push(0);
        commit.extend(7u64.to_be_bytes());
        commit.extend(9u64.to_be_bytes());
        commit.extend(11i64.to_be_bytes());
        assert_eq!(
            decode(&commit, false),
            Ok(Event::StreamCommit {
                xid: 700,
                end_lsn: 9,
                commit_time: 11
            })
        );
        let mut abort = vec![b'A'];
        abort.extend(700u32.to_be_bytes());
        abort.extend(701u32.to_be_bytes());
        assert_eq!(
            decode(&abort, false),
            Ok(Event::StreamAbort {
                xid: 700,
                subxid: 701
            })
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert!(decode(b"", false).is_err());
        assert!(decode(b"C\0\0", false).is_err());
        assert!(decode(b"T\0\0\0\x09\0", false).is_err());
        assert!(decode(b"Z", false).is_err());
        assert!(decode(b"R\0\0\0\x01public", false).is_err());
        assert!(decode(b"I\0\0\0\x01", true).is_err());
        assert!(decode(b"M\0", false).is_err());
        assert!(decode(b"I\0\0\0\x01N\0\x01t\0\0\0\x09ab", false).is_err());
        assert!(decode(b"I\0\0\0\x01X", false).is_err());
        assert!(decode(b"R\0\0\0\x01s\0t\0d\0\x01", false).is_err());
    }
}
