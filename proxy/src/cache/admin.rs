//! Administration from any SQL client on the proxy's own port, in a syntax Postgres itself rejects (so
//! it can never shadow real SQL): `SHOW VENEER STATUS`, `SHOW VENEER QUERIES`, `SHOW VENEER NODES`,
//! `SHOW VENEER HOT`, `VENEER FLUSH [ALL]`, `VENEER FLUSH TABLE name`. Answers are ordinary result sets authored with pgwire's messages.

use bytes::{BufMut, Bytes, BytesMut};
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::response::{CommandComplete, ReadyForQuery, TransactionStatus};
use pgwire::messages::Message;
use veneer_cache_node::CacheStore;
use veneer_config::Replication;
use veneer_invalidation::Source;

use super::database::{CatalogState, Database, Listener};
use super::{tier_view, Cache};
use crate::passthrough::Reason;
use crate::wire::authored::{error_response, Severity};

/// An administrative command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Cache size, hit ratio, uptime, databases.
    Status,
    /// Statistics per query shape.
    Queries,
    /// The tier's nodes.
    Nodes,
    /// The most-hit requests.
    Hot,
    /// Drop every cached result.
    FlushAll,
    /// Drop the cached results that read one table.
    FlushTable(String),
    /// Starts like a command but is none.
    Unknown(String),
}

impl Command {
    /// Whether the command changes the cache or shows other sessions' queries.
    fn privileged(&self) -> bool {
        !matches!(self, Command::Status | Command::Unknown(_))
    }
}

/// The command a simple query holds, if it is one (decided from its first words, no parsing). Every
/// simple query passes here, cache hits included, so anything not starting with SHOW or VENEER is
/// turned away before a byte is copied.
pub fn command(sql: &[u8]) -> Option<Command> {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    let first = &sql[start..];
    if !(starts_with_word(first, b"SHOW") || starts_with_word(first, b"VENEER")) {
        return None;
    }
    let text = std::str::from_utf8(sql).ok()?;
    let words: Vec<&str> = text
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace() || c == '\0')
        .split_whitespace()
        .collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
    let command = match upper.as_slice() {
        ["SHOW", "VENEER", "STATUS"] => Command::Status,
        ["SHOW", "VENEER", "QUERIES"] => Command::Queries,
        ["SHOW", "VENEER", "NODES"] => Command::Nodes,
        ["SHOW", "VENEER", "HOT"] => Command::Hot,
        ["VENEER", "FLUSH"] | ["VENEER", "FLUSH", "ALL"] => Command::FlushAll,
        ["VENEER", "FLUSH", "TABLE", _] => Command::FlushTable(fold_identifier(words[3])),
        ["SHOW", "VENEER", ..] | ["VENEER", ..] => Command::Unknown(words.join(" ")),
        _ => return None,
    };
    Some(command)
}

/// Whether `text` starts with `word` (ASCII case ignored) followed by a word boundary.
fn starts_with_word(text: &[u8], word: &[u8]) -> bool {
    text.len() >= word.len()
        && text[..word.len()].eq_ignore_ascii_case(word)
        && text
            .get(word.len())
            .is_none_or(|b| !b.is_ascii_alphanumeric() && *b != b'_')
}

/// Unquoted names fold to lower case as in Postgres; a schema prefix is dropped (generations are
/// kept by relation name).
fn fold_identifier(word: &str) -> String {
    let name = word.rsplit('.').next().unwrap_or(word);
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(quoted) => quoted.to_owned(),
        None => name.to_lowercase(),
    }
}

/// Runs `command` and returns the complete reply, ReadyForQuery (with the session's `tx` status)
/// included. `admin` says whether the session may run privileged commands (a superuser, or a role
/// in admin_users).
pub async fn answer(cache: &Cache, command: &Command, admin: bool, tx: TransactionStatus) -> Bytes {
    let mut out = BytesMut::new();
    if command.privileged() && !admin {
        out.put(error_response(
            Severity::Error,
            "42501",
            "permission denied: this Veneer command needs a superuser or a role in admin_users",
        ));
    } else {
        match command {
            Command::Status => {
                let rows = status(cache).await;
                result_set(&mut out, &["name", "value"], &rows);
            }
            Command::Queries => result_set(&mut out, &QUERY_COLUMNS, &queries(cache)),
            Command::Nodes => {
                let rows = tier_view::nodes(cache).await;
                result_set(&mut out, &tier_view::NODE_COLUMNS, &rows);
            }
            Command::Hot => result_set(&mut out, &tier_view::HOT_COLUMNS, &tier_view::hot(cache)),
            Command::FlushAll => {
                cache.flush_all().await;
                cache.meters.invalidation(Source::Admin);
                complete(&mut out, "VENEER FLUSH");
            }
            Command::FlushTable(table) => {
                cache.flush_table(table).await;
                cache.meters.invalidation(Source::Admin);
                complete(&mut out, "VENEER FLUSH");
            }
            Command::Unknown(text) => out.put(error_response(
                Severity::Error,
                "42601",
                &format!(
                    "unknown Veneer command \"{text}\"; the commands are SHOW VENEER STATUS, \
                     SHOW VENEER QUERIES, SHOW VENEER NODES, SHOW VENEER HOT, VENEER FLUSH ALL \
                     and VENEER FLUSH TABLE name"
                ),
            )),
        }
    }
    encode(&mut out, &ReadyForQuery::new(tx));
    out.freeze()
}

/// The rows of `SHOW VENEER STATUS`.
pub async fn status(cache: &Cache) -> Vec<Vec<String>> {
    let usage = cache.store.usage().await;
    let meters = &cache.meters;
    let (hits, misses) = (meters.hits.get(), meters.misses.get());
    let mut rows = vec![
        (
            "uptime_seconds",
            cache.started.elapsed().as_secs().to_string(),
        ),
        ("entries", usage.entries.to_string()),
        ("bytes", usage.bytes.to_string()),
        ("max_bytes", usage.max_bytes.to_string()),
        ("hits", hits.to_string()),
        ("misses", misses.to_string()),
        ("hit_ratio", ratio(hits, misses)),
        ("bypasses", meters.bypasses.get().to_string()),
        ("coalesced", meters.coalesced.get().to_string()),
        ("evictions", usage.evictions.to_string()),
        ("expirations", usage.expirations.to_string()),
        (
            "upstream_messages",
            meters.upstream_messages.get().to_string(),
        ),
        ("upstream_kept", meters.kept_upstreams.get().to_string()),
        ("upstream_reused", meters.reused_upstreams.get().to_string()),
        ("verified", meters.verify_samples.get().to_string()),
        (
            "verify_mismatches",
            meters.verify_mismatches.get().to_string(),
        ),
        ("verify_skipped", meters.verify_skips.get().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| vec![k.to_owned(), v])
    .collect::<Vec<_>>();
    rows.extend(Reason::ALL.iter().filter_map(|&r| {
        let n = meters.bypass_reasons[r.index()].get();
        (n > 0).then(|| vec![format!("bypasses {}", r.label()), n.to_string()])
    }));
    rows.extend(tier_view::status(cache));
    let mut databases = cache.databases();
    databases.sort_by(|a, b| a.name.cmp(&b.name));
    for db in databases {
        rows.push(vec![
            format!("database {}", db.name),
            database_state(cache, &db),
        ]);
        if cache.config.replication != Replication::Off {
            let (behind, delay) = db.stream.lag();
            rows.push(vec![
                format!("replication {}", db.name),
                format!(
                    "{} transactions, {} rows applied; {behind} bytes of WAL behind; last commit \
                     applied {:.1} ms after it committed; {}; {} failures",
                    db.stream.transactions.get(),
                    db.stream.rows.get(),
                    delay.as_secs_f64() * 1000.0,
                    match db.stream.last_retained() {
                        Some(bytes) => format!("slot retains {bytes} bytes of WAL"),
                        None => "slot's retained WAL not read yet".to_owned(),
                    },
                    db.stream.failures.get(),
                ),
            ]);
        }
    }
    rows
}

/// What a database's cache is doing, in words: serving or forwarded and why, its replication
/// stream's state, its privilege checks, tables outside the publication, its clients. The status's
/// `database` row and the status page's.
pub fn database_state(cache: &Cache, db: &Database) -> String {
    let replication = match (cache.config.replication, db.listener()) {
        (Replication::Off, _) => "replication off: writes elsewhere show after the TTL".to_owned(),
        (_, Listener::Streaming) => "replication streaming".to_owned(),
        (_, Listener::Starting) => "replication starting".to_owned(),
        (_, Listener::Idle) => "replication idle: no client lately, slot released".to_owned(),
        (_, Listener::AtCap(cap)) => format!(
            "replication waiting: replication_listeners cap ({cap}) reached by other databases"
        ),
        (_, Listener::Held) => "replication paused: a DROP DATABASE of it is running".to_owned(),
        (
            _,
            Listener::Down {
                why,
                since,
                retry_at,
            },
        ) => {
            let retry = retry_at.saturating_duration_since(tokio::time::Instant::now());
            format!(
                "replication down since {} ({why}); {}",
                clock(since),
                if retry.is_zero() {
                    "retrying now".to_owned()
                } else {
                    format!("retrying in {:.1} s", retry.as_secs_f64())
                }
            )
        }
    };
    let serving = if !db.has_catalog() {
        match db.catalog_state() {
            // A client's arrival starts the reader: for a moment it is idle with a client.
            CatalogState::Idle if db.demand.clients() > 0 => {
                "forwarded: catalog read starting".to_owned()
            }
            CatalogState::Idle => "forwarded: catalog not read (no client lately)".to_owned(),
            CatalogState::Reading => "forwarded: catalog being read".to_owned(),
            CatalogState::Failing(e) => {
                format!("forwarded: catalog not read ({e}); retrying")
            }
        }
    } else if !cache.serves(db) {
        "forwarded: replication not following".to_owned()
    } else if !db.privileges.ready() {
        format!(
            "forwarded: {}",
            db.privileges.status(cache.config.privilege_check)
        )
    } else {
        "cached".to_owned()
    };
    let mut state = vec![serving, replication];
    if db.privileges.ready() {
        state.push(db.privileges.status(cache.config.privilege_check));
    }
    let outside = db.outside_publication();
    if !outside.is_empty() {
        state.push(format!(
            "outside the publication, cached with TTL only: {}",
            outside.join(", ")
        ));
    }
    state.push(format!("{} client(s)", db.demand.clients()));
    state.join("; ")
}

const QUERY_COLUMNS: [&str; 7] = [
    "query",
    "hits",
    "misses",
    "hit_ratio",
    "mean_hit_us",
    "mean_upstream_us",
    "bytes_served",
];

fn queries(cache: &Cache) -> Vec<Vec<String>> {
    let mut digests: Vec<_> = cache
        .digests
        .all()
        .into_iter()
        .map(|d| (d.stats(), d.text.clone()))
        .collect();
    digests.sort_by_key(|d| std::cmp::Reverse(d.0.hits + d.0.misses));
    digests
        .into_iter()
        .map(|(s, text)| {
            vec![
                text,
                s.hits.to_string(),
                s.misses.to_string(),
                ratio(s.hits, s.misses),
                mean_micros(s.hit_nanos, s.hits),
                mean_micros(s.miss_nanos, s.misses),
                s.bytes_served.to_string(),
            ]
        })
        .collect()
}

/// A time of day, UTC, as `12:01:03`.
fn clock(at: std::time::SystemTime) -> String {
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

/// `hits / (hits + misses)` to four places, 0 before the first lookup.
pub(super) fn ratio(hits: u64, misses: u64) -> String {
    match hits + misses {
        0 => "0".to_owned(),
        n => format!("{:.4}", hits as f64 / n as f64),
    }
}

fn mean_micros(nanos: u64, count: u64) -> String {
    match count {
        0 => String::new(),
        n => format!("{:.1}", nanos as f64 / n as f64 / 1000.0),
    }
}

/// A text result set: RowDescription, DataRows, CommandComplete "SHOW n".
fn result_set<C: AsRef<str>>(out: &mut BytesMut, columns: &[C], rows: &[Vec<String>]) {
    const TEXT: u32 = 25;
    let fields = columns
        .iter()
        .map(|c| FieldDescription::new(c.as_ref().to_owned(), 0, 0, TEXT, -1, -1, 0))
        .collect();
    encode(out, &RowDescription::new(fields));
    for row in rows {
        let mut data = BytesMut::new();
        for value in row {
            data.put_i32(value.len() as i32);
            data.put_slice(value.as_bytes());
        }
        encode(out, &DataRow::new(data, row.len() as i16));
    }
    complete(out, &format!("SHOW {}", rows.len()));
}

fn complete(out: &mut BytesMut, tag: &str) {
    encode(out, &CommandComplete::new(tag.to_owned()));
}

fn encode(out: &mut BytesMut, message: &impl Message) {
    message
        .encode(out)
        .expect("admin replies are far below pgwire's message size limit");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_recognized_by_their_words_only() {
        assert_eq!(command(b"show veneer status;"), Some(Command::Status));
        assert_eq!(command(b"  SHOW  VENEER QUERIES\n"), Some(Command::Queries));
        assert_eq!(command(b"VENEER FLUSH"), Some(Command::FlushAll));
        assert_eq!(
            command(b"veneer flush table Public.Orders"),
            Some(Command::FlushTable("orders".into()))
        );
        assert_eq!(
            command(b"veneer flush table \"Odd\""),
            Some(Command::FlushTable("Odd".into()))
        );
        assert!(matches!(command(b"SHOW VENEER"), Some(Command::Unknown(_))));
        assert_eq!(command(b"SHOW search_path"), None);
        assert_eq!(command(b"SELECT 'SHOW VENEER STATUS'"), None);
    }
}
