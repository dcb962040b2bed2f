//! Real drivers' protocol habits through Veneer, compared with their direct answers. psycopg 3 sends
//! every `executemany` as a pipeline (Parse/Bind/Describe/Execute per statement, one Sync, then a
//! Flush); tests/differential/psycopg_pipeline.py runs it sync and async, with and without
//! autocommit, with client- and server-side binding, until the answers are hits. The drivers' own
//! test suites run through Veneer from tests/differential/run.

use std::path::PathBuf;
use std::time::Duration;

use veneer_tests::cache::{figure, run_direct, wait_cache_ready};
use veneer_tests::*;

/// The Python that has psycopg: `VENEER_TEST_PYTHON`, the virtual environment tests/differential/run
/// makes, or `python3`.
fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = root.join("target/differential/venv/bin/python");
    let python = match std::env::var_os("VENEER_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None if venv.is_file() => venv,
        None => PathBuf::from("python3"),
    };
    let found = std::process::Command::new(&python)
        .args(["-c", "import psycopg"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{} cannot import psycopg: pip install 'psycopg[binary]' (.ci/run does), or set \
         VENEER_TEST_PYTHON",
        python.display()
    );
    python
}

fn dsn(addr: std::net::SocketAddr) -> String {
    format!(
        "host={} port={} user={SUPERUSER} dbname={DATABASE} sslmode=disable connect_timeout=10",
        addr.ip(),
        addr.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_executemany_pipelines_answer_as_directly_and_hit() {
    run_direct(
        "CREATE TABLE pipeline_items (id int PRIMARY KEY, v text);
         INSERT INTO pipeline_items SELECT g, 'item ' || g FROM generate_series(1, 3) g;",
    )
    .await;
    let proxy = ProxyHandle::start().await;
    wait_cache_ready(proxy.addr()).await;
    let status = connect_as(proxy.addr(), "drivers-status").await;
    let hits = figure(&status, "hits").await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("differential/psycopg_pipeline.py");
    let output = within_for(
        Duration::from_secs(600),
        "psycopg_pipeline.py",
        tokio::process::Command::new(python())
            .arg(&script)
            .args([dsn(pg().addr()), dsn(proxy.addr()), "3".to_owned()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{stdout}");
    assert!(
        figure(&status, "hits").await > hits,
        "no pipelined statement was a hit: {:?}",
        veneer_tests::cache::status(&status).await
    );
}
