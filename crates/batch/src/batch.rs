//! The configured runner and its builder.

use std::fmt::Display;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use futures_util::stream::{self, Iter};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{BatchConfig, BuildError, CancelMode, ErrorPolicy, Order};
use crate::driver::{Attempt, Driver, DriverParts, ItemFuture, KeyFn, MakeItem};
use crate::progress::{Progress, ProgressWatch};
use crate::run::BatchRun;

/// A configured runner for processing many items with bounded concurrency.
///
/// Build one with [`Batch::builder`] (or [`Batch::new`] from a [`BatchConfig`]), then start
/// any number of runs with [`run`](Self::run) or [`run_stream`](Self::run_stream).
#[derive(Debug, Clone)]
pub struct Batch {
    config: BatchConfig,
    cancel: Option<CancellationToken>,
}

/// Builds a [`Batch`]; every setter starts from the [`BatchConfig`] default.
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct BatchBuilder {
    config: BatchConfig,
    cancel: Option<CancellationToken>,
}

impl Batch {
    /// A builder starting from the default settings.
    pub fn builder() -> BatchBuilder {
        BatchBuilder::default()
    }

    /// A runner with these settings.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the setting that cannot work.
    pub fn new(config: BatchConfig) -> Result<Self, BuildError> {
        Self::builder().config(config).build()
    }

    /// The settings of this runner.
    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

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
        self.start(stream::iter(input), None, work)
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
        self.start(stream::iter(input), Some(Box::new(key)), work)
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
        self.start(input, None, work)
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
        self.start(input, Some(Box::new(key)), work)
    }

    fn start<S, F, Fut, V, E>(
        &self,
        input: S,
        key: Option<KeyFn<S::Item>>,
        work: F,
    ) -> BatchRun<S, V, E>
    where
        S: Stream + Unpin + Send + 'static,
        S::Item: Send + 'static,
        F: Fn(S::Item) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
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
            make: once(work, self.config.item_timeout),
            key,
            results: results_tx,
            progress: progress_tx,
            cancel: cancel.clone(),
        });
        let handle = tokio::spawn(driver.run());

        BatchRun::new(results_rx, handle, ProgressWatch::new(progress_rx), cancel)
    }
}

impl BatchBuilder {
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

    /// Longest an item may run, counted from its own start (default: no limit).
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

    /// Checks the settings and builds the runner.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the setting that cannot work.
    pub fn build(self) -> Result<Batch, BuildError> {
        self.config.validate()?;
        Ok(Batch { config: self.config, cancel: self.cancel })
    }
}

/// Runs each item once, within the per-item timeout when there is one.
///
/// The work function itself is called inside the spawned task, so a panic in it ends only
/// that item, and the timeout clock starts when the item does.
fn once<T, F, Fut, V, E>(work: F, timeout: Option<Duration>) -> MakeItem<T, V, E>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
    V: Send + 'static,
    E: Send + 'static,
{
    let work = Arc::new(work);
    Box::new(move |item| -> ItemFuture<V, E> {
        let work = Arc::clone(&work);
        Box::pin(async move {
            let future = work(item);
            match timeout {
                Some(limit) => match tokio::time::timeout(limit, future).await {
                    Ok(result) => result.map_err(Attempt::Error),
                    Err(_) => Err(Attempt::TimedOut),
                },
                None => future.await.map_err(Attempt::Error),
            }
        })
    })
}
