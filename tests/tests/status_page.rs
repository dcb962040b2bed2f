//! The metrics listener's pages, from outside: the status page in a real browser (Debian's headless
//! Chromium) against a `veneer` process under load, its charts drawn from data; `/healthz` and
//! `/readyz` as a load balancer reads them, with the reason when not ready; `/status.json` and the
//! per-database, per-table and hot-request metrics the page and the dashboard use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use veneer_tests::binary::VeneerProcess;
use veneer_tests::cache::{on, own_database_with, wait_database_cached};
use veneer_tests::http::{body, get, status};
use veneer_tests::*;

/// A `veneer` with its metrics listener on a free port; returns it and the listener's address.
async fn veneer_with_pages(upstream: Option<&str>, args: &[&str]) -> (VeneerProcess, SocketAddr) {
    let pages = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut all = vec!["--metrics-listen".to_owned(), pages.to_string()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let veneer = match upstream {
        Some(upstream) => VeneerProcess::start_on(upstream, &all).await,
        None => VeneerProcess::start(&all).await,
    };
    (veneer, pages)
}

/// Database `name` made with `setup`, a `veneer` with its pages, and a session through it once the
/// database is cached.
async fn cached_session(name: &str, setup: &str) -> (VeneerProcess, SocketAddr, Conn) {
    own_database_with(name, setup).await;
    let (veneer, pages) = veneer_with_pages(None, &[]).await;
    let client = connect(&on(veneer.addr(), name)).await.expect("connect");
    wait_database_cached(&client, name).await;
    (veneer, pages, client)
}

/// `/status.json`, parsed.
async fn status_json(pages: SocketAddr) -> serde_json::Value {
    let response = get(pages, "/status.json").await;
    assert_eq!(status(&response), 200, "{response}");
    serde_json::from_str(body(&response)).unwrap_or_else(|e| panic!("{e}: {response}"))
}

/// Runs Chromium headless on `url` with `args`, letting the page's scripts run for a few seconds of
/// virtual time; returns what it printed.
async fn chromium(url: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1400,1250",
            "--virtual-time-budget=3000",
        ])
        .args(args)
        .arg(url)
        .output();
    let output = within_for(Duration::from_secs(60), "chromium", output)
        .await
        .unwrap_or_else(|e| panic!("run chromium (Debian's chromium package): {e}"));
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The number in `data-points="…"` of the element with `id` in a dumped DOM.
fn points(dom: &str, id: &str) -> usize {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"));
    let rest = &dom[at..];
    let value = rest
        .split("data-points=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .unwrap_or_else(|| panic!("#{id} has no data-points"));
    value.parse().expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_draws_live_charts_in_a_real_browser() {
    let (_veneer, pages, client) = cached_session(
        "status_page",
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g;",
    )
    .await;
    // Load: reads of 50 rows over and over, a miss each at first and hits after.
    let load = tokio::spawn(async move {
        let mut i = 0u32;
        loop {
            let sql = format!("SELECT name FROM items WHERE id = {}", i % 50 + 1);
            if client.simple_query(&sql).await.is_err() {
                return;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    // The page's charts need a few of its two-second samples with hits in them.
    let sampled = wait_for(Duration::from_secs(30), || async {
        let page = status_json(pages).await;
        let history = page["history"].as_array().cloned().unwrap_or_default();
        history.len() >= 4
            && history
                .last()
                .is_some_and(|s| s["hits"].as_u64() > Some(100))
    })
    .await;
    assert!(sampled, "no history: {}", status_json(pages).await);

    let url = format!("http://{pages}/");
    let dom = chromium(&url, &["--dump-dom"]).await;
    assert!(
        points(&dom, "ratio-chart") >= 2,
        "the hit-ratio chart has no data"
    );
    assert!(
        points(&dom, "rate-chart") >= 6,
        "the throughput chart has no data"
    );
    assert!(dom.contains("class=\"ok\">ready<"), "not shown ready");
    assert!(
        dom.contains("<td>status_page</td>"),
        "the database is not listed"
    );
    assert!(
        dom.contains("SELECT name FROM items WHERE id = ?"),
        "the hot request's shape is not listed"
    );
    assert!(
        !dom.contains("WHERE id = 7"),
        "a value a client sent is on the page"
    );

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let shot = shots.join("status-page.png");
    chromium(&url, &[&format!("--screenshot={}", shot.display())]).await;
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    println!("screenshot: {}", shot.display());
    load.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_say_alive_and_ready_and_why_not() {
    let (mut veneer, pages) = veneer_with_pages(None, &["--shutdown-drain", "30s"]).await;
    let response = get(pages, "/healthz").await;
    assert_eq!((status(&response), body(&response)), (200, "ok\n"));
    let response = get(pages, "/readyz").await;
    assert_eq!(status(&response), 200, "{response}");
    assert!(body(&response).starts_with("ready: forwarding to "));

    // Draining: alive, not ready.
    let busy = connect_as(veneer.addr(), "readyz-drain").await;
    busy.batch_execute("BEGIN").await.expect("begin");
    veneer.signal("TERM").await;
    let draining = wait_for(Duration::from_secs(10), || async {
        status(&get(pages, "/readyz").await) == 503
    })
    .await;
    assert!(draining, "still ready while shutting down");
    let response = get(pages, "/readyz").await;
    assert!(body(&response).contains("shutting down"), "{response}");
    assert_eq!(status(&get(pages, "/healthz").await), 200);
    drop(busy);
    veneer.wait_exit(Duration::from_secs(20)).await;

    // An upstream nobody answers at: not ready, and the page says where.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let (_veneer, pages) = veneer_with_pages(Some(&nowhere), &["--connect-timeout", "1s"]).await;
    let response = get(pages, "/readyz").await;
    assert_eq!(status(&response), 503, "{response}");
    assert!(
        body(&response).contains(&nowhere),
        "the reason names the upstream: {response}"
    );
    let page = status_json(pages).await;
    assert_eq!(page["ready"]["ok"], false);
    assert_eq!(status(&get(pages, "/nowhere").await), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_hits_per_database_and_table_and_name_the_hot_requests() {
    let (_veneer, pages, client) = cached_session(
        "status_metrics",
        "CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a VALUES (1, 'one');
         CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b VALUES (1, 'uno');",
    )
    .await;
    for _ in 0..40 {
        client
            .simple_query("SELECT v FROM a WHERE id = 1")
            .await
            .expect("read a");
    }
    for _ in 0..5 {
        client
            .simple_query("SELECT v FROM b")
            .await
            .expect("read b");
    }
    let metrics = body(&get(pages, "/metrics").await).to_owned();
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from:\n{metrics}"))
    };
    assert_eq!(
        value("veneer_table_cache_hits_total{database=\"status_metrics\",table=\"a\"}"),
        39.0
    );
    assert_eq!(
        value("veneer_table_cache_misses_total{database=\"status_metrics\",table=\"a\"}"),
        1.0
    );
    assert_eq!(
        value("veneer_table_cache_hits_total{database=\"status_metrics\",table=\"b\"}"),
        4.0
    );
    assert!(value("veneer_database_cache_hits_total{database=\"status_metrics\"}") >= 43.0);
    assert!(
        metrics
            .contains("veneer_hot_request_hits{rank=\"1\",query=\"SELECT v FROM a WHERE id = ?\"}"),
        "the hottest request by its shape:\n{metrics}"
    );
    assert!(
        metrics.contains("\nveneer_cache_max_bytes "),
        "the bound:\n{metrics}"
    );
}
