//! The configured runner and its builder.

use std::fmt::Display;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::Stream;
use futures_util::stream::{self, Iter};
use steadfast_backoff::{Backoff, Classifier, ErrorClass, RetryBudget};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug_span};

use crate::config::{BatchConfig, BuildError, CancelMode, ErrorPolicy, Order};
use crate::driver::{Driver, DriverParts, KeyFn, MakeItem};
use crate::progress::{Progress, ProgressWatch};
use crate::retry::{NoRetry, Retrying, once, retrying};
use crate::run::BatchRun;

/// Numbers the runs of this process, so that their `tracing` spans can be told apart.
static NEXT_RUN_ID: AtomicU64 = AtomicU64::new(0);

/// A configured runner for processing many items with bounded concurrency.
///
/// Build one with [`Batch::builder`] (or [`Batch::new`] from a [`BatchConfig`]), then start
/// any number of runs with [`run`](Self::run) or [`run_stream`](Self::run_stream). `R` says
/// whether failed items are retried: [`NoRetry`] (the default) or [`Retrying`], set by
/// [`BatchBuilder::retry`]. Retrying runs need items that are `Clone`, since each attempt
/// gets its own copy.
#[derive(Debug, Clone)]
pub struct Batch<R = NoRetry> {
    config: BatchConfig,
    cancel: Option<CancellationToken>,
    retry: R,
}

/// Builds a [`Batch`]; every setter starts from the [`BatchConfig`] default.
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct BatchBuilder<R = NoRetry> {
    config: BatchConfig,
    cancel: Option<CancellationToken>,
    retry: R,
}

impl Batch {
    /// A builder starting from the default settings.
    pub fn builder() -> BatchBuilder {
        BatchBuilder::default()
    }

    /// A runner with these settings and no retry.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the setting that cannot work.
    pub fn new(config: BatchConfig) -> Result<Self, BuildError> {
        Self::builder().config(config).build()
    }
}

impl<R> Batch<R> {
    /// The settings of this runner.
    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    fn start<S, V, E>(
        &self,
        input: S,
        key: Option<KeyFn<S::Item>>,
        make: impl FnOnce(CancellationToken) -> MakeItem<S::Item, V, E>,
    ) -> BatchRun<S, V, E>
    where
        S: Stream + Unpin + Send + 'static,
        S::Item: Send + 'static,
        V: Send + 'static,
        E: Display + Send + 'static,
    {
        let cancel = match &self.cancel {
            Some(parent) => parent.child_token(),
            None => CancellationToken::new(),
        };
        let (results_tx, results_rx) = mpsc::channel(self.config.buffer.get());
        let (progress_tx, progress_rx) = watch::channel(Progress::default());

        let driver = Driver::new(DriverParts {
            config: self.config.clone(),
            input,
            make: make(cancel.clone()),
            key,
            results: results_tx,
            progress: progress_tx,
            cancel: cancel.clone(),
        });
        let run_id = NEXT_RUN_ID.fetch_add(1, Ordering::Relaxed);
        let handle = tokio::spawn(driver.run().instrument(debug_span!("batch_run", run_id)));

        BatchRun::new(results_rx, handle, ProgressWatch::new(progress_rx), cancel)
    }
}

impl Batch<NoRetry> {
    /// Starts processing every item of `input` with `work`, pulling items only as slots
    /// free up.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime, as `tokio::spawn` does.
    pub fn run<I, F, Fut, V, E>(&self, input: I, work: F) -> BatchRun<Iter<I::IntoIter>, V, E>
    where
        I: IntoIterator,
        I::IntoIter: Send + 'static,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        V: Send + 'static,
        E: Display + Send + 'static,
    {
        let timeout = self.config.item_timeout;
        self.start(stream::iter(input), None, |_| once(work, timeout))
    }

    /// As [`run`](Self::run), giving each item a key (an id, a path) that its result and
    /// the report carry.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime, as `tokio::spawn` does.
    pub fn run_keyed<I, K, F, Fut, V, E>(
        &self,
        input: I,
        key: K,
        work: F,
    ) -> BatchRun<Iter<I::IntoIter>, V, E>
    where
        I: IntoIterator,
        I::IntoIter: Send + 'static,
        I::Item: Send + 'static,
        K: Fn(&I::Item) -> String + Send + Sync + 'static,
        F: Fn(I::Item) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        V: Send + 'static,
        E: Display + Send + 'static,
    {
        let timeout = self.config.item_timeout;
        self.start(stream::iter(input), Some(Box::new(key)), |_| {
            once(work, timeout)
        })
    }

    /// Starts processing every item of a stream with `work`, polling the stream only as
    /// slots free up. A stream that is not `Unpin` can be passed as `Box::pin(stream)`.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime, as `tokio::spawn` does.
    pub fn run_stream<S, F, Fut, V, E>(&self, input: S, work: F) -> BatchRun<S, V, E>
    where
        S: Stream + Unpin + Send + 'static,
        S::Item: Send + 'static,
        F: Fn(S::Item) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        V: Send + 'static,
        E: Display + Send + 'static,
    {
        let timeout = self.config.item_timeout;
        self.start(input, None, |_| once(work, timeout))
    }

    /// As [`run_stream`](Self::run_stream), with a key for each item.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime, as `tokio::spawn` does.
    pub fn run_stream_keyed<S, K, F, Fut, V, E>(
        &self,
        input: S,
        key: K,
        work: F,
    ) -> BatchRun<S, V, E>
    where
        S: Stream + Unpin + Send + 'static,
        S::Item: Send + 'static,
        K: Fn(&S::Item) -> String + Send + Sync + 'static,
        F: Fn(S::Item) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        V: Send + 'static,
        E: Display + Send + 'static,
    {
        let timeout = self.config.item_timeout;
        self.start(input, Some(Box::new(key)), |_| once(work, timeout))
    }
}

impl<C> Batch<Retrying<C>> {
    /// Starts processing every item of `input` with `work`, retrying failed attempts with
    /// the runner's backoff policy; each attempt gets a clone of the item.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime, as `tokio::spawn` does.
    pub fn run<I, F, Fut, V, E>(&self, input: I, work: F) -> BatchRun<Iter<I::IntoIter>, V, E>
    where
        I: IntoIterator,
        I::IntoIter: Send + 'static,
        I::Item: Clone + Send + 'static,
        F: Fn(I::Item) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        V: Send + 'static,
        E: Display + Send + 'static,
        C: Classifier<E> + Clone + Send + Sync + 'static,
    {
        let timeout = self.config.item_timeout;
        self.start(stream::iter(input), None, |cancel| {
            retrying(work, timeout, &self.retry, cancel)
        })
    }

    /// As [`run`](Self::run), with a key for each item.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime, as `tokio::spawn` does.
    pub fn run_keyed<I, K, F, Fut, V, E>(
        &self,
        input: I,
        key: K,
        work: F,
    ) -> BatchRun<Iter<I::IntoIter>, V, E>
    where
        I: IntoIterator,
        I::IntoIter: Send + 'static,
        I::Item: Clone + Send + 'static,
        K: Fn(&I::Item) -> String + Send + Sync + 'static,
        F: Fn(I::Item) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        V: Send + 'static,
        E: Display + Send + 'static,
        C: Classifier<E> + Clone + Send + Sync + 'static,
    {
        let timeout = self.config.item_timeout;
        self.start(stream::iter(input), Some(Box::new(key)), |cancel| {
            retrying(work, timeout, &self.retry, cancel)
        })
    }

    /// As [`run`](Self::run), over a stream.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime, as `tokio::spawn` does.
    pub fn run_stream<S, F, Fut, V, E>(&self, input: S, work: F) -> BatchRun<S, V, E>
    where
        S: Stream + Unpin + Send + 'static,
        S::Item: Clone + Send + 'static,
        F: Fn(S::Item) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        V: Send + 'static,
        E: Display + Send + 'static,
        C: Classifier<E> + Clone + Send + Sync + 'static,
    {
        let timeout = self.config.item_timeout;
        self.start(input, None, |cancel| {
            retrying(work, timeout, &self.retry, cancel)
        })
    }

    /// As [`run_stream`](Self::run_stream), with a key for each item.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime, as `tokio::spawn` does.
    pub fn run_stream_keyed<S, K, F, Fut, V, E>(
        &self,
        input: S,
        key: K,
        work: F,
    ) -> BatchRun<S, V, E>
    where
        S: Stream + Unpin + Send + 'static,
        S::Item: Clone + Send + 'static,
        K: Fn(&S::Item) -> String + Send + Sync + 'static,
        F: Fn(S::Item) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        V: Send + 'static,
        E: Display + Send + 'static,
        C: Classifier<E> + Clone + Send + Sync + 'static,
    {
        let timeout = self.config.item_timeout;
        self.start(input, Some(Box::new(key)), |cancel| {
            retrying(work, timeout, &self.retry, cancel)
        })
    }
}

impl<R> BatchBuilder<R> {
    /// Replaces every setting with `config`.
    pub fn config(mut self, config: BatchConfig) -> Self {
        self.config = config;
        self
    }

    /// Most items running at once (default 16).
    pub fn concurrency(mut self, concurrency: NonZeroUsize) -> Self {
        self.config.concurrency = concurrency;
        self
    }

    /// Most finished results waiting for the consumer (default 64).
    pub fn buffer(mut self, buffer: NonZeroUsize) -> Self {
        self.config.buffer = buffer;
        self
    }

    /// Completion order (default) or input order with a reorder window.
    pub fn order(mut self, order: Order) -> Self {
        self.config.order = order;
        self
    }

    /// What to do when items fail (default: collect every outcome).
    pub fn policy(mut self, policy: ErrorPolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Longest an item (each attempt, when retrying) may run, counted from its own start
    /// (default: no limit).
    pub fn item_timeout(mut self, timeout: Duration) -> Self {
        self.config.item_timeout = Some(timeout);
        self
    }

    /// Most items started per second (default: no limit).
    pub fn rate_limit(mut self, items_per_second: f64) -> Self {
        self.config.rate_limit = Some(items_per_second);
        self
    }

    /// How long running items may go on after the policy stopped the run (default zero).
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.config.stop_grace = grace;
        self
    }

    /// How to react to cancellation (default graceful, 30 s).
    pub fn cancel_mode(mut self, mode: CancelMode) -> Self {
        self.config.cancel_mode = mode;
        self
    }

    /// Shortest time between progress updates (default 100 ms).
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        self.config.progress_interval = interval;
        self
    }

    /// A token whose cancellation cancels every run of the built runner.
    pub fn cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }
}

impl BatchBuilder<NoRetry> {
    /// Retries failed items with `policy` (classified through
    /// [`steadfast_backoff::Classify`] until [`classify_with`](Self::classify_with) says
    /// otherwise).
    pub fn retry(self, policy: Backoff) -> BatchBuilder<Retrying> {
        BatchBuilder {
            config: self.config,
            cancel: self.cancel,
            retry: Retrying {
                policy,
                budget: None,
                classifier: steadfast_backoff::ByTrait,
                idempotent: false,
            },
        }
    }

    /// Checks the settings and builds the runner.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the setting that cannot work.
    pub fn build(self) -> Result<Batch, BuildError> {
        self.config.validate()?;
        Ok(Batch {
            config: self.config,
            cancel: self.cancel,
            retry: NoRetry,
        })
    }
}

impl<C> BatchBuilder<Retrying<C>> {
    /// The retry budget the runs draw from. Clones of one budget share it, so passing the
    /// same budget to several runners makes them share it too. Without one, each run gets
    /// its own [`RetryBudget::default`].
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.retry.budget = Some(budget);
        self
    }

    /// Whether an attempt that timed out may be repeated (default `false`): a timeout
    /// leaves it unknown whether the work took effect, so it is retried only when doing
    /// it twice is harmless.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.retry.idempotent = idempotent;
        self
    }

    /// Classifies errors with `classifier` (cloned for each item) instead of the
    /// [`Classify`](steadfast_backoff::Classify) trait.
    pub fn classify_with<E, C2>(self, classifier: C2) -> BatchBuilder<Retrying<C2>>
    where
        C2: FnMut(&E) -> ErrorClass + Clone + Send + Sync + 'static,
    {
        BatchBuilder {
            config: self.config,
            cancel: self.cancel,
            retry: Retrying {
                policy: self.retry.policy,
                budget: self.retry.budget,
                classifier,
                idempotent: self.retry.idempotent,
            },
        }
    }

    /// Checks the settings, the backoff policy included, and builds the runner.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the setting that cannot work.
    pub fn build(self) -> Result<Batch<Retrying<C>>, BuildError> {
        self.config.validate()?;
        self.retry.policy.validate().map_err(BuildError::Retry)?;
        Ok(Batch {
            config: self.config,
            cancel: self.cancel,
            retry: self.retry,
        })
    }
}
