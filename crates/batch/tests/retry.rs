//! Per-item retry through `steadfast-backoff`, with a budget shared by the whole run.

use std::collections::HashMap;
use std::io;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steadfast_backoff::{Backoff, ErrorClass, Jitter, RetryBudget};
use steadfast_batch::{Batch, BuildError, CancelMode, CancellationToken, Outcome, OutcomeKind};
use tokio::time::sleep;

/// Counts calls per item; item `i` fails with a reset connection its first `i % 3` calls.
#[derive(Clone, Default)]
struct Flaky {
    calls: Arc<Mutex<HashMap<u32, u32>>>,
}

impl Flaky {
    fn call(&self, index: u32) -> Result<u32, io::Error> {
        let mut calls = self.calls.lock().expect("not poisoned");
        let count = calls.entry(index).or_default();
        *count += 1;
        if *count <= index % 3 {
            return Err(io::Error::from(io::ErrorKind::ConnectionReset));
        }
        Ok(index)
    }

    fn calls(&self, index: u32) -> u32 {
        self.calls
            .lock()
            .expect("not poisoned")
            .get(&index)
            .copied()
            .unwrap_or(0)
    }
}

fn policy() -> Backoff {
    Backoff::constant(Duration::from_millis(10))
        .jitter(Jitter::None)
        .max_attempts(3)
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_until_they_pass() {
    let flaky = Flaky::default();
    let batch = Batch::builder()
        .concurrency(NonZeroUsize::new(4).expect("four"))
        .retry(policy())
        .retry_budget(RetryBudget::new(Duration::from_secs(10), 100, 1.0).expect("valid"))
        .build()
        .expect("valid settings");

    let work = flaky.clone();
    let run = batch.run(0..30u32, move |index| {
        let result = work.call(index);
        async move { result }
    });
    let (results, finished) = run.collect_all().await;
    let report = finished
        .expect("every item passes in the end")
        .into_report();

    assert_eq!(report.counts().succeeded, 30);
    assert_eq!((flaky.calls(0), flaky.calls(1), flaky.calls(2)), (1, 2, 3));
    for result in &results {
        let index = u32::try_from(result.index).expect("small index");
        assert_eq!(result.attempts, flaky.calls(index), "item {index}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_ends_retrying_for_the_whole_run() {
    let flaky = Flaky::default();
    let batch = Batch::builder()
        .retry(policy())
        .retry_budget(RetryBudget::new(Duration::from_secs(10), 0, 0.0).expect("valid"))
        .build()
        .expect("valid settings");

    let work = flaky.clone();
    let run = batch.run(0..30u32, move |index| {
        let result = work.call(index);
        async move { result }
    });
    let (results, finished) = run.collect_all().await;
    let report = finished
        .expect("collecting every outcome ends normally")
        .into_report();

    assert_eq!(report.counts().succeeded, 10);
    assert_eq!(report.counts().failed, 20);
    assert!(
        (0..30).all(|index| flaky.calls(index) == 1),
        "no item was retried"
    );
    let failed = results
        .iter()
        .find(|result| result.index == 1)
        .expect("item 1 reported");
    assert!(
        matches!(&failed.outcome, Outcome::Failed(error) if error.kind() == io::ErrorKind::ConnectionReset)
    );
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_is_not_retried() {
    let batch = Batch::builder()
        .retry(policy())
        .classify_with(|error: &String| {
            if error.starts_with("bad") {
                ErrorClass::Permanent
            } else {
                ErrorClass::Transient
            }
        })
        .build()
        .expect("valid settings");

    let calls = Arc::new(Mutex::new(0));
    let counter = Arc::clone(&calls);
    let run = batch.run([7u32], move |_| {
        *counter.lock().expect("not poisoned") += 1;
        async { Err::<(), _>("bad request".to_owned()) }
    });
    let report = run.finish().await.expect("ends normally").into_report();

    assert_eq!(report.outcome_of(0), Some(OutcomeKind::Failed));
    assert_eq!(*calls.lock().expect("not poisoned"), 1);
}

#[tokio::test(start_paused = true)]
async fn timed_out_attempts_are_retried_only_when_idempotent() {
    for (idempotent, expected) in [
        (false, OutcomeKind::TimedOut),
        (true, OutcomeKind::Succeeded),
    ] {
        let calls = Arc::new(Mutex::new(0u32));
        let batch = Batch::builder()
            .item_timeout(Duration::from_millis(50))
            .retry(policy())
            .idempotent(idempotent)
            .build()
            .expect("valid settings");

        let counter = Arc::clone(&calls);
        let run = batch.run([0u32], move |_| {
            let call = {
                let mut calls = counter.lock().expect("not poisoned");
                *calls += 1;
                *calls
            };
            async move {
                if call == 1 {
                    sleep(Duration::from_secs(1)).await;
                }
                Ok::<_, io::Error>(call)
            }
        });
        let report = run.finish().await.expect("ends normally").into_report();

        assert_eq!(
            report.outcome_of(0),
            Some(expected),
            "idempotent: {idempotent}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn cancellation_ends_an_item_waiting_to_retry() {
    let token = CancellationToken::new();
    let batch = Batch::builder()
        .retry(
            Backoff::constant(Duration::from_secs(60))
                .jitter(Jitter::None)
                .max_attempts(5),
        )
        .cancel_mode(CancelMode::Graceful {
            grace: Duration::from_secs(600),
        })
        .cancel(token.clone())
        .build()
        .expect("valid settings");

    let run = batch.run([0u32], |_| async {
        Err::<(), _>(io::Error::from(io::ErrorKind::ConnectionReset))
    });
    sleep(Duration::from_secs(1)).await;
    token.cancel();
    let report = run
        .finish()
        .await
        .expect("cancellation is not an error")
        .into_report();

    assert_eq!(report.outcome_of(0), Some(OutcomeKind::Cancelled));
}

#[test]
fn an_invalid_retry_policy_fails_at_build() {
    let error = Batch::builder()
        .retry(policy().max_attempts(0))
        .build()
        .expect_err("invalid");
    assert!(matches!(error, BuildError::Retry(_)));
}
