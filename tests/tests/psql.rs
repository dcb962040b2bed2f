//! psql through the proxy: `\copy` both ways, `COPY ... TO STDOUT` and `FROM STDIN`, LISTEN/NOTIFY
//! delivered from another session, and `\d` (whose many catalog queries must print exactly what they
//! print directly).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use veneer_tests::tools::PgTool;
use veneer_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backslash_copy_both_ways() {
    let proxy = ProxyHandle::start().await;
    let dir = TempDir::new("psql-copy");
    let input = dir.path().join("in.tsv");
    let output = dir.path().join("out.tsv");
    let rows: String = (1..=5000)
        .map(|i| format!("{i}\tname {i}\t{}\n", if i % 7 == 0 { "\\N" } else { "x" }))
        .collect();
    std::fs::write(&input, &rows).unwrap();

    let psql = || PgTool::psql(proxy.addr(), SUPERUSER);
    psql()
        .command(
            "DROP TABLE IF EXISTS psql_copy; CREATE TABLE psql_copy (id int, name text, note text)",
        )
        .run()
        .await
        .assert_success("create table");
    let out = psql()
        .command(&format!("\\copy psql_copy FROM '{}'", input.display()))
        .run()
        .await;
    out.assert_success("\\copy FROM file");
    assert!(out.stdout.contains("COPY 5000"), "{out:?}");
    let out = psql()
        .command(&format!(
            "\\copy (SELECT * FROM psql_copy ORDER BY id) TO '{}'",
            output.display()
        ))
        .run()
        .await;
    out.assert_success("\\copy TO file");
    assert_eq!(std::fs::read_to_string(&output).unwrap(), rows);

    // The server's own count, read directly, agrees.
    let admin = direct_admin().await;
    let row = admin
        .query_one("SELECT count(*), count(note) FROM psql_copy", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (5000, 5000 - 714)
    );
    admin.batch_execute("DROP TABLE psql_copy").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_stdout_and_from_stdin() {
    let proxy = ProxyHandle::start().await;
    let out = PgTool::psql(proxy.addr(), SUPERUSER)
        .command("COPY (SELECT g, g * 2, 'r' || g FROM generate_series(1, 3000) g) TO STDOUT WITH (FORMAT csv)")
        .run()
        .await;
    out.assert_success("COPY TO STDOUT");
    let expected: String = (1..=3000)
        .map(|g| format!("{g},{},r{g}\n", g * 2))
        .collect();
    assert_eq!(out.stdout, expected);

    // COPY FROM STDIN inside a script: the data follows the command on psql's input.
    let mut script = String::from(
        "CREATE TEMP TABLE psql_stdin (id int, word text);\nCOPY psql_stdin FROM STDIN;\n",
    );
    for i in 0..2000 {
        script.push_str(&format!("{i}\tword{i}\n"));
    }
    script.push_str("\\.\nSELECT count(*), sum(id) FROM psql_stdin;\n");
    let out = PgTool::psql(proxy.addr(), SUPERUSER)
        .args(["-A", "-t", "-f", "-"])
        .stdin(script)
        .run()
        .await;
    out.assert_success("COPY FROM STDIN");
    assert!(out.stdout.contains("2000|1999000"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_receives_notify_from_another_session() {
    let proxy = ProxyHandle::start().await;
    let observer = direct_admin().await;
    let mut child = PgTool::psql(proxy.addr(), SUPERUSER)
        .conn("application_name", "psql-listen")
        .spawn();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let printed = Arc::new(Mutex::new(String::new()));
    let sink = printed.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    stdin.write_all(b"LISTEN psql_channel;\n").await.unwrap();
    // Notify only once the LISTEN has run, or the notification is legitimately missed.
    let listening = wait_for(STEP_TIMEOUT, || async {
        let row = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'psql-listen' \
                 AND state = 'idle' AND query LIKE 'LISTEN%'",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) == 1
    })
    .await;
    assert!(listening, "psql never ran LISTEN through the proxy");
    observer
        .batch_execute("NOTIFY psql_channel, 'hello psql'")
        .await
        .unwrap();
    // psql prints notifications after the next command it runs: keep giving it one until it does.
    let expected =
        "Asynchronous notification \"psql_channel\" with payload \"hello psql\" received";
    let deadline = Instant::now() + STEP_TIMEOUT;
    let delivered = loop {
        if printed.lock().unwrap().contains(expected) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        stdin.write_all(b"SELECT 1;\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        delivered,
        "no notification; psql printed:\n{}",
        printed.lock().unwrap()
    );
    stdin.write_all(b"\\q\n").await.unwrap();
    drop(stdin);
    let status = within("psql to exit", child.wait()).await.unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_table_matches_direct() {
    let proxy = ProxyHandle::start().await;
    PgTool::psql(pg().addr(), SUPERUSER)
        .command(
            "DROP TABLE IF EXISTS psql_described; \
             CREATE TABLE psql_described (id bigint PRIMARY KEY, label text NOT NULL DEFAULT 'x', \
             amount numeric(10,2), created timestamptz, tags text[], doc jsonb); \
             CREATE INDEX psql_described_label ON psql_described (label); \
             COMMENT ON TABLE psql_described IS 'described through the proxy'",
        )
        .run()
        .await
        .assert_success("create table");
    let describe = |addr| {
        PgTool::psql(addr, SUPERUSER)
            .command("\\d+ psql_described")
            .run()
    };
    let through = describe(proxy.addr()).await;
    through.assert_success("\\d through the proxy");
    let direct = describe(pg().addr()).await;
    direct.assert_success("\\d directly");
    for needle in [
        "amount",
        "numeric(10,2)",
        "psql_described_pkey",
        "psql_described_label",
        "jsonb",
    ] {
        assert!(
            through.stdout.contains(needle),
            "{needle} missing:\n{}",
            through.stdout
        );
    }
    assert_eq!(through.stdout, direct.stdout);

    // \dt and \l exercise more catalog queries; the output must be the same as directly.
    for command in ["\\dt psql_*", "\\df pg_sleep", "\\dn"] {
        let through = PgTool::psql(proxy.addr(), SUPERUSER)
            .command(command)
            .run()
            .await;
        let direct = PgTool::psql(pg().addr(), SUPERUSER)
            .command(command)
            .run()
            .await;
        through.assert_success(command);
        assert_eq!(through.stdout, direct.stdout, "{command}");
    }
}
