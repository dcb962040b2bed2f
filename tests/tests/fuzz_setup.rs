//! The differential staleness fuzzer (see `veneer_tests::fuzz`) with `veneer setup`: DDL made
//! directly reaches the stream, so reads must equal the server's once the stream has applied it.
//! A test binary of its own: setup installs its trigger in every database of the server.

use std::time::Duration;

use veneer_tests::binary;
use veneer_tests::fuzz::{budget, fuzz, Mode};

/// Seeds that found stale reads once, kept so they never do again.
const REGRESSION: &[u64] = &[1, 2, 3];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_veneer_equal_direct_reads_with_setup() {
    binary::operate("setup", &[]).await;
    let mode = Mode {
        setup: true,
        unfollowed_ddl: false,
    };
    fuzz(mode, REGRESSION, 120, budget(Duration::from_secs(20))).await;
}
