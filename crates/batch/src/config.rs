//! Plain settings of a run and their validation.

use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of a batch run, as plain values that can live in a configuration file.
///
/// The defaults: 16 items in flight, 64 finished results waiting for the consumer,
/// results in completion order, every outcome collected, no timeout, no rate limit,
/// a 30 s grace period on cancellation, none after a policy stop, and progress
/// published at most every 100 ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchConfig {
    /// Most items running at once.
    pub concurrency: NonZeroUsize,
    /// Most finished results held for a consumer that has not read them yet. When it is
    /// full, items already running go on, but no new item starts.
    pub buffer: NonZeroUsize,
    /// Whether results come out in completion or input order.
    pub order: Order,
    /// What the run does when items fail.
    pub policy: ErrorPolicy,
    /// Longest an item may run (counted from its own start, per attempt when retrying).
    pub item_timeout: Option<Duration>,
    /// Most items started per second, independent of concurrency.
    pub rate_limit: Option<f64>,
    /// How long items already running may go on after the error policy stopped the run;
    /// those still running then end [`Cancelled`](crate::Outcome::Cancelled).
    pub stop_grace: Duration,
    /// How the run reacts to its cancellation token.
    pub cancel_mode: CancelMode,
    /// Shortest time between two progress updates on the watch channel.
    pub progress_interval: Duration,
}

/// Order in which results reach the consumer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Order {
    /// As items end: a slow item holds up nothing.
    #[default]
    Completion,
    /// In input order. At most `window` items, counted from the oldest one not yet handed
    /// out, are started or held, so one slow item pauses new starts once the window is
    /// full rather than letting held results pile up. A window smaller than
    /// [`concurrency`](BatchConfig::concurrency) therefore caps the items in flight at
    /// `window`.
    Input {
        /// Size of the reorder window.
        window: NonZeroUsize,
    },
}

/// What a run does when items fail (return an error, panic or time out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorPolicy {
    /// Run every item and report every outcome.
    #[default]
    CollectAll,
    /// Stop at the first failure.
    StopOnFirst,
    /// Stop once this many items have failed.
    StopAfter(NonZeroU64),
    /// Stop once more than `max` of the ended items have failed, judged only after
    /// `min_items` items have ended.
    StopAboveRatio {
        /// Highest tolerated share of failures, in `0.0..=1.0`.
        max: f64,
        /// Items that must have ended before the ratio is judged.
        min_items: u64,
    },
    /// Mark up to `limit` failures [`Skipped`](crate::Outcome::Skipped) and carry on; one
    /// more failure stops the run with [`BatchError::Stopped`](crate::BatchError::Stopped).
    SkipUpTo(u64),
}

/// How the run reacts to its cancellation token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CancelMode {
    /// Stop pulling input and let running items finish within `grace`; those still
    /// running then are aborted.
    Graceful {
        /// Longest wait for running items.
        grace: Duration,
    },
    /// Abort every running item at once.
    Immediate,
}

/// A setting that cannot work, named with the rule it breaks.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The rate limit is not a finite number above zero.
    #[error("rate limit must be a finite number of items per second above zero, got {0}")]
    RateLimit(f64),
    /// The failure ratio lies outside `0.0..=1.0`.
    #[error("failure ratio must lie within 0.0..=1.0, got {0}")]
    FailureRatio(f64),
    /// The per-item timeout is zero, so no item could ever finish.
    #[error("per-item timeout must be above zero")]
    ZeroTimeout,
    /// The results buffer is larger than a Tokio channel can hold.
    #[error("results buffer must hold at most {max} items, got {0}", max = MAX_BUFFER)]
    Buffer(usize),
    /// The retry policy breaks one of its rules.
    #[error("the retry policy is invalid")]
    Retry(#[source] steadfast_backoff::BuildError),
}

/// Largest results buffer: the most permits a Tokio channel can hand out.
const MAX_BUFFER: usize = tokio::sync::Semaphore::MAX_PERMITS;

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            concurrency: NonZeroUsize::new(16).expect("16 is not zero"),
            buffer: NonZeroUsize::new(64).expect("64 is not zero"),
            order: Order::Completion,
            policy: ErrorPolicy::CollectAll,
            item_timeout: None,
            rate_limit: None,
            stop_grace: Duration::ZERO,
            cancel_mode: CancelMode::default(),
            progress_interval: Duration::from_millis(100),
        }
    }
}

impl Default for CancelMode {
    /// Graceful, with 30 s for running items to finish.
    fn default() -> Self {
        Self::Graceful {
            grace: Duration::from_secs(30),
        }
    }
}

impl BatchConfig {
    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the first setting that breaks its rule.
    pub fn validate(&self) -> Result<(), BuildError> {
        if self.buffer.get() > MAX_BUFFER {
            return Err(BuildError::Buffer(self.buffer.get()));
        }
        if let Some(rate) = self.rate_limit {
            if !rate.is_finite() || rate <= 0.0 {
                return Err(BuildError::RateLimit(rate));
            }
        }
        if let ErrorPolicy::StopAboveRatio { max, .. } = self.policy {
            if !(0.0..=1.0).contains(&max) {
                return Err(BuildError::FailureRatio(max));
            }
        }
        if self.item_timeout == Some(Duration::ZERO) {
            return Err(BuildError::ZeroTimeout);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(BatchConfig::default().validate(), Ok(()));
    }

    #[test]
    fn config_round_trips_through_serde_and_fills_gaps_with_defaults() {
        let config = BatchConfig {
            order: Order::Input {
                window: NonZeroUsize::new(8).expect("eight"),
            },
            policy: ErrorPolicy::SkipUpTo(3),
            rate_limit: Some(12.5),
            cancel_mode: CancelMode::Immediate,
            ..BatchConfig::default()
        };
        let text = serde_json::to_string(&config).expect("serializes");
        let back: BatchConfig = serde_json::from_str(&text).expect("deserializes");
        assert_eq!(back, config);

        let partial: BatchConfig =
            serde_json::from_str(r#"{"concurrency": 4}"#).expect("deserializes");
        assert_eq!(partial.concurrency.get(), 4);
        assert_eq!(partial.buffer, BatchConfig::default().buffer);
        assert!(serde_json::from_str::<BatchConfig>(r#"{"concurrency": 0}"#).is_err());
    }

    #[test]
    fn bad_settings_are_named() {
        let rate = BatchConfig {
            rate_limit: Some(f64::NAN),
            ..BatchConfig::default()
        };
        assert!(matches!(rate.validate(), Err(BuildError::RateLimit(_))));

        let ratio = BatchConfig {
            policy: ErrorPolicy::StopAboveRatio {
                max: 1.5,
                min_items: 0,
            },
            ..BatchConfig::default()
        };
        assert_eq!(ratio.validate(), Err(BuildError::FailureRatio(1.5)));

        let timeout = BatchConfig {
            item_timeout: Some(Duration::ZERO),
            ..BatchConfig::default()
        };
        assert_eq!(timeout.validate(), Err(BuildError::ZeroTimeout));
    }
}
