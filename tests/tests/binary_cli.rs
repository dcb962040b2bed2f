//! The `veneer` binary's interface: `--help` documents every setting, bad configuration is refused at
//! start with a message naming the key (file, flag and environment alike), file settings apply with
//! CLI flags taking precedence, and each connection is logged when it closes with its user, database
//! and bytes each way.

use clap::CommandFactory;
use veneer_config::Settings;
use veneer_tests::binary::{run_veneer, VeneerProcess};
use veneer_tests::client::config;
use veneer_tests::raw::{self, RawClient};
use veneer_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_lists_every_setting() {
    let out = run_veneer(&["--help"], &[]).await;
    out.assert_success("veneer --help");
    let command = Settings::command();
    let mut checked = 0;
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        assert!(
            out.stdout.contains(&format!("--{long}")),
            "--{long} missing from --help:\n{}",
            out.stdout
        );
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy();
            assert!(
                out.stdout.contains(env.as_ref()),
                "{env} missing from --help:\n{}",
                out.stdout
            );
        }
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} settings found in the schema");
}

/// Writes `toml` to a file and runs `veneer --config FILE` plus `args`, expecting a refusal.
async fn refused(toml: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = TempDir::new("config");
    let path = dir.path().join("veneer.toml");
    std::fs::write(&path, toml).unwrap();
    let mut all = vec!["--config", path.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run_veneer(&all, env).await;
    assert!(
        !out.status.success(),
        "veneer accepted {toml:?} {args:?} {env:?}: {out:?}"
    );
    out.stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_in_the_file_is_named() {
    let stderr = refused(
        "listen = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:5432\"\nmax_client_conections = 5\n",
        &[],
        &[],
    )
    .await;
    assert!(stderr.contains("max_client_conections"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_are_named() {
    let stderr = refused("max_message_bytes = \"lots\"\n", &[], &[]).await;
    assert!(stderr.contains("max_message_bytes"), "{stderr}");
    let stderr = refused("upstream = \"no-port-here\"\n", &[], &[]).await;
    assert!(stderr.contains("upstream"), "{stderr}");
    let stderr = refused("", &["--max-client-connections", "0"], &[]).await;
    assert!(
        stderr.contains("max_client_connections") || stderr.contains("max-client-connections"),
        "{stderr}"
    );
    let stderr = refused("", &["--shutdown-drain", "soon"], &[]).await;
    assert!(
        stderr.contains("shutdown-drain") || stderr.contains("shutdown_drain"),
        "{stderr}"
    );
    let stderr = refused("", &[], &[("VENEER_UPSTREAM_TSL", "require")]).await;
    assert!(stderr.contains("VENEER_UPSTREAM_TSL"), "{stderr}");
    let stderr = refused("", &[], &[("VENEER_UPSTREAM_TLS", "sometimes")]).await;
    assert!(stderr.contains("sometimes"), "{stderr}");
    let missing = refused(
        "",
        &[
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    )
    .await;
    assert!(missing.contains("/nonexistent/cert.pem"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_settings_apply_and_flags_win() {
    // The file's upstream is a closed port, overridden by the --upstream flag VeneerProcess passes;
    // its connection limit applies.
    let dir = TempDir::new("config");
    let path = dir.path().join("veneer.toml");
    std::fs::write(
        &path,
        format!(
            "upstream = \"127.0.0.1:{}\"\nmax_client_connections = 1\nshutdown_drain = \"2s\"\n",
            free_port()
        ),
    )
    .unwrap();
    let veneer = VeneerProcess::start(&["--config", path.to_str().unwrap()]).await;
    let first = connect_as(veneer.addr(), "cli-file-first").await;
    assert_eq!(scalar::<i32>(&first, "SELECT 1").await, 1);
    let err = connect(&config(veneer.addr(), SUPERUSER, None, "cli-file-second"))
        .await
        .expect_err("max_client_connections = 1 from the file");
    assert_eq!(err.code().map(|c| c.code()), Some("53300"), "{err:?}");
}

/// Every maximal run of digits in `line`.
fn numbers(line: &str) -> Vec<u64> {
    line.split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}

async fn check_closed_line(format: &[&str], app: &str) -> String {
    let veneer = VeneerProcess::start(format).await;
    let params = [
        ("user", TRUST_USER),
        ("database", DATABASE),
        ("application_name", app),
    ];
    let startup_len = raw::startup_message(&params).len() as u64;
    let (mut client, _) = RawClient::startup(veneer.addr(), TRUST_USER, app).await;
    let reply = client.query("SELECT repeat('b', 5000)").await;
    assert!(reply.iter().any(|m| m.tag() == b'D'));
    client.send(&raw::terminate()).await;
    let (rest, _) = client.read_to_end().await;
    assert!(rest.is_empty(), "{rest:?}");
    let (sent, received) = (client.sent, client.received);
    // Bytes from the client may or may not count the startup packet; bytes to the client are all
    // relayed from the server, so they are exact.
    veneer
        .wait_for_line(
            "the connection-closed line with user, database and byte counts",
            |line| {
                let found = numbers(line);
                line.contains(TRUST_USER)
                    && line.contains(DATABASE)
                    && found.contains(&received)
                    && (found.contains(&sent) || found.contains(&(sent - startup_len)))
            },
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_logged_with_user_database_and_bytes() {
    let line = check_closed_line(&[], "cli-log-text").await;
    assert!(!line.starts_with('{'), "text format by default: {line}");
    let line = check_closed_line(&["--log-format", "json"], "cli-log-json").await;
    assert!(
        line.starts_with('{') && line.ends_with('}'),
        "JSON lines with --log-format json: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_for_prometheus() {
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let veneer = VeneerProcess::start(&["--metrics-listen", &metrics.to_string()]).await;
    veneer_tests::cache::wait_cache_ready(veneer.addr()).await;
    let client = connect_as(veneer.addr(), "metrics").await;
    for _ in 0..3 {
        client.simple_query("SELECT 41 + 1").await.unwrap();
    }
    let response = veneer_tests::http::get(metrics, "/metrics").await;
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    let value = |name: &str| {
        response
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{response}"))
    };
    assert!(value("veneer_cache_hits_total") >= 2.0);
    assert!(value("veneer_cache_misses_total") >= 1.0);
    assert!(value("veneer_client_connections") >= 1.0);
    for series in [
        "veneer_request_duration_seconds_bucket{path=\"hit\"",
        "veneer_upstream_messages_total",
        "veneer_cache_entries",
    ] {
        assert!(
            response.contains(series),
            "{series} missing from:\n{response}"
        );
    }
}

/// A Veneer on a remote tier exports the tier's figures: each node's state and share of the hits,
/// the hot-request share, and the pass-through reasons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_metrics_are_served_for_prometheus() {
    let node = veneer_tests::tier::RespServer::cache_node(&[]).await;
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let veneer = VeneerProcess::start(&[
        "--metrics-listen",
        &metrics.to_string(),
        "--cache-tier",
        "nodes",
        "--cache-nodes",
        &node.address(),
        "--cache-tier-timeout",
        "100ms",
    ])
    .await;
    veneer_tests::cache::wait_cache_ready(veneer.addr()).await;
    let client = connect_as(veneer.addr(), "tier-metrics").await;
    let up = format!("veneer_tier_node_up{{node=\"{}\"}} 1", node.address());
    let served = wait_for(std::time::Duration::from_secs(20), || async {
        for _ in 0..3 {
            client.simple_query("SELECT 41 + 1").await.unwrap();
        }
        let response = veneer_tests::http::get(metrics, "/metrics").await;
        response.contains(&up)
            && response.contains("veneer_tier_node_hit_share{node=")
            && response.contains("veneer_hot_request_share")
            && response.contains("veneer_cache_bypasses_total{reason=\"write\"}")
    })
    .await;
    assert!(
        served,
        "tier metrics missing from:\n{}",
        veneer_tests::http::get(metrics, "/metrics").await
    );
}
