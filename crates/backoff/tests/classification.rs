//! BO-02: client errors are returned at once; transient ones are retried.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use steadfast_backoff::{Backoff, Classify, ErrorClass, GiveUpReason, Jitter, retry};
use tokio::time::Instant;

/// A failed HTTP call: a status, or a timeout after the request went out.
#[derive(Debug, PartialEq)]
enum CallError {
    Status(u16),
    TimedOutAfterSend,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(status) => write!(f, "server answered {status}"),
            Self::TimedOutAfterSend => f.write_str("timed out after the request was sent"),
        }
    }
}

impl std::error::Error for CallError {}

impl Classify for CallError {
    fn classify(&self) -> ErrorClass {
        match self {
            Self::Status(status) => ErrorClass::from_http_status(*status),
            Self::TimedOutAfterSend => ErrorClass::Ambiguous,
        }
    }

    fn is_timeout(&self) -> bool {
        matches!(self, Self::TimedOutAfterSend)
    }
}

/// Replays a script of outcomes, one per call, and counts the calls.
struct Script {
    outcomes: RefCell<VecDeque<Result<u16, CallError>>>,
    calls: RefCell<u32>,
}

impl Script {
    fn new(outcomes: impl IntoIterator<Item = Result<u16, CallError>>) -> Self {
        Self {
            outcomes: RefCell::new(outcomes.into_iter().collect()),
            calls: RefCell::new(0),
        }
    }

    fn statuses(statuses: &[u16]) -> Self {
        Self::new(statuses.iter().map(|status| match status {
            200..=299 => Ok(*status),
            _ => Err(CallError::Status(*status)),
        }))
    }

    async fn call(&self) -> Result<u16, CallError> {
        *self.calls.borrow_mut() += 1;
        self.outcomes
            .borrow_mut()
            .pop_front()
            .expect("the script has an outcome for every call")
    }

    fn calls(&self) -> u32 {
        *self.calls.borrow()
    }
}

fn policy() -> Backoff {
    Backoff::exponential(Duration::from_millis(100))
        .jitter(Jitter::None)
        .max_attempts(5)
}

#[tokio::test(start_paused = true)]
async fn bo_02_client_error_is_returned_at_once_after_one_call() {
    let script = Script::statuses(&[400]);
    let mut sleeps = 0;
    let started = Instant::now();

    let error = retry(&policy(), || script.call())
        .notify(|_: &CallError, _, _| sleeps += 1)
        .await
        .unwrap_err();

    assert_eq!(script.calls(), 1);
    assert_eq!(sleeps, 0);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(error.reason(), GiveUpReason::Permanent);
    assert!(error.is_permanent());
    assert_eq!(error.attempts(), 1);
    assert_eq!(error.last_error(), Some(&CallError::Status(400)));
    assert_eq!(
        error.to_string(),
        "gave up after 1 attempt: permanent error"
    );
}

#[tokio::test(start_paused = true)]
async fn bo_02_transient_statuses_are_retried_until_success() {
    let script = Script::statuses(&[503, 503, 200]);
    let mut sleeps = Vec::new();
    let started = Instant::now();

    let status = retry(&policy(), || script.call())
        .notify(|_: &CallError, _, delay| sleeps.push(delay))
        .await
        .unwrap();

    assert_eq!(status, 200);
    assert_eq!(script.calls(), 3);
    assert_eq!(
        sleeps,
        [Duration::from_millis(100), Duration::from_millis(200)]
    );
    assert_eq!(started.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn bo_02_non_idempotent_timeout_after_send_is_not_retried() {
    let script = Script::new([Err(CallError::TimedOutAfterSend), Ok(200)]);
    let started = Instant::now();

    let error = retry(&policy(), || script.call())
        .idempotent(false)
        .await
        .unwrap_err();

    assert_eq!(script.calls(), 1);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(error.is_ambiguous());
    assert_eq!(error.attempts(), 1);
    assert_eq!(error.into_last_error(), Some(CallError::TimedOutAfterSend));
}

#[tokio::test(start_paused = true)]
async fn bo_02_non_idempotent_is_the_default_for_ambiguous_failures() {
    let script = Script::new([Err(CallError::TimedOutAfterSend), Ok(200)]);

    let error = retry(&policy(), || script.call()).await.unwrap_err();

    assert_eq!(script.calls(), 1);
    assert_eq!(error.reason(), GiveUpReason::Ambiguous);
}

#[tokio::test(start_paused = true)]
async fn bo_02_timeout_after_send_is_retried_when_the_caller_opts_in() {
    let script = Script::new([Err(CallError::TimedOutAfterSend), Ok(200)]);

    let status = retry(&policy(), || script.call())
        .idempotent(true)
        .await
        .unwrap();

    assert_eq!(status, 200);
    assert_eq!(script.calls(), 2);
}

#[test]
fn bo_02_status_table() {
    for status in [400, 401, 403, 404, 409, 422] {
        assert_eq!(
            ErrorClass::from_http_status(status),
            ErrorClass::Permanent,
            "{status}"
        );
    }
    for status in [408, 425, 429, 500, 502, 503, 504] {
        assert_eq!(
            ErrorClass::from_http_status(status),
            ErrorClass::Transient,
            "{status}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_closure_overrides_the_trait_classification() {
    let script = Script::statuses(&[400, 400, 200]);

    let status = retry(&policy(), || script.call())
        .classify_with(|_: &CallError| ErrorClass::Transient)
        .await
        .unwrap();

    assert_eq!(status, 200);
    assert_eq!(script.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn io_errors_classify_without_a_closure() {
    let mut calls = 0;
    let error = retry(&policy(), || {
        calls += 1;
        async { Err::<(), _>(std::io::Error::from(std::io::ErrorKind::PermissionDenied)) }
    })
    .await
    .unwrap_err();

    assert_eq!(calls, 1);
    assert!(error.is_permanent());
}
