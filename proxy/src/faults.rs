//! Faults a test can switch on, to show that a check catches what it is meant to: the staleness
//! fuzzer (`tests/src/fuzz.rs`) must fail when an invalidation path is off. Every fault is off unless
//! a test switches it on; a process of its own should, since the switches are process-wide.

use std::sync::atomic::{AtomicBool, Ordering};

static STREAM_ROW_KEYS_OFF: AtomicBool = AtomicBool::new(false);

/// Has the replication stream skip its row-key bumps (the changed table's own generation is still
/// bumped): point lookups of rows changed outside the proxy are then served stale.
pub fn skip_stream_row_keys(on: bool) {
    STREAM_ROW_KEYS_OFF.store(on, Ordering::Relaxed);
}

/// Whether [`skip_stream_row_keys`] is on.
pub(crate) fn stream_row_keys_off() -> bool {
    STREAM_ROW_KEYS_OFF.load(Ordering::Relaxed)
}
