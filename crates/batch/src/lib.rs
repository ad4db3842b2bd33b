//! Bounded-concurrency processing of large inputs where every item's outcome is reported.
//!
//! Splitting work into fixed batches and awaiting each batch before the next wastes
//! slots on the slowest item of every batch, loses the link between results and input,
//! and often holds the whole input in memory. `steadfast-batch` runs items through a
//! sliding window instead:
//!
//! - Input comes from any iterator or stream and is pulled only as slots free up, so
//!   memory does not grow with its size.
//! - At most `concurrency` items run at once, each as a spawned task, so they make
//!   progress however slowly the consumer reads results; a bounded buffer of finished
//!   results keeps new items from starting while the consumer lags.
//! - Every item pulled ends in exactly one [`Outcome`], keyed by its input index (and an
//!   optional key): succeeded, failed, panicked, timed out, skipped or cancelled. The
//!   [`Report`] lists every index once and its [`Counts`] add up to the items pulled.
//! - Error policies ([`ErrorPolicy`]), a per-item timeout that counts only the item's own
//!   running time, a rate limit separate from concurrency, cancellation through a
//!   `CancellationToken` (graceful with a grace period, or immediate) that hands the
//!   unused input back, [`Progress`] snapshots, and [`ChunksExt::chunks_by`] for bulk
//!   writes downstream.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::num::NonZeroUsize;
//! use std::time::Duration;
//!
//! use futures_util::StreamExt;
//! use steadfast_batch::{Batch, Outcome};
//!
//! let batch = Batch::builder()
//!     .concurrency(NonZeroUsize::new(4).unwrap())
//!     .item_timeout(Duration::from_secs(1))
//!     .build()
//!     .unwrap();
//!
//! let mut run = batch.run(0..10u32, |n| async move {
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//!     if n == 7 { Err(format!("item {n} is bad")) } else { Ok(n * 2) }
//! });
//!
//! let mut doubled = 0;
//! while let Some(result) = run.next().await {
//!     match result.outcome {
//!         Outcome::Succeeded(_) => doubled += 1,
//!         Outcome::Failed(error) => assert_eq!((result.index, error.as_str()), (7, "item 7 is bad")),
//!         other => panic!("unexpected {other:?}"),
//!     }
//! }
//!
//! let report = run.finish().await.unwrap().into_report();
//! assert_eq!(doubled, 9);
//! assert_eq!(report.counts().failed, 1);
//! assert_eq!(report.total(), 10);
//! # }
//! ```
//!
//! # How a run works
//!
//! [`Batch::run`] spawns a driver task and returns a [`BatchRun`], a stream of
//! [`ItemResult`]s. The driver pulls an item only when fewer than `concurrency` items
//! are running, spawns it as its own task, and hands each result to a bounded channel of
//! `buffer` places. Because items are tasks, they run whether or not the consumer polls;
//! because the channel is bounded, a consumer that falls behind stops new items from
//! starting (the running ones still finish) instead of letting results pile up. So a run
//! holds at most `concurrency` running items plus about `buffer + concurrency` results,
//! however long its input.
//!
//! The input is pulled on the driver task, so an iterator whose `next` blocks the thread
//! stalls the run, cancellation included, until it returns; feed a blocking source
//! through a channel from `tokio::task::spawn_blocking` and run over the receiver as a
//! stream. For the same reason, cancellation cannot abort an item that blocks its thread
//! rather than awaiting.
//!
//! # Accounting
//!
//! Every item pulled gets exactly one [`Outcome`], and the [`Report`] that
//! [`BatchRun::finish`] returns lists every pulled index once, with [`Counts`] that add
//! up. Items never pulled stay in the input, which [`Finished::into_remaining`] hands
//! back for a later run (whose indices start from 0 again: add the first report's
//! [`total`](Report::total) to map them back); [`Finished::into_full_report`] instead pulls them and records
//! them as [`OutcomeKind::NotStarted`], for a report over the whole input.
//!
//! # Stopping early
//!
//! The [`ErrorPolicy`] can stop a run (then [`BatchRun::finish`] returns
//! [`BatchError::Stopped`] with the full report inside), and so can the runner's
//! [`CancellationToken`] or [`BatchRun::cancel`] (then `finish` returns `Ok` and the
//! report's [`stop_reason`](Report::stop_reason) says so). Either way no new item starts;
//! running items get [`stop_grace`](BatchConfig::stop_grace) or the [`CancelMode`]'s grace
//! period, and those still running then end [`Cancelled`](Outcome::Cancelled).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//!
//! use steadfast_batch::{Batch, CancelMode, CancellationToken};
//!
//! let shutdown = CancellationToken::new();
//! let batch = Batch::builder()
//!     .cancel(shutdown.clone())
//!     .cancel_mode(CancelMode::Graceful { grace: Duration::from_secs(5) })
//!     .build()
//!     .unwrap();
//! let work = |n: u32| async move {
//!     tokio::time::sleep(Duration::from_millis(100)).await;
//!     Ok::<_, std::io::Error>(n)
//! };
//!
//! let run = batch.run(0..1_000u32, work);
//! tokio::time::sleep(Duration::from_millis(250)).await;
//! shutdown.cancel();
//!
//! let finished = run.finish().await.unwrap();
//! assert_eq!(finished.report().counts().succeeded, 48); // three rounds of 16
//! let rest = finished.into_remaining().unwrap().into_inner();
//!
//! // Later: resume with what was left, under a fresh runner.
//! let resumed = Batch::builder().build().unwrap().run(rest, work);
//! let report = resumed.finish().await.unwrap().into_report();
//! assert_eq!(report.counts().succeeded, 1_000 - 48);
//! # }
//! ```
//!
//! # Retry, timeouts and rate
//!
//! [`BatchBuilder::retry`] retries failed attempts with a `steadfast-backoff` policy,
//! every item of a run drawing from one shared retry budget; errors are classified by
//! `steadfast_backoff::Classify` or a closure given to
//! [`classify_with`](BatchBuilder::classify_with). The
//! [`item_timeout`](BatchConfig::item_timeout) counts only an item's own running time, so
//! a slow consumer never makes items time out. The
//! [`rate_limit`](BatchConfig::rate_limit) spaces item starts evenly, separately from
//! concurrency.
//!
//! # Reading results
//!
//! Results come in completion order by default; [`Order::Input`] returns them in input
//! order with a bounded reorder window. [`BatchRun::progress`] gives [`Progress`]
//! snapshots (throughput, ETA) to poll or watch, and [`ChunksExt::chunks_by`] groups
//! results into chunks by size or time for bulk writes; [`Chunks::into_inner`] gives the
//! run back for [`finish`](BatchRun::finish) once the chunks are read. The driver emits `tracing` events
//! (a `batch_run` span, `debug` for state changes, `trace` per item).

mod batch;
mod chunk;
mod config;
mod driver;
mod outcome;
mod progress;
mod report;
mod retry;
mod run;

pub use batch::{Batch, BatchBuilder};
pub use chunk::{Chunks, ChunksExt};
pub use config::{BatchConfig, BuildError, CancelMode, ErrorPolicy, Order};
pub use outcome::{Failure, ItemResult, Outcome, OutcomeKind};
pub use progress::{Progress, ProgressWatch};
pub use report::{Counts, ItemRecord, Report, StopReason};
pub use retry::{NoRetry, Retrying};
pub use run::{BatchError, BatchRun, Finished};
pub use tokio_util::sync::CancellationToken;
