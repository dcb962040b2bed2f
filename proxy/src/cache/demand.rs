//! Who needs a database's background work (its replication stream and catalog reader): the sessions
//! attached to it, and holds that keep its stream off while a DROP DATABASE runs. The work runs while
//! the database is wanted and stops once it has had no client for an idle time, so a database nobody
//! uses pins no replication slot and takes no connection.

use std::time::Duration;

use tokio::sync::watch;

/// Sessions attached and holds taken.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    clients: usize,
    holds: usize,
}

impl Counts {
    fn wanted(&self) -> bool {
        self.clients > 0 && self.holds == 0
    }
}

/// The demand on one database, as a watched pair of counts.
pub struct Demand(watch::Sender<Counts>);

impl Default for Demand {
    fn default() -> Self {
        Demand(watch::channel(Counts::default()).0)
    }
}

impl Demand {
    /// A session starts using the database.
    pub fn attach(&self) {
        self.0.send_modify(|c| c.clients += 1);
    }

    /// A session stops using the database.
    pub fn detach(&self) {
        self.0.send_modify(|c| c.clients -= 1);
    }

    /// The replication stream must stay off until [`Demand::unhold`].
    pub fn hold(&self) {
        self.0.send_modify(|c| c.holds += 1);
    }

    /// Ends a [`Demand::hold`].
    pub fn unhold(&self) {
        self.0.send_modify(|c| c.holds -= 1);
    }

    /// Sessions attached now.
    pub fn clients(&self) -> usize {
        self.0.borrow().clients
    }

    /// Whether a hold keeps the stream off now.
    pub fn held(&self) -> bool {
        self.0.borrow().holds > 0
    }

    /// Returns once a session is attached and no hold is taken.
    pub async fn wanted(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`, so the wait only ends by the condition.
        let _ = rx.wait_for(Counts::wanted).await;
    }

    /// Returns once the work should stop: a hold is taken, or no session has been attached for
    /// `idle`.
    pub async fn released(&self, idle: Duration) {
        let mut rx = self.0.subscribe();
        loop {
            let Ok(now) = rx.wait_for(|c| !c.wanted()).await.map(|c| *c) else {
                return;
            };
            if now.holds > 0 {
                return;
            }
            let back = rx.wait_for(|c| c.clients > 0 || c.holds > 0);
            if tokio::time::timeout(idle, back).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn released_after_the_idle_time_or_at_once_when_held() {
        let demand = Demand::default();
        demand.attach();
        demand.wanted().await;
        let idle = Duration::from_secs(60);
        let released = demand.released(idle);
        tokio::pin!(released);
        // Attached: not released however long it waits.
        assert!(tokio::time::timeout(idle * 2, &mut released).await.is_err());
        demand.detach();
        let started = tokio::time::Instant::now();
        released.await;
        assert!(started.elapsed() >= idle);

        demand.attach();
        demand.hold();
        tokio::time::timeout(Duration::from_millis(1), demand.released(idle))
            .await
            .expect("a hold releases at once");
        assert!(
            tokio::time::timeout(idle, demand.wanted()).await.is_err(),
            "not wanted while held"
        );
        demand.unhold();
        demand.wanted().await;
    }
}
