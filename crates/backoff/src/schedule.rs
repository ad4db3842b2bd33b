//! A policy's delays as a plain, seedable iterator.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::delay;
use crate::policy::Backoff;

/// The delays before retry 1, 2, … of a [`Backoff`], as an `Iterator<Item = Duration>`.
///
/// Made by [`Backoff::schedule`]. The iterator ends when `max_attempts` calls would
/// have been made (so a policy of 5 attempts yields 4 delays), and never ends without
/// an attempt limit. It knows nothing of time: elapsed-time limits and deadlines are
/// enforced by [`retry`](crate::retry()), which owns a clock.
///
/// ```
/// use std::time::Duration;
///
/// use steadfast_backoff::Backoff;
///
/// let policy = Backoff::exponential(Duration::from_millis(100)).max_attempts(4);
/// let first: Vec<Duration> = policy.schedule().with_seed(7).collect();
/// let again: Vec<Duration> = policy.schedule().with_seed(7).collect();
/// assert_eq!(first.len(), 3);
/// assert_eq!(first, again);
/// ```
#[derive(Clone, Debug)]
pub struct Schedule<R = SmallRng> {
    policy: Backoff,
    rng: R,
    retry: u32,
    previous: u128,
    remaining: Option<u32>,
}

impl Schedule {
    pub(crate) fn new(policy: Backoff) -> Self {
        let remaining = policy
            .max_attempts
            .map(|attempts| attempts.saturating_sub(1));
        let previous = policy.initial.as_nanos();
        Self {
            policy,
            rng: SmallRng::seed_from_u64(entropy()),
            retry: 0,
            previous,
            remaining,
        }
    }
}

impl<R> Schedule<R> {
    /// Reseeds the schedule so that the same seed always gives the same delays.
    pub fn with_seed(self, seed: u64) -> Schedule<SmallRng> {
        self.with_rng(SmallRng::seed_from_u64(seed))
    }

    /// Swaps the random number generator the jitter draws from.
    pub fn with_rng<R2: Rng>(self, rng: R2) -> Schedule<R2> {
        Schedule {
            policy: self.policy,
            rng,
            retry: self.retry,
            previous: self.previous,
            remaining: self.remaining,
        }
    }

    /// The policy this schedule follows.
    pub fn policy(&self) -> &Backoff {
        &self.policy
    }

    /// How many delays have been drawn so far.
    pub fn retries(&self) -> u32 {
        self.retry
    }
}

impl<R: Rng> Iterator for Schedule<R> {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if let Some(remaining) = self.remaining.as_mut() {
            *remaining = remaining.checked_sub(1)?;
        }

        let nanos = delay::jittered_nanos(&self.policy, self.retry, self.previous, &mut self.rng);
        self.previous = nanos;
        self.retry = self.retry.saturating_add(1);
        Some(delay::to_duration(nanos))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self.remaining {
            Some(remaining) => {
                let remaining = usize::try_from(remaining).unwrap_or(usize::MAX);
                (remaining, Some(remaining))
            }
            None => (usize::MAX, None),
        }
    }
}

/// A seed that differs between calls and between processes, without an OS RNG.
///
/// `RandomState` carries per-process random keys; hashing a counter with them gives
/// well-spread seeds. Jitter needs spread, not secrecy.
pub(crate) fn entropy() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_after_max_attempts_minus_one_delays() {
        let policy = Backoff::exponential(Duration::from_millis(10)).max_attempts(3);
        assert_eq!(policy.schedule().count(), 2);
        assert_eq!(policy.clone().max_attempts(1).schedule().count(), 0);
    }

    #[test]
    fn without_attempt_limit_it_keeps_going_at_the_cap() {
        let policy = Backoff::exponential(Duration::from_millis(10))
            .unlimited_attempts()
            .jitter(crate::Jitter::None)
            .max_delay(Duration::from_secs(1));
        let last = policy.schedule().nth(100_000);
        assert_eq!(last, Some(Duration::from_secs(1)));
    }

    #[test]
    fn unseeded_schedules_differ() {
        let policy = Backoff::exponential(Duration::from_millis(10)).max_attempts(20);
        let first: Vec<Duration> = policy.schedule().collect();
        let second: Vec<Duration> = policy.schedule().collect();
        assert_ne!(first, second);
    }
}
