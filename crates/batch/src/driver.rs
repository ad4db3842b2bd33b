//! The spawned task that pulls input, starts items, collects their ends and applies the
//! error policy. It owns all of a run's state, so nothing here needs a lock.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::{self, JoinError, JoinSet};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace};

use crate::config::{BatchConfig, CancelMode, ErrorPolicy, Order};
use crate::outcome::{Failure, ItemResult, Outcome, OutcomeKind};
use crate::progress::Progress;
use crate::report::{ItemRecord, Report, StopReason};

/// How one item's task can end short of success (a panic or an abort shows up as a
/// `JoinError` instead).
#[derive(Debug)]
pub(crate) enum Attempt<E> {
    Error(E),
    TimedOut,
    /// The run was cancelled while the item waited to retry.
    Cancelled,
}

/// The future one item runs as, spawned onto the runtime.
pub(crate) type ItemFuture<V, E> = Pin<Box<dyn Future<Output = Result<V, Attempt<E>>> + Send>>;

/// Turns an input item into the future that processes it, and the counter of calls that
/// future makes when it can make more than one (`None` means one call).
pub(crate) type MakeItem<T, V, E> =
    Box<dyn Fn(T) -> (ItemFuture<V, E>, Option<Arc<AtomicU32>>) + Send + Sync>;

/// Gives an input item its key.
pub(crate) type KeyFn<T> = Box<dyn Fn(&T) -> String + Send + Sync>;

/// What the driver hands back when the run has ended.
pub(crate) struct DriverOutput<S> {
    pub(crate) report: Report,
    pub(crate) input: S,
    pub(crate) input_exhausted: bool,
    pub(crate) next_index: u64,
}

/// Everything a driver needs to start.
pub(crate) struct DriverParts<S, T, V, E> {
    pub(crate) config: BatchConfig,
    pub(crate) input: S,
    pub(crate) make: MakeItem<T, V, E>,
    pub(crate) key: Option<KeyFn<T>>,
    pub(crate) results: mpsc::Sender<ItemResult<V, E>>,
    pub(crate) progress: watch::Sender<Progress>,
    pub(crate) cancel: CancellationToken,
}

pub(crate) struct Driver<S, T, V, E> {
    config: BatchConfig,
    input: S,
    input_exhausted: bool,
    make: MakeItem<T, V, E>,
    key: Option<KeyFn<T>>,
    tasks: JoinSet<Result<V, Attempt<E>>>,
    running: HashMap<task::Id, Running>,
    results: mpsc::Sender<ItemResult<V, E>>,
    pending: VecDeque<ItemResult<V, E>>,
    reorder: BTreeMap<u64, ItemResult<V, E>>,
    next_emit: u64,
    next_index: u64,
    report: Report,
    stopped: bool,
    stop_deadline: Option<Instant>,
    consumer_gone: bool,
    cancel: CancellationToken,
    cancel_seen: bool,
    rate_period: Option<Duration>,
    next_start: Option<Instant>,
    progress: watch::Sender<Progress>,
    last_publish: Instant,
    dirty: bool,
    started_at: Instant,
    total: Option<u64>,
}

struct Running {
    index: u64,
    key: Option<String>,
    started: Instant,
    attempts: Option<Arc<AtomicU32>>,
}

impl<S, T, V, E> Driver<S, T, V, E>
where
    S: Stream<Item = T> + Unpin,
    T: Send + 'static,
    V: Send + 'static,
    E: Display + Send + 'static,
{
    pub(crate) fn new(parts: DriverParts<S, T, V, E>) -> Self {
        let now = Instant::now();
        let total = match parts.input.size_hint() {
            (lower, Some(upper)) if lower == upper => Some(lower as u64),
            _ => None,
        };
        let rate_period = parts
            .config
            .rate_limit
            .map(|rate| Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::MAX));

        Self {
            config: parts.config,
            input: parts.input,
            input_exhausted: false,
            make: parts.make,
            key: parts.key,
            tasks: JoinSet::new(),
            running: HashMap::new(),
            results: parts.results,
            pending: VecDeque::new(),
            reorder: BTreeMap::new(),
            next_emit: 0,
            next_index: 0,
            report: Report::default(),
            stopped: false,
            stop_deadline: None,
            consumer_gone: false,
            cancel: parts.cancel,
            cancel_seen: false,
            rate_period,
            next_start: None,
            progress: parts.progress,
            last_publish: now,
            dirty: true,
            started_at: now,
            total,
        }
    }

    /// Runs until every pulled item has ended and its result has been handed over.
    pub(crate) async fn run(mut self) -> DriverOutput<S> {
        debug!(
            concurrency = self.config.concurrency.get(),
            buffer = self.config.buffer.get(),
            total = ?self.total,
            "batch run started"
        );

        loop {
            // Flushing first matters: once the last results are handed over the run is
            // done, and nothing would wake the loop to notice it.
            self.settle();
            if self.is_done() {
                break;
            }

            let now = Instant::now();
            if self.dirty && now >= later(self.last_publish, self.config.progress_interval) {
                self.publish(false);
            }
            let can_start = self.can_start();
            let rate_wait = can_start && self.next_start.is_some_and(|at| at > now);
            let next_start = self.next_start;
            let deadline = self.stop_deadline;
            let publish_at = self
                .dirty
                .then(|| later(self.last_publish, self.config.progress_interval));
            let mut only_a_tick = false;

            tokio::select! {
                biased;
                () = self.cancel.cancelled(), if !self.cancel_seen => self.on_cancel(),
                () = sleep_until_some(deadline), if deadline.is_some() => self.abort_running(),
                room = has_room(&self.results), if !self.pending.is_empty() => {
                    if !room {
                        self.on_consumer_gone();
                    }
                }
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_joined(joined);
                }
                () = sleep_until_some(next_start), if rate_wait => {}
                next = AssertUnwindSafe(self.input.next()).catch_unwind(),
                    if can_start && !rate_wait => self.on_input(next),
                () = sleep_until_some(publish_at), if publish_at.is_some() => only_a_tick = true,
                () = self.results.closed(), if self.pending.is_empty() => self.on_consumer_gone(),
            }

            self.dirty |= !only_a_tick;
        }

        self.end().await
    }

    /// Does what is ready without waiting: takes the ends of finished items, hands results
    /// over, and starts items from an input that has them at once. One pass of this per
    /// wake-up, rather than one wake-up per event, keeps the cost per item low.
    fn settle(&mut self) {
        if !self.cancel_seen && self.cancel.is_cancelled() {
            self.on_cancel();
        }
        while let Some(joined) = self.tasks.try_join_next_with_id() {
            self.on_joined(joined);
        }
        self.flush();

        while self.can_start() && self.next_start.is_none_or(|at| at <= Instant::now()) {
            match AssertUnwindSafe(self.input.next())
                .catch_unwind()
                .now_or_never()
            {
                Some(next) => self.on_input(next),
                None => break,
            }
        }
    }

    /// Hands finished results to the consumer while the buffer has room.
    fn flush(&mut self) {
        while let Some(result) = self.pending.pop_front() {
            let closed = match self.results.try_reserve() {
                Ok(permit) => {
                    permit.send(result);
                    continue;
                }
                Err(mpsc::error::TrySendError::Full(())) => {
                    self.pending.push_front(result);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(())) => true,
            };
            if closed {
                self.on_consumer_gone();
            }
            return;
        }
    }

    fn is_done(&self) -> bool {
        if self.consumer_gone {
            return true;
        }
        (self.input_exhausted || self.stopped) && self.tasks.is_empty() && self.pending.is_empty()
    }

    fn can_start(&self) -> bool {
        let window_open = match self.config.order {
            Order::Completion => true,
            Order::Input { window } => {
                self.next_index < self.next_emit.saturating_add(window.get() as u64)
            }
        };
        !self.stopped
            && !self.input_exhausted
            && self.tasks.len() < self.config.concurrency.get()
            && self.pending.is_empty()
            && window_open
    }

    /// Starts the item the input gave, or notes that the input ended. An input that
    /// panicked cannot be polled again: it counts as ended (running items still finish),
    /// and the panic becomes the run's stop reason so that the report still reaches the
    /// caller.
    fn on_input(&mut self, next: Result<Option<T>, Box<dyn Any + Send>>) {
        match next {
            Ok(Some(item)) => self.start(item),
            Ok(None) => self.input_exhausted = true,
            Err(payload) => {
                let message = panic_message(payload);
                debug!(%message, "the input panicked; stopping the run");
                self.input_exhausted = true;
                self.report.set_stop(StopReason::InputPanicked { message });
            }
        }
    }

    fn start(&mut self, item: T) {
        let index = self.next_index;
        self.next_index += 1;

        let key = self.key.as_ref().map(|key| key_of(key, &item));
        let (future, attempts) = (self.make)(item);
        let handle = self.tasks.spawn(future);
        let now = Instant::now();
        self.running.insert(
            handle.id(),
            Running {
                index,
                key,
                started: now,
                attempts,
            },
        );

        // Not yet: the rate limit allows no burst; after an idle spell starts are still
        // spaced one period apart.
        if let Some(period) = self.rate_period {
            self.next_start = Some(later(now, period));
        }
        trace!(index, in_flight = self.tasks.len(), "item started");
    }

    fn on_joined(&mut self, joined: Result<(task::Id, Result<V, Attempt<E>>), JoinError>) {
        let (id, ended) = match joined {
            Ok((id, ended)) => (id, Ok(ended)),
            Err(error) => (error.id(), Err(error)),
        };
        let Some(running) = self.running.remove(&id) else {
            debug!(?id, "a task ended that the run did not start");
            return;
        };

        let outcome = match ended {
            Ok(Ok(value)) => Outcome::Succeeded(value),
            Ok(Err(Attempt::Error(error))) => self.judge(Failure::Error(error)),
            Ok(Err(Attempt::TimedOut)) => self.judge(Failure::TimedOut),
            Ok(Err(Attempt::Cancelled)) => Outcome::Cancelled,
            Err(error) if error.is_panic() => {
                self.judge(Failure::Panic(panic_message(error.into_panic())))
            }
            Err(_) => Outcome::Cancelled,
        };

        self.record(&running, &outcome);
        let result = ItemResult {
            index: running.index,
            key: running.key,
            outcome,
            elapsed: running.started.elapsed(),
            attempts: running
                .attempts
                .map_or(1, |attempts| attempts.load(Ordering::Relaxed)),
        };
        self.queue(result);
    }

    /// Applies the error policy to one failure, and says how the item ends.
    fn judge(&mut self, failure: Failure<E>) -> Outcome<V, E> {
        let counts = self.report.counts();
        let failures = counts.failures() + 1;
        let ended = counts.total() + 1;

        match self.config.policy {
            ErrorPolicy::CollectAll => {}
            ErrorPolicy::StopOnFirst => self.trip(StopReason::FirstFailure),
            ErrorPolicy::StopAfter(limit) => {
                if failures >= limit.get() {
                    self.trip(StopReason::FailureCount { limit: limit.get() });
                }
            }
            ErrorPolicy::StopAboveRatio { max, min_items } => {
                let observed = failures as f64 / ended as f64;
                if ended >= min_items && observed > max {
                    self.trip(StopReason::FailureRatio { observed, max });
                }
            }
            ErrorPolicy::SkipUpTo(limit) => {
                if counts.skipped < limit {
                    return Outcome::Skipped(failure);
                }
                self.trip(StopReason::SkipLimit { limit });
            }
        }
        match failure {
            Failure::Error(error) => Outcome::Failed(error),
            Failure::Panic(message) => Outcome::Panicked(message),
            Failure::TimedOut => Outcome::TimedOut,
        }
    }

    fn record(&mut self, running: &Running, outcome: &Outcome<V, E>) {
        let kind = outcome.kind();
        let detail = match outcome {
            Outcome::Failed(error) | Outcome::Skipped(Failure::Error(error)) => {
                Some(error.to_string())
            }
            Outcome::Panicked(message) | Outcome::Skipped(Failure::Panic(message)) => {
                Some(message.clone())
            }
            _ => None,
        };
        let key = if kind == OutcomeKind::Succeeded {
            None
        } else {
            running.key.clone()
        };

        let cause = match outcome {
            Outcome::Skipped(failure) => Some(failure.kind()),
            _ => None,
        };

        trace!(index = running.index, ?kind, "item ended");
        self.report.record(ItemRecord {
            index: running.index,
            key,
            kind,
            detail,
            cause,
        });
    }

    fn queue(&mut self, result: ItemResult<V, E>) {
        if self.consumer_gone {
            return;
        }
        match self.config.order {
            Order::Completion => self.pending.push_back(result),
            Order::Input { .. } => {
                self.reorder.insert(result.index, result);
                while let Some(next) = self.reorder.remove(&self.next_emit) {
                    self.pending.push_back(next);
                    self.next_emit += 1;
                }
            }
        }
    }

    fn trip(&mut self, reason: StopReason) {
        if self.stopped {
            return;
        }
        debug!(%reason, grace = ?self.config.stop_grace, "error policy stops the run");
        self.report.set_stop(reason);
        self.begin_stop(self.config.stop_grace);
    }

    fn on_cancel(&mut self) {
        self.cancel_seen = true;
        self.report.set_stop(StopReason::Cancelled);
        let grace = match self.config.cancel_mode {
            CancelMode::Graceful { grace } => grace,
            CancelMode::Immediate => Duration::ZERO,
        };
        debug!(?grace, in_flight = self.tasks.len(), "batch run cancelled");
        self.begin_stop(grace);
    }

    /// Stops pulling input and gives running items `grace` to end.
    fn begin_stop(&mut self, grace: Duration) {
        self.stopped = true;
        if grace.is_zero() {
            self.abort_running();
            return;
        }
        let deadline = later(Instant::now(), grace);
        self.stop_deadline = Some(
            self.stop_deadline
                .map_or(deadline, |earlier| earlier.min(deadline)),
        );
    }

    fn abort_running(&mut self) {
        if !self.tasks.is_empty() {
            debug!(in_flight = self.tasks.len(), "aborting running items");
        }
        self.tasks.abort_all();
        self.stop_deadline = None;
    }

    fn on_consumer_gone(&mut self) {
        debug!("the consumer dropped the run; aborting it");
        self.consumer_gone = true;
        self.report.set_stop(StopReason::ConsumerGone);
        self.stopped = true;
        self.pending.clear();
        self.reorder.clear();
        self.tasks.abort_all();
    }

    fn publish(&mut self, done: bool) {
        let counts = self.report.counts();
        self.progress.send_replace(Progress {
            started: self.next_index,
            in_flight: self.tasks.len() as u64,
            counts,
            elapsed: self.started_at.elapsed(),
            total: self.total,
            done,
        });
        self.last_publish = Instant::now();
        self.dirty = false;
    }

    async fn end(mut self) -> DriverOutput<S> {
        // Only a consumer that went away leaves items running here; they end aborted and
        // are recorded as cancelled, so the final progress still adds up.
        self.tasks.abort_all();
        while let Some(joined) = self.tasks.join_next_with_id().await {
            self.on_joined(joined);
        }

        let elapsed = self.started_at.elapsed();
        self.report.finish(self.input_exhausted, elapsed);
        self.publish(true);

        let counts = self.report.counts();
        debug!(
            ?elapsed,
            succeeded = counts.succeeded,
            failures = counts.failures(),
            skipped = counts.skipped,
            cancelled = counts.cancelled,
            stop = ?self.report.stop_reason(),
            "batch run ended"
        );
        DriverOutput {
            report: self.report,
            input: self.input,
            input_exhausted: self.input_exhausted,
            next_index: self.next_index,
        }
    }
}

/// Waits until the results buffer has room (the permit is released again at once), and
/// says whether the consumer is still there.
async fn has_room<R>(results: &mpsc::Sender<R>) -> bool {
    results.reserve().await.is_ok()
}

/// `at + after`, saturating at a point decades away instead of overflowing.
pub(crate) fn later(at: Instant, after: Duration) -> Instant {
    at.checked_add(after)
        .or_else(|| at.checked_add(FAR_FUTURE))
        .unwrap_or(at)
}

/// What "never" means for a deadline: far enough that no run reaches it.
const FAR_FUTURE: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);

/// The item's key; a panicking key function gives a key saying so rather than ending
/// the whole run.
fn key_of<T>(key: &KeyFn<T>, item: &T) -> String {
    match std::panic::catch_unwind(AssertUnwindSafe(|| key(item))) {
        Ok(key) => key,
        Err(payload) => format!("<key function panicked: {}>", panic_message(payload)),
    }
}

/// Sleeps until `at`, or forever when there is no such instant.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The text of a panic payload, which is a `&str` or a `String` for `panic!` with a message.
fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "a panic without a message".to_owned(),
        },
    }
}
