//! How one item's future is made: run once, or retried through `steadfast-backoff`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use steadfast_backoff::{
    Backoff, ByTrait, Classifier, ErrorClass, GiveUpReason, RetryBudget, retry,
};
use tokio_util::sync::CancellationToken;

use crate::driver::{Attempt, ItemFuture, MakeItem};

/// Marks a runner whose items run once, without retry (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRetry;

/// Marks a runner whose failed items are retried with a [`Backoff`] policy.
///
/// Made by [`BatchBuilder::retry`](crate::BatchBuilder::retry). Errors are classified
/// through [`steadfast_backoff::Classify`] unless
/// [`classify_with`](crate::BatchBuilder::classify_with) supplies a classifier; only
/// transient ones are retried. All items of one run draw their retries from one
/// [`RetryBudget`], so a dependency that fails for everyone is not hammered by every
/// item's retries at once.
#[derive(Clone)]
pub struct Retrying<C = ByTrait> {
    pub(crate) policy: Backoff,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) classifier: C,
    pub(crate) idempotent: bool,
}

impl<C> fmt::Debug for Retrying<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retrying")
            .field("policy", &self.policy)
            .field("budget", &self.budget)
            .field("idempotent", &self.idempotent)
            .finish_non_exhaustive()
    }
}

/// One failed attempt, as the retry loop sees it.
enum AttemptError<E> {
    Error(E),
    TimedOut,
}

/// Runs each item once, within the per-item timeout when there is one.
///
/// The work function itself is called inside the spawned task, so a panic in it ends only
/// that item, and the timeout clock starts when the item does.
pub(crate) fn once<T, F, Fut, V, E>(work: F, timeout: Option<Duration>) -> MakeItem<T, V, E>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
    V: Send + 'static,
    E: Send + 'static,
{
    let work = Arc::new(work);
    Box::new(move |item| {
        let work = Arc::clone(&work);
        let future: ItemFuture<V, E> = Box::pin(async move {
            match attempt(work(item), timeout).await {
                Ok(value) => Ok(value),
                Err(AttemptError::Error(error)) => Err(Attempt::Error(error)),
                Err(AttemptError::TimedOut) => Err(Attempt::TimedOut),
            }
        });
        (future, None)
    })
}

/// Runs each item through the retry loop: every attempt gets a fresh clone of the item
/// and the per-item timeout; the run's budget and cancellation token are shared by all.
pub(crate) fn retrying<T, F, Fut, V, E, C>(
    work: F,
    timeout: Option<Duration>,
    settings: &Retrying<C>,
    cancel: CancellationToken,
) -> MakeItem<T, V, E>
where
    T: Clone + Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
    V: Send + 'static,
    E: Send + 'static,
    C: Classifier<E> + Clone + Send + Sync + 'static,
{
    let work = Arc::new(work);
    let policy = Arc::new(settings.policy.clone());
    let budget = settings.budget.clone().unwrap_or_default();
    let classifier = settings.classifier.clone();
    let idempotent = settings.idempotent;

    Box::new(move |item| {
        let work = Arc::clone(&work);
        let policy = Arc::clone(&policy);
        let budget = budget.clone();
        let cancel = cancel.clone();
        let mut classifier = classifier.clone();
        let attempts = Arc::new(AtomicU32::new(0));
        let calls = Arc::clone(&attempts);

        let future: ItemFuture<V, E> = Box::pin(async move {
            let operation = move || {
                calls.fetch_add(1, Ordering::Relaxed);
                attempt(work(item.clone()), timeout)
            };
            let classify = move |error: &AttemptError<E>| match error {
                AttemptError::Error(error) => classifier.classify(error),
                AttemptError::TimedOut => ErrorClass::Ambiguous,
            };
            let outcome = retry(&policy, operation)
                .classify_with(classify)
                .budget(budget)
                .cancel(cancel)
                .idempotent(idempotent)
                .await;

            match outcome {
                Ok(value) => Ok(value),
                Err(gave_up) if gave_up.reason() == GiveUpReason::Cancelled => {
                    Err(Attempt::Cancelled)
                }
                Err(gave_up) => match gave_up.into_last_error() {
                    Some(AttemptError::Error(error)) => Err(Attempt::Error(error)),
                    Some(AttemptError::TimedOut) => Err(Attempt::TimedOut),
                    // Without an error the loop can only have stopped before its first
                    // call, which the run treats as the item never having run.
                    None => Err(Attempt::Cancelled),
                },
            }
        });
        (future, Some(attempts))
    })
}

/// One call of the work function, within the timeout when there is one.
async fn attempt<V, E>(
    future: impl Future<Output = Result<V, E>>,
    timeout: Option<Duration>,
) -> Result<V, AttemptError<E>> {
    match timeout {
        Some(limit) => match tokio::time::timeout(limit, future).await {
            Ok(result) => result.map_err(AttemptError::Error),
            Err(_) => Err(AttemptError::TimedOut),
        },
        None => future.await.map_err(AttemptError::Error),
    }
}
