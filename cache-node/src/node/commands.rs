//! The commands a cache node answers: what Veneer needs, and what the tools people point at a cache
//! send (redis-cli, redis-benchmark, monitoring). Anything else gets a clear error naming it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::glob;
use super::resp::Writer;
use super::store::{Store, When};

/// The node, shared by every connection.
pub struct Node {
    /// Its entries.
    pub store: Store,
    password: Option<String>,
    port: u16,
    started: Instant,
    /// Connections open now.
    pub connections: AtomicU64,
    /// Connections accepted so far.
    pub accepted: AtomicU64,
    /// Commands run so far.
    pub commands: AtomicU64,
    next_client: AtomicU64,
}

impl Node {
    /// A node whose store holds `max_bytes`, asking clients for `password` if set, serving on `port`
    /// (for INFO).
    pub fn new(max_bytes: u64, password: Option<String>, port: u16) -> Node {
        Node {
            store: Store::new(max_bytes),
            password,
            port,
            started: Instant::now(),
            connections: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            next_client: AtomicU64::new(1),
        }
    }
}

/// One connection's state.
pub struct Client {
    writer: Writer,
    authenticated: bool,
    name: Option<Bytes>,
    id: u64,
}

/// What the connection does after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    /// Reads the next one.
    Continue,
    /// Sends the replies so far, then closes (QUIT).
    Close,
}

impl Client {
    /// A new connection's state: RESP2, authenticated unless the node has a password.
    pub fn new(node: &Node) -> Client {
        Client {
            writer: Writer { protocol: 2 },
            authenticated: node.password.is_none(),
            name: None,
            id: node.next_client.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The reply writer of the connection's protocol version.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }
}

/// Runs one request and appends its reply to `out`.
pub fn execute(node: &Node, client: &mut Client, args: &[Bytes], out: &mut BytesMut) -> After {
    let Some(name) = args.first() else {
        return After::Continue;
    };
    node.commands.fetch_add(1, Ordering::Relaxed);
    let w = &client.writer;
    // Upper-cased on the stack: every request passes here (no command name is longer).
    let mut upper = [0u8; 16];
    let len = name.len().min(upper.len());
    upper[..len].copy_from_slice(&name[..len]);
    upper.make_ascii_uppercase();
    let command = &upper[..if name.len() > upper.len() { 0 } else { len }];
    let open = matches!(command, b"AUTH" | b"HELLO" | b"QUIT");
    if !client.authenticated && !open {
        w.error(out, "NOAUTH Authentication required.");
        return After::Continue;
    }
    let argc = args.len();
    let arity_ok = match command {
        b"GET" | b"TTL" | b"PTTL" | b"ECHO" | b"SELECT" => argc == 2,
        b"DBSIZE" => argc == 1,
        b"DELIFEQ" => argc == 3,
        b"SET" => argc >= 3,
        b"DEL" | b"UNLINK" | b"EXISTS" | b"MGET" | b"SCAN" | b"AUTH" => argc >= 2,
        _ => true,
    };
    if !arity_ok {
        let lower = String::from_utf8_lossy(name).to_lowercase();
        w.error(
            out,
            &format!("ERR wrong number of arguments for '{lower}' command"),
        );
        return After::Continue;
    }
    match command {
        b"GET" => {
            let found = node.store.get_into(&args[1], &mut |value| {
                w.bulk(out, value);
            });
            if !found {
                w.null(out);
            }
        }
        b"MGET" => {
            w.array(out, argc - 1);
            for key in &args[1..] {
                if !node.store.get_into(key, &mut |value| w.bulk(out, value)) {
                    w.null(out);
                }
            }
        }
        b"SET" => set(node, w, args, out),
        b"DEL" | b"UNLINK" => {
            let removed = args[1..].iter().filter(|k| node.store.delete(k)).count();
            w.integer(out, removed as i64);
        }
        b"DELIFEQ" => {
            let removed = node.store.delete_if_equal(&args[1], &args[2]);
            w.integer(out, i64::from(removed));
        }
        b"EXISTS" => {
            let present = args[1..]
                .iter()
                .filter(|k| node.store.ttl(k).is_some())
                .count();
            w.integer(out, present as i64);
        }
        b"TTL" | b"PTTL" => {
            let left = match node.store.ttl(&args[1]) {
                None => -2,
                Some(None) => -1,
                Some(Some(d)) if command == b"TTL" => d.as_secs_f64().round() as i64,
                Some(Some(d)) => d.as_millis() as i64,
            };
            w.integer(out, left);
        }
        b"DBSIZE" => w.integer(out, node.store.len() as i64),
        b"FLUSHALL" | b"FLUSHDB" => {
            node.store.clear();
            w.simple(out, "OK");
        }
        b"SCAN" => scan(node, w, args, out),
        b"PING" => match args.get(1) {
            Some(message) => w.bulk(out, message),
            None => w.simple(out, "PONG"),
        },
        b"ECHO" => w.bulk(out, &args[1]),
        b"AUTH" => {
            let password = args.last().expect("checked");
            if authenticate(node, client, password) {
                client.writer.simple(out, "OK");
            } else {
                client.writer.error(
                    out,
                    "WRONGPASS invalid username-password pair or user is disabled.",
                );
            }
        }
        b"HELLO" => hello(node, client, args, out),
        b"INFO" => {
            let section = args.get(1).map(|s| s.to_ascii_lowercase());
            w.bulk(out, info(node, section.as_deref()).as_bytes());
        }
        b"CLIENT" => client_command(client, args, out),
        b"COMMAND" => {
            // redis-cli asks for COMMAND DOCS to offer hints; an empty answer is valid.
            match args.get(1).map(|a| a.to_ascii_uppercase()) {
                Some(sub) if sub == b"COUNT" => w.integer(out, COMMANDS.len() as i64),
                Some(sub) if sub == b"DOCS" => w.map(out, 0),
                _ => w.array(out, 0),
            }
        }
        b"CONFIG" => config(node, w, args, out),
        b"SELECT" => {
            if &args[1][..] == b"0" {
                w.simple(out, "OK");
            } else {
                w.error(out, "ERR DB index is out of range");
            }
        }
        b"QUIT" => {
            w.simple(out, "OK");
            return After::Close;
        }
        _ => {
            let shown: Vec<String> = args[1..]
                .iter()
                .take(8)
                .map(|a| format!("'{}'", String::from_utf8_lossy(a)))
                .collect();
            w.error(
                out,
                &format!(
                    "ERR unknown command '{}', with args beginning with: {} (veneer-cache-node \
                     answers {})",
                    String::from_utf8_lossy(name),
                    shown.join(" "),
                    COMMANDS.join(" ")
                ),
            );
        }
    }
    After::Continue
}

/// The commands answered, for COMMAND COUNT and the unknown-command error.
const COMMANDS: &[&str] = &[
    "GET", "SET", "MGET", "DEL", "UNLINK", "DELIFEQ", "EXISTS", "TTL", "PTTL", "DBSIZE",
    "FLUSHALL", "FLUSHDB", "SCAN", "PING", "ECHO", "AUTH", "HELLO", "INFO", "CLIENT", "COMMAND",
    "CONFIG", "SELECT", "QUIT",
];

/// `CONFIG GET parameter...`: the few parameters tools read (redis-benchmark reads `save` and
/// `appendonly`); nothing can be set.
fn config(node: &Node, w: &Writer, args: &[Bytes], out: &mut BytesMut) {
    if !args.get(1).is_some_and(|s| s.eq_ignore_ascii_case(b"GET")) {
        w.error(out, "ERR veneer-cache-node answers CONFIG GET only");
        return;
    }
    let known = [
        ("save", String::new()),
        ("appendonly", "no".to_owned()),
        ("maxmemory", node.store.max_bytes().to_string()),
        ("maxmemory-policy", "allkeys-lfu".to_owned()),
    ];
    let found: Vec<&(&str, String)> = known
        .iter()
        .filter(|(name, _)| {
            args[2..]
                .iter()
                .any(|p| glob::matches(&p.to_ascii_lowercase(), name.as_bytes()))
        })
        .collect();
    w.map(out, found.len());
    for (name, value) in found {
        w.bulk(out, name.as_bytes());
        w.bulk(out, value.as_bytes());
    }
}

/// `SET key value [NX|XX] [EX seconds|PX milliseconds]`.
fn set(node: &Node, w: &Writer, args: &[Bytes], out: &mut BytesMut) {
    let mut when = When::Always;
    let mut ttl = None;
    let mut options = args[3..].iter();
    while let Some(option) = options.next() {
        let option = option.to_ascii_uppercase();
        match &option[..] {
            b"NX" if when == When::Always => when = When::Absent,
            b"XX" if when == When::Always => when = When::Present,
            b"EX" | b"PX" if ttl.is_none() => {
                let amount = options
                    .next()
                    .and_then(|a| std::str::from_utf8(a).ok()?.parse::<u64>().ok())
                    .filter(|&n| n > 0);
                let Some(amount) = amount else {
                    w.error(out, "ERR invalid expire time in 'set' command");
                    return;
                };
                ttl = Some(if &option[..] == b"EX" {
                    Duration::from_secs(amount)
                } else {
                    Duration::from_millis(amount)
                });
            }
            _ => {
                w.error(out, "ERR syntax error");
                return;
            }
        }
    }
    match node.store.set(&args[1], &args[2], ttl, when) {
        Ok(()) => w.simple(out, "OK"),
        Err(_) => w.null(out),
    }
}

/// `SCAN cursor [MATCH pattern] [COUNT n]`: the cursor is a shard number; each step returns the
/// matching keys of one shard (COUNT is a hint, as in Redis).
fn scan(node: &Node, w: &Writer, args: &[Bytes], out: &mut BytesMut) {
    let Some(cursor) = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
    else {
        w.error(out, "ERR invalid cursor");
        return;
    };
    let mut pattern: Option<&[u8]> = None;
    let mut options = args[2..].iter();
    while let Some(option) = options.next() {
        match &option.to_ascii_uppercase()[..] {
            b"MATCH" => pattern = options.next().map(|p| &p[..]),
            b"COUNT" => {
                options.next();
            }
            _ => {
                w.error(out, "ERR syntax error");
                return;
            }
        }
    }
    let shards = node.store.shard_count();
    let keys = if cursor < shards {
        node.store
            .keys_of_shard(cursor, |k| pattern.is_none_or(|p| glob::matches(p, k)))
    } else {
        Vec::new()
    };
    let next = if cursor + 1 < shards { cursor + 1 } else { 0 };
    w.array(out, 2);
    w.bulk(out, next.to_string().as_bytes());
    w.array(out, keys.len());
    for key in keys {
        w.bulk(out, &key);
    }
}

fn authenticate(node: &Node, client: &mut Client, password: &[u8]) -> bool {
    let ok = node
        .password
        .as_deref()
        .is_none_or(|p| p.as_bytes() == password);
    client.authenticated |= ok;
    ok
}

/// `HELLO [protover [AUTH username password] [SETNAME name]]`.
fn hello(node: &Node, client: &mut Client, args: &[Bytes], out: &mut BytesMut) {
    let protocol = match args.get(1) {
        None => client.writer.protocol,
        Some(v) => match &v[..] {
            b"2" => 2,
            b"3" => 3,
            _ => {
                client
                    .writer
                    .error(out, "NOPROTO unsupported protocol version");
                return;
            }
        },
    };
    let mut rest = args.get(2..).unwrap_or_default().iter();
    while let Some(option) = rest.next() {
        match &option.to_ascii_uppercase()[..] {
            b"AUTH" => {
                let (_, Some(password)) = (rest.next(), rest.next()) else {
                    client
                        .writer
                        .error(out, "ERR syntax error in HELLO option 'auth'");
                    return;
                };
                if !authenticate(node, client, password) {
                    client.writer.error(
                        out,
                        "WRONGPASS invalid username-password pair or user is disabled.",
                    );
                    return;
                }
            }
            b"SETNAME" => client.name = rest.next().cloned(),
            _ => {
                client.writer.error(out, "ERR syntax error in HELLO");
                return;
            }
        }
    }
    if !client.authenticated {
        client.writer.error(out, "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
        return;
    }
    client.writer.protocol = protocol;
    let w = &client.writer;
    w.map(out, 7);
    w.bulk(out, b"server");
    w.bulk(out, b"veneer-cache-node");
    w.bulk(out, b"version");
    w.bulk(out, env!("CARGO_PKG_VERSION").as_bytes());
    w.bulk(out, b"proto");
    w.integer(out, i64::from(protocol));
    w.bulk(out, b"id");
    w.integer(out, client.id as i64);
    w.bulk(out, b"mode");
    w.bulk(out, b"standalone");
    w.bulk(out, b"role");
    w.bulk(out, b"master");
    w.bulk(out, b"modules");
    w.array(out, 0);
}

/// `CLIENT SETNAME | GETNAME | ID | SETINFO | INFO`.
fn client_command(client: &mut Client, args: &[Bytes], out: &mut BytesMut) {
    let sub = args.get(1).map(|s| s.to_ascii_uppercase());
    match sub.as_deref() {
        Some(b"SETNAME") if args.len() == 3 => {
            client.name = Some(args[2].clone());
            client.writer.simple(out, "OK");
        }
        Some(b"GETNAME") => match &client.name {
            Some(name) => client.writer.bulk(out, name),
            None => client.writer.null(out),
        },
        Some(b"ID") => client.writer.integer(out, client.id as i64),
        Some(b"SETINFO") => client.writer.simple(out, "OK"),
        Some(b"INFO") => {
            let name = client
                .name
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let line = format!(
                "id={} name={name} resp={}\n",
                client.id, client.writer.protocol
            );
            client.writer.bulk(out, line.as_bytes());
        }
        _ => client.writer.error(
            out,
            "ERR unknown CLIENT subcommand; veneer-cache-node answers SETNAME, GETNAME, ID, \
             SETINFO and INFO",
        ),
    }
}

/// The INFO text: `section` alone, or every section.
fn info(node: &Node, section: Option<&[u8]>) -> String {
    let store = &node.store;
    let stats = &store.stats;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let bytes = store.bytes();
    let keys = store.len();
    let sections = [
        (
            &b"server"[..],
            format!(
                "# Server\r\nredis_version:7.2.0\r\nveneer_cache_node_version:{}\r\n\
                 redis_mode:standalone\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n",
                env!("CARGO_PKG_VERSION"),
                std::process::id(),
                node.port,
                node.started.elapsed().as_secs()
            ),
        ),
        (
            b"clients",
            format!(
                "# Clients\r\nconnected_clients:{}\r\n",
                load(&node.connections)
            ),
        ),
        (
            b"memory",
            format!(
                "# Memory\r\nused_memory:{bytes}\r\nused_memory_human:{:.2}M\r\nmaxmemory:{}\r\n\
                 maxmemory_policy:allkeys-lfu\r\n",
                bytes as f64 / 1048576.0,
                store.max_bytes()
            ),
        ),
        (
            b"stats",
            format!(
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
                 keyspace_hits:{}\r\nkeyspace_misses:{}\r\nevicted_keys:{}\r\nexpired_keys:{}\r\n",
                load(&node.accepted),
                load(&node.commands),
                load(&stats.hits),
                load(&stats.misses),
                load(&stats.evictions),
                load(&stats.expirations)
            ),
        ),
        (
            b"keyspace",
            if keys > 0 {
                format!("# Keyspace\r\ndb0:keys={keys},expires=0,avg_ttl=0\r\n")
            } else {
                "# Keyspace\r\n".to_owned()
            },
        ),
    ];
    let wanted = |name: &[u8]| {
        section.is_none_or(|s| s == name || s == b"all" || s == b"everything" || s == b"default")
    };
    sections
        .iter()
        .filter(|(name, _)| wanted(name))
        .map(|(_, text)| text.as_str())
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::resp;

    /// Runs `requests` (inline) on a fresh connection; the replies as text.
    fn run(node: &Node, requests: &[&str]) -> String {
        let mut client = Client::new(node);
        let mut out = BytesMut::new();
        for request in requests {
            let mut buf = BytesMut::from(format!("{request}\r\n").as_bytes());
            let mut args = Vec::new();
            assert!(resp::parse(&mut buf, &mut args).unwrap());
            execute(node, &mut client, &args, &mut out);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn the_commands_veneer_needs() {
        let node = Node::new(1 << 20, None, 0);
        assert_eq!(
            run(
                &node,
                &[
                    "SET k v PX 60000",
                    "GET k",
                    "GET nothing",
                    "SET k w NX",
                    "GET k"
                ]
            ),
            "+OK\r\n$1\r\nv\r\n$-1\r\n$-1\r\n$1\r\nv\r\n"
        );
        assert_eq!(
            run(&node, &["DELIFEQ k other", "DELIFEQ k v", "EXISTS k"]),
            ":0\r\n:1\r\n:0\r\n"
        );
        assert_eq!(
            run(&node, &["SET a 1", "SET b 2", "MGET a x b", "UNLINK a b x"]),
            "+OK\r\n+OK\r\n*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n:2\r\n"
        );
    }

    #[test]
    fn resp3_nulls_and_maps_after_hello_3() {
        let node = Node::new(1 << 20, None, 0);
        let replies = run(&node, &["HELLO 3", "GET nothing"]);
        assert!(replies.starts_with("%7\r\n"), "{replies}");
        assert!(replies.ends_with("_\r\n"), "{replies}");
    }

    #[test]
    fn a_password_is_asked_for_before_anything_else() {
        let node = Node::new(1 << 20, Some("pw".to_owned()), 0);
        assert_eq!(
            run(&node, &["GET k", "AUTH wrong", "AUTH pw", "GET k"]),
            "-NOAUTH Authentication required.\r\n\
             -WRONGPASS invalid username-password pair or user is disabled.\r\n+OK\r\n$-1\r\n"
        );
        assert!(run(&node, &["HELLO 3 AUTH default pw"]).starts_with("%7"));
    }

    #[test]
    fn scan_finds_a_namespace_and_only_it() {
        let node = Node::new(1 << 20, None, 0);
        let mut client = Client::new(&node);
        for key in ["veneer:1:a:x", "veneer:1:a:y", "veneer:1:b:x", "other"] {
            node.store
                .set(key.as_bytes(), b"v", None, When::Always)
                .unwrap();
        }
        let mut found = Vec::new();
        let mut cursor = "0".to_owned();
        loop {
            let mut out = BytesMut::new();
            let args: Vec<Bytes> = ["SCAN", &cursor, "MATCH", "veneer:1:a:*"]
                .iter()
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect();
            execute(&node, &mut client, &args, &mut out);
            let text = String::from_utf8_lossy(&out).into_owned();
            let lines: Vec<&str> = text.split("\r\n").collect();
            cursor = lines[2].to_owned();
            found.extend(
                lines
                    .iter()
                    .filter(|l| l.starts_with("veneer"))
                    .map(|l| l.to_string()),
            );
            if cursor == "0" {
                break;
            }
        }
        found.sort();
        assert_eq!(found, ["veneer:1:a:x", "veneer:1:a:y"]);
    }

    #[test]
    fn unknown_commands_and_bad_arity_say_what() {
        let node = Node::new(1 << 20, None, 0);
        let replies = run(&node, &["HSET h f v", "GET", "SET k v EX nope"]);
        assert!(
            replies.contains("-ERR unknown command 'HSET', with args beginning with: 'h' 'f' 'v'"),
            "{replies}"
        );
        assert!(
            replies.contains("-ERR wrong number of arguments for 'get' command"),
            "{replies}"
        );
        assert!(
            replies.contains("-ERR invalid expire time in 'set' command"),
            "{replies}"
        );
    }
}
