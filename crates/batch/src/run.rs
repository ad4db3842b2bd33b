//! A run in progress, and what it hands back when it ends.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::driver::DriverOutput;
use crate::outcome::ItemResult;
use crate::progress::ProgressWatch;
use crate::report::{Report, StopReason};

/// A run in progress: a stream of finished items, in completion or input order.
///
/// The items run as spawned tasks, so they go on whether or not this stream is polled;
/// only the bounded buffer of finished results keeps new items from starting while the
/// consumer is busy. Read results with [`StreamExt::next`], then call
/// [`finish`](Self::finish) for the report. Dropping the run aborts the items still
/// running.
#[must_use = "a run is aborted when dropped; read its results or call `finish`"]
pub struct BatchRun<S, V, E> {
    results: mpsc::Receiver<ItemResult<V, E>>,
    driver: JoinHandle<DriverOutput<S>>,
    progress: ProgressWatch,
    cancel: CancellationToken,
}

/// A run that has ended: its report, and the input it did not use.
pub struct Finished<S> {
    report: Report,
    remaining: Option<S>,
    next_index: u64,
}

/// A run that did not end the ordinary way.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum BatchError<S> {
    /// The error policy stopped the run, or its input panicked. The full report and the
    /// unused input are inside.
    #[error("the batch stopped early: {reason}")]
    Stopped {
        /// Why the run stopped.
        reason: StopReason,
        /// The report, which still accounts for every item, and the unused input.
        finished: Box<Finished<S>>,
    },
    /// The task driving the run ended abnormally (its runtime shut down, or a bug in this
    /// crate made it panic); the report is lost.
    #[error("the batch driver task ended abnormally")]
    Driver(#[source] JoinError),
}

impl<S, V, E> BatchRun<S, V, E> {
    pub(crate) fn new(
        results: mpsc::Receiver<ItemResult<V, E>>,
        driver: JoinHandle<DriverOutput<S>>,
        progress: ProgressWatch,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            results,
            driver,
            progress,
            cancel,
        }
    }

    /// The next finished item, or `None` once every item has been handed out; the same as
    /// `StreamExt::next` without needing the trait in scope.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a result is taken only when the future completes.
    pub async fn recv(&mut self) -> Option<ItemResult<V, E>> {
        self.results.recv().await
    }

    /// A handle on the run's progress, to poll or to watch.
    pub fn progress(&self) -> ProgressWatch {
        self.progress.clone()
    }

    /// Cancels this run (not the token it was given) in the configured
    /// [`CancelMode`](crate::CancelMode).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits for the run to end, discarding results not read yet (they stay counted in
    /// the report), and returns the report with the unused input.
    ///
    /// # Errors
    ///
    /// [`BatchError::Stopped`] when the error policy stopped the run or the input panicked
    /// (the report is inside),
    /// [`BatchError::Driver`] when the driving task ended abnormally.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future drops the run, which aborts its running items.
    pub async fn finish(mut self) -> Result<Finished<S>, BatchError<S>> {
        while self.results.recv().await.is_some() {}

        let output = (&mut self.driver).await.map_err(BatchError::Driver)?;
        let finished = Finished {
            remaining: (!output.input_exhausted).then_some(output.input),
            report: output.report,
            next_index: output.next_index,
        };
        match finished.report.stop_reason() {
            Some(StopReason::Cancelled) | None => Ok(finished),
            Some(reason) => Err(BatchError::Stopped {
                reason: reason.clone(),
                finished: Box::new(finished),
            }),
        }
    }

    /// Reads every result, then ends the run as [`finish`](Self::finish) does.
    ///
    /// Holds every result in memory: for large inputs read the stream instead.
    ///
    /// # Errors
    ///
    /// As for [`finish`](Self::finish); the results read are returned either way.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future drops the run and the results read so far.
    pub async fn collect_all(
        mut self,
    ) -> (Vec<ItemResult<V, E>>, Result<Finished<S>, BatchError<S>>) {
        let mut results = Vec::new();
        while let Some(result) = self.next().await {
            results.push(result);
        }
        (results, self.finish().await)
    }
}

impl<S, V, E> Stream for BatchRun<S, V, E> {
    type Item = ItemResult<V, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.results.poll_recv(cx)
    }
}

impl<S, V, E> Drop for BatchRun<S, V, E> {
    fn drop(&mut self) {
        self.results.close();
    }
}

impl<S, V, E> fmt::Debug for BatchRun<S, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchRun")
            .field("progress", &self.progress.snapshot())
            .finish()
    }
}

impl<S> Finished<S> {
    /// The report of the run.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// The report, dropping the unused input.
    pub fn into_report(self) -> Report {
        self.report
    }

    /// The input the run did not pull, to resume from later; `None` when the run used it
    /// all. For a run over an iterator this is a [`futures_util::stream::Iter`], whose
    /// `into_inner` gives the iterator back.
    pub fn into_remaining(self) -> Option<S> {
        self.remaining
    }

    /// The report and the unused input.
    pub fn into_parts(self) -> (Report, Option<S>) {
        (self.report, self.remaining)
    }

    /// Pulls everything left in the input and records each item as
    /// [`NotStarted`](crate::OutcomeKind::NotStarted), for a report that accounts for the
    /// whole input rather than only what the run took.
    ///
    /// Never ends on an endless input.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future drops the report and the input.
    pub async fn into_full_report(self) -> Report
    where
        S: Stream + Unpin,
    {
        let mut report = self.report;
        if let Some(mut remaining) = self.remaining {
            let mut index = self.next_index;
            while remaining.next().await.is_some() {
                report.record_not_started(index);
                index += 1;
            }
        }
        report
    }
}

impl<S> fmt::Debug for Finished<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Finished")
            .field("report", &self.report)
            .field("has_remaining", &self.remaining.is_some())
            .finish()
    }
}

impl<S> fmt::Debug for BatchError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stopped { reason, finished } => f
                .debug_struct("Stopped")
                .field("reason", reason)
                .field("finished", finished)
                .finish(),
            Self::Driver(error) => f.debug_tuple("Driver").field(error).finish(),
        }
    }
}

impl<S> BatchError<S> {
    /// The report, when the run got far enough to produce one.
    pub fn report(&self) -> Option<&Report> {
        match self {
            Self::Stopped { finished, .. } => Some(finished.report()),
            Self::Driver(_) => None,
        }
    }

    /// The ended run inside, when there is one.
    pub fn into_finished(self) -> Option<Finished<S>> {
        match self {
            Self::Stopped { finished, .. } => Some(*finished),
            Self::Driver(_) => None,
        }
    }

    /// Whether the run stopped early for its error policy or a panicking input.
    pub fn is_stopped(&self) -> bool {
        matches!(self, Self::Stopped { .. })
    }
}
