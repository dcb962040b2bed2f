//! Loading, precedence and rejection of settings.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A uniquely named config file, removed on drop, so these tests need no extra crate.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn file(text: &str) -> TempFile {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("veneer-config-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    TempFile(path)
}

fn load(args: &[&str]) -> Result<Config, ConfigError> {
    Config::load_from(std::iter::once("veneer").chain(args.iter().copied()))
}

#[test]
fn defaults_apply_without_any_source() {
    let c = load(&[]).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:6432");
    assert_eq!(c.upstream, HostPort::new("127.0.0.1", 5432));
    assert_eq!(c.upstream_tls, UpstreamTls::Prefer);
    assert!(c.client_tls.is_none());
    // Each client gets a server session of its own unless reuse is asked for.
    assert!(c.pool_idle_timeout.is_zero());
    let cache = c.cache.expect("on by default");
    assert_eq!(cache.publication, None, "no publication: test_decoding");
    assert_eq!(cache.verify_sample, 0.0);
}

#[test]
fn cli_overrides_file_and_file_overrides_defaults() {
    let f = file(
        "listen = \"127.0.0.1:7000\"\nupstream = \"db.internal:6543\"\nshutdown_drain = \"2s\"\n",
    );
    let path = f.0.to_str().unwrap();
    let c = load(&["--config", path, "--listen", "127.0.0.1:7001"]).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:7001");
    assert_eq!(c.upstream, HostPort::new("db.internal", 6543));
    assert_eq!(c.shutdown_drain, Duration::from_secs(2));
}

#[test]
fn environment_sits_between_cli_and_file() {
    // The only test that touches the process environment: the variable is one no other test reads.
    let f = file("max_message_bytes = 2048\nworkers = 3\n");
    let path = f.0.to_str().unwrap();
    std::env::set_var("VENEER_WORKERS", "2");
    let from_env = load(&["--config", path]);
    let from_cli = load(&["--config", path, "--workers", "1"]);
    std::env::remove_var("VENEER_WORKERS");
    let from_env = from_env.unwrap();
    assert_eq!(from_env.workers, Some(2));
    assert_eq!(from_env.max_message_bytes, 2048);
    assert_eq!(from_cli.unwrap().workers, Some(1));
}

#[test]
fn unknown_file_key_is_named() {
    let f = file("listen = \"127.0.0.1:7000\"\nlisten_port = 5\n");
    let err = load(&["--config", f.0.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `listen_port`"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn bad_file_value_names_key_and_problem() {
    let f = file("upstream_tls = \"sometimes\"\n");
    let err = load(&["--config", f.0.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("upstream_tls"), "{err}");
    assert!(
        err.contains("not one of: disable, prefer, require"),
        "{err}"
    );
}

#[test]
fn bad_cli_value_names_flag() {
    let err = load(&["--upstream", "localhost"]).unwrap_err().to_string();
    assert!(err.contains("--upstream"), "{err}");
    assert!(err.contains("not host:port"), "{err}");
}

#[test]
fn half_configured_tls_is_refused() {
    let err = load(&["--tls-cert", "/x.pem"]).unwrap_err().to_string();
    assert!(err.contains("tls_key"), "{err}");
}

#[test]
fn missing_file_is_named() {
    let err = load(&["--config", "/nonexistent/veneer.toml"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/veneer.toml"), "{err}");
}

#[test]
fn unknown_environment_variable_is_refused() {
    let proxy = |name: &str| reject_unknown_env::<Settings>([(name.into(), "x".into())], proxy_env);
    let err = proxy("VENEER_LISTN").unwrap_err();
    assert!(err.to_string().contains("VENEER_LISTN"));
    assert!(proxy("VENEER_LISTEN").is_ok());
    // A cache node's variables are the node's to check, and the proxy's are not the node's.
    assert!(proxy("VENEER_CACHE_NODE_LISTEN").is_ok());
    let node = |name: &str| {
        reject_unknown_env::<NodeSettings>([(name.into(), "x".into())], |n| {
            n.starts_with("VENEER_CACHE_NODE_")
        })
    };
    assert!(node("VENEER_CACHE_NODE_LISTEN").is_ok());
    assert!(node("VENEER_LISTEN").is_ok());
    let err = node("VENEER_CACHE_NODE_LISTN").unwrap_err();
    assert!(err.to_string().contains("VENEER_CACHE_NODE_LISTN"));
}

#[test]
fn a_remote_tier_is_checked_as_a_whole() {
    let nodes = load(&[
        "--cache-tier",
        "nodes",
        "--cache-nodes",
        "127.0.0.1:7001,127.0.0.1:7002",
        "--cache-replicas",
        "1",
    ])
    .unwrap();
    let tier = nodes.cache.unwrap().tier;
    assert_eq!(tier.kind, CacheTier::Nodes);
    assert_eq!(tier.nodes, ["127.0.0.1:7001", "127.0.0.1:7002"]);
    assert_eq!(tier.replicas, 1);
    for (args, key) in [
        (&["--cache-tier", "nodes"][..], "cache_nodes"),
        (&["--cache-nodes", "127.0.0.1:7001"][..], "cache_nodes"),
        (
            &["--cache-tier", "nodes", "--cache-nodes", "no-port"][..],
            "cache_nodes",
        ),
        (
            &["--cache-tier", "redis", "--cache-nodes", "h:1"][..],
            "cache_nodes",
        ),
        (
            &[
                "--cache-tier",
                "nodes",
                "--cache-nodes",
                "h:1",
                "--cache-replicas",
                "1",
            ][..],
            "cache_replicas",
        ),
        (&["--cache-secret", "short"][..], "cache_secret"),
        (&["--cache-tier-timeout", "0s"][..], "cache_tier_timeout"),
    ] {
        let err = load(args).unwrap_err().to_string();
        assert!(err.contains(key), "{args:?}: {err}");
    }
}

#[test]
fn ipv6_upstream_round_trips() {
    let hp: HostPort = "[::1]:5432".parse().unwrap();
    assert_eq!(hp, HostPort::new("::1", 5432));
    assert_eq!(hp.to_string(), "[::1]:5432");
}

#[test]
fn verify_full_needs_a_root_certificate_and_only_it_uses_one() {
    let err = load(&["--upstream-tls", "verify-full"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("upstream_tls_root_cert"), "{err}");
    let err = load(&["--upstream-tls-root-cert", "/ca.pem"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("only used with upstream_tls = verify-full"),
        "{err}"
    );
    let c = load(&[
        "--upstream-tls",
        "verify-full",
        "--upstream-tls-root-cert",
        "/ca.pem",
    ])
    .unwrap();
    assert_eq!(c.upstream_tls, UpstreamTls::VerifyFull);
}

#[test]
fn cache_rules_parse_from_every_source_alike() {
    let f =
        file("cache_rules = [\"table:orders=5s\", \"query:SELECT * FROM t WHERE a = ?=never\"]\n");
    let c = load(&["--config", f.0.to_str().unwrap()]).unwrap();
    let rules = c.cache.unwrap().rules;
    assert_eq!(
        rules,
        vec![
            CacheRule {
                target: RuleTarget::Table("orders".into()),
                ttl: Ttl::For(Duration::from_secs(5)),
            },
            CacheRule {
                target: RuleTarget::Query("SELECT * FROM t WHERE a = ?".into()),
                ttl: Ttl::Never,
            },
        ]
    );
    let cli = load(&[
        "--cache-rule",
        "table:x=1m",
        "--config",
        f.0.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(
        cli.cache.unwrap().rules.len(),
        1,
        "the CLI list replaces the file's"
    );
}

#[test]
fn bad_cache_settings_name_the_key() {
    let err = load(&["--cache-rule", "view:x=5s"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cache-rule") && err.contains("not table or query"),
        "{err}"
    );
    let err = load(&["--cache-rule", "table:x=0s"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("write never"), "{err}");
    let f = file("cache_max_bytes = 10\n");
    let err = load(&["--config", f.0.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("cache_max_bytes"), "{err}");
    let err = load(&["--metrics-listen", "nowhere"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("metrics-listen") && err.contains("or off"),
        "{err}"
    );
    let err = load(&["--verify-sample", "1.5"]).unwrap_err().to_string();
    assert!(
        err.contains("verify_sample") && err.contains("from 0 to 1"),
        "{err}"
    );
    assert!(load(&["--cache", "false"]).unwrap().cache.is_none());
    assert_eq!(
        load(&["--metrics-listen", "off"]).unwrap().metrics_listen,
        None
    );
}
