//! tokio-postgres through the proxy: the simple and extended protocols, binary results, named prepared
//! statements, pipelining, COPY, LISTEN/NOTIFY, cancellation, and transactions with savepoints and
//! errors. Each test starts its own proxy in front of the binary's shared server.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls, SimpleQueryMessage};
use veneer_tests::client::{config, simple_rows};
use veneer_tests::raw::{self, RawClient};
use veneer_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_protocol_multi_statement() {
    let proxy = ProxyHandle::start().await;
    let conn = connect_as(proxy.addr(), "clients-simple").await;
    let messages = within(
        "simple query",
        conn.simple_query(
            "SELECT 1 AS a, 'two' AS b, NULL::int AS c; \
             SELECT g FROM generate_series(1, 3) g; \
             CREATE TEMP TABLE simple_t (x int); INSERT INTO simple_t VALUES (1), (2)",
        ),
    )
    .await
    .unwrap();
    let rows = simple_rows(&messages);
    assert_eq!(
        rows,
        vec![
            vec![Some("1".into()), Some("two".into()), None],
            vec![Some("1".into())],
            vec![Some("2".into())],
            vec![Some("3".into())],
        ]
    );
    let completions: Vec<u64> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(completions, vec![1, 3, 0, 2]);
    // An error in a simple query is reported, and the session goes on.
    let err = conn
        .simple_query("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));
    let rows = simple_rows(&conn.simple_query("SELECT 'still here'").await.unwrap());
    assert_eq!(rows, vec![vec![Some("still here".into())]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_binary_results() {
    let proxy = ProxyHandle::start().await;
    let conn = connect_as(proxy.addr(), "clients-extended").await;
    // tokio-postgres asks for every result column in binary format.
    let row = within(
        "extended query",
        conn.query_one(
            "SELECT $1::int4 + 1, $2::int8 * 2, $3::float8 / 2, $4::text || '!', NOT $5::bool, \
             $6::bytea, $7::int4, ARRAY[$1::int4, 7, 9], '12.50'::numeric::text",
            &[
                &41i32,
                &(1i64 << 40),
                &3.0f64,
                &"hi",
                &false,
                &vec![0u8, 1, 255],
                &None::<i32>,
            ],
        ),
    )
    .await
    .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, i64>(1), 1i64 << 41);
    assert_eq!(row.get::<_, f64>(2), 1.5);
    assert_eq!(row.get::<_, String>(3), "hi!");
    assert!(row.get::<_, bool>(4));
    assert_eq!(row.get::<_, Vec<u8>>(5), vec![0u8, 1, 255]);
    assert_eq!(row.get::<_, Option<i32>>(6), None);
    assert_eq!(row.get::<_, Vec<i32>>(7), vec![41, 7, 9]);
    assert_eq!(row.get::<_, String>(8), "12.50");

    // A large result streams through intact.
    let rows = within(
        "large result",
        conn.query(
            "SELECT g, repeat('x', g % 100) FROM generate_series(1, 20000) g",
            &[],
        ),
    )
    .await
    .unwrap();
    assert_eq!(rows.len(), 20000);
    for (i, row) in rows.iter().enumerate() {
        let g = i as i32 + 1;
        assert_eq!(row.get::<_, i32>(0), g);
        assert_eq!(row.get::<_, String>(1).len(), (g % 100) as usize);
    }

    // Row-at-a-time consumption through a portal (query_raw).
    let params: Vec<i32> = vec![];
    let stream = conn
        .query_raw("SELECT g FROM generate_series(1, 1000) g", params)
        .await
        .unwrap();
    let sum = within(
        "query_raw",
        stream.try_fold(0i64, |sum, row| async move {
            Ok(sum + i64::from(row.get::<_, i32>(0)))
        }),
    )
    .await
    .unwrap();
    assert_eq!(sum, 500_500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prepared_statements() {
    let proxy = ProxyHandle::start().await;
    let conn = connect_as(proxy.addr(), "clients-prepared").await;
    // tokio-postgres names every statement it prepares (s0, s1, …) and reuses it by name.
    let add = conn.prepare("SELECT $1::int4 + $2::int4").await.unwrap();
    let upper = conn.prepare("SELECT upper($1::text)").await.unwrap();
    assert!(!add.params().is_empty());
    for i in 0..20i32 {
        let row = conn.query_one(&add, &[&i, &i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 2 * i);
        let row = conn.query_one(&upper, &[&format!("v{i}")]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("V{i}"));
    }
    drop(add);
    // After the statement is closed, the other one is still there.
    let row = conn.query_one(&upper, &[&"still"]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "STILL");

    // SQL-level PREPARE / EXECUTE / DEALLOCATE.
    conn.batch_execute("PREPARE twice(int) AS SELECT $1 * 2")
        .await
        .unwrap();
    let rows = simple_rows(&conn.simple_query("EXECUTE twice(21)").await.unwrap());
    assert_eq!(rows, vec![vec![Some("42".into())]]);
    conn.batch_execute("DEALLOCATE twice").await.unwrap();
    let err = conn.simple_query("EXECUTE twice(1)").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_PSTATEMENT));

    // A statement whose Parse fails leaves the session usable.
    let err = conn.prepare("SELEC 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::SYNTAX_ERROR));
    assert_eq!(scalar::<i32>(&conn, "SELECT 5").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_keep_their_order() {
    let proxy = ProxyHandle::start().await;
    let conn = connect_as(proxy.addr(), "clients-pipeline").await;
    let statement = conn.prepare("SELECT $1::int4, pg_sleep(0)").await.unwrap();
    // All of these are written before the first reply is read: tokio-postgres pipelines requests on
    // one connection and matches replies in order, so a reordering proxy would mismatch them.
    let futures = (0..200i32).map(|i| {
        let conn = &conn;
        let statement = &statement;
        async move {
            let row = if i % 3 == 0 {
                conn.query_one(statement, &[&i]).await?
            } else {
                conn.query_one("SELECT $1::int4 + 0, 1", &[&i]).await?
            };
            Ok::<i32, tokio_postgres::Error>(row.get(0))
        }
    });
    let results = within(
        "200 pipelined queries",
        futures_util::future::try_join_all(futures),
    )
    .await
    .unwrap();
    assert_eq!(results, (0..200).collect::<Vec<i32>>());

    // An error in the middle of a pipeline fails only its own query.
    let (a, b, c) = tokio::join!(
        conn.query_one("SELECT 1", &[]),
        conn.query_one("SELECT 1/0", &[]),
        conn.query_one("SELECT 3", &[]),
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(b.unwrap_err().code(), Some(&SqlState::DIVISION_BY_ZERO));
    assert_eq!(c.unwrap().get::<_, i32>(0), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    let proxy = ProxyHandle::start().await;
    let conn = connect_as(proxy.addr(), "clients-copy").await;
    conn.batch_execute("CREATE TEMP TABLE copy_t (id int, name text)")
        .await
        .unwrap();
    let sink = conn.copy_in("COPY copy_t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in 0..10 {
        let lines: String = (0..1000)
            .map(|i| format!("{}\tname {}\n", chunk * 1000 + i, chunk * 1000 + i))
            .collect();
        sink.send(bytes::Bytes::from(lines)).await.unwrap();
    }
    let copied = within("COPY FROM STDIN to finish", sink.finish())
        .await
        .unwrap();
    assert_eq!(copied, 10_000);

    let stream = conn
        .copy_out("COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = within("COPY TO STDOUT", stream.try_collect())
        .await
        .unwrap();
    let text: Vec<u8> = chunks.concat();
    let expected: String = (0..10_000).map(|i| format!("{i}\tname {i}\n")).collect();
    assert_eq!(String::from_utf8(text).unwrap(), expected);

    // A COPY that fails on bad data reports the error and leaves the session usable.
    let sink = conn.copy_in("COPY copy_t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"not a number\tx\n"))
        .await
        .unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INVALID_TEXT_REPRESENTATION));
    let count: i64 = scalar(&conn, "SELECT count(*) FROM copy_t").await;
    assert_eq!(count, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_a_listener() {
    let proxy = ProxyHandle::start().await;
    let (listener, mut connection) = config(proxy.addr(), SUPERUSER, None, "clients-listen")
        .connect(NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener
        .batch_execute("LISTEN clients_channel")
        .await
        .unwrap();
    // The notifier goes directly to the server: delivery must not depend on the proxy seeing NOTIFY.
    let notifier = direct_admin().await;
    notifier
        .batch_execute("NOTIFY clients_channel, 'from elsewhere'")
        .await
        .unwrap();
    let received = within("the notification", rx.recv())
        .await
        .expect("notification");
    assert_eq!(
        received,
        ("clients_channel".to_owned(), "from elsewhere".to_owned())
    );
    // And a notice raised by the server arrives as well; the session continues afterwards.
    listener
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello'; END $$")
        .await
        .unwrap();
    assert_eq!(scalar::<i32>(&listener, "SELECT 1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_reaches_the_backend() {
    let proxy = ProxyHandle::start().await;
    let conn = connect_as(proxy.addr(), "clients-cancel").await;
    let observer = direct_admin().await;
    let token = conn.cancel_token();
    let started = Instant::now();
    let sleeping = conn.batch_execute("SELECT pg_sleep(30)");
    let cancelling = async {
        wait_backend_active(&observer, "clients-cancel", "pg_sleep").await;
        // The token holds the address the client connected to: the proxy.
        token.cancel_query(NoTls).await
    };
    let (slept, cancelled) = within("the cancelled query", async {
        tokio::join!(sleeping, cancelling)
    })
    .await;
    cancelled.expect("sending the CancelRequest through the proxy");
    let err = slept.expect_err("pg_sleep(30) should have been cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "cancel took {:?}",
        started.elapsed()
    );
    // The session survives its cancelled query.
    assert_eq!(scalar::<i32>(&conn, "SELECT 7").await, 7);

    // A cancel for a session that is idle changes nothing.
    token.cancel_query(NoTls).await.unwrap();
    assert_eq!(scalar::<i32>(&conn, "SELECT 8").await, 8);
}

/// The ids committed to the savepoint test's table, in order.
async fn sp_item_ids(conn: &Conn) -> Vec<i32> {
    conn.query("SELECT id FROM sp_items ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_with_savepoints() {
    let proxy = ProxyHandle::start().await;
    let mut conn = connect_as(proxy.addr(), "clients-savepoints").await;
    conn.batch_execute("DROP TABLE IF EXISTS sp_items; CREATE TABLE sp_items (id int PRIMARY KEY)")
        .await
        .unwrap();

    // ROLLBACK TO SAVEPOINT undoes only what followed the savepoint, and recovers from an error.
    conn.batch_execute(
        "BEGIN; INSERT INTO sp_items VALUES (1); SAVEPOINT a; INSERT INTO sp_items VALUES (2); \
         ROLLBACK TO SAVEPOINT a; INSERT INTO sp_items VALUES (3)",
    )
    .await
    .unwrap();
    conn.batch_execute("SAVEPOINT b").await.unwrap();
    let err = conn
        .batch_execute("INSERT INTO sp_items VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
    conn.batch_execute("ROLLBACK TO SAVEPOINT b; INSERT INTO sp_items VALUES (4); COMMIT")
        .await
        .unwrap();
    let ids = sp_item_ids(&conn).await;
    assert_eq!(ids, vec![1, 3, 4]);

    // The driver's transaction API (savepoints by name, rollback on drop).
    {
        let mut tx = conn.transaction().await.unwrap();
        tx.execute("INSERT INTO sp_items VALUES (5)", &[])
            .await
            .unwrap();
        let sp = tx.savepoint("sp_inner").await.unwrap();
        sp.execute("INSERT INTO sp_items VALUES (6)", &[])
            .await
            .unwrap();
        sp.rollback().await.unwrap();
        tx.commit().await.unwrap();
    }
    {
        let tx = conn.transaction().await.unwrap();
        tx.execute("INSERT INTO sp_items VALUES (7)", &[])
            .await
            .unwrap();
        // Dropped without commit: rolled back.
    }
    let ids = sp_item_ids(&conn).await;
    assert_eq!(ids, vec![1, 3, 4, 5]);

    // An error inside a block: later statements get 25P02 until the block ends.
    conn.batch_execute("BEGIN; INSERT INTO sp_items VALUES (8)")
        .await
        .unwrap();
    let err = conn.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    let err = conn.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    let err = conn.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    conn.batch_execute("COMMIT").await.unwrap();
    let count: i64 = scalar(&conn, "SELECT count(*) FROM sp_items WHERE id = 8").await;
    assert_eq!(count, 0, "a failed transaction must not commit");
    conn.batch_execute("DROP TABLE sp_items").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_of_failed_transaction_reports_rollback() {
    // The command tag and transaction status are only visible on the wire.
    let proxy = ProxyHandle::start().await;
    let (mut client, _) =
        RawClient::startup(proxy.addr(), SUPERUSER, "clients-failed-commit").await;
    let status = |messages: &[raw::Message]| messages.last().map(|m| m.body().to_vec());
    assert_eq!(status(&client.query("BEGIN").await), Some(b"T".to_vec()));
    let failed = client.query("SELECT 1/0").await;
    assert_eq!(raw::first_error(&failed).code(), "22012");
    assert_eq!(status(&failed), Some(b"E".to_vec()));
    let committed = client.query("COMMIT").await;
    let tag = committed
        .iter()
        .find(|m| m.tag() == b'C')
        .map(|m| m.body().to_vec());
    assert_eq!(tag, Some(b"ROLLBACK\0".to_vec()), "{committed:?}");
    assert_eq!(status(&committed), Some(b"I".to_vec()));
    client.send(&raw::terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_only_its_own_session() {
    let proxy = ProxyHandle::start().await;
    let observer = direct_admin().await;
    let target = connect_as(proxy.addr(), "clients-cancel-target").await;
    let other = connect_as(proxy.addr(), "clients-cancel-other").await;
    let token = target.cancel_token();
    let target_sleep = target.batch_execute("SELECT pg_sleep(30)");
    let other_sleep = other.batch_execute("SELECT pg_sleep(2)");
    let cancelling = async {
        wait_backend_active(&observer, "clients-cancel-target", "pg_sleep").await;
        wait_backend_active(&observer, "clients-cancel-other", "pg_sleep").await;
        // A CancelRequest with a key no session has must be ignored.
        let mut bogus = RawClient::connect(proxy.addr()).await;
        let mut request = Vec::new();
        request.extend(16i32.to_be_bytes());
        request.extend(80_877_102i32.to_be_bytes());
        request.extend(1i32.to_be_bytes());
        request.extend(2i32.to_be_bytes());
        bogus.send(&request).await;
        let (replies, _) = bogus.read_to_end().await;
        assert!(
            replies.is_empty(),
            "a CancelRequest gets no reply: {replies:?}"
        );
        token.cancel_query(NoTls).await
    };
    let (target_result, other_result, cancelled) = within("both sleeps", async {
        tokio::join!(target_sleep, other_sleep, cancelling)
    })
    .await;
    cancelled.unwrap();
    assert_eq!(
        target_result.unwrap_err().code(),
        Some(&SqlState::QUERY_CANCELED)
    );
    other_result.expect("the other session's query must not be cancelled");
}
