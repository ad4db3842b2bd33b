//! BA-02: one panicking item does not take the batch down.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use steadfast_batch::{Batch, BatchError, ErrorPolicy, Outcome, OutcomeKind, StopReason};
use tokio::time::sleep;

/// 10 ms of work; item 37 panics with "boom" after 5 ms and item 50 returns an error.
async fn item(index: u64, started: Arc<AtomicU64>) -> Result<u64, String> {
    started.fetch_add(1, Ordering::SeqCst);
    if index == 37 {
        sleep(Duration::from_millis(5)).await;
        panic!("boom");
    }
    sleep(Duration::from_millis(10)).await;
    if index == 50 {
        return Err("item 50 could not be stored".to_owned());
    }
    Ok(index)
}

fn batch(policy: ErrorPolicy) -> Batch {
    Batch::builder()
        .concurrency(NonZeroUsize::new(8).expect("eight"))
        .policy(policy)
        .build()
        .expect("valid settings")
}

#[tokio::test(start_paused = true)]
async fn ba_02_a_panicking_item_is_reported_and_the_run_goes_on() {
    let started = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&started);
    let run = batch(ErrorPolicy::CollectAll)
        .run(0..100u64, move |index| item(index, Arc::clone(&counter)));

    let (results, finished) = run.collect_all().await;
    let report = finished
        .expect("collecting every outcome ends normally")
        .into_report();

    assert_eq!(results.len(), 100);
    let successes = results
        .iter()
        .filter(|result| result.outcome.is_success())
        .count();
    assert_eq!(successes, 98);
    let panicked = results
        .iter()
        .find(|result| result.index == 37)
        .expect("item 37 reported");
    assert_eq!(panicked.outcome, Outcome::Panicked("boom".to_owned()));
    let failed = results
        .iter()
        .find(|result| result.index == 50)
        .expect("item 50 reported");
    assert_eq!(
        failed.outcome,
        Outcome::Failed("item 50 could not be stored".to_owned())
    );

    assert_eq!(report.counts().succeeded, 98);
    assert_eq!(report.counts().panicked, 1);
    assert_eq!(report.counts().failed, 1);
    let record = report.problem(37).expect("the panic is listed");
    assert_eq!(
        (record.kind, record.detail.as_deref()),
        (OutcomeKind::Panicked, Some("boom"))
    );
    assert_eq!(report.outcome_of(50), Some(OutcomeKind::Failed));
    assert!(report.stop_reason().is_none());
    assert_eq!(started.load(Ordering::SeqCst), 100);
}

#[tokio::test(start_paused = true)]
async fn ba_02_stop_at_first_failure_starts_nothing_after_the_panic() {
    let started = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&started);
    let run = batch(ErrorPolicy::StopOnFirst)
        .run(0..100u64, move |index| item(index, Arc::clone(&counter)));

    let (results, finished) = run.collect_all().await;
    let error = finished.expect_err("the policy stops the run");

    assert!(matches!(
        &error,
        BatchError::Stopped {
            reason: StopReason::FirstFailure,
            ..
        }
    ));
    assert_eq!(
        started.load(Ordering::SeqCst),
        40,
        "items 0..=39 started, none after"
    );
    assert_eq!(results.len(), 40);

    let finished = error
        .into_finished()
        .expect("the report is inside the error");
    let report = finished.into_full_report().await;
    let counts = report.counts();
    assert_eq!(counts.succeeded, 32);
    assert_eq!(counts.panicked, 1);
    assert_eq!(counts.cancelled, 7);
    assert_eq!(counts.not_started, 60);
    assert_eq!(counts.failed, 0);
    assert_eq!(report.total(), 100);
    assert_eq!(report.outcome_of(37), Some(OutcomeKind::Panicked));
    assert_eq!(report.outcome_of(38), Some(OutcomeKind::Cancelled));
    assert_eq!(report.outcome_of(40), Some(OutcomeKind::NotStarted));
    assert_eq!(report.outcome_of(99), Some(OutcomeKind::NotStarted));
}
