//! The differential staleness fuzzer (see `veneer_tests::fuzz`) without `veneer setup`: first with
//! DDL only through Veneer and results living an hour (a stale one shows plainly), then with DDL
//! also made directly, which the stream does not see, checked against the TTL bound. Regression
//! seeds first, then fresh seeds for `VENEER_FUZZ_SECONDS` (20 s by default) each.

use std::time::Duration;

use veneer_tests::fuzz::{budget, fuzz, Mode};

/// Seeds that found stale reads once, kept so they never do again.
const REGRESSION: &[u64] = &[1, 2, 3];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_veneer_equal_direct_reads_without_setup() {
    for unfollowed_ddl in [false, true] {
        let mode = Mode {
            setup: false,
            unfollowed_ddl,
        };
        fuzz(mode, REGRESSION, 120, budget(Duration::from_secs(20))).await;
    }
}
