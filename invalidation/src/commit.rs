//! What one committed transaction changed, as the stream's decoders gather it: the tables whose rows
//! changed, the row-key buckets of those rows, the tables changed as a whole, and the DDL Veneer's
//! event trigger reported. Both decoders ([`crate::pgoutput`] and [`crate::test_decoding`]) fill a
//! [`Pending`] while a transaction's changes arrive and turn it into a [`Commit`] at its end.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use crate::rows::RowSet;

/// Prefix of the logical decoding messages Veneer's event trigger emits at DDL: the content is the
/// names of the tables the DDL changed, one per line, with a line `*` when it changed something else.
pub const DDL_PREFIX: &str = "veneer.ddl";

/// Prefix of the messages Veneer's event trigger emits at a GRANT, a REVOKE or a policy's DDL: no
/// table's rows changed, but who may read what did, which Veneer checks at once.
pub const PRIVILEGES_PREFIX: &str = "veneer.privileges";

/// Prefix of the messages a Veneer writes into the WAL for a bump that comes from no change of rows
/// (an operator's flush, a privilege or setting change its checks found), so that every proxy
/// following the database applies it at the same position. One line per bump: `*` (every result),
/// `table <name>`, or `role <name>`.
pub const FLUSH_PREFIX: &str = "veneer.flush";

/// Rows of one table a transaction may change before the table counts as changed as a whole: the
/// row-key buckets are shared by every table of a database, so bumping the keys of a large batch
/// would evict much of every other table's point lookups along with them.
const ROW_KEYS_PER_TABLE: u32 = 1024;

/// What one committed transaction changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Tables whose rows changed.
    pub changed: Vec<String>,
    /// The row-key buckets of the changed rows, old and new keys (see [`crate::rows`]).
    pub keys: RowSet,
    /// Tables changed as a whole: truncated, their definition changed, named by a DDL notice, or
    /// changed in rows whose keys could not be read.
    pub whole: Vec<String>,
    /// A relation's description changed (a column, its type or the replica identity): plans made
    /// from the old definition must be made again.
    pub redefined: bool,
    /// DDL the transaction reported through Veneer's event trigger (see [`DDL_PREFIX`]).
    pub ddl: Option<Ddl>,
    /// The transaction changed privileges or row-level security policies (see
    /// [`PRIVILEGES_PREFIX`]).
    pub privileges: bool,
    /// Rows inserted, updated or deleted.
    pub rows: u64,
    /// Bumps other Veneers wrote into the WAL (see [`FLUSH_PREFIX`]), one line each.
    pub flushes: Vec<String>,
    /// WAL position just past the commit.
    pub end_lsn: u64,
    /// When it committed on the server.
    pub commit_time: SystemTime,
}

/// DDL reported in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ddl {
    /// It changed the tables listed in [`Commit::whole`] (and perhaps indexes): the catalog is read
    /// again.
    Tables,
    /// It changed something whose reach Veneer cannot tell (a function, a type, a view): every cached
    /// result of the database is invalid, and the catalog is read again.
    Unknown,
}

/// What a transaction has done so far, tables by name (without schema, as
/// [`crate::Generations::table`] names them).
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Tables whose rows changed, with how many rows.
    changed: HashMap<String, u32>,
    keys: RowSet,
    whole: HashSet<String>,
    redefined: bool,
    ddl: Option<Ddl>,
    privileges: bool,
    rows: u64,
    flushes: Vec<String>,
}

impl Pending {
    /// A row of `table` changed. Returns where its keys go, or `None` when they need not be read:
    /// the table already counts as changed as a whole, or the transaction changed so many of its
    /// rows that it now does.
    pub(crate) fn change(&mut self, table: &str) -> Option<&mut RowSet> {
        self.rows += 1;
        let rows = match self.changed.get_mut(table) {
            Some(rows) => rows,
            None => self.changed.entry(table.to_owned()).or_default(),
        };
        *rows += 1;
        if *rows > ROW_KEYS_PER_TABLE {
            self.whole(table);
        }
        (!self.whole.contains(table)).then_some(&mut self.keys)
    }

    /// `table` changed as a whole (truncated, or rows whose keys could not be read).
    pub(crate) fn whole(&mut self, table: &str) {
        if !self.whole.contains(table) {
            self.whole.insert(table.to_owned());
        }
    }

    /// `table`'s definition changed: it changed as a whole, and plans must be made again.
    pub(crate) fn redefined(&mut self, table: &str) {
        self.whole(table);
        self.redefined = true;
    }

    /// A DDL notice of Veneer's event trigger (see [`DDL_PREFIX`]).
    pub(crate) fn note_ddl(&mut self, content: &[u8]) {
        for line in String::from_utf8_lossy(content).lines() {
            if line == "*" {
                self.ddl = Some(Ddl::Unknown);
            } else if !line.is_empty() {
                self.whole(line);
                self.ddl.get_or_insert(Ddl::Tables);
            }
        }
        self.ddl.get_or_insert(Ddl::Unknown);
    }

    /// A privileges notice of Veneer's event trigger (see [`PRIVILEGES_PREFIX`]).
    pub(crate) fn note_privileges(&mut self) {
        self.privileges = true;
    }

    /// A flush notice of another Veneer's (see [`FLUSH_PREFIX`]).
    pub(crate) fn note_flush(&mut self, content: &[u8]) {
        let text = String::from_utf8_lossy(content);
        self.flushes
            .extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
    }

    /// The transaction committed at `end_lsn`, at `commit_time`.
    pub(crate) fn commit(self, end_lsn: u64, commit_time: SystemTime) -> Commit {
        Commit {
            changed: self.changed.into_keys().collect(),
            keys: self.keys,
            whole: self.whole.into_iter().collect(),
            redefined: self.redefined,
            ddl: self.ddl,
            privileges: self.privileges,
            rows: self.rows,
            flushes: self.flushes,
            end_lsn,
            commit_time,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_with_too_many_changed_rows_changes_as_a_whole() {
        let mut pending = Pending::default();
        for _ in 0..ROW_KEYS_PER_TABLE {
            pending.change("big").expect("keys read").insert(1);
        }
        assert!(pending.change("big").is_none());
        assert!(pending.change("small").is_some());
        let commit = pending.commit(9, SystemTime::UNIX_EPOCH);
        assert_eq!(commit.whole, vec!["big".to_owned()]);
        assert_eq!(commit.rows, u64::from(ROW_KEYS_PER_TABLE) + 2);
    }

    #[test]
    fn ddl_notices_name_tables_or_everything() {
        let mut pending = Pending::default();
        pending.note_ddl(b"orders\n");
        assert_eq!(pending.ddl, Some(Ddl::Tables));
        pending.note_ddl(b"*\n");
        assert_eq!(pending.ddl, Some(Ddl::Unknown));
        let mut empty = Pending::default();
        empty.note_ddl(b"");
        assert_eq!(
            empty.ddl,
            Some(Ddl::Unknown),
            "an empty notice says nothing"
        );
    }
}
