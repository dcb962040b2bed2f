//! The session state followed through realistic message sequences, as a server would answer them.

use super::*;

fn msg_body(parts: &[&[u8]]) -> Bytes {
    Bytes::from(parts.concat())
}

fn query(s: &mut SessionState, sql: &str) {
    s.on_frontend(b'Q', &msg_body(&[sql.as_bytes(), b"\0"]));
}

fn complete(s: &mut SessionState, tag: &str) {
    s.on_backend(b'C', &[tag.as_bytes(), b"\0"].concat());
}

fn ready(s: &mut SessionState, status: u8) {
    s.on_backend(b'Z', &[status]);
}

fn history(s: &SessionState) -> Vec<String> {
    s.settings
        .history()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect()
}

fn parse(s: &mut SessionState, name: &str, sql: &str) {
    s.on_frontend(
        b'P',
        &msg_body(&[name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"]),
    );
}

fn bind(s: &mut SessionState, portal: &str, statement: &str) {
    s.on_frontend(
        b'B',
        &msg_body(&[
            portal.as_bytes(),
            b"\0",
            statement.as_bytes(),
            b"\0\0\0\0\0\0\0",
        ]),
    );
}

fn execute(s: &mut SessionState, portal: &str) {
    s.on_frontend(b'E', &msg_body(&[portal.as_bytes(), b"\0\0\0\0\0"]));
}

#[test]
fn autocommit_set_is_kept() {
    let mut s = SessionState::default();
    query(&mut s, "SET search_path = app");
    complete(&mut s, "SET");
    ready(&mut s, b'I');
    assert_eq!(history(&s), ["SET search_path = app"]);
    assert!(s.is_idle());
    assert!(!s.settings.is_opaque());
}

#[test]
fn rolled_back_set_is_forgotten() {
    let mut s = SessionState::default();
    query(&mut s, "BEGIN; SET TimeZone = 'UTC'");
    complete(&mut s, "BEGIN");
    complete(&mut s, "SET");
    ready(&mut s, b'T');
    assert_eq!(s.tx, TxStatus::InBlock);
    assert_eq!(
        history(&s),
        ["SET TimeZone = 'UTC'"],
        "in force inside the transaction"
    );
    query(&mut s, "ROLLBACK");
    complete(&mut s, "ROLLBACK");
    ready(&mut s, b'I');
    assert!(history(&s).is_empty());
}

#[test]
fn failed_implicit_transaction_discards_its_sets() {
    let mut s = SessionState::default();
    query(&mut s, "SET a.b = 1; SELECT 1/0");
    complete(&mut s, "SET");
    s.on_backend(b'E', b"SERROR\0C22012\0\0");
    ready(&mut s, b'I');
    assert!(history(&s).is_empty());
}

#[test]
fn commit_keeps_sets_and_drops_set_local() {
    let mut s = SessionState::default();
    query(&mut s, "BEGIN; SET LOCAL x.y = 1; SET x.z = 2; COMMIT");
    for tag in ["BEGIN", "SET", "SET", "COMMIT"] {
        complete(&mut s, tag);
    }
    ready(&mut s, b'I');
    assert_eq!(history(&s), ["SET x.z = 2"]);
}

#[test]
fn reset_all_clears_history() {
    let mut s = SessionState::default();
    query(&mut s, "SET a.b = 1");
    complete(&mut s, "SET");
    ready(&mut s, b'I');
    query(&mut s, "RESET ALL");
    complete(&mut s, "RESET");
    ready(&mut s, b'I');
    assert!(history(&s).is_empty());
}

#[test]
fn savepoint_rollback_with_pending_sets_makes_settings_opaque() {
    let mut s = SessionState::default();
    query(
        &mut s,
        "BEGIN; SAVEPOINT p; SET a.b = 1; ROLLBACK TO SAVEPOINT p",
    );
    for tag in ["BEGIN", "SAVEPOINT", "SET", "ROLLBACK"] {
        complete(&mut s, tag);
    }
    ready(&mut s, b'T');
    assert!(s.settings.is_opaque());
}

#[test]
fn set_config_makes_settings_opaque() {
    let mut s = SessionState::default();
    query(&mut s, "SELECT set_config('search_path', 'x', false)");
    s.on_backend(b'T', b"");
    s.on_backend(b'D', b"");
    complete(&mut s, "SELECT 1");
    ready(&mut s, b'I');
    assert!(s.settings.is_opaque());
}

#[test]
fn pipelined_extended_set_is_tracked() {
    let mut s = SessionState::default();
    parse(&mut s, "", "SET search_path TO app");
    bind(&mut s, "", "");
    s.on_frontend(b'D', &msg_body(&[b"P\0"]));
    execute(&mut s, "");
    s.on_frontend(b'S', &Bytes::new());
    s.on_backend(b'1', b"");
    s.on_backend(b'2', b"");
    s.on_backend(b'n', b"");
    complete(&mut s, "SET");
    ready(&mut s, b'I');
    assert_eq!(history(&s), ["SET search_path TO app"]);
    assert!(s.is_idle());
    assert!(s.portals.is_empty(), "portals end with the transaction");
    assert!(s.statements.contains_key(""));
}

#[test]
fn named_statements_live_until_closed_or_deallocated() {
    let mut s = SessionState::default();
    parse(&mut s, "s1", "select $1::int");
    parse(&mut s, "s2", "select 2");
    s.on_frontend(b'S', &Bytes::new());
    s.on_backend(b'1', b"");
    s.on_backend(b'1', b"");
    ready(&mut s, b'I');
    assert_eq!(s.statements.len(), 2);
    s.on_frontend(b'C', &msg_body(&[b"Ss1\0"]));
    s.on_frontend(b'S', &Bytes::new());
    s.on_backend(b'3', b"");
    ready(&mut s, b'I');
    assert!(!s.statements.contains_key("s1"));
    query(&mut s, "DEALLOCATE s2");
    complete(&mut s, "DEALLOCATE");
    ready(&mut s, b'I');
    assert!(s.statements.is_empty());
}

#[test]
fn error_skips_the_rest_of_the_batch() {
    let mut s = SessionState::default();
    parse(&mut s, "bad", "selec 1");
    bind(&mut s, "", "bad");
    execute(&mut s, "");
    s.on_frontend(b'S', &Bytes::new());
    parse(&mut s, "good", "select 1");
    s.on_frontend(b'S', &Bytes::new());
    s.on_backend(b'E', b"SERROR\0C42601\0\0");
    ready(&mut s, b'I');
    s.on_backend(b'1', b"");
    ready(&mut s, b'I');
    assert!(!s.statements.contains_key("bad"));
    assert!(s.statements.contains_key("good"));
    assert!(s.is_idle());
    assert!(!s.settings.is_opaque());
}

#[test]
fn temp_tables_are_noted_when_sent_and_cleared_by_discard() {
    let mut s = SessionState::default();
    query(&mut s, "CREATE TEMP TABLE t (a int)");
    assert!(s.temp_tables);
    complete(&mut s, "CREATE TABLE");
    ready(&mut s, b'I');
    query(&mut s, "DISCARD TEMP");
    complete(&mut s, "DISCARD TEMP");
    ready(&mut s, b'I');
    assert!(!s.temp_tables);
}

#[test]
fn parameter_status_and_transaction_status_are_followed() {
    let mut s = SessionState::default();
    s.on_backend(b'S', b"TimeZone\0UTC\0");
    s.on_backend(b'K', &[0, 0, 0, 42, 1, 2, 3, 4]);
    ready(&mut s, b'E');
    assert_eq!(s.params.get("TimeZone").map(String::as_str), Some("UTC"));
    assert_eq!(s.tx, TxStatus::Failed);
    assert_eq!(
        s.backend_key.as_deref(),
        Some(&[0, 0, 0, 42, 1, 2, 3, 4][..])
    );
}

#[test]
fn unmatched_reply_loses_track_instead_of_guessing() {
    let mut s = SessionState::default();
    s.on_backend(b'1', b"");
    assert!(s.settings.is_opaque());
}

/// A fixed-seed xorshift generator: random inputs that are the same on every run.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Bytes biased towards what the parsers look for (NULs, quotes, keywords' letters, tags).
    fn bytes(&mut self, max_len: usize) -> Bytes {
        const ALPHABET: &[u8] = b"\0\0\0'\"$;-/*\\ eEsStTlLaA12PBEDCSQZ";
        let len = (self.next() % max_len as u64) as usize;
        (0..len)
            .map(|_| {
                let r = self.next();
                if r % 4 == 0 {
                    r as u8
                } else {
                    ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                }
            })
            .collect()
    }
}

#[test]
fn arbitrary_messages_never_panic_the_tracking() {
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut s = SessionState::default();
    for _ in 0..20_000 {
        let tag = b"QPBDECSFHXdcf1234TnIsEZSKRVx"[(noise.next() % 28) as usize];
        let body = noise.bytes(64);
        if noise.next() % 2 == 0 {
            s.on_frontend(tag, &body);
        } else {
            s.on_backend(tag, &body);
        }
    }
    // Still usable: once every request the noise queued is answered, a well-formed exchange is
    // followed as usual.
    for _ in 0..20_000 {
        ready(&mut s, b'I');
    }
    assert!(s.is_idle());
    query(&mut s, "SELECT 1");
    complete(&mut s, "SELECT 1");
    ready(&mut s, b'I');
    assert!(s.is_idle());
}

#[test]
fn arbitrary_sql_never_panics_the_scanner() {
    let mut noise = Noise(0x2545_f491_4f6c_dd1d);
    for _ in 0..20_000 {
        let sql = noise.bytes(80);
        for statement in sql_scan::scan(&sql) {
            assert!(statement.span.start <= statement.span.end && statement.span.end <= sql.len());
        }
    }
}
