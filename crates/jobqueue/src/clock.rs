//! Time as the store sees it.
//!
//! Every decision about what is due (a scheduled job, a retry, an expired
//! lease) is taken by the store against one clock, never by a worker's own
//! idea of the time. A store that lives in a database uses the database's
//! clock; the in-memory and SQLite stores take a [`Clock`] so that tests can
//! drive them with paused tokio time ([`TokioClock`]) or by hand
//! ([`ManualClock`]).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A point in time: milliseconds since the Unix epoch (UTC).
///
/// Milliseconds are what SQL columns store cheaply and what queue decisions
/// need; arithmetic on a timestamp saturates instead of overflowing.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The timestamp `millis` milliseconds after the Unix epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This timestamp moved `d` later, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_millis(d)))
    }

    /// How long after `earlier` this timestamp is; zero if it is not later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        let millis = self.0.saturating_sub(earlier.0).max(0);
        Duration::from_millis(millis.unsigned_abs())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// A duration in whole milliseconds, saturating at `i64::MAX`.
pub(crate) fn duration_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The source of "now" for a store.
///
/// Implementations must be cheap to call and monotonic enough that a lease
/// taken now does not appear expired a moment later.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

/// The operating system's wall clock: the default for production stores.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(system_millis())
    }
}

fn system_millis() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    duration_millis(since_epoch)
}

/// A clock that follows `tokio::time`, so it stands still and jumps along
/// with paused tokio time in tests.
///
/// It starts at the wall-clock time of its creation and then advances by
/// exactly as much as `tokio::time::Instant` does.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    origin: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading the wall-clock time now and following tokio time
    /// from here on.
    pub fn new() -> Self {
        Self {
            origin: system_millis(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.start);
        Timestamp(self.origin.saturating_add(duration_millis(elapsed)))
    }
}

/// A clock that only moves when told to: for unit tests of a store that
/// need exact control over what is due.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self {
            now: Arc::new(AtomicI64::new(start.0)),
        }
    }

    /// Moves the clock (and every clone of it) forward by `d`.
    pub fn advance(&self, d: Duration) {
        let step = duration_millis(d);
        let _ = self
            .now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(step))
            });
    }

    /// Sets the clock (and every clone of it) to `t`.
    pub fn set(&self, t: Timestamp) {
        self.now.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_arithmetic_saturates() {
        let t = Timestamp::from_millis(i64::MAX - 5);
        assert_eq!(
            t.saturating_add(Duration::from_secs(10)),
            Timestamp::from_millis(i64::MAX)
        );
        assert_eq!(
            Timestamp::from_millis(5).saturating_duration_since(t),
            Duration::ZERO
        );
        assert_eq!(
            Timestamp::from_millis(1500).saturating_duration_since(Timestamp::from_millis(500)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(Timestamp::from_millis(1000));
        let other = clock.clone();
        other.advance(Duration::from_millis(250));
        assert_eq!(clock.now(), Timestamp::from_millis(1250));
        clock.set(Timestamp::from_millis(7));
        assert_eq!(other.now(), Timestamp::from_millis(7));
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = TokioClock::new();
        let before = clock.now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            clock.now().saturating_duration_since(before),
            Duration::from_secs(3)
        );
    }
}
