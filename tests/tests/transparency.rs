//! Transparency, byte for byte: the backend stream a client receives through the proxy equals the one
//! it receives directly, for a range of types in text and binary formats, wide rows and large values,
//! errors and notices, COPY, pipelined batches and FunctionCall.
//!
//! Two raw sessions (one direct, one through the proxy) run the same steps; after each step, every
//! message up to ReadyForQuery is compared whole — ParameterStatus and ReadyForQuery included. Only
//! BackendKeyData's body is masked, since it names a different backend each time.

use veneer_tests::raw::{self, Message, RawClient};
use veneer_tests::*;

/// One request and whether the server is expected to refuse it (so that a typo in a query that makes
/// both sides fail alike cannot pass for transparency).
struct Step {
    name: String,
    bytes: Vec<u8>,
    expect_error: bool,
}

fn simple(name: &str, sql: &str) -> Step {
    Step {
        name: format!("{name} (text)"),
        bytes: raw::query(sql),
        expect_error: false,
    }
}

/// The same SQL through the extended protocol with every result column in binary.
fn binary(name: &str, sql: &str) -> Step {
    let mut bytes = raw::parse("", sql);
    bytes.extend(raw::bind("", "", &[], 1));
    bytes.extend(raw::describe(b'P', ""));
    bytes.extend(raw::execute(""));
    bytes.extend(raw::sync());
    Step {
        name: format!("{name} (binary)"),
        bytes,
        expect_error: false,
    }
}

fn failing(name: &str, bytes: Vec<u8>) -> Step {
    Step {
        name: name.to_owned(),
        bytes,
        expect_error: true,
    }
}

/// Queries covering the types whose encodings differ most between text and binary.
fn typed_queries() -> Vec<(&'static str, String)> {
    let wide: Vec<String> = (1..=500).map(|i| format!("{i} * 3 AS col_{i}")).collect();
    vec![
        (
            "numeric",
            "SELECT 0::numeric, -1.5::numeric, 123456789012345678901234567890.123456789::numeric, \
             'NaN'::numeric, 1e-20::numeric, 'Infinity'::numeric, 12.50::numeric(10,3)"
                .into(),
        ),
        (
            "integers and floats",
            "SELECT 32767::int2, '-2147483648'::int4, 9223372036854775807::int8, 1.5::float4, \
             'NaN'::float8, '-Infinity'::float8, 0.1::float8, true, false"
                .into(),
        ),
        (
            "date and time",
            "SELECT '2024-02-29 12:34:56.789+05:30'::timestamptz, 'infinity'::timestamptz, \
             '1999-12-31 23:59:59'::timestamp, '2024-01-01'::date, '12:00:01.5'::time, \
             '13:00+02'::timetz, '1 year 2 mons 3 days 04:05:06.7'::interval"
                .into(),
        ),
        (
            "arrays",
            "SELECT ARRAY[1, 2, NULL]::int[], ARRAY[['a', 'b'], ['c', NULL]]::text[], '{}'::int8[], \
             ARRAY[1.5, 2.5]::float8[], ARRAY['2024-01-01'::date], '[0:1]={7,8}'::int[]"
                .into(),
        ),
        (
            "json",
            r#"SELECT '{"a": [1, 2, {"b": null}], "c": "ü"}'::json, '{"b": 2, "a": 1}'::jsonb, '"x"'::jsonb, '[]'::json"#
                .into(),
        ),
        (
            "bytea",
            "SELECT '\\xdeadbeef00ff'::bytea, decode(repeat('00ff7f80', 2000), 'hex'), ''::bytea".into(),
        ),
        (
            "null",
            "SELECT NULL, NULL::int, NULL::text[], NULL::jsonb, NULL::bytea".into(),
        ),
        (
            "other types",
            "SELECT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, '192.168.0.1/24'::inet, \
             'hello'::varchar(10), 'x'::char(3), 'pg_class'::regclass, int4range(1, 10), \
             point(1.5, 2), 'fat & rat'::tsquery, B'1010'::bit(4)"
                .into(),
        ),
        ("500 columns", format!("SELECT {}", wide.join(", "))),
        ("1 MB text", "SELECT repeat('x', 1048576), repeat('é', 300000)".into()),
        (
            "many rows",
            "SELECT g, md5(g::text), g % 7 = 0 FROM generate_series(1, 30000) g".into(),
        ),
        ("empty result", "SELECT 1 WHERE false".into()),
    ]
}

fn steps(function_oid: u32) -> Vec<Step> {
    let mut steps = Vec::new();
    for (name, sql) in typed_queries() {
        steps.push(simple(name, &sql));
        steps.push(binary(name, &sql));
    }
    // ParameterStatus mid-session, and output that depends on it.
    steps.push(simple(
        "set TimeZone and DateStyle",
        "SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'SQL, DMY'",
    ));
    steps.push(simple(
        "timestamptz after SET",
        "SELECT '2024-02-29 12:34:56+00'::timestamptz",
    ));
    steps.push(simple(
        "set application_name",
        "SET application_name = 'transparency-2'",
    ));
    // Errors and notices, whose fields include the server's file and line.
    steps.push(failing("division by zero", raw::query("SELECT 1/0")));
    steps.push(failing("syntax error", raw::query("SELEC 1")));
    steps.push(simple(
        "notice and warning",
        "DO $$ BEGIN RAISE NOTICE 'note %', 1; RAISE WARNING 'careful'; END $$",
    ));
    steps.push(simple("empty query", ""));
    // Selected through expressions: columns read straight from the temp table would carry its OID
    // in RowDescription, which differs per session.
    steps.push(simple(
        "several statements",
        "CREATE TEMP TABLE t_tr (id int, v text); INSERT INTO t_tr SELECT g, 'v' || g FROM \
         generate_series(1, 100) g; UPDATE t_tr SET v = 'w' WHERE id < 10; SELECT id + 0 AS id, v || '' AS v FROM t_tr ORDER BY id",
    ));
    // COPY out in text and binary.
    steps.push(simple(
        "copy text",
        "COPY (SELECT g, g::text || 'é' FROM generate_series(1, 5000) g) TO STDOUT",
    ));
    steps.push(simple(
        "copy binary",
        "COPY (SELECT g, now() - now() FROM generate_series(1, 2000) g) TO STDOUT (FORMAT binary)",
    ));
    steps.extend(extended_steps(function_oid));
    steps
}

/// Extended-protocol batches and a FunctionCall: pipelining, errors mid-batch, partial execution.
fn extended_steps(function_oid: u32) -> Vec<Step> {
    let mut steps = Vec::new();
    // A named statement with parameters, described, then executed twice in one pipelined batch.
    let mut batch = raw::parse("tr_stmt", "SELECT $1::numeric * 2, $2::text IS NULL");
    batch.extend(raw::describe(b'S', "tr_stmt"));
    batch.extend(raw::bind("", "tr_stmt", &[Some(b"21.5"), None], 1));
    batch.extend(raw::execute(""));
    batch.extend(raw::bind("p2", "tr_stmt", &[Some(b"-3"), Some(b"x")], 0));
    batch.extend(raw::describe(b'P', "p2"));
    batch.extend(raw::execute("p2"));
    batch.extend(raw::sync());
    steps.push(Step {
        name: "named statement, pipelined".into(),
        bytes: batch,
        expect_error: false,
    });
    // An error in the middle of a batch: the rest is skipped up to Sync.
    let mut batch = raw::parse("", "SELECT 1/0");
    batch.extend(raw::bind("", "", &[], 0));
    batch.extend(raw::execute(""));
    batch.extend(raw::parse("", "SELECT 2"));
    batch.extend(raw::bind("", "", &[], 0));
    batch.extend(raw::execute(""));
    batch.extend(raw::sync());
    steps.push(failing("error mid-batch", batch));
    // Partial execution of a portal inside a transaction (PortalSuspended).
    let mut batch = raw::query("BEGIN");
    batch.extend(raw::parse("", "SELECT g FROM generate_series(1, 10) g"));
    batch.extend(raw::bind("cur", "", &[], 1));
    let mut limited = raw::execute("cur");
    limited.truncate(limited.len() - 4);
    limited.extend(3i32.to_be_bytes());
    batch.extend(limited.clone());
    batch.extend(limited);
    batch.extend(raw::sync());
    steps.push(Step {
        name: "portal suspended".into(),
        bytes: batch,
        expect_error: false,
    });
    steps.push(simple("commit", "COMMIT"));
    steps.push(Step {
        name: "function call".into(),
        bytes: raw::function_call(function_oid, &[b"-42"]),
        expect_error: false,
    });
    steps
}

/// Runs every step in a fresh session at `addr`; returns the startup reply and each step's reply.
async fn run_session(
    addr: std::net::SocketAddr,
    steps: &[Step],
) -> (Vec<Message>, Vec<Vec<Message>>) {
    let (mut client, startup) = RawClient::startup(addr, SUPERUSER, "transparency").await;
    let mut replies = Vec::new();
    for step in steps {
        client.send(&step.bytes).await;
        // The first ReadyForQuery ends a step: BEGIN inside a batch is followed by more replies, so
        // "portal suspended" reads until the Sync's ReadyForQuery (the second one).
        let mut reply = within(&step.name, client.read_until_ready()).await;
        if step.name == "portal suspended" {
            reply.extend(within(&step.name, client.read_until_ready()).await);
        }
        replies.push(reply);
    }
    client.send(&raw::terminate()).await;
    (startup, replies)
}

fn mask_key(messages: &[Message]) -> Vec<Vec<u8>> {
    messages
        .iter()
        .map(|m| {
            let mut bytes = m.raw.to_vec();
            if m.tag() == b'K' {
                bytes[5..].fill(0);
            }
            bytes
        })
        .collect()
}

fn assert_same(what: &str, direct: &[Message], through: &[Message]) {
    let (d, t) = (mask_key(direct), mask_key(through));
    if d == t {
        return;
    }
    let at = d
        .iter()
        .zip(&t)
        .position(|(a, b)| a != b)
        .unwrap_or(d.len().min(t.len()));
    panic!(
        "{what}: the stream through the proxy differs from the direct one at message {at} \
         ({} messages direct, {} through the proxy)\ndirect:  {:?}\nthrough: {:?}",
        d.len(),
        t.len(),
        direct.get(at),
        through.get(at)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_stream_is_identical() {
    let admin = direct_admin().await;
    let oid: u32 = admin
        .query_one("SELECT 'int4abs'::regproc::oid", &[])
        .await
        .unwrap()
        .get(0);
    let steps = steps(oid);
    let proxy = ProxyHandle::start().await;
    let (direct_startup, direct) = run_session(pg().addr(), &steps).await;
    let (proxy_startup, through) = run_session(proxy.addr(), &steps).await;

    assert!(
        direct_startup.iter().filter(|m| m.tag() == b'S').count() >= 10,
        "expected the server's ParameterStatus set: {direct_startup:?}"
    );
    assert_same("startup", &direct_startup, &proxy_startup);
    for ((step, d), t) in steps.iter().zip(&direct).zip(&through) {
        let failed = d.iter().any(|m| m.tag() == b'E');
        assert_eq!(
            failed, step.expect_error,
            "step '{}' directly: unexpected outcome {d:?}",
            step.name
        );
        assert_same(&step.name, d, t);
    }
    // Every step (pipelines, COPY, FunctionCall, errors mid-batch, PortalSuspended) kept the proxy's
    // request/reply matching in step.
    assert_eq!(tracking_losses(), 0, "session tracking lost step");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gssenc_requests_are_declined() {
    // Without client TLS configured the proxy answers SSLRequest 'N' (the test server, which has TLS,
    // would say 'S'), and GSSENCRequest 'N' (the server, built with GSSAPI, would say 'G'; the proxy
    // does not offer GSS encryption). Either way the client then sends a plain startup on the same
    // connection.
    let proxy = ProxyHandle::start().await;
    let cases = [
        ("SSLRequest", raw::ssl_request(), proxy.addr()),
        ("GSSENCRequest", raw::gssenc_request(), proxy.addr()),
    ];
    for (what, request, addr) in cases {
        let mut client = RawClient::connect(addr).await;
        client.send(&request).await;
        assert_eq!(client.read_byte().await, Some(b'N'), "{what} at {addr}");
        client
            .send(&raw::startup_message(&[
                ("user", SUPERUSER),
                ("database", DATABASE),
            ]))
            .await;
        let reply = client.read_until_ready().await;
        assert_eq!(
            reply.first().map(Message::tag),
            Some(b'R'),
            "{what} at {addr}: {reply:?}"
        );
        assert!(
            reply.iter().all(|m| m.tag() != b'E'),
            "{what} at {addr}: {reply:?}"
        );
    }
}
