//! A decoder for the pgoutput logical replication protocol (version 1): only what invalidation needs —
//! which relations a transaction changed, and where it commits. Row contents are skipped, not decoded.
//! See the PostgreSQL documentation, "Logical Replication Message Formats".

use std::fmt;

/// One pgoutput message, reduced to what invalidation uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A transaction starts.
    Begin,
    /// Describes a relation: its OID, schema and name (sent before the first change to it in a
    /// session, and again when its definition changed).
    Relation {
        /// The relation's OID.
        oid: u32,
        /// Its schema.
        schema: String,
        /// Its name.
        name: String,
    },
    /// Rows of a relation were inserted, updated or deleted.
    Change {
        /// The relation's OID.
        oid: u32,
    },
    /// Relations were truncated.
    Truncate {
        /// Their OIDs.
        oids: Vec<u32>,
    },
    /// The transaction committed; `end_lsn` is the WAL position just past its commit record.
    Commit {
        /// End of the commit record.
        end_lsn: u64,
    },
    /// Origin, Type and logical decoding messages: nothing to invalidate.
    Other,
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

/// Decodes one pgoutput message (the payload of an XLogData).
pub fn decode(message: &[u8]) -> Result<Event, DecodeError> {
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
    let event = match tag {
        b'B' => Event::Begin,
        b'C' => {
            let _flags = r.u8().ok_or(short.clone())?;
            let _commit_lsn = r.u64().ok_or(short.clone())?;
            Event::Commit {
                end_lsn: r.u64().ok_or(short)?,
            }
        }
        b'R' => {
            let oid = r.u32().ok_or(short.clone())?;
            let schema = r.cstr().ok_or(short.clone())?;
            let name = r.cstr().ok_or(short)?;
            Event::Relation { oid, schema, name }
        }
        b'I' | b'U' | b'D' => Event::Change {
            oid: r.u32().ok_or(short)?,
        },
        b'T' => {
            let count = r.u32().ok_or(short.clone())?;
            let _options = r.u8().ok_or(short.clone())?;
            let oids = (0..count)
                .map(|_| r.u32())
                .collect::<Option<Vec<_>>>()
                .ok_or(short)?;
            Event::Truncate { oids }
        }
        b'O' | b'Y' | b'M' => Event::Other,
        _ => {
            return Err(DecodeError {
                tag,
                problem: "unknown message type",
            })
        }
    };
    Ok(event)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
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
        relation.extend([b'd', 0, 0]); // replica identity, no columns
        assert_eq!(
            decode(&relation),
            Ok(Event::Relation {
                oid: 16385,
                schema: "public".into(),
                name: "accounts".into()
            })
        );
        let mut update = vec![b'U'];
        update.extend(16385u32.to_be_bytes());
        update.extend(b"N\0\0");
        assert_eq!(decode(&update), Ok(Event::Change { oid: 16385 }));
        let mut truncate = vec![b'T'];
        truncate.extend(2u32.to_be_bytes());
        truncate.push(0);
        truncate.extend(1u32.to_be_bytes());
        truncate.extend(2u32.to_be_bytes());
        assert_eq!(decode(&truncate), Ok(Event::Truncate { oids: vec![1, 2] }));
        let mut commit = vec![b'C', 0];
        commit.extend(7u64.to_be_bytes());
        commit.extend(9u64.to_be_bytes());
        commit.extend(0i64.to_be_bytes());
        assert_eq!(decode(&commit), Ok(Event::Commit { end_lsn: 9 }));
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert!(decode(b"").is_err());
        assert!(decode(b"C\0\0").is_err());
        assert!(decode(b"T\0\0\0\x09\0").is_err());
        assert!(decode(b"Z").is_err());
        assert!(decode(b"R\0\0\0\x01public").is_err());
    }
}
