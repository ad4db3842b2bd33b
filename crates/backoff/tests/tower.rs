//! The tower adapter: the same policy as a `tower::retry::Policy`.
#![cfg(feature = "tower")]

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use steadfast_backoff::{Backoff, ErrorClass, Jitter, RetryBudget, TowerPolicy};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

/// A service failing its first `failures` calls with `kind`, counting calls.
fn flaky(
    failures: u32,
    kind: io::ErrorKind,
    calls: Arc<AtomicU32>,
) -> impl Service<u32, Response = u32, Error = io::Error, Future: Send> + Clone {
    tower::service_fn(move |request: u32| {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if call < failures {
                Err(io::Error::from(kind))
            } else {
                Ok(request + 1)
            }
        }
    })
}

fn policy() -> Backoff {
    Backoff::exponential(Duration::from_millis(100))
        .jitter(Jitter::None)
        .max_attempts(4)
}

#[tokio::test(start_paused = true)]
async fn transient_errors_are_retried_with_the_schedule() {
    let calls = Arc::new(AtomicU32::new(0));
    let mut service = ServiceBuilder::new()
        .retry(TowerPolicy::new(&policy()).unwrap())
        .service(flaky(2, io::ErrorKind::ConnectionReset, calls.clone()));
    let started = Instant::now();

    let response = service.ready().await.unwrap().call(1).await.unwrap();

    assert_eq!(response, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(started.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_pass_through_at_once() {
    let calls = Arc::new(AtomicU32::new(0));
    let mut service = ServiceBuilder::new()
        .retry(TowerPolicy::new(&policy()).unwrap())
        .service(flaky(5, io::ErrorKind::PermissionDenied, calls.clone()));

    let error = service.ready().await.unwrap().call(1).await.unwrap_err();

    assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn attempts_are_counted_per_request() {
    let calls = Arc::new(AtomicU32::new(0));
    let mut service = ServiceBuilder::new()
        .retry(TowerPolicy::new(&policy()).unwrap())
        .service(flaky(
            u32::MAX,
            io::ErrorKind::ConnectionReset,
            calls.clone(),
        ));

    for request in 0..3 {
        let error = service
            .ready()
            .await
            .unwrap()
            .call(request)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }

    assert_eq!(calls.load(Ordering::SeqCst), 12);
}

#[tokio::test(start_paused = true)]
async fn a_shared_budget_limits_retries_across_requests() {
    let calls = Arc::new(AtomicU32::new(0));
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.5).unwrap();
    let mut service = ServiceBuilder::new()
        .retry(TowerPolicy::new(&policy()).unwrap().budget(budget))
        .service(flaky(
            u32::MAX,
            io::ErrorKind::ConnectionReset,
            calls.clone(),
        ));

    for request in 0..10 {
        let _ = service.ready().await.unwrap().call(request).await;
    }

    assert_eq!(calls.load(Ordering::SeqCst), 10 + 5);
}

#[tokio::test(start_paused = true)]
async fn a_closure_classifies_for_the_layer() {
    let calls = Arc::new(AtomicU32::new(0));
    let policy = TowerPolicy::new(&policy())
        .unwrap()
        .classify_with(|_: &io::Error| ErrorClass::Permanent);
    let mut service = ServiceBuilder::new().retry(policy).service(flaky(
        2,
        io::ErrorKind::ConnectionReset,
        calls.clone(),
    ));

    assert!(service.ready().await.unwrap().call(1).await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn an_invalid_policy_is_rejected_when_the_layer_is_built() {
    let error = TowerPolicy::new(&policy().max_attempts(0)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "max_attempts counts the first call and must be at least 1"
    );
}

#[tokio::test(start_paused = true)]
async fn the_first_call_counts_towards_the_elapsed_limit() {
    let policy = Backoff::constant(Duration::from_secs(2))
        .unlimited_attempts()
        .max_elapsed(Duration::from_secs(6));
    let calls = Arc::new(AtomicU32::new(0));
    let call_secs = Arc::new(AtomicU32::new(5));
    let (counter, secs) = (calls.clone(), call_secs.clone());
    let mut service = ServiceBuilder::new()
        .retry(TowerPolicy::new(&policy).unwrap())
        .service_fn(move |_: u32| {
            counter.fetch_add(1, Ordering::SeqCst);
            let took = Duration::from_secs(secs.load(Ordering::SeqCst).into());
            async move {
                tokio::time::sleep(took).await;
                Err::<u32, _>(io::Error::from(io::ErrorKind::ConnectionReset))
            }
        });

    // As in `retry`: a 5 s call leaves 1 s of the 6 s limit, too little for a 2 s wait.
    let started = Instant::now();
    service.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(started.elapsed(), Duration::from_secs(5));

    // A later request gets a clock of its own: 1 s calls and 2 s waits make calls at 0,
    // 3 and 6 s (the wait after the call ending at 4 s ends at the limit, not past it).
    tokio::time::sleep(Duration::from_secs(30)).await;
    calls.store(0, Ordering::SeqCst);
    call_secs.store(1, Ordering::SeqCst);
    let started = Instant::now();
    service.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(started.elapsed(), Duration::from_secs(7));
}
