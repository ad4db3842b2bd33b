//! Stop conditions of the retry loop: attempts, elapsed time, deadline, cancellation.

use std::io;
use std::time::Duration;

use steadfast_backoff::{Backoff, BuildError, CancellationToken, GiveUpReason, Jitter, retry};
use tokio::time::{Instant, sleep};

fn reset() -> io::Error {
    io::Error::from(io::ErrorKind::ConnectionReset)
}

#[tokio::test(start_paused = true)]
async fn attempt_limit_counts_the_first_call() {
    let policy = Backoff::exponential(Duration::from_millis(10)).max_attempts(3);
    let mut calls = 0;

    let error = retry(&policy, || {
        calls += 1;
        async { Err::<(), _>(reset()) }
    })
    .await
    .unwrap_err();

    assert_eq!(calls, 3);
    assert!(error.is_exhausted());
    assert_eq!(error.attempts(), 3);
    assert_eq!(
        error.last_error().map(io::Error::kind),
        Some(io::ErrorKind::ConnectionReset)
    );
    assert_eq!(error.to_string(), "gave up after 3 attempts");
}

#[tokio::test(start_paused = true)]
async fn elapsed_limit_counts_the_operation_and_never_sleeps_past_it() {
    let policy = Backoff::constant(Duration::from_secs(2))
        .unlimited_attempts()
        .max_elapsed(Duration::from_secs(10));
    let started = Instant::now();
    let mut starts = Vec::new();

    let error = retry(&policy, || {
        starts.push(started.elapsed());
        async {
            sleep(Duration::from_secs(1)).await;
            Err::<(), _>(reset())
        }
    })
    .await
    .unwrap_err();

    // Calls take 1 s and waits 2 s: calls start at 0, 3, 6 and 9 s; after the call
    // that ends at 10 s another wait would pass the limit, so the loop stops there.
    let expected = [0, 3, 6, 9].map(Duration::from_secs);
    assert_eq!(starts, expected);
    assert!(error.is_deadline());
    assert_eq!(error.elapsed(), Duration::from_secs(10));
    assert_eq!(started.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn zero_delay_policy_still_stops_at_the_elapsed_limit() {
    // A zero wait never "ends past" the limit, yet every call after the limit is one
    // too many: the loop must stop once the limit has passed, whatever the delay.
    let policy = Backoff::constant(Duration::ZERO)
        .unlimited_attempts()
        .max_elapsed(Duration::from_secs(1));
    let mut calls = 0;

    let run = retry(&policy, || {
        calls += 1;
        async {
            sleep(Duration::from_secs(2)).await;
            Err::<(), _>(reset())
        }
    });
    let error = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the loop stops instead of calling forever")
        .unwrap_err();

    assert_eq!(calls, 1);
    assert!(error.is_deadline());
    assert_eq!(error.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn outer_deadline_stops_a_call_in_flight() {
    let policy = Backoff::exponential(Duration::from_millis(100));
    let started = Instant::now();

    let error = retry(&policy, || async {
        sleep(Duration::from_secs(100)).await;
        Ok::<(), io::Error>(())
    })
    .deadline(started + Duration::from_secs(5))
    .await
    .unwrap_err();

    assert_eq!(error.reason(), GiveUpReason::Deadline);
    assert_eq!(error.attempts(), 1);
    assert!(error.last_error().is_none());
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn the_earlier_of_deadline_and_elapsed_limit_wins() {
    let policy = Backoff::constant(Duration::from_secs(4))
        .unlimited_attempts()
        .max_elapsed(Duration::from_secs(60));
    let started = Instant::now();
    let mut calls = 0;

    let error = retry(&policy, || {
        calls += 1;
        async { Err::<(), _>(reset()) }
    })
    .deadline(started + Duration::from_secs(10))
    .await
    .unwrap_err();

    assert!(error.is_deadline());
    assert_eq!(
        calls, 3,
        "calls at 0, 4 and 8 s; a wait to 12 s is not made"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(8));
}

#[tokio::test(start_paused = true)]
async fn cancellation_ends_a_pending_wait_at_once() {
    let policy = Backoff::constant(Duration::from_secs(3600));
    let token = CancellationToken::new();
    let canceller = token.clone();
    tokio::spawn(async move {
        sleep(Duration::from_secs(1)).await;
        canceller.cancel();
    });
    let started = Instant::now();

    let error = retry(&policy, || async { Err::<(), _>(reset()) })
        .cancel(token)
        .await
        .unwrap_err();

    assert!(error.is_cancelled());
    assert_eq!(error.attempts(), 1);
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert!(error.last_error().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_token_prevents_the_first_call() {
    let token = CancellationToken::new();
    token.cancel();
    let mut calls = 0;

    let error = retry(&Backoff::default(), || {
        calls += 1;
        async { Ok::<(), io::Error>(()) }
    })
    .cancel(token)
    .await
    .unwrap_err();

    assert_eq!(calls, 0);
    assert_eq!(error.attempts(), 0);
    assert!(error.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn hook_sees_each_retry_with_attempt_and_delay() {
    let policy = Backoff::exponential(Duration::from_millis(100))
        .jitter(Jitter::None)
        .max_attempts(4);
    let mut seen = Vec::new();

    let _ = retry(&policy, || async { Err::<(), _>(reset()) })
        .notify(|error: &io::Error, attempt, delay| seen.push((error.kind(), attempt, delay)))
        .await;

    let kind = io::ErrorKind::ConnectionReset;
    let ms = Duration::from_millis;
    assert_eq!(
        seen,
        [(kind, 1, ms(100)), (kind, 2, ms(200)), (kind, 3, ms(400))]
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_policy_is_an_error_before_any_call() {
    let policy = Backoff::exponential(Duration::from_secs(1)).factor(f64::NAN);
    let mut calls = 0;

    let error = retry(&policy, || {
        calls += 1;
        async { Ok::<(), io::Error>(()) }
    })
    .await
    .unwrap_err();

    assert_eq!(calls, 0);
    assert!(error.is_invalid_policy());
    assert!(matches!(
        error.invalid_policy(),
        Some(BuildError::Factor { .. })
    ));
    let source = std::error::Error::source(&error).map(ToString::to_string);
    assert_eq!(
        source.as_deref(),
        Some("factor must be a finite number of at least 1.0, got NaN")
    );
}

#[test]
fn validate_names_the_rule() {
    let second = Duration::from_secs(1);
    let cases = [
        (Backoff::exponential(second).factor(0.5), "factor must be"),
        (
            Backoff::exponential(second).max_delay(Duration::ZERO),
            "max_delay",
        ),
        (
            Backoff::exponential(second).min_delay(Duration::from_secs(2)),
            "min_delay",
        ),
        (Backoff::exponential(second).max_attempts(0), "max_attempts"),
        (
            Backoff::exponential(second).jitter(Jitter::Proportional(1.5)),
            "spread",
        ),
    ];
    for (policy, rule) in cases {
        let error = policy.validate().unwrap_err();
        assert!(error.to_string().contains(rule), "{error}");
    }
    assert_eq!(Backoff::grpc().validate(), Ok(()));
    assert_eq!(Backoff::aws_standard().validate(), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn seeded_runs_wait_the_same() {
    let policy = Backoff::exponential(Duration::from_millis(100)).max_attempts(6);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut delays = Vec::new();
        let _ = retry(&policy, || async { Err::<(), _>(reset()) })
            .with_seed(42)
            .notify(|_: &io::Error, _, delay| delays.push(delay))
            .await;
        runs.push(delays);
    }
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[0], policy.schedule().with_seed(42).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn presets_have_their_documented_values() {
    let grpc = Backoff::grpc();
    assert_eq!(grpc.initial, Duration::from_secs(1));
    assert_eq!(grpc.factor, 1.6);
    assert_eq!(grpc.max_delay, Duration::from_secs(120));
    assert_eq!(grpc.jitter, Jitter::Proportional(0.2));
    assert_eq!(grpc.max_attempts, None);

    let aws = Backoff::aws_standard();
    assert_eq!(aws.max_attempts, Some(3));
    assert_eq!(aws.max_delay, Duration::from_secs(20));
    assert!(aws.schedule().all(|delay| delay <= Duration::from_secs(2)));
}
