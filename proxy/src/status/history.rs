//! A few minutes of the proxy's counters, sampled in the process, so the status page can draw its
//! charts without Prometheus: one sample every [`INTERVAL`], the last [`KEPT`] kept.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics::Meters;

/// Time between two samples.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Samples kept: ten minutes.
pub const KEPT: usize = 300;

/// The counters at one moment; the page draws rates from consecutive samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub t: u64,
    /// Hits so far.
    pub hits: u64,
    /// Misses so far.
    pub misses: u64,
    /// Requests forwarded uncached so far (cacheable-looking ones, by any reason).
    pub bypasses: u64,
}

/// The kept samples.
#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Adds a sample of `meters` now, dropping the oldest beyond [`KEPT`].
    pub fn record(&self, meters: &Meters) {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let sample = Sample {
            t,
            hits: meters.hits.get(),
            misses: meters.misses.get(),
            bypasses: meters.bypasses.get(),
        };
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.iter().copied().collect()
    }
}

/// Samples `meters` into `history` every [`INTERVAL`] while the history is wanted.
pub async fn keep(history: Weak<History>, meters: Arc<Meters>) {
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tick.tick().await;
        let Some(history) = history.upgrade() else {
            return;
        };
        history.record(&meters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_samples_in_order() {
        let (history, meters) = (History::default(), Meters::default());
        for i in 0..KEPT + 5 {
            meters.hits.add(1);
            history.record(&meters);
            assert_eq!(history.samples().len(), (i + 1).min(KEPT));
        }
        let samples = history.samples();
        assert_eq!(samples[0].hits, 6, "the five oldest dropped");
        assert_eq!(samples[KEPT - 1].hits, (KEPT + 5) as u64);
    }
}
