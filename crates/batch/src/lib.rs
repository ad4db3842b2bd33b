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
