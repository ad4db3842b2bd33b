//! The error returned when a retry loop gives up.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use crate::policy::BuildError;

/// Why a retry loop stopped without a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// The last error was classified permanent.
    Permanent,
    /// The attempt limit was reached.
    Exhausted,
    /// The elapsed-time limit or the deadline would have been passed by another wait,
    /// or the deadline fell during an attempt.
    Deadline,
    /// The retry budget had nothing left to spend; the loop did not sleep.
    Budget,
    /// The cancellation token fired.
    Cancelled,
    /// The server asked for a longer wait than the policy allows (its ceiling or the
    /// time left before the deadline); the loop did not sleep.
    RetryAfterTooLong {
        /// What the server asked for.
        requested: Duration,
        /// The longest wait the policy allowed at that point.
        allowed: Duration,
    },
    /// The last error may have taken effect and the operation is not idempotent.
    Ambiguous,
    /// The policy broke one of its rules; no call was made.
    InvalidPolicy,
}

/// A retry loop gave up: the last error, how many calls were made, how long it took,
/// and why it stopped.
///
/// `Display` says why it stopped and after how many attempts; the last error is the
/// [`source`](Error::source), so it is not repeated.
pub struct RetryError<E> {
    pub(crate) reason: GiveUpReason,
    pub(crate) last_error: Option<E>,
    pub(crate) attempts: u32,
    pub(crate) elapsed: Duration,
    pub(crate) invalid_policy: Option<BuildError>,
}

impl<E> RetryError<E> {
    /// Why the loop stopped.
    pub fn reason(&self) -> GiveUpReason {
        self.reason
    }

    /// The error of the last attempt; `None` when no call failed (the policy was
    /// invalid, or cancellation or the deadline came before the first result).
    pub fn last_error(&self) -> Option<&E> {
        self.last_error.as_ref()
    }

    /// Takes the error of the last attempt.
    pub fn into_last_error(self) -> Option<E> {
        self.last_error
    }

    /// How many calls were made (started), the first one included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Time from the start of the loop to giving up, under `tokio::time`.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The rule the policy broke, when the reason is [`GiveUpReason::InvalidPolicy`].
    pub fn invalid_policy(&self) -> Option<&BuildError> {
        self.invalid_policy.as_ref()
    }

    /// What the server asked for, when its hint was too long.
    pub fn requested_delay(&self) -> Option<Duration> {
        match self.reason {
            GiveUpReason::RetryAfterTooLong { requested, .. } => Some(requested),
            _ => None,
        }
    }

    /// Whether the last error was permanent.
    pub fn is_permanent(&self) -> bool {
        self.reason == GiveUpReason::Permanent
    }

    /// Whether the attempt limit was reached.
    pub fn is_exhausted(&self) -> bool {
        self.reason == GiveUpReason::Exhausted
    }

    /// Whether the elapsed-time limit or the deadline stopped the loop.
    pub fn is_deadline(&self) -> bool {
        self.reason == GiveUpReason::Deadline
    }

    /// Whether the retry budget was empty.
    pub fn is_budget(&self) -> bool {
        self.reason == GiveUpReason::Budget
    }

    /// Whether the loop was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.reason == GiveUpReason::Cancelled
    }

    /// Whether a server hint asked for more than the policy allows.
    pub fn is_retry_after_too_long(&self) -> bool {
        matches!(self.reason, GiveUpReason::RetryAfterTooLong { .. })
    }

    /// Whether an ambiguous failure of a non-idempotent operation stopped the loop.
    pub fn is_ambiguous(&self) -> bool {
        self.reason == GiveUpReason::Ambiguous
    }

    /// Whether the policy was invalid.
    pub fn is_invalid_policy(&self) -> bool {
        self.reason == GiveUpReason::InvalidPolicy
    }

    /// Maps the carried error, keeping everything else.
    pub fn map_err<F, E2>(self, map: F) -> RetryError<E2>
    where
        F: FnOnce(E) -> E2,
    {
        RetryError {
            reason: self.reason,
            last_error: self.last_error.map(map),
            attempts: self.attempts,
            elapsed: self.elapsed,
            invalid_policy: self.invalid_policy,
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryError")
            .field("reason", &self.reason)
            .field("attempts", &self.attempts)
            .field("elapsed", &self.elapsed)
            .field("last_error", &self.last_error)
            .field("invalid_policy", &self.invalid_policy)
            .finish()
    }
}

impl<E> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let attempts = self.attempts;
        let plural = if attempts == 1 { "" } else { "s" };
        match self.reason {
            GiveUpReason::Permanent => {
                write!(
                    f,
                    "gave up after {attempts} attempt{plural}: permanent error"
                )
            }
            GiveUpReason::Exhausted => write!(f, "gave up after {attempts} attempt{plural}"),
            GiveUpReason::Deadline => write!(
                f,
                "gave up after {attempts} attempt{plural}: deadline reached in {:?}",
                self.elapsed
            ),
            GiveUpReason::Budget => write!(
                f,
                "gave up after {attempts} attempt{plural}: retry budget exhausted"
            ),
            GiveUpReason::Cancelled => {
                write!(f, "cancelled after {attempts} attempt{plural}")
            }
            GiveUpReason::RetryAfterTooLong { requested, allowed } => write!(
                f,
                "gave up after {attempts} attempt{plural}: the server asked to retry after \
                 {}, more than the {} allowed",
                seconds(requested),
                seconds(allowed)
            ),
            GiveUpReason::Ambiguous => write!(
                f,
                "gave up after {attempts} attempt{plural}: the operation is not idempotent \
                 and may have taken effect"
            ),
            GiveUpReason::InvalidPolicy => f.write_str("invalid retry policy"),
        }
    }
}

impl<E: Error + 'static> Error for RetryError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        if let Some(error) = &self.last_error {
            return Some(error);
        }
        self.invalid_policy
            .as_ref()
            .map(|error| error as &(dyn Error + 'static))
    }
}

/// `3600 s`, `1.5 s`: durations as a person reads them in a message.
fn seconds(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{:.3} s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_states_the_requested_hint() {
        let error: RetryError<std::io::Error> = RetryError {
            reason: GiveUpReason::RetryAfterTooLong {
                requested: Duration::from_secs(3600),
                allowed: Duration::from_secs(30),
            },
            last_error: None,
            attempts: 1,
            elapsed: Duration::ZERO,
            invalid_policy: None,
        };
        assert_eq!(
            error.to_string(),
            "gave up after 1 attempt: the server asked to retry after 3600 s, more than the \
             30 s allowed"
        );
    }
}
