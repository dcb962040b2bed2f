//! Keeps one database's generations in step with writes made anywhere: runs the replication stream
//! of `veneer_invalidation::replication` over a connection of Veneer's own (TLS as configured),
//! applies each commit's changes as bumps, and reconnects with backoff when the stream fails. While
//! the stream is down the database is marked not streaming, which under `replication = required`
//! makes sessions forward its reads; each (re)start bumps the global epoch, since writes made while
//! nobody listened are unknown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use std::time::Duration;

use veneer_invalidation::replication::{self, Commit, Login, Sink};
use veneer_invalidation::Source;

use super::database::Database;
use super::Cache;
use crate::upstream;

/// First wait before reconnecting; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Makes slot names unique within the process (several proxies may run in one, as in the tests).
static NEXT_SLOT: AtomicU64 = AtomicU64::new(0);

/// Applies a stream's reports to a database's generations.
struct Apply<'a> {
    cache: &'a Cache,
    db: &'a Database,
}

impl Sink for Apply<'_> {
    fn streaming(&mut self, published: Option<Vec<String>>) {
        self.db.set_published(published);
        self.db.generations.bump_global();
        self.db.set_streaming(true);
        tracing::info!(database = %self.db.name, "replication stream following writes");
    }

    fn commit(&mut self, commit: &Commit) {
        for name in &commit.changed {
            self.db
                .generations
                .bump_table(&self.db.generations.table(name));
        }
        for name in &commit.whole {
            self.db
                .generations
                .bump_table_epoch(&self.db.generations.table(name));
        }
        if !commit.changed.is_empty() || !commit.whole.is_empty() {
            self.cache.meters.invalidation(Source::Replication);
        }
    }
}

/// Follows `db`'s writes until the cache is dropped, or stops (the connection then closes and the
/// server drops the temporary slot).
pub async fn follow(cache: Weak<Cache>, db: Arc<Database>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Some(strong) = cache.upgrade() else {
            return;
        };
        let login = Login {
            user: strong.service.service_user.clone(),
            password: strong.service.service_password.clone(),
            database: db.name.clone(),
            publication: strong.config.publication.clone(),
            slot: format!(
                "veneer_{}_{}",
                std::process::id(),
                NEXT_SLOT.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let failure = match upstream::connect(&strong.service, strong.service_tls.as_ref()).await {
            Ok(connection) => {
                let mut sink = Apply {
                    cache: &strong,
                    db: &db,
                };
                let result = replication::follow(connection.stream, &login, &mut sink).await;
                if db.set_streaming(false) {
                    backoff = FIRST_BACKOFF;
                }
                match result {
                    Ok(()) => "the stream ended".to_owned(),
                    Err(e) => e.to_string(),
                }
            }
            Err(e) => e.to_string(),
        };
        db.set_replication_error(failure.clone());
        tracing::warn!(database = %db.name, error = %failure, retry_in = ?backoff,
            "replication stream down: writes made outside the proxy are not followed until it is back");
        drop(strong);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
