//! Row keys: what a point lookup (equality on a table's key) depends on instead of the whole table.
//!
//! A key is hashed from the table name, the key's column names (in name order) and their values into
//! one of [`ROW_BUCKETS`] counters. The query side hashes the values it reads from SQL literals and
//! Bind parameters; the replication side hashes the values of the changed rows as pgoutput sends them
//! (text output). Both must agree byte for byte, so only types whose values have one canonical form
//! take part ([`KeyType`]); for any other type, or a value the parser here does not take as
//! canonical, the query falls back to depending on the whole table. Two keys sharing a bucket only
//! cost an extra miss.

use std::hash::{BuildHasher, Hasher};

/// Row-key counters per database: 512 KiB of counters, so that a write rarely misses another row's
/// cached lookup through a shared bucket.
pub const ROW_BUCKETS: usize = 1 << 16;

/// Seed of the key hash: fixed, so that every component of one process hashes keys alike.
const SEED: u64 = 0x7665_6e65_6572_726b;

/// Column types whose values can key a point lookup: each value has exactly one representation once
/// parsed, and equality on them is equality of that representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// smallint, integer, bigint.
    Int,
    /// text and varchar under a deterministic collation (equal means byte-equal).
    Text,
    /// uuid.
    Uuid,
}

/// pg_type OIDs.
mod oid {
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const UNKNOWN: u32 = 705;
    pub const VARCHAR: u32 = 1043;
    pub const UUID: u32 = 2950;
}

impl KeyType {
    /// The key type of a column of type `type_oid`, if it can key point lookups. (Whether a text
    /// column's collation is deterministic is the caller's to check.)
    pub fn of(type_oid: u32) -> Option<KeyType> {
        match type_oid {
            oid::INT2 | oid::INT4 | oid::INT8 => Some(KeyType::Int),
            oid::TEXT | oid::VARCHAR => Some(KeyType::Text),
            oid::UUID => Some(KeyType::Uuid),
            _ => None,
        }
    }

    /// Whether a parameter the client declared as `type_oid` (0: left to the server, which then
    /// takes the column's type) compares with a column of this type by the value as sent. Other
    /// declarations (numeric, bpchar, …) convert the value first, so it is not the key.
    pub fn accepts_param(self, type_oid: u32) -> bool {
        match self {
            KeyType::Int => matches!(type_oid, 0 | oid::INT2 | oid::INT4 | oid::INT8),
            KeyType::Text => matches!(type_oid, 0 | oid::TEXT | oid::VARCHAR | oid::UNKNOWN),
            KeyType::Uuid => matches!(type_oid, 0 | oid::UUID),
        }
    }

    /// The canonical value of `text` (a value's text form: a literal, a text-format parameter, or
    /// pgoutput's output), or `None` when it is not in a form parsed here.
    pub fn from_text(self, text: &[u8]) -> Option<KeyValue<'_>> {
        match self {
            KeyType::Int => parse_int(text).map(KeyValue::Int),
            KeyType::Text => Some(KeyValue::Bytes(text)),
            KeyType::Uuid => parse_uuid(text).map(KeyValue::Uuid),
        }
    }

    /// The canonical value of a binary-format parameter.
    pub fn from_binary(self, bytes: &[u8]) -> Option<KeyValue<'_>> {
        match self {
            KeyType::Int => match bytes.len() {
                2 => Some(i64::from(i16::from_be_bytes(bytes.try_into().ok()?))),
                4 => Some(i64::from(i32::from_be_bytes(bytes.try_into().ok()?))),
                8 => Some(i64::from_be_bytes(bytes.try_into().ok()?)),
                _ => None,
            }
            .map(KeyValue::Int),
            KeyType::Text => Some(KeyValue::Bytes(bytes)),
            KeyType::Uuid => Some(KeyValue::Uuid(u128::from_be_bytes(bytes.try_into().ok()?))),
        }
    }
}

/// Which columns key a table's rows for point lookups. The query side plans lookups from it and the
/// replication side reads the same columns of every changed row, so both hash the same keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowKeys {
    /// The replica identity's columns (the primary key, or the identity index) together, by name.
    Together(Vec<(String, KeyType)>),
    /// Any one of these columns (REPLICA IDENTITY FULL: every change carries whole rows).
    Each(Vec<(String, KeyType)>),
}

/// A key value in canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyValue<'a> {
    /// An integer.
    Int(i64),
    /// A string's bytes (in the server's encoding).
    Bytes(&'a [u8]),
    /// A UUID's 128 bits.
    Uuid(u128),
}

/// Digits with an optional minus sign: the form Postgres prints. Other forms it accepts (spaces, a
/// plus sign, underscores, hex) are left to the whole-table fallback.
fn parse_int(text: &[u8]) -> Option<i64> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// 32 hex digits, hyphens anywhere, optionally in braces: every form Postgres accepts reads as the
/// same 128 bits here.
fn parse_uuid(text: &[u8]) -> Option<u128> {
    let text = match text {
        [b'{', inner @ .., b'}'] => inner,
        _ => text,
    };
    let mut value = 0u128;
    let mut digits = 0;
    for &c in text {
        if c == b'-' {
            continue;
        }
        let digit = (c as char).to_digit(16)?;
        value = (value << 4) | u128::from(digit);
        digits += 1;
    }
    (digits == 32).then_some(value)
}

/// Hashes one row key into its bucket: `table`, then each key column's name and value, in column
/// name order.
pub struct RowKey(foldhash::quality::FoldHasher<'static>);

impl RowKey {
    /// Starts the key of a row of `table` (named as in [`crate::Generations::table`]).
    pub fn new(table: &str) -> RowKey {
        static STATE: foldhash::quality::FixedState =
            foldhash::quality::FixedState::with_seed(SEED);
        let mut hasher = STATE.build_hasher();
        hasher.write(table.as_bytes());
        hasher.write_u8(0);
        RowKey(hasher)
    }

    /// Adds one key column's value.
    pub fn column(&mut self, name: &str, value: KeyValue<'_>) {
        self.0.write(name.as_bytes());
        self.0.write_u8(0);
        match value {
            KeyValue::Int(v) => {
                self.0.write_u8(1);
                self.0.write_i64(v);
            }
            KeyValue::Bytes(b) => {
                self.0.write_u8(2);
                self.0.write_usize(b.len());
                self.0.write(b);
            }
            KeyValue::Uuid(v) => {
                self.0.write_u8(3);
                self.0.write_u128(v);
            }
        }
    }

    /// The bucket of the key.
    pub fn bucket(self) -> usize {
        (self.0.finish() as usize) & (ROW_BUCKETS - 1)
    }
}

/// The buckets one transaction changed: a short list while they are few (most transactions change a
/// handful of rows, and the list costs them no 8 KiB bitmap to fill and walk), then a bitmap of every
/// bucket, so a transaction of millions of rows still takes bounded memory.
#[derive(Debug, Clone, Default)]
pub struct RowSet {
    /// Distinct buckets in the order added, while no more than [`SPARSE_MAX`].
    sparse: Vec<u16>,
    /// One bit per bucket once the list is full; empty until then.
    dense: Vec<u64>,
}

/// Buckets listed before the set turns into a bitmap (the list then takes 512 bytes).
const SPARSE_MAX: usize = 256;

// Buckets are listed as u16.
const _: () = assert!(ROW_BUCKETS <= 1 << 16);

impl RowSet {
    /// Adds a bucket (below [`ROW_BUCKETS`]).
    pub fn insert(&mut self, bucket: usize) {
        let bucket = bucket & (ROW_BUCKETS - 1);
        if !self.dense.is_empty() {
            self.dense[bucket / 64] |= 1 << (bucket % 64);
        } else if !self.sparse.contains(&(bucket as u16)) {
            if self.sparse.len() < SPARSE_MAX {
                self.sparse.push(bucket as u16);
            } else {
                self.dense = vec![0; ROW_BUCKETS / 64];
                for listed in std::mem::take(&mut self.sparse) {
                    self.insert(listed.into());
                }
                self.insert(bucket);
            }
        }
    }

    /// Whether no bucket was added.
    pub fn is_empty(&self) -> bool {
        self.sparse.is_empty() && self.dense.is_empty()
    }

    /// The buckets added, each once.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let listed = self.sparse.iter().map(|&b| usize::from(b));
        let mapped = self.dense.iter().enumerate().flat_map(|(i, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                let bit = (rest != 0).then(|| rest.trailing_zeros() as usize)?;
                rest &= rest - 1;
                Some(i * 64 + bit)
            })
        });
        listed.chain(mapped)
    }
}

impl PartialEq for RowSet {
    /// The same buckets, however they were added.
    fn eq(&self, other: &Self) -> bool {
        let sorted = |set: &RowSet| {
            let mut buckets: Vec<usize> = set.iter().collect();
            buckets.sort_unstable();
            buckets
        };
        sorted(self) == sorted(other)
    }
}

impl Eq for RowSet {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_sets_list_each_bucket_once_below_and_above_the_bitmap_threshold() {
        for count in [0, 1, 5, SPARSE_MAX, SPARSE_MAX + 1, 5000] {
            let mut set = RowSet::default();
            // Each bucket is added twice.
            let buckets: Vec<usize> = (0..count).map(|i| (i * 7919) % ROW_BUCKETS).collect();
            for &b in buckets.iter().chain(&buckets) {
                set.insert(b);
            }
            let mut got: Vec<usize> = set.iter().collect();
            got.sort_unstable();
            let mut want = buckets.clone();
            want.sort_unstable();
            assert_eq!(got, want, "{count} buckets");
            assert_eq!(set.is_empty(), count == 0);
            let mut reversed = RowSet::default();
            for &b in buckets.iter().rev() {
                reversed.insert(b);
            }
            assert_eq!(set, reversed);
        }
        let mut edge = RowSet::default();
        edge.insert(ROW_BUCKETS - 1);
        assert_eq!(edge.iter().collect::<Vec<_>>(), vec![ROW_BUCKETS - 1]);
    }

    fn bucket(table: &str, columns: &[(&str, KeyValue)]) -> usize {
        let mut key = RowKey::new(table);
        for (name, value) in columns {
            key.column(name, *value);
        }
        key.bucket()
    }

    #[test]
    fn every_accepted_form_of_a_value_keys_the_same_row() {
        let int = KeyType::Int;
        assert_eq!(int.from_text(b"42"), Some(KeyValue::Int(42)));
        assert_eq!(int.from_text(b"042"), Some(KeyValue::Int(42)));
        assert_eq!(int.from_text(b"-7"), Some(KeyValue::Int(-7)));
        assert_eq!(
            int.from_binary(&42i32.to_be_bytes()),
            Some(KeyValue::Int(42))
        );
        assert_eq!(
            int.from_binary(&42i16.to_be_bytes()),
            Some(KeyValue::Int(42))
        );
        assert_eq!(
            int.from_binary(&(-7i64).to_be_bytes()),
            Some(KeyValue::Int(-7))
        );
        for odd in [
            &b" 42"[..],
            b"+42",
            b"4_2",
            b"0x2A",
            b"42.0",
            b"",
            b"-",
            b"99999999999999999999",
        ] {
            assert_eq!(int.from_text(odd), None, "{odd:?}");
        }
        let uuid = KeyType::Uuid;
        let canonical = uuid.from_text(b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert!(canonical.is_some());
        assert_eq!(
            uuid.from_text(b"{A0EEBC999C0B4EF8BB6D6BB9BD380A11}"),
            canonical
        );
        assert_eq!(
            uuid.from_text(b"a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11"),
            canonical
        );
        let bits = 0xa0eebc99_9c0b_4ef8_bb6d_6bb9bd380a11u128.to_be_bytes();
        assert_eq!(uuid.from_binary(&bits), canonical);
        assert_eq!(uuid.from_text(b"a0eebc99"), None);
        assert_eq!(
            uuid.from_text(b"g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            None
        );
    }

    #[test]
    fn parameters_converted_before_comparing_are_not_keys() {
        assert!(KeyType::Int.accepts_param(0));
        assert!(KeyType::Int.accepts_param(20));
        assert!(!KeyType::Int.accepts_param(701), "float8");
        assert!(
            !KeyType::Text.accepts_param(1042),
            "bpchar drops trailing spaces"
        );
        assert!(KeyType::Uuid.accepts_param(2950));
    }

    #[test]
    fn a_key_hashes_its_table_columns_and_values() {
        let one = bucket("t", &[("id", KeyValue::Int(1))]);
        assert_eq!(one, bucket("t", &[("id", KeyValue::Int(1))]));
        let others = [
            bucket("t", &[("id", KeyValue::Int(2))]),
            bucket("u", &[("id", KeyValue::Int(1))]),
            bucket("t", &[("other", KeyValue::Int(1))]),
            bucket("t", &[("id", KeyValue::Bytes(b"1"))]),
        ];
        assert!(others.iter().all(|&b| b != one), "{one} {others:?}");
    }

    #[test]
    fn a_row_set_holds_each_bucket_once() {
        let mut set = RowSet::default();
        assert!(set.is_empty());
        for b in [5, 70_000 % ROW_BUCKETS, 5, ROW_BUCKETS - 1] {
            set.insert(b);
        }
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            vec![5, 70_000 % ROW_BUCKETS, ROW_BUCKETS - 1]
        );
    }
}
