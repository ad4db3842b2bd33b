//! A `tower::retry::Policy` driven by a [`Backoff`], for use as a tower layer.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, Sleep, sleep};
use tracing::debug;

use crate::budget::{Budget, RetryKind};
use crate::classify::{ByTrait, Classifier, ErrorClass};
use crate::policy::{Backoff, BuildError};
use crate::schedule::Schedule;

/// The same policy as [`retry`](crate::retry()), as a [`tower::retry::Policy`].
///
/// Wrap any service whose requests are `Clone` with
/// `tower::retry::RetryLayer::new(TowerPolicy::new(&policy)?)`. Errors are classified as
/// in the retry loop (by [`Classify`](crate::Classify) or a closure); `Ok` responses
/// are never retried, so map retryable responses (a `503`) to errors inside the
/// service if they should be.
///
/// Tower clones the policy for every request, so attempt counts and jitter state are
/// per request while a budget set with [`TowerPolicy::budget`] is shared by all.
///
/// A hint longer than the policy's `max_retry_after`, an elapsed-time limit that a
/// wait would pass, an empty budget and an ambiguous failure of a non-idempotent
/// operation all end the retries and pass the last error through unchanged.
///
/// ```
/// use std::io;
/// use std::time::Duration;
///
/// use steadfast_backoff::{Backoff, TowerPolicy};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let policy = Backoff::exponential(Duration::from_millis(10)).max_attempts(3);
/// let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
/// let counter = calls.clone();
/// let mut service = ServiceBuilder::new()
///     .retry(TowerPolicy::new(&policy).unwrap())
///     .service_fn(move |request: u32| {
///         let call = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
///         async move {
///             if call == 0 {
///                 Err(io::Error::from(io::ErrorKind::ConnectionReset))
///             } else {
///                 Ok(request * 2)
///             }
///         }
///     });
/// let response = service.ready().await.unwrap().call(21).await.unwrap();
/// assert_eq!(response, 42);
/// # }
/// ```
// Not yet: classifying `Ok` responses (an HTTP 503 as a response) and an outer deadline.
#[derive(Clone, Debug)]
pub struct TowerPolicy<C = ByTrait> {
    policy: Backoff,
    classifier: C,
    budget: Option<Arc<dyn Budget>>,
    idempotent: bool,
    schedule: Option<Schedule>,
    attempts: u32,
    started: Option<Instant>,
    last_retry: Option<RetryKind>,
}

impl TowerPolicy {
    /// A tower policy following `policy`, classifying errors by [`Classify`](crate::Classify).
    ///
    /// # Errors
    ///
    /// The [`BuildError`] naming the rule `policy` breaks (see [`Backoff::validate`]).
    pub fn new(policy: &Backoff) -> Result<Self, BuildError> {
        policy.validate()?;
        Ok(Self {
            policy: policy.clone(),
            classifier: ByTrait,
            budget: None,
            idempotent: false,
            schedule: None,
            attempts: 0,
            started: None,
            last_retry: None,
        })
    }
}

impl<C> TowerPolicy<C> {
    /// Classifies errors with a closure instead of the [`Classify`](crate::Classify) trait.
    pub fn classify_with<E, C2>(self, classifier: C2) -> TowerPolicy<C2>
    where
        C2: FnMut(&E) -> ErrorClass + Clone,
    {
        TowerPolicy {
            policy: self.policy,
            classifier,
            budget: self.budget,
            idempotent: self.idempotent,
            schedule: self.schedule,
            attempts: self.attempts,
            started: self.started,
            last_retry: self.last_retry,
        }
    }

    /// Spends retries from a budget shared by every request through this policy.
    pub fn budget(mut self, budget: impl Budget + 'static) -> Self {
        self.budget = Some(Arc::new(budget));
        self
    }

    /// Declares whether requests may be repeated after they possibly took effect (see
    /// [`Retry::idempotent`](crate::Retry::idempotent)); `false` by default.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// The delay before the next retry, or `None` to stop.
    fn decide(&mut self, class: ErrorClass, kind: RetryKind) -> Option<Duration> {
        match class {
            ErrorClass::Permanent => return None,
            ErrorClass::Ambiguous if !self.idempotent => return None,
            _ => {}
        }
        let policy = &self.policy;
        let mut delay = self
            .schedule
            .get_or_insert_with(|| policy.schedule())
            .next()?;
        if let ErrorClass::RetryAfter(requested) = class {
            if requested > self.policy.max_retry_after {
                return None;
            }
            delay = delay.max(requested);
        }
        if let (Some(started), Some(limit)) = (self.started, self.policy.max_elapsed)
            && started.elapsed().saturating_add(delay) > limit
        {
            return None;
        }
        if let Some(budget) = &self.budget
            && !budget.try_withdraw_retry(kind)
        {
            return None;
        }
        Some(delay)
    }
}

impl<Req, Res, E, C> tower::retry::Policy<Req, Res, E> for TowerPolicy<C>
where
    Req: Clone,
    C: Classifier<E>,
{
    type Future = Sleep;

    fn retry(&mut self, _request: &mut Req, result: &mut Result<Res, E>) -> Option<Sleep> {
        self.attempts = self.attempts.saturating_add(1);
        if self.attempts == 1 {
            self.started.get_or_insert_with(Instant::now);
            if let Some(budget) = &self.budget {
                budget.on_request();
            }
        }

        match result {
            Ok(_) => {
                if let Some(budget) = &self.budget {
                    budget.on_success(self.last_retry);
                }
                None
            }
            Err(error) => {
                let class = self.classifier.classify(error);
                let kind = if class == ErrorClass::Ambiguous || self.classifier.is_timeout(error) {
                    RetryKind::Timeout
                } else {
                    RetryKind::Error
                };
                let Some(delay) = self.decide(class, kind) else {
                    debug!(attempt = self.attempts, ?class, "tower request not retried");
                    return None;
                };
                debug!(
                    attempt = self.attempts,
                    ?delay,
                    ?class,
                    "tower request retrying"
                );
                self.last_retry = Some(kind);
                Some(sleep(delay))
            }
        }
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        // Tower calls this before every call, the first one on the shared policy just
        // before cloning it for the request: start the elapsed-time clock there, so that
        // the first call's own time counts, as in `retry`.
        if self.attempts == 0 {
            self.started = Some(Instant::now());
        }
        Some(request.clone())
    }
}
