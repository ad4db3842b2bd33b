//! The retry loop: call, classify, wait, call again, or give up with a reason.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::debug;

use crate::budget::{Budget, RetryKind};
use crate::classify::{ByTrait, Classifier, ErrorClass};
use crate::error::{GiveUpReason, RetryError};
use crate::policy::Backoff;
use crate::schedule::Schedule;

/// Runs `operation` until it succeeds or `policy` says to stop.
///
/// Returns a [`Retry`] builder; `.await` it (it is [`IntoFuture`]) after setting
/// whatever else the call needs: a classifier, a hook, a cancellation token, a
/// budget, a deadline. `operation` is called afresh for each attempt.
///
/// By default errors are classified through their [`Classify`](crate::Classify)
/// implementation; awaiting requires it unless
/// [`classify_with`](Retry::classify_with) supplies a closure.
///
/// # Errors
///
/// The loop resolves to a [`RetryError`] when it gives up: it carries the last error
/// (if a call failed), the calls made, the time taken and the [`GiveUpReason`]:
/// a permanent error, the attempt limit, the elapsed-time limit or deadline, an empty
/// budget, cancellation, a server hint longer than allowed, an ambiguous failure of a
/// non-idempotent operation, or a policy that fails [`Backoff::validate`] (checked
/// before the first call).
///
/// # Cancel safety
///
/// Dropping the future drops the call in flight, if any, and makes no further call.
///
/// ```
/// use std::io;
/// use std::time::Duration;
///
/// use steadfast_backoff::{Backoff, retry};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let policy = Backoff::exponential(Duration::from_millis(100)).max_attempts(4);
/// let mut calls = 0;
/// let answer = retry(&policy, || {
///     calls += 1;
///     let result = if calls < 3 {
///         Err(io::Error::from(io::ErrorKind::ConnectionReset))
///     } else {
///         Ok(42)
///     };
///     async move { result }
/// })
/// .await
/// .unwrap();
/// assert_eq!((answer, calls), (42, 3));
/// # }
/// ```
pub fn retry<F, Fut, T, E>(policy: &Backoff, operation: F) -> Retry<F>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    Retry {
        policy: policy.clone(),
        operation,
        classifier: ByTrait,
        notify: NoNotify,
        cancel: None,
        budget: None,
        deadline: None,
        idempotent: false,
        seed: None,
    }
}

/// A retry loop being set up; `.await` it to run it. Made by [`retry()`].
///
/// Defaults: errors classified by [`Classify`](crate::Classify), no hook, no
/// cancellation, no budget, no deadline beyond the policy's own limits, and the
/// operation treated as not idempotent (only [`ErrorClass::Ambiguous`] failures are
/// affected by that).
#[must_use = "a retry loop does nothing until it is awaited"]
pub struct Retry<F, C = ByTrait, N = NoNotify> {
    policy: Backoff,
    operation: F,
    classifier: C,
    notify: N,
    cancel: Option<CancellationToken>,
    budget: Option<Arc<dyn Budget>>,
    deadline: Option<Instant>,
    idempotent: bool,
    seed: Option<u64>,
}

/// A hook called before each retry with the error, the number of the attempt that
/// failed (1 for the first call) and the delay about to be slept.
///
/// Implemented for [`NoNotify`] and for closures `FnMut(&E, u32, Duration)`.
pub trait Notify<E> {
    /// Called once per retry, before the wait.
    fn notify(&mut self, error: &E, attempt: u32, delay: Duration);
}

/// The default hook: does nothing (the loop still emits a `tracing` debug event).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoNotify;

impl<E> Notify<E> for NoNotify {
    fn notify(&mut self, _error: &E, _attempt: u32, _delay: Duration) {}
}

impl<E, F> Notify<E> for F
where
    F: FnMut(&E, u32, Duration),
{
    fn notify(&mut self, error: &E, attempt: u32, delay: Duration) {
        self(error, attempt, delay)
    }
}

impl<F, C, N> Retry<F, C, N> {
    /// Classifies errors with `classifier` instead of the [`Classify`](crate::Classify)
    /// trait, for error types that do not implement it or a call that knows better.
    pub fn classify_with<E, C2>(self, classifier: C2) -> Retry<F, C2, N>
    where
        C2: FnMut(&E) -> ErrorClass,
    {
        Retry {
            policy: self.policy,
            operation: self.operation,
            classifier,
            notify: self.notify,
            cancel: self.cancel,
            budget: self.budget,
            deadline: self.deadline,
            idempotent: self.idempotent,
            seed: self.seed,
        }
    }

    /// Calls `hook(error, attempt, delay)` before each retry (for logs and metrics).
    pub fn notify<E, N2>(self, hook: N2) -> Retry<F, C, N2>
    where
        N2: FnMut(&E, u32, Duration),
    {
        Retry {
            policy: self.policy,
            operation: self.operation,
            classifier: self.classifier,
            notify: hook,
            cancel: self.cancel,
            budget: self.budget,
            deadline: self.deadline,
            idempotent: self.idempotent,
            seed: self.seed,
        }
    }

    /// Stops the loop when `token` is cancelled: a pending wait ends at once and no
    /// further call starts. A call in flight is not interrupted; pass the token into
    /// the operation too if it should be.
    pub fn cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Spends retries from a shared budget ([`RetryBudget`](crate::RetryBudget),
    /// [`TokenBucket`](crate::TokenBucket) or your own [`Budget`]); when it is empty
    /// the loop gives up at once without sleeping.
    pub fn budget(mut self, budget: impl Budget + 'static) -> Self {
        self.budget = Some(Arc::new(budget));
        self
    }

    /// A hard deadline: no wait ends after it, and a call still running when it
    /// passes is dropped. Combines with the policy's `max_elapsed` (the earlier wins).
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Declares whether the operation may be repeated after it possibly took effect.
    ///
    /// Only failures classified [`ErrorClass::Ambiguous`] (for example a timeout after
    /// the request was sent) depend on it: they are retried when `idempotent` is
    /// `true` and end the loop with [`GiveUpReason::Ambiguous`] when it is `false`,
    /// the default. Opt in for reads, puts with a key, and anything deduplicated.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Seeds the jitter, so that a run's delays are reproducible (tests, simulations).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

impl<F, C, N> fmt::Debug for Retry<F, C, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("policy", &self.policy)
            .field("budget", &self.budget)
            .field("deadline", &self.deadline)
            .field("idempotent", &self.idempotent)
            .finish_non_exhaustive()
    }
}

impl<F, Fut, T, E, C, N> IntoFuture for Retry<F, C, N>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    C: Classifier<E>,
    N: Notify<E>,
{
    type Output = Result<T, RetryError<E>>;
    type IntoFuture = RetryFuture<F, Fut, E, C, N>;

    fn into_future(self) -> Self::IntoFuture {
        let cancelled = self.cancel.clone().map(CancellationToken::cancelled_owned);
        RetryFuture {
            state: State {
                operation: self.operation,
                classifier: self.classifier,
                notify: self.notify,
                policy: self.policy,
                schedule: None,
                seed: self.seed,
                cancel: self.cancel,
                budget: self.budget,
                outer_deadline: self.deadline,
                idempotent: self.idempotent,
                started: None,
                attempts: 0,
                last_error: None,
                last_retry: None,
                done: false,
            },
            call: None,
            wait: None,
            cancelled,
            deadline_timer: None,
        }
    }
}

pin_project! {
    /// The running retry loop, from awaiting a [`Retry`].
    ///
    /// # Cancel safety
    ///
    /// Dropping it drops the call in flight, if any; no further call is made.
    ///
    /// # Panics
    ///
    /// Polling it again after it completed panics, as with most futures.
    #[must_use = "futures do nothing unless polled"]
    pub struct RetryFuture<F, Fut, E, C, N> {
        state: State<F, E, C, N>,
        #[pin]
        call: Option<Fut>,
        #[pin]
        wait: Option<Sleep>,
        #[pin]
        cancelled: Option<WaitForCancellationFutureOwned>,
        #[pin]
        deadline_timer: Option<Sleep>,
    }
}

impl<F, Fut, E, C, N> fmt::Debug for RetryFuture<F, Fut, E, C, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryFuture")
            .field("attempts", &self.state.attempts)
            .field("calling", &self.call.is_some())
            .field("waiting", &self.wait.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, Fut, T, E, C, N> Future for RetryFuture<F, Fut, E, C, N>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    C: Classifier<E>,
    N: Notify<E>,
{
    type Output = Result<T, RetryError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        assert!(!this.state.done, "RetryFuture polled after completion");

        loop {
            if let Some(call) = this.call.as_mut().as_pin_mut() {
                if let Some(timer) = this.deadline_timer.as_mut().as_pin_mut()
                    && timer.poll(cx).is_ready()
                {
                    this.call.set(None);
                    return Poll::Ready(Err(this.state.give_up(GiveUpReason::Deadline)));
                }

                let result = ready!(call.poll(cx));
                this.call.set(None);
                match result {
                    Ok(value) => return Poll::Ready(Ok(this.state.succeed(value))),
                    Err(error) => match this.state.after_failure(error) {
                        Step::GiveUp(error) => return Poll::Ready(Err(error)),
                        Step::Wait(until) => this.wait.set(Some(sleep_until(until))),
                    },
                }
                continue;
            }

            if let Some(wait) = this.wait.as_mut().as_pin_mut() {
                if let Some(cancelled) = this.cancelled.as_mut().as_pin_mut()
                    && cancelled.poll(cx).is_ready()
                {
                    this.wait.set(None);
                    return Poll::Ready(Err(this.state.give_up(GiveUpReason::Cancelled)));
                }
                ready!(wait.poll(cx));
                this.wait.set(None);
            }

            if this.state.started.is_none() {
                if let Err(error) = this.state.start() {
                    return Poll::Ready(Err(error));
                }
                if let Some(deadline) = this.state.outer_deadline {
                    this.deadline_timer.set(Some(sleep_until(deadline)));
                }
            }
            if let Some(reason) = this.state.blocked() {
                return Poll::Ready(Err(this.state.give_up(reason)));
            }
            this.state.attempts = this.state.attempts.saturating_add(1);
            this.call.set(Some((this.state.operation)()));
        }
    }
}

/// Everything of the loop that need not be pinned.
struct State<F, E, C, N> {
    operation: F,
    classifier: C,
    notify: N,
    policy: Backoff,
    schedule: Option<Schedule>,
    seed: Option<u64>,
    cancel: Option<CancellationToken>,
    budget: Option<Arc<dyn Budget>>,
    outer_deadline: Option<Instant>,
    idempotent: bool,
    started: Option<Instant>,
    attempts: u32,
    last_error: Option<E>,
    last_retry: Option<RetryKind>,
    done: bool,
}

enum Step<E> {
    GiveUp(RetryError<E>),
    Wait(Instant),
}

/// What `Instant + delay` means when the sum does not fit: as good as never.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

impl<F, E, C, N> State<F, E, C, N>
where
    C: Classifier<E>,
    N: Notify<E>,
{
    /// Checks the policy and records the start; the first call follows.
    fn start(&mut self) -> Result<(), RetryError<E>> {
        self.started = Some(Instant::now());
        if let Err(rule) = self.policy.validate() {
            let mut error = self.give_up(GiveUpReason::InvalidPolicy);
            error.invalid_policy = Some(rule);
            return Err(error);
        }
        if let Some(budget) = &self.budget {
            budget.on_request();
        }
        Ok(())
    }

    /// Why the next call must not start, if it must not.
    fn blocked(&self) -> Option<GiveUpReason> {
        if self
            .cancel
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            return Some(GiveUpReason::Cancelled);
        }
        match self.outer_deadline {
            Some(deadline) if Instant::now() >= deadline => Some(GiveUpReason::Deadline),
            _ => None,
        }
    }

    fn succeed<T>(&mut self, value: T) -> T {
        self.done = true;
        if let Some(budget) = &self.budget {
            budget.on_success(self.last_retry);
        }
        if self.attempts > 1 {
            debug!(attempts = self.attempts, "retry succeeded");
        }
        value
    }

    /// Decides, after a failed call, whether to wait and until when, or to give up.
    fn after_failure(&mut self, error: E) -> Step<E> {
        let class = self.classifier.classify(&error);
        let kind = if class == ErrorClass::Ambiguous || self.classifier.is_timeout(&error) {
            RetryKind::Timeout
        } else {
            RetryKind::Error
        };
        self.last_error = Some(error);

        match class {
            ErrorClass::Permanent => return self.stop(GiveUpReason::Permanent),
            ErrorClass::Ambiguous if !self.idempotent => {
                return self.stop(GiveUpReason::Ambiguous);
            }
            _ => {}
        }

        let Some(mut delay) = self.next_delay() else {
            return self.stop(GiveUpReason::Exhausted);
        };

        let now = Instant::now();
        let time_left = self
            .deadline()
            .map(|deadline| deadline.saturating_duration_since(now));
        if let ErrorClass::RetryAfter(requested) = class {
            let allowed = match time_left {
                Some(left) => left.min(self.policy.max_retry_after),
                None => self.policy.max_retry_after,
            };
            if requested > allowed {
                return self.stop(GiveUpReason::RetryAfterTooLong { requested, allowed });
            }
            delay = delay.max(requested);
        }
        // A limit already reached stops the loop even when the wait is zero: a zero wait
        // does not end past the limit, but the call after it would start past it.
        if time_left.is_some_and(|left| left.is_zero() || delay > left) {
            return self.stop(GiveUpReason::Deadline);
        }

        if let Some(budget) = &self.budget
            && !budget.try_withdraw_retry(kind)
        {
            return self.stop(GiveUpReason::Budget);
        }

        if let Some(error) = &self.last_error {
            self.notify.notify(error, self.attempts, delay);
        }
        debug!(
            attempt = self.attempts,
            ?delay,
            ?class,
            "retrying after failure"
        );
        self.last_retry = Some(kind);
        Step::Wait(now.checked_add(delay).unwrap_or(now + FAR_FUTURE))
    }

    fn next_delay(&mut self) -> Option<Duration> {
        let seed = self.seed;
        let policy = &self.policy;
        self.schedule
            .get_or_insert_with(|| match seed {
                Some(seed) => policy.schedule().with_seed(seed),
                None => policy.schedule(),
            })
            .next()
    }

    /// The earlier of the policy's elapsed-time limit and the outer deadline.
    fn deadline(&self) -> Option<Instant> {
        let elapsed_limit = match (self.started, self.policy.max_elapsed) {
            (Some(started), Some(limit)) => {
                Some(started.checked_add(limit).unwrap_or(started + FAR_FUTURE))
            }
            _ => None,
        };
        match (elapsed_limit, self.outer_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn stop(&mut self, reason: GiveUpReason) -> Step<E> {
        Step::GiveUp(self.give_up(reason))
    }

    fn give_up(&mut self, reason: GiveUpReason) -> RetryError<E> {
        self.done = true;
        let elapsed = self
            .started
            .map_or(Duration::ZERO, |started| started.elapsed());
        debug!(?reason, attempts = self.attempts, ?elapsed, "giving up");
        RetryError {
            reason,
            last_error: self.last_error.take(),
            attempts: self.attempts,
            elapsed,
            invalid_policy: None,
        }
    }
}
