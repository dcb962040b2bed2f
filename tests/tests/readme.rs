//! Every command the README shows for the proxy, the node and the demo is exercised: each `veneer`
//! and `veneer-cache-node` command line is a valid configuration, the quickstart's proxy serves a
//! hit, and the tier example's node and proxy serve one together (with this machine's addresses
//! for the README's example hosts). The demo's commands are run elsewhere (`examples/demo/run
//! --check` by `.ci/run`, the compose file by `examples.rs`), and an unknown command fails here, so
//! a new one cannot go untested.

use veneer_config::{Config, NodeConfig};
use veneer_tests::binary::VeneerProcess;
use veneer_tests::cache::{figure, first, wait_cache_ready};
use veneer_tests::tier::RespServer;
use veneer_tests::*;

/// A command of the README: its words, as a shell would split them.
type Words = Vec<String>;

/// The commands in the README's `sh` blocks, continuation lines joined and comments dropped.
fn commands() -> Vec<Words> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut line = String::new();
    for text in readme.lines() {
        match (in_sh, text.trim_start().starts_with("```")) {
            (false, true) => in_sh = text.trim() == "```sh",
            (true, true) => in_sh = false,
            (true, false) => {
                let text = text.trim();
                match text.strip_suffix('\\') {
                    Some(part) => line.push_str(part),
                    None => {
                        line.push_str(text);
                        let words = split(&line);
                        if !words.is_empty() {
                            commands.push(words);
                        }
                        line.clear();
                    }
                }
            }
            (false, false) => {}
        }
    }
    commands
}

/// Splits a command line into words: whitespace separates, double and single quotes group, `#`
/// at the start of a word begins a comment.
fn split(line: &str) -> Words {
    let mut words = Vec::new();
    let (mut word, mut quote, mut started) = (String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                started = true;
            }
            (None, '#') if !started => break,
            (None, c) if c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (None, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

/// What a README command is.
enum Kind {
    /// The proxy, with these arguments.
    Proxy(Words),
    /// A cache-node, with these arguments.
    Node(Words),
    /// Run by another test or by `.ci/run`.
    Elsewhere,
}

fn kind(words: &[String]) -> Kind {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let after_dashes = || {
        w.iter()
            .position(|x| *x == "--")
            .map(|i| words[i + 1..].to_vec())
    };
    match w.as_slice() {
        ["veneer", ..] => Kind::Proxy(words[1..].to_vec()),
        ["veneer-cache-node", ..] => Kind::Node(words[1..].to_vec()),
        ["cargo", "run", "--release", "-p", "veneer-proxy", "--", ..] => {
            Kind::Proxy(after_dashes().expect("--"))
        }
        // examples.rs runs the application; .ci/run runs the tests and the demo's check;
        // examples.rs validates the compose file; benchmarks are run by hand.
        ["cargo", "run", "--release", "-p", "veneer-example-app", ..]
        | ["cargo", "test", "--workspace"]
        | ["docker", "compose", "up"]
        | ["examples/demo/run", ..] => Kind::Elsewhere,
        [script, ..] if script.starts_with("bench/") => Kind::Elsewhere,
        _ => panic!("the README shows a command no test covers: {words:?}"),
    }
}

/// `args` without the flags in `drop` and their values.
fn without(args: &[String], drop: &[&str]) -> Words {
    let mut kept = Vec::new();
    let mut skip = false;
    for a in args {
        if std::mem::take(&mut skip) {
            continue;
        }
        if drop.contains(&a.as_str()) {
            skip = true;
            continue;
        }
        kept.push(a.clone());
    }
    kept
}

/// The README's proxy commands, with `$FLEET_SECRET` given a value.
fn proxy_commands() -> Vec<Words> {
    commands()
        .iter()
        .filter_map(|c| match kind(c) {
            Kind::Proxy(args) => Some(
                args.into_iter()
                    .map(|a| a.replace("$FLEET_SECRET", "a fleet secret of sixteen characters"))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[test]
fn every_proxy_and_node_command_is_a_valid_configuration() {
    let (mut proxies, mut nodes) = (0, 0);
    for command in commands() {
        match kind(&command) {
            Kind::Proxy(_) | Kind::Elsewhere => {}
            Kind::Node(args) => {
                let all = std::iter::once("veneer-cache-node".to_owned()).chain(args);
                NodeConfig::load_from(all).unwrap_or_else(|e| panic!("{command:?}: {e}"));
                nodes += 1;
            }
        }
    }
    for args in proxy_commands() {
        let all = std::iter::once("veneer".to_owned()).chain(args.iter().cloned());
        Config::load_from(all).unwrap_or_else(|e| panic!("veneer {args:?}: {e}"));
        proxies += 1;
    }
    assert!(proxies >= 5, "{proxies} proxy commands found");
    assert!(nodes >= 1, "{nodes} node commands found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_proxy_serves_a_hit() {
    let quickstart = proxy_commands()
        .into_iter()
        .next()
        .expect("the quickstart's command");
    assert!(
        quickstart.contains(&"127.0.0.1:5432".to_owned()),
        "{quickstart:?}"
    );
    // Its own port and the test server instead of the README's.
    let veneer = VeneerProcess::start(
        &without(&quickstart, &["--listen", "--upstream"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await;
    served_twice(&veneer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tier_example_node_and_proxy_serve_a_hit_together() {
    let node_args = commands()
        .iter()
        .find_map(|c| match kind(c) {
            Kind::Node(args) => Some(args),
            _ => None,
        })
        .expect("the node command");
    let snapshot = std::env::temp_dir().join(format!("readme-node-{}.snap", std::process::id()));
    let node_args: Vec<String> = without(&node_args, &["--listen", "--max-bytes", "--snapshot"])
        .into_iter()
        .chain(["--snapshot".to_owned(), snapshot.display().to_string()])
        .collect();
    let node =
        RespServer::cache_node(&node_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let tier = proxy_commands()
        .into_iter()
        .find(|c| c.windows(2).any(|w| w == ["--cache-tier", "nodes"]))
        .expect("a proxy command on nodes");
    let mut args = without(
        &tier,
        &[
            "--cache-nodes",
            "--listen",
            "--upstream",
            "--cache-near-bytes",
        ],
    );
    // The README's example has three nodes and a replica; here one node serves them all.
    args = without(&args, &["--cache-replicas"]);
    args.extend(["--cache-nodes".to_owned(), node.address()]);
    args.extend(["--cache-tier-timeout".to_owned(), "200ms".to_owned()]);
    let veneer = VeneerProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    served_twice(&veneer).await;
    let _ = std::fs::remove_file(snapshot);
}

/// The same read twice through `veneer`: the second is a hit.
async fn served_twice(veneer: &VeneerProcess) {
    wait_cache_ready(veneer.addr()).await;
    let client = connect_as(veneer.addr(), "readme").await;
    let sql = "SELECT 'from the README'";
    first(&client, sql).await;
    let hits = figure(&client, "hits").await;
    assert_eq!(
        first(&client, sql).await.as_deref(),
        Some("from the README")
    );
    assert_eq!(
        figure(&client, "hits").await,
        hits + 1,
        "the second read was not a hit"
    );
}

#[test]
fn the_splitter_reads_quotes_and_comments() {
    assert_eq!(
        split(r#"veneer --cache-secret "$X y" 'a b' # a comment"#),
        ["veneer", "--cache-secret", "$X y", "a b"]
    );
}
