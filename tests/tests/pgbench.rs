//! pgbench through the proxy in each query mode (simple, extended, prepared): 4 clients for 10 s each,
//! no errors. A sustained concurrent load of every protocol path, run one mode after another from one
//! test to keep the file's time near 30 s.

use std::time::Duration;

use veneer_tests::tools::PgTool;
use veneer_tests::*;

/// The number after `label` in pgbench's report.
fn reported(output: &str, label: &str) -> Option<u64> {
    let line = output.lines().find(|l| l.starts_with(label))?;
    line[label.len()..].split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpcb_in_every_query_mode() {
    // Initialised directly: the load, not the setup, is what goes through the proxy.
    PgTool::pgbench(pg().addr(), SUPERUSER)
        .args(["-i", "-s", "1", "-q"])
        .run()
        .await
        .assert_success("pgbench -i");
    let proxy = ProxyHandle::start().await;
    for mode in ["simple", "extended", "prepared"] {
        let out = PgTool::pgbench(proxy.addr(), SUPERUSER)
            .args(["-M", mode, "-c", "4", "-j", "2", "-T", "10", "-n"])
            .limit(Duration::from_secs(60))
            .run()
            .await;
        out.assert_success(&format!("pgbench -M {mode}"));
        let text = format!("{}\n{}", out.stdout, out.stderr);
        assert!(
            !text.to_lowercase().contains("error"),
            "pgbench -M {mode} reported errors:\n{text}"
        );
        let done = reported(&out.stdout, "number of transactions actually processed:");
        assert!(
            done.is_some_and(|n| n > 0),
            "pgbench -M {mode} processed no transactions:\n{text}"
        );
        assert_eq!(
            reported(&out.stdout, "number of failed transactions:"),
            Some(0),
            "pgbench -M {mode}:\n{text}"
        );
        eprintln!("pgbench -M {mode}: {} transactions", done.unwrap_or(0));
    }
    assert_eq!(
        tracking_losses(),
        0,
        "session tracking lost step with the server under pgbench"
    );
    proxy.shutdown().await.expect("clean shutdown");
}
