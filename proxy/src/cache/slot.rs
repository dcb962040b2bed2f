//! Watches a database's replication slot from the server's side while its stream runs: how much WAL
//! the slot makes the server keep, for the status and the metrics. (The stream confirms what it
//! applied even on an idle database, so this stays small; a large figure means the stream is behind
//! or stuck.)

use std::convert::Infallible;
use std::time::Duration;

use super::database::Database;
use super::service::Service;
use super::Cache;

/// How often the slot is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// WAL the slot retains: from its restart position to the server's current one.
const RETAINED: &str = "SELECT (pg_catalog.pg_current_wal_lsn() - restart_lsn)::int8 \
     FROM pg_catalog.pg_replication_slots WHERE slot_name = $1";

/// Records the WAL slot `slot` of `db` retains every [`CHECK_EVERY`]; runs until dropped.
pub async fn watch(cache: &Cache, db: &Database, slot: &str) -> Infallible {
    let mut service = Service::new(cache, &db.name, "veneer slot watch");
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match service.query(RETAINED, &[&slot]).await {
            Ok(rows) => {
                if let Some(bytes) = rows.first().and_then(|r| r.get::<_, Option<i64>>(0)) {
                    db.stream.retained(bytes.max(0) as u64);
                }
            }
            Err(e) => {
                tracing::debug!(database = %db.name, error = %e, "could not read the slot's retained WAL");
            }
        }
    }
}
