//! The staleness fuzzer catches real bugs: with one invalidation path switched off (the stream's
//! row-key bumps), it must find a stale read within its CI budget. A test binary of its own: the
//! fault is process-wide.

use std::time::Duration;

use veneer_tests::fuzz::{find, Mode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fuzzer_finds_stale_reads_when_row_key_bumps_are_off() {
    veneer_proxy::faults::skip_stream_row_keys(true);
    let found = find(
        Mode {
            setup: false,
            unfollowed_ddl: false,
        },
        // A seed that found it once first, so the test does not depend on fresh seeds' luck.
        &[1796528298367660390],
        120,
        Duration::from_secs(60),
    )
    .await;
    let (case, mismatch) = found.expect("no stale read found with the stream's row-key bumps off");
    eprintln!(
        "found with seed {} after step {}: {} ({} through Veneer, {} directly)",
        case.seed, mismatch.step, mismatch.read, mismatch.veneer, mismatch.direct
    );
}
