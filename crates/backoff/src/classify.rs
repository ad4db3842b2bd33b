//! Error classification: which failures are worth another call.

use std::io;
use std::time::Duration;

/// What a failure means for the retry loop.
///
/// Retrying a failure that will recur (a `400 Bad Request`, a missing file) only adds
/// load and latency; not retrying a passing one (a reset connection, a `503`) gives up
/// too early. Errors say which is which through [`Classify`], or a caller decides per
/// call with [`Retry::classify_with`](crate::Retry::classify_with).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Likely to pass: retry after the schedule's delay.
    Transient,
    /// Will recur: give up at once and return the error.
    Permanent,
    /// Transient, and the server said how long to wait (`Retry-After`). The wait is
    /// the longer of this and the schedule's own delay, within the policy's
    /// [`max_retry_after`](crate::Backoff::max_retry_after) and deadline; a longer hint
    /// ends the loop at once with [`GiveUpReason::RetryAfterTooLong`](crate::GiveUpReason::RetryAfterTooLong).
    RetryAfter(Duration),
    /// The operation may have taken effect although it failed: typically a timeout
    /// after the request was sent. Retried only when the operation is declared
    /// idempotent with [`Retry::idempotent`](crate::Retry::idempotent); otherwise the
    /// loop ends with [`GiveUpReason::Ambiguous`](crate::GiveUpReason::Ambiguous), so a
    /// payment or an append is never made twice by accident.
    Ambiguous,
}

/// Errors that know whether they are worth retrying.
///
/// Implement it for your error type so that [`retry`](crate::retry()) classifies
/// without a closure. Other steadfast crates implement it for their errors.
pub trait Classify {
    /// How the retry loop should treat this error.
    fn classify(&self) -> ErrorClass;

    /// Whether this error is a timeout. Token buckets charge more for retrying
    /// timeouts ([`TokenBucket::timeout_retry_cost`](crate::TokenBucket::timeout_retry_cost)).
    fn is_timeout(&self) -> bool {
        false
    }
}

/// How a [`Retry`](crate::Retry) classifies errors: by the [`Classify`] trait
/// ([`ByTrait`], the default) or by a closure `FnMut(&E) -> ErrorClass`.
///
/// This trait exists so that both work without specialization; you rarely name it.
pub trait Classifier<E> {
    /// Classifies one error.
    fn classify(&mut self, error: &E) -> ErrorClass;

    /// Whether the error is a timeout (for budget costs). `false` unless known; an
    /// [`ErrorClass::Ambiguous`] failure counts as a timeout either way.
    fn is_timeout(&mut self, error: &E) -> bool {
        let _ = error;
        false
    }
}

/// The default classifier: asks the error itself through [`Classify`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ByTrait;

impl<E: Classify> Classifier<E> for ByTrait {
    fn classify(&mut self, error: &E) -> ErrorClass {
        error.classify()
    }

    fn is_timeout(&mut self, error: &E) -> bool {
        error.is_timeout()
    }
}

impl<E, F> Classifier<E> for F
where
    F: FnMut(&E) -> ErrorClass,
{
    fn classify(&mut self, error: &E) -> ErrorClass {
        self(error)
    }
}

impl ErrorClass {
    /// Classifies an HTTP response status.
    ///
    /// | status | class | why |
    /// | --- | --- | --- |
    /// | 408, 425, 429 | transient | timed out, too early, rate limited: the same request can pass later |
    /// | 500, 502, 503, 504 and other 5xx | transient | the server or a gateway failed |
    /// | 501, 505, 506, 508, 510, 511 | permanent | the server cannot ever serve this request |
    /// | 400, 401, 403, 404, 409, 422 and other 4xx | permanent | the request itself is wrong; retrying gets the client rate-limited |
    /// | 1xx, 2xx, 3xx, anything else | permanent | not a failure a retry could fix |
    pub fn from_http_status(status: u16) -> Self {
        match status {
            408 | 425 | 429 => Self::Transient,
            501 | 505 | 506 | 508 | 510 | 511 => Self::Permanent,
            500..=599 => Self::Transient,
            _ => Self::Permanent,
        }
    }

    /// Attaches a server hint to a transient class: `Transient` with `Some(delay)`
    /// becomes `RetryAfter(delay)`. Other classes, and `None` (no hint, or an
    /// unreadable one), are left as they are, so an unreadable hint falls back to
    /// the schedule's own delay.
    pub fn with_hint(self, hint: Option<Duration>) -> Self {
        match (self, hint) {
            (Self::Transient, Some(delay)) => Self::RetryAfter(delay),
            (class, _) => class,
        }
    }

    /// Whether the loop may retry this class (anything but `Permanent`; `Ambiguous`
    /// still depends on idempotency).
    pub fn is_retryable(self) -> bool {
        self != Self::Permanent
    }
}

impl Classify for io::Error {
    /// Connection-level and timing failures are transient (reset, refused, aborted,
    /// not connected, broken pipe, timed out, interrupted, would block, unexpected
    /// end of file, host or network unreachable, network down); everything else
    /// (not found, permission denied, invalid input or data, …) is permanent.
    fn classify(&self) -> ErrorClass {
        use io::ErrorKind as Kind;

        match self.kind() {
            Kind::ConnectionRefused
            | Kind::ConnectionReset
            | Kind::ConnectionAborted
            | Kind::NotConnected
            | Kind::BrokenPipe
            | Kind::TimedOut
            | Kind::Interrupted
            | Kind::WouldBlock
            | Kind::UnexpectedEof
            | Kind::HostUnreachable
            | Kind::NetworkUnreachable
            | Kind::NetworkDown
            | Kind::ResourceBusy => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }

    fn is_timeout(&self) -> bool {
        self.kind() == io::ErrorKind::TimedOut
    }
}

impl Classify for tokio::time::error::Elapsed {
    /// A `tokio::time::timeout` that fired: transient, and a timeout. When the
    /// timed-out call may already have taken effect and is not idempotent, map it to
    /// [`ErrorClass::Ambiguous`] in your own classifier instead.
    fn classify(&self) -> ErrorClass {
        ErrorClass::Transient
    }

    fn is_timeout(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        for status in [400, 401, 403, 404, 409, 422, 501, 200, 304] {
            assert_eq!(
                ErrorClass::from_http_status(status),
                ErrorClass::Permanent,
                "{status}"
            );
        }
        for status in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert_eq!(
                ErrorClass::from_http_status(status),
                ErrorClass::Transient,
                "{status}"
            );
        }
    }

    #[test]
    fn hints_attach_to_transient_classes_only() {
        let delay = Duration::from_secs(2);
        let hint = Some(delay);
        assert_eq!(
            ErrorClass::Transient.with_hint(hint),
            ErrorClass::RetryAfter(delay)
        );
        assert_eq!(ErrorClass::Permanent.with_hint(hint), ErrorClass::Permanent);
        assert_eq!(ErrorClass::Transient.with_hint(None), ErrorClass::Transient);
    }

    #[test]
    fn io_errors() {
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let missing = io::Error::from(io::ErrorKind::NotFound);
        let timeout = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(reset.classify(), ErrorClass::Transient);
        assert_eq!(missing.classify(), ErrorClass::Permanent);
        assert!(timeout.is_timeout());
        assert!(!reset.is_timeout());
    }
}
