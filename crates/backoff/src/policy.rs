//! The backoff policy: a plain value describing delays, jitter and stop conditions.

use std::time::Duration;

use rand::Rng;

use crate::delay;
use crate::schedule::Schedule;

/// A retry policy as a plain value: how long to wait before each retry and when to stop.
///
/// `Backoff` holds settings only; it does no I/O and keeps no state, so it can be
/// cloned into every task, compared, logged, and (with the default `serde` feature)
/// read from a configuration file. Turn it into delays with [`Backoff::schedule`] (an
/// iterator) or [`Backoff::delay_for`] (stateless, for stores that only remember an
/// attempt count), or hand it to [`retry`](crate::retry()) to run an operation.
///
/// The un-jittered delay before retry `n` (counting from 0) is
/// `min(max_delay, initial * factor^n)`; [`Jitter`] then spreads it. Every setter
/// consumes and returns the policy so that a policy reads as one expression:
///
/// ```
/// use std::time::Duration;
///
/// use steadfast_backoff::{Backoff, Jitter};
///
/// let policy = Backoff::exponential(Duration::from_millis(100))
///     .factor(2.0)
///     .max_delay(Duration::from_secs(10))
///     .jitter(Jitter::Equal)
///     .max_attempts(6);
/// assert!(policy.validate().is_ok());
/// assert_eq!(policy.schedule().count(), 5);
/// ```
///
/// Fields are public for inspection and configuration files; [`Backoff::validate`]
/// names the rule a bad combination breaks, and [`retry`](crate::retry()) checks it
/// before the first call.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
#[non_exhaustive]
pub struct Backoff {
    /// The un-jittered delay before the first retry.
    pub initial: Duration,
    /// What each delay is multiplied by for the next retry (1.0 keeps it constant).
    pub factor: f64,
    /// The ceiling on every delay (after jitter under [`CapMode::Hard`]).
    pub max_delay: Duration,
    /// The floor under jittered delays; `None` means `initial`, so no retry is immediate.
    pub min_delay: Option<Duration>,
    /// How delays are randomised so that clients that failed together do not retry together.
    pub jitter: Jitter,
    /// Whether jitter may go above `max_delay` ([`CapMode::Soft`]) or not ([`CapMode::Hard`]).
    pub cap: CapMode,
    /// Total calls, the first one included; `None` retries until another condition stops it.
    pub max_attempts: Option<u32>,
    /// Time budget from the first call, the operation's own time included; a retry
    /// whose wait would end after it is not made.
    pub max_elapsed: Option<Duration>,
    /// The longest server hint (`Retry-After`) that is honoured; a longer one ends
    /// the loop at once with an error stating what the server asked for.
    pub max_retry_after: Duration,
}

/// How a delay is randomised.
///
/// Without jitter, clients that failed together retry together, and the retry
/// storms repeat at every step of the schedule. All modes respect the floor
/// ([`Backoff::min_delay`]) and, under the default hard cap, `max_delay`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Jitter {
    /// The exact schedule; only sensible for a single client.
    None,
    /// Uniform between the floor and the un-jittered delay. The default: it spreads
    /// retries the most and does the least total work under contention.
    #[default]
    Full,
    /// Uniform between half the un-jittered delay and all of it: a guaranteed minimum
    /// wait with some spread.
    Equal,
    /// Uniform between the floor and three times the previous delay (capped), so each
    /// delay depends on the last one drawn rather than on the attempt number.
    Decorrelated,
    /// Uniform within `±spread` of the un-jittered delay (0.2 means ±20 %), as in
    /// gRPC's connection backoff. The spread must lie in `[0, 1]`.
    Proportional(f64),
}

/// Whether the cap holds before or after jitter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum CapMode {
    /// No delay ever exceeds `max_delay`; jitter at the cap spreads downwards, so
    /// delays at the cap still differ. The default.
    #[default]
    Hard,
    /// The un-jittered delay is capped, then jitter applies: proportional jitter may
    /// reach `max_delay * (1 + spread)`. Other modes never exceed their base anyway.
    Soft,
}

/// A policy or budget setting that breaks a rule; the message names the rule.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The growth factor was NaN, infinite or below 1.
    #[error("factor must be a finite number of at least 1.0, got {factor}")]
    Factor {
        /// The rejected factor.
        factor: f64,
    },
    /// `max_delay` was below `initial`.
    #[error("max_delay ({max_delay:?}) must be at least the initial delay ({initial:?})")]
    MaxDelayBelowInitial {
        /// The initial delay.
        initial: Duration,
        /// The rejected ceiling.
        max_delay: Duration,
    },
    /// `min_delay` was above `initial`.
    #[error("min_delay ({min_delay:?}) must not exceed the initial delay ({initial:?})")]
    MinDelayAboveInitial {
        /// The initial delay.
        initial: Duration,
        /// The rejected floor.
        min_delay: Duration,
    },
    /// `max_attempts` was zero.
    #[error("max_attempts counts the first call and must be at least 1")]
    ZeroAttempts,
    /// A proportional jitter spread outside `[0, 1]`.
    #[error("proportional jitter spread must lie in [0, 1], got {spread}")]
    Spread {
        /// The rejected spread.
        spread: f64,
    },
    /// A retry budget ratio outside `[0, 1000]` or not finite.
    #[error("retry budget ratio must be a finite number in [0, 1000], got {ratio}")]
    BudgetRatio {
        /// The rejected ratio.
        ratio: f64,
    },
    /// A retry budget window outside 1 s ..= 60 s.
    #[error("retry budget window must lie between 1 s and 60 s, got {window:?}")]
    BudgetWindow {
        /// The rejected window.
        window: Duration,
    },
}

impl Backoff {
    /// The default growth factor of [`Backoff::exponential`].
    pub const DEFAULT_FACTOR: f64 = 2.0;
    /// The default ceiling of [`Backoff::exponential`].
    pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(30);
    /// The default attempt limit (total calls) of [`Backoff::exponential`] and
    /// [`Backoff::constant`].
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
    /// The default ceiling on honoured `Retry-After` hints.
    pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

    /// gRPC connection backoff: initial delay (1 s).
    pub const GRPC_INITIAL: Duration = Duration::from_secs(1);
    /// gRPC connection backoff: multiplier (1.6).
    pub const GRPC_FACTOR: f64 = 1.6;
    /// gRPC connection backoff: ceiling (120 s).
    pub const GRPC_MAX_DELAY: Duration = Duration::from_secs(120);
    /// gRPC connection backoff: proportional jitter spread (0.2, i.e. ±20 %).
    pub const GRPC_JITTER: f64 = 0.2;

    /// AWS SDK standard retry mode: base delay (1 s).
    pub const AWS_INITIAL: Duration = Duration::from_secs(1);
    /// AWS SDK standard retry mode: ceiling (20 s).
    pub const AWS_MAX_DELAY: Duration = Duration::from_secs(20);
    /// AWS SDK standard retry mode: total calls (3).
    pub const AWS_MAX_ATTEMPTS: u32 = 3;

    /// An exponential policy: `initial`, doubled each retry up to 30 s (or up to
    /// `initial`, if that is longer), full jitter with `initial` as the floor, at most 5
    /// calls in all, `Retry-After` hints honoured up to 60 s.
    pub fn exponential(initial: Duration) -> Self {
        Self {
            initial,
            factor: Self::DEFAULT_FACTOR,
            max_delay: Self::DEFAULT_MAX_DELAY.max(initial),
            min_delay: None,
            jitter: Jitter::Full,
            cap: CapMode::Hard,
            max_attempts: Some(Self::DEFAULT_MAX_ATTEMPTS),
            max_elapsed: None,
            max_retry_after: Self::DEFAULT_MAX_RETRY_AFTER,
        }
    }

    /// A constant policy: `delay` before every retry, no jitter (add it with
    /// [`Backoff::jitter`] and a lower [`Backoff::min_delay`]), at most 5 calls.
    pub fn constant(delay: Duration) -> Self {
        Self {
            factor: 1.0,
            max_delay: delay,
            jitter: Jitter::None,
            ..Self::exponential(delay)
        }
    }

    /// The gRPC connection-backoff values: 1 s, ×1.6, 120 s cap, ±20 % jitter, and no
    /// attempt limit (a connection is retried until cancelled).
    pub fn grpc() -> Self {
        Self {
            factor: Self::GRPC_FACTOR,
            max_delay: Self::GRPC_MAX_DELAY,
            jitter: Jitter::Proportional(Self::GRPC_JITTER),
            max_attempts: None,
            ..Self::exponential(Self::GRPC_INITIAL)
        }
    }

    /// The AWS SDKs' standard retry mode: full jitter over 1 s × 2ⁿ, capped at 20 s,
    /// 3 calls in all, with a floor of zero as in the SDKs. Pair it with
    /// [`TokenBucket::aws_standard`](crate::TokenBucket::aws_standard).
    pub fn aws_standard() -> Self {
        Self {
            max_delay: Self::AWS_MAX_DELAY,
            min_delay: Some(Duration::ZERO),
            max_attempts: Some(Self::AWS_MAX_ATTEMPTS),
            ..Self::exponential(Self::AWS_INITIAL)
        }
    }

    /// Sets the growth factor (at least 1.0; 2.0 by default).
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// Sets the ceiling on every delay (30 s by default).
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// Sets the floor under jittered delays (the initial delay by default, which
    /// makes the first retry's full-jitter window empty; lower it to spread the first
    /// retry too).
    pub fn min_delay(mut self, min_delay: Duration) -> Self {
        self.min_delay = Some(min_delay);
        self
    }

    /// Sets the jitter mode ([`Jitter::Full`] by default for exponential policies).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets whether the cap holds after jitter ([`CapMode::Hard`], the default).
    pub fn cap_mode(mut self, cap: CapMode) -> Self {
        self.cap = cap;
        self
    }

    /// Sets the total number of calls, the first one included (5 by default).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }

    /// Removes the attempt limit: retry until a permanent error, the elapsed-time
    /// limit, a deadline, the budget or cancellation stops it.
    pub fn unlimited_attempts(mut self) -> Self {
        self.max_attempts = None;
        self
    }

    /// Sets the time budget from the first call, counting the operation's own time.
    pub fn max_elapsed(mut self, max_elapsed: Duration) -> Self {
        self.max_elapsed = Some(max_elapsed);
        self
    }

    /// Sets the longest `Retry-After` hint that is honoured (60 s by default).
    pub fn max_retry_after(mut self, max_retry_after: Duration) -> Self {
        self.max_retry_after = max_retry_after;
        self
    }

    /// Checks the settings against the rules every schedule relies on.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the first rule broken: a factor below 1 or not finite,
    /// a ceiling below the initial delay, a floor above it, zero attempts, or a
    /// proportional spread outside `[0, 1]`.
    pub fn validate(&self) -> Result<(), BuildError> {
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(BuildError::Factor {
                factor: self.factor,
            });
        }
        if self.max_delay < self.initial {
            return Err(BuildError::MaxDelayBelowInitial {
                initial: self.initial,
                max_delay: self.max_delay,
            });
        }
        if let Some(min_delay) = self.min_delay
            && min_delay > self.initial
        {
            return Err(BuildError::MinDelayAboveInitial {
                initial: self.initial,
                min_delay,
            });
        }
        if self.max_attempts == Some(0) {
            return Err(BuildError::ZeroAttempts);
        }
        if let Jitter::Proportional(spread) = self.jitter
            && !(0.0..=1.0).contains(&spread)
        {
            return Err(BuildError::Spread { spread });
        }
        Ok(())
    }

    /// The delays before retry 1, 2, … as an iterator, with a freshly seeded RNG.
    ///
    /// The iterator ends once `max_attempts` calls would have been made. Use
    /// [`Schedule::with_seed`] for a reproducible sequence.
    pub fn schedule(&self) -> Schedule {
        Schedule::new(self.clone())
    }

    /// The delay before retry `retry + 1` (`retry` counts from 0), without state.
    ///
    /// For stores that remember only how many times a job failed. Decorrelated jitter
    /// needs the previous delay; here it uses the un-jittered delay of the previous
    /// retry in its place. Saturates: any `retry`, however large, gives a delay within
    /// the policy's bounds.
    pub fn delay_for(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let previous = match retry.checked_sub(1) {
            Some(earlier) => delay::base_nanos(self, earlier),
            None => self.initial.as_nanos(),
        };
        delay::to_duration(delay::jittered_nanos(self, retry, previous, rng))
    }

    /// The un-jittered delay before retry `retry + 1`: `min(max_delay, initial * factor^retry)`.
    pub fn base_delay(&self, retry: u32) -> Duration {
        delay::to_duration(delay::base_nanos(self, retry))
    }
}

impl Default for Backoff {
    /// `Backoff::exponential(100 ms)`: doubling from 100 ms to 30 s, full jitter, 5 calls.
    fn default() -> Self {
        Self::exponential(Duration::from_millis(100))
    }
}
