//! What `examples/` and the top level hand to users works as shipped: every example configuration
//! loads, the Prometheus configuration and alert rules pass promtool (the rules' own unit tests
//! included), the compose file passes `docker-compose config`, and the example application gives
//! the same answers directly and through Veneer.

use std::path::{Path, PathBuf};
use std::process::Command;

use veneer_config::{CacheTier, Config};
use veneer_tests::binary::{example_app_bin, VeneerProcess};
use veneer_tests::cache::{on, own_database_with, wait_database_cached};
use veneer_tests::*;

/// The repository's top level.
fn top() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_owned()
}

/// Runs `program` with `args` in the repository's top level; fails with its output unless it
/// succeeds. Returns its standard output.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(top())
        .output()
        .unwrap_or_else(|e| panic!("run {program} (is its Debian package installed?): {e}"));
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{out}\n{err}"
    );
    out.into_owned()
}

#[test]
fn every_example_configuration_loads() {
    let expected = [
        ("embedded.toml", CacheTier::Embedded),
        ("nodes.toml", CacheTier::Nodes),
        ("redis.toml", CacheTier::Redis),
        ("redis-cluster.toml", CacheTier::RedisCluster),
        ("elasticache.toml", CacheTier::Redis),
        ("production.toml", CacheTier::Embedded),
    ];
    let dir = top().join("examples/config");
    let present = std::fs::read_dir(&dir).expect("examples/config").count();
    assert_eq!(present, expected.len(), "a configuration without a check");
    for (file, tier) in expected {
        let path = dir.join(file);
        let config = Config::load_from(["veneer", "--config", path.to_str().expect("utf-8")])
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let cache = config.cache.unwrap_or_else(|| panic!("{file}: caching on"));
        assert_eq!(cache.tier.kind, tier, "{file}");
    }
}

#[test]
fn the_prometheus_configuration_and_alert_rules_pass_promtool() {
    run(
        "promtool",
        &["check", "config", "examples/prometheus/prometheus.yml"],
    );
    run(
        "promtool",
        &[
            "check",
            "config",
            "--syntax-only",
            "examples/demo/prometheus.yml",
        ],
    );
    let tested = run(
        "promtool",
        &["test", "rules", "examples/prometheus/alerts_test.yml"],
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn the_compose_file_is_valid() {
    run(
        "docker-compose",
        &["-f", "docker-compose.yml", "config", "-q"],
    );
    let services = run(
        "docker-compose",
        &["-f", "docker-compose.yml", "config", "--services"],
    );
    let services: std::collections::BTreeSet<&str> = services.lines().collect();
    for wanted in [
        "postgres",
        "node-1",
        "node-2",
        "node-3",
        "veneer-a",
        "veneer-b",
        "load",
        "prometheus",
        "grafana",
    ] {
        assert!(
            services.contains(wanted),
            "no service {wanted}: {services:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_app_gives_the_same_answers_directly_and_through_veneer() {
    let schema = std::fs::read_to_string(top().join("examples/demo/schema.sql")).expect("schema");
    let _direct = own_database_with("example_shop", &schema).await;
    let veneer = VeneerProcess::start(&[]).await;
    let client = connect(&on(veneer.addr(), "example_shop"))
        .await
        .expect("connect");
    wait_database_cached(&client, "example_shop").await;
    let string = |addr: std::net::SocketAddr| {
        format!(
            "host={} port={} user={SUPERUSER} dbname=example_shop",
            addr.ip(),
            addr.port()
        )
    };
    let app = example_app_bin().await;
    let output = tokio::process::Command::new(&app)
        .args([string(pg().addr()), string(veneer.addr())])
        .output();
    let output = within_for(std::time::Duration::from_secs(120), "shop-latency", output)
        .await
        .expect("run shop-latency");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        printed.contains("same answers from every target"),
        "{printed}"
    );
    assert_eq!(
        printed.matches("page views (3 queries each): p50").count(),
        2,
        "{printed}"
    );
    println!("{printed}");
}
