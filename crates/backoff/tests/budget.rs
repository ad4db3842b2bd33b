//! BO-04: a shared retry budget caps how much an outage is amplified.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use steadfast_backoff::{Backoff, Budget, GiveUpReason, RetryBudget, TokenBucket, retry};
use tokio::task::JoinSet;
use tokio::time::Instant;

const TASKS: u32 = 1_000;
const OUTAGE: Duration = Duration::from_secs(10);

/// A dependency that fails every call until `recovers_at`, counting the calls.
#[derive(Clone)]
struct Dependency {
    recovers_at: Instant,
    failed_calls: Arc<AtomicU32>,
    calls: Arc<AtomicU32>,
}

impl Dependency {
    fn new(outage: Duration) -> Self {
        Self {
            recovers_at: Instant::now() + outage,
            failed_calls: Arc::new(AtomicU32::new(0)),
            calls: Arc::new(AtomicU32::new(0)),
        }
    }

    async fn call(&self) -> Result<(), io::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if Instant::now() < self.recovers_at {
            self.failed_calls.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from(io::ErrorKind::ConnectionReset));
        }
        Ok(())
    }
}

fn policy() -> Backoff {
    Backoff::exponential(Duration::from_millis(100)).max_attempts(4)
}

/// The case's budget: 10 % of original requests plus 10 retries/s over 10 s.
fn case_budget() -> RetryBudget {
    RetryBudget::new(Duration::from_secs(10), 10, 0.1).unwrap()
}

/// 1,000 concurrent tasks against the failing dependency; returns the give-up reasons.
async fn outage(dependency: &Dependency, budget: Option<RetryBudget>) -> Vec<GiveUpReason> {
    let mut tasks = JoinSet::new();
    for seed in 0..u64::from(TASKS) {
        let dependency = dependency.clone();
        let budget = budget.clone();
        tasks.spawn(async move {
            let call = retry(&policy(), || dependency.call()).with_seed(seed);
            let call = match budget {
                Some(budget) => call.budget(budget),
                None => call,
            };
            call.await.map_err(|error| error.reason())
        });
    }
    let mut reasons = Vec::new();
    while let Some(outcome) = tasks.join_next().await {
        if let Err(reason) = outcome.expect("task ran to completion") {
            reasons.push(reason);
        }
    }
    reasons
}

#[tokio::test(start_paused = true)]
async fn bo_04_budget_caps_attempts_during_an_outage() {
    let dependency = Dependency::new(OUTAGE);

    let reasons = outage(&dependency, Some(case_budget())).await;

    let attempts = dependency.failed_calls.load(Ordering::SeqCst);
    assert!(attempts <= 1_200, "{attempts} attempts during the outage");
    assert!(attempts >= 1_000, "every task made its first call");
    assert_eq!(reasons.len(), TASKS as usize, "no task outlived the outage");
    assert!(reasons.contains(&GiveUpReason::Budget));
}

#[tokio::test(start_paused = true)]
async fn bo_04_without_a_budget_the_outage_is_amplified_by_max_attempts() {
    let dependency = Dependency::new(OUTAGE);

    let reasons = outage(&dependency, None).await;

    assert_eq!(dependency.failed_calls.load(Ordering::SeqCst), 4_000);
    assert!(
        reasons
            .iter()
            .all(|reason| *reason == GiveUpReason::Exhausted)
    );
}

#[tokio::test(start_paused = true)]
async fn bo_04_empty_budget_fails_at_once_without_sleeping() {
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.0).unwrap();
    let dependency = Dependency::new(OUTAGE);
    let started = Instant::now();

    let error = retry(&policy(), || dependency.call())
        .budget(budget)
        .await
        .unwrap_err();

    assert!(error.is_budget());
    assert_eq!(error.attempts(), 1);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(error.last_error().is_some());
}

#[tokio::test(start_paused = true)]
async fn bo_04_retries_are_possible_again_after_recovery() {
    let budget = case_budget();
    let dependency = Dependency::new(OUTAGE);
    outage(&dependency, Some(budget.clone())).await;

    tokio::time::sleep_until(dependency.recovers_at + Duration::from_secs(10)).await;
    let flaky = Dependency::new(Duration::from_millis(50));
    retry(&policy(), || flaky.call())
        .budget(budget)
        .await
        .expect("the retry after recovery is within budget");

    assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn bo_04_ratio_point_six_ten_deposits_allow_exactly_six_withdrawals() {
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.6).unwrap();
    let other_clone = budget.clone();

    for _ in 0..10 {
        budget.deposit();
    }
    let withdrawals = (0..10).filter(|_| other_clone.try_withdraw()).count();

    assert_eq!(withdrawals, 6);
}

#[tokio::test(start_paused = true)]
async fn bo_04_token_bucket_allows_exactly_100_retries_then_fails_fast() {
    let bucket = TokenBucket::aws_standard();
    let dependency = Dependency::new(Duration::from_secs(86_400));
    let mut budget_failures = 0;

    for _ in 0..60 {
        let error = retry(&policy().max_attempts(3), || dependency.call())
            .budget(bucket.clone())
            .await
            .unwrap_err();
        if error.is_budget() {
            budget_failures += 1;
        }
    }

    let calls = dependency.calls.load(Ordering::SeqCst);
    assert_eq!(calls - 60, 100, "retries made");
    assert_eq!(bucket.available(), 0);
    assert_eq!(
        budget_failures, 10,
        "tasks 51 to 60 failed fast after one call"
    );
}

#[tokio::test(start_paused = true)]
async fn bo_04_token_bucket_refills_one_token_per_first_try_success() {
    let bucket = TokenBucket::aws_standard();
    for _ in 0..100 {
        assert!(bucket.try_withdraw_retry(steadfast_backoff::RetryKind::Error));
    }
    let healthy = Dependency::new(Duration::ZERO);

    for _ in 0..5 {
        retry(&policy(), || healthy.call())
            .budget(bucket.clone())
            .await
            .unwrap();
    }

    assert_eq!(bucket.available(), 5);
}

#[tokio::test(start_paused = true)]
async fn bo_04_token_bucket_charges_ten_for_a_retry_after_a_timeout() {
    let bucket = TokenBucket::aws_standard();
    let mut calls = 0;

    for _ in 0..60 {
        let _ = retry(&policy().max_attempts(3), || {
            calls += 1;
            async { Err::<(), _>(io::Error::from(io::ErrorKind::TimedOut)) }
        })
        .budget(bucket.clone())
        .await;
    }

    assert_eq!(calls - 60, 50);
}
