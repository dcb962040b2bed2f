//! The Grafana dashboard in `examples/dashboards/veneer.json` can never silently go blank: every
//! metric its queries name is one a running `veneer` or `veneer-cache-node` actually exports, read
//! from their `/metrics` under a workload that exercises hits, misses, writes, bypasses, the stream
//! and the tier.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use veneer_tests::binary::VeneerProcess;
use veneer_tests::cache::{first, on, own_database_with, wait_database_cached};
use veneer_tests::http::{body, get};
use veneer_tests::tier::RespServer;
use veneer_tests::*;

/// The dashboard, parsed.
fn dashboard() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/dashboards/veneer.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every PromQL text in `value`: panel targets' `expr` and the variables' `query`/`definition`.
fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(q)) => out.push(q.clone()),
                    ("query", serde_json::Value::String(q)) => out.push(q.clone()),
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The metric names `query` reads: its `veneer_…` words.
fn metric_names(query: &str) -> impl Iterator<Item = String> + '_ {
    query
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("veneer_"))
        .map(str::to_owned)
}

/// The series names a `/metrics` text holds.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_panel_reads_the_provisioned_data_source_and_has_a_query() {
    let dashboard = dashboard();
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut titles = BTreeSet::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().expect("a title");
        assert!(titles.insert(title), "two panels titled {title}");
        assert_eq!(
            panel["datasource"]["uid"], "prometheus",
            "{title}: the data source examples/grafana provisions"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(
                metric_names(expr).next().is_some(),
                "{title}: a query without a Veneer metric: {expr}"
            );
        }
    }
    assert!(panels.len() >= 20, "{} panels", panels.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_reads_is_exported() {
    let mut wanted = Vec::new();
    queries(&dashboard(), &mut wanted);
    let wanted: BTreeSet<String> = wanted.iter().flat_map(|q| metric_names(q)).collect();

    let node_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let node = RespServer::cache_node(&["--metrics-listen", &node_metrics.to_string()]).await;
    let pages = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let veneer = VeneerProcess::start(&[
        "--metrics-listen",
        &pages.to_string(),
        "--cache-tier",
        "nodes",
        "--cache-nodes",
        &node.address(),
        "--cache-tier-timeout",
        "200ms",
    ])
    .await;
    let direct = own_database_with(
        "dashboard",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b');",
    )
    .await;
    let client = connect(&on(veneer.addr(), "dashboard"))
        .await
        .expect("connect");
    wait_database_cached(&client, "dashboard").await;

    let missing = std::sync::Mutex::new(BTreeSet::new());
    let all_there = wait_for(Duration::from_secs(30), || async {
        // Hits, misses, a bypass (a volatile function), writes through the proxy and directly.
        for id in [1, 2, 1, 2, 1, 2] {
            first(&client, &format!("SELECT v FROM t WHERE id = {id}")).await;
        }
        client.simple_query("SELECT now()").await.expect("bypass");
        client
            .batch_execute("UPDATE t SET v = v WHERE id = 1")
            .await
            .expect("write through");
        direct
            .batch_execute("UPDATE t SET v = v WHERE id = 2")
            .await
            .expect("write direct");
        let mut have = exported(body(&get(pages, "/metrics").await));
        have.extend(exported(body(&get(node_metrics, "/metrics").await)));
        let now: BTreeSet<String> = wanted.difference(&have).cloned().collect();
        let done = now.is_empty();
        *missing.lock().expect("not poisoned") = now;
        done
    })
    .await;
    assert!(
        all_there,
        "the dashboard reads metrics nothing exports: {:?}",
        missing.lock().expect("not poisoned")
    );
}
