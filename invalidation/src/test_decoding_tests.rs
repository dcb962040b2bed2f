use super::*;
use crate::commit::Ddl;
use crate::rows::KeyValue;

/// The catalog of the tests: `pk` keyed by `id`, `pair` by (`a`, `b`), `full` by any of `id`, `v`
/// (REPLICA IDENTITY FULL), `nopk` not keyed; anything else unknown.
struct Catalog;

impl KeySource for Catalog {
    fn row_keys(&self, name: &str) -> TableKeys {
        let int = |n: &str| (n.to_owned(), KeyType::Int);
        let text = |n: &str| (n.to_owned(), KeyType::Text);
        match name {
            "pk" => TableKeys::Keyed(Arc::new(RowKeys::Together(vec![int("id")]))),
            "pair" => TableKeys::Keyed(Arc::new(RowKeys::Together(vec![int("a"), text("b")]))),
            "full" => TableKeys::Keyed(Arc::new(RowKeys::Each(vec![int("id"), text("v")]))),
            "nopk" => TableKeys::Unkeyed,
            _ => TableKeys::Unknown,
        }
    }
}

fn bucket(table: &str, columns: &[(&str, KeyValue<'_>)]) -> usize {
    let mut key = RowKey::new(table);
    for (name, value) in columns {
        key.column(name, *value);
    }
    key.bucket()
}

/// Applies `lines` as one transaction committed at WAL position 77.
fn commit(lines: &[&str]) -> Commit {
    let mut decoder = Decoder::default();
    commit_with(&mut decoder, lines)
}

fn commit_with(decoder: &mut Decoder, lines: &[&str]) -> Commit {
    assert_eq!(decoder.apply(b"BEGIN", 1, &Catalog), None);
    assert!(!decoder.between_transactions());
    for line in lines {
        assert_eq!(decoder.apply(line.as_bytes(), 2, &Catalog), None, "{line}");
    }
    let done = decoder.apply(b"COMMIT (at 2026-12-06 00:28:06.414093+00)", 77, &Catalog);
    assert!(decoder.between_transactions());
    done.expect("a commit")
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

#[test]
fn lines_of_every_kind_are_read() {
    assert_eq!(parse(b"BEGIN"), Line::Begin);
    assert_eq!(parse(b"BEGIN 1234"), Line::Begin);
    assert_eq!(parse(b"COMMIT"), Line::Commit(None));
    let Line::Change {
        table,
        op,
        old,
        new,
    } = parse(
        b"table \"My Schema\".\"Odd \"\"T\"\"\": UPDATE: old-key: \"Id\"[integer]:1 new-tuple: \
          \"Id\"[integer]:2 v[text]:'it''s a b' arr[integer[]]:'{1,2}' n[numeric]:1.5 \
          big[text]:unchanged-toast-datum gone[text]:null",
    )
    else {
        panic!("not a change")
    };
    assert_eq!(table, "Odd \"T\"");
    assert_eq!(op, Op::Update);
    let old = old.expect("old key");
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].name, "Id");
    let new = new.expect("new row");
    let values: Vec<(&str, &[u8], Value<'_>)> = new
        .iter()
        .map(|c| (&*c.name, c.type_name, c.value.clone()))
        .collect();
    let text = |t: &'static [u8]| Value::Text(Cow::Borrowed(t));
    assert_eq!(
        values,
        vec![
            ("Id", &b"integer"[..], text(b"2")),
            ("v", b"text", text(b"it's a b")),
            ("arr", b"integer[]", text(b"{1,2}")),
            ("n", b"numeric", text(b"1.5")),
            ("big", b"text", Value::Unchanged),
            ("gone", b"text", Value::Null),
        ]
    );
    assert_eq!(
        parse(b"table public.a, s.\"B\": TRUNCATE: restart_seqs cascade"),
        Line::Truncate(vec!["a".into(), "B".into()])
    );
    assert_eq!(
        parse(b"message: transactional: 1 prefix: veneer.ddl, sz: 5 content:pk\n*\n"),
        Line::Message {
            prefix: b"veneer.ddl",
            content: b"pk\n*\n"
        }
    );
    assert_eq!(
        parse(b"message: transactional: 0 prefix: other, sz: 1 content:x"),
        Line::Ignored
    );
    assert_eq!(
        parse(b"table public.nopk: DELETE: (no-tuple-data)"),
        Line::Change {
            table: "nopk".into(),
            op: Op::Delete,
            old: None,
            new: None
        }
    );
}

#[test]
fn malformed_lines_change_what_they_name_or_everything() {
    for line in [
        &b"table public.pk: UPDATE: id[integer]:'unterminated"[..],
        b"table public.pk: INSERT: id[integer:1",
        b"table public.pk: INSERT: id[integer]:1 trailing",
    ] {
        assert_eq!(
            parse(line),
            Line::Unreadable { table: "pk".into() },
            "{}",
            String::from_utf8_lossy(line)
        );
    }
    for line in [
        &b"table public: INSERT: id[integer]:1"[..],
        b"table public.pk INSERT",
        b"table public.pk: MERGE: x",
        b"something new",
        b"",
        b"message: transactional: 1 prefix: veneer.ddl, sz: 99 content:short",
    ] {
        assert_eq!(
            parse(line),
            Line::Other,
            "{}",
            String::from_utf8_lossy(line)
        );
    }
    let done = commit(&["table public.pk: INSERT: id[integer:1", "what is this"]);
    assert_eq!(done.whole, vec!["pk".to_owned()]);
    assert_eq!(
        done.ddl,
        Some(Ddl::Unknown),
        "unknown output changes everything"
    );
}

#[test]
fn commits_carry_their_end_and_time() {
    let done = commit(&[]);
    assert_eq!(done.end_lsn, 77);
    let expected = UNIX_EPOCH + Duration::from_micros(1_796_516_886_414_093);
    assert_eq!(done.commit_time, expected);
    assert_eq!(
        parse_timestamp("2026-12-06 05:58:06.414093+05:30"),
        Some(expected)
    );
    assert_eq!(
        parse_timestamp("2000-01-01 00:00:00-01"),
        Some(UNIX_EPOCH + Duration::from_secs(946_688_400))
    );
    assert_eq!(parse_timestamp("infinity"), None);
}

#[test]
fn keyed_tables_change_by_row_and_others_by_table() {
    let done = commit(&[
        "table public.pk: UPDATE: id[integer]:1 v[text]:'x'",
        "table public.pk: UPDATE: old-key: id[integer]:2 new-tuple: id[integer]:3 v[text]:null",
        "table public.pk: DELETE: id[integer]:4",
        "table public.pair: INSERT: a[integer]:5 b[text]:'five' note[text]:null",
        "table public.nopk: UPDATE: a[integer]:1 b[text]:'y'",
        "table public.nopk: DELETE: (no-tuple-data)",
    ]);
    assert_eq!(sorted(done.changed), vec!["nopk", "pair", "pk"]);
    assert!(done.whole.is_empty(), "{:?}", done.whole);
    assert!(!done.redefined);
    assert_eq!(done.rows, 6);
    let int = KeyValue::Int;
    let mut expected: Vec<usize> = [1, 2, 3, 4]
        .iter()
        .map(|&id| bucket("pk", &[("id", int(id))]))
        .collect();
    expected.push(bucket(
        "pair",
        &[("a", int(5)), ("b", KeyValue::Bytes(b"five"))],
    ));
    expected.sort_unstable();
    let mut got: Vec<usize> = done.keys.iter().collect();
    got.sort_unstable();
    assert_eq!(got, expected);
}

#[test]
fn full_identity_tables_change_by_each_column_of_old_and_new_rows() {
    let done = commit(&[
        "table public.full: UPDATE: old-key: id[integer]:1 v[text]:'a' new-tuple: id[integer]:1 \
         v[text]:'b'",
        "table public.full: DELETE: id[integer]:2",
    ]);
    assert!(done.whole.is_empty());
    let mut got: Vec<usize> = done.keys.iter().collect();
    got.sort_unstable();
    let mut expected = vec![
        bucket("full", &[("id", KeyValue::Int(1))]),
        bucket("full", &[("v", KeyValue::Bytes(b"a"))]),
        bucket("full", &[("v", KeyValue::Bytes(b"b"))]),
        bucket("full", &[("id", KeyValue::Int(2))]),
    ];
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(got, expected);
}

#[test]
fn rows_that_do_not_fit_the_catalog_redefine_their_table() {
    for line in [
        // The key column is gone or of another type.
        "table public.pk: INSERT: other[integer]:1",
        "table public.pk: INSERT: id[numeric]:1",
        "table public.pair: INSERT: a[integer]:1 b[numeric]:2",
        // A delete without its key: the table lost its identity.
        "table public.pk: DELETE: (no-tuple-data)",
        // An update of a FULL table without its old row: it is no longer FULL.
        "table public.full: UPDATE: id[integer]:1 v[text]:'b'",
    ] {
        let done = commit(&[line]);
        assert!(done.redefined, "{line}");
        assert_eq!(done.whole.len(), 1, "{line}");
    }
    // Values that are no keys, and tables the catalog does not know, change the table as a whole.
    for line in [
        "table public.pk: INSERT: id[integer]:1.5",
        "table public.pk: UPDATE: id[integer]:unchanged-toast-datum",
        "table public.newer: INSERT: id[integer]:1",
    ] {
        let done = commit(&[line]);
        assert!(!done.redefined, "{line}");
        assert_eq!(done.whole.len(), 1, "{line}");
    }
}

#[test]
fn a_table_whose_columns_change_is_redefined() {
    let mut decoder = Decoder::default();
    let first = commit_with(&mut decoder, &["table public.nopk: INSERT: a[integer]:1"]);
    assert!(!first.redefined);
    let same = commit_with(&mut decoder, &["table public.nopk: INSERT: a[integer]:2"]);
    assert!(!same.redefined);
    let changed = commit_with(&mut decoder, &["table public.nopk: INSERT: a[bigint]:3"]);
    assert!(changed.redefined);
    assert_eq!(changed.whole, vec!["nopk".to_owned()]);
}

#[test]
fn truncates_and_ddl_notices_change_what_they_name() {
    let done = commit(&[
        "table public.pk, public.nopk: TRUNCATE: (no-flags)",
        "message: transactional: 1 prefix: veneer.ddl, sz: 6 content:pair\n\n",
        "message: transactional: 1 prefix: someone.else, sz: 2 content:*\n",
    ]);
    assert_eq!(sorted(done.whole), vec!["nopk", "pair", "pk"]);
    assert_eq!(done.ddl, Some(Ddl::Tables));
}
