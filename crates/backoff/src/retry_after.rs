//! `Retry-After` (RFC 9110 §10.2.3): a server saying how long to wait.
//!
//! The header holds either a number of seconds (`120`) or an HTTP date
//! (`Wed, 21 Oct 2015 07:28:00 GMT`). Dates are measured against a [`WallClock`],
//! which tests replace to pin "now". Turn a parsed hint into a class with
//! [`ErrorClass::with_hint`](crate::ErrorClass::with_hint); an unreadable hint then
//! leaves the class transient, so the schedule's own delay applies (never zero).
//!
//! ```
//! use std::time::{Duration, SystemTime};
//!
//! use steadfast_backoff::{ErrorClass, retry_after};
//!
//! let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_477);
//! let clock = retry_after::FixedClock(now);
//! assert_eq!(retry_after::parse("2", &clock), Ok(Duration::from_secs(2)));
//! assert_eq!(
//!     retry_after::parse("Wed, 21 Oct 2015 07:28:00 GMT", &clock),
//!     Ok(Duration::from_secs(3)),
//! );
//!
//! let hint = retry_after::parse("soon", &clock).ok();
//! assert_eq!(ErrorClass::from_http_status(503).with_hint(hint), ErrorClass::Transient);
//! ```

use std::time::{Duration, SystemTime};

/// A source of wall-clock time for HTTP dates.
pub trait WallClock {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// A wall clock stopped at a given time, for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedClock(pub SystemTime);

/// A `Retry-After` value that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetryAfterError {
    /// The value is neither a number of seconds nor an HTTP date.
    #[error("Retry-After value {value:?} is neither delay-seconds nor an HTTP date")]
    Unreadable {
        /// The value as received (trimmed).
        value: String,
    },
}

impl WallClock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

impl WallClock for FixedClock {
    fn now(&self) -> SystemTime {
        self.0
    }
}

impl<C: WallClock + ?Sized> WallClock for &C {
    fn now(&self) -> SystemTime {
        (**self).now()
    }
}

/// Reads a `Retry-After` value as a delay from `clock`'s now.
///
/// Seconds may be arbitrarily large (they saturate at `u64::MAX` seconds); a date in the
/// past gives zero (retry now, as far as the server is concerned; the loop still
/// waits its own delay).
///
/// # Errors
///
/// [`RetryAfterError::Unreadable`] when the value is neither form, including
/// negative or fractional seconds.
pub fn parse(value: &str, clock: &impl WallClock) -> Result<Duration, RetryAfterError> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Ok(Duration::from_secs(seconds));
    }

    match httpdate::parse_http_date(value) {
        Ok(date) => Ok(date.duration_since(clock.now()).unwrap_or(Duration::ZERO)),
        Err(_) => Err(RetryAfterError::Unreadable {
            value: value.to_owned(),
        }),
    }
}

/// Reads a `Retry-After` value against the system clock.
///
/// # Errors
///
/// As [`parse`].
pub fn parse_now(value: &str) -> Result<Duration, RetryAfterError> {
    parse(value, &SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> FixedClock {
        FixedClock(SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480))
    }

    #[test]
    fn seconds() {
        assert_eq!(parse(" 120 ", &clock()), Ok(Duration::from_secs(120)));
        assert_eq!(parse("0", &clock()), Ok(Duration::ZERO));
        assert_eq!(
            parse("99999999999999999999999", &clock()),
            Ok(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn dates_in_the_future_and_past() {
        assert_eq!(
            parse("Wed, 21 Oct 2015 07:28:10 GMT", &clock()),
            Ok(Duration::from_secs(10))
        );
        assert_eq!(
            parse("Wed, 21 Oct 2015 07:27:00 GMT", &clock()),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn unreadable_values() {
        for value in ["soon", "", "-1", "1.5", "Wed, 99 Oct 2015 07:28:00 GMT"] {
            assert!(
                matches!(
                    parse(value, &clock()),
                    Err(RetryAfterError::Unreadable { .. })
                ),
                "{value:?}"
            );
        }
    }
}
