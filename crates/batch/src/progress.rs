//! Cheap snapshots of how far a run has come.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::report::Counts;

/// How far a run has come, as of its last update.
///
/// The run publishes a new snapshot at most every
/// [`progress_interval`](crate::BatchConfig::progress_interval) and always when it ends, so
/// reading it costs a lock-free-for-readers borrow and never slows the items down.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Progress {
    /// Items taken from the input and started.
    pub started: u64,
    /// Items running right now.
    pub in_flight: u64,
    /// Items that ended, by how they ended.
    pub counts: Counts,
    /// Time since the run started.
    pub elapsed: Duration,
    /// Number of input items, when the input knew it exactly at the start.
    pub total: Option<u64>,
    /// Whether the run has ended.
    pub done: bool,
}

/// A handle for reading a run's progress while the run goes on, by polling or waiting for
/// changes.
#[derive(Debug, Clone)]
pub struct ProgressWatch {
    receiver: watch::Receiver<Progress>,
}

impl Progress {
    /// Items that have ended in any way.
    pub fn ended(&self) -> u64 {
        self.counts.total()
    }

    /// Items that ended unsuccessfully (failed, panicked, timed out or skipped).
    pub fn failed(&self) -> u64 {
        self.counts.failures() + self.counts.skipped
    }

    /// Items ended per second since the start, or zero before any time has passed.
    // Not yet: a moving-window rate; the average since the start reacts slowly when the
    // pace changes late in a long run.
    pub fn throughput(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.ended() as f64 / seconds
        } else {
            0.0
        }
    }

    /// Estimated time until the run ends, from the throughput so far; `None` when the
    /// input size is unknown or nothing has ended yet.
    pub fn eta(&self) -> Option<Duration> {
        let total = self.total?;
        let throughput = self.throughput();
        if throughput <= 0.0 {
            return None;
        }
        let remaining = total.saturating_sub(self.ended()) as f64;
        Duration::try_from_secs_f64(remaining / throughput).ok()
    }
}

impl ProgressWatch {
    pub(crate) fn new(receiver: watch::Receiver<Progress>) -> Self {
        Self { receiver }
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Progress {
        self.receiver.borrow().clone()
    }

    /// Waits for the next snapshot and returns it; `None` once the run has ended and
    /// published its last one.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future loses no update, the next call sees it.
    pub async fn changed(&mut self) -> Option<Progress> {
        self.receiver.changed().await.ok()?;
        Some(self.receiver.borrow_and_update().clone())
    }

    /// The underlying watch receiver, for use with `tokio::select!` or other watch tools.
    pub fn into_receiver(self) -> watch::Receiver<Progress> {
        self.receiver
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_follows_throughput() {
        let progress = Progress {
            counts: Counts {
                succeeded: 40,
                failed: 10,
                ..Counts::default()
            },
            elapsed: Duration::from_secs(10),
            total: Some(100),
            ..Progress::default()
        };

        assert_eq!(progress.ended(), 50);
        assert_eq!(progress.failed(), 10);
        assert!((progress.throughput() - 5.0).abs() < 1e-9);
        assert_eq!(progress.eta(), Some(Duration::from_secs(10)));
    }

    #[test]
    fn eta_is_unknown_without_a_total_or_throughput() {
        assert_eq!(Progress::default().eta(), None);
        let unknown = Progress {
            elapsed: Duration::from_secs(1),
            ..Progress::default()
        };
        assert_eq!(unknown.eta(), None);
    }
}
